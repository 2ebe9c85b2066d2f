// `moejit tune [graph.mlir...] [--config model.json|default]... [--moe-layer "T,D,F,E,K;..."] [--out FILE]
//  [--budget-s S] [--runs N] [--threads N] [--list | --compile-only] [--arch sm_90a]`
//
// Tunes the tile configs of every tunable kernel of a model on the present
// GPU and writes the winners to its tuning database (docs/tuning.md):
//  1. the graphs: the GPT-MoE training step of each config (as `gpt_moe
//     train` builds it: forward, backward, AdamW, in the config's
//     precision; bf16 for dtype auto; "default": the built-in defaults),
//     IR files, bench/moe_layer_bench's layer at each --moe-layer shape;
//     then the CUDA backend's pipeline;
//  2. their distinct problems (collect_tuning_problems, codegen/tuning_space.h:
//     the GemmProblem each emitter makes), merged: the configs' first, then
//     the IR files', then the layers', each graph's largest first;
//  3. per problem, the family's candidates, the heuristic's choice first
//     (so tuned is never slower than it), each a one-op graph whose module
//     is generated under a database holding just its entry (a candidate the
//     family's checks refuse is skipped); the distinct modules compiled by
//     NVRTC into the kernel cache on --threads host threads, in timing
//     order, while the main thread times the problems whose modules are
//     ready; a candidate that fails to compile or run, or whose output
//     differs from the heuristic's by more than the dtype's tolerance, is
//     skipped and reported;
//  4. timing: CUDA events (cuda_last_run_ms), 3 warm-up runs, the median of
//     --runs, the L2 overwritten before every timed run; a candidate wins
//     only when it beats the heuristic by more than 1% (noise);
//  5. the winners, with their families' version keys, merged into --out
//     (default tuning/<device>.<arch>.json, codegen/tuning_db.h names it; an
//     entry replaces one of the same key, stale ones are dropped), written
//     atomically; a table of heuristic vs tuned time per problem.
// --budget-s stops starting new problems when the time is spent (those left
// keep the heuristic and are listed). --list prints the problems and their
// candidates, --compile-only compiles every candidate into the kernel
// cache; neither needs a GPU (they use --arch's named target).
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include "frontends/config.h"
#include "frontends/moe_layer.h"
#include "frontends/trainer.h"
#include "ir/error.h"
#include "ir/parser.h"
#include "passes/pass_manager.h"
#include "tools/commands.h"
#if MOEJIT_WITH_CUDA
#include "codegen/cuda_codegen.h"
#include "codegen/tuning_db.h"
#include "codegen/tuning_space.h"
#include "runtime/cuda/cuda_backend.h"
#include "runtime/cuda/nvrtc_compiler.h"
#include "runtime/tensor_compare.h"
#endif

