// `moejit tune (--config model.json | graph.mlir) [--moe-layer "T,D,F,E,K;..."] [--out FILE] [--budget-s S]
//  [--runs N] [--threads N] [--list [--arch sm_90a]]`
//
// Tunes the tile configs of every tunable kernel of a model on the present
// GPU and writes the winners to its tuning database (docs/tuning.md):
//  1. the graph: the GPT-MoE training step of a config (as `gpt_moe train`
//     builds it: forward, backward, AdamW, in the config's precision; bf16
//     for dtype auto), or an IR file, and/or bench/moe_layer_bench's layer
//     at each --moe-layer shape; then the CUDA backend's pipeline;
//  2. its distinct problems (collect_tuning_problems, codegen/tuning_space.h:
//     the GemmProblem each emitter makes), largest first;
//  3. per problem, the family's candidates, the heuristic's choice first
//     (so tuned is never slower than it): a one-op graph compiled through
//     the kernel cache on --threads host threads, each candidate under a
//     database holding just its entry; a candidate the family's checks
//     refuse, that fails to compile or run, or whose output differs from
//     the heuristic's by more than the dtype's tolerance is skipped and
//     reported;
//  4. timing: CUDA events (cuda_last_run_ms), 3 warm-up runs, the median of
//     --runs, the L2 overwritten before every timed run; a candidate wins
//     only when it beats the heuristic by more than 1% (noise);
//  5. the winners merged into --out (default tuning/<device>.<arch>.json,
//     codegen/tuning_db.h names it; an entry replaces one of the same key),
//     written atomically; a table of heuristic vs tuned time per problem.
// --budget-s stops starting new problems when the time is spent (those left
// keep the heuristic and are listed). --list prints the problems and their
// candidates and needs no GPU (for --arch's named target).
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <thread>

#include "frontends/config.h"
#include "frontends/trainer.h"
#include "ir/builder.h"
#include "ir/error.h"
#include "ir/parser.h"
#include "passes/autodiff.h"
#include "passes/pass_manager.h"
#include "tools/commands.h"
#if MOEJIT_WITH_CUDA
#include "codegen/cuda_codegen.h"
#include "codegen/tuning_db.h"
#include "codegen/tuning_space.h"
#include "runtime/cuda/cuda_backend.h"
#include "runtime/tensor_compare.h"
#endif

