// fuse-gemm-epilogue: folds an elementwise op into the epilogue of the GEMM
// that produces its operand, so the tensor-core GEMM applies it to the
// accumulator registers before the store (no extra pass over memory, no
// extra launch):
//
//   gelu:      h = mj.gelu(p), p = GEMM(...)       the GEMM stores h, and p
//              too when anything else reads it (the backward's gelu_grad);
//   gelu_grad: dp = mj.gelu_grad(x, d), d = GEMM(...) read only by this
//              gelu_grad (the input gradient of a down-projection): the GEMM
//              reads x in its epilogue and stores dp; d is never stored
//              (opt-in, below);
//   cast:      y = mj.cast(p) to f32, p = GEMM(...)   the GEMM stores y, the
//              f32 of its rounded 16-bit product (exactly the unfused
//              meaning: round, then widen), and p too when anything else
//              reads it. Not when the cast would join an elementwise chain
//              anyway (its only reader an elementwise op of its shape, which
//              fuse-elementwise fuses it into): there the chain reads the
//              16-bit product for free and an f32 store would only add bytes.
//              The mixed-precision graph's weight gradients, the residual
//              stream's input gradients and the like (docs/perf.md, "casts").
//
// GEMMs: mj.matmul, moe.grouped_matmul and moe.gather_matmul (for cast
// also moe.grouped_matmul_wgrad) with bf16 or f16 results (the tensor-core families have the epilogues; f32 / f64
// products keep the separate op).
//
// Representation, like fuse-elementwise's: discardable attributes, the ops
// stay in the graph (the CPU backend and every other pass see the same
// computation): the GEMM gets `mj.epilogue = "gelu"` (or "gelu_grad") and
// the folded op `mj.gemm_epilogue = true`. fuse-elementwise leaves a folded
// op out of its chains. The CUDA codegen (codegen/op_groups.cpp) emits the
// pair as one step at the GEMM when the GEMM family serving it on the
// target has the epilogue and the folded op's other input is ready there;
// otherwise the two ops run as before, so a stale or unusable mark can cost
// speed, never a wrong result. Stale marks from an earlier run are removed.
//
// Which folds: MOEJIT_GEMM_EPILOGUES unset (or 1): gelu and cast; `all`:
// gelu, cast and gelu_grad; 0: none (the unfused run to compare with). gelu_grad is
// opt-in because it was measured slower than the standalone kernel: the
// epilogue stalls the tensor cores while it loads x and computes gelu', and
// at D1536 F256 E128 K8 the dh GEMM took 453 us with it against ~316 us
// plain + ~90 us for the separate kernel (docs/perf.md, 2026-12-02).
// MOEJIT_CAST_FOLDS=0 leaves the casts out (the GELU folds as set above),
// and codegen's norm groups then take no cast either (cast_folds_enabled):
// the run to compare the folded casts with.
// Statistics: gelu-folded, gelu-grad-folded, cast-folded.
#include <fmt/format.h>

#include <cstdlib>
#include <string>

#include "ir/error.h"
#include "passes/passes.h"

namespace moejit {

namespace {

constexpr const char* kEpilogueAttr = "mj.epilogue";
constexpr const char* kFoldedAttr = "mj.gemm_epilogue";

bool is_epilogue_gemm(OpKind kind) {
  return kind == OpKind::Matmul || kind == OpKind::GroupedMatmul || kind == OpKind::GatherMatmul;
}

bool sixteen_bit(DType dtype) { return dtype == DType::bf16 || dtype == DType::f16; }

class FuseGemmEpiloguePass final : public Pass {
 public:
  std::string_view name() const override { return "fuse-gemm-epilogue"; }

