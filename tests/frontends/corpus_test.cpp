// The built-in corpus (deterministic, every kind present, lines that are
// what their tag says) and the byte-level tokenizer.
#include <catch2/catch.hpp>

#include <cmath>
#include <regex>
#include <set>
#include <sstream>
#include <string>

#include <fmt/format.h>

#include "frontends/corpus.h"
#include "frontends/safetensors.h"
#include "frontends/tokenizer.h"
#include "ir/error.h"

using namespace moejit;

TEST_CASE("the corpus is deterministic for a seed and differs across seeds", "[corpus]") {
  TaggedText a = generate_corpus(5, 20000), b = generate_corpus(5, 20000), c = generate_corpus(6, 20000);
  CHECK(a.text == b.text);
  CHECK(a.kinds == b.kinds);
  CHECK(a.text != c.text);
  CHECK(a.text.size() >= 20000);
  CHECK(a.text.size() < 20000 + 200);  // stops right after the line that crosses the target
  CHECK(a.kinds.size() == a.text.size());
}

// The same seed gives the same bytes with every compiler: the generator
// sequences each random draw (no two in one expression). The pinned CRC-32
// (zlib's crc32 of the text) was computed from builds with GCC 12 and
// Clang 14, which agree; before the draws were sequenced they did not.
TEST_CASE("the default corpus is the same bytes on every compiler", "[corpus]") {
  const TaggedText t = generate_corpus(1337, 300000);
  CHECK(t.text.size() == 300021);
  CHECK(fmt::format("{:08x}", crc32(t.text.data(), t.text.size())) == "35c4c392");
}

TEST_CASE("every kind appears and each line is what its tag says", "[corpus]") {
  TaggedText t = generate_corpus(1337, 30000);
  REQUIRE(t.kind_names == std::vector<std::string>{"arithmetic", "code", "prose"});
  std::vector<int> lines_of_kind(3, 0);
  const std::regex sum(R"((\d+)([+*-])(\d+)=(-?\d+))");
  const std::regex sentence(R"([A-Z][a-z ]+\.)");
  std::size_t pos = 0;
  while (pos < t.text.size()) {
    std::size_t end = t.text.find('\n', pos);
    REQUIRE(end != std::string::npos);  // every line ends with a newline
    const std::string line = t.text.substr(pos, end - pos);
    const int kind = t.kinds[pos];
    for (std::size_t i = pos; i <= end; ++i) REQUIRE(t.kinds[i] == kind);  // one tag per line, newline included
    ++lines_of_kind[static_cast<std::size_t>(kind)];
    INFO(line);
    if (kind == 0) {
      std::smatch m;
      REQUIRE(std::regex_match(line, m, sum));
      long a = std::stol(m[1]), b = std::stol(m[3]), c = std::stol(m[4]);
      long expected = m[2] == "+" ? a + b : m[2] == "-" ? a - b : a * b;
      CHECK(c == expected);
    } else if (kind == 1) {
      int depth = 0;
      for (char ch : line) {
        depth += ch == '{' ? 1 : ch == '}' ? -1 : 0;
        REQUIRE(depth >= 0);
      }
      CHECK(depth == 0);
      CHECK(line.back() != '.');
      CHECK((line.find(';') != std::string::npos || line.find('}') != std::string::npos));
    } else {
      CHECK(std::regex_match(line, sentence));
    }
    pos = end + 1;
  }
  for (int k = 0; k < 3; ++k) CHECK(lines_of_kind[static_cast<std::size_t>(k)] > 100);
}

TEST_CASE("split_tail keeps the last fraction of text and tags", "[corpus]") {
  TaggedText t = generate_corpus(3, 5000);
  TaggedText tail = split_tail(t, 0.1);
  const double expected = static_cast<double>(t.text.size()) / 10;
  CHECK(std::abs(static_cast<double>(tail.text.size()) - expected) <= 1.0);
  CHECK(t.text.substr(t.text.size() - tail.text.size()) == tail.text);
  CHECK(std::equal(tail.kinds.begin(), tail.kinds.end(), t.kinds.end() - static_cast<std::ptrdiff_t>(tail.kinds.size())));
}

TEST_CASE("the tokenizer's vocabulary is the sorted distinct bytes", "[tokenizer]") {
  const std::string text = "hello, world\n";
  CharTokenizer tok = CharTokenizer::from_text(text);
  std::set<unsigned char> distinct(text.begin(), text.end());
  REQUIRE(tok.vocab_size() == static_cast<std::int64_t>(distinct.size()));
  CHECK(std::vector<std::uint8_t>(distinct.begin(), distinct.end()) == tok.bytes());
  std::vector<std::int32_t> ids = tok.encode("world");
  REQUIRE(ids.size() == 5);
  // 'd' is the index of 'd' among the sorted distinct bytes.
  CHECK(ids[4] == std::distance(distinct.begin(), distinct.find('d')));
  CHECK(tok.decode(tok.encode(text)) == text);

  CharTokenizer back = CharTokenizer::from_string(tok.to_string());
  CHECK(back.bytes() == tok.bytes());

  std::string msg;
  try {
    tok.encode("hello!");
  } catch (const Error& err) {
    msg = err.what();
  }
  CHECK(msg.find("byte ! at position 5") != std::string::npos);
  CHECK_THROWS_AS(CharTokenizer::from_string("3,2"), Error);
  CHECK_THROWS_AS(CharTokenizer::from_string("1,x"), Error);
  CHECK_THROWS_AS(CharTokenizer::from_string(""), Error);
}
