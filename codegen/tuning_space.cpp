// The tunable kernel families and their spaces (see tuning_space.h).
//
// gemm_sm90 (codegen/kernels/gemm_sm90.cuh): tile 128 x tile_n x 64 with
//   tile_n 64, 128 or 256 and 4 to 6 pipeline stages, where
//   sm90::smem_bytes (the stages, the C staging boxes, the barriers and one
//   offset per group) fits the target's shared memory opt-in. The entry sets
//   tile_n and stages.
// matmul_simt (codegen/kernels/matmul.cuh): tile_m and tile_n in {16, 32, 64,
//   128} (8 too along a dimension of at most 8; none above the dimension's
//   next power of two) with at most 64 x 64 outputs per block and at least
//   256 (smaller tiles waste the block), tile_k 16 or 32 (for k < 32: 16,
//   or 8 and 16 for k <= 8), with the two staged slices within 48 KiB of
//   static shared memory (gemm_select.cpp's rules). The entry sets tile_m,
//   tile_n, tile_k; the threads follow from the tile.
// gemm_sm80 (codegen/kernels/gemm_sm80.cuh), the bf16/f16 products sm90
//   cannot take (rows TMA cannot address, f16, plain sm_90): its one tile
//   128 x 128 x 32 with 2 to 6 pipeline stages where sm80::smem_bytes fits
//   the opt-in. The entry sets stages.
// attention (codegen/kernels/attention.cuh, chosen by attention_select.cpp):
//   one problem per flash attention (forward and backward together: the
//   forward op's shape), tile_m the forward's and tile_k the dq kernel's
//   query tile (64, or 128 for head dims <= 64), tile_n the dk/dv kernel's
//   query step (32 or 64), where
//   the three kernels' shared memory fits the opt-in; timed as the forward
//   and backward of a one-op pair, its output the gradient of q, k, v.
//
// route (codegen/kernels/moe.cuh route_kernel, the fused router of
//   moe.route up to 256 experts): threads, experts per thread, tokens per
//   thread, slice depth and stages (codegen/route_config.h), where the
//   static shared memory (mj::RouteLayout) fits 48 KiB. The entry sets
//   tile_m (tokens per block), tile_n (experts per thread), tile_k (slice
//   depth), stages and threads.
//
// Each family's version key (tuning_family_version) hashes its revision
// (bump it when a field's meaning or the kernel's behaviour under a config
// changes in a way nothing below sees), its space in words, and the
// kernel's limits that decide which configurations exist: the tile shapes
// it instantiates and the shared memory each configuration needs. An edit
// of the kernel that changes any of those makes the entries tuned before it
// stale, so they are dropped at load (tuning_db.h), never used.
#include "codegen/tuning_space.h"

#include <fmt/format.h>

#include <algorithm>
#include <map>

#include "codegen/kernels/attention.cuh"
#include "codegen/kernels/gemm_sm80.cuh"
#include "codegen/kernels/gemm_sm90.cuh"
#include "ir/attention_layout.h"
#include "ir/builder.h"
#include "ir/checked_file.h"
#include "ir/error.h"
#include "ir/op_table.h"

