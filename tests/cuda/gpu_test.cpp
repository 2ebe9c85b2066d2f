// CUDA tests that need a GPU: every op, a bf16 graph, a whole GPT-MoE
// training step and CUDA-graph replay against the CPU backend (normalized
// error under per-dtype tolerances; integer results exactly), dispatch at
// sizes that need many tiles (against the CPU and a sequential reference
// here), and the kernel cache across processes.
// Without a GPU each test prints "SKIPPED: no CUDA device (<why>)" (ctest
// then reports it as skipped, see tests/cuda/CMakeLists.txt).
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cmath>
#include <functional>
#include <random>
#include <filesystem>

#include <unistd.h>

#include "codegen/cuda_codegen.h"
#include "codegen/target.h"
#include "cuda/cuda_test_util.h"
#include "cuda/ptx_check.h"
#include "ir/builder.h"
#include "ir/error.h"
#include "ir/sample_graphs.h"
#include "runtime/backend.h"
#include "runtime/cuda/cuda_backend.h"

using namespace moejit;
namespace fs = std::filesystem;

namespace {

using Values = std::map<std::string, HostTensor>;

// Runs `graph` on `backend` with `args`; returns every output and argument
// by name after the run.
Values run_graph(Backend& backend, const Graph& graph, const Values& args) {
  auto exe = backend.compile(graph);
  for (const auto& [name, value] : args) exe->set(name, value);
  exe->run();
  Values result;
  for (const auto& out : graph.outputs()) result.emplace(out.name, exe->get(out.name));
  for (const auto& [name, value] : args) result.emplace(name, exe->get(name));
  return result;
}

// Every output (and updated argument) of gpu within tolerance of cpu.
void compare_all(const Graph& graph, const Values& gpu, const Values& cpu, double min_tolerance = 0.0) {
  int compared = 0;
  for (const auto& [name, expected] : cpu) {
    const HostTensor& got = gpu.at(name);
    REQUIRE(got.type() == expected.type());
    double err = cuda_test::normalized_error(got, expected);
    double tol = std::max(cuda_test::tolerance(expected.dtype()), min_tolerance);
    INFO(fmt::format("{} {}: normalized error {:.3g} (tolerance {:.3g})", name, expected.type().str(), err, tol));
    CHECK(err <= tol);
    ++compared;
  }
  CHECK(compared >= static_cast<int>(graph.outputs().size()));
}

}  // namespace

TEST_CASE("gpu: every op (forward and backward helpers) matches the CPU backend", "[cuda][gpu]") {
  MOEJIT_SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend();
  auto cuda = make_cuda_backend();
  Graph graph = make_all_ops_graph();
  for (std::uint64_t seed : {1u, 2u, 3u}) {
    INFO("seed " << seed);
    Values args = cuda_test::random_args(graph, seed, 10);
    compare_all(graph, run_graph(*cuda, graph, args), run_graph(*cpu, graph, args));
  }
}

TEST_CASE("gpu: bf16 ops match the CPU backend within bf16 tolerance", "[cuda][gpu]") {
  MOEJIT_SKIP_WITHOUT_GPU();
  Graph graph("bf16_ops");
  Builder b(graph);
  const std::int64_t tokens = 24, width = 40, heads = 2;
  Tensor x = b.input("x", {tokens, width}, DType::bf16);
  Tensor w = b.param("w", {width, width}, DType::bf16);
  Tensor gamma = b.param("gamma", {width}, DType::bf16);
  Tensor beta = b.param("beta", {width}, DType::bf16);
  Tensor h = b.gelu(b.matmul(x, w));
  Tensor n = b.layer_norm(b.add(h, x), gamma, beta);
  b.output(n, "normed");
  b.output(b.softmax(n), "probs");
  b.output(b.sum(n, {0}), "column_sums");
  Tensor q = b.transpose(b.reshape(n, {1, tokens, heads, width / heads}), {0, 2, 1, 3});
  b.output(b.attention(q, q, q), "attended");
  b.output(b.cast(b.mul(n, b.silu(n)), DType::f32), "as_f32");
  Values args = cuda_test::random_args(graph, 7, 1, 0.5);
  auto cpu = make_cpu_backend();
  auto cuda = make_cuda_backend();
  // Everything here is computed from bf16 values, the f32 output too.
  compare_all(graph, run_graph(*cuda, graph, args), run_graph(*cpu, graph, args), cuda_test::tolerance(DType::bf16));
}

