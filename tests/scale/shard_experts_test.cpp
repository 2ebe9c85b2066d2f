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

using namespace moejit;

namespace {

// ---- an in-process world of N ranks ----

// What every rank shares: a reusable barrier that any rank can break (a rank
// that fails wakes the others with an error instead of leaving them waiting),
// and one slot per rank for what it publishes to the collective.
class World {
 public:
  explicit World(int size) : size_(size), published_(static_cast<std::size_t>(size)), counts_(static_cast<std::size_t>(size)) {}
  int size() const { return size_; }

  void wait() {
    std::unique_lock lock(mutex_);
    const long generation = generation_;
    if (++arrived_ == size_) {
      arrived_ = 0;
      ++generation_;
      changed_.notify_all();
    } else if (!changed_.wait_for(lock, std::chrono::seconds(30),
                                  [&] { return generation_ != generation || broken_; })) {
      throw Error("in-process world: a rank waited 30 s for the others (a collective that not every rank made)");
    }
    if (broken_) throw Error("in-process world: another rank failed");
  }
  void abort() {
    std::lock_guard lock(mutex_);
    broken_ = true;
    changed_.notify_all();
  }

  std::vector<const HostTensor*>& published() { return published_; }
  std::vector<std::vector<std::int32_t>>& counts() { return counts_; }

 private:
  int size_;
  std::mutex mutex_;
  std::condition_variable changed_;
  int arrived_ = 0;
  long generation_ = 0;
  bool broken_ = false;
  std::vector<const HostTensor*> published_;
  std::vector<std::vector<std::int32_t>> counts_;
};

std::int64_t rows_of(const HostTensor& t) { return t.shape().empty() ? 1 : t.shape()[0]; }

class ThreadCommunicator final : public Communicator {
 public:
  ThreadCommunicator(World& world, int rank) : world_(world), rank_(rank) {}
  int rank() const override { return rank_; }
  int world_size() const override { return world_.size(); }

  void all_reduce_sum(const HostTensor& x, HostTensor& y) override {
    publish(x);
    HostTensor sum = x;  // summed in rank order, so every rank gets the same bits
    for (std::int64_t i = 0; i < x.numel(); ++i) {
      double total = 0.0;
      for (int s = 0; s < world_.size(); ++s) total += world_.published()[static_cast<std::size_t>(s)]->get(i);
      sum.set(i, total);
    }
    world_.wait();
    std::memcpy(y.raw(), sum.raw(), sum.bytes());
  }

  void all_gather(const HostTensor& x, HostTensor& y) override {
    publish(x);
    for (int s = 0; s < world_.size(); ++s)
      std::memcpy(y.raw() + static_cast<std::size_t>(s) * x.bytes(), world_.published()[static_cast<std::size_t>(s)]->raw(),
                  x.bytes());
    world_.wait();
  }

  void reduce_scatter_sum(const HostTensor& x, HostTensor& y) override {
    publish(x);
    const std::int64_t n = y.numel(), first = rank_ * n;
    for (std::int64_t i = 0; i < n; ++i) {
      double total = 0.0;
      for (int s = 0; s < world_.size(); ++s) total += world_.published()[static_cast<std::size_t>(s)]->get(first + i);
      y.set(i, total);
    }
    world_.wait();
  }

  void all_to_all(const HostTensor& x, std::span<const std::int32_t> send_counts, HostTensor& y,
                  std::span<std::int32_t> recv_counts) override {
    world_.counts()[static_cast<std::size_t>(rank_)].assign(send_counts.begin(), send_counts.end());
    publish(x);
    const std::size_t row_bytes = x.bytes() / static_cast<std::size_t>(std::max<std::int64_t>(1, rows_of(x)));
    std::vector<std::byte> received(y.bytes(), std::byte{0});
    std::int64_t cursor = 0;
    std::string overflow;
    for (int s = 0; s < world_.size(); ++s) {
      const auto& counts = world_.counts()[static_cast<std::size_t>(s)];
      std::int64_t first = 0;
      for (int d = 0; d < rank_; ++d) first += counts[static_cast<std::size_t>(d)];
      const std::int64_t n = counts[static_cast<std::size_t>(rank_)];
      recv_counts[static_cast<std::size_t>(s)] = static_cast<std::int32_t>(n);
      if (cursor + n > rows_of(y)) {
        overflow = fmt::format("received {} rows, more than the {} rows of the result", cursor + n, rows_of(y));
        break;
      }
      std::memcpy(received.data() + static_cast<std::size_t>(cursor) * row_bytes,
                  world_.published()[static_cast<std::size_t>(s)]->raw() + static_cast<std::size_t>(first) * row_bytes,
                  static_cast<std::size_t>(n) * row_bytes);
      cursor += n;
    }
    world_.wait();
    if (!overflow.empty()) throw Error(overflow);
    std::memcpy(y.raw(), received.data(), received.size());
  }