namespace moejit::cli {

namespace {

struct TuneOptions {
  std::vector<std::string> inputs;   // IR files
  std::vector<std::string> configs;  // gpt_moe JSON files, or "default" (GptMoeConfig's defaults: `gpt_moe train` without --config)
  std::vector<std::string> moe_layers;  // "T,D,F,E,K;..." (repeatable): bench/moe_layer_bench's layer at each shape
  std::int64_t vocab_size = 65;  // for a config without one (tinyshakespeare's 65 bytes)
  std::string out;
  double budget_s = 280.0;
  int runs = 20;
  int threads = 0;  // 0: min(hardware threads, 16)
  bool list = false;
  bool compile_only = false;
  std::string arch = "sm_90a";  // --list without a GPU
};

Graph config_graph(const std::string& file, std::int64_t vocab_size);

// The MoE layer of bench/moe_layer_bench.cpp, forward and backward, for one
// "T,D,F,E,K" shape: bf16 x [T, D] routed (router logits in f32, softmax
// top-K, dropless dispatch) to E experts (w_up [E, D, F], GELU, w_down
// [E, F, D]), combined, loss = mean(f32(y) * target) + a load-balance loss,
// the MoE fusions, then gradients with respect to x, w_router, w_up, w_down.
Graph moe_layer_graph(const std::string& shape) {
  std::vector<std::int64_t> v;
  std::size_t at = 0;
  while (at <= shape.size()) {
    std::size_t comma = std::min(shape.find(',', at), shape.size());
    try {
      std::size_t used = 0;
      v.push_back(std::stoll(shape.substr(at, comma - at), &used));
      if (used != comma - at) v.back() = 0;
    } catch (const std::exception&) {
      v.push_back(0);
    }
    at = comma + 1;
  }
  if (v.size() != 5 || std::any_of(v.begin(), v.end(), [](std::int64_t x) { return x < 1; }) || v[4] > v[3])
    throw Error(fmt::format("tune: --moe-layer '{}': expected T,D,F,E,K (positive integers, K <= E)", shape));
  const MoeLayerShape layer{v[0], v[1], v[2], v[3], v[4]};
  return moe_layer_graph(fmt::format("moe_layer_T{}_D{}_F{}_E{}_K{}", v[0], v[1], v[2], v[3], v[4]), layer, true);
}

// The graphs to tune, as the CUDA backend sees them (after its pipeline).
[[maybe_unused]] std::vector<Graph> graphs_to_tune(const TuneOptions& o) {  // (unused without CUDA)
  std::vector<Graph> graphs;
  // In tuning order (a --budget-s that runs out cuts the last): the training steps, IR files, then the layers.
  for (const auto& config : o.configs) graphs.push_back(config_graph(config, o.vocab_size));
  for (const auto& input : o.inputs) graphs.push_back(parse_graph(read_input(input), input));
  for (const std::string& shapes : o.moe_layers)
    for (std::size_t at = 0; at < shapes.size();) {
      std::size_t end = std::min(shapes.find(';', at), shapes.size());
      graphs.push_back(moe_layer_graph(shapes.substr(at, end - at)));
      at = end + 1;
    }
  for (Graph& graph : graphs) {
    PassManager manager;
    manager.add_pipeline(kCudaPipeline);
    manager.run(graph);
  }
  return graphs;
}

// The training step of a --config: the file's config over the defaults, or
// the defaults alone for "default"; as `gpt_moe train` builds it.
Graph config_graph(const std::string& file, std::int64_t vocab_size) {
  GptMoeConfig base;
  base.vocab_size = vocab_size;
  GptMoeConfig config = file == "default" ? base : load_config_file(file, base);
  if (config.vocab_size == 0) config.vocab_size = vocab_size;
  validate_config(config);
  // The precision `gpt_moe train` uses on the GPU: bf16 unless the config says f32.
  const DType precision = config.dtype == "f32" ? DType::f32 : DType::bf16;
  Graph graph = build_training_graph(config, precision).graph;
  graph.set_name(file == "default" ? "gpt_moe_default" : std::filesystem::path(file).stem().string());
  return graph;
}

#if MOEJIT_WITH_CUDA
using codegen::TunedFields;
using codegen::TuningProblem;

std::string duration_str(double s) {
  if (s < 60) return fmt::format("{:.0f}s", s);
  return fmt::format("{}m{:02d}s", static_cast<int>(s) / 60, static_cast<int>(s) % 60);
}

// The distinct problems of every graph to tune, graph by graph (graphs_to_tune's order), each graph's
// largest first; and the graphs' names.
std::vector<TuningProblem> problems_to_tune(const TuneOptions& o, const codegen::Target& target, std::string& names) {
  std::vector<TuningProblem> all;
  for (const Graph& graph : graphs_to_tune(o)) {
    names += (names.empty() ? "@" : ", @") + graph.name();
    for (auto& p : codegen::collect_tuning_problems(graph, target)) {
      auto same = std::find_if(all.begin(), all.end(), [&](const TuningProblem& q) { return q.family == p.family && q.label() == p.label(); });
      if (same != all.end())
        same->uses += p.uses;
      else
        all.push_back(std::move(p));
    }
  }
  return all;  // graph by graph, each largest first (collect_tuning_problems); shared ones with the first graph that has them
}

int run_list(const TuneOptions& o) {
  const codegen::Target target = codegen::Target::named(o.arch);
  std::string names;
  const auto problems = problems_to_tune(o, target, names);
  std::size_t total = 0;
  fmt::print("{} distinct problems of {} for {} ({}):\n", problems.size(), names, target.arch, target.device_name);
  for (const auto& p : problems) {
    const auto candidates = codegen::find_tunable_family(p.family)->candidates(p, target);
    total += candidates.size();
    fmt::print("  {:<12} {:<44} uses {:<3} heuristic {:<22} {} candidates\n", p.family, p.label(), p.uses,
               codegen::fields_str(p.heuristic), candidates.size());
  }
  fmt::print("{} candidates in all\n", total);
  std::string versions;
  for (const auto& f : codegen::tunable_families()) versions += fmt::format(" {} {}", f.name, codegen::tuning_family_version(f.name));
  fmt::print("version keys:{}\n", versions);
  return 0;
}

// Runs job(i) for every i < n on `threads` threads.
template <class Job>
void parallel_for(std::size_t n, int threads, const Job& job) {
  std::atomic<std::size_t> next{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < std::max(threads, 1); ++t)
    pool.emplace_back([&] {
      for (std::size_t i = next++; i < n; i = next++) job(i);
    });
  for (auto& t : pool) t.join();
}

// Runs job(begin, end) over [0, n) in about 4 * threads slices on `threads` threads.
template <class Job>
void parallel_slices(std::int64_t n, int threads, const Job& job) {
  const std::int64_t slices = std::max<std::int64_t>(1, std::min<std::int64_t>(4 * threads, n / 65536 + 1));
  parallel_for(static_cast<std::size_t>(slices), threads, [&](std::size_t s) {
    job(n * static_cast<std::int64_t>(s) / slices, n * static_cast<std::int64_t>(s + 1) / slices);
  });
}

// splitmix64: a counter-based generator, so slices of a tensor fill in parallel.
std::uint64_t mix64(std::uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Deterministic values in [-1, 1) for every float argument, and balanced
// segments (expert e gets rows [e N / E, (e + 1) N / E)) for "offsets".
std::map<std::string, HostTensor> problem_inputs(const Graph& graph, std::uint64_t seed, int threads) {
  std::map<std::string, HostTensor> inputs;
  for (const auto& arg : graph.args()) {
    const std::string& name = graph.value(arg.value).name;
    const TensorType& type = graph.type(arg.value);
    HostTensor value(type);
    if (name == "offsets") {
      const std::int64_t experts = type.numel() - 1;
      std::int64_t rows = 0;  // the rows of the op's row operand
      for (const auto& other : graph.args())
        if (graph.value(other.value).name == "xs") rows = graph.type(other.value).dim(0);
      for (std::int64_t e = 0; e <= experts; ++e) value.set(e, static_cast<double>(rows * e / experts));
    } else {
      const std::uint64_t base = mix64(seed) ^ std::hash<std::string>{}(name);
      parallel_slices(value.numel(), threads, [&](std::int64_t begin, std::int64_t end) {
        for (std::int64_t i = begin; i < end; ++i)
          value.set(i, static_cast<double>(mix64(base + static_cast<std::uint64_t>(i)) >> 40) / 8388608.0 - 1.0);
      });
    }
    inputs.emplace(name, std::move(value));
  }
  return inputs;
}

// normalized_error (runtime/tensor_compare.h) summed in slices on `threads` threads.
double parallel_normalized_error(const HostTensor& got, const HostTensor& reference, int threads) {
  if (got.type() != reference.type()) return normalized_error(got, reference);  // its error names both types
  std::mutex mutex;
  double diff = 0.0, norm = 0.0;
  bool nan_mismatch = false;
  parallel_slices(reference.numel(), threads, [&](std::int64_t begin, std::int64_t end) {
    double d = 0.0, r = 0.0;
    bool mismatch = false;
    for (std::int64_t i = begin; i < end; ++i) {
      const double x = got.get(i), y = reference.get(i);
      if (std::isnan(x) != std::isnan(y)) mismatch = true;
      if (std::isnan(x) || std::isnan(y)) continue;
      d += (x - y) * (x - y);
      r += y * y;
    }
    std::lock_guard<std::mutex> lock(mutex);
    diff += d;
    norm += r;
    nan_mismatch = nan_mismatch || mismatch;
  });
  if (nan_mismatch) return INFINITY;
  return std::sqrt(diff / std::max(norm, 1e-4 * static_cast<double>(reference.numel())));
}

// A graph that reads and writes twice the L2 size: run before every timed run.
class L2Flush {
 public:
  explicit L2Flush(Backend& backend) {
    const std::int64_t bytes = std::max<std::int64_t>(2 * cuda_device_info().l2_bytes, 64ll << 20);
    Graph g("moejit_tune_l2_flush");
    ValueId x = g.add_arg("x", TensorType{DType::f32, {bytes / 4}}, ArgRole::input);
    auto y = g.add_op(OpKind::Neg, {x}, {}, {TensorType{DType::f32, {bytes / 4}}});
    g.add_output(y.at(0), "y");
    exe_ = backend.compile(g);
    exe_->set("x", HostTensor(TensorType{DType::f32, {bytes / 4}}));
  }
  void flush() {
    exe_->run();
    cuda_last_run_ms(*exe_);  // waits
  }

 private:
  std::unique_ptr<Executable> exe_;
};

struct Candidate {
  std::size_t problem = 0;
  TunedFields fields;
  bool heuristic = false;
  std::size_t module = 0;  // index into the unique modules (CompileQueue)
  std::string failure;     // why it was skipped
  double median_ms = 0.0;
};

// The database a candidate compiles under: none for the heuristic (whatever
// file is installed), else one holding just the candidate's entry.
struct CandidateDb {
  codegen::TuningDb db;
  const codegen::TuningDb* use;
  CandidateDb(const TuningProblem& p, const Candidate& c, const codegen::Target& target)
      : db{target.device_name, target.arch, {{p.key, c.fields, codegen::tuning_family_version(p.family)}}},
        use(c.heuristic ? nullptr : &db) {}
};

// What the CUDA executor hands NVRTC for a module (runtime/cuda/executor.cpp
// does the same): compiled here ahead of the executor, it finds the result
// in the kernel cache.
struct ModuleJob {
  cuda::CompileRequest request;
  std::vector<int> weights;
  std::string failure;
  bool done = false;
};

// Generates the candidate's module (what the executor will compile) and
// checks that the family takes the candidate; returns its compile request
// (equal requests compile once: the kernel cache's key), or sets c.failure.
std::optional<ModuleJob> prepare_candidate(const TuningProblem& p, const Graph& graph, const codegen::Target& target, Candidate& c) {
  try {
    CandidateDb db(p, c, target);
    codegen::ScopedTuningDbOverride only(db.use);
    Graph prepared = graph;
    PassManager manager;
    manager.add_pipeline(kCudaPipeline);
    manager.run(prepared);
    const codegen::ModuleCode module = codegen::generate_module(prepared, target);
    for (const auto& step : module.steps)
      for (const auto& launch : step.launches)
        if (!c.heuristic && launch.kind == codegen::Launch::Kind::kernel && launch.config.tile_m > 0 &&
            launch.config.source != codegen::TileConfig::Source::tuned) {
          c.failure = fmt::format("refused by the family's checks ({})", launch.config.str());
          return std::nullopt;
        }
    ModuleJob job;
    job.request = cuda::CompileRequest{module.source, prepared.name(), target.arch, cuda::CompileOutput::cubin, true, module.kernels, {}};
    job.weights = codegen::compile_weights(module);
    return job;
  } catch (const std::exception& e) {
    c.failure = fmt::format("does not compile: {}", e.what());
    return std::nullopt;
  }
}

// The unique modules of every candidate, compiled by NVRTC into the kernel
// cache on `threads` host threads, in the order the problems are timed, while
// the main thread times the problems whose modules are ready.
class CompileQueue {
 public:
  CompileQueue(std::vector<ModuleJob> jobs, int threads) : jobs_(std::move(jobs)) {
    for (int t = 0; t < threads; ++t)
      pool_.emplace_back([this] {
        for (;;) {
          std::size_t i = next_++;
          if (i >= jobs_.size() || stop_) return;
          std::string failure;
          try {
            cuda::compile_module_parts(jobs_[i].request, cuda::compile_parts(jobs_[i].request.name_expressions.size()), jobs_[i].weights);
          } catch (const std::exception& e) {
            failure = fmt::format("does not compile: {}", e.what());
          }
          std::lock_guard<std::mutex> lock(mutex_);
          jobs_[i].failure = std::move(failure);
          jobs_[i].done = true;
          ready_.notify_all();
        }
      });
  }
  ~CompileQueue() { finish(); }
  // Waits until module i is compiled; "" or why it failed.
  std::string wait(std::size_t i) {
    std::unique_lock<std::mutex> lock(mutex_);
    ready_.wait(lock, [&] { return jobs_[i].done; });
    return jobs_[i].failure;
  }
  // Starts no further module; waits for those being compiled.
  void finish() {
    stop_ = true;
    for (auto& t : pool_)
      if (t.joinable()) t.join();
  }
  std::size_t size() const { return jobs_.size(); }

 private:
  std::vector<ModuleJob> jobs_;
  std::atomic<std::size_t> next_{0};
  std::atomic<bool> stop_{false};
  std::mutex mutex_;
  std::condition_variable ready_;
  std::vector<std::thread> pool_;
};

// Every candidate of every problem, prepared (the module generated and
// checked) on `threads` threads; the distinct modules in `jobs`, in problem order.
std::vector<Candidate> prepare_candidates(const std::vector<TuningProblem>& problems, const std::vector<Graph>& graphs,
                                          const std::vector<std::vector<TunedFields>>& spaces, const codegen::Target& target,
                                          int threads, std::vector<ModuleJob>& jobs) {
  std::vector<Candidate> all;
  for (std::size_t pi = 0; pi < problems.size(); ++pi)
    for (std::size_t j = 0; j < spaces[pi].size(); ++j) {
      Candidate c;
      c.problem = pi;
      c.fields = spaces[pi][j];
      c.heuristic = j == 0;
      all.push_back(std::move(c));
    }
  std::vector<std::optional<ModuleJob>> prepared(all.size());
  parallel_for(all.size(), threads, [&](std::size_t i) {
    prepared[i] = prepare_candidate(problems[all[i].problem], graphs[all[i].problem], target, all[i]);
  });
  std::map<std::string, std::size_t> index;  // source + kernels -> jobs[i]
  for (std::size_t i = 0; i < all.size(); ++i) {
    if (!prepared[i]) continue;
    std::string key = prepared[i]->request.source;
    for (const auto& k : prepared[i]->request.name_expressions) key += "\n" + k;
    auto [it, added] = index.emplace(std::move(key), jobs.size());
    if (added) jobs.push_back(std::move(*prepared[i]));
    all[i].module = it->second;
  }
  return all;
}

// The problems' graphs and candidates on the target, compiled and not timed
// (no GPU needed: --compile-only fills the kernel cache for the named --arch).
int run_compile_only(const TuneOptions& o) {
  const auto start = std::chrono::steady_clock::now();
  const codegen::Target target = codegen::Target::named(o.arch);
  std::string names;
  const auto problems = problems_to_tune(o, target, names);
  std::vector<Graph> graphs;
  std::vector<std::vector<TunedFields>> spaces;
  for (const auto& p : problems) {
    graphs.push_back(codegen::find_tunable_family(p.family)->problem_graph(p));
    spaces.push_back(codegen::find_tunable_family(p.family)->candidates(p, target));
  }
  const int threads = o.threads > 0 ? o.threads : static_cast<int>(std::clamp(std::thread::hardware_concurrency(), 1u, 16u));
  std::vector<ModuleJob> jobs;
  const auto candidates = prepare_candidates(problems, graphs, spaces, target, threads, jobs);
  const double prepared_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const auto before = cuda_compile_stats();
  std::size_t failed = 0;
  const std::size_t modules = jobs.size();
  {
    CompileQueue queue(std::move(jobs), threads);
    for (std::size_t i = 0; i < queue.size(); ++i)
      if (std::string why = queue.wait(i); !why.empty()) {
        ++failed;
        fmt::print("module {}: {}\n", i, why);
      }
  }
  const auto after = cuda_compile_stats();
  std::size_t refused = 0;
  for (const auto& c : candidates) refused += !c.failure.empty();
  fmt::print("moejit tune --compile-only: {} for {}: {} problems, {} candidates ({} refused), {} distinct modules "
             "({} compiled by NVRTC in {:.1f} s of compile time, {} from the disk cache, {} failed); prepared in {:.1f} s, "
             "{:.1f} s in all on {} threads\n",
             names, target.arch, problems.size(), candidates.size(), refused, modules,
             after.compiles - before.compiles, after.compile_seconds - before.compile_seconds, after.disk_hits - before.disk_hits,
             failed, prepared_s, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), threads);
  return failed ? 1 : 0;
}

int run_tune(const TuneOptions& o) {
  if (o.list) return run_list(o);
  if (o.compile_only) return run_compile_only(o);
  const auto start = std::chrono::steady_clock::now();
  auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); };
  std::unique_ptr<Backend> backend = make_cuda_backend();  // throws with the reason without a GPU
  const codegen::Target target = cuda_device_target();
  const std::string out = o.out.empty() ? (std::filesystem::path("tuning") / codegen::tuning_db_file_name(target)).string() : o.out;
  std::string names;
  const std::vector<TuningProblem> problems = problems_to_tune(o, target, names);
  std::vector<Graph> graphs;
  std::vector<std::vector<TunedFields>> spaces;
  std::size_t total = 0;
  for (const auto& p : problems) {
    graphs.push_back(codegen::find_tunable_family(p.family)->problem_graph(p));
    spaces.push_back(codegen::find_tunable_family(p.family)->candidates(p, target));
    total += spaces.back().size();
  }
  const int threads = o.threads > 0 ? o.threads : static_cast<int>(std::clamp(std::thread::hardware_concurrency(), 1u, 16u));
  std::vector<ModuleJob> jobs;
  std::vector<Candidate> candidates = prepare_candidates(problems, graphs, spaces, target, threads, jobs);
  fmt::print("moejit tune: {} ({}), {}: {} distinct problems, {} candidates ({} distinct modules), {} compile threads, {} timed runs each\n",
             target.device_name, target.arch, names, problems.size(), total, jobs.size(), threads, o.runs);
  std::fflush(stdout);
  const auto compiles_before = cuda_compile_stats();
  CompileQueue queue(std::move(jobs), threads);  // compiles from here on, while the problems are timed