TEST_CASE("gpu: dispatch with thousands of slots and capacity and block padding matches the CPU exactly", "[cuda][gpu]") {
  MOEJIT_SKIP_WITHOUT_GPU();
  Graph graph("dispatch");
  Builder b(graph);
  const std::int64_t tokens = 3000, experts = 8;
  Tensor logits = b.input("logits", {tokens, experts});
  auto [weights, chosen] = b.moe_gate(logits, {.top_k = 2, .normalize = true});
  auto [slots, offsets, positions, counts] = b.moe_dispatch(chosen, {.num_experts = experts, .capacity_factor = 1.0, .block = 4});
  b.output(weights, "weights");
  b.output(chosen, "experts");
  b.output(slots, "slots");
  b.output(offsets, "offsets");
  b.output(positions, "positions");
  b.output(counts, "counts");
  Values args = cuda_test::random_args(graph, 11, 1);
  // Skew the router so some experts overflow their capacity.
  for (std::int64_t t = 0; t < tokens; ++t) args.at("logits").set(t * experts, args.at("logits").get(t * experts) + 1.5);
  auto cpu = make_cpu_backend();
  auto cuda = make_cuda_backend();
  Values want = run_graph(*cpu, graph, args);
  compare_all(graph, run_graph(*cuda, graph, args), want);
  // Some slots were dropped, so the capacity path ran.
  bool dropped = false;
  for (std::int64_t i = 0; i < want.at("positions").numel(); ++i) dropped |= want.at("positions").get(i) < 0;
  CHECK(dropped);
}

namespace {

// One dispatch case for the many-tile test: expert ids given directly.
struct DispatchCase {
  std::string name;
  std::int64_t tokens, top_k, experts;
  double capacity_factor;
  std::int64_t block;
  std::function<std::int32_t(std::int64_t slot, std::mt19937& rng)> expert_of;
};

// Naive sequential reference of the dispatch outputs (written here, apart
// from the CPU backend): counts, padded offsets, then slots in order.
void check_dispatch_reference(const DispatchCase& c, const std::vector<std::int32_t>& ids, const Values& got) {
  std::int64_t num_slots = c.tokens * c.top_k;
  std::int64_t capacity = c.capacity_factor <= 0.0
                              ? num_slots
                              : std::min<std::int64_t>(num_slots, std::max<std::int64_t>(1, static_cast<std::int64_t>(std::ceil(
                                                                      c.capacity_factor * static_cast<double>(num_slots) /
                                                                      static_cast<double>(c.experts)))));
  std::vector<std::int64_t> count(static_cast<std::size_t>(c.experts), 0), offset(static_cast<std::size_t>(c.experts + 1), 0);
  for (std::int32_t e : ids) ++count[static_cast<std::size_t>(e)];
  for (std::int64_t e = 0; e < c.experts; ++e) {
    std::int64_t kept = std::min(count[static_cast<std::size_t>(e)], capacity);
    offset[static_cast<std::size_t>(e + 1)] = offset[static_cast<std::size_t>(e)] + (kept + c.block - 1) / c.block * c.block;
  }
  const HostTensor& slots = got.at("slots");
  const HostTensor& positions = got.at("positions");
  for (std::int64_t e = 0; e < c.experts; ++e) {
    REQUIRE(got.at("counts").get(e) == static_cast<double>(count[static_cast<std::size_t>(e)]));
    REQUIRE(got.at("offsets").get(e + 1) == static_cast<double>(offset[static_cast<std::size_t>(e + 1)]));
  }
  std::vector<std::int64_t> filled(static_cast<std::size_t>(c.experts), 0);
  std::vector<bool> used(static_cast<std::size_t>(slots.numel()), false);
  for (std::int64_t s = 0; s < num_slots; ++s) {
    auto e = static_cast<std::size_t>(ids[static_cast<std::size_t>(s)]);
    std::int64_t want = filled[e] < capacity ? offset[e] + filled[e] : -1;
    ++filled[e];
    INFO("slot " << s << " expert " << e);
    REQUIRE(positions.get(s) == static_cast<double>(want));
    if (want >= 0) {
      REQUIRE(slots.get(want) == static_cast<double>(s));
      used[static_cast<std::size_t>(want)] = true;
    }
  }
  for (std::int64_t i = 0; i < slots.numel(); ++i)
    if (!used[static_cast<std::size_t>(i)]) REQUIRE(slots.get(i) == -1.0);  // padding and spare rows
}

}  // namespace

