// The Hopper tensor-core GEMM family (codegen/kernels/gemm_sm90.cuh) in the
// product path: which products codegen gives it (CI, no GPU), and on a GPU
// every layout and mode against the CPU backend on random bf16 data --
// mj.matmul with either operand transposed, batched with a shared or a
// batched B; moe.grouped_matmul with empty experts, one expert taking every
// row, one expert, rows past the last segment, row counts that are a
// multiple of no tile, and its backward (the transposed-weight product and
// moe.grouped_matmul_wgrad, whose groups split K, on its stream-K
// schedule and without it); moe.gather_matmul, whose rows the producer
// gathers through the slots (against MOEJIT_SM90_GATHER=0's copy, bit for bit).
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <cstring>
#include <random>

#include "codegen/cuda_codegen.h"
#include "codegen/gemm_select.h"
#include "codegen/target.h"
#include "cuda/cuda_test_util.h"
#include "cuda/gemm_test_util.h"
#include "cuda/ptx_check.h"
#include "ir/builder.h"
#include "passes/autodiff.h"
#include "runtime/backend.h"
#include "runtime/cuda/cuda_backend.h"

using namespace moejit;

namespace {

using Values = std::map<std::string, HostTensor>;

// Every kernel instantiation of the graph's module, one per line.
std::string module_kernels(const Graph& graph, const codegen::Target& target) {
  std::string all;
  for (const auto& k : codegen::generate_module(graph, target).kernels) all += k + "\n";
  return all;
}

bool uses_sm90(const Graph& graph, const codegen::Target& target) {
  codegen::ModuleCode module = codegen::generate_module(graph, target);
  for (const auto& k : module.kernels)
    if (k.find("gemm_sm90_kernel") != std::string::npos) return true;
  return false;
}

Graph matmul_graph(std::int64_t batch, std::int64_t m, std::int64_t n, std::int64_t k, bool ta, bool tb, bool b_batched,
                   DType dtype = DType::bf16) {
  Graph g("sm90_matmul");
  Builder b(g);
  Shape a_shape = ta ? Shape{k, m} : Shape{m, k};
  Shape b_shape = tb ? Shape{n, k} : Shape{k, n};
  if (batch > 1) {
    a_shape.insert(a_shape.begin(), batch);
    if (b_batched) b_shape.insert(b_shape.begin(), batch);
  }
  Tensor a = b.input("a", a_shape, dtype), w = b.param("b", b_shape, dtype);
  b.output(b.matmul(a, w, ta, tb), "c");
  return g;
}

// ys = grouped_matmul(xs, w, offsets); loss = mean(f32(ys) * target), with
// the gradients of xs and w (the transposed-weight product and the wgrad).
Graph grouped_graph(std::int64_t rows, std::int64_t d, std::int64_t f, std::int64_t experts, bool transpose_w) {
  Graph g("sm90_grouped");
  Builder b(g);
  Tensor xs = b.input("xs", {rows, d}, DType::bf16);
  Tensor w = b.param("w", transpose_w ? Shape{experts, f, d} : Shape{experts, d, f}, DType::bf16);
  Tensor offsets = b.input("offsets", {experts + 1}, DType::i32);
  Tensor target = b.input("target", {rows, f});
  Tensor ys = b.moe_grouped_matmul(xs, w, offsets, transpose_w);
  b.output(ys, "ys");
  b.output(b.mean(b.mul(b.cast(ys, DType::f32), target), {0, 1}), "loss");
  append_backward(g, {.loss = "loss", .wrt = {"xs", "w"}});
  return g;
}

Values random_values(const Graph& graph, std::uint64_t seed) { return cuda_test::random_args(graph, seed, 1, 1.0); }

HostTensor offsets_of(const std::vector<std::int32_t>& offsets) {
  return HostTensor::from_ints({static_cast<std::int64_t>(offsets.size())}, offsets);
}



}  // namespace