  L2Flush l2(*backend);
  struct Result {
    bool tuned = false;
    double heuristic_ms = 0.0, best_ms = 0.0;
    TunedFields best;
    std::vector<std::string> skipped;
  };
  std::vector<Result> results(problems.size());
  std::size_t done = 0, next_problem = 0, at = 0;  // candidates[at]: the first of problem next_problem
  double compile_wait_s = 0.0;
  for (; next_problem < problems.size(); ++next_problem) {
    if (elapsed() > o.budget_s) break;
    const std::size_t pi = next_problem;
    const TuningProblem& p = problems[pi];
    Result& r = results[pi];
    const auto inputs = problem_inputs(graphs[pi], 1, threads);
    HostTensor reference;
    for (; at < candidates.size() && candidates[at].problem == pi; ++at) {
      Candidate& c = candidates[at];
      ++done;
      const std::string what = fmt::format("{} {}: {}{}", p.family, p.label(), codegen::fields_str(c.fields), c.heuristic ? " (heuristic)" : "");
      if (c.failure.empty()) {
        const double waited = elapsed();
        c.failure = queue.wait(c.module);
        compile_wait_s += elapsed() - waited;
      }
      if (c.failure.empty() && !c.heuristic && reference.numel() == 0) c.failure = "not run: the heuristic's config failed";
      if (c.failure.empty()) {
        try {
          std::unique_ptr<Executable> exe;
          {
            CandidateDb db(p, c, target);
            codegen::ScopedTuningDbOverride only(db.use);
            exe = backend->compile(graphs[pi]);  // the module is in the kernel cache
          }
          for (const auto& [name, value] : inputs) exe->set(name, value);
          exe->run();
          HostTensor got = exe->get("out");
          if (c.heuristic) {
            reference = std::move(got);
          } else if (double err = parallel_normalized_error(got, reference, threads); !(err <= tolerance(got.dtype()))) {
            c.failure = fmt::format("disagrees with the heuristic's output: normalized error {:.3g} > {:.3g}", err, tolerance(got.dtype()));
          }
          if (c.failure.empty()) {
            for (int i = 0; i < 3; ++i) exe->run();
            std::vector<double> ms;
            for (int i = 0; i < o.runs; ++i) {
              l2.flush();
              exe->run();
              ms.push_back(cuda_last_run_ms(*exe));
            }
            std::sort(ms.begin(), ms.end());
            c.median_ms = ms.size() % 2 ? ms[ms.size() / 2] : 0.5 * (ms[ms.size() / 2 - 1] + ms[ms.size() / 2]);
          }
        } catch (const std::exception& e) {
          c.failure = fmt::format("fails to run: {}", e.what());
        }
      }
      const double t = elapsed();
      const double left = done < total ? t / static_cast<double>(done) * static_cast<double>(total - done) : 0.0;
      if (!c.failure.empty()) {
        r.skipped.push_back(fmt::format("{}: {}", codegen::fields_str(c.fields), c.failure));
        fmt::print("[{:>4}/{}] {}: skipped, {} | {} elapsed, ~{} left\n", done, total, what, c.failure, duration_str(t), duration_str(left));
      } else {
        fmt::print("[{:>4}/{}] {}: {:.4f} ms | {} elapsed, ~{} left\n", done, total, what, c.median_ms, duration_str(t), duration_str(left));
        if (c.heuristic) {
          r.tuned = true;
          r.heuristic_ms = r.best_ms = c.median_ms;
          r.best = c.fields;
        } else if (r.tuned && c.median_ms < r.best_ms && c.median_ms < 0.99 * r.heuristic_ms) {
          r.best_ms = c.median_ms;
          r.best = c.fields;
        }
      }
      std::fflush(stdout);
    }
  }
  queue.finish();
  const auto compiles_after = cuda_compile_stats();

