// Elementwise chains that reach past the element-for-element ops: an
// mj.broadcast read inside its reader's chain (no copy of the broadcast
// tensor), and a chain whose last value only a sum / mean / max reads
// computed inside the reduction kernel (op group reduce_chain: the value is
// never stored). CI checks the grouping, the kernels codegen picks and that
// they compile; on a GPU every output matches the CPU backend, and the
// unfused run (MOEJIT_FUSIONS=0) bit for bit.
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include "codegen/cuda_codegen.h"
#include "codegen/target.h"
#include "cuda/gemm_test_util.h"
#include "cuda/module_util.h"
#include "cuda/ptx_check.h"
#include "ir/builder.h"
#include "passes/pass_manager.h"
#include "runtime/backend.h"
#include "runtime/cuda/cuda_backend.h"

using namespace moejit;
using cuda_test::count_launches;
using cuda_test::Values;

namespace {

// Every reduction path of codegen/emit_dense.cpp over a fused chain, and
// three kinds of broadcast in chains:
//   loss   mean(f32(y) * target) over everything: the split reduction
//   rows   sum over D of target * broadcast(r [T, 1]): a block per row
//          (a warp per row by default; MOEJIT_WARP_KERNELS=0: a block)
//   wide   sum over 20000 of z2 * broadcast(q [64, 1]): a block per row
//   cols   max over 16 rows of exp(z): a thread per column
//   dy     bf16(broadcast(s []) * target): the loss gradient's shape
//   shift  target + broadcast(c [D])
//   side   mean(p) where p = target * target is an output too: p is stored
//          and the mean reads it (no fusion)
Graph chain_graph(std::int64_t tokens, std::int64_t d) {
  Graph g("chain_fusion");
  Builder b(g);
  Tensor y = b.input("y", {tokens, d}, DType::bf16);
  Tensor target = b.input("target", {tokens, d});
  Tensor r = b.input("r", {tokens, 1});
  Tensor s = b.input("s", {});
  Tensor c = b.input("c", {d});
  Tensor z = b.input("z", {16, 4096});
  Tensor z2 = b.input("z2", {64, 20000});
  Tensor q = b.input("q", {64, 1});
  b.output(b.mean(b.mul(b.cast(y, DType::f32), target), {0, 1}), "loss");
  b.output(b.sum(b.mul(target, b.broadcast(r, {tokens, d})), {1}), "rows");
  b.output(b.max(b.exp(z), {0}), "cols");
  b.output(b.sum(b.mul(z2, b.broadcast(q, {64, 20000})), {1}), "wide");
  b.output(b.cast(b.mul(b.broadcast(s, {tokens, d}), target), DType::bf16), "dy");
  b.output(b.add(target, b.broadcast(c, {tokens, d})), "shift");
  Tensor p = b.mul(target, target);
  b.output(p, "p");
  b.output(b.mean(p, {0, 1}), "side");
  return g;
}

}  // namespace

TEST_CASE("fuse-elementwise takes a broadcast into its one reader's chain, never into its operand's", "[cuda][passes]") {
  Graph g("broadcasts");
  Builder b(g);
  Tensor x = b.input("x", {64, 32});
  Tensor r = b.input("r", {64, 1});
  Tensor once = b.broadcast(b.exp(r), {64, 32});       // one reader: joins it
  Tensor twice = b.broadcast(r, {64, 32});             // two readers: stays a copy
  b.output(b.mul(x, once), "a");
  b.output(b.add(b.sub(x, twice), twice), "b");
  run_pipeline(g, "fuse-elementwise");
  auto group = [&](OpKind kind, int nth) -> std::int64_t {
    for (const Op& op : g.ops())
      if (op.kind == kind && nth-- == 0) return op.attrs.has("mj.fusion_group") ? op.attrs.get_int("mj.fusion_group") : -1;
    FAIL("no such op");
    return -2;
  };
  CHECK(group(OpKind::Broadcast, 0) >= 0);
  CHECK(group(OpKind::Broadcast, 0) == group(OpKind::Mul, 0));
  CHECK(group(OpKind::Exp, 0) == -1);  // the operand's producer: its own kernel
  CHECK(group(OpKind::Broadcast, 1) == -1);
}

