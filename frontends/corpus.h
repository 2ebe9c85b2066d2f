// The built-in training corpus of the GPT-MoE example: lines of clearly
// different kinds of text, so that the expert report has something to find.
//
//   arithmetic   37+48=85
//   code         let n = 7; while n > 0 { n = n - 2; }
//   prose        the small fox sees a red bird near the river.
//
// Every byte carries the kind of its line (the newline ending a line belongs
// to that line). The kinds are NOT fed to the model: it sees only the text;
// the expert report uses them to ask which kinds each expert takes.
// Deterministic for a seed: the same seed gives the same bytes everywhere.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace moejit {

struct TaggedText {
  std::string text;
  std::vector<std::uint8_t> kinds;      // one per byte of text: index into kind_names
  std::vector<std::string> kind_names;  // "arithmetic", "code", "prose"
};

// Lines of random kinds until at least `target_bytes` bytes.
TaggedText generate_corpus(std::uint64_t seed, std::size_t target_bytes = 300000);

// Any text as a single kind (for --data FILE).
TaggedText untagged_text(std::string text, std::string kind_name = "text");

// Reads a whole file; throws moejit::Error when it cannot.
std::string read_text_file(const std::string& path);

// The tail fraction of a tagged text (the validation split), cut at a byte.
TaggedText split_tail(const TaggedText& text, double fraction);

}  // namespace moejit