TEST_CASE("codegen gives bf16 products on sm_90a to the sm90 family, and the rest to the SIMT family", "[cuda]") {
  const auto hopper = codegen::Target::named("sm_90a");
  CHECK(uses_sm90(matmul_graph(1, 300, 200, 136, false, false, false), hopper));
  CHECK(uses_sm90(matmul_graph(1, 304, 200, 136, true, true, false), hopper));
  CHECK_FALSE(uses_sm90(matmul_graph(1, 300, 200, 136, true, true, false), hopper));  // A^T rows of 600 bytes: no TMA
  CHECK(uses_sm90(matmul_graph(4, 64, 128, 64, false, false, true), hopper));
  CHECK(uses_sm90(grouped_graph(1000, 384, 512, 8, false), hopper));
  CHECK_FALSE(uses_sm90(matmul_graph(1, 300, 200, 136, false, false, false, DType::f32), hopper));  // f32: SIMT
  CHECK_FALSE(uses_sm90(matmul_graph(1, 300, 65, 136, false, false, false), hopper));   // B rows of 130 bytes: no TMA
  CHECK_FALSE(uses_sm90(matmul_graph(1, 300, 200, 136, false, false, false), codegen::Target::named("sm_90")));  // no wgmma
  CHECK_FALSE(uses_sm90(matmul_graph(1, 300, 200, 136, false, false, false), codegen::Target::named("sm_80")));
  // And the SIMT family still compiles a bf16 grouped matmul whose tile
  // attributes are tensor-core shapes (moe-tiling writes those for 16-bit).
  Graph tiled = grouped_graph(1000, 384, 512, 8, false);
  for (auto& op : tiled.mutable_ops())
    if (op.kind == OpKind::GroupedMatmul) {
      op.attrs.set("tile_m", std::int64_t{128});
      op.attrs.set("tile_n", std::int64_t{256});
      op.attrs.set("tile_k", std::int64_t{64});
    }
  CHECK(uses_sm90(tiled, hopper));
  CHECK_NOTHROW(codegen::generate_module(tiled, codegen::Target::named("sm_80")));
}

TEST_CASE("the sm90 family splits K of weight-gradient products with few output tiles, and only those", "[cuda][split_k]") {
  const auto hopper = codegen::Target::named("sm_90a");
  auto kernels = [&](const Graph& g) {
    std::string all;
    for (const auto& k : codegen::generate_module(g, hopper).kernels) all += k + "\n";
    return all;
  };
  // Config B's dense weight gradient: x^T dy, 384 x 1152 over 16384 tokens.
  const std::string split = kernels(matmul_graph(1, 384, 1152, 16384, true, false, false));
  CHECK(split.find("StoreF32") != std::string::npos);
  CHECK(split.find("matmul_split_k_finish_kernel") != std::string::npos);
  Graph wgrad = matmul_graph(1, 384, 1152, 16384, true, false, false);
  for (const Op& op : wgrad.ops())
    if (op.kind == OpKind::Matmul) {
      auto problem = *codegen::gemm_problem_of(wgrad, op);
      auto choice = codegen::choose_gemm(wgrad, op, problem, hopper);
      CHECK(choice.family == codegen::GemmFamily::sm90);
      // 3 x 9 tiles of 128 x 128: 4 slices fill 108 of the 132 SMs, 8 would need two waves.
      CHECK(choice.config.split_k == 4);
      CHECK(choice.config.note.find("split_k 4") != std::string::npos);
    }
  // The LM head's weight gradient (vocabulary 65: rows the copy engine cannot
  // address) goes to the sm80 family, which splits it the same way: 3 tiles
  // of 128 x 128, two blocks per SM, slices of at least 512 -> 32.
  Graph head = matmul_graph(1, 65, 384, 16384, true, false, false);
  for (const Op& op : head.ops())
    if (op.kind == OpKind::Matmul) {
      auto choice = codegen::choose_gemm(head, op, *codegen::gemm_problem_of(head, op), hopper);
      CHECK(choice.family == codegen::GemmFamily::sm80);
      CHECK(choice.config.split_k == 32);
    }
  CHECK(kernels(head).find("moejit::sm80::StoreF32") != std::string::npos);
  // Both split paths compile (NVRTC, PTX for compute_90a): one module with the two products.
  {
    Graph both("split_k_both");
    Builder b(both);
    Tensor x = b.input("x", {16384, 384}, DType::bf16), dy = b.input("dy", {16384, 1152}, DType::bf16),
           dlogits = b.input("dlogits", {16384, 65}, DType::bf16);
    b.output(b.matmul(x, dy, true, false), "dw");
    b.output(b.matmul(dlogits, x, true, false), "dw_head");
    cuda_test::compile_to_ptx(codegen::generate_module(both, hopper), both.name(), "compute_90a");
  }
  // Enough tiles, a short K, another layout or a K that is no multiple of the slices: no split.
  for (const Graph& g : {matmul_graph(1, 4096, 1536, 16384, true, false, false), matmul_graph(1, 384, 1152, 512, true, false, false),
                         matmul_graph(1, 384, 1152, 16384, false, false, false), matmul_graph(1, 384, 1152, 16384 + 8, true, false, false)})
    CHECK(kernels(g).find("matmul_split_k_finish_kernel") == std::string::npos);
}

