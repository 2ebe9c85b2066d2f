// Fuzz test of the text parser, built with ASan + UBSan (tests/fuzz/CMakeLists.txt).
//
// Seeds: the printed sample graphs and a hand-written text with a module,
// comments and odd spacing. Each seed goes through thousands of
// deterministic mutations (truncation at every k-th byte, byte flips, token
// swaps / duplications / deletions / replacements with "nasty" tokens,
// numbers replaced by extreme values, random bytes, and stacks of several of these). Every input must either
//   - parse, verify, print, and parse back to the same text, or
//   - throw moejit::Error whose every line reads `fuzz.mlir:L:C: error: ...`.
// Anything else fails: another exception type, a malformed message, or a
// sanitizer report / crash (the input being parsed is then saved to
// <crash-dir>/parser_fuzz_crash.mlir).
//
//   moejit_parser_fuzz [--crash-dir DIR] [--scale N]   (N multiplies the counts)
#include <fcntl.h>
#include <sanitizer/common_interface_defs.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "ir/error.h"
#include "ir/graphviz.h"
#include "ir/parser.h"
#include "ir/printer.h"
#include "ir/sample_graphs.h"
#include "ir/verifier.h"

using namespace moejit;

// Sanitizer defaults for this binary: every report is fatal and aborts.
extern "C" const char* __asan_default_options() { return "abort_on_error=1"; }
extern "C" const char* __ubsan_default_options() { return "abort_on_error=1:halt_on_error=1:print_stacktrace=1"; }