namespace moejit::codegen {

namespace {

// The fields of a chosen config that the family's entries set.
TunedFields sm90_fields(const TileConfig& c) { return TunedFields{.tile_n = c.tile_n, .stages = c.stages}; }
TunedFields simt_fields(const TileConfig& c) { return TunedFields{.tile_m = c.tile_m, .tile_n = c.tile_n, .tile_k = c.tile_k}; }
TunedFields sm80_fields(const TileConfig& c) { return TunedFields{.stages = c.stages}; }

// The GEMM problem of `op` when choose_gemm (without a database) picks `family` for it.
std::optional<TuningProblem> gemm_problem_in(GemmFamily family, const Graph& graph, const Op& op, const Target& target) {
  std::optional<GemmProblem> gemm = gemm_problem_of(graph, op);
  if (!gemm || route_problem_of(graph, op)) return std::nullopt;  // a fused route runs route_kernel, no GEMM family
  GemmChoice choice;
  {
    ScopedTuningDbOverride no_database(nullptr);
    choice = choose_gemm(graph, op, *gemm, target);
  }
  if (choice.family != family) return std::nullopt;
  TuningProblem p;
  p.family = gemm_family_name(family);
  p.key = gemm_tuning_key(gemm_family_name(family), *gemm);
  p.gemm = *gemm;
  p.heuristic = family == GemmFamily::sm90   ? sm90_fields(choice.config)
                : family == GemmFamily::sm80 ? sm80_fields(choice.config)
                                             : simt_fields(choice.config);
  p.flops = 2.0 * static_cast<double>(gemm->m) * static_cast<double>(gemm->n) * static_cast<double>(gemm->k) *
            static_cast<double>(gemm->kind == GemmProblem::Kind::matmul ? gemm->batch : 1);
  p.uses = 1;
  return p;
}

std::optional<TuningProblem> sm90_problem(const Graph& graph, const Op& op, const Target& target) {
  return gemm_problem_in(GemmFamily::sm90, graph, op, target);
}
std::optional<TuningProblem> simt_problem(const Graph& graph, const Op& op, const Target& target) {
  return gemm_problem_in(GemmFamily::simt, graph, op, target);
}
std::optional<TuningProblem> sm80_problem(const Graph& graph, const Op& op, const Target& target) {
  return gemm_problem_in(GemmFamily::sm80, graph, op, target);
}

// The heuristic's fields first, then the rest of the space without it.
std::vector<TunedFields> heuristic_first(const TuningProblem& p, const std::vector<TunedFields>& space) {
  std::vector<TunedFields> out = {p.heuristic};
  for (const auto& f : space)
    if (!(f == p.heuristic)) out.push_back(f);
  return out;
}

std::vector<TunedFields> sm90_candidates(const TuningProblem& p, const Target& target) {
  const std::int64_t groups = p.gemm.kind == GemmProblem::Kind::matmul ? 1 : p.gemm.batch;
  std::vector<TunedFields> space;
  for (int tile_n : {64, 128, 256})
    for (int stages : {4, 5, 6})
      if (sm90::smem_bytes(128, tile_n, 64, stages, groups) <= target.shared_memory_per_block_optin)
        space.push_back({.tile_n = tile_n, .stages = stages});
  return heuristic_first(p, space);
}

std::vector<TunedFields> sm80_candidates(const TuningProblem& p, const Target& target) {
  const bool grouped = p.gemm.kind == GemmProblem::Kind::grouped;
  std::vector<TunedFields> space;
  for (int stages = 2; stages <= 6; ++stages)
    if (sm80::smem_bytes(128, 128, 32, stages, p.gemm.batch, grouped) <= target.shared_memory_per_block_optin)
      space.push_back({.stages = stages});
  return heuristic_first(p, space);
}

// The SIMT tile sizes worth trying along a dimension of `d`: 16 to 128, none
// above the dimension's next power of two (it would only add idle
// threads), and 8 too for a dimension of at most 8 (a router's experts).
std::vector<int> simt_sizes(std::int64_t d) {
  std::int64_t pow2 = 1;
  while (pow2 < d) pow2 *= 2;
  std::vector<int> sizes;
  for (int s : {8, 16, 32, 64, 128})
    if ((s >= 16 || d <= 8) && s <= std::max<std::int64_t>(16, pow2)) sizes.push_back(s);
  return sizes;
}

std::vector<TunedFields> simt_candidates(const TuningProblem& p, const Target&) {
  const int acc_bytes = p.gemm.dtype == DType::f64 ? 8 : 4;
  const std::vector<int> ks = p.gemm.k >= 32 ? std::vector<int>{16, 32} : simt_sizes(p.gemm.k);
  std::vector<TunedFields> space;
  for (int tile_m : simt_sizes(p.gemm.m))
    for (int tile_n : simt_sizes(p.gemm.n))
      for (int tile_k : ks) {
        if (tile_m * tile_n > 64 * 64 || tile_m * tile_n < 256) continue;  // larger: halved to 64 x 64 anyway
        if (tile_k * (tile_m + 1 + tile_n + 1) * acc_bytes > 48 * 1024) continue;  // static shared memory
        space.push_back({.tile_m = tile_m, .tile_n = tile_n, .tile_k = tile_k});
      }
  return heuristic_first(p, space);
}

// One op `kind` of `operands` (names and types) with `attrs`, its result the output "out".
Graph one_op_graph(OpKind kind, const std::vector<std::pair<std::string, TensorType>>& operands, AttrList attrs) {
  Graph g("moejit_tune");
  std::vector<ValueId> ids;
  std::vector<TensorType> types;
  for (const auto& [name, type] : operands) {
    ids.push_back(g.add_arg(name, type, name == "w" || name == "b" ? ArgRole::param : ArgRole::input));
    types.push_back(type);
  }
  std::string error;
  auto results = infer_op(kind, types, attrs, &error);
  if (!results) throw Error(fmt::format("moejit tune: the one-op graph of \"{}\" is invalid: {}", op_name(kind), error));
  auto out = g.add_op(kind, std::move(ids), std::move(attrs), std::move(*results));
  g.add_output(out.at(0), "out");
  return g;
}

// The problem's op alone: mj.matmul, moe.grouped_matmul (a gathered problem
// runs the same GEMM after its copy) or moe.grouped_matmul_wgrad.
Graph gemm_problem_graph(const TuningProblem& p) {
  const GemmProblem& g = p.gemm;
  const DType t = g.dtype;
  AttrList attrs;
  switch (g.kind) {
    case GemmProblem::Kind::matmul: {
      Shape a = g.a_k_major ? Shape{g.m, g.k} : Shape{g.k, g.m};
      if (g.batch > 1) a.insert(a.begin(), g.batch);
      attrs.set("transpose_a", !g.a_k_major);
      attrs.set("transpose_b", g.b_k_major);
      return one_op_graph(OpKind::Matmul, {{"a", TensorType{t, a}}, {"b", TensorType{t, g.b_k_major ? Shape{g.n, g.k} : Shape{g.k, g.n}}}},
                          std::move(attrs));
    }
    case GemmProblem::Kind::grouped:
      attrs.set("transpose_w", g.b_k_major);
      return one_op_graph(OpKind::GroupedMatmul,
                          {{"xs", TensorType{t, {g.m, g.k}}},
                           {"w", TensorType{t, g.b_k_major ? Shape{g.batch, g.n, g.k} : Shape{g.batch, g.k, g.n}}},
                           {"offsets", TensorType{DType::i32, {g.batch + 1}}}},
                          std::move(attrs));
    case GemmProblem::Kind::wgrad:
      return one_op_graph(OpKind::GroupedMatmulWgrad,
                          {{"xs", TensorType{t, {g.k, g.m}}}, {"dys", TensorType{t, {g.k, g.n}}}, {"offsets", TensorType{DType::i32, {g.batch + 1}}}},
                          std::move(attrs));
  }
  throw Error("moejit tune: unknown GEMM problem kind");
}

// ---- attention ----
// The forward op of each flash attention (the backward shares its choice).
std::optional<TuningProblem> attention_problem(const Graph& graph, const Op& op, const Target& target) {
  if (op.kind != OpKind::Attention && op.kind != OpKind::AttentionQkv) return std::nullopt;
  std::optional<AttentionProblem> a = attention_problem_of(graph, op);
  if (!a || !flash_attention_serves(*a, target)) return std::nullopt;
  TuningProblem p;
  p.family = "attention";
  p.key = attention_tuning_key(*a);
  p.attention = *a;
  p.heuristic = flash_fields(flash_heuristic(*a));
  // Causal forward + backward: 3.5 x 2 * 2 * B * H * T^2 * Dh / 2 (docs/perf.md's convention).
  p.flops = 3.5 * 2.0 * static_cast<double>(a->batch * a->heads) * static_cast<double>(a->tokens) * static_cast<double>(a->tokens) *
            static_cast<double>(a->head_dim);
  p.uses = 1;
  return p;
}

// ---- the route family (codegen/route_config.h) ----
std::optional<TuningProblem> route_family_problem(const Graph& graph, const Op& op, const Target&) {
  std::optional<RouteProblem> route = route_problem_of(graph, op);
  if (!route) return std::nullopt;
  TuningProblem p;
  p.family = "route";
  p.key = route_tuning_key(*route);
  p.route = *route;
  p.heuristic = route_fields(route_heuristic(*route));
  p.flops = 2.0 * static_cast<double>(route->tokens) * static_cast<double>(route->d) * static_cast<double>(route->experts);
  p.uses = 1;
  return p;
}

std::vector<TunedFields> attention_candidates(const TuningProblem& p, const Target& target) {
  std::vector<TunedFields> space;
  for (int tile_m : {64, 128})
    for (int tile_n : {32, 64})
      for (int tile_k : {64, 128}) {
        const TunedFields f{.tile_m = tile_m, .tile_n = tile_n, .tile_k = tile_k};
        if (flash_fields_valid(f, p.attention, target)) space.push_back(f);
      }
  return heuristic_first(p, space);
}

// mj.attention (layout bhtd / bthd) or mj.attention_qkv of the problem's
// shape and its gradient with dout; output "out": dqkv, or dq, dk, dv
// concatenated (every kernel's result reaches it: dq and dk/dv through lse,
// out and delta).
Graph attention_problem_graph(const TuningProblem& p) {
  const AttentionProblem& a = p.attention;
  Graph g("moejit_tune");
  Builder b(g);
  const std::int64_t B = a.batch, H = a.heads, T = a.tokens, D = a.head_dim;
  const Shape bthd{B, T, H, D};
  Tensor dout = b.input("dout", a.layout == "bhtd" ? Shape{B, H, T, D} : bthd, a.dtype);
  if (a.layout == "qkv") {
    Tensor qkv = b.input("qkv", {B, T, 3, H, D}, a.dtype);
    std::vector<Tensor> fwd = b.op(OpKind::AttentionQkv, {qkv}, {{"scale", 0.0}});
    b.output(b.op1(OpKind::AttentionQkvGrad, {qkv, fwd[0], fwd[1], dout}, {{"scale", 0.0}}), "out");
    return g;
  }
  const HeadLayout layout = a.layout == "bthd" ? HeadLayout::bthd : HeadLayout::bhtd;
  const Shape shape = layout == HeadLayout::bhtd ? Shape{B, H, T, D} : bthd;
  Tensor q = b.input("q", shape, a.dtype), k = b.input("k", shape, a.dtype), v = b.input("v", shape, a.dtype);
  AttrList attrs{{"scale", 0.0}};
  set_head_layout(attrs, layout);
  std::vector<Tensor> fwd = b.op(OpKind::Attention, {q, k, v}, attrs);
  std::vector<Tensor> grads = b.op(OpKind::AttentionGrad, {q, k, v, fwd[0], fwd[1], dout}, attrs);
  b.output(b.concat({grads[0], grads[1], grads[2]}, 0), "out");
  return g;
}

std::string attention_limits() {
  std::string text;
  for (int dp : {32, 64, 96, 128}) {
    text += fmt::format(" dp {} fwd_smem {} {} dq_smem {} {} dkdv_smem {} {}", dp, mj::FlashTile::fwd_smem(dp, 1), mj::FlashTile::fwd_smem(dp, 2),
                        mj::FlashTile::bwd_dq_smem(dp, 1), mj::FlashTile::bwd_dq_smem(dp, 2), mj::FlashTile::bwd_dkdv_smem(dp, 32),
                        mj::FlashTile::bwd_dkdv_smem(dp, 64));
  }
  return text;
}

std::vector<TunedFields> route_family_candidates(const TuningProblem& p, const Target& target) { return route_candidates(p.route, target); }

// moe.route alone (softmax then top-k, normalized, dropless), its positions
// the output "out": they depend on every logit, pick and rank, and an i32
// output is compared exactly. The logits and weights are outputs too.
Graph route_problem_graph(const TuningProblem& p) {
  const RouteProblem& r = p.route;
  Graph g("moejit_tune");
  const ValueId x = g.add_arg("x", TensorType{r.dtype, {r.tokens, r.d}}, ArgRole::input);
  const ValueId w = g.add_arg("w", TensorType{r.dtype, {r.d, r.experts}}, ArgRole::param);
  AttrList attrs;
  attrs.set("top_k", r.top_k);
  attrs.set("num_experts", r.experts);
  attrs.set("score", std::string("softmax"));
  attrs.set("order", std::string("softmax_then_topk"));
  attrs.set("normalize", true);
  attrs.set("capacity_factor", 0.0);
  attrs.set("block", std::int64_t{1});
  std::string error;
  const std::vector<TensorType> types = {g.type(x), g.type(w)};
  auto results = infer_op(OpKind::Route, types, attrs, &error);
  if (!results) throw Error(fmt::format("moejit tune: the one-op graph of \"moe.route\" is invalid: {}", error));
  auto out = g.add_op(OpKind::Route, {x, w}, std::move(attrs), std::move(*results));
  g.add_output(out.at(5), "out");
  g.add_output(out.at(0), "logits");
  g.add_output(out.at(1), "weights");
  return g;
}

// What decides a family's configurations, as text (hashed into its version key).
std::string sm90_limits() {
  std::string text;
  for (int n : {32, 64, 96, 128, 192, 256})
    text += fmt::format(" tile 128x{}x64 {}", n, n == 64 || n == 128 || n == 256 ? "yes" : "no");
  for (int n : {64, 128, 256})
    for (int stages = 2; stages <= 6; ++stages)
      for (long long groups : {1, 8, 128}) text += fmt::format(" smem {} {} {} {}", n, stages, groups, sm90::smem_bytes(128, n, 64, stages, groups));
  return text;
}
std::string sm80_limits() {
  std::string text = fmt::format(" threads {}", sm80::threads_for(128, 128));
  for (int n : {64, 128, 256}) text += fmt::format(" tile 128x{}x32 {}", n, sm80::tile_supported(128, n, 32) ? "yes" : "no");
  for (int stages = 2; stages <= 6; ++stages)
    for (long long groups : {1, 8, 128})
      for (bool grouped : {false, true}) text += fmt::format(" smem {} {} {} {}", stages, groups, grouped, sm80::smem_bytes(128, 128, 32, stages, groups, grouped));
  return text;
}
std::string simt_limits() {
  // The SIMT tile's rules live in gemm_select.cpp (threads from the tile, the 48 KiB of static shared memory).
  return " tile_m,tile_n pow2 8..128, tile_k pow2 4..64, <= 64x64 outputs, threads clamp(m*n/16, 32, 256), 48 KiB static";
}

}  // namespace

std::string TuningProblem::label() const {
  if (family == "attention") {
    const AttentionProblem& a = attention;
    return fmt::format("{} {} B {} H {} T {} Dh {}", dtype_name(a.dtype), a.layout, a.batch, a.heads, a.tokens, a.head_dim);
  }
  if (family == "route") return route.label();
  const GemmProblem& g = gemm;
  std::string text = fmt::format("{} {} m {} n {} k {}", dtype_name(g.dtype), gemm_kind_name(g.kind), g.m, g.n, g.k);
  if (g.kind == GemmProblem::Kind::matmul) {
    if (g.batch > 1) text += fmt::format(" batch {}", g.batch);
    if (!g.a_k_major || g.b_k_major) text += fmt::format(" ({}{})", g.a_k_major ? "A" : "A^T", g.b_k_major ? " B^T" : " B");
  } else {
    text += fmt::format(" x{}", g.batch);
    if (g.b_k_major) text += " (W^T)";
  }
  return text;
}

std::string fields_str(const TunedFields& f) {
  std::vector<std::string> parts;
  if (f.tile_k) parts.push_back(fmt::format("tile {}x{}x{}", f.tile_m, f.tile_n, f.tile_k));
  else {
    if (f.tile_m) parts.push_back(fmt::format("tile_m {}", f.tile_m));  // attention: the forward's query tile
    if (f.tile_n) parts.push_back(fmt::format("tile_n {}", f.tile_n));
  }
  if (f.stages) parts.push_back(fmt::format("stages {}", f.stages));
  if (f.threads) parts.push_back(fmt::format("threads {}", f.threads));
  if (f.split_k) parts.push_back(fmt::format("split_k {}", f.split_k));
  return parts.empty() ? "(family default)" : fmt::format("{}", fmt::join(parts, " "));
}

const std::vector<TunableFamily>& tunable_families() {
  // Revisions: gemm_sm90 and gemm_sm80 2 since split K of weight-gradient products (main 3cbd209): a tuned
  // tile now also decides the split, so winners measured without it are stale. matmul_simt 2 since the
  // narrow split-K kernel of the router's weight gradient (memkern), which takes no tile from an entry.
  static const std::vector<TunableFamily> families = {
      {"gemm_sm90", "tile 128 x {64, 128, 256} x 64, stages 4-6 within the shared memory opt-in", 2, sm90_limits, sm90_problem,
       sm90_candidates, gemm_problem_graph},
      {"gemm_sm80", "tile 128 x 128 x 32, stages 2-6 within the shared memory opt-in", 2, sm80_limits, sm80_problem, sm80_candidates,
       gemm_problem_graph},
      {"matmul_simt", "tile_m, tile_n in {16..128} (8 for a dim <= 8; 256 to 4096 outputs), tile_k {16, 32}, within 48 KiB", 2,
       simt_limits, simt_problem, simt_candidates, gemm_problem_graph},
      {"attention",
       "forward query tile (tile_m) {64, 128 for Dh <= 64} x dk/dv query step (tile_n) {32, 64} x dq query tile (tile_k) {64, 128 for "
       "Dh <= 64}, within the shared memory opt-in",
       1, attention_limits, attention_problem, attention_candidates, attention_problem_graph},
      {"route", "threads 32-256, experts per thread, tokens per thread 1-4, slices of 64-256 bytes, stages 2 or 4, within 48 KiB", 1,
       route_limits, route_family_problem, route_family_candidates, route_problem_graph},
  };
  return families;
}

const TunableFamily* find_tunable_family(std::string_view name) {
  for (const auto& f : tunable_families())
    if (f.name == name) return &f;
  return nullptr;
}

std::string tuning_family_version(std::string_view family) {
  const TunableFamily* f = find_tunable_family(family);
  if (!f) return "";
  return fmt::format("{:016x}", fnv1a64(fmt::format("{}\nrevision {}\n{}\n{}", f->name, f->revision, f->space, f->limits())));
}

std::vector<TuningProblem> collect_tuning_problems(const Graph& graph, const Target& target) {
  std::vector<TuningProblem> problems;
  std::map<std::string, std::size_t> index;  // family + label -> problems[i]
  for (const Op& op : graph.ops())
    for (const auto& family : tunable_families()) {
      std::optional<TuningProblem> p = family.problem_of(graph, op, target);
      if (!p) continue;
      const std::string id = p->family + " " + p->label();
      if (auto it = index.find(id); it != index.end()) {
        ++problems[it->second].uses;
      } else {
        index.emplace(id, problems.size());
        problems.push_back(std::move(*p));
      }
    }
  std::stable_sort(problems.begin(), problems.end(), [](const TuningProblem& a, const TuningProblem& b) { return a.flops > b.flops; });
  return problems;
}

}  // namespace moejit::codegen
