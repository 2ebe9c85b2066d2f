// The casts of the bf16 mixed-precision graph folded into the kernels that
// produce their operand (docs/perf.md, "Casts folded"):
//   - an mj.cast to f32 of a tensor-core GEMM's bf16 product
//     (passes/fuse_gemm_epilogue.cpp, mj.epilogue = "cast"): the GEMM's
//     epilogue stores the f32 of the rounded product (StoreWidenF32 /
//     StoreWiden16; a split-K product's finish kernel with WIDEN), and the
//     product too when something else reads it;
//   - an mj.cast to bf16 of a layer norm's f32 result (codegen/op_groups.cpp,
//     add_norm), or of what a norm backward's row kernel writes (dx, or
//     dx + the residual gradient: norm_grad_add): the kernel writes the bf16
//     copy too.
// Which casts codegen folds, counted on config B's training step and on
// small graphs (CI, no GPU), the PTX of the new forms, and on a GPU the
// folded graphs against the CPU backend and, bit for bit, against the same
// graph unfolded (MOEJIT_GEMM_EPILOGUES=0, MOEJIT_OP_GROUPS=0; MOEJIT_CAST_FOLDS=0
// unfolds only the casts).
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <cstdlib>
#include <string>
#include <vector>
#include <map>
#include <optional>

#include "codegen/cuda_codegen.h"
#include "codegen/target.h"
#include "cuda/cuda_test_util.h"
#include "cuda/gemm_test_util.h"
#include "cuda/module_util.h"
#include "cuda/ptx_check.h"
#include "frontends/config.h"
#include "frontends/trainer.h"
#include "ir/builder.h"
#include "passes/autodiff.h"
#include "passes/pass_manager.h"
#include "runtime/backend.h"
#include "runtime/cuda/cuda_backend.h"

using namespace moejit;
using cuda_test::count_launches;
using cuda_test::module_of;

