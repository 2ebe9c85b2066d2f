// The byte-level BPE tokenizer: the GPT-2 split on cases whose split follows
// from the regex, merge order by rank, added tokens, lossless round trips of
// unusual text, errors; and, when tests/fixtures/hf/generated/tokenizer
// exists, exactly the ids and decodes the `tokenizers` library produced.
#include <catch2/catch.hpp>

#include <fmt/format.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "frontends/bpe_tokenizer.h"
#include "ir/error.h"
#include "ir/file_io.h"

using namespace moejit;
namespace fs = std::filesystem;

namespace {

// GPT-2's byte alphabet, restated: printable bytes are themselves, the rest
// U+0100 onward in order.
std::string byte_char(int b) {
  static std::vector<int> code = [] {
    std::vector<int> c(256);
    int next = 256;
    for (int i = 0; i < 256; ++i)
      c[i] = ((i >= 33 && i <= 126) || (i >= 161 && i <= 172) || (i >= 174)) ? i : next++;
    return c;
  }();
  std::string out;
  int cp = code[b];
  if (cp < 0x80) out += static_cast<char>(cp);
  else out += static_cast<char>(0xC0 | (cp >> 6)), out += static_cast<char>(0x80 | (cp & 0x3F));
  return out;
}

// A tokenizer.json: the 256 byte characters (id = byte), then merges.
std::string tokenizer_json(const std::vector<std::pair<std::string, std::string>>& merges, bool string_merges = false) {
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_char(b)] = b;
  nlohmann::json m = nlohmann::json::array();
  int id = 256;
  for (const auto& [a, b] : merges) {
    if (!vocab.contains(a + b)) vocab[a + b] = id++;
    if (string_merges) m.push_back(a + " " + b);
    else m.push_back({a, b});
  }
  nlohmann::json j = {
      {"version", "1.0"},
      {"added_tokens",
       {{{"id", id}, {"content", "<|endoftext|>"}, {"special", true}},
        {{"id", id + 1}, {"content", "<|end|>"}, {"special", true}},
        {{"id", id + 2}, {"content", "<tool>"}, {"special", false}}}},
      {"normalizer", nullptr},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
      {"post_processor", {{"type", "ByteLevel"}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"vocab", vocab}, {"merges", m}}}};
  return j.dump();
}

std::string words(const BpeTokenizer& t, const std::string& text) {
  std::string out;
  for (const std::string& w : t.pre_tokenize(text)) out += "[" + w + "]";
  return out;
}

}  // namespace

TEST_CASE("the GPT-2 split regex splits as its alternatives say", "[bpe]") {
  BpeTokenizer t = BpeTokenizer::from_json(tokenizer_json({}));
  // "Ġ" is the space, "Ċ" the newline, "ĉ" the tab in the byte alphabet.
  CHECK(words(t, "Hello world") == "[Hello][Ġworld]");
  CHECK(words(t, "  hello") == "[Ġ][Ġhello]");       // \s+(?!\S) leaves one space to the word
  CHECK(words(t, "x   y") == "[x][ĠĠ][Ġy]");
  CHECK(words(t, "it's they'll I'M") == "[it]['s][Ġthey]['ll][ĠI]['][M]");  // contractions are lower case only
  CHECK(words(t, "a\n\nb") == "[a][Ċ][Ċ][b]");
  CHECK(words(t, "a\t\tb") == "[a][ĉ][ĉ][b]");
  CHECK(words(t, "123abc 45") == "[123][abc][Ġ45]");
  CHECK(words(t, "wow!!?  ") == "[wow][!!?][ĠĠ]");   // a run at the end stays whole
  CHECK(words(t, " !x") == "[Ġ!][x]");
  CHECK(words(t, "café 3²") == "[cafÃ©][Ġ3Â²]");     // é is a letter, ² a number (No)
}

TEST_CASE("a Digits pre-tokenizer before ByteLevel splits numbers off first", "[bpe]") {
  for (bool individual : {true, false}) {
    auto j = nlohmann::json::parse(tokenizer_json({}));
    j["pre_tokenizer"] = {{"type", "Sequence"},
                          {"pretokenizers",
                           {{{"type", "Digits"}, {"individual_digits", individual}}, j["pre_tokenizer"]}}};
    BpeTokenizer t = BpeTokenizer::from_json(j.dump());
    // The space before a number stays in the piece before it.
    CHECK(words(t, "abc 123x") == (individual ? "[abc][Ġ][1][2][3][x]" : "[abc][Ġ][123][x]"));
    CHECK(words(t, "v2.0") == (individual ? "[v][2][.][0]" : "[v][2][.][0]"));
    CHECK(t.decode(t.encode("x = 3.14159; y=42")) == "x = 3.14159; y=42");
  }
}

