// all-reduce-grads{world_size=N}: data parallelism for the gradients of a
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
// reads the reduced one. The all-reduces are emitted in the order the
// backward produces the gradients, each right after its gradient, so a
// backend can overlap them with the rest of the backward (one collective per
// gradient: bucketing them is the executor's choice).
//
// At world_size 1 the pass changes nothing.
//
// Statistics: gradients-all-reduced, gradients-local, losses-averaged.
#include <fmt/format.h>

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
  explicit AllReduceGradsPass(std::int64_t world_size) : world_size_(world_size) {}
  std::string_view name() const override { return "all-reduce-grads"; }
  void run(Graph& graph) override;

 private:
  std::int64_t world_size_;
};

void AllReduceGradsPass::run(Graph& graph) {
  if (world_size_ < 1)
    throw Error(fmt::format("all-reduce-grads: expected world_size >= 1, found {}", world_size_));
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

  Graph reduced(graph.name());
  Builder b(reduced);
  std::vector<Tensor> map(static_cast<std::size_t>(graph.num_values()));
  const double inverse = 1.0 / static_cast<double>(N);
  auto finish = [&](ValueId old_value, Tensor value) {
    auto it = treat.find(old_value);
    if (it == treat.end()) return value;
    if (it->second == Treatment::reduce) value = b.op1(OpKind::AllReduce, {value}, {{"world_size", N}});
    return b.scale(value, inverse);
  };
  for (const Arg& arg : graph.args())
    map[idx(arg.value)] =
        finish(arg.value, Tensor{&reduced, reduced.add_arg(graph.value(arg.value).name, graph.type(arg.value), arg.role)});
  for (const Op& op : ops) {
    std::vector<Tensor> operands;
    for (ValueId v : op.operands) operands.push_back(map[idx(v)]);
    std::vector<Tensor> results = b.op(op.kind, operands, op.attrs);
    for (std::size_t r = 0; r < results.size(); ++r) map[idx(op.results[r])] = finish(op.results[r], results[r]);
  }
  for (const Output& out : graph.outputs()) b.output(map[idx(out.value)], out.name, out.updates);
  graph = std::move(reduced);
}

}  // namespace

std::unique_ptr<Pass> create_all_reduce_grads_pass(const PassOptions& options) {
  return std::make_unique<AllReduceGradsPass>(option_int("all-reduce-grads", options, "world_size", 1));
}

}  // namespace moejit