namespace {

using Values = std::map<std::string, HostTensor>;

using cuda_test::EnvOverride;
using cuda_test::same_bits;


struct CastCensus {
  int standalone = 0;        // steps that are one mj.cast and launch a kernel
  int to_bf16 = 0, to_f32 = 0;  // of those, by result type
  int in_gemm = 0;           // casts in a step whose launches include a GEMM or a split-K finish
  int in_norm = 0;           // casts in a step with a norm or a norm backward
  int in_chain = 0;          // casts in a fused elementwise chain of several ops
  int in_weight_casts = 0;   // casts in the multi-tensor launch of the weights' casts
};

CastCensus census(const Graph& graph, const codegen::Target& target) {
  Graph g = graph;
  run_pipeline(g, "cuda-pipeline");
  const codegen::ModuleCode m = codegen::generate_module(g, target);
  CastCensus c;
  for (const auto& step : m.steps) {
    if (step.launches.empty()) continue;
    int casts = 0;
    bool gemm = false, norm = false, weights = false;
    for (const auto& launch : step.launches) weights = weights || launch.kernel.find("multi_cast_kernel") != std::string::npos;
    for (int i : step.ops) {
      const Op& op = g.ops()[static_cast<std::size_t>(i)];
      casts += op.kind == OpKind::Cast;
      gemm = gemm || op.kind == OpKind::Matmul || op.kind == OpKind::GroupedMatmul || op.kind == OpKind::GatherMatmul ||
             op.kind == OpKind::GroupedMatmulWgrad;
      norm = norm || op.kind == OpKind::LayerNorm || op.kind == OpKind::RmsNorm || op.kind == OpKind::LayerNormGrad ||
             op.kind == OpKind::RmsNormGrad;
    }
    if (casts == 0) continue;
    if (step.ops.size() == 1) {
      ++c.standalone;
      const DType to = g.type(g.ops()[static_cast<std::size_t>(step.ops[0])].results[0]).dtype;
      c.to_bf16 += to == DType::bf16;
      c.to_f32 += to == DType::f32;
    } else if (weights) {
      c.in_weight_casts += casts;
    } else if (gemm) {
      c.in_gemm += casts;
    } else if (norm) {
      c.in_norm += casts;
    } else {
      c.in_chain += casts;
    }
  }
  return c;
}


// Two pre-norm residual blocks x + f32(relu(bf16(ln(x)) w1) w2), loss =
// mean(y * target), trained through mixed-precision{dtype=bf16} like the
// model: each norm's bf16 copy for w1; the weight gradients (f32
// parameters: cast back to f32); the input gradient of ln(x) reaching
// layer_norm_grad through a cast; the second block's norm backward plus
// the residual gradient, cast to bf16 for the first block's matmul
// backward. tokens of 8192 and more make the weight gradients split K (f32
// partials and the finish). relu, not gelu: a gelu would fold into w1's GEMM
// with its own tanh, and the GPU test compares the folded run with the
// unfolded one bit for bit.
Graph block_graph(std::int64_t tokens, std::int64_t d, std::int64_t f) {
  Graph g("cast_block");
  Builder b(g);
  Tensor x = b.input("x", {tokens, d});
  Tensor target = b.input("target", {tokens, d});
  std::vector<std::string> wrt = {"x"};
  Tensor y = x;
  for (int l = 0; l < 2; ++l) {
    Tensor gamma = b.param(fmt::format("gamma{}", l), {d}), beta = b.param(fmt::format("beta{}", l), {d});
    Tensor w1 = b.param(fmt::format("w1_{}", l), {d, f}), w2 = b.param(fmt::format("w2_{}", l), {f, d});
    for (const char* p : {"gamma", "beta", "w1_", "w2_"}) wrt.push_back(fmt::format("{}{}", p, l));
    y = b.add(y, b.matmul(b.relu(b.matmul(b.layer_norm(y, gamma, beta), w1)), w2));
  }
  b.output(b.mean(b.mul(y, target), {0, 1}), "loss");
  run_pipeline(g, "mixed-precision{dtype=bf16}");
  append_backward(g, {.loss = "loss", .wrt = wrt});
  return g;
}

// The routed expert layer on f32 parameters and input, through the MoE
// fusions and mixed precision (gather_matmul, matmul_combine, the expert
// weight gradients moe.grouped_matmul_wgrad cast back to f32); relu as above.
Graph expert_graph(std::int64_t tokens, std::int64_t d, std::int64_t f, std::int64_t experts, std::int64_t top_k) {
  Graph g("cast_experts");
  Builder b(g);
  Tensor x = b.input("x", {tokens, d});
  Tensor chosen = b.input("experts", {tokens, top_k}, DType::i32);
  Tensor weights = b.input("weights", {tokens, top_k});
  Tensor w_up = b.param("w_up", {experts, d, f}), w_down = b.param("w_down", {experts, f, d});
  Tensor target = b.input("target", {tokens, d});
  auto [slots, offsets, positions, counts] = b.moe_dispatch(chosen, {.num_experts = experts});
  Tensor h = b.relu(b.moe_grouped_matmul(b.moe_permute(x, slots, top_k), w_up, offsets));
  Tensor y = b.moe_combine(b.moe_grouped_matmul(h, w_down, offsets), weights, positions);
  b.output(b.mean(b.mul(y, target), {0, 1}), "loss");
  run_pipeline(g, "moe-fusions,mixed-precision{dtype=bf16}");
  append_backward(g, {.loss = "loss", .wrt = {"x", "w_up", "w_down"}});
  return g;
}

// y = f32(a b) (and the bf16 product as an output too when `keep`): the
// folded cast with and without the second store.
Graph product_graph(std::int64_t m, std::int64_t k, std::int64_t n, bool transpose_a, bool keep) {
  Graph g("cast_product");
  Builder b(g);
  Tensor a = b.input("a", transpose_a ? Shape{k, m} : Shape{m, k}, DType::bf16);
  Tensor w = b.input("b", {k, n}, DType::bf16);
  Tensor p = b.matmul(a, w, transpose_a);
  b.output(b.cast(p, DType::f32), "y");
  if (keep) b.output(p, "p");
  return g;
}

// A norm backward whose dy is q + f32(p), p bf16 (the model's ln_2
// backward: the experts' input gradient and the router's), then dx + r and
// its bf16 copy: the whole chain in the norm backward's row kernel.
Graph norm_grad_graph(std::int64_t rows, std::int64_t d) {
  Graph g("cast_norm_grad");
  Builder b(g);
  Tensor x = b.input("x", {rows, d}), gamma = b.input("gamma", {d});
  Tensor p = b.input("p", {rows, d}, DType::bf16), q = b.input("q", {rows, d}), r = b.input("r", {rows, d});
  AttrList eps;
  eps.set("eps", 1e-5);
  std::vector<Tensor> grads = b.op(OpKind::LayerNormGrad, {x, gamma, b.add(q, b.cast(p, DType::f32))}, eps);
  Tensor dx = b.add(grads[0], r);
  b.output(dx, "dx");
  b.output(b.cast(dx, DType::bf16), "dx16");
  for (std::size_t k = 1; k < grads.size(); ++k) b.output(grads[k], fmt::format("param_grad{}", k));
  return g;
}

}  // namespace

