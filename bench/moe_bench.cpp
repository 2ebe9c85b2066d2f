// moe_bench: times the MoE building blocks on the CUDA backend (or, without
// a GPU, on the CPU backend at small sizes) against their floors.
//
//   moe_bench                                  # default shapes for the device
//   moe_bench --shape 4096,512,1024,8,2 --runs 50 --json moe.json
//   moe_bench --device cpu --cases grouped_matmul,route
//
// Cases (bench/moe_cases.h): grouped_matmul (one moe.grouped_matmul), route
// and route (fused) (router matmul + gate + dispatch + permute, unfused vs one
// moe.route), layer fwd+bwd and layer fwd+bwd (fused) (a whole MoE layer with
// its aux loss and append_backward), dense_matmul (one mj.matmul, context).
//
// Method (/work/.library/device/METHOD.md): before timing, every case is
// checked: at the smallest shape against the CPU backend (normalized error of
// every output), at every shape the grouped matmul against a host float64
// reference on sampled rows and each fused graph against its unfused twin.
// Then `--warmup` untimed runs and `--runs` timed runs, each bracketed by
// the executor's CUDA events, each after overwriting a buffer of twice the L2
// size (so no input is served from L2); the median is reported. The floor is
// max(FLOPs / flop rate, bytes / copy rate): the copy rate is measured here
// (cuMemcpyDtoDAsync of 1 GiB, read + write), the flop rate is a lead given
// by --peak-tflops (f32 without tensor cores; not measured).
//
// Prints the checks, the ceilings, then the results table last; --json FILE
// writes every number. Exit code 0, or 1 when a check failed (that case is not
// timed), 2 for a bad command line.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <optional>
#include <random>

#include "bench/bench_util.h"
#include "bench/moe_cases.h"
#include "ir/error.h"
#include "runtime/backend.h"
#include "runtime/cuda/cuda_backend.h"

