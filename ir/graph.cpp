#include "ir/graph.h"

#include <fmt/format.h>

#include <cctype>

#include "ir/error.h"

namespace moejit {

std::string_view arg_role_name(ArgRole role) {
  switch (role) {
    case ArgRole::input: return "input";
    case ArgRole::param: return "param";
    case ArgRole::state: return "state";
  }
  return "?";
}

namespace {
bool is_identifier(std::string_view s) {
  if (s.empty() || !(std::isalpha(static_cast<unsigned char>(s[0])) || s[0] == '_')) return false;
  for (char c : s)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.')) return false;
  return true;
}
}  // namespace

ValueId Graph::add_arg(std::string name, TensorType type, ArgRole role) {
  if (!is_identifier(name))
    throw Error(fmt::format("argument name: expected an identifier ([A-Za-z_][A-Za-z0-9_.]*), found '{}'", name));
  if (find_arg(name) != kNoValue) throw Error(fmt::format("argument name: '{}' is already used", name));
  ValueId id = new_value(std::move(type));
  values_[static_cast<std::size_t>(id)].name = std::move(name);
  args_.push_back(Arg{id, role});
  return id;
}

ValueId Graph::new_value(TensorType type) {
  values_.push_back(ValueInfo{std::move(type), {}});
  return static_cast<ValueId>(values_.size() - 1);
}

std::vector<ValueId> Graph::add_op(OpKind kind, std::vector<ValueId> operands, AttrList attrs,
                                   std::vector<TensorType> result_types) {
  Op op{kind, std::move(operands), {}, std::move(attrs)};
  for (auto& t : result_types) op.results.push_back(new_value(std::move(t)));
  ops_.push_back(std::move(op));
  return ops_.back().results;
}

void Graph::add_output(ValueId value, std::string name, std::string updates) {
  outputs_.push_back(Output{value, std::move(name), std::move(updates)});
}

ValueId Graph::find_arg(std::string_view name) const {
  for (const auto& a : args_)
    if (values_[static_cast<std::size_t>(a.value)].name == name) return a.value;
  return kNoValue;
}

const Output* Graph::find_output(std::string_view name) const {
  for (const auto& o : outputs_)
    if (o.name == name) return &o;
  return nullptr;
}

const Arg* Graph::arg_of(ValueId value) const {
  for (const auto& a : args_)
    if (a.value == value) return &a;
  return nullptr;
}

std::vector<int> Graph::producers() const {
  std::vector<int> producer(values_.size(), -1);
  for (std::size_t i = 0; i < ops_.size(); ++i)
    for (auto r : ops_[i].results) producer[static_cast<std::size_t>(r)] = static_cast<int>(i);
  return producer;
}

std::vector<int> Graph::use_counts() const {
  std::vector<int> uses(values_.size(), 0);
  for (const auto& op : ops_)
    for (auto v : op.operands) uses[static_cast<std::size_t>(v)]++;
  for (const auto& o : outputs_) uses[static_cast<std::size_t>(o.value)]++;
  return uses;
}

void Graph::replace_uses(ValueId from, ValueId to) {
  for (auto& op : ops_)
    for (auto& v : op.operands)
      if (v == from) v = to;
  for (auto& o : outputs_)
    if (o.value == from) o.value = to;
}

}  // namespace moejit
