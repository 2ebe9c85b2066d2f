// A pass rewrites a graph in place. Each pass is one file with a header
// comment (what, why, algorithm), a kebab-case name, a create function, and
// counters it can print.
//
// Pipelines are written as in MLIR: "canonicalize,cse,autodiff{loss=loss wrt=w1,w2},dce".
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "ir/graph.h"

namespace moejit {

// key=value options of one pass in a pipeline; values are raw strings.
using PassOptions = std::map<std::string, std::string>;

class Pass {
 public:
  virtual ~Pass() = default;
  virtual std::string_view name() const = 0;
  virtual void run(Graph& graph) = 0;
  // Counters of the last run ("ops-removed", 3), printed with --pass-statistics.
  const std::vector<std::pair<std::string, std::int64_t>>& statistics() const { return stats_; }
  // The pass manager clears the counters before each run.
  void reset_statistics() { stats_.clear(); }

 protected:
  // Adds n to a counter (created at its first use, so counters print in the
  // order a pass first touches them).
  void count(const std::string& counter, std::int64_t n = 1);

 private:
  std::vector<std::pair<std::string, std::int64_t>> stats_;
};

struct PassRegistration {
  std::string name;
  std::string description;
  std::function<std::unique_ptr<Pass>(const PassOptions&)> create;
  // The option keys the pass takes ("loss", "wrt"); create_pass rejects any
  // other key before calling create. Empty: the pass takes no options.
  std::vector<std::string> options = {};
};

// Every pass moejit knows (passes/registry.cpp lists them explicitly, one
// line each: static registration does not survive static linking).
const std::vector<PassRegistration>& registered_passes();
// Creates a pass by name; throws moejit::Error naming the known passes when
// the name is unknown, or when an option is not one the pass takes.
std::unique_ptr<Pass> create_pass(std::string_view name, const PassOptions& options = {});
const PassRegistration* find_pass(std::string_view name);

// A named pipeline: a name that stands for a pipeline text wherever a pass
// name may be written ("cuda-pipeline", "moe-fusions,cse"). The backends run
// theirs through the PassManager by name, so `moejit opt --passes=NAME` and
// the tests run exactly what the product runs (passes/pipelines.cpp).
struct NamedPipeline {
  std::string name;
  std::string description;
  std::string pipeline;  // pipeline text; may name other pipelines
};
const std::vector<NamedPipeline>& named_pipelines();
// The pipeline the CUDA backend runs on every graph it compiles.
inline constexpr std::string_view kCudaPipeline = "cuda-pipeline";
const NamedPipeline* find_named_pipeline(std::string_view name);

// Helpers for create functions: a comma list ("w1,w2" -> {"w1", "w2"}), an
// integer and a bool ("true"/"false"/"1"/"0"); each throws moejit::Error
// naming the pass and the option when the text is malformed.
std::vector<std::string> option_list(const PassOptions& options, const std::string& key);
std::int64_t option_int(std::string_view pass, const PassOptions& options, const std::string& key, std::int64_t fallback);
bool option_bool(std::string_view pass, const PassOptions& options, const std::string& key, bool fallback);

}  // namespace moejit