TEST_CASE("chains fused into reductions and broadcasts read in chains: the kernels, nothing stored, PTX", "[cuda][nvrtc]") {
  for (const char* arch : {"sm_90a", "sm_80"}) {
    INFO(arch);
    Graph g = chain_graph(4096, 384);
    run_pipeline(g, "cuda-pipeline");  // the graph whose values `materialized` indexes
    cuda_test::EnvOverride block_reductions("MOEJIT_WARP_KERNELS", "0");  // a block per row here; the warp forms below
    codegen::ModuleCode m = codegen::generate_module(g, codegen::Target::named(arch));
    CHECK(count_launches(m, "reduce_parts_kernel<float, 1, 256, mj::chain_value_") == 1);  // loss
    CHECK(count_launches(m, "reduce_kernel<float, 0, 256, mj::chain_value_") == 2);        // rows, wide
    CHECK(count_launches(m, "reduce_thread_kernel<float, 2, 256, mj::chain_value_") == 1); // cols
    CHECK(count_launches(m, "reduce_parts_kernel<float, 1, 256>") == 1);                   // side, from p
    CHECK(count_launches(m, "copy_kernel") == 0);
    CHECK(count_launches(m, "elementwise_kernel") == 3);  // dy, shift, p
    // The chains' values the reductions and readers consume are never
    // stored (the products of loss, rows and dy, exp, the broadcasts); p,
    // an output, is.
    for (const Op& op : g.ops()) {
      const ValueId v = op.results[0];
      const bool is_p = op.kind == OpKind::Mul && op.operands[0] == op.operands[1];
      if (op.kind != OpKind::Mul && op.kind != OpKind::Exp && op.kind != OpKind::Broadcast) continue;
      INFO(op_name(op.kind) << " " << g.type(v).str());
      CHECK(m.materialized[static_cast<std::size_t>(v)] == is_p);
    }
    cuda_test::compile_to_ptx(m, "chain_fusion", arch == std::string("sm_90a") ? "compute_90a" : "compute_80");
    cuda_test::EnvOverride warp("MOEJIT_WARP_KERNELS", "1");
    Graph again = chain_graph(4096, 384);
    run_pipeline(again, "cuda-pipeline");
    const codegen::ModuleCode w = codegen::generate_module(again, codegen::Target::named(arch));
    CHECK(count_launches(w, "reduce_warp_kernel<float, 0, 256, mj::chain_value_") == 1);  // rows
    CHECK(count_launches(w, "reduce_kernel<float, 0, 256, mj::chain_value_") == 1);       // wide
    cuda_test::compile_to_ptx(w, "chain_fusion_warp", arch == std::string("sm_90a") ? "compute_90a" : "compute_80");
  }
}

TEST_CASE("gpu: chains fused into reductions and broadcasts in chains match the CPU, and the unfused run bit for bit", "[cuda][gpu]") {
  MOEJIT_SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend();
  auto cuda = make_cuda_backend();
  for (auto [tokens, d, warp] : {std::tuple<std::int64_t, std::int64_t, const char*>{4096, 384, "0"}, {777, 130, "0"}, {4096, 384, "1"}}) {
    INFO(fmt::format("T {} D {} MOEJIT_WARP_KERNELS={}", tokens, d, warp));
    cuda_test::EnvOverride warp_kernels("MOEJIT_WARP_KERNELS", warp);
    Graph g = chain_graph(tokens, d);
    const Values args = cuda_test::random_args(g, 17, 1, 1.0);
    const Values fused = cuda_test::run_outputs(*cuda, g, args);
    const Values want = cuda_test::run_outputs(*cpu, g, args);
    for (const auto& [name, value] : want) {
      const double err = cuda_test::normalized_error(fused.at(name), value);
      INFO(fmt::format("{}: normalized error {:.3g}", name, err));
      CHECK(err <= cuda_test::tolerance(value.dtype()));
    }
    Values unfused;
    {
      cuda_test::EnvOverride off("MOEJIT_FUSIONS", "0");
      unfused = cuda_test::run_outputs(*cuda, g, args);
    }
    for (const auto& [name, value] : unfused) {
      INFO(name);
      CHECK(cuda_test::same_bits(fused.at(name), value));
    }
  }
}
