// The pass manager: parses a pipeline ("canonicalize,cse,autodiff{loss=loss
// wrt=w1,w2},dce"), creates the passes by name and runs them in order on one
// graph. Between passes it can verify the graph (on by default: a failure
// names the pass that broke it), print the IR after each pass with MLIR's
// `// -----// IR Dump After cse //----- //` header, and report the counters
// each pass kept.
//
// MOEJIT_DEBUG=2 (or more) in the environment turns on printing the IR after
// every pass to stderr, for any pass manager that prints nowhere else.
#pragma once
#include <cstdint>
#include <iosfwd>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "passes/pass.h"

namespace moejit {

// One entry of a pipeline: a pass name and its options.
struct PipelineEntry {
  std::string name;
  PassOptions options;
  bool operator==(const PipelineEntry&) const = default;
};

// Parses MLIR-style pipeline text: entries separated by commas; an entry is a
// pass name, optionally followed by {key=value key=value} (options separated
// by spaces; commas inside the braces belong to the value). Checks syntax
// only (not pass names); throws moejit::Error saying where and what.
std::vector<PipelineEntry> parse_pipeline(std::string_view text);
// The text form of a parsed pipeline (parse_pipeline round-trips it).
std::string pipeline_str(const std::vector<PipelineEntry>& pipeline);

struct PassManagerOptions {
  // Verify the input graph and the graph after every pass.
  bool verify_each = true;
  // Where to print the IR after every pass; nullptr: nowhere.
  std::ostream* print_ir_after_all = nullptr;
};

// Counters of one pass of the last run, in pipeline order.
struct PassStatistics {
  std::string pass;
  std::vector<std::pair<std::string, std::int64_t>> counters;
};

class PassManager {
 public:
  explicit PassManager(PassManagerOptions options = {});
  ~PassManager();
  PassManager(PassManager&&) noexcept;
  PassManager& operator=(PassManager&&) noexcept;

  void add(std::unique_ptr<Pass> pass);
  // Parses the pipeline and appends its passes (create_pass: unknown names
  // and options are errors, raised before anything runs).
  void add_pipeline(std::string_view pipeline);
  std::size_t size() const { return passes_.size(); }
  std::vector<std::string> pass_names() const;

  // Runs every pass in order. Throws moejit::Error when the input is invalid
  // or a pass leaves an invalid graph (naming the pass), or when a pass throws
  // (its message prefixed with the pass name).
  void run(Graph& graph);

  const std::vector<PassStatistics>& statistics() const { return statistics_; }
  // Prints the counters of the last run, one block per pass.
  void print_statistics(std::ostream& out) const;

 private:
  PassManagerOptions options_;
  std::vector<std::unique_ptr<Pass>> passes_;
  std::vector<PassStatistics> statistics_;
};

// Convenience: parse, create and run a pipeline with the default options.
void run_pipeline(Graph& graph, std::string_view pipeline);

}  // namespace moejit
