// Graph: arguments (inputs, parameters, optimizer state), ops in topological
// order, and named outputs. Every value is SSA: defined once, by an argument
// or by one result of one op.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "ir/attr.h"
#include "ir/op_table.h"
#include "ir/type.h"

namespace moejit {

using ValueId = std::int32_t;
inline constexpr ValueId kNoValue = -1;

// input: fed on every run; param: trained weights, bound once and kept;
// state: kept between runs like a param but not trained (optimizer moments).
enum class ArgRole : std::uint8_t { input, param, state };
std::string_view arg_role_name(ArgRole role);

struct ValueInfo {
  TensorType type;
  std::string name;  // arguments only; op results are numbered when printed
};

struct Op {
  OpKind kind;
  std::vector<ValueId> operands;
  std::vector<ValueId> results;
  AttrList attrs;
};

struct Arg {
  ValueId value;
  ArgRole role;
};

// An output. `updates` names the argument this output replaces after each run
// (AdamW's new parameter and moments); empty for a plain output.
struct Output {
  ValueId value;
  std::string name;
  std::string updates;
};

class Graph {
 public:
  explicit Graph(std::string name = "main") : name_(std::move(name)) {}

  const std::string& name() const { return name_; }
  void set_name(std::string name) { name_ = std::move(name); }

  // Adds an argument. Names must be unique identifiers ([A-Za-z_][A-Za-z0-9_.]*).
  ValueId add_arg(std::string name, TensorType type, ArgRole role);
  // Appends an op with given result types; no checks (see Builder and verify()).
  std::vector<ValueId> add_op(OpKind kind, std::vector<ValueId> operands, AttrList attrs,
                              std::vector<TensorType> result_types);
  // Creates a value with no definition yet (parser, passes that rebuild).
  ValueId new_value(TensorType type);
  void add_output(ValueId value, std::string name, std::string updates = {});

  const TensorType& type(ValueId value) const { return values_.at(static_cast<std::size_t>(value)).type; }
  const ValueInfo& value(ValueId value) const { return values_.at(static_cast<std::size_t>(value)); }
  int num_values() const { return static_cast<int>(values_.size()); }

  const std::vector<Arg>& args() const { return args_; }
  const std::vector<Op>& ops() const { return ops_; }
  std::vector<Op>& mutable_ops() { return ops_; }
  const std::vector<Output>& outputs() const { return outputs_; }
  std::vector<Output>& mutable_outputs() { return outputs_; }

  // Lookups by name; kNoValue / nullptr when absent.
  ValueId find_arg(std::string_view name) const;
  const Output* find_output(std::string_view name) const;
  const Arg* arg_of(ValueId value) const;

  // For each value, the index of the op defining it (-1 for arguments and
  // values nothing defines).
  std::vector<int> producers() const;
  // For each value, how many op operands and outputs use it.
  std::vector<int> use_counts() const;

  // Replaces every use of `from` (operands and outputs) by `to`.
  void replace_uses(ValueId from, ValueId to);

 private:
  std::string name_;
  std::vector<ValueInfo> values_;
  std::vector<Arg> args_;
  std::vector<Op> ops_;
  std::vector<Output> outputs_;
};

}  // namespace moejit
