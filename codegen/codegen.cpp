// Module generation: walks the graph in order, turns each op (or fused
// elementwise group) into launches through its emitter, and assembles the
// module source. Also the elementwise chain generator shared by every
// elementwise op, fused or alone.
#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <set>

#include "codegen/cuda_codegen.h"
#include "ir/error.h"
#include "ir/printer.h"
#include "passes/passes.h"
#include "ir/philox.h"

namespace moejit::codegen {

namespace {
std::uint64_t fnv1a(std::string_view text) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : text) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

// An exact double literal for generated code (NaN and inf included).
std::string double_literal(double v) {
  std::uint64_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  return fmt::format("__longlong_as_double(0x{:016x}ll)", bits);
}
}  // namespace

const char* cuda_type(DType dtype) {
  switch (dtype) {
    case DType::f32: return "float";
    case DType::f64: return "double";
    case DType::bf16: return "bf16_t";
    case DType::f16: return "f16_t";
    case DType::i32: return "int";
    case DType::i64: return "i64";
    case DType::i1: return "bool_t";
  }
  return "void";
}


unsigned blocks_for(std::int64_t n, unsigned threads) {
  std::int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(std::clamp<std::int64_t>(blocks, 1, 8192));
}

std::vector<std::int64_t> contiguous_strides(const Shape& shape) {
  std::vector<std::int64_t> strides(shape.size(), 1);
  for (int i = static_cast<int>(shape.size()) - 2; i >= 0; --i)
    strides[static_cast<std::size_t>(i)] = strides[static_cast<std::size_t>(i) + 1] * shape[static_cast<std::size_t>(i) + 1];
  return strides;
}

KernelArg dims_arg(const std::vector<std::int64_t>& sizes, const std::vector<std::int64_t>& strides) {
  MOEJIT_ASSERT(sizes.size() == strides.size() && sizes.size() <= 8, "dims rank");
  // struct Dims { int rank; i64 size[8]; i64 stride[8]; } : 4 bytes, 4 padding, 64, 64.
  KernelArg arg;
  arg.kind = KernelArg::Kind::bytes;
  arg.bytes.resize(8 + 64 + 64);
  std::int32_t rank = static_cast<std::int32_t>(sizes.size());
  std::memcpy(arg.bytes.data(), &rank, 4);
  std::int64_t size[8] = {1, 1, 1, 1, 1, 1, 1, 1}, stride[8] = {};
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    size[i] = sizes[i];
    stride[i] = strides[i];
  }
  std::memcpy(arg.bytes.data() + 8, size, 64);
  std::memcpy(arg.bytes.data() + 72, stride, 64);
  return arg;
}

// ---- EmitContext ----

EmitContext::EmitContext(const Graph& graph, int op_index, StepCode& step, std::vector<KernelDef>& kernels)
    : graph_(graph), op_(graph.ops().at(static_cast<std::size_t>(op_index))), op_index_(op_index), step_(step), kernels_(kernels) {}

std::string EmitContext::define(const std::string& stem, const std::string& params, const std::string& body) {
  std::string text = fmt::format("({}) {{\n{}}}\n", params, body);
  std::string name = fmt::format("mj_{}_{:08x}", stem, static_cast<std::uint32_t>(fnv1a(stem + text)));
  for (const auto& k : kernels_)
    if (k.name == name) return name;
  kernels_.push_back({name, fmt::format("extern \"C\" __global__ void __launch_bounds__(1024) {}{}", name, text)});
  return name;
}

Launch& EmitContext::launch(const std::string& kernel, unsigned grid_x, std::vector<KernelArg> args, unsigned block_x,
                            unsigned shared_bytes) {
  Launch l;
  l.kernel = kernel;
  l.grid[0] = std::max(grid_x, 1u);
  l.block[0] = block_x;
  l.shared_bytes = shared_bytes;
  l.args = std::move(args);
  step_.launches.push_back(std::move(l));
  return step_.launches.back();
}