TEST_CASE("fuse-gemm-epilogue marks the casts to f32 of 16-bit GEMM products, not those an elementwise chain takes", "[cuda][casts]") {
  // The blocks' graph: forward x + f32(...) (the cast joins the residual add's chain: not folded);
  // backward, per block: dx of ln(x) (read by layer_norm_grad), dw1, dw2 (outputs): folded.
  Graph g = block_graph(256, 64, 128);
  run_pipeline(g, "fuse-gemm-epilogue");
  int marked = 0, folded = 0;
  for (const Op& op : g.ops()) {
    if (const AttrValue* e = op.attrs.find("mj.epilogue"); e && std::get<std::string>(*e) == "cast") {
      ++marked;
      CHECK(g.type(op.results[0]).dtype == DType::bf16);
    }
    if (op.kind == OpKind::Cast && op.attrs.has("mj.gemm_epilogue")) {
      ++folded;
      CHECK(g.type(op.results[0]).dtype == DType::f32);
    }
  }
  CHECK(marked == 6);
  CHECK(folded == 6);
  {
    EnvOverride off("MOEJIT_GEMM_EPILOGUES", "0");
    Graph h = block_graph(256, 64, 128);
    run_pipeline(h, "fuse-gemm-epilogue");
    for (const Op& op : h.ops()) CHECK_FALSE(op.attrs.has("mj.gemm_epilogue"));
  }
  // f32 products, casts to f16 or bf16, and casts of non-GEMM values stay.
  Graph other("other");
  Builder b(other);
  Tensor a = b.input("a", {32, 16}, DType::bf16), w = b.input("w", {16, 8}, DType::bf16);
  Tensor a32 = b.input("a32", {32, 16}), w32 = b.input("w32", {16, 8});
  b.output(b.cast(b.matmul(a, w), DType::f16), "to_f16");
  b.output(b.cast(b.matmul(a32, w32), DType::bf16), "from_f32");
  b.output(b.cast(a, DType::f32), "not_a_product");
  run_pipeline(other, "fuse-gemm-epilogue");
  for (const Op& op : other.ops()) CHECK_FALSE(op.attrs.has("mj.gemm_epilogue"));
}

