// The CPU backend: compile() verifies the graph and plans value lifetimes;
// run() interprets the ops in order, calling cpu::kernel_<Kind> through a
// table built from ir/ops.def, and frees each intermediate right after its
// last use so that big graphs (a whole training step) fit in memory.
//
// Threads: kernels may split big loops over MOEJIT_CPU_THREADS threads
// (default: the machine's hardware threads).
#include <fmt/format.h>

#include <cstdlib>
#include <iterator>
#include <thread>

#include "ir/error.h"
#include "ir/verifier.h"
#include "runtime/cpu/cpu_kernels.h"
#include "runtime/executable.h"

namespace moejit {
namespace {

using KernelFn = void (*)(const cpu::KernelArgs&);

// One kernel per op, in OpKind order.
constexpr KernelFn kKernels[] = {
#define MOEJIT_OP(kind, ...) &cpu::kernel_##kind,
#include "ir/ops.def"
#undef MOEJIT_OP
};
static_assert(std::size(kKernels) == kNumOps, "every op of ir/ops.def needs a CPU kernel");

int default_threads() {
  if (const char* env = std::getenv("MOEJIT_CPU_THREADS")) {
    int n = std::atoi(env);
    if (n >= 1) return n;
  }
  return std::max(1u, std::thread::hardware_concurrency());
}

class CpuExecutable final : public ExecutableBase {
 public:
  CpuExecutable(Graph graph, int threads) : ExecutableBase(std::move(graph)), threads_(threads) { plan(); }

 private:
  // free_after_[i]: the op results whose last use is op i (or that nothing
  // uses: they die right after op i defines them). Outputs are never freed.
  void plan() {
    const Graph& g = graph();
    const int num_ops = static_cast<int>(g.ops().size());
    std::vector<int> last_use(static_cast<std::size_t>(g.num_values()), -1);
    for (int i = 0; i < num_ops; ++i) {
      const Op& op = g.ops()[static_cast<std::size_t>(i)];
      for (ValueId r : op.results) last_use[static_cast<std::size_t>(r)] = i;
      for (ValueId v : op.operands) last_use[static_cast<std::size_t>(v)] = i;
    }
    for (const Output& out : g.outputs()) last_use[static_cast<std::size_t>(out.value)] = num_ops;  // kept
    free_after_.assign(static_cast<std::size_t>(num_ops), {});
    std::vector<int> producer = g.producers();
    for (ValueId v = 0; v < g.num_values(); ++v) {
      int last = last_use[static_cast<std::size_t>(v)];
      if (producer[static_cast<std::size_t>(v)] >= 0 && last >= 0 && last < num_ops)
        free_after_[static_cast<std::size_t>(last)].push_back(v);
    }
  }

  std::vector<HostTensor> execute(std::span<const HostTensor* const> args) override {
    const Graph& g = graph();
    std::vector<HostTensor> storage(static_cast<std::size_t>(g.num_values()));  // op results
    std::vector<const HostTensor*> value_of(static_cast<std::size_t>(g.num_values()), nullptr);
    for (std::size_t i = 0; i < args.size(); ++i) value_of[static_cast<std::size_t>(g.args()[i].value)] = args[i];

    std::vector<const HostTensor*> inputs;
    std::vector<HostTensor*> outputs;
    for (std::size_t i = 0; i < g.ops().size(); ++i) {
      const Op& op = g.ops()[i];
      inputs.clear();
      outputs.clear();
      for (ValueId v : op.operands) {
        const HostTensor* t = value_of[static_cast<std::size_t>(v)];
        MOEJIT_ASSERT(t != nullptr, fmt::format("operand %{} of op {} is not computed", v, i));
        inputs.push_back(t);
      }
      for (ValueId r : op.results) {
        storage[static_cast<std::size_t>(r)] = HostTensor(g.type(r));
        outputs.push_back(&storage[static_cast<std::size_t>(r)]);
        value_of[static_cast<std::size_t>(r)] = outputs.back();
      }
      cpu::KernelArgs kernel_args{g, op, inputs, outputs, threads_};
      try {
        kKernels[static_cast<std::size_t>(op.kind)](kernel_args);
      } catch (const Error& e) {
        throw Error(fmt::format("{}: {}", describe_op(g, static_cast<int>(i)), e.what()));
      }
      for (ValueId r : op.results)
        MOEJIT_ASSERT(storage[static_cast<std::size_t>(r)].type() == g.type(r),
                      fmt::format("kernel of {} changed a result's type", op_name(op.kind)));
      for (ValueId v : free_after_[i]) {
        storage[static_cast<std::size_t>(v)] = HostTensor();
        value_of[static_cast<std::size_t>(v)] = nullptr;
      }
    }

    // Outputs: an op result is moved out on its last mention, else copied.
    std::vector<HostTensor> results;
    std::vector<int> mentions(static_cast<std::size_t>(g.num_values()), 0);
    for (const Output& out : g.outputs()) ++mentions[static_cast<std::size_t>(out.value)];
    for (const Output& out : g.outputs()) {
      auto v = static_cast<std::size_t>(out.value);
      const HostTensor* t = value_of[v];
      MOEJIT_ASSERT(t != nullptr, fmt::format("output '{}' is not computed", out.name));
      if (--mentions[v] == 0 && t == &storage[v])
        results.push_back(std::move(storage[v]));
      else
        results.push_back(*t);
    }
    return results;
  }

  int threads_;
  std::vector<std::vector<ValueId>> free_after_;
};

class CpuBackend final : public Backend {
 public:
  std::string name() const override { return "cpu"; }
  std::unique_ptr<Executable> compile(const Graph& graph) override {
    verify_or_throw(graph);
    return std::make_unique<CpuExecutable>(graph, default_threads());
  }
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

}  // namespace moejit