TEST_CASE("BPE merges by rank, leftmost first, and added tokens are single ids", "[bpe]") {
  // e+l has the lower rank, so "hel" is h + el, not he + l.
  BpeTokenizer t = BpeTokenizer::from_json(tokenizer_json({{"e", "l"}, {"h", "e"}}));
  CHECK(t.encode("hel") == std::vector<std::int32_t>{'h', 256});
  BpeTokenizer u = BpeTokenizer::from_json(tokenizer_json({{"l", "l"}, {"h", "e"}, {"he", "ll"}, {"hell", "o"}}, true));
  CHECK(u.encode("hello") == std::vector<std::int32_t>{259});
  CHECK(u.encode("hellohello") == std::vector<std::int32_t>{259, 259});
  CHECK(u.encode(" hello") == std::vector<std::int32_t>{' ', 259});  // Ġ + hello: no merge with Ġ
  const std::int32_t eot = *u.token_to_id("<|endoftext|>"), tool = *u.token_to_id("<tool>");
  CHECK(u.encode("hello<|endoftext|>hello") == std::vector<std::int32_t>{259, eot, 259});
  CHECK(u.encode("<tool><|end|>") == std::vector<std::int32_t>{tool, eot + 1});
  CHECK(u.decode(u.encode("a<|endoftext|>b"), true) == "ab");
  CHECK(u.decode(u.encode("a<|endoftext|>b<tool>"), false) == "a<|endoftext|>b<tool>");
  CHECK(u.vocab_size() == eot + 3);
}

TEST_CASE("encode then decode gives back unusual text byte for byte", "[bpe]") {
  BpeTokenizer t = BpeTokenizer::from_json(tokenizer_json({{"Ġ", "t"}, {"Ġt", "h"}, {"Ġth", "e"}, {"Ã", "©"}}));
  for (std::string text : {"The the  the\t\tthe\n\n\n", "naïve café — “quotes” 日本語 😀👍🏽 ∑√∞", "\u00a0\u2003\u3000x",
                           "", " ", "<|endoftext|><|endoftext|> a <tool>", "'s's 'S 12,345.6e-7"}) {
    INFO(text);
    CHECK(t.decode(t.encode(text)) == text);
  }
  // A decode that cuts a character in half shows U+FFFD, as from_utf8_lossy does.
  std::vector<std::int32_t> ids = t.encode("é");  // bytes C3 A9 -> one merged token
  REQUIRE(ids.size() == 1);
  CHECK(t.decode({0xC3}) == "\xEF\xBF\xBD");
  CHECK(t.decode({0xC3, 'x'}) == "\xEF\xBF\xBDx");
}

TEST_CASE("bad tokenizer files and bad input are clear errors", "[bpe]") {
  auto error_of = [](auto fn) {
    try {
      fn();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  auto j = nlohmann::json::parse(tokenizer_json({}));
  j["model"]["type"] = "WordPiece";
  CHECK(error_of([&] { BpeTokenizer::from_json(j.dump()); }).find("model: expected type BPE") != std::string::npos);
  j = nlohmann::json::parse(tokenizer_json({}));
  j["normalizer"] = {{"type", "NFC"}};
  CHECK(error_of([&] { BpeTokenizer::from_json(j.dump()); }).find("normalizer: expected null") != std::string::npos);
  j = nlohmann::json::parse(tokenizer_json({}));
  j["model"]["merges"] = {"a"};
  CHECK(error_of([&] { BpeTokenizer::from_json(j.dump()); }).find("merges[0]") != std::string::npos);
  CHECK(error_of([&] { BpeTokenizer::from_json("{"); }).find("expected JSON") != std::string::npos);
  BpeTokenizer t = BpeTokenizer::from_json(tokenizer_json({}));
  CHECK(error_of([&] { t.encode("ok \xFF bad"); }).find("invalid byte 0xFF at offset 3") != std::string::npos);
  CHECK(error_of([&] { t.decode({100000}); }).find("found 100000") != std::string::npos);
}

TEST_CASE("encode and decode equal the tokenizers library on the generated fixture", "[bpe]") {
  const fs::path dir = fs::path(MOEJIT_SOURCE_DIR) / "tests" / "fixtures" / "hf" / "generated" / "tokenizer";
  if (!fs::exists(dir / "expected.json")) {
    std::puts("SKIPPED: no tokenizers fixture in tests/fixtures/hf/generated/tokenizer (run "
              "tests/fixtures/hf/make_fixtures.py on a machine with tokenizers, see docs/huggingface.md)");
    return;
  }
  BpeTokenizer t = BpeTokenizer::load((dir / "tokenizer.json").string());
  std::string text;
  REQUIRE(read_whole_file((dir / "expected.json").string(), &text));
  auto expected = nlohmann::json::parse(text);
  int cases = 0;
  for (const auto& c : expected["cases"]) {
    const std::string input = c["text"].get<std::string>();
    INFO("text: " << input);
    std::vector<std::int32_t> ids = t.encode(input);
    CHECK(ids == c["ids"].get<std::vector<std::int32_t>>());
    CHECK(t.decode(c["ids"].get<std::vector<std::int32_t>>()) == c["decoded"].get<std::string>());
    CHECK(t.decode(c["ids"].get<std::vector<std::int32_t>>(), true) == c["decoded_skip_special"].get<std::string>());
    ++cases;
  }
  CHECK(cases >= 10);
}