TEST_CASE("config B's bf16 training step runs no standalone cast of a GEMM product, a norm's result or a norm backward's", "[cuda][casts]") {
  GptMoeConfig config = load_config_file(std::string(MOEJIT_SOURCE_DIR) + "/examples/gpt_moe/configs/config_b.json");
  config.vocab_size = 65;
  const Graph graph = build_training_graph(config, DType::bf16).graph;
  const auto hopper = codegen::Target::named("sm_90a");
  CastCensus before, after = census(graph, hopper);
  {
    EnvOverride no_epilogues("MOEJIT_GEMM_EPILOGUES", "0");
    EnvOverride no_groups("MOEJIT_OP_GROUPS", "0");
    before = census(graph, hopper);
  }
  INFO(fmt::format("standalone casts: before {} ({} to bf16, {} to f32), after {} ({} to bf16, {} to f32); after: {} in GEMMs, {} in norms, {} in chains",
                   before.standalone, before.to_bf16, before.to_f32, after.standalone, after.to_bf16, after.to_f32, after.in_gemm,
                   after.in_norm, after.in_chain));
  // Derived by hand (6 layers; the LM head's weight is wte, tied):
  //   to f32, folded into GEMMs: per layer the expert weight gradients of
  //   w_up and w_down (grouped wgrad), the dense ones of qkv and of the
  //   attention output (split K: in the finish), qkv's input gradient (read by
  //   ln_1's backward) = 5; the LM head's logits (read by cross_entropy) and
  //   its input gradient (ln_f's backward) = 2: 32 (the LM head's weight
  //   gradient joins the embedding gradient's add chain: not folded);
  //   to bf16, folded into the norms: ln_1, ln_2 per layer, ln_f: 13; into
  //   the norm backwards (the residual gradient the block's backward reads):
  //   ln_2's backward with its add per layer (attention output's backward),
  //   ln_1's with its add in layers 1..5 and ln_f's alone (the MoE block
  //   backward of the layer below): 12.
  //   To f32, folded into the norms: the residual adds x + f32(product) of
  //   the attention output and the MoE block per layer, each read by the
  //   next norm (ln_2, ln_1 of the next layer, ln_f): 12.
  //   And into the norm backwards that read them: each layer's ln_2 backward
  //   takes dy = f32(the experts' input gradient) + the router's: 6.
  //   The 25 weights' casts to bf16: one multi-tensor launch (weight_casts).
  //   Left to bf16: the 6 routes' gate weights [T, K], the loss gradient [T, vocab].
  CHECK(before.standalone == 95);
  CHECK(before.standalone - after.standalone == 57 + 25);
  CHECK(after.in_gemm == 32);
  CHECK(after.in_norm == 25 + 12 + 6);
  CHECK(after.in_weight_casts == 25);
  CHECK(after.to_bf16 == 7);
  {
    // MOEJIT_CAST_FOLDS=0: every cast its own kernel again, the other groups and folds as before.
    EnvOverride no_casts("MOEJIT_CAST_FOLDS", "0");
    const CastCensus c = census(graph, hopper);
    CHECK(c.standalone == before.standalone);
    CHECK(c.in_gemm + c.in_norm + c.in_weight_casts == 0);
    EnvOverride bad("MOEJIT_CAST_FOLDS", "no");
    CHECK_THROWS_WITH(census(graph, hopper), Catch::Contains("MOEJIT_CAST_FOLDS: expected 0 or 1, found 'no'"));
  }
  // Left to f32: the 6 combine_grad weight gradients [T, K] (read by the f32 gate's backward; not a GEMM).
  CHECK(before.to_f32 == 38);
  CHECK(after.to_f32 == 6);
}

TEST_CASE("the cast folds: which kernels, on sm_90a and sm_80", "[cuda][casts]") {
  const auto hopper = codegen::Target::named("sm_90a"), ampere = codegen::Target::named("sm_80");
  {
    codegen::ModuleCode m = module_of(block_graph(256, 64, 128), hopper);
    CHECK(count_launches(m, "StoreWidenF32") == 6);  // per block dx of ln(x), dw1, dw2
    const CastCensus c = census(block_graph(256, 64, 128), hopper);
    // the norms' bf16 copies, the second block's norm backward + add, and
    // block 0's residual x + f32(product) read by block 1's norm (widened there)
    CHECK(c.in_norm == 4);
    CHECK(c.standalone == 1);  // the loss gradient (f32, read by the residual stream too) for w2_1's backward
    CHECK(c.in_weight_casts == 4);  // the four weights' casts: one multi-tensor launch
    CHECK(count_launches(m, "multi_cast_kernel") == 1);
    m = module_of(block_graph(256, 64, 128), ampere);
    CHECK(count_launches(m, "StoreWiden16<mj::bf16_t>") == 6);
  }
  {
    // The norm backward computes its dy = q + f32(p) itself: no elementwise kernel left.
    const codegen::ModuleCode m = module_of(norm_grad_graph(300, 384), hopper);
    CHECK(count_launches(m, "elementwise_kernel") == 0);
    CHECK(count_launches(m, "norm_grad_rows_warp_kernel") == 1);
    // Rows of 1100 (more than the warp kernel takes): the chain stays an elementwise kernel.
    CHECK(count_launches(module_of(norm_grad_graph(100, 1100), hopper), "elementwise_kernel") >= 1);
  }
  {
    // tokens 8192: the weight gradients split K, the finish widens.
    codegen::ModuleCode m = module_of(block_graph(8192, 128, 256), hopper);
    CHECK(count_launches(m, "matmul_split_k_finish_kernel<mj::bf16_t, 256, true>") == 4);
    CHECK(count_launches(m, "StoreWidenF32") == 2);
  }
  {
    // The expert layer: the two expert weight gradients (varlen K) widen.
    codegen::ModuleCode m = module_of(expert_graph(1000, 128, 256, 8, 2), hopper);
    CHECK(count_launches(m, "StoreWidenF32") == 2);
    m = module_of(expert_graph(1000, 128, 256, 8, 2), ampere);
    CHECK(count_launches(m, "StoreWiden16<mj::bf16_t>") == 2);
  }
  {
    // With the product kept as an output: still folded (aux), and a split product is not (no second output there).
    CHECK(count_launches(module_of(product_graph(256, 64, 128, false, true), hopper), "StoreWidenF32") == 1);
    CHECK(count_launches(module_of(product_graph(128, 8192, 128, true, false), hopper), "256, true>") == 1);
    CHECK(count_launches(module_of(product_graph(128, 8192, 128, true, true), hopper), "256, true>") == 0);
  }
}