namespace {

using namespace moejit;
using namespace moejit::bench;
using Values = std::map<std::string, HostTensor>;

struct Flags {
  std::vector<std::string> shapes;
  std::string device = "auto";
  std::string cases = "grouped_matmul,route,layer,dense_matmul";
  int warmup = 5;
  int runs = 20;
  std::string json;
  double peak_tflops = 60.0;
  double peak_gbps = 0.0;  // 0: measure (cuda) / unknown (cpu)
  std::int64_t copy_mib = 1024;
  std::int64_t dense = 0;  // 0: 4096 on cuda, 256 on cpu
  bool no_l2_flush = false;
  std::uint64_t seed = 1;
};

// Runs an executable whose arguments are bound once; returns every output of `graph`.
Values outputs_of(Executable& exe, const Graph& graph) {
  exe.run();
  Values out;
  for (const auto& o : graph.outputs()) out.emplace(o.name, exe.get(o.name));
  return out;
}

// One check: the worst output's normalized error and whether every output
// was within its dtype's tolerance.
struct CheckResult {
  std::string what;
  double error = 0.0;  // the worst output's normalized error
  std::string worst;   // its name
  bool passed = true;
};

CheckResult compare_outputs(const std::string& what, const Values& got, const Values& reference, double slack) {
  CheckResult r;
  r.what = what;
  for (const auto& [name, ref] : reference) {
    const double err = normalized_error(got.at(name), ref);
    if (!(err <= tolerance(ref.dtype(), slack))) r.passed = false;
    if (r.worst.empty() || !(err <= r.error)) {
      r.error = err;
      r.worst = name;
    }
  }
  return r;
}

struct Row {
  std::string name, shape;
  MoeShape dims;  // zero for dense_matmul
  Floor floor;
  Samples samples;
  std::size_t ops = 0;
  double compile_s = 0.0;
  std::vector<CheckResult> checks;
  bool timed = false;
};

std::vector<std::string> split(const std::string& text) {
  std::vector<std::string> parts;
  std::size_t at = 0;
  while (at <= text.size()) {
    std::size_t comma = text.find(',', at);
    if (comma == std::string::npos) comma = text.size();
    if (comma > at) parts.push_back(text.substr(at, comma - at));
    at = comma + 1;
  }
  return parts;
}

int run(const Flags& flags) {
  std::string why;
  const std::string device = pick_device(flags.device, &why);
  if (device == "cpu") {
    if (!why.empty()) fmt::print("cuda: SKIPPED ({}); running the CPU backend at small sizes\n", why);
    else fmt::print("cuda: SKIPPED (--device cpu)\n");
  }
  const bool cuda = device == "cuda";
  const std::vector<std::string> wanted = split(flags.cases);
  for (const auto& w : wanted)
    if (w != "grouped_matmul" && w != "route" && w != "layer" && w != "dense_matmul")
      throw Error(fmt::format("--cases: unknown case '{}' (expected grouped_matmul, route, layer, dense_matmul)", w));
  auto want = [&](const char* name) { return std::find(wanted.begin(), wanted.end(), name) != wanted.end(); };

  std::vector<MoeShape> shapes;
  for (const auto& s : flags.shapes) shapes.push_back(parse_moe_shape(s));
  if (shapes.empty()) {
    if (cuda) {
      for (const char* s : {"256,64,128,4,2", "4096,512,1024,8,2", "4096,1024,2048,64,1", "16384,1024,2048,64,2", "16384,1024,2048,8,1"})
        shapes.push_back(parse_moe_shape(s));
    } else {
      for (const char* s : {"256,64,128,4,2", "512,128,256,8,1"}) shapes.push_back(parse_moe_shape(s));
    }
  }
  const MoeShape smallest = *std::min_element(shapes.begin(), shapes.end(), [](const auto& a, const auto& b) { return a.size() < b.size(); });

  fmt::print("device: {}\n", device_description(device));
  Ceilings ceilings;
  if (cuda) {
    ceilings.flops_per_s = flags.peak_tflops * 1e12;
    ceilings.flops_source = fmt::format("lead, not measured: --peak-tflops {} (f32 without tensor cores; H100 SXM datasheet ~67)", flags.peak_tflops);
    if (flags.peak_gbps > 0) {
      ceilings.bytes_per_s = flags.peak_gbps * 1e9;
      ceilings.bytes_source = fmt::format("given: --peak-gbps {}", flags.peak_gbps);
    } else {
      ceilings.bytes_per_s = measure_copy_bytes_per_s(flags.copy_mib << 20);
      ceilings.bytes_source = fmt::format("measured: cuMemcpyDtoDAsync of {} MiB, read + write, median of 20 after 3 warm-ups", flags.copy_mib);
    }
  } else {
    ceilings.flops_per_s = 0.0;  // the GPU lead means nothing for the CPU
    ceilings.flops_source = "the GPU lead does not apply to the CPU: no % of floor";
    ceilings.bytes_per_s = flags.peak_gbps * 1e9;
    ceilings.bytes_source = flags.peak_gbps > 0 ? fmt::format("given: --peak-gbps {}", flags.peak_gbps) : "not measured on the CPU; --peak-gbps sets one";
  }

  std::unique_ptr<Backend> backend = cuda ? make_cuda_backend() : make_cpu_backend();
  // The unfused cases skip the MoE fusions the CUDA backend's own pipeline runs.
  std::unique_ptr<Backend> unfused_backend = cuda ? make_cuda_backend(kUnfusedCudaPipeline) : make_cpu_backend();
  std::unique_ptr<Backend> reference = make_cpu_backend();
  std::optional<L2Flusher> flusher;
  if (cuda && !flags.no_l2_flush) flusher.emplace();

  std::vector<Row> rows;
  bool all_passed = true;
  // The JSON report and the two tables of every row so far. Written after each
  // case, so a run cut short by a time limit still leaves its numbers.
  struct Report {
    JsonReport json{"moe_bench"};
    Table checks{{"case", "shape", "check", "worst output", "norm. error", "ok"}};
    Table results{{"case", "shape", "GFLOP", "MB", "floor us", "bound", "median us", "p10-p90 us", "GFLOP/s", "GB/s", "% of floor"}};
  };
  auto make_report = [&]() {
    Report report;
    JsonReport& json = report.json;
    Table& checks = report.checks;
    Table& results = report.results;
    json.meta("device", device_description(device));
    json.meta("backend", device);
    if (!why.empty()) json.meta("cuda_skipped", why);
    json.meta("flops_per_s", ceilings.flops_per_s);
    json.meta("flops_source", ceilings.flops_source);
    json.meta("bytes_per_s", ceilings.bytes_per_s);
    json.meta("bytes_source", ceilings.bytes_source);
    json.meta("warmup", static_cast<std::int64_t>(flags.warmup));
    json.meta("runs", static_cast<std::int64_t>(flags.runs));
    json.meta("l2_flush_bytes", static_cast<std::int64_t>(flusher ? flusher->bytes() : 0));

    for (const Row& r : rows) {
      for (const auto& c : r.checks) checks.row({r.name, r.shape, c.what, c.worst, fmt_num(c.error), c.passed ? "yes" : "FAIL"});
      const double flop_s = ceilings.flops_per_s > 0 ? r.floor.flops / ceilings.flops_per_s : -1.0;
      const double byte_s = ceilings.bytes_per_s > 0 ? r.floor.bytes / ceilings.bytes_per_s : -1.0;
      const double floor_s = (flop_s < 0 && byte_s < 0) ? -1.0 : std::max(flop_s, byte_s);
      const std::string bound = floor_s < 0 ? "-" : flop_s >= byte_s ? "flop" : "mem";
      const double median_s = r.samples.median() * 1e-3;
      Record rec{{"case", r.name},
                 {"shape", r.shape},
                 {"tokens", r.dims.tokens},
                 {"d_model", r.dims.d_model},
                 {"d_expert", r.dims.d_expert},
                 {"experts", r.dims.experts},
                 {"top_k", r.dims.top_k},
                 {"ops", static_cast<std::int64_t>(r.ops)},
                 {"compile_s", r.compile_s},
                 {"flops", r.floor.flops},
                 {"bytes", r.floor.bytes},
                 {"floor_ms", floor_s < 0 ? NAN : floor_s * 1e3},  // NaN: null in JSON
                 {"bound", bound},
                 {"timed", r.timed}};
      for (const auto& c : r.checks) {
        rec.emplace_back("check " + c.what, c.error);
        rec.emplace_back("check " + c.what + " passed", c.passed);
      }
      if (!r.timed) {
        results.row({r.name, r.shape, fmt_num(r.floor.flops * 1e-9), fmt_num(r.floor.bytes * 1e-6), "-", bound, "check FAILED"});
        json.add("results", std::move(rec));
        continue;
      }
      const double pct = floor_s < 0 ? -1.0 : 100.0 * floor_s / median_s;
      rec.insert(rec.end(), {{"median_ms", r.samples.median()},
                             {"p10_ms", r.samples.quantile(0.1)},
                             {"p90_ms", r.samples.quantile(0.9)},
                             {"min_ms", r.samples.min()},
                             {"max_ms", r.samples.max()},
                             {"runs", static_cast<std::int64_t>(r.samples.ms.size())},
                             {"gflop_per_s", r.floor.flops / median_s * 1e-9},
                             {"gb_per_s", r.floor.bytes / median_s * 1e-9},
                             {"pct_of_floor", pct < 0 ? NAN : pct}});
      json.add("results", std::move(rec));
      results.row({r.name, r.shape, fmt_num(r.floor.flops * 1e-9), fmt_num(r.floor.bytes * 1e-6), floor_s < 0 ? "-" : fmt_num(floor_s * 1e6),
                   bound, fmt_num(r.samples.median() * 1e3),
                   fmt::format("{}-{}", fmt_num(r.samples.quantile(0.1) * 1e3), fmt_num(r.samples.quantile(0.9) * 1e3)),
                   fmt_num(r.floor.flops / median_s * 1e-9), fmt_num(r.floor.bytes / median_s * 1e-9), pct < 0 ? "-" : fmt_num(pct, 2)});
    }
    return report;
  };

  // Checks a case, then times it; `twin` holds the unfused outputs for a fused case.
  auto bench_case = [&](BenchCase c, const MoeShape& dims, const std::string& shape_label, bool at_smallest, const Values* twin,
                        Values* keep_outputs, const std::function<std::vector<CheckResult>(const Values&)>& extra_checks) {
    Row row;
    row.name = c.name;
    row.shape = shape_label;
    row.dims = dims;
    row.floor = c.floor;
    auto start = std::chrono::steady_clock::now();
    auto exe = (c.unfused ? unfused_backend : backend)->compile(c.graph);
    row.compile_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    row.ops = exe->graph().ops().size();
    for (const auto& [name, value] : c.args) exe->set(name, value);
    Values got = outputs_of(*exe, c.graph);
    if (at_smallest && cuda) {
      auto ref_exe = reference->compile(c.graph);
      for (const auto& [name, value] : c.args) ref_exe->set(name, value);
      row.checks.push_back(compare_outputs("vs cpu backend", got, outputs_of(*ref_exe, c.graph), c.slack));
    }
    if (twin) row.checks.push_back(compare_outputs("vs unfused", got, *twin, c.slack));
    if (extra_checks)
      for (auto& r : extra_checks(got)) row.checks.push_back(std::move(r));
    bool passed = std::all_of(row.checks.begin(), row.checks.end(), [](const auto& r) { return r.passed; });
    all_passed &= passed;
    if (passed) {
      TimingOptions timing;
      timing.warmup = flags.warmup;
      timing.runs = flags.runs;
      timing.flush = flusher ? &*flusher : nullptr;
      row.samples = time_runs(*exe, device, timing);
      row.timed = true;
    }
    if (keep_outputs) *keep_outputs = std::move(got);
    rows.push_back(std::move(row));
    if (!flags.json.empty()) make_report().json.write(flags.json);
  };

  std::uint64_t seed = flags.seed;
  for (const MoeShape& shape : shapes) {
    const bool at_smallest = shape.label() == smallest.label();
    if (want("grouped_matmul")) {
      BenchCase c = make_grouped_matmul_case(shape, seed);
      Values args = c.args;  // the spot check reads xs, w, offsets
      bench_case(std::move(c), shape, shape.label(), at_smallest, nullptr, nullptr, [&](const Values& got) {
        std::mt19937_64 rng(seed + 7);
        std::vector<std::int64_t> sample;
        for (int i = 0; i < 16; ++i) sample.push_back(std::uniform_int_distribution<std::int64_t>(0, shape.rows() - 1)(rng));
        CheckResult r{.what = "16 rows vs host f64", .worst = "ys"};
        r.error = spot_check_grouped_matmul(args.at("xs"), args.at("w"), args.at("offsets"), got.at("ys"), sample);
        r.passed = r.error <= tolerance(DType::f32);
        return std::vector<CheckResult>{r};
      });
    }
    if (want("route")) {
      Values unfused;
      bench_case(make_route_case(shape, false, seed), shape, shape.label(), at_smallest, nullptr, &unfused, {});
      bench_case(make_route_case(shape, true, seed), shape, shape.label(), at_smallest, &unfused, nullptr, {});
    }
    if (want("layer")) {
      Values unfused;
      bench_case(make_layer_case(shape, false, seed), shape, shape.label(), at_smallest, nullptr, &unfused, {});
      bench_case(make_layer_case(shape, true, seed), shape, shape.label(), at_smallest, &unfused, nullptr, {});
    }
    ++seed;
  }
  if (want("dense_matmul")) {
    const std::int64_t n = flags.dense > 0 ? flags.dense : cuda ? 4096 : 256;
    const bool small = n <= 512;
    BenchCase c = make_dense_matmul_case(n, n, n, seed);
    // The spot check sees b [K, N] as one expert's weights [1, K, N] over all M rows.
    HostTensor a = c.args.at("a"), b_as_expert(TensorType{DType::f32, {1, n, n}});
    std::copy(c.args.at("b").raw(), c.args.at("b").raw() + c.args.at("b").bytes(), b_as_expert.raw());
    HostTensor one_segment = HostTensor::from_ints({2}, std::vector<std::int32_t>{0, static_cast<std::int32_t>(n)});
    bench_case(std::move(c), MoeShape{}, fmt::format("M=N=K={}", n), small, nullptr, nullptr, [&](const Values& got) {
      CheckResult r{.what = "16 rows vs host f64", .worst = "c"};
      std::vector<std::int64_t> sample;
      for (std::int64_t i = 0; i < 16; ++i) sample.push_back((i * 7919) % n);
      r.error = spot_check_grouped_matmul(a, b_as_expert, one_segment, got.at("c"), sample);
      r.passed = r.error <= tolerance(DType::f32);
      return std::vector<CheckResult>{r};
    });
  }

  Report report = make_report();
  const Table& checks = report.checks;
  const Table& results = report.results;
  fmt::print("\n==== checks (before timing; normalized error ||got-ref|| / max(||ref||, 0.01 sqrt(n)); f32 tolerance 1e-4, "
             "layer gradients 2e-3, integers exact)\n{}",
             checks.str());
  auto rate = [](double per_s, const char* unit) { return per_s > 0 ? fmt::format("{} {}", fmt_num(per_s * 1e-9), unit) : std::string("unknown"); };
  fmt::print("\n==== ceilings\nflop rate: {} ({})\ncopy rate: {} ({})\n", rate(ceilings.flops_per_s, "GFLOP/s"), ceilings.flops_source,
             rate(ceilings.bytes_per_s, "GB/s"), ceilings.bytes_source);
  fmt::print("\n==== moe_bench results: {} backend, median of {} runs after {} warm-ups{}\n{}", device, flags.runs, flags.warmup,
             cuda ? (flusher ? ", CUDA events, L2 flushed before each run" : ", CUDA events") : ", host clock", results.str());
  if (!flags.json.empty()) fmt::print("wrote {}\n", flags.json);
  if (!all_passed) fmt::print("moe_bench: a check FAILED; that case was not timed\n");
  return all_passed ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  Flags flags;
  CLI::App app{"moe_bench: MoE layer building blocks against their floors (CUDA backend, or the CPU without a GPU)"};
  app.add_option("--shape", flags.shapes, "T,D,F,E,K: tokens, d_model, d_expert, experts, top_k (repeatable; default: a list per device)");
  app.add_option("--device", flags.device, "auto | cuda | cpu (default auto: cuda when a GPU is usable)");
  app.add_option("--cases", flags.cases, "comma list of grouped_matmul, route, layer, dense_matmul (default all)");
  app.add_option("--warmup", flags.warmup, "untimed runs before timing (default 5)")->check(CLI::NonNegativeNumber);
  app.add_option("--runs", flags.runs, "timed runs; the median is reported (default 20)")->check(CLI::PositiveNumber);
  app.add_option("--json", flags.json, "write every number to this JSON file");
  app.add_option("--peak-tflops", flags.peak_tflops, "f32 flop rate for the floor, TFLOP/s (lead; default 60)")->check(CLI::PositiveNumber);
  app.add_option("--peak-gbps", flags.peak_gbps, "memory rate for the floor, GB/s (default: measured by a device copy; unknown on the CPU)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--copy-mib", flags.copy_mib, "size of the device copy that measures the memory rate (default 1024)")->check(CLI::PositiveNumber);
  app.add_option("--dense", flags.dense, "M = N = K of the dense_matmul case (default 4096 on cuda, 256 on cpu)")->check(CLI::NonNegativeNumber);
  app.add_flag("--no-l2-flush", flags.no_l2_flush, "do not overwrite L2 before each timed run");
  app.add_option("--seed", flags.seed, "seed of the random inputs (default 1)");
  CLI11_PARSE(app, argc, argv);
  try {
    return run(flags);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe_bench: %s\n", e.what());
    return 1;
  }
}