namespace {

constexpr const char* kFilename = "fuzz.mlir";

// splitmix64: small, deterministic, good enough to pick positions.
struct Rng {
  std::uint64_t state;
  std::uint64_t next() {
    std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  std::size_t below(std::size_t n) { return n == 0 ? 0 : static_cast<std::size_t>(next() % n); }
};

std::string g_current;     // the input being parsed, for the death callback
std::string g_crash_path;  // where to save it

void save_current_input() {
  if (FILE* f = std::fopen(g_crash_path.c_str(), "wb")) {
    std::fwrite(g_current.data(), 1, g_current.size(), f);
    std::fclose(f);
    std::fprintf(stderr, "parser_fuzz: the failing input is saved in %s\n", g_crash_path.c_str());
  }
}

// A sanitizer report aborts (see the default options below); the SIGABRT
// handler saves the input with async-signal-safe calls only.
extern "C" void on_abort(int) {
  int fd = ::open(g_crash_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd >= 0) {
    (void)!::write(fd, g_current.data(), g_current.size());
    ::close(fd);
    const char msg[] = "parser_fuzz: the failing input is saved in parser_fuzz_crash.mlir\n";
    (void)!::write(2, msg, sizeof msg - 1);
  }
  std::signal(SIGABRT, SIG_DFL);
  std::raise(SIGABRT);
}

// Every line: "fuzz.mlir:<digits>:<digits>: error: <non-empty>".
bool well_formed(const std::string& what) {
  if (what.empty()) return false;
  std::size_t start = 0;
  while (start <= what.size()) {
    std::size_t end = what.find('\n', start);
    if (end == std::string::npos) end = what.size();
    std::string_view line(what.data() + start, end - start);
    std::string_view prefix = std::string_view(kFilename);
    if (line.substr(0, prefix.size()) != prefix || line.size() <= prefix.size() || line[prefix.size()] != ':') return false;
    std::size_t p = prefix.size() + 1;
    for (int field = 0; field < 2; ++field) {
      std::size_t digits = p;
      while (p < line.size() && line[p] >= '0' && line[p] <= '9') ++p;
      if (p == digits || p >= line.size() || line[p] != ':') return false;
      ++p;
    }
    std::string_view rest = line.substr(p);
    if (rest.substr(0, 8) != " error: " || rest.size() <= 8) return false;
    if (end == what.size()) break;
    start = end + 1;
  }
  return true;
}

struct Stats {
  long accepted = 0, rejected = 0, failures = 0;
};

void report_failure(Stats& stats, const std::string& input, const std::string& problem) {
  ++stats.failures;
  if (stats.failures <= 5) {
    std::fprintf(stderr, "FAIL: %s\n--- input (%zu bytes, first 400) ---\n%.*s\n---\n", problem.c_str(), input.size(),
                 static_cast<int>(std::min<std::size_t>(input.size(), 400)), input.c_str());
    g_current = input;
    save_current_input();
  }
}

void check_one(const std::string& input, Stats& stats) {
  g_current = input;
  Graph graph;
  try {
    graph = parse_graph(input, kFilename);
  } catch (const Error& e) {
    if (!well_formed(e.what())) report_failure(stats, input, std::string("malformed diagnostic: ") + e.what());
    ++stats.rejected;
    return;
  } catch (const std::exception& e) {
    report_failure(stats, input, std::string("exception that is not a moejit::Error: ") + e.what());
    return;
  }
  ++stats.accepted;
  // An accepted input is a valid graph whose text round-trips.
  if (!verify(graph).empty()) return report_failure(stats, input, "accepted a graph the verifier rejects");
  std::string printed = print_graph(graph);
  try {
    Graph again = parse_graph(printed, kFilename);
    if (print_graph(again) != printed) report_failure(stats, input, "print(parse(print(g))) differs from print(g)");
  } catch (const std::exception& e) {
    report_failure(stats, input, std::string("the printed text of an accepted graph does not parse: ") + e.what());
  }
  (void)graph_to_dot(graph);
}

// Rough tokens: identifier/number runs, string literals, whitespace runs,
// single punctuation bytes. Concatenated they give back the text.
std::vector<std::string> tokenize(const std::string& s) {
  std::vector<std::string> tokens;
  auto word = [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '%';
  };
  std::size_t i = 0;
  while (i < s.size()) {
    std::size_t j = i + 1;
    if (s[i] == '"') {
      while (j < s.size() && s[j] != '"' && s[j] != '\n') j += s[j] == '\\' ? 2 : 1;
      j = std::min(j + 1, s.size());
    } else if (word(s[i])) {
      while (j < s.size() && word(s[j])) ++j;
    } else if (s[i] == ' ' || s[i] == '\n') {
      while (j < s.size() && (s[j] == ' ' || s[j] == '\n')) ++j;
    }
    tokens.push_back(s.substr(i, j - i));
    i = j;
  }
  return tokens;
}

const std::string_view kNasty[] = {
    "99999999999999999999", "1099511627776", "1048576x1048576x", "-9223372036854775808", "9223372036854775807 : i64",
    "0x7FF8000000000000 : f64", "0x", "1.0e999 : f64", "1.0e-400 : f64", "?x", "%0#7", "%0#", "%999", "%", "tensor<", "tensor<f32>",
    ">", "<", "\"mj.add\"", "\"moe.route\"", "\"mj.nope\"", "module {", "}", "{", "[", "]", "[-1]", "[99999999999]", "-", "\\",
    "\"", "\"\\", "//", ":", ":2", ":99", "->", "(", ")", "#", "@", "return", "func.func", "i1", "bf16", "f64", "%x", "4294967296",
    "0", "-1", "true", "=", ",", "x", "\n", "\t", "\xff", std::string_view("\0", 1), "tensor<4x?xf32>", "{mj.role = \"nope\"}",
    "{mj.updates = \"x\"}", "{top_k = 1000000 : i64}", "{block = 9223372036854775807 : i64}",
};

std::string mutate_tokens(const std::vector<std::string>& tokens, Rng& rng) {
  std::vector<std::string> t = tokens;
  if (t.empty()) return {};
  std::size_t a = rng.below(t.size()), b = rng.below(t.size());
  switch (rng.below(5)) {
    case 0: std::swap(t[a], t[b]); break;
    case 1: t.insert(t.begin() + static_cast<long>(a), t[b]); break;
    case 2: t.erase(t.begin() + static_cast<long>(a)); break;
    case 3: t[a] = std::string(kNasty[rng.below(std::size(kNasty))]); break;
    default: t.erase(t.begin() + static_cast<long>(std::min(a, b)), t.begin() + static_cast<long>(std::max(a, b))); break;
  }
  std::string out;
  for (const auto& s : t) out += s;
  return out;
}

// Replaces one number (a digit run) by an extreme value: shapes, attribute
// values and result numbers at the edges of int64 and of the 2^40 cap.
std::string mutate_number(const std::vector<std::string>& tokens, Rng& rng) {
  static const char* const kExtremes[] = {"9223372036854775807", "-9223372036854775808", "4611686018427387904",
                                          "1099511627776", "1099511627775", "2147483648", "0", "-1", "65", "17"};
  std::vector<std::size_t> numbers;
  for (std::size_t i = 0; i < tokens.size(); ++i)
    if (!tokens[i].empty() && tokens[i][0] >= '0' && tokens[i][0] <= '9') numbers.push_back(i);
  std::vector<std::string> t = tokens;
  if (!numbers.empty()) t[numbers[rng.below(numbers.size())]] = kExtremes[rng.below(std::size(kExtremes))];
  std::string out;
  for (const auto& s : t) out += s;
  return out;
}

std::string mutate_bytes(std::string s, Rng& rng) {
  static const char kInteresting[] = "%#:,(){}[]<>\"\\=x-0123456789@. \n?";
  switch (rng.below(4)) {
    case 0:
      if (!s.empty()) s[rng.below(s.size())] ^= static_cast<char>(1u << rng.below(8));
      break;
    case 1:
      if (!s.empty()) s[rng.below(s.size())] = kInteresting[rng.below(sizeof kInteresting - 1)];
      break;
    case 2: {
      std::size_t n = 1 + rng.below(16);
      std::string bytes;
      for (std::size_t i = 0; i < n; ++i) bytes += static_cast<char>(rng.below(256));
      s.insert(rng.below(s.size() + 1), bytes);
      break;
    }
    default:
      if (!s.empty()) s.erase(rng.below(s.size()), 1 + rng.below(8));
      break;
  }
  return s;
}

const char* kHandWritten = R"(// hand-written seed
module {
  func.func @hand(%a: tensor<2x4xf32>, %m: tensor<2x4xf32> {mj.role = "state"}, %lr: tensor<f32>, %step: tensor<f32>) -> (tensor<2x4xf32> {mj.name = "new m", mj.updates = "m"}, tensor<4x2xbf16>, tensor<f32>) {
    %t = "mj.transpose"(%a) {perm = [1, 0]} : (tensor<2x4xf32>) -> tensor<4x2xf32>   // layout
    %c = "mj.cast"(%t) {dtype = bf16} : (tensor<4x2xf32>) -> (tensor<4x2xbf16>)
    %k = "mj.constant"() {dtype = f32, shape = [], value = 0x7FF0000000000000 : f64} : () -> tensor<f32>
    %o:3 = "mj.adamw"(%a, %a, %m, %m, %lr, %step) {beta1 = 0.9 : f64, beta2 = 0.95 : f64, eps = 1.0e-08 : f64, weight_decay = 0.1 : f64} : (tensor<2x4xf32>, tensor<2x4xf32>, tensor<2x4xf32>, tensor<2x4xf32>, tensor<f32>, tensor<f32>) -> (tensor<2x4xf32>, tensor<2x4xf32>, tensor<2x4xf32>)
    %s = "mj.sum"(%o#2) {axes = [0, -1], keepdims = false} : (tensor<2x4xf32>) -> tensor<f32>
    %e = "mj.mul"(%s, %k) : (tensor<f32>, tensor<f32>) -> tensor<f32>
    return %o#1, %c, %e : tensor<2x4xf32>, tensor<4x2xbf16>, tensor<f32>
  }
}
)";

}  // namespace

int main(int argc, char** argv) {
  std::string crash_dir = ".";
  long scale = 1;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--crash-dir") == 0) crash_dir = argv[i + 1];
    else if (std::strcmp(argv[i], "--scale") == 0) scale = std::max(1L, std::atol(argv[i + 1]));
  }
  g_crash_path = crash_dir + "/parser_fuzz_crash.mlir";
  __sanitizer_set_death_callback(save_current_input);
  std::signal(SIGABRT, on_abort);
  auto started = std::chrono::steady_clock::now();

