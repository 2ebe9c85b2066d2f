// Expert and data parallelism checked on the CPU, no GPU needed: N ranks run
// as N threads of one process, each its own CPU executable of the sharded
// training graph, with the comm ops exchanging host tensors through an
// in-process communicator (runtime/communicator.h). The proof: with rank r
// fed batch r, the sharded model's loss is the mean of the unsharded model's
// losses on the N batches, and every gradient is the mean of the unsharded
// gradients (rank r's expert gradients: experts r*E/N .. (r+1)*E/N - 1 of it).
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <mutex>
#include <random>
#include <thread>

#include "ir/builder.h"
#include "ir/error.h"
#include "ir/printer.h"
#include "passes/pass_manager.h"
#include "runtime/backend.h"
#include "runtime/communicator.h"
#include "scale/in_process_world.h"
#include "examples/shard_check/shard_model.h"

using namespace moejit;
using namespace moejit::scale_test;

namespace {

// ---- the model (examples/shard_check/shard_model.h) ----

namespace sm = shard_model;

void check_close(const HostTensor& got, const HostTensor& want, const std::string& what) {
  INFO(what << ": got " << got.type().str() << ", want " << want.type().str());
  REQUIRE(got.shape() == want.shape());
  const double worst = sm::worst_relative_difference(got, want);
  INFO("worst relative difference " << worst);
  CHECK(worst < 1e-4);
}

// The sharded model on `world_size` ranks against the unsharded one, one
// batch per rank.
void check_sharded_equals_unsharded(std::int64_t experts, int world_size) {
  sm::Sizes sizes;
  sizes.experts = experts;
  const sm::Problem problem = sm::make_problem(sizes, world_size, 1234 + static_cast<unsigned>(experts * 10 + world_size));
  auto cpu = make_cpu_backend();
  const sm::Reference reference = sm::compute_reference(problem, *cpu);
  INFO("rows routed to another rank's experts: " << reference.rows_to_other_ranks);
  REQUIRE(reference.rows_to_other_ranks > 0);  // else the exchange would prove nothing

  std::vector<double> losses(static_cast<std::size_t>(world_size));
  std::vector<std::map<std::string, HostTensor>> grads(static_cast<std::size_t>(world_size));
  run_ranks(world_size, [&](int r) {
    Graph sharded = problem.model;
    run_pipeline(sharded, sm::sharded_pipeline(r, world_size));
    auto exe = make_cpu_backend()->compile(sharded);
    sm::bind_rank(*exe, problem, r);
    exe->run();
    losses[static_cast<std::size_t>(r)] = exe->get("loss").get(0);
    for (const std::string& name : sm::param_names()) grads[static_cast<std::size_t>(r)].emplace(name, exe->get("grad." + name));
  });

  const std::int64_t local = experts / world_size;
  for (int r = 0; r < world_size; ++r) {
    INFO("rank " << r << " of " << world_size << ", " << experts << " experts");
    CHECK(losses[static_cast<std::size_t>(r)] == Approx(reference.loss).epsilon(1e-5));
    for (const std::string& name : sm::param_names()) {
      const HostTensor& full = reference.grads.at(name);
      check_close(grads[static_cast<std::size_t>(r)].at(name), sm::is_expert(name) ? sm::rows(full, r * local, local) : full,
                  "grad." + name);
    }
  }
}

std::size_t count_ops(const Graph& graph, OpKind kind) {
  std::size_t n = 0;
  for (const Op& op : graph.ops()) n += op.kind == kind;
  return n;
}

}  // namespace

TEST_CASE("shard-experts: N ranks of the sharded model compute the unsharded model's loss and gradients", "[scale]") {
  SECTION("2 ranks, 4 experts") { check_sharded_equals_unsharded(4, 2); }
  SECTION("4 ranks, 8 experts") { check_sharded_equals_unsharded(8, 4); }
  SECTION("4 ranks, 4 experts (one expert per rank)") { check_sharded_equals_unsharded(4, 4); }
}

