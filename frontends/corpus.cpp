// The built-in corpus generator (see corpus.h). Uses its own splitmix64
// generator, not <random>'s distributions, so the text is the same with
// every standard library; and every random draw is its own statement (never
// two in one expression, whose evaluation order C++ leaves to the compiler),
// so it is the same with every compiler. The draws are in the order GCC
// evaluated the former one-expression forms (right to left), which keeps the
// corpus, and the example's losses, what they were.
#include "frontends/corpus.h"

#include <fmt/format.h>

#include <array>
#include <fstream>
#include <sstream>

#include "ir/error.h"

namespace moejit {
namespace {

class Rng {
 public:
  explicit Rng(std::uint64_t seed) : state_(seed) {}
  std::uint64_t next() {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in 0 .. n-1.
  int below(int n) { return static_cast<int>(next() % static_cast<std::uint64_t>(n)); }
  bool chance(int percent) { return below(100) < percent; }
  template <typename Container>
  const auto& pick(const Container& items) {
    return items[static_cast<std::size_t>(below(static_cast<int>(std::size(items))))];
  }

 private:
  std::uint64_t state_;
};

// ---- arithmetic: "37+48=85", "12*7=84", "91-15=76" ----
std::string arithmetic_line(Rng& rng) {
  int a = rng.below(100), b = rng.below(100);
  switch (rng.below(3)) {
    case 0: return fmt::format("{}+{}={}", a, b, a + b);
    case 1:
      if (a < b) std::swap(a, b);
      return fmt::format("{}-{}={}", a, b, a - b);
    default: b = rng.below(13); return fmt::format("{}*{}={}", a, b, a * b);
  }
}

// ---- code: a tiny imperative language, one statement group per line ----
constexpr std::array kVariables = {"x", "y", "n", "i", "acc", "total"};

std::string code_expr(Rng& rng) {
  if (rng.chance(40)) return std::to_string(rng.below(10));
  static constexpr std::array ops = {"+", "-", "*"};
  const int constant = rng.below(10);
  const char* op = rng.pick(ops);
  const char* variable = rng.pick(kVariables);
  return fmt::format("{} {} {}", variable, op, constant);
}

std::string code_assign(Rng& rng) {
  const std::string value = code_expr(rng);
  const char* variable = rng.pick(kVariables);
  return fmt::format("{} = {};", variable, value);
}

std::string code_line(Rng& rng) {
  static constexpr std::array compares = {">", "<", "==", "!="};
  const char* v = rng.pick(kVariables);
  switch (rng.below(5)) {
    case 0: return fmt::format("let {} = {};", v, rng.below(20));
    case 1: return fmt::format("let {} = {}; while {} > 0 {{ {} = {} - 1; }}", v, rng.below(10), v, v, v);
    case 2: {
      const std::string otherwise = code_assign(rng);
      const int limit = rng.below(10);
      const char* compare = rng.pick(compares);
      return fmt::format("if {} {} {} {{ print {}; }} else {{ {} }}", v, compare, limit, v, otherwise);
    }
    case 3: {
      static constexpr std::array names = {"add", "sum", "step", "next", "scale"};
      const char* op = rng.chance(50) ? "+" : "*";
      const char* name = rng.pick(names);
      return fmt::format("fn {}(a, b) {{ return a {} b; }}", name, op);
    }
    default: {
      const std::string body = code_assign(rng);
      const int count = rng.below(10) + 1;
      return fmt::format("for {} in 0..{} {{ {} }}", v, count, body);
    }
  }
}

// ---- prose: English-like sentences from a small grammar ----
constexpr std::array kDeterminers = {"the", "a", "one", "every", "that"};
constexpr std::array kAdjectives = {"small", "old", "red", "quiet", "happy", "dark", "green", "tired", "clever"};
constexpr std::array kNouns = {"fox", "bird", "king", "river", "child", "farmer", "cat", "ship", "garden", "queen"};
constexpr std::array kVerbs = {"sees", "finds", "follows", "likes", "watches", "helps", "visits", "remembers"};
constexpr std::array kPrepositions = {"near", "under", "behind", "beside", "across"};
constexpr std::array kAdverbs = {"slowly", "often", "never", "quietly", "today"};

std::string noun_phrase(Rng& rng) {
  std::string np = rng.pick(kDeterminers);
  if (rng.chance(60)) np += std::string(" ") + rng.pick(kAdjectives);
  return np + " " + rng.pick(kNouns);
}

// " <word> <noun phrase>", the noun phrase drawn first.
std::string word_then_noun_phrase(Rng& rng, const auto& words) {
  const std::string np = noun_phrase(rng);
  return std::string(" ") + rng.pick(words) + " " + np;
}

std::string prose_line(Rng& rng) {
  std::string s = noun_phrase(rng);
  if (rng.chance(30)) s += std::string(" ") + rng.pick(kAdverbs);
  s += word_then_noun_phrase(rng, kVerbs);
  if (rng.chance(50)) s += word_then_noun_phrase(rng, kPrepositions);
  if (rng.chance(25)) s += " and" + word_then_noun_phrase(rng, kVerbs);
  s[0] = static_cast<char>(s[0] - 'a' + 'A');
  return s + ".";
}

}  // namespace

TaggedText generate_corpus(std::uint64_t seed, std::size_t target_bytes) {
  Rng rng(seed);
  TaggedText out;
  out.kind_names = {"arithmetic", "code", "prose"};
  while (out.text.size() < target_bytes) {
    const int kind = rng.below(3);
    std::string line = kind == 0 ? arithmetic_line(rng) : kind == 1 ? code_line(rng) : prose_line(rng);
    line += '\n';
    out.text += line;
    out.kinds.insert(out.kinds.end(), line.size(), static_cast<std::uint8_t>(kind));
  }
  return out;
}

TaggedText untagged_text(std::string text, std::string kind_name) {
  TaggedText out;
  out.kinds.assign(text.size(), 0);
  out.text = std::move(text);
  out.kind_names = {std::move(kind_name)};
  return out;
}

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("cannot open text file '{}'", path));
  std::stringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) throw Error(fmt::format("error reading text file '{}'", path));
  return buffer.str();
}

TaggedText split_tail(const TaggedText& text, double fraction) {
  const std::size_t cut = text.text.size() - static_cast<std::size_t>(static_cast<double>(text.text.size()) * fraction);
  TaggedText out;
  out.text = text.text.substr(cut);
  out.kinds.assign(text.kinds.begin() + static_cast<std::ptrdiff_t>(cut), text.kinds.end());
  out.kind_names = text.kind_names;
  return out;
}

}  // namespace moejit