  std::vector<std::string> seeds = {print_graph(make_moe_layer_graph()), kHandWritten, print_graph(make_all_ops_graph())};
  Stats stats;
  Rng rng{20240611};
  for (const auto& seed : seeds) {
    // Every seed is valid as it is.
    Stats seed_stats;
    check_one(seed, seed_stats);
    if (seed_stats.accepted != 1 || seed_stats.failures != 0) {
      std::fprintf(stderr, "FAIL: a seed does not parse\n%s\n", seed.c_str());
      return 1;
    }
    // The big seed gets fewer random mutations: each costs more.
    long count = (seed.size() > 8000 ? 1500 : 3000) * scale;
    // Truncation at every k-th byte (about 300 cuts).
    std::size_t step = std::max<std::size_t>(1, seed.size() / 300);
    for (std::size_t cut = 0; cut < seed.size(); cut += step) check_one(seed.substr(0, cut), stats);
    auto tokens = tokenize(seed);
    for (long i = 0; i < count; ++i) check_one(mutate_bytes(seed, rng), stats);
    for (long i = 0; i < count; ++i) check_one(mutate_tokens(tokens, rng), stats);
    for (long i = 0; i < count / 2; ++i) check_one(mutate_number(tokens, rng), stats);
    for (long i = 0; i < count / 3; ++i) {  // stacks of 2..6 mutations
      std::string s = seed;
      for (std::size_t k = 2 + rng.below(5); k > 0; --k)
        s = rng.below(2) ? mutate_bytes(std::move(s), rng) : mutate_tokens(tokenize(s), rng);
      check_one(s, stats);
    }
  }
  // Pure noise, and a deep nest of brackets (no recursion may blow up).
  for (long i = 0; i < 600 * scale; ++i) {
    std::string noise;
    for (std::size_t n = rng.below(200); n > 0; --n) noise += static_cast<char>(rng.below(256));
    check_one(noise, stats);
  }
  check_one(std::string(100000, '(') + std::string(100000, '['), stats);
  check_one("func.func @f(" + std::string(200000, '%'), stats);
  check_one("func.func @f() {\n" + std::string(50000, '{') + "\n", stats);

  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  std::printf("parser fuzz: %ld inputs, %ld accepted (round-tripped), %ld rejected with a file:line:col diagnostic, %ld failures, %.1f s\n",
              stats.accepted + stats.rejected, stats.accepted, stats.rejected, stats.failures, seconds);
  if (stats.accepted < 10 || stats.rejected < 1000) {
    std::printf("FAIL: too few accepted or rejected inputs: the mutations do not exercise the parser\n");
    return 1;
  }
  return stats.failures == 0 ? 0 : 1;
}
