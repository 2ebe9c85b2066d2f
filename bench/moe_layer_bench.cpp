// moe_layer_bench: one MoE layer in bf16 through moejit's CUDA backend, forward
// and forward+backward, for the shapes of bench/torch_moe_layer.py (its
// PyTorch peers run in the same device call: scripts/gpu-check.sh prints both
// side by side).
//
//   moe_layer_bench [--shapes "T,D,F,E,K;..."] [--runs 20] [--json FILE]
//
// The layer: logits = f32(x w_router); softmax top-k with renormalized
// weights (moe.gate); dropless dispatch; h = gelu(grouped_matmul(permute(x),
// w_up)); ys = grouped_matmul(h, w_down); y = combine(ys, weights);
// loss = mean(f32(y) * f32(target)) + 0.01 load-balance loss. x, target, weights and
// activations bf16 (f32 accumulation in every matmul), router logits, gate
// and losses f32: what the mixed-precision policy makes of the f32 layer.
// Backward: the MoE fusions ("moe-fusions") first, as the trainer runs them
// before autodiff (so the backward is the fused ops' gradients), then
// append_backward with respect to x, w_router, w_up and w_down. (Fused after
// autodiff instead, the backend's pipeline would leave the chain unfused: the
// backward reads its intermediates.)
//
// Method (/work/.library/device/METHOD.md): the forward+backward graph at a
// small token count (with the timed run's weights) is first checked against
// the CPU backend (every output and gradient, bf16 tolerance; --check-tokens
// 0 skips it), then each shape is timed on random data (never zeros; the
// arguments made once per shape, for both passes):
// `--warmup` runs, then `--runs` runs each bracketed by the executor's CUDA
// events after an L2 flush; the median is reported. FLOPs: the two expert
// matmuls only (SonicMoE's convention: forward 4 T K D F, forward+backward
// 12 T K D F; the router is not counted), as in the PyTorch script.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>

#include "bench/bench_util.h"
#include "bench/moe_cases.h"
#include "frontends/moe_layer.h"
#include "ir/error.h"
#include "runtime/backend.h"
#include "runtime/cuda/cuda_backend.h"

