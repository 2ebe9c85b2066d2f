// What `moejit tune` (tools/tune.cpp) tunes: the tunable kernel families,
// each with its configuration space on a target, the distinct problems of a
// graph, and the one-op graph that runs a problem.
//
//   Graph g = ...;  run_pipeline(g, "cuda-pipeline");          // what codegen sees
//   for (TuningProblem& p : collect_tuning_problems(g, target)) {
//     const TunableFamily& family = *find_tunable_family(p.family);
//     for (TunedFields f : family.candidates(p, target)) ...    // compile, check, time
//     Graph one = family.problem_graph(p);                      // the op alone
//   }
//
// A family is one row of tunable_families() (tuning_space.cpp): its name in
// the database, which ops it serves and their problem, its candidates, and
// the one-op graph of a problem. To add one (an sm80 GEMM, attention, the
// router kernel, split-K), write those three functions and add the row; the
// family's config choice reads its entry with lookup_tuned (tuning_db.h)
// and checks it as it checks attributes.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "codegen/attention_select.h"
#include "codegen/gemm_select.h"
#include "codegen/route_config.h"
#include "codegen/target.h"
#include "codegen/tuning_db.h"
#include "ir/graph.h"

namespace moejit::codegen {

struct TuningProblem {
  std::string family;  // the family that serves it (TunableFamily::name, the database's "family")
  TuningKey key;       // where its winner is stored
  GemmProblem gemm;    // the GEMM families: the problem as the emitter describes it (gemm_problem_of)
  AttentionProblem attention;  // family "attention": the problem as the emitter describes it (attention_problem_of)
  RouteProblem route;  // the route family (route_problem_of)
  TunedFields heuristic;  // the fields of the config the family chooses without a database
  double flops = 0.0;     // 2 * multiply-adds
  int uses = 0;           // ops of the graph with this problem
  // "bf16 grouped m 32768 n 1536 k 384 x8": distinct per distinct problem of a family.
  std::string label() const;
};

struct TunableFamily {
  std::string_view name;  // "gemm_sm90"
  std::string_view space;  // the space in words, for `moejit tune --list`
  // Part of the version key (tuning_family_version): bump it when a change
  // makes old winners wrong in a way `limits` does not show.
  int revision;
  // The kernel's limits that decide which configurations exist (the tile
  // shapes it instantiates, the shared memory per configuration), as text.
  std::string (*limits)();
  // The problem `op` gives this family on the target, if this family serves it.
  std::optional<TuningProblem> (*problem_of)(const Graph& graph, const Op& op, const Target& target);
  // Every configuration valid for the problem on the target (shared memory,
  // threads), the heuristic's first; each passes the family's own checks.
  std::vector<TunedFields> (*candidates)(const TuningProblem& problem, const Target& target);
  // A graph of one op with the problem's shapes (arguments "a"/"b" or
  // "xs"/"w"/"dys" and "offsets" for the grouped kinds), output "out".
  Graph (*problem_graph)(const TuningProblem& problem);
};

const std::vector<TunableFamily>& tunable_families();
const TunableFamily* find_tunable_family(std::string_view name);

// The distinct problems of every tunable op of `graph` (the graph as codegen
// sees it: after the backend's pipeline), largest (FLOPs) first. The
// database is not read: `heuristic` is what the family picks without one.
std::vector<TuningProblem> collect_tuning_problems(const Graph& graph, const Target& target);

// "tile_n 128 stages 5", "tile 64x32x16": the fields an entry sets.
std::string fields_str(const TunedFields& fields);

}  // namespace moejit::codegen
