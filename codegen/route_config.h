// The fused router's configuration: which moe.route ops run route_kernel
// (codegen/kernels/moe.cuh), the kernel's template arguments for a problem
// (the heuristic, or a tuning database's entry when it is valid), and the
// space `moejit tune` searches (the "route" family, codegen/tuning_space.cpp).
//
// An entry's fields (TunedFields) mean, for this family:
//   tile_m   tokens per block (BM)         tile_n  experts per thread (TN)
//   tile_k   slice depth along D (BK)      stages  x slices in the ring
//   threads  threads per block
// and the tokens per thread follow: TM = BM * (EP / TN) / threads, where EP
// is E rounded up to a power of two from 8. No configuration changes a
// result: every logit is one thread's sum over D in order, and the gate
// and dispatch do not depend on the tiling (tests/cuda/route_gpu_test.cpp).
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "codegen/target.h"
#include "codegen/tile_config.h"
#include "codegen/tuning_db.h"
#include "ir/graph.h"

namespace moejit::codegen {

struct RouteProblem {
  DType dtype = DType::f32;  // of x, w_router (and bias)
  std::int64_t tokens = 0, d = 0, experts = 0, top_k = 0;
  // "f32 route T 16384 D 384 E 8 K 2"
  std::string label() const;
};

struct RouteConfig {
  int ep = 8, tn = 8, tm = 1, threads = 32, bk = 64, stages = 4;
  int block_tokens() const { return threads / (ep / tn) * tm; }
  // The launch's TileConfig: tile BM x TN x BK, stages, threads, with the
  // source (heuristic / tuned) and how it was chosen in the note.
  TileConfig tile;
};

// E rounded up to a power of two from 8 (route_kernel's EP).
int route_padded_experts(std::int64_t experts);

// The problem of a moe.route that runs the fused kernel (E <= 256; x,
// w_router and bias of one dtype, not f64); nullopt for any other op.
std::optional<RouteProblem> route_problem_of(const Graph& graph, const Op& op);

// The configuration without a database.
RouteConfig route_heuristic(const RouteProblem& problem);

// Why `fields` is no configuration of route_kernel for the problem ("" when it is one).
std::string route_fields_error(const RouteProblem& problem, const TunedFields& fields);

// The configuration from fields that route_fields_error accepts.
RouteConfig route_config_from(const RouteProblem& problem, const TunedFields& fields);
TunedFields route_fields(const RouteConfig& config);

// The database's entry for the problem (exact bucket, else the nearest)
// when it is valid, else the heuristic (with a note saying why an entry was
// ignored).
RouteConfig choose_route(const RouteProblem& problem, const Target& target);

// family "route", the dtype, kind "route", buckets m = tokens, n = experts, k = D.
TuningKey route_tuning_key(const RouteProblem& problem);

// The configurations `moejit tune` tries (the heuristic's first): threads,
// experts per thread, tokens per thread, slice depth and stages over a
// small grid, each valid (route_fields_error) with at least as many blocks
// as half the target's SMs where the heuristic has that many.
std::vector<TunedFields> route_candidates(const RouteProblem& problem, const Target& target);

// What decides the family's configurations, as text (its version key).
std::string route_limits();

}  // namespace moejit::codegen
