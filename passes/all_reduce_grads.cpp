// all-reduce-grads{world_size=N bucket_mib=25}: data parallelism for the gradients of a
// graph that autodiff has differentiated, on each of N ranks that ran the same
// graph on its own batch. The global loss is the mean of the ranks' losses,
// so every gradient is (1/N) * the sum over ranks of the ranks' gradients:
//
//   - a dense parameter (its copy on every rank): grad.X = all_reduce(grad.X) / N;
//   - an expert weight sharded by shard-experts (it lives on one rank, and the
//     reverse all_to_all already brought it the gradient of every rank's
//     tokens): grad.X = grad.X / N, no collective;
//   - the output "loss" becomes all_reduce(loss) / N, the global mean, so what
//     rank 0 prints is the loss of the whole batch (autodiff has run: the
//     backward does not read it).
//
// Expert weights are recognized as shard-experts leaves them: a parameter
// read by an mj.concat whose result is the weight operand of a
// moe.grouped_matmul. Every op that reads a gradient (the optimizer's AdamW)
// reads the reduced one.
//
// Buckets: the dense gradients, in the order the backward produces them, are
// packed into buckets of at most bucket_mib MiB (one dtype each; a gradient
// larger than that is a bucket of its own; 0: a bucket per gradient). A
// bucket is flattened into one vector (reshape + concat), all-reduced by ONE
// collective right after its last gradient is produced, and sliced back, so
// a step makes a few large collectives instead of one per parameter, each
// as early as its gradients allow. A gradient read by an op before the
// bucket would be complete closes the bucket early (the reader must see the
// reduced value).
//
// At world_size 1 the pass changes nothing.
//
// Statistics: gradients-all-reduced, gradients-local, losses-averaged, buckets.
#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <set>

#include "ir/builder.h"
#include "ir/error.h"
#include "passes/passes.h"

namespace moejit {

namespace {

std::size_t idx(ValueId v) { return static_cast<std::size_t>(v); }

class AllReduceGradsPass final : public Pass {
 public:
  AllReduceGradsPass(std::int64_t world_size, std::int64_t bucket_mib) : world_size_(world_size), bucket_mib_(bucket_mib) {}
  std::string_view name() const override { return "all-reduce-grads"; }
  void run(Graph& graph) override;