void EmitContext::zero(KernelArg target, std::int64_t bytes) {
  Launch l;
  l.kind = Launch::Kind::zero;
  l.bytes = bytes;
  l.args = {std::move(target)};
  step_.launches.push_back(std::move(l));
}

void EmitContext::copy(KernelArg source, KernelArg target, std::int64_t bytes) {
  Launch l;
  l.kind = Launch::Kind::copy;
  l.bytes = bytes;
  l.args = {std::move(source), std::move(target)};
  step_.launches.push_back(std::move(l));
}

std::int64_t EmitContext::scratch(std::int64_t bytes) {
  std::int64_t offset = (step_.scratch_bytes + 255) / 256 * 256;
  step_.scratch_bytes = offset + bytes;
  return offset;
}

void EmitContext::fail(const std::string& message) const {
  throw Error(fmt::format("{} = \"{}\": the CUDA backend {}", value_ref(graph_, op_.results.empty() ? kNoValue : op_.results[0]),
                          op_name(op_.kind), message));
}

// ---- elementwise chains ----

namespace {
const char* unary_function(OpKind kind) {
  switch (kind) {
    case OpKind::Neg: return "ew_neg";
    case OpKind::Exp: return "ew_exp";
    case OpKind::Log: return "ew_log";
    case OpKind::Sqrt: return "ew_sqrt";
    case OpKind::Rsqrt: return "ew_rsqrt";
    case OpKind::Tanh: return "ew_tanh";
    case OpKind::Relu: return "ew_relu";
    case OpKind::Gelu: return "ew_gelu";
    case OpKind::Silu: return "ew_silu";
    case OpKind::Sigmoid: return "ew_sigmoid";
    case OpKind::Softplus: return "ew_softplus";
    case OpKind::Add: return "ew_add";
    case OpKind::Sub: return "ew_sub";
    case OpKind::Mul: return "ew_mul";
    case OpKind::Div: return "ew_div";
    case OpKind::Maximum: return "ew_maximum";
    case OpKind::Minimum: return "ew_minimum";
    case OpKind::GeluGrad: return "ew_gelu_grad";
    default: return nullptr;
  }
}

// The C++ expression of one elementwise op over its operands' variables;
// `i` is the element index. `philox_base` (dropout only) is the expression
// of its Philox base position, offset + step_offset.
std::string elementwise_expr(const Graph& graph, const Op& op, const std::vector<std::string>& args,
                             const std::string& philox_base) {
  const char* type = cuda_type(graph.type(op.results[0]).dtype);
  switch (op.kind) {
    case OpKind::Compare: {
      static const std::map<std::string, std::string> ops = {{"lt", "<"}, {"le", "<="}, {"gt", ">"},
                                                             {"ge", ">="}, {"eq", "=="}, {"ne", "!="}};
      return fmt::format("(bool_t)(ld({}) {} ld({}))", args[0], ops.at(op.attrs.get_string("predicate")), args[1]);
    }
    case OpKind::Where: return fmt::format("({} ? {} : {})", args[0], args[1], args[2]);
    case OpKind::Cast: return fmt::format("cast_to<{}>({})", type, args[0]);
    case OpKind::Constant: return fmt::format("from_double<{}>({})", type, double_literal(op.attrs.get_float("value")));
    case OpKind::Dropout: {
      double p = op.attrs.get_float("p");
      return fmt::format("dropout_value<{}>({}, {}ull, {} + (unsigned long long)i, {}u, {})", type, args[0],
                         static_cast<unsigned long long>(op.attrs.get_int("seed")), philox_base, dropout_threshold24(p),
                         double_literal(1.0 / (1.0 - p)));
    }
    default: break;
  }
  const char* fn = unary_function(op.kind);
  MOEJIT_ASSERT(fn, fmt::format("{} is not elementwise", op_name(op.kind)));
  std::string call = std::string(fn) + "(";
  for (std::size_t k = 0; k < args.size(); ++k) call += (k ? ", ld(" : "ld(") + args[k] + ")";
  return fmt::format("st<{}>({}))", type, call);
}
}  // namespace