TEST_CASE("shard-experts and all-reduce-grads: at world_size 1 the graph is unchanged", "[scale]") {
  Graph model = sm::build(sm::Sizes{});
  Graph sharded = model;
  run_pipeline(sharded, "shard-experts{rank=0 world_size=1}");
  CHECK(print_graph(sharded) == print_graph(model));
  Graph trained = model;
  run_pipeline(trained, "autodiff{loss=loss}");
  Graph reduced = trained;
  run_pipeline(reduced, "all-reduce-grads{world_size=1}");
  CHECK(print_graph(reduced) == print_graph(trained));
}

TEST_CASE("shard-experts: the training graph holds the exchanges and the dense all-reduces", "[scale]") {
  Graph graph = sm::build(sm::Sizes{});
  run_pipeline(graph, "shard-experts{rank=1 world_size=2},autodiff{loss=loss},all-reduce-grads{world_size=2}");
  // forward: counts, rows out, rows back; backward: the reverse of the two row exchanges
  CHECK(count_ops(graph, OpKind::AllToAll) == 5);
  // w_in, w_router and w_out in one bucket, and the loss
  CHECK(count_ops(graph, OpKind::AllReduce) == 2);
  Graph unbucketed = sm::build(sm::Sizes{});
  run_pipeline(unbucketed, "shard-experts{rank=1 world_size=2},autodiff{loss=loss},all-reduce-grads{world_size=2 bucket_mib=0}");
  CHECK(count_ops(unbucketed, OpKind::AllReduce) == 4);  // one per dense gradient, and the loss
  const sm::Sizes sizes;
  CHECK(graph.type(graph.find_arg("w_up")).shape == Shape{2, sizes.d_model, sizes.hidden});
  CHECK(graph.type(graph.find_arg("w_in")).shape == Shape{sizes.d_model, sizes.d_model});
}

TEST_CASE("shard-experts: bad input is refused with a message", "[scale]") {
  Graph model = sm::build(sm::Sizes{});
  Graph g1 = model;
  CHECK_THROWS_WITH(run_pipeline(g1, "shard-experts{rank=0 world_size=3}"),
                    Catch::Contains("expected num_experts a multiple of world_size 3, found 4 experts"));
  Graph g2 = model;
  CHECK_THROWS_WITH(run_pipeline(g2, "shard-experts{rank=2 world_size=2}"),
                    Catch::Contains("expected 0 <= rank < world_size"));
  Graph g3 = model;
  run_pipeline(g3, "autodiff{loss=loss}");
  CHECK_THROWS_WITH(run_pipeline(g3, "shard-experts{rank=0 world_size=2}"),
                    Catch::Contains("expected a forward graph (run it before autodiff)"));
  Graph g4 = model;
  CHECK_THROWS_WITH(run_pipeline(g4, "all-reduce-grads{world_size=2}"),
                    Catch::Contains("expected a differentiated graph"));
}