TEST_CASE("gpu: sm90 mj.matmul in every layout matches the CPU backend", "[cuda][gpu]") {
  MOEJIT_SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend();
  auto cuda = make_cuda_backend();
  const auto target = cuda_device_target();
  struct Case {
    std::int64_t batch, m, n, k;
    bool ta, tb, b_batched;
  };
  const Case cases[] = {{1, 300, 200, 136, false, false, false}, {1, 1000, 712, 520, false, true, false},
                        {1, 1000, 712, 520, true, false, false}, {1, 256, 256, 1024, true, true, false},
                        {3, 200, 136, 72, false, false, false},  {3, 200, 136, 72, false, false, true},
                        {2, 136, 200, 64, true, false, true},    {1, 4096, 1536, 384, false, false, false},
                        // weight-gradient layout over a long K: split into slices (split_k 16 and 8)
                        {1, 256, 384, 8192, true, false, false}, {1, 200, 136, 4096, true, false, false},
                        {1, 65, 384, 8192, true, false, false}};  // the sm80 family, split 16
  std::uint64_t seed = 11;
  for (const Case& c : cases) {
    INFO(fmt::format("batch {} m {} n {} k {} transpose_a {} transpose_b {} batched b {}", c.batch, c.m, c.n, c.k, c.ta, c.tb, c.b_batched));
    Graph g = matmul_graph(c.batch, c.m, c.n, c.k, c.ta, c.tb, c.b_batched);
    if (target.sm() == 90 && c.m != 65) CHECK(uses_sm90(g, target));
    Values args = random_values(g, seed++);
    cuda_test::check_close(cuda_test::run_outputs(*cuda, g, args), cuda_test::run_outputs(*cpu, g, args));
  }
}

TEST_CASE("gpu: sm90 grouped matmul and its backward match the CPU backend, empty and full experts included", "[cuda][gpu]") {
  MOEJIT_SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend();
  auto cuda = make_cuda_backend();
  const auto target = cuda_device_target();
  struct Case {
    std::int64_t rows, d, f;
    std::vector<std::int32_t> offsets;
    bool transpose_w;
  };
  const Case cases[] = {
      {1000, 384, 512, {0, 0, 300, 301, 301, 700, 1000, 1000, 1000}, false},  // empty experts, one of 1 row
      {1000, 384, 512, {0, 0, 1000, 1000, 1000}, true},                       // one expert takes every row
      {777, 136, 200, {0, 777}, false},                                       // one expert
      {1000, 384, 512, {0, 100, 200, 995}, false},                            // rows past the last segment stay zero
      {3001, 256, 1536, {0, 128, 384, 1500, 1501, 2900, 3001}, true},
  };
  std::uint64_t seed = 21;
  for (const Case& c : cases) {
    const auto experts = static_cast<std::int64_t>(c.offsets.size()) - 1;
    INFO(fmt::format("rows {} d {} f {} experts {} transpose_w {}", c.rows, c.d, c.f, experts, c.transpose_w));
    Graph g = grouped_graph(c.rows, c.d, c.f, experts, c.transpose_w);
    if (target.sm() == 90) CHECK(uses_sm90(g, target));
    Values args = random_values(g, seed++);
    args.insert_or_assign("offsets", offsets_of(c.offsets));
    Values got = cuda_test::run_outputs(*cuda, g, args), want = cuda_test::run_outputs(*cpu, g, args);
    cuda_test::check_close(got, want);
    // Rows past the last segment are exactly zero on both.
    const HostTensor& ys = got.at("ys");
    for (std::int64_t r = c.offsets.back(); r < c.rows; ++r)
      for (std::int64_t j = 0; j < c.f; j += 37) REQUIRE(ys.get(r * c.f + j) == 0.0);
  }
}