TEST_CASE("moe.dispatch over many tiles scans each expert's tile counts in a block of its own, and compiles to PTX", "[cuda][dispatch]") {
  // Up to 1536 experts each warp counts in shared memory (the `true` forms); beyond, in `ranks`.
  for (const auto& [experts, shared] : {std::pair<std::int64_t, std::string>{256, ", true"}, {2048, ""}}) {
    INFO("E " << experts);
    Graph graph("dispatch_tiles");
    Builder b(graph);
    Tensor chosen = b.input("experts", {40000, 8}, DType::i32);
    auto [slots, offsets, positions, counts] = b.moe_dispatch(chosen, {.num_experts = experts, .capacity_factor = 1.0, .block = 32});
    b.output(slots, "slots");
    b.output(offsets, "offsets");
    b.output(positions, "positions");
    b.output(counts, "counts");
    const codegen::ModuleCode module = codegen::generate_module(graph, codegen::Target::named("sm_90a"));
    std::vector<std::string> kernels;
    for (const auto& step : module.steps)
      for (const auto& launch : step.launches) kernels.push_back(launch.kernel);
    CHECK(kernels == std::vector<std::string>{"mj::dispatch_count_kernel<256" + shared + ">", "mj::dispatch_scan_rows_kernel<512>",
                                              "mj::dispatch_offsets_kernel<32>", "mj::dispatch_scatter_kernel<256" + shared + ">"});
    cuda_test::compile_to_ptx(module, "dispatch_tiles", "compute_90a");
  }
}