namespace {

using namespace moejit;
using namespace moejit::bench;
using Values = std::map<std::string, HostTensor>;

const char* kDefaultShapes = "16384,384,1536,8,2;16384,768,3072,8,2;8192,4096,14336,8,2;24576,1536,256,128,8";

Graph layer_graph(const MoeShape& s, bool backward) {
  return moe_layer_graph(backward ? "moe_layer_fwd_bwd" : "moe_layer_fwd", {s.tokens, s.d_model, s.d_expert, s.experts, s.top_k},
                         backward);
}

// x and target only (the check takes the timed run's weights).
Values layer_args_tokens(const Graph& g, const MoeShape& s, std::uint64_t seed) {
  (void)s;
  Values args;
  for (const char* name : {"x", "target"}) {
    HostTensor t(g.type(g.find_arg(name)));
    fill_random(t, seed++, 1.0);
    args.emplace(name, std::move(t));
  }
  return args;
}

Values layer_args(const Graph& g, const MoeShape& s, std::uint64_t seed) {
  Values args;
  auto arg = [&](const char* name, double stddev) {
    HostTensor t(g.type(g.find_arg(name)));
    fill_random(t, seed++, stddev);
    args.emplace(name, std::move(t));
  };
  arg("x", 1.0);
  arg("target", 1.0);
  arg("w_router", 1.0 / std::sqrt(static_cast<double>(s.d_model)));
  arg("w_up", 1.0 / std::sqrt(static_cast<double>(s.d_model)));
  arg("w_down", 1.0 / std::sqrt(static_cast<double>(s.d_expert)));
  return args;
}

Values outputs_of(Executable& exe, const Graph& g, const Values& args) {
  for (const auto& [name, value] : args) exe.set(name, value);
  exe.run();
  Values out;
  for (const auto& o : g.outputs()) out.emplace(o.name, exe.get(o.name));
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::string shapes_text = kDefaultShapes, json;
  std::int64_t check_tokens = 512;
  int warmup = 3, runs = 20;
  CLI::App app{"moe_layer_bench: a bf16 MoE layer, forward and forward+backward, on the CUDA backend"};
  app.add_option("--shapes", shapes_text, "T,D,F,E,K separated by ';'");
  app.add_option("--warmup", warmup);
  app.add_option("--runs", runs);
  app.add_option("--json", json, "write every number here");
  app.add_option("--check-tokens", check_tokens, "tokens of the graph checked against the CPU before timing (fewer at large D and F)");
  CLI11_PARSE(app, argc, argv);
  try {
    std::string why;
    if (!cuda_available(&why)) {
      fmt::print(stderr, "moe_layer_bench: needs a GPU: {}\n", why);
      return 2;
    }
    auto cuda = make_cuda_backend();
    auto cpu = make_cpu_backend();
    JsonReport report("moe_layer_bench");
    report.meta("device", device_description("cuda"));
    L2Flusher flusher;
    Table table({"shape", "pass", "median ms", "TFLOP/s", "check"});
    bool all_passed = true;
    std::uint64_t seed = 1;
    std::vector<MoeShape> shapes;
    for (std::size_t at = 0; at < shapes_text.size();) {
      std::size_t end = shapes_text.find(';', at);
      if (end == std::string::npos) end = shapes_text.size();
      shapes.push_back(parse_moe_shape(shapes_text.substr(at, end - at)));
      at = end + 1;
    }
    using Clock = std::chrono::steady_clock;
    auto seconds_since = [](Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); };
    for (const MoeShape& shape : shapes) {
      // The arguments once per shape, shared by the forward and the
      // forward+backward graphs (the same names and types), and their
      // weights (which do not depend on the token count) by the check.
      Clock::time_point t0 = Clock::now();
      const Values args = layer_args(layer_graph(shape, false), shape, seed + 100);
      const double init_s = seconds_since(t0);
      // Correctness first, at few tokens (the CPU is the reference), once per
      // shape on the forward+backward graph (its outputs include the
      // forward's). The CPU reference is slow at large D and F: the check
      // takes fewer tokens there (at most ~4e9 expert multiply-adds, at least
      // 16). --check-tokens 0: no check.
      MoeShape small = shape;
      const double macs_per_token = static_cast<double>(shape.top_k * shape.d_model * shape.d_expert);
      small.tokens = std::min<std::int64_t>(check_tokens, std::max<std::int64_t>(16, static_cast<std::int64_t>(4e9 / macs_per_token)));
      double worst = 0.0;
      std::string check = "skipped";
      bool passed = true;
      t0 = Clock::now();
      if (check_tokens > 0) {
        Graph check_graph = layer_graph(small, true);
        Values check_args = layer_args_tokens(check_graph, small, seed);
        for (const char* w : {"w_router", "w_up", "w_down"}) check_args.insert_or_assign(w, args.at(w));
        auto gpu_small = cuda->compile(check_graph);
        auto cpu_small = cpu->compile(check_graph);
        Values got = outputs_of(*gpu_small, check_graph, check_args), want = outputs_of(*cpu_small, check_graph, check_args);
        std::string worst_name;
        for (const auto& [name, ref] : want) {
          double err = normalized_error(got.at(name), ref);
          if (err > worst) worst = err, worst_name = name;
        }
        passed = worst <= 3e-2;  // bf16 operands and activations through two matmuls and a GELU
        all_passed &= passed;
        check = fmt::format("{} {:.2g} ({}, T{})", passed ? "ok" : "FAILED", worst, worst_name, small.tokens);
      }
      const double check_s = seconds_since(t0);
      for (bool backward : {false, true}) {
        if (!passed) {
          table.row({shape.label(), backward ? "fwd+bwd" : "fwd", "-", "-", check});
          continue;
        }
        t0 = Clock::now();
        Graph graph = layer_graph(shape, backward);
        auto exe = cuda->compile(graph);
        for (const auto& [name, value] : args) exe->set(name, value);
        const double compile_s = seconds_since(t0);
        t0 = Clock::now();
        TimingOptions timing;
        timing.warmup = warmup;
        timing.runs = runs;
        timing.flush = &flusher;
        Samples samples = time_runs(*exe, "cuda", timing);
        const double flops = (backward ? 12.0 : 4.0) * static_cast<double>(shape.tokens * shape.top_k) *
                             static_cast<double>(shape.d_model) * static_cast<double>(shape.d_expert);
        const double ms = samples.median();
        table.row({shape.label(), backward ? "fwd+bwd" : "fwd", fmt::format("{:.3f}", ms), fmt::format("{:.1f}", flops / ms / 1e9), check});
        // Each row as it is done, with the phases' host times (a time limit
        // that cuts the run still leaves the finished rows).
        fmt::print("{} {}: {:.3f} ms, {:.1f} TFLOP/s, check {} | host s: args {:.1f}, check {:.1f}, compile+set {:.1f}, timing {:.1f}\n",
                   shape.label(), backward ? "fwd+bwd" : "fwd", ms, flops / ms / 1e9, check, init_s, check_s, compile_s, seconds_since(t0));
        std::fflush(stdout);
        report.add("results", {{"shape", shape.label()},
                               {"pass", std::string(backward ? "fwd+bwd" : "fwd")},
                               {"median_ms", ms},
                               {"tflops", flops / ms / 1e9},
                               {"check_error", worst},
                               {"check_tokens", check_tokens > 0 ? small.tokens : std::int64_t{0}},
                               {"launches_ops", static_cast<std::int64_t>(exe->graph().ops().size())}});
        if (!json.empty()) report.write(json);
      }
      ++seed;
    }
    fmt::print("device: {}\n{}", device_description("cuda"), table.str());
    if (!json.empty()) report.write(json);
    return all_passed ? 0 : 1;
  } catch (const Error& e) {
    fmt::print(stderr, "moe_layer_bench: error: {}\n", e.what());
    return 2;
  }
}