TEST_CASE("cpu comm kernels: without a communicator world_size > 1 is refused; with one they are its collectives",
          "[scale]") {
  Graph graph("collectives");
  Builder b(graph);
  Tensor x = b.input("x", {2, 3});
  Tensor counts = b.input("counts", {2}, DType::i32);
  b.output(b.op1(OpKind::AllReduce, {x}, {{"world_size", std::int64_t{2}}}), "sum");
  b.output(b.op1(OpKind::AllGather, {x}, {{"world_size", std::int64_t{2}}}), "gathered");
  b.output(b.op1(OpKind::ReduceScatter, {x}, {{"world_size", std::int64_t{2}}}), "scattered");
  auto a2a = b.op(OpKind::AllToAll, {x, counts}, {{"world_size", std::int64_t{2}}});
  b.output(a2a[0], "exchanged");
  b.output(a2a[1], "received");
  auto inputs_of = [](int r) {
    std::vector<double> v;
    for (int i = 0; i < 6; ++i) v.push_back(10.0 * r + i);
    return HostTensor::from_doubles(TensorType{DType::f32, {2, 3}}, v);
  };
  {
    auto exe = make_cpu_backend()->compile(graph);
    exe->set("x", inputs_of(0));
    exe->set("counts", HostTensor::from_ints({2}, std::vector<std::int32_t>{1, 1}));
    CHECK_THROWS_WITH(exe->run(), Catch::Contains("the CPU backend runs a single rank only"));
  }
  std::vector<std::map<std::string, HostTensor>> got(2);
  run_ranks(2, [&](int r) {
    auto exe = make_cpu_backend()->compile(graph);
    exe->set("x", inputs_of(r));
    // rank 0 keeps row 0 and sends row 1 to rank 1; rank 1 sends its row 0 to rank 0
    exe->set("counts", HostTensor::from_ints({2}, r == 0 ? std::vector<std::int32_t>{1, 1} : std::vector<std::int32_t>{1, 0}));
    exe->run();
    for (const char* name : {"sum", "gathered", "scattered", "exchanged", "received"}) got[static_cast<std::size_t>(r)].emplace(name, exe->get(name));
  });
  auto values = [](const HostTensor& t) {
    std::vector<double> v;
    for (std::int64_t i = 0; i < t.numel(); ++i) v.push_back(t.get(i));
    return v;
  };
  CHECK(values(got[0].at("sum")) == std::vector<double>{10, 12, 14, 16, 18, 20});
  CHECK(values(got[1].at("sum")) == values(got[0].at("sum")));
  CHECK(values(got[1].at("gathered")) == std::vector<double>{0, 1, 2, 3, 4, 5, 10, 11, 12, 13, 14, 15});
  CHECK(values(got[0].at("scattered")) == std::vector<double>{10, 12, 14});  // rows 0 of both, summed
  CHECK(values(got[1].at("scattered")) == std::vector<double>{16, 18, 20});
  CHECK(values(got[0].at("exchanged")) == std::vector<double>{0, 1, 2, 10, 11, 12});
  CHECK(values(got[0].at("received")) == std::vector<double>{1, 1});
  CHECK(values(got[1].at("exchanged")) == std::vector<double>{3, 4, 5, 0, 0, 0});  // rows past those received are zero
  CHECK(values(got[1].at("received")) == std::vector<double>{1, 0});
}

TEST_CASE("cpu all_to_all with recv_rows: on one rank the rows sent come back, zeros after; too many are refused",
          "[scale]") {
  Graph graph("recv_rows");
  Builder b(graph);
  Tensor x = b.input("x", {3, 2});
  Tensor counts = b.input("counts", {1}, DType::i32);
  auto wide = b.op(OpKind::AllToAll, {x, counts}, {{"recv_rows", std::int64_t{5}}, {"world_size", std::int64_t{1}}});
  auto narrow = b.op(OpKind::AllToAll, {x, counts}, {{"recv_rows", std::int64_t{2}}, {"world_size", std::int64_t{1}}});
  b.output(wide[0], "wide");
  b.output(narrow[0], "narrow");
  auto exe = make_cpu_backend()->compile(graph);
  exe->set("x", HostTensor::from_doubles(TensorType{DType::f32, {3, 2}}, std::vector<double>{1, 2, 3, 4, 5, 6}));
  exe->set("counts", HostTensor::from_ints({1}, std::vector<std::int32_t>{2}));
  exe->run();
  HostTensor got = exe->get("wide");
  std::vector<double> values;
  for (std::int64_t i = 0; i < got.numel(); ++i) values.push_back(got.get(i));
  CHECK(values == std::vector<double>{1, 2, 3, 4, 0, 0, 0, 0, 0, 0});
  HostTensor narrow_got = exe->get("narrow");
  CHECK(narrow_got.get(3) == 4.0);
  exe->set("counts", HostTensor::from_ints({1}, std::vector<std::int32_t>{3}));
  CHECK_THROWS_WITH(exe->run(), Catch::Contains("expected a sum of at most 2 (recv_rows, the rows of y), found 3"));
}