TEST_CASE("the sm90 family runs weight gradients on the stream-K schedule, unless MOEJIT_SM90_STREAM_K=0", "[cuda][stream_k]") {
  const auto hopper = codegen::Target::named("sm_90a");
  // Config B's expert weight gradients: 8 experts, d 384, f 1536 (w_up's and w_down's).
  Graph g = grouped_graph(4096, 384, 1536, 8, false);
  int wgrads = 0;
  for (const Op& op : g.ops())
    if (op.kind == OpKind::GroupedMatmulWgrad) {
      ++wgrads;
      auto choice = codegen::choose_gemm(g, op, *codegen::gemm_problem_of(g, op), hopper);
      CHECK(choice.family == codegen::GemmFamily::sm90);
      CHECK(choice.config.stream_k);
      CHECK(choice.config.str().find("stream-k") != std::string::npos);
    } else if (auto problem = codegen::gemm_problem_of(g, op)) {
      CHECK_FALSE(codegen::choose_gemm(g, op, *problem, hopper).config.stream_k);  // the forward and dx products: no
    }
  CHECK(wgrads == 1);
  codegen::ModuleCode module = codegen::generate_module(g, hopper);
  const std::string kernels = module_kernels(g, hopper);
  CHECK(kernels.find("gemm_sm90_streamk_kernel") != std::string::npos);
  // The flags are zeroed before each stream-K launch, in the same step.
  bool zeroed_before = false;
  for (const auto& step : module.steps)
    for (std::size_t i = 1; i < step.launches.size(); ++i)
      zeroed_before |= step.launches[i].kernel.find("gemm_sm90_streamk_kernel") != std::string::npos &&
                       step.launches[i - 1].kind == codegen::Launch::Kind::zero;
  CHECK(zeroed_before);
  cuda_test::compile_to_ptx(module, g.name(), "compute_90a");  // NVRTC, every tile width the heuristic picks here
  {
    cuda_test::EnvOverride off("MOEJIT_SM90_STREAM_K", "0");
    CHECK(module_kernels(g, hopper).find("gemm_sm90_streamk_kernel") == std::string::npos);
  }
  // Two waves of tiles or more (D1536 E128: 128 experts x 12 tiles): one tile per block.
  CHECK(module_kernels(grouped_graph(4096, 1536, 256, 128, false), hopper).find("gemm_sm90_streamk_kernel") == std::string::npos);
  {
    cuda_test::EnvOverride bad("MOEJIT_SM90_STREAM_K", "yes");
    CHECK_THROWS_WITH(codegen::generate_module(g, hopper), Catch::Contains("MOEJIT_SM90_STREAM_K: expected 0 or 1, found 'yes'"));
  }
}

