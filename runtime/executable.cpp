// ExecutableBase: argument binding, output lookup and `updates` (see the header).
#include "runtime/executable.h"

#include <fmt/format.h>

#include "ir/error.h"

namespace moejit {

ExecutableBase::ExecutableBase(Graph graph)
    : graph_(std::move(graph)), args_(graph_.args().size()), bound_(graph_.args().size(), false), versions_(graph_.args().size(), 0) {
  for (const Output& out : graph_.outputs()) {
    int target = out.updates.empty() ? -1 : arg_index(out.updates);
    MOEJIT_ASSERT(out.updates.empty() || target >= 0, "the verifier checks `updates` targets");
    updated_arg_.push_back(target);
  }
}

int ExecutableBase::arg_index(std::string_view name) const {
  const auto& args = graph_.args();
  for (std::size_t i = 0; i < args.size(); ++i)
    if (graph_.value(args[i].value).name == name) return static_cast<int>(i);
  return -1;
}

void ExecutableBase::set(std::string_view name, const HostTensor& value) {
  int index = arg_index(name);
  if (index < 0) throw Error(fmt::format("set: graph '{}' has no argument named '{}'", graph_.name(), name));
  const TensorType& expected = graph_.type(graph_.args()[static_cast<std::size_t>(index)].value);
  if (value.type() != expected)
    throw Error(fmt::format("set: argument '{}': expected {}, found {}", name, expected.str(), value.type().str()));
  store_arg(index, value);
  bound_[static_cast<std::size_t>(index)] = true;
  ++versions_[static_cast<std::size_t>(index)];
}

HostTensor ExecutableBase::get(std::string_view name) const {
  const auto& outputs = graph_.outputs();
  for (std::size_t i = 0; i < outputs.size(); ++i) {
    if (outputs[i].name != name) continue;
    if (!has_run_) throw Error(fmt::format("get: output '{}' is not computed yet (call run() first)", name));
    if (updated_arg_[i] >= 0) return load_arg(updated_arg_[i]);
    return load_output(static_cast<int>(i));
  }
  int index = arg_index(name);
  if (index < 0) throw Error(fmt::format("get: graph '{}' has no output or argument named '{}'", graph_.name(), name));
  if (!bound_[static_cast<std::size_t>(index)]) throw Error(fmt::format("get: argument '{}' is not bound", name));
  return load_arg(index);
}

void ExecutableBase::run() {
  for (std::size_t i = 0; i < bound_.size(); ++i)
    if (!bound_[i])
      throw Error(fmt::format("run: argument '{}' ({}, {}) is not bound", graph_.value(graph_.args()[i].value).name,
                              arg_role_name(graph_.args()[i].role), graph_.type(graph_.args()[i].value).str()));
  run_bound();
  // Arguments that outputs update changed.
  for (int target : updated_arg_)
    if (target >= 0) ++versions_[static_cast<std::size_t>(target)];
  has_run_ = true;
}

// ---- default storage: host tensors, execute() ----

void ExecutableBase::store_arg(int index, const HostTensor& value) { args_[static_cast<std::size_t>(index)] = value; }

HostTensor ExecutableBase::load_arg(int index) const { return *args_[static_cast<std::size_t>(index)]; }

HostTensor ExecutableBase::load_output(int index) const { return outputs_[static_cast<std::size_t>(index)]; }

std::vector<HostTensor> ExecutableBase::execute(std::span<const HostTensor* const>) {
  throw Error("ExecutableBase: this backend overrides neither execute() nor run_bound()");
}

void ExecutableBase::run_bound() {
  std::vector<const HostTensor*> bound;
  for (const auto& arg : args_) bound.push_back(&*arg);
  std::vector<HostTensor> results = execute(bound);
  MOEJIT_ASSERT(results.size() == graph_.outputs().size(), "execute() returns one tensor per output");
  for (std::size_t i = 0; i < results.size(); ++i) {
    MOEJIT_ASSERT(results[i].type() == graph_.type(graph_.outputs()[i].value), "output of the wrong type");
    if (updated_arg_[i] >= 0) {
      args_[static_cast<std::size_t>(updated_arg_[i])] = std::move(results[i]);
      results[i] = HostTensor();
    }
  }
  outputs_ = std::move(results);
}

}  // namespace moejit