void emit_elementwise_chain(const Graph& graph, const std::vector<int>& ops, const std::vector<bool>& stored, StepCode& step,
                            std::vector<KernelDef>& kernels) {
  MOEJIT_ASSERT(!ops.empty(), "empty chain");
  const Op& last = graph.ops()[static_cast<std::size_t>(ops.back())];
  const std::int64_t n = graph.type(last.results[0]).numel();
  std::map<ValueId, std::string> var;  // value -> local variable
  std::vector<ValueId> inputs, outputs;
  std::string body, loads, computes, stores;
  // Dropout's `offset` attributes travel as kernel arguments after n, so the
  // source does not depend on them.
  std::string offset_params;
  std::vector<KernelArg> offset_args;
  int next = 0;
  for (int index : ops) {
    const Op& op = graph.ops()[static_cast<std::size_t>(index)];
    MOEJIT_ASSERT(is_fusible_elementwise(op.kind), "chain op");
    if (graph.type(op.results[0]).numel() != n)
      throw Error(fmt::format("{}: fusion group mixes element counts ({} and {})", value_ref(graph, op.results[0]),
                              graph.type(op.results[0]).numel(), n));
    std::vector<std::string> args;
    for (ValueId v : op.operands) {
      if (!var.count(v)) {
        std::string name = fmt::format("v{}", next++);
        // Elementwise operands have the chain's shape; a one-element operand
        // in a longer chain is a scalar (dropout's step_offset), read at [0].
        const char* index = graph.type(v).numel() == 1 ? "0" : "i";
        loads += fmt::format("    {} {} = in{}[{}];\n", cuda_type(graph.type(v).dtype), name, inputs.size(), index);
        var[v] = name;
        inputs.push_back(v);
      }
      args.push_back(var[v]);
    }
    std::string philox_base;
    if (op.kind == OpKind::Dropout) {
      // base = offset (a kernel argument) + step_offset (read from its device scalar)
      philox_base = fmt::format("offset{}", offset_args.size());
      offset_params += fmt::format(", unsigned long long {}", philox_base);
      offset_args.push_back(KernelArg::i64(op.attrs.get_int("offset")));
      if (args.size() > 1) philox_base += fmt::format(" + (unsigned long long){}", args[1]);
    }
    std::string name = fmt::format("v{}", next++);
    ValueId r = op.results[0];
    computes += fmt::format("    {} {} = {};\n", cuda_type(graph.type(r).dtype), name,
                            elementwise_expr(graph, op, args, philox_base));
    var[r] = name;
    if (stored[static_cast<std::size_t>(r)] || index == ops.back()) {
      stores += fmt::format("    out{}[i] = {};\n", outputs.size(), name);
      outputs.push_back(r);
    }
  }
  std::string params;
  for (std::size_t k = 0; k < inputs.size(); ++k)
    params += fmt::format("const {}* __restrict__ in{}, ", cuda_type(graph.type(inputs[k]).dtype), k);
  for (std::size_t k = 0; k < outputs.size(); ++k)
    params += fmt::format("{}* __restrict__ out{}, ", cuda_type(graph.type(outputs[k]).dtype), k);
  params += "i64 n" + offset_params;
  body = "  MOEJIT_FOR_EACH(i, n) {\n" + loads + computes + stores + "  }\n";
  std::string stem = ops.size() == 1 ? fmt::format("{}_{}", op_name(last.kind).substr(3), cuda_type(graph.type(last.results[0]).dtype))
                                     : fmt::format("fused{}", ops.size());
  EmitContext ctx(graph, ops.back(), step, kernels);
  std::string kernel = ctx.define(stem, params, body);
  std::vector<KernelArg> args;
  for (ValueId v : inputs) args.push_back(KernelArg::of(v));
  for (ValueId v : outputs) args.push_back(KernelArg::of(v));
  args.push_back(KernelArg::i64(n));
  for (KernelArg& offset : offset_args) args.push_back(std::move(offset));
  ctx.launch(kernel, blocks_for(n), std::move(args));
}