TEST_CASE("gpu: sm90 weight gradients on the stream-K schedule match the CPU backend, run to run bit for bit", "[cuda][gpu][stream_k]") {
  MOEJIT_SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend();
  auto cuda = make_cuda_backend();
  struct Case {
    std::int64_t rows, d, f;
    std::vector<std::int32_t> offsets;
  };
  // Few output tiles over long, unequal K: the long experts' tiles cut
  // across several blocks (stream-K), the short ones whole (data-parallel),
  // empty experts, a K of one row, K rows that are a multiple of no k-tile,
  // one expert taking every row, and 64 experts.
  const Case cases[] = {
      {6000, 256, 384, {0, 4000, 4100, 4100, 4101, 5990, 6000}},
      {5000, 128, 256, {0, 0, 5000, 5000}},
      {3000, 384, 1536, {0, 500, 1000, 1500, 2000, 2500, 2600, 2601, 3000}},
      {4000, 128, 128, {}},  // 64 experts of random sizes (filled below), some empty
  };
  std::uint64_t seed = 41;
  for (Case c : cases) {
    if (c.offsets.empty()) {
      std::mt19937 rng(7);
      c.offsets = {0};
      for (int e = 0; e < 63; ++e) c.offsets.push_back(std::min<std::int32_t>(4000, c.offsets.back() + (rng() % 4 == 0 ? 0 : rng() % 130)));
      c.offsets.push_back(4000);
    }
    const auto experts = static_cast<std::int64_t>(c.offsets.size()) - 1;
    INFO(fmt::format("rows {} d {} f {} experts {}", c.rows, c.d, c.f, experts));
    Graph g = grouped_graph(c.rows, c.d, c.f, experts, false);
    Values args = random_values(g, seed++);
    args.insert_or_assign("offsets", offsets_of(c.offsets));
    const Values want = cuda_test::run_outputs(*cpu, g, args);
    const Values first = cuda_test::run_outputs(*cuda, g, args);
    cuda_test::check_close(first, want);
    const Values again = cuda_test::run_outputs(*cuda, g, args);
    for (const auto& [name, value] : first) {
      INFO(name);
      CHECK(cuda_test::same_bits(value, again.at(name)));  // the owner adds the partials in block order
    }
    cuda_test::EnvOverride off("MOEJIT_SM90_STREAM_K", "0");
    cuda_test::check_close(cuda_test::run_outputs(*cuda, g, args), want);  // one tile per block, the other schedule
  }
}

namespace {

int launches_of(const codegen::ModuleCode& module, const std::string& needle) {
  int n = 0;
  for (const auto& step : module.steps)
    for (const auto& launch : step.launches) n += launch.kind == codegen::Launch::Kind::kernel && launch.kernel.find(needle) != std::string::npos;
  return n;
}

Graph forward_layer(std::int64_t tokens, std::int64_t d, std::int64_t f, std::int64_t experts, std::int64_t top_k, double capacity = 0.0,
                    bool backward = false, bool fused = true) {
  return cuda_test::routed_layer_graph("gather_layer", tokens, d, f, experts, top_k, fused ? "moe-fusions" : "", backward, capacity);
}

}  // namespace

TEST_CASE("the sm90 family gathers moe.gather_matmul's rows in its producer: no copy of them, unless MOEJIT_SM90_GATHER=0", "[cuda][gather]") {
  const auto hopper = codegen::Target::named("sm_90a");
  auto module_of = [&](Graph g) {
    run_pipeline(g, "cuda-pipeline");
    return codegen::generate_module(g, hopper);
  };
  // By default where the product has at most 2 column tiles (F 256: one).
  const codegen::ModuleCode gathered = module_of(forward_layer(1000, 384, 256, 8, 2));
  CHECK(launches_of(gathered, "permute_kernel") == 0);
  CHECK(launches_of(gathered, "StoreGeluBf16<true>, false, true>") == 1);  // the up projection, gathering
  const codegen::ModuleCode wide = module_of(forward_layer(1000, 384, 1536, 8, 2));  // F 1536: 6 or more
  CHECK(launches_of(wide, "permute_kernel") == 1);
  CHECK(launches_of(wide, ", false, true>") == 0);
  {
    cuda_test::EnvOverride on("MOEJIT_SM90_GATHER", "1");
    CHECK(launches_of(module_of(forward_layer(1000, 384, 1536, 8, 2)), "permute_kernel") == 0);
  }
  {
    cuda_test::EnvOverride off("MOEJIT_SM90_GATHER", "0");
    const codegen::ModuleCode copied = module_of(forward_layer(1000, 384, 256, 8, 2));
    CHECK(launches_of(copied, "permute_kernel") == 1);
    CHECK(launches_of(copied, ", false, true>") == 0);
  }
  // With the backward: the weight gradient of the gathered rows reads x
  // through the slots too (on the data-parallel schedule: 12 x 128 tiles),
  // so no moe.permute runs at all.
  const codegen::ModuleCode trained = module_of(forward_layer(4096, 1536, 256, 128, 8, 0.0, true));
  CHECK(launches_of(trained, "permute_kernel") == 0);
  CHECK(launches_of(trained, "StoreGeluBf16<true>, false, true>") == 1);
  CHECK(launches_of(trained, "<128, 256, 64, 4, false, false, moejit::sm90::StoreBf16, false, true>") == 1);  // xs^T dh
  // Unfused (moe.permute, then moe.grouped_matmul) too, although the
  // permute's copy exists: the weight gradient reads x and the slots.
  const codegen::ModuleCode unfused = module_of(forward_layer(4096, 1536, 256, 128, 8, 0.0, true, false));
  CHECK(launches_of(unfused, "<128, 256, 64, 4, false, false, moejit::sm90::StoreBf16, false, true>") == 1);
  {
    cuda_test::EnvOverride off("MOEJIT_SM90_GATHER", "0");
    CHECK(launches_of(module_of(forward_layer(4096, 1536, 256, 128, 8, 0.0, true)), "permute_kernel") == 1);  // one copy, shared
  }
  {
    cuda_test::EnvOverride bad("MOEJIT_SM90_GATHER", "yes");
    CHECK_THROWS_WITH(module_of(forward_layer(1000, 384, 512, 8, 2)), Catch::Contains("MOEJIT_SM90_GATHER: expected 0 or 1"));
  }
}