  // The table, and the database.
  fmt::print("\n{:<12} {:<44} {:>4} {:<22} {:>10} {:<22} {:>10} {:>7}\n", "family", "problem", "uses", "heuristic", "ms", "tuned",
             "ms", "speedup");
  std::vector<codegen::TuningEntry> entries;
  std::size_t untuned = 0;
  for (std::size_t i = 0; i < problems.size(); ++i) {
    const TuningProblem& p = problems[i];
    const Result& r = results[i];
    if (!r.tuned) {
      ++untuned;
      fmt::print("{:<12} {:<44} {:>4} {:<22} {:>10} {}\n", p.family, p.label(), p.uses, codegen::fields_str(p.heuristic), "-",
                 i >= next_problem ? "not tuned: --budget-s spent" : "not tuned: the heuristic's config failed");
    } else {
      fmt::print("{:<12} {:<44} {:>4} {:<22} {:>10.4f} {:<22} {:>10.4f} {:>6.2f}x\n", p.family, p.label(), p.uses,
                 codegen::fields_str(p.heuristic), r.heuristic_ms, codegen::fields_str(r.best), r.best_ms, r.heuristic_ms / r.best_ms);
      // Where two problems share a bucket, the first one's winner is kept (the model's before a layer's; the larger within a graph).
      if (std::none_of(entries.begin(), entries.end(), [&](const codegen::TuningEntry& e) { return e.key == p.key; }))
        entries.push_back({p.key, r.best, codegen::tuning_family_version(p.family)});
    }
    for (const auto& s : r.skipped) fmt::print("    skipped {}\n", s);
  }
  codegen::TuningDb db{target.device_name, target.arch, {}};
  std::string problem;
  std::error_code ec;
  if (std::filesystem::exists(out, ec)) {
    if (auto existing = codegen::read_tuning_db(out, target, problem)) {
      db = std::move(*existing);
      std::string stale;
      if (codegen::drop_stale_entries(db, stale) > 0) fmt::print("moejit tune: the existing {} held {}: dropped\n", out, stale);
    } else
      fmt::print("moejit tune: the existing {} {}: replaced by this run's entries\n", out, problem);
  }
  const std::size_t before = db.entries.size();
  codegen::merge_tuning_entries(db, entries);
  if (!std::filesystem::path(out).parent_path().empty()) std::filesystem::create_directories(std::filesystem::path(out).parent_path(), ec);
  codegen::write_tuning_db(out, db);
  fmt::print("\nwrote {}: {} entries ({} from this run, {} new) in {}{}\n", out, db.entries.size(), entries.size(),
             db.entries.size() - before, duration_str(elapsed()),
             untuned ? fmt::format("; {} problems not tuned", untuned) : std::string());
  fmt::print("compiling: {} modules by NVRTC ({:.1f} s of compile time on {} threads, {} from the disk cache); the timing waited {:.1f} s for them\n",
             compiles_after.compiles - compiles_before.compiles, compiles_after.compile_seconds - compiles_before.compile_seconds, threads,
             compiles_after.disk_hits - compiles_before.disk_hits, compile_wait_s);
  return 0;
}
#else
int run_tune(const TuneOptions&) {
  throw Error("tune: this build has no CUDA backend (configured with -DMOEJIT_WITH_CUDA=OFF)");
}
#endif

}  // namespace