TEST_CASE("gpu: dispatch over many tiles (16k tokens, empty and overfull experts) matches a sequential reference exactly", "[cuda][gpu]") {
  MOEJIT_SKIP_WITHOUT_GPU();
  auto skewed = [](std::int64_t experts) {
    return [experts](std::int64_t, std::mt19937& rng) {
      // Half the slots to expert 0 (overflows capacity), the rest uniform.
      std::uniform_int_distribution<std::int32_t> any(0, static_cast<std::int32_t>(experts - 1));
      return rng() % 2 == 0 ? 0 : any(rng);
    };
  };
  std::vector<DispatchCase> cases = {
      {"T16384 K2 E64 capacity 1.0 block 8", 16384, 2, 64, 1.0, 8, skewed(64)},
      {"T16384 K2 E64 dropless block 128", 16384, 2, 64, 0.0, 128, skewed(64)},
      {"T16384 K2 E1 capacity 0.5 block 4", 16384, 2, 1, 0.5, 4, [](std::int64_t, std::mt19937&) { return 0; }},
      {"T16384 K2 E1 dropless block 1", 16384, 2, 1, 0.0, 1, [](std::int64_t, std::mt19937&) { return 0; }},
      {"T5000 K2 E64, experts 3 and 63 empty, capacity 1.25 block 16", 5000, 2, 64, 1.25, 16,
       [](std::int64_t, std::mt19937& rng) {
         std::uniform_int_distribution<std::int32_t> any(0, 61);
         std::int32_t e = any(rng);
         return e == 3 ? 62 : e;
       }},
      {"T9000 K3 E37, every slot to expert 36, capacity 2.0 block 5", 9000, 3, 37, 2.0, 5, [](std::int64_t, std::mt19937&) { return 36; }},
      {"T40000 K8 E256 (tiles of more than 128 slots) capacity 1.0 block 32", 40000, 8, 256, 1.0, 32, skewed(256)},
      {"T5000 K2 E2048 (the counts in global memory) capacity 1.0 block 8", 5000, 2, 2048, 1.0, 8, skewed(2048)},
      {"T3 K1 E5 (one partial tile)", 3, 1, 5, 1.0, 2, [](std::int64_t s, std::mt19937&) { return static_cast<std::int32_t>(s % 2); }},
  };
  auto cpu = make_cpu_backend();
  auto cuda = make_cuda_backend();
  for (const DispatchCase& c : cases) {
    INFO(c.name);
    Graph graph("dispatch_tiles");
    Builder b(graph);
    Tensor chosen = b.input("experts", {c.tokens, c.top_k}, DType::i32);
    auto [slots, offsets, positions, counts] =
        b.moe_dispatch(chosen, {.num_experts = c.experts, .capacity_factor = c.capacity_factor, .block = c.block});
    b.output(slots, "slots");
    b.output(offsets, "offsets");
    b.output(positions, "positions");
    b.output(counts, "counts");
    std::mt19937 rng(static_cast<std::uint32_t>(c.tokens * 31 + c.experts));
    std::vector<std::int32_t> ids(static_cast<std::size_t>(c.tokens * c.top_k));
    for (std::size_t s = 0; s < ids.size(); ++s) ids[s] = c.expert_of(static_cast<std::int64_t>(s), rng);
    Values args{{"experts", HostTensor::from_ints({c.tokens, c.top_k}, ids)}};
    Values got = run_graph(*cuda, graph, args);
    compare_all(graph, got, run_graph(*cpu, graph, args));
    check_dispatch_reference(c, ids, got);
  }
}

TEST_CASE("gpu: a GPT-MoE training step matches the CPU (loss and gradients and parameters after AdamW)", "[cuda][gpu]") {
  MOEJIT_SKIP_WITHOUT_GPU();
  GptMoeConfig config = cuda_test::small_gpt_config();
  Graph graph = cuda_test::make_gpt_training_graph(config, config.batch_size);
  Values args = cuda_test::random_args(graph, 5, config.vocab_size);
  for (auto& [name, value] : init_parameters(gpt_moe_param_specs(config), 5)) args.at(name) = value;
  auto cpu = make_cpu_backend();
  auto cuda = make_cuda_backend();
  auto cpu_exe = cpu->compile(graph);
  auto gpu_exe = cuda->compile(graph);
  for (const auto& [name, value] : args) {
    cpu_exe->set(name, value);
    gpu_exe->set(name, value);
  }
  std::mt19937_64 rng(9);
  for (int step = 1; step <= 2; ++step) {
    INFO("step " << step);
    HostTensor idx = cuda_test::random_args(graph, 100 + static_cast<std::uint64_t>(step), config.vocab_size).at("idx");
    for (auto* exe : {cpu_exe.get(), gpu_exe.get()}) {
      exe->set("idx", idx);
      exe->set("step", HostTensor::scalar(step));
      exe->run();
    }
    int grads = 0;
    for (const auto& out : graph.outputs()) {
      HostTensor want = cpu_exe->get(out.name), got = gpu_exe->get(out.name);
      double err = cuda_test::normalized_error(got, want);
      // Gradients pass through many ops: a looser bound than single ops.
      double tol = out.name.rfind("grad.", 0) == 0 ? 2e-3 : cuda_test::tolerance(want.dtype()) * 10;
      grads += out.name.rfind("grad.", 0) == 0;
      INFO(fmt::format("{}: normalized error {:.3g} (tolerance {:.3g})", out.name, err, tol));
      CHECK(err <= tol);
    }
    CHECK(grads > 10);
    for (const auto& arg : graph.args()) {
      const std::string& name = graph.value(arg.value).name;
      double err = cuda_test::normalized_error(gpu_exe->get(name), cpu_exe->get(name));
      INFO(fmt::format("argument {} after the step: normalized error {:.3g}", name, err));
      CHECK(err <= 2e-3);
    }
  }
}