TEST_CASE("gpu: sm90 moe.gather_matmul and its weight gradient gathering in the producer match the CPU backend and the copied rows bit for bit",
          "[cuda][gpu][gather]") {
  MOEJIT_SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend();
  struct Layer {
    std::int64_t tokens, d, f, experts, top_k;
    double capacity;
  };
  // E = 1; K = E; sizes of no tile multiple (and K = 136, two chunks past
  // the last full 64); many experts, some empty; dropped slots (capacity).
  const Layer layers[] = {{1000, 384, 512, 8, 2, 0.0}, {777, 136, 200, 1, 1, 0.0}, {300, 128, 96, 4, 4, 0.0},
                          {500, 256, 256, 64, 4, 0.0}, {1000, 384, 256, 8, 2, 0.6}};
  // The weight gradients on the data-parallel schedule, the one that gathers.
  // Forward, forward + backward, and unfused forward + backward (where the
  // slots' last reader in the graph is the forward's moe.permute: the weight
  // gradient reads them too, which the memory plan must know).
  cuda_test::EnvOverride data_parallel("MOEJIT_SM90_STREAM_K", "0");
  std::uint64_t seed = 91;
  for (const int pass : {0, 1, 2})
  for (const Layer& c : layers) {
    const bool backward = pass > 0, fused = pass < 2;
    INFO(fmt::format("tokens {} d {} f {} experts {} top_k {} capacity {} backward {} fused {}", c.tokens, c.d, c.f, c.experts, c.top_k,
                     c.capacity, backward, fused));
    Graph g = forward_layer(c.tokens, c.d, c.f, c.experts, c.top_k, c.capacity, backward, fused);
    Values args = cuda_test::random_args(g, seed++, c.experts, 1.0);
    Values got;
    {
      cuda_test::EnvOverride on("MOEJIT_SM90_GATHER", "1");  // whatever the column tiles
      auto gathering = make_cuda_backend();
      got = cuda_test::run_outputs(*gathering, g, args);
    }
    cuda_test::check_close(got, cuda_test::run_outputs(*cpu, g, args));
    cuda_test::EnvOverride off("MOEJIT_SM90_GATHER", "0");
    auto copying = make_cuda_backend();
    const Values copied = cuda_test::run_outputs(*copying, g, args);
    for (const auto& [name, value] : got) {
      INFO(name);
      REQUIRE(value.bytes() == copied.at(name).bytes());
      CHECK(std::memcmp(value.raw(), copied.at(name).raw(), value.bytes()) == 0);
    }
  }
}