void register_tune_command(CLI::App& app, Command& selected) {
  auto o = std::make_shared<TuneOptions>();
  CLI::App* tune = app.add_subcommand("tune", "Tune the tile configs of a model's kernels on this GPU; write its tuning database");
  tune->add_option("input", o->inputs, "IR files to tune (and/or --config, --moe-layer)");
  tune->add_option("--config", o->configs,
                   "GPT-MoE config JSON (as gpt_moe train --config), or \"default\" (the built-in defaults): tune its training step; "
                   "may be repeated");
  tune->add_option("--moe-layer", o->moe_layers,
                   "MoE layer shapes \"T,D,F,E,K;...\" (bench/moe_layer_bench's layer, forward and backward), with or without a graph; "
                   "may be repeated");
  tune->add_option("--vocab-size", o->vocab_size, "Vocabulary of a --config without vocab_size (default 65)");
  tune->add_option("-o,--out", o->out, "Database to write (default tuning/<device>.<arch>.json); existing entries are kept");
  tune->add_option("--budget-s", o->budget_s, "Start no new problem after this many seconds (default 280)");
  tune->add_option("--runs", o->runs, "Timed runs per candidate; the median counts (default 20)")->check(CLI::Range(1, 10000));
  tune->add_option("--threads", o->threads, "Host threads compiling candidates (default min(cores, 16))")->check(CLI::Range(0, 256));
  tune->add_flag("--list", o->list, "Print the problems and their candidates, then stop (no GPU needed)");
  tune->add_flag("--compile-only", o->compile_only,
                 "Compile every candidate into the kernel cache for --arch and stop (no GPU needed; time nothing)");
  tune->add_option("--arch", o->arch, "Target of --list and --compile-only (default sm_90a)");
  tune->callback([o, &selected] {
    selected = [o] {
      if (o->inputs.empty() && o->configs.empty() && o->moe_layers.empty())
        throw Error("tune: expected an IR file, a --config or --moe-layer shapes, found none");
      return run_tune(*o);
    };
  });
}

}  // namespace moejit::cli