  void run(Graph& graph) override {
    reset_statistics();
    auto& ops = graph.mutable_ops();
    for (Op& op : ops) {
      op.attrs.erase(kEpilogueAttr);
      op.attrs.erase(kFoldedAttr);
    }
    std::int64_t gelu = 0, gelu_grad = 0, cast = 0;
    const char* env = std::getenv("MOEJIT_GEMM_EPILOGUES");
    const std::string mode = env ? env : "1";
    if (mode != "0" && mode != "1" && mode != "all")
      throw Error(fmt::format("MOEJIT_GEMM_EPILOGUES: expected 0, 1 or all, found '{}'", mode));
    if (mode == "0") {
      count("gelu-folded", 0);
      count("gelu-grad-folded", 0);
      count("cast-folded", 0);
      return;
    }
    const bool fold_gelu_grad = mode == "all";
    const bool fold_casts = cast_folds_enabled();
    const auto producers = graph.producers();
    const auto uses = graph.use_counts();
    // The one op reading each value, when exactly one does (-1: none or several).
    std::vector<int> only_reader(static_cast<std::size_t>(graph.num_values()), -1);
    for (std::size_t i = 0; i < ops.size(); ++i)
      for (ValueId v : ops[i].operands) only_reader[static_cast<std::size_t>(v)] = uses[static_cast<std::size_t>(v)] == 1 ? static_cast<int>(i) : -1;
    std::vector<bool> is_output(static_cast<std::size_t>(graph.num_values()), false);
    for (const auto& out : graph.outputs()) is_output[static_cast<std::size_t>(out.value)] = true;
    // The GEMM producing v as its first result, if it can take an epilogue yet (-1: none).
    // widen: the weight-gradient GEMM moe.grouped_matmul_wgrad takes the cast too.
    auto gemm_of = [&](ValueId v, bool widen = false) -> int {
      const int p = producers[static_cast<std::size_t>(v)];
      if (p < 0) return -1;
      const Op& g = ops[static_cast<std::size_t>(p)];
      const bool takes = is_epilogue_gemm(g.kind) || (widen && g.kind == OpKind::GroupedMatmulWgrad);
      if (!takes || g.results[0] != v || g.attrs.has(kEpilogueAttr)) return -1;
      return sixteen_bit(graph.type(v).dtype) ? p : -1;
    };
    for (Op& op : ops) {
      if (op.kind == OpKind::Gelu) {
        const int g = gemm_of(op.operands[0]);
        if (g < 0 || graph.type(op.results[0]) != graph.type(op.operands[0])) continue;
        ops[static_cast<std::size_t>(g)].attrs.set(kEpilogueAttr, std::string("gelu"));
        op.attrs.set(kFoldedAttr, true);
        ++gelu;
      } else if (op.kind == OpKind::GeluGrad && fold_gelu_grad) {
        const ValueId x = op.operands[0], d = op.operands[1];
        const int g = gemm_of(d);
        if (g < 0 || x == d || uses[static_cast<std::size_t>(d)] != 1 || is_output[static_cast<std::size_t>(d)]) continue;
        if (graph.type(x) != graph.type(d) || graph.type(op.results[0]) != graph.type(d)) continue;
        ops[static_cast<std::size_t>(g)].attrs.set(kEpilogueAttr, std::string("gelu_grad"));
        op.attrs.set(kFoldedAttr, true);
        ++gelu_grad;
      } else if (op.kind == OpKind::Cast && fold_casts) {
        const ValueId p = op.operands[0], y = op.results[0];
        const int g = gemm_of(p, true);
        if (g < 0 || graph.type(y).dtype != DType::f32 || graph.type(y).shape != graph.type(p).shape) continue;
        const int reader = only_reader[static_cast<std::size_t>(y)];
        const bool joins_chain = !is_output[static_cast<std::size_t>(y)] && reader >= 0 &&
                                 is_fusible_elementwise(ops[static_cast<std::size_t>(reader)].kind) &&
                                 graph.type(ops[static_cast<std::size_t>(reader)].results[0]).shape == graph.type(y).shape;
        if (joins_chain) continue;
        ops[static_cast<std::size_t>(g)].attrs.set(kEpilogueAttr, std::string("cast"));
        op.attrs.set(kFoldedAttr, true);
        ++cast;
      }
    }
    count("gelu-folded", gelu);
    count("gelu-grad-folded", gelu_grad);
    count("cast-folded", cast);
  }
};

}  // namespace

bool cast_folds_enabled() {
  const char* env = std::getenv("MOEJIT_CAST_FOLDS");
  if (!env || std::string(env) == "1") return true;
  if (std::string(env) == "0") return false;
  throw Error(fmt::format("MOEJIT_CAST_FOLDS: expected 0 or 1, found '{}'", env));
}

std::unique_ptr<Pass> create_fuse_gemm_epilogue_pass(const PassOptions&) { return std::make_unique<FuseGemmEpiloguePass>(); }

}  // namespace moejit
