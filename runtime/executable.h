// ExecutableBase: what every backend's Executable shares, so a backend only
// writes execute(). It owns the graph and the host copies of the bound
// arguments and of the last run's outputs, and does:
//   - binding by name with type checks (moejit::Error naming the argument,
//     the expected type and the type found);
//   - the check that every argument is bound before a run (Error naming the
//     first unbound one, in argument order);
//   - output lookup by name (outputs first, then arguments);
//   - applying `updates` outputs after a run: the output's tensor becomes the
//     argument's new value (moved, not copied). Such an output reads as the
//     argument's current value afterwards.
// A backend that keeps tensors elsewhere (the CUDA backend: on the device)
// overrides the storage hooks instead of execute(): store_arg (set),
// load_arg / load_output (get), run_bound (run, after the checks). The
// checks and their messages stay here, the same for every backend.
#pragma once
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "runtime/backend.h"

namespace moejit {

class ExecutableBase : public Executable {
 public:
  explicit ExecutableBase(Graph graph);

  const Graph& graph() const override { return graph_; }
  void set(std::string_view name, const HostTensor& value) override;
  HostTensor get(std::string_view name) const override;
  void run() override;

 protected:
  // Runs the graph once. `args` has one bound tensor per graph().args()
  // entry, in that order; the result has one tensor per graph().outputs()
  // entry, each of the output's type. (Called by the default run_bound.)
  virtual std::vector<HostTensor> execute(std::span<const HostTensor* const> args);

  // Storage hooks, called after the checks. The defaults keep host tensors.
  //   store_arg: `value` (of the argument's type) becomes argument `index`.
  //   load_arg: argument `index`'s current value (bound; updated by runs).
  //   load_output: output `index`'s value after the last run (not one that
  //     updates an argument: that reads as load_arg of its argument).
  //   run_bound: one run, every argument bound.
  virtual void store_arg(int index, const HostTensor& value);
  virtual HostTensor load_arg(int index) const;
  virtual HostTensor load_output(int index) const;
  virtual void run_bound();

  // Index into graph().args() of the argument called `name`, or -1.
  int arg_index(std::string_view name) const;
  // Bumped each time argument `index` is bound or updated by a run.
  std::uint64_t arg_version(int index) const { return versions_.at(static_cast<std::size_t>(index)); }

 private:
  Graph graph_;
  std::vector<std::optional<HostTensor>> args_;  // one per graph_.args() (default storage)
  std::vector<bool> bound_;
  std::vector<std::uint64_t> versions_;
  std::vector<HostTensor> outputs_;  // one per graph_.outputs(), after a run
  std::vector<int> updated_arg_;     // per output: the argument it updates, or -1
  bool has_run_ = false;
};

}  // namespace moejit