// ---- the module ----

ModuleCode generate_module(const Graph& graph) {
  ModuleCode module;
  module.name = graph.name();
  const auto& ops = graph.ops();
  const int num_ops = static_cast<int>(ops.size());
  // Fusion groups: op indices per group id, in graph order.
  std::map<std::int64_t, std::vector<int>> groups;
  std::vector<std::int64_t> group_of(ops.size(), -1);
  for (int i = 0; i < num_ops; ++i) {
    const Op& op = ops[static_cast<std::size_t>(i)];
    if (const AttrValue* g = op.attrs.find(kFusionGroupAttr); g && std::holds_alternative<std::int64_t>(*g) &&
                                                              is_fusible_elementwise(op.kind)) {
      group_of[static_cast<std::size_t>(i)] = std::get<std::int64_t>(*g);
      groups[std::get<std::int64_t>(*g)].push_back(i);
    }
  }
  // A value is stored unless every use is inside its own fusion group.
  std::vector<bool> stored(static_cast<std::size_t>(graph.num_values()), true);
  {
    std::vector<std::int64_t> value_group(static_cast<std::size_t>(graph.num_values()), -1);
    for (int i = 0; i < num_ops; ++i)
      for (ValueId r : ops[static_cast<std::size_t>(i)].results) value_group[static_cast<std::size_t>(r)] = group_of[static_cast<std::size_t>(i)];
    std::vector<bool> used_outside(static_cast<std::size_t>(graph.num_values()), false);
    for (int i = 0; i < num_ops; ++i)
      for (ValueId v : ops[static_cast<std::size_t>(i)].operands)
        if (value_group[static_cast<std::size_t>(v)] < 0 || value_group[static_cast<std::size_t>(v)] != group_of[static_cast<std::size_t>(i)])
          used_outside[static_cast<std::size_t>(v)] = true;
    for (const auto& out : graph.outputs()) used_outside[static_cast<std::size_t>(out.value)] = true;
    for (int v = 0; v < graph.num_values(); ++v)
      if (value_group[static_cast<std::size_t>(v)] >= 0 && groups[value_group[static_cast<std::size_t>(v)]].size() > 1 &&
          !used_outside[static_cast<std::size_t>(v)])
        stored[static_cast<std::size_t>(v)] = false;
    // A group's last result is always written (even when nothing reads it).
    for (const auto& [id, members] : groups)
      for (ValueId r : ops[static_cast<std::size_t>(members.back())].results) stored[static_cast<std::size_t>(r)] = true;
  }
  for (int i = 0; i < num_ops; ++i) {
    std::int64_t g = group_of[static_cast<std::size_t>(i)];
    StepCode step;
    if (g >= 0 && groups[g].size() > 1) {
      if (groups[g].back() != i) continue;  // the group runs at its last op
      step.ops = groups[g];
      emit_elementwise_chain(graph, step.ops, stored, step, module.kernels);
    } else {
      step.ops = {i};
      EmitContext ctx(graph, i, step, module.kernels);
      switch (ops[static_cast<std::size_t>(i)].kind) {
#define MOEJIT_OP(kind, ...) \
  case OpKind::kind:         \
    emit_##kind(ctx);        \
    break;
#include "ir/ops.def"
#undef MOEJIT_OP
      }
    }
    module.steps.push_back(std::move(step));
  }
  module.materialized = stored;
  module.source = kernel_library();
  module.source += fmt::format("\n// ==== generated kernels of @{} ====\n", graph.name());
  for (const auto& k : module.kernels) module.source += "\n" + k.source;
  return module;
}

std::string emit_cuda_source(const Graph& graph) { return generate_module(graph).source; }

}  // namespace moejit::codegen