namespace moejit::cli {

namespace {

struct TuneOptions {
  std::string input;   // IR file
  std::string config;  // gpt_moe JSON
  std::string moe_layers;  // "T,D,F,E,K;...": bench/moe_layer_bench's layer at each shape
  std::int64_t vocab_size = 65;  // for a config without one (tinyshakespeare's 65 bytes)
  std::string out;
  double budget_s = 280.0;
  int runs = 20;
  int threads = 0;  // 0: min(hardware threads, 16)
  bool list = false;
  std::string arch = "sm_90a";  // --list without a GPU
};

Graph graph_to_tune(const TuneOptions& o);

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
  const std::int64_t T = v[0], D = v[1], F = v[2], E = v[3], K = v[4];
  Graph g(fmt::format("moe_layer_T{}_D{}_F{}_E{}_K{}", T, D, F, E, K));
  Builder b(g);
  Tensor x = b.input("x", {T, D}, DType::bf16);
  Tensor target = b.input("target", {T, D});
  Tensor w_router = b.param("w_router", {D, E}, DType::bf16);
  Tensor w_up = b.param("w_up", {E, D, F}, DType::bf16);
  Tensor w_down = b.param("w_down", {E, F, D}, DType::bf16);
  Tensor logits = b.cast(b.matmul(x, w_router), DType::f32);
  auto [weights, experts] = b.moe_gate(logits, {.top_k = K, .normalize = true});
  auto [slots, offsets, positions, counts] = b.moe_dispatch(experts, {.num_experts = E});
  (void)counts;
  Tensor h = b.gelu(b.moe_grouped_matmul(b.moe_permute(x, slots, K), w_up, offsets));
  Tensor y = b.moe_combine(b.moe_grouped_matmul(h, w_down, offsets), b.cast(weights, DType::bf16), positions);
  Tensor aux = b.moe_load_balance_loss(b.softmax(logits), experts, 0.01);
  b.output(y, "y");
  b.output(b.add(b.mean(b.mul(b.cast(y, DType::f32), target), {0, 1}), aux), "loss");
  run_pipeline(g, "moe-fusions");  // before autodiff, as the bench and the trainer do
  append_backward(g, {.loss = "loss", .wrt = {"x", "w_router", "w_up", "w_down"}});
  return g;
}

// The graphs to tune, as the CUDA backend sees them (after its pipeline).
std::vector<Graph> graphs_to_tune(const TuneOptions& o) {
  std::vector<Graph> graphs;
  for (std::size_t at = 0; at < o.moe_layers.size();) {
    std::size_t end = std::min(o.moe_layers.find(';', at), o.moe_layers.size());
    graphs.push_back(moe_layer_graph(o.moe_layers.substr(at, end - at)));
    at = end + 1;
  }
  if (!o.config.empty() || !o.input.empty()) graphs.push_back(graph_to_tune(o));
  for (Graph& graph : graphs) {
    PassManager manager;
    manager.add_pipeline(kCudaPipeline);
    manager.run(graph);
  }
  return graphs;
}

// The graph of --config or of the IR file.
Graph graph_to_tune(const TuneOptions& o) {
  Graph graph("empty");
  if (!o.config.empty()) {
    GptMoeConfig base;
    base.vocab_size = o.vocab_size;
    GptMoeConfig config = load_config_file(o.config, base);
    validate_config(config);
    // The precision `gpt_moe train` uses on the GPU: bf16 unless the config says f32.
    const DType precision = config.dtype == "f32" ? DType::f32 : DType::bf16;
    graph = build_training_graph(config, precision).graph;
  } else {
    graph = parse_graph(read_input(o.input), o.input);
  }
  return graph;
}

#if MOEJIT_WITH_CUDA
using codegen::TunedFields;
using codegen::TuningProblem;

std::string duration_str(double s) {
  if (s < 60) return fmt::format("{:.0f}s", s);
  return fmt::format("{}m{:02d}s", static_cast<int>(s) / 60, static_cast<int>(s) % 60);
}

// The distinct problems of every graph to tune, largest first; and the graphs' names.
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
  std::stable_sort(all.begin(), all.end(), [](const TuningProblem& a, const TuningProblem& b) { return a.flops > b.flops; });
  return all;
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
  return 0;
}

// Deterministic values in [-1, 1) for every float argument, and balanced
// segments (expert e gets rows [e N / E, (e + 1) N / E)) for "offsets".
std::map<std::string, HostTensor> problem_inputs(const Graph& graph, std::uint64_t seed) {
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
      std::uint64_t state = seed * 0x9E3779B97F4A7C15ull + std::hash<std::string>{}(name);
      for (std::int64_t i = 0; i < value.numel(); ++i) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        value.set(i, static_cast<double>(state >> 40) / 8388608.0 - 1.0);
      }
    }
    inputs.emplace(name, std::move(value));
  }
  return inputs;
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
  std::unique_ptr<Executable> exe;
  std::string failure;  // why it was skipped
  double median_ms = 0.0;
};

// The database a candidate compiles under: none for the heuristic (whatever
// file is installed), else one holding just the candidate's entry.
struct CandidateDb {
  codegen::TuningDb db;
  const codegen::TuningDb* use;
  CandidateDb(const TuningProblem& p, const Candidate& c, const codegen::Target& target)
      : db{target.device_name, target.arch, {{p.key, c.fields}}}, use(c.heuristic ? nullptr : &db) {}
};

// Generates the candidate's module (what the executor will compile) and
// checks that the family takes the candidate; returns the module's source
// and kernels (equal texts compile once: the kernel cache's key), or sets
// c.failure.
std::string prepare_candidate(const TuningProblem& p, const Graph& graph, const codegen::Target& target, Candidate& c) {
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
          return "";
        }
    std::string key = module.source;
    for (const auto& k : module.kernels) key += "\n" + k;
    return key;
  } catch (const std::exception& e) {
    c.failure = fmt::format("does not compile: {}", e.what());
    return "";
  }
}

void compile_candidate(Backend& backend, const TuningProblem& p, const Graph& graph, const codegen::Target& target, Candidate& c) {
  try {
    CandidateDb db(p, c, target);
    codegen::ScopedTuningDbOverride only(db.use);
    c.exe = backend.compile(graph);
  } catch (const std::exception& e) {
    c.failure = fmt::format("does not compile: {}", e.what());
  }
}

