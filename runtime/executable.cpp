// ExecutableBase: argument binding, output lookup and `updates` (see the header).
#include "runtime/executable.h"

#include <fmt/format.h>

#include "ir/error.h"

namespace moejit {

ExecutableBase::ExecutableBase(Graph graph)
    : graph_(std::move(graph)), args_(graph_.args().size()), versions_(graph_.args().size(), 0) {
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
  args_[static_cast<std::size_t>(index)] = value;
  ++versions_[static_cast<std::size_t>(index)];
}

HostTensor ExecutableBase::get(std::string_view name) const {
  const auto& outputs = graph_.outputs();
  for (std::size_t i = 0; i < outputs.size(); ++i) {
    if (outputs[i].name != name) continue;
    if (!has_run_) throw Error(fmt::format("get: output '{}' is not computed yet (call run() first)", name));
    if (updated_arg_[i] >= 0) return *args_[static_cast<std::size_t>(updated_arg_[i])];
    return outputs_[i];
  }
  int index = arg_index(name);
  if (index < 0) throw Error(fmt::format("get: graph '{}' has no output or argument named '{}'", graph_.name(), name));
  const auto& bound = args_[static_cast<std::size_t>(index)];
  if (!bound) throw Error(fmt::format("get: argument '{}' is not bound", name));
  return *bound;
}

void ExecutableBase::run() {
  std::vector<const HostTensor*> bound;
  for (std::size_t i = 0; i < args_.size(); ++i) {
    if (!args_[i])
      throw Error(fmt::format("run: argument '{}' ({}, {}) is not bound", graph_.value(graph_.args()[i].value).name,
                              arg_role_name(graph_.args()[i].role), graph_.type(graph_.args()[i].value).str()));
    bound.push_back(&*args_[i]);
  }
  std::vector<HostTensor> results = execute(bound);
  MOEJIT_ASSERT(results.size() == graph_.outputs().size(), "execute() returns one tensor per output");
  for (std::size_t i = 0; i < results.size(); ++i) {
    MOEJIT_ASSERT(results[i].type() == graph_.type(graph_.outputs()[i].value), "output of the wrong type");
    if (updated_arg_[i] >= 0) {
      auto target = static_cast<std::size_t>(updated_arg_[i]);
      args_[target] = std::move(results[i]);
      ++versions_[target];
      results[i] = HostTensor();
    }
  }
  outputs_ = std::move(results);
  has_run_ = true;
}

}  // namespace moejit