TEST_CASE("the folded casts compile to PTX for compute_90a and compute_80", "[cuda][nvrtc][casts]") {
  for (const char* arch : {"sm_90a", "sm_80"}) {
    INFO(arch);
    for (Graph g : {block_graph(8192, 128, 256), expert_graph(1000, 128, 256, 8, 2)}) {
      codegen::ModuleCode m = module_of(g, codegen::Target::named(arch));
      cuda_test::compile_to_ptx(m, g.name(), codegen::Target::named(arch).ptx_arch());
    }
  }
}

TEST_CASE("gpu: folded casts match the CPU backend and the unfolded GPU run bit for bit", "[cuda][gpu][casts]") {
  MOEJIT_SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend();
  auto cuda = make_cuda_backend();
  std::uint64_t seed = 301;
  auto check = [&](const Graph& g, std::int64_t int_bound) {
    Values args = cuda_test::random_args(g, seed++, int_bound, 1.0);
    Values got = cuda_test::run_outputs(*cuda, g, args);
    cuda_test::check_close(got, cuda_test::run_outputs(*cpu, g, args));
    // Only the cast folds off: turning off every epilogue and op group (as
    // this test first did) also unfolds GELU, whose epilogue form is not the
    // standalone kernel's bits, and it failed on those on the H200 (12-02).
    EnvOverride no_folds("MOEJIT_CAST_FOLDS", "0");
    auto plain = make_cuda_backend();
    const Values want = cuda_test::run_outputs(*plain, g, args);
    for (const auto& [name, value] : want) {
      INFO(name);
      CHECK(same_bits(got.at(name), value));
    }
  };
  struct Block {
    std::int64_t tokens, d, f;
  };
  // 300 rows: partial tiles; d 100 (rows of 200 bytes, no TMA): the sm80 family on sm_90a; split K at 8192.
  for (const Block& c : {Block{1000, 384, 512}, Block{300, 100, 136}, Block{8192, 128, 256}}) {
    INFO(fmt::format("block tokens {} d {} f {}", c.tokens, c.d, c.f));
    check(block_graph(c.tokens, c.d, c.f), 1);
  }
  struct Layer {
    std::int64_t tokens, d, f, experts, top_k;
  };
  for (const Layer& c : {Layer{1000, 384, 512, 8, 2}, Layer{500, 128, 96, 64, 4}}) {
    INFO(fmt::format("experts tokens {} d {} f {} experts {} top_k {}", c.tokens, c.d, c.f, c.experts, c.top_k));
    check(expert_graph(c.tokens, c.d, c.f, c.experts, c.top_k), c.experts);
  }
  check(norm_grad_graph(300, 384), 1);
  check(norm_grad_graph(1000, 100), 1);   // rows of 100: the scalar loads
  check(norm_grad_graph(100, 1100), 1);   // rows of 1100: not the warp kernel, nothing folded
  for (bool keep : {false, true}) {
    INFO(fmt::format("product, keep {}", keep));
    check(product_graph(300, 64, 136, false, keep), 1);
    check(product_graph(128, 8192, 200, true, keep), 1);
  }
}