 private:
  std::int64_t world_size_, bucket_mib_;
};

// Dense gradients that are all-reduced together.
struct Bucket {
  std::vector<ValueId> members;  // in production order
  DType dtype = DType::f32;
  std::int64_t bytes = 0;
  int last_producer = -1;        // the op after which the bucket is complete (-1: the arguments)
  int first_reader = 0;          // the first op that reads a member
};

void AllReduceGradsPass::run(Graph& graph) {
  if (world_size_ < 1)
    throw Error(fmt::format("all-reduce-grads: expected world_size >= 1, found {}", world_size_));
  if (bucket_mib_ < 0 || bucket_mib_ > (1 << 20))
    throw Error(fmt::format("all-reduce-grads: expected 0 <= bucket_mib <= 2^20, found {}", bucket_mib_));
  if (world_size_ == 1) return;
  const std::int64_t N = world_size_;
  const auto& ops = graph.ops();
  std::vector<int> producer = graph.producers();

  // Expert weights: params feeding a concat that is a grouped matmul's weight.
  std::set<ValueId> expert_weights;
  for (const Op& op : ops) {
    if (op.kind != OpKind::GroupedMatmul) continue;
    int p = producer[idx(op.operands[1])];
    if (p < 0 || ops[static_cast<std::size_t>(p)].kind != OpKind::Concat) continue;
    for (ValueId v : ops[static_cast<std::size_t>(p)].operands)
      if (const Arg* arg = graph.arg_of(v); arg && arg->role == ArgRole::param) expert_weights.insert(v);
  }

  // What to do with each value an output names: all-reduce (dense) or only scale.
  enum class Treatment { reduce, scale };
  std::map<ValueId, Treatment> treat;
  bool any_gradient = false;
  for (const Output& out : graph.outputs()) {
    if (out.name == "loss") {
      treat[out.value] = Treatment::reduce;
      count("losses-averaged");
      continue;
    }
    if (out.name.rfind("grad.", 0) != 0) continue;
    any_gradient = true;
    ValueId param = graph.find_arg(out.name.substr(5));
    if (param == kNoValue)
      throw Error(fmt::format("all-reduce-grads: output '{}' names no argument of the graph", out.name));
    const bool local = expert_weights.count(param) > 0;
    if (treat.count(out.value))
      throw Error(fmt::format("all-reduce-grads: expected one output per gradient value, found '{}' shared", out.name));
    treat[out.value] = local ? Treatment::scale : Treatment::reduce;
    count(local ? "gradients-local" : "gradients-all-reduced");
  }
  if (!any_gradient)
    throw Error("all-reduce-grads: expected a differentiated graph (outputs grad.NAME: run it after autodiff), found none");

  // Buckets of the dense gradients, greedily in production order.
  const int num_ops = static_cast<int>(ops.size());
  std::vector<int> first_reader(static_cast<std::size_t>(graph.num_values()), num_ops);
  for (int i = num_ops - 1; i >= 0; --i)
    for (ValueId v : ops[static_cast<std::size_t>(i)].operands) first_reader[idx(v)] = i;
  const Output* loss = graph.find_output("loss");
  std::vector<ValueId> dense;
  for (const auto& [value, treatment] : treat)
    if (treatment == Treatment::reduce && (!loss || loss->value != value)) dense.push_back(value);
  std::stable_sort(dense.begin(), dense.end(), [&](ValueId a, ValueId b) { return producer[idx(a)] < producer[idx(b)]; });
  const std::int64_t cap = bucket_mib_ * (std::int64_t{1} << 20);
  std::vector<Bucket> buckets;
  for (ValueId g : dense) {
    const TensorType& type = graph.type(g);
    const auto bytes = static_cast<std::int64_t>(type.bytes());
    const int made = producer[idx(g)];
    const bool fits = !buckets.empty() && cap > 0 && buckets.back().dtype == type.dtype &&
                      buckets.back().bytes + bytes <= cap && buckets.back().first_reader > made;
    if (!fits) buckets.push_back({{}, type.dtype, 0, made, num_ops});
    Bucket& bucket = buckets.back();
    bucket.members.push_back(g);
    bucket.bytes += bytes;
    bucket.last_producer = made;
    bucket.first_reader = std::min(bucket.first_reader, first_reader[idx(g)]);
  }
  std::multimap<int, std::size_t> bucket_after;  // op index -> buckets complete after it
  for (std::size_t k = 0; k < buckets.size(); ++k) bucket_after.emplace(buckets[k].last_producer, k);
  count("buckets", static_cast<std::int64_t>(buckets.size()));

  Graph reduced(graph.name());
  Builder b(reduced);
  std::vector<Tensor> map(static_cast<std::size_t>(graph.num_values()));
  const double inverse = 1.0 / static_cast<double>(N);
  std::set<ValueId> bucketed(dense.begin(), dense.end());
  auto finish = [&](ValueId old_value, Tensor value) {
    auto it = treat.find(old_value);
    if (it == treat.end() || bucketed.count(old_value)) return value;
    if (it->second == Treatment::reduce) value = b.op1(OpKind::AllReduce, {value}, {{"world_size", N}});
    return b.scale(value, inverse);
  };
  // One collective for a bucket: flatten, concat, all_reduce / N, slice back.
  auto reduce_bucket = [&](const Bucket& bucket) {
    std::vector<Tensor> flat;
    for (ValueId m : bucket.members) flat.push_back(b.reshape(map[idx(m)], {graph.type(m).numel()}));
    Tensor joined = flat.size() == 1 ? flat[0] : b.concat(flat, 0);
    Tensor sum = b.scale(b.op1(OpKind::AllReduce, {joined}, {{"world_size", N}}), inverse);
    std::int64_t offset = 0;
    for (ValueId m : bucket.members) {
      const TensorType& type = graph.type(m);
      Tensor piece = flat.size() == 1 ? sum : b.slice(sum, {offset}, {offset + type.numel()});
      map[idx(m)] = b.reshape(piece, type.shape);
      offset += type.numel();
    }
  };
  auto reduce_buckets_after = [&](int op_index) {
    auto [first, last] = bucket_after.equal_range(op_index);
    for (auto it = first; it != last; ++it) reduce_bucket(buckets[it->second]);
  };
  for (const Arg& arg : graph.args())
    map[idx(arg.value)] =
        finish(arg.value, Tensor{&reduced, reduced.add_arg(graph.value(arg.value).name, graph.type(arg.value), arg.role)});
  reduce_buckets_after(-1);
  for (int i = 0; i < num_ops; ++i) {
    const Op& op = ops[static_cast<std::size_t>(i)];
    std::vector<Tensor> operands;
    for (ValueId v : op.operands) operands.push_back(map[idx(v)]);
    std::vector<Tensor> results = b.op(op.kind, operands, op.attrs);
    for (std::size_t r = 0; r < results.size(); ++r) map[idx(op.results[r])] = finish(op.results[r], results[r]);
    reduce_buckets_after(i);
  }
  for (const Output& out : graph.outputs()) b.output(map[idx(out.value)], out.name, out.updates);
  graph = std::move(reduced);
}

}  // namespace

std::unique_ptr<Pass> create_all_reduce_grads_pass(const PassOptions& options) {
  return std::make_unique<AllReduceGradsPass>(option_int("all-reduce-grads", options, "world_size", 1),
                                              option_int("all-reduce-grads", options, "bucket_mib", 25));
}

}  // namespace moejit