TEST_CASE("gpu: replaying a captured CUDA graph gives the eager results bit for bit", "[cuda][gpu]") {
  MOEJIT_SKIP_WITHOUT_GPU();
  GptMoeConfig config = cuda_test::small_gpt_config();
  Graph graph = cuda_test::make_gpt_training_graph(config, config.batch_size);
  Values args = cuda_test::random_args(graph, 21, config.vocab_size);
  for (auto& [name, value] : init_parameters(gpt_moe_param_specs(config), 21)) args.at(name) = value;
  auto cuda = make_cuda_backend();
  auto eager = cuda->compile(graph);
  auto replay = cuda->compile(graph);
  for (const auto& [name, value] : args) {
    eager->set(name, value);
    replay->set(name, value);
  }
  cuda_capture_graph(*replay);
  for (int step = 1; step <= 3; ++step) {
    HostTensor idx = cuda_test::random_args(graph, 200 + static_cast<std::uint64_t>(step), config.vocab_size).at("idx");
    for (auto* exe : {eager.get(), replay.get()}) {
      exe->set("idx", idx);  // new inputs each step: the replay must read them
      exe->set("step", HostTensor::scalar(step));
      exe->run();
    }
    CHECK(cuda_last_run_ms(*replay) > 0.0);
    HostTensor a = eager->get("loss"), b = replay->get("loss");
    CHECK(a.get(0) == b.get(0));
  }
  for (const auto& arg : graph.args()) {
    const std::string& name = graph.value(arg.value).name;
    INFO(name);
    HostTensor a = eager->get(name), b = replay->get(name);
    CHECK(std::memcmp(a.raw(), b.raw(), a.bytes()) == 0);
  }
}

// Run by the test below in child processes: MOEJIT_TEST_CACHE=cold expects
// compiles, warm (with MOEJIT_ASSERT_CACHED=1) expects none.
TEST_CASE("gpu: cache child", "[.cache_child_gpu]") {
  GptMoeConfig config = cuda_test::small_gpt_config();
  auto cuda = make_cuda_backend();
  auto exe = cuda->compile(cuda_test::make_gpt_training_graph(config, config.batch_size));
  const char* mode = std::getenv("MOEJIT_TEST_CACHE");
  REQUIRE(mode != nullptr);
  if (std::string(mode) == "cold") {
    CHECK(cuda_compile_stats().compiles >= 1);
  } else {
    CHECK(cuda_compile_stats().compiles == 0);
    CHECK(cuda_compile_stats().disk_hits >= 1);
  }
}

TEST_CASE("gpu: a second process finds every kernel in the disk cache and compiles nothing", "[cuda][gpu]") {
  MOEJIT_SKIP_WITHOUT_GPU();
  fs::path dir = fs::temp_directory_path() / fmt::format("moejit-gpu-cache-{}", ::getpid());
  fs::remove_all(dir);
  std::string self = fs::read_symlink("/proc/self/exe").string();
  auto child = [&](const std::string& cache_dir, const char* mode, bool assert_cached) {
    return std::system(fmt::format("MOEJIT_CACHE_DIR='{}' MOEJIT_TEST_CACHE={} MOEJIT_ASSERT_CACHED={} '{}' '[cache_child_gpu]' > /dev/null 2>&1",
                                   cache_dir, mode, assert_cached ? 1 : 0, self)
                           .c_str());
  };
  CHECK(child(dir.string(), "cold", false) == 0);
  CHECK(!fs::is_empty(dir));
  CHECK(child(dir.string(), "warm", true) == 0);
  // Control: with an empty cache the asserted run fails.
  CHECK(child((dir / "empty").string(), "warm", true) != 0);
  fs::remove_all(dir);
}

// Timings (the kernel cache cold vs warm, a training step eager vs graph
// replay) are benchmarks, not tests: bench/compile_bench and bench/step_bench.