 private:
  void publish(const HostTensor& x) {
    world_.published()[static_cast<std::size_t>(rank_)] = &x;
    world_.wait();
  }
  World& world_;
  int rank_;
};

// Runs body(rank) on `size` threads, each with its rank's communicator
// installed; rethrows the first failure after every thread has ended.
template <class Body>
void run_ranks(int size, Body body) {
  World world(size);
  std::vector<std::exception_ptr> failures(static_cast<std::size_t>(size));
  std::vector<std::thread> threads;
  for (int r = 0; r < size; ++r)
    threads.emplace_back([&, r] {
      ThreadCommunicator comm(world, r);
      ScopedCommunicator installed(&comm);
      try {
        body(r);
      } catch (...) {
        failures[static_cast<std::size_t>(r)] = std::current_exception();
        world.abort();
      }
    });
  for (auto& t : threads) t.join();
  for (auto& f : failures)
    if (f) std::rethrow_exception(f);
}

// ---- the model ----

constexpr std::int64_t kTokens = 12, kDModel = 6, kExpertHidden = 5, kVocab = 7, kTopK = 2;

// A one-layer MoE language-model head: x [T, D] -> dense -> MoE (top-2 of E
// experts, dropless, gelu) added back -> logits [T, V] -> cross entropy plus
// the load-balance loss. Dense params: w_in, w_router, w_out; experts: w_up,
// w_down [E, ...]. Outputs: loss, and the experts chosen (to check that
// rows really cross ranks).
Graph build_model(std::int64_t experts) {
  Graph graph("moe_model");
  Builder b(graph);
  Tensor x = b.input("x", {kTokens, kDModel});
  Tensor targets = b.input("targets", {kTokens}, DType::i32);
  Tensor w_in = b.param("w_in", {kDModel, kDModel});
  Tensor w_router = b.param("w_router", {kDModel, experts});
  Tensor w_up = b.param("w_up", {experts, kDModel, kExpertHidden});
  Tensor w_down = b.param("w_down", {experts, kExpertHidden, kDModel});
  Tensor w_out = b.param("w_out", {kDModel, kVocab});
  Tensor h = b.tanh(b.matmul(x, w_in));
  Tensor logits = b.matmul(h, w_router);
  auto [weights, chosen] = b.moe_gate(logits, {.top_k = kTopK, .normalize = true});
  auto [slots, offsets, positions, counts] = b.moe_dispatch(chosen, {.num_experts = experts});
  Tensor xs = b.moe_permute(h, slots, kTopK);
  Tensor hidden = b.gelu(b.moe_grouped_matmul(xs, w_up, offsets));
  Tensor ys = b.moe_grouped_matmul(hidden, w_down, offsets);
  Tensor z = b.add(h, b.moe_combine(ys, weights, positions));
  Tensor loss = b.add(b.cross_entropy(b.matmul(z, w_out), targets),
                      b.moe_load_balance_loss(b.softmax(logits), chosen, 0.01));
  b.output(loss, "loss");
  b.output(chosen, "experts");
  return graph;
}

const std::vector<std::string> kParams = {"w_in", "w_router", "w_up", "w_down", "w_out"};
bool is_expert(const std::string& name) { return name == "w_up" || name == "w_down"; }

struct Batch {
  HostTensor x, targets;
};

HostTensor random_tensor(TensorType type, std::mt19937& rng, double scale) {
  std::normal_distribution<double> dist(0.0, scale);
  std::vector<double> values(static_cast<std::size_t>(type.numel()));
  for (auto& v : values) v = dist(rng);
  return HostTensor::from_doubles(std::move(type), values);
}

// Rows first .. first + n - 1 of a [E, ...] tensor.
HostTensor rows(const HostTensor& t, std::int64_t first, std::int64_t n) {
  Shape shape = t.shape();
  const std::size_t row_bytes = t.bytes() / static_cast<std::size_t>(shape[0]);
  shape[0] = n;
  HostTensor out(TensorType{t.dtype(), shape});
  std::memcpy(out.raw(), t.raw() + static_cast<std::size_t>(first) * row_bytes, static_cast<std::size_t>(n) * row_bytes);
  return out;
}

void check_close(const HostTensor& got, const HostTensor& want, const std::string& what) {
  INFO(what << ": got " << got.type().str() << ", want " << want.type().str());
  REQUIRE(got.shape() == want.shape());
  double worst = 0.0;
  for (std::int64_t i = 0; i < want.numel(); ++i)
    worst = std::max(worst, std::abs(got.get(i) - want.get(i)) / (1e-6 + std::abs(want.get(i))));
  INFO("worst relative difference " << worst);
  CHECK(worst < 1e-4);
}

// The sharded model on `world_size` ranks against the unsharded one, one
// batch per rank.
void check_sharded_equals_unsharded(std::int64_t experts, int world_size) {
  std::mt19937 rng(1234 + static_cast<unsigned>(experts * 10 + world_size));
  Graph model = build_model(experts);
  std::map<std::string, HostTensor> params;
  for (const std::string& name : kParams)
    params.emplace(name, random_tensor(model.type(model.find_arg(name)), rng, name == "w_router" ? 1.0 : 0.5));
  std::vector<Batch> batches;
  std::uniform_int_distribution<int> token(0, static_cast<int>(kVocab) - 1);
  for (int r = 0; r < world_size; ++r) {
    std::vector<std::int32_t> ids(kTokens);
    for (auto& id : ids) id = token(rng);
    batches.push_back({random_tensor(TensorType{DType::f32, {kTokens, kDModel}}, rng, 1.0),
                       HostTensor::from_ints({kTokens}, ids)});
  }

  // The reference: the unsharded training graph on each batch; the global
  // loss and gradients are the means over batches.
  Graph reference = model;
  run_pipeline(reference, "autodiff{loss=loss}");
  auto reference_exe = make_cpu_backend()->compile(reference);
  for (auto& [name, value] : params) reference_exe->set(name, value);
  double mean_loss = 0.0;
  std::map<std::string, std::vector<double>> mean_grad;
  std::int64_t rows_to_other_ranks = 0;
  const std::int64_t local = experts / world_size;
  for (int r = 0; r < world_size; ++r) {
    reference_exe->set("x", batches[static_cast<std::size_t>(r)].x);
    reference_exe->set("targets", batches[static_cast<std::size_t>(r)].targets);
    reference_exe->run();
    mean_loss += reference_exe->get("loss").get(0) / world_size;
    for (const std::string& name : kParams) {
      HostTensor g = reference_exe->get("grad." + name);
      auto& sum = mean_grad[name];
      sum.resize(static_cast<std::size_t>(g.numel()), 0.0);
      for (std::int64_t i = 0; i < g.numel(); ++i) sum[static_cast<std::size_t>(i)] += g.get(i) / world_size;
    }
    HostTensor chosen = reference_exe->get("experts");
    for (std::int64_t i = 0; i < chosen.numel(); ++i)
      rows_to_other_ranks += static_cast<std::int64_t>(chosen.get(i)) / local != r;
  }
  INFO("rows routed to another rank's experts: " << rows_to_other_ranks);
  REQUIRE(rows_to_other_ranks > 0);  // else the exchange would prove nothing

  std::vector<double> losses(static_cast<std::size_t>(world_size));
  std::vector<std::map<std::string, HostTensor>> grads(static_cast<std::size_t>(world_size));
  run_ranks(world_size, [&](int r) {
    Graph sharded = model;
    run_pipeline(sharded, fmt::format("shard-experts{{rank={} world_size={}}},autodiff{{loss=loss}},all-reduce-grads{{world_size={}}}",
                                      r, world_size, world_size));
    auto exe = make_cpu_backend()->compile(sharded);
    for (auto& [name, value] : params) exe->set(name, is_expert(name) ? rows(value, r * local, local) : value);
    exe->set("x", batches[static_cast<std::size_t>(r)].x);
    exe->set("targets", batches[static_cast<std::size_t>(r)].targets);
    exe->run();
    losses[static_cast<std::size_t>(r)] = exe->get("loss").get(0);
    for (const std::string& name : kParams) grads[static_cast<std::size_t>(r)].emplace(name, exe->get("grad." + name));
  });

  for (int r = 0; r < world_size; ++r) {
    INFO("rank " << r << " of " << world_size << ", " << experts << " experts");
    CHECK(losses[static_cast<std::size_t>(r)] == Approx(mean_loss).epsilon(1e-5));
    for (const std::string& name : kParams) {
      HostTensor want = HostTensor::from_doubles(model.type(model.find_arg(name)), mean_grad[name]);
      if (is_expert(name)) want = rows(want, r * local, local);
      check_close(grads[static_cast<std::size_t>(r)].at(name), want, "grad." + name);
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
  Graph model = build_model(4);
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
  Graph graph = build_model(4);
  run_pipeline(graph, "shard-experts{rank=1 world_size=2},autodiff{loss=loss},all-reduce-grads{world_size=2}");
  // forward: counts, rows out, rows back; backward: the reverse of the two row exchanges
  CHECK(count_ops(graph, OpKind::AllToAll) == 5);
  // w_in, w_router, w_out and the loss
  CHECK(count_ops(graph, OpKind::AllReduce) == 4);
  CHECK(graph.type(graph.find_arg("w_up")).shape == Shape{2, kDModel, kExpertHidden});
  CHECK(graph.type(graph.find_arg("w_in")).shape == Shape{kDModel, kDModel});
}

TEST_CASE("shard-experts: bad input is refused with a message", "[scale]") {
  Graph model = build_model(4);
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