// Runs job(i) for every i < n on `threads` threads.
template <class Job>
void parallel_for(std::size_t n, int threads, const Job& job) {
  std::atomic<std::size_t> next{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&] {
      for (std::size_t i = next++; i < n; i = next++) job(i);
    });
  for (auto& t : pool) t.join();
}

int run_tune(const TuneOptions& o) {
  if (o.list) return run_list(o);
  const auto start = std::chrono::steady_clock::now();
  auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); };
  std::unique_ptr<Backend> backend = make_cuda_backend();  // throws with the reason without a GPU
  const codegen::Target target = cuda_device_target();
  const std::string out = o.out.empty() ? (std::filesystem::path("tuning") / codegen::tuning_db_file_name(target)).string() : o.out;
  std::string names;
  const std::vector<TuningProblem> problems = problems_to_tune(o, target, names);
  std::vector<std::vector<TunedFields>> spaces;
  std::size_t total = 0;
  for (const auto& p : problems) {
    spaces.push_back(codegen::find_tunable_family(p.family)->candidates(p, target));
    total += spaces.back().size();
  }
  const int threads = o.threads > 0 ? o.threads : static_cast<int>(std::clamp(std::thread::hardware_concurrency(), 1u, 16u));
  fmt::print("moejit tune: {} ({}), {}: {} distinct problems, {} candidates, {} compile threads, {} timed runs each\n",
             target.device_name, target.arch, names, problems.size(), total, threads, o.runs);
  std::fflush(stdout);

  L2Flush l2(*backend);
  struct Result {
    bool tuned = false;
    double heuristic_ms = 0.0, best_ms = 0.0;
    TunedFields best;
    std::vector<std::string> skipped;
  };
  std::vector<Result> results(problems.size());
  std::size_t done = 0, next_problem = 0;
  while (next_problem < problems.size()) {
    if (elapsed() > o.budget_s) break;
    // A wave: the next problems until at least 2 * threads candidates, compiled in parallel.
    std::vector<Candidate> wave;
    std::vector<Graph> graphs;
    std::size_t first = next_problem;
    while (next_problem < problems.size() && (wave.size() < static_cast<std::size_t>(2 * threads) || next_problem == first)) {
      graphs.push_back(codegen::find_tunable_family(problems[next_problem].family)->problem_graph(problems[next_problem]));
      for (std::size_t j = 0; j < spaces[next_problem].size(); ++j) {
        Candidate c;
        c.problem = next_problem;
        c.fields = spaces[next_problem][j];
        c.heuristic = j == 0;
        wave.push_back(std::move(c));
      }
      ++next_problem;
    }
    // Candidates whose modules are equal (the same kernels of problems of
    // one layout) compile once: the first of each in parallel, then the
    // others, which find it in the kernel cache.
    std::vector<std::string> keys(wave.size());
    parallel_for(wave.size(), threads, [&](std::size_t i) {
      keys[i] = prepare_candidate(problems[wave[i].problem], graphs[wave[i].problem - first], target, wave[i]);
    });
    std::vector<std::size_t> leaders, followers;
    std::set<std::string> seen;
    for (std::size_t i = 0; i < wave.size(); ++i)
      if (wave[i].failure.empty()) (seen.insert(keys[i]).second ? leaders : followers).push_back(i);
    for (const auto* group : {&leaders, &followers})
      parallel_for(group->size(), threads, [&](std::size_t j) {
        Candidate& c = wave[(*group)[j]];
        compile_candidate(*backend, problems[c.problem], graphs[c.problem - first], target, c);
      });

    // Time the wave, one problem at a time, the heuristic first.
    for (std::size_t pi = first; pi < next_problem; ++pi) {
      const TuningProblem& p = problems[pi];
      Result& r = results[pi];
      const auto inputs = problem_inputs(graphs[pi - first], 1);
      HostTensor reference;
      for (auto& c : wave) {
        if (c.problem != pi) continue;
        ++done;
        const std::string what = fmt::format("{} {}: {}{}", p.family, p.label(), codegen::fields_str(c.fields), c.heuristic ? " (heuristic)" : "");
        if (c.failure.empty() && !c.heuristic && reference.numel() == 0) c.failure = "not run: the heuristic's config failed";
        if (c.failure.empty()) {
          try {
            for (const auto& [name, value] : inputs) c.exe->set(name, value);
            c.exe->run();
            HostTensor got = c.exe->get("out");
            if (c.heuristic) {
              reference = got;
            } else if (double err = normalized_error(got, reference); !(err <= tolerance(got.dtype()))) {
              c.failure = fmt::format("disagrees with the heuristic's output: normalized error {:.3g} > {:.3g}", err, tolerance(got.dtype()));
            }
            if (c.failure.empty()) {
              for (int i = 0; i < 3; ++i) c.exe->run();
              std::vector<double> ms;
              for (int i = 0; i < o.runs; ++i) {
                l2.flush();
                c.exe->run();
                ms.push_back(cuda_last_run_ms(*c.exe));
              }
              std::sort(ms.begin(), ms.end());
              c.median_ms = ms.size() % 2 ? ms[ms.size() / 2] : 0.5 * (ms[ms.size() / 2 - 1] + ms[ms.size() / 2]);
            }
          } catch (const std::exception& e) {
            c.failure = fmt::format("fails to run: {}", e.what());
          }
        }
        c.exe.reset();  // frees its device memory
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
  }

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
      // Problems are largest first: where two share a bucket, the larger one's winner is kept.
      if (std::none_of(entries.begin(), entries.end(), [&](const codegen::TuningEntry& e) { return e.key == p.key; }))
        entries.push_back({p.key, r.best});
    }
    for (const auto& s : r.skipped) fmt::print("    skipped {}\n", s);
  }
  codegen::TuningDb db{target.device_name, target.arch, {}};
  std::string problem;
  std::error_code ec;
  if (std::filesystem::exists(out, ec)) {
    if (auto existing = codegen::read_tuning_db(out, target, problem))
      db = std::move(*existing);
    else
      fmt::print("moejit tune: the existing {} {}: replaced by this run's entries\n", out, problem);
  }
  const std::size_t before = db.entries.size();
  codegen::merge_tuning_entries(db, entries);
  if (!std::filesystem::path(out).parent_path().empty()) std::filesystem::create_directories(std::filesystem::path(out).parent_path(), ec);
  codegen::write_tuning_db(out, db);
  fmt::print("\nwrote {}: {} entries ({} from this run, {} new) in {}{}\n", out, db.entries.size(), entries.size(),
             db.entries.size() - before, duration_str(elapsed()),
             untuned ? fmt::format("; {} problems not tuned", untuned) : std::string());
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
  tune->add_option("input", o->input, "IR file to tune (or --config)");
  tune->add_option("--config", o->config, "GPT-MoE config JSON (as gpt_moe train --config): tune its training step");
  tune->add_option("--moe-layer", o->moe_layers,
                   "MoE layer shapes \"T,D,F,E,K;...\" (bench/moe_layer_bench's layer, forward and backward), with or without a graph");
  tune->add_option("--vocab-size", o->vocab_size, "Vocabulary of a --config without vocab_size (default 65)");
  tune->add_option("-o,--out", o->out, "Database to write (default tuning/<device>.<arch>.json); existing entries are kept");
  tune->add_option("--budget-s", o->budget_s, "Start no new problem after this many seconds (default 280)");
  tune->add_option("--runs", o->runs, "Timed runs per candidate; the median counts (default 20)")->check(CLI::Range(1, 10000));
  tune->add_option("--threads", o->threads, "Host threads compiling candidates (default min(cores, 16))")->check(CLI::Range(0, 256));
  tune->add_flag("--list", o->list, "Print the problems and their candidates, then stop (no GPU needed)");
  tune->add_option("--arch", o->arch, "Target of --list (default sm_90a)");
  tune->callback([o, &selected] {
    selected = [o] {
      if (!o->input.empty() && !o->config.empty()) throw Error("tune: expected one IR file or one --config, found both");
      if (o->input.empty() && o->config.empty() && o->moe_layers.empty())
        throw Error("tune: expected an IR file, a --config or --moe-layer shapes, found none");
      return run_tune(*o);
    };
  });
}

}  // namespace moejit::cli
