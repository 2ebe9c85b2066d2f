// Module generation: walks the graph in order, turns each op (or fused
// elementwise group, or op group of codegen/op_groups.cpp) into launches
// through its emitter (an mj.reshape of a stored value becomes a view of
// its bytes, no launch), and assembles the module source: the included
// families, the generated chain functors, and one comment per launch naming
// its instantiation and launch shape. Also the elementwise chain generator
// shared by every elementwise op, fused or alone.
#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>

#include "codegen/cuda_codegen.h"
#include "codegen/kernels/elementwise.cuh"
#include "ir/error.h"
#include "ir/philox.h"
#include "ir/printer.h"
#include "passes/passes.h"

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

std::string template_type(DType dtype) {
  switch (dtype) {
    case DType::f32:
    case DType::f64:
    case DType::i32: return cuda_type(dtype);
    default: return std::string("mj::") + cuda_type(dtype);
  }
}

std::string instantiation(std::string_view name, std::initializer_list<std::string> template_args) {
  std::string text = fmt::format("mj::{}<", name);
  bool first = true;
  for (const auto& arg : template_args) {
    text += (first ? "" : ", ") + arg;
    first = false;
  }
  return text + ">";
}

bool env_flag(const char* name, bool fallback) {
  const char* v = std::getenv(name);
  if (!v) return fallback;
  if (std::string(v) != "0" && std::string(v) != "1") throw Error(fmt::format("{}: expected 0 or 1, found '{}'", name, v));
  return std::string(v) == "1";
}

bool warp_kernels_enabled() { return env_flag("MOEJIT_WARP_KERNELS", true); }

unsigned blocks_for(std::int64_t n, unsigned threads) {
  std::int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(std::clamp<std::int64_t>(blocks, 1, 8192));
}

unsigned tiles(std::int64_t n, std::int64_t tile) { return static_cast<unsigned>(std::max<std::int64_t>((n + tile - 1) / tile, 1)); }

unsigned persistent_grid(const Target& target, std::int64_t work, int blocks_per_sm) {
  std::int64_t slots = static_cast<std::int64_t>(target.sm_count) * std::max(blocks_per_sm, 1);
  return static_cast<unsigned>(std::clamp<std::int64_t>(work, 1, std::max<std::int64_t>(slots, 1)));
}

std::vector<std::int64_t> contiguous_strides(const Shape& shape) {
  std::vector<std::int64_t> strides(shape.size(), 1);
  for (int i = static_cast<int>(shape.size()) - 2; i >= 0; --i)
    strides[static_cast<std::size_t>(i)] = strides[static_cast<std::size_t>(i) + 1] * shape[static_cast<std::size_t>(i) + 1];
  return strides;
}

mj::Dims make_dims(const std::vector<std::int64_t>& sizes, const std::vector<std::int64_t>& strides) {
  MOEJIT_ASSERT(sizes.size() == strides.size() && sizes.size() <= MOEJIT_MAX_RANK, "dims rank");
  mj::Dims d{};
  d.rank = static_cast<int>(sizes.size());
  for (int i = 0; i < MOEJIT_MAX_RANK; ++i) d.size[i] = 1;
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    d.size[i] = sizes[i];
    d.stride[i] = strides[i];
  }
  return d;
}

// ---- EmitContext ----

EmitContext::EmitContext(const Graph& graph, const Target& target, int op_index, StepCode& step, GeneratedCode& generated)
    : graph_(graph), target_(target), op_(graph.ops().at(static_cast<std::size_t>(op_index))), op_index_(op_index), step_(step),
      generated_(generated) {}

std::string EmitContext::define_functor(const std::string& stem, const std::string& members) {
  std::string name = fmt::format("{}_{:08x}", stem, static_cast<std::uint32_t>(fnv1a(stem + members)));
  for (const auto& f : generated_.functors)
    if (f.first == name) return name;
  generated_.functors.emplace_back(name, fmt::format("struct {} {{\n{}}};\n", name, members));
  return name;
}

Launch& EmitContext::launch_bytes(const char* family, std::string kernel, const TileConfig& config, std::initializer_list<unsigned> grid,
                                  const void* args, std::size_t size, const std::vector<Bind>& pointers, unsigned shared_bytes,
                                  const std::vector<TensorMapBind>& tensor_maps) {
  MOEJIT_ASSERT(grid.size() >= 1 && grid.size() <= 3, "grid has 1 to 3 dims");
  if (config.threads < 1 || config.threads > 1024) fail(fmt::format("cannot launch {} threads per block (1..1024)", config.threads));
  if (shared_bytes > 48 * 1024 && shared_bytes > target_.shared_memory_per_block_optin)
    fail(fmt::format("needs {} bytes of dynamic shared memory for {}; the target {} allows at most {} per block", shared_bytes, kernel,
                     target_.arch, target_.shared_memory_per_block_optin));
  Launch l;
  l.family = family;
  l.kernel = std::move(kernel);
  l.config = config;
  std::size_t axis = 0;
  for (unsigned g : grid) {
    if (g > (axis == 0 ? 0x7fffffffu : 65535u)) fail(fmt::format("needs a grid of {} blocks along axis {}", g, axis));
    l.grid[axis++] = std::max(g, 1u);
  }
  l.block[0] = static_cast<unsigned>(config.threads);
  l.cluster[0] = static_cast<unsigned>(config.cluster_m);
  l.cluster[1] = static_cast<unsigned>(config.cluster_n);
  // A cluster launch needs a grid of whole clusters.
  if (config.cluster_m < 1 || config.cluster_n < 1 || l.grid[0] % l.cluster[0] != 0 || l.grid[1] % l.cluster[1] != 0)
    fail(fmt::format("launches {} with grid ({}, {}) and cluster {}x{}: the grid must be whole clusters", l.kernel, l.grid[0], l.grid[1],
                     config.cluster_m, config.cluster_n));
  l.shared_bytes = shared_bytes;
  l.args.resize(size);
  std::memcpy(l.args.data(), args, size);
  const auto* base = static_cast<const std::byte*>(args);
  auto offset_of = [&](const void* field, std::size_t field_size) {
    const auto* at = static_cast<const std::byte*>(field);
    MOEJIT_ASSERT(at >= base && at + field_size <= base + size, "a bound field lies inside the argument struct");
    return static_cast<std::uint32_t>(at - base);
  };
  for (const Bind& b : pointers) {
    std::uint32_t at = offset_of(b.field, 8);
    std::memset(l.args.data() + at, 0, 8);
    l.pointers.push_back({at, b.buffer});
  }
  for (const TensorMapBind& m : tensor_maps) {
    TensorMapField field = m.map;
    field.offset = offset_of(m.field, sizeof(mj::TmaDescriptor));
    MOEJIT_ASSERT(field.offset % 64 == 0, "a TmaDescriptor is 64-byte aligned");
    l.tensor_maps.push_back(field);
  }
  generated_.families.insert(family);
  step_.launches.push_back(std::move(l));
  return step_.launches.back();
}

void EmitContext::zero(Buffer target, std::int64_t bytes) {
  Launch l;
  l.kind = Launch::Kind::zero;
  l.bytes = bytes;
  l.dst = target;
  step_.launches.push_back(std::move(l));
}

void EmitContext::copy(Buffer source, Buffer target, std::int64_t bytes) {
  Launch l;
  l.kind = Launch::Kind::copy;
  l.bytes = bytes;
  l.src = source;
  l.dst = target;
  step_.launches.push_back(std::move(l));
}

std::int64_t EmitContext::scratch(std::int64_t bytes) {
  std::int64_t offset = (step_.scratch_bytes + 255) / 256 * 256;
  step_.scratch_bytes = offset + bytes;
  return offset;
}

bool EmitContext::used(ValueId value) const {
  for (const Op& op : graph_.ops())
    for (ValueId v : op.operands)
      if (v == value) return true;
  for (const auto& out : graph_.outputs())
    if (out.value == value) return true;
  return false;
}

void EmitContext::fail(const std::string& message) const {
  throw Error(fmt::format("{} = \"{}\": the CUDA backend {}", value_ref(graph_, op_.results.empty() ? kNoValue : op_.results[0]),
                          op_name(op_.kind), message));
}

// ---- elementwise chains ----

namespace {
const char* elementwise_function(OpKind kind) {
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
  const char* fn = elementwise_function(op.kind);
  MOEJIT_ASSERT(fn, fmt::format("{} is not elementwise", op_name(op.kind)));
  std::string call = std::string(fn) + "(";
  for (std::size_t k = 0; k < args.size(); ++k) call += (k ? ", ld(" : "ld(") + args[k] + ")";
  return fmt::format("st<{}>({}))", type, call);
}
}  // namespace

namespace {
// The index into a broadcast's operand of element `i` of its result
// (right-aligned dims; a dim of size 1 is repeated): a C++ expression of
// `i` with the shapes as constants, "0" for a one-element operand.
std::string broadcast_index(const Shape& from, const Shape& to) {
  std::int64_t numel = 1;
  for (auto d : from) numel *= d;
  if (numel == 1) return "0";
  const std::size_t lead = to.size() - from.size();
  const auto from_strides = contiguous_strides(from);
  std::string expr;
  std::int64_t inner = 1;  // elements of `to` inside dim d
  for (std::size_t d = to.size(); d-- > 0;) {
    const bool kept = d >= lead && from[d - lead] != 1;
    if (kept) {
      std::string term = inner == 1 ? "i" : fmt::format("(i / {})", inner);
      if (d > 0) term = fmt::format("({} % {})", term, to[d]);
      const std::int64_t stride = from_strides[d - lead];
      if (stride != 1) term = fmt::format("{} * {}", term, stride);
      expr = expr.empty() ? term : term + " + " + expr;
    }
    inner *= to[d];
  }
  return expr;
}
}  // namespace

ChainFunctor chain_functor(EmitContext& ctx, const std::vector<int>& ops, const std::function<bool(ValueId)>& stored,
                           bool returns_last) {
  const Graph& graph = ctx.graph();
  const Op& last = graph.ops()[static_cast<std::size_t>(ops.back())];
  ChainFunctor chain;
  chain.n = graph.type(last.results[0]).numel();
  const std::int64_t n = chain.n;
  std::map<ValueId, std::string> var;  // value -> local variable
  std::map<ValueId, int> slot;         // value read from outside -> its a.in index
  // apply(a, i): one element. apply8(a, i0): elements i0 .. i0+7, each
  // operand loaded and each result stored as a Pack of 8 around the same
  // computation (pack_* below); packed(a): every packed pointer 16-byte
  // aligned. value(a, i) (returns_last): apply's work, returning the last
  // op's value instead of storing it.
  std::string loads, computes, stores, pack_loads, pack_reads, pack_decls, pack_writes, pack_stores, aligned = "0ull";
  int dropouts = 0, next = 0;
  auto input_slot = [&](ValueId v) {
    if (auto it = slot.find(v); it != slot.end()) return it->second;
    if (chain.inputs.size() == mj::kChainMaxInputs)
      ctx.fail(fmt::format("fuses at most {} inputs into one elementwise kernel", mj::kChainMaxInputs));
    slot[v] = static_cast<int>(chain.inputs.size());
    chain.inputs.push_back(v);
    return slot[v];
  };
  std::string last_var;
  for (int index : ops) {
    const Op& op = graph.ops()[static_cast<std::size_t>(index)];
    MOEJIT_ASSERT(joins_elementwise_chain(op.kind), "chain op");
    if (graph.type(op.results[0]).numel() != n)
      throw Error(fmt::format("{}: fusion group mixes element counts ({} and {})", value_ref(graph, op.results[0]),
                              graph.type(op.results[0]).numel(), n));
    const ValueId r = op.results[0];
    std::string name;  // the result's variable, numbered after the operands' (the functor's text, and so its hash, as before)
    const char* result_type = cuda_type(graph.type(r).dtype);
    if (op.kind == OpKind::Broadcast) {
      // Read from the operand at the broadcast index, one element at a time
      // (no packed load: neighbouring elements may share an operand element).
      const ValueId x = op.operands[0];
      MOEJIT_ASSERT(!var.count(x), "a broadcast's operand comes from outside its chain");
      name = fmt::format("v{}", next++);
      const std::string at = broadcast_index(graph.type(x).shape, graph.type(r).shape);
      const std::string load = fmt::format("const {0} {1} = static_cast<const {0}*>(a.in[{2}])[{3}];\n", result_type, name, input_slot(x), at);
      loads += "    " + load;
      if (at == "0") pack_loads += "    " + load;
      else pack_reads += "      " + load;
    } else {
      std::vector<std::string> operands;
      for (ValueId v : op.operands) {
        if (!var.count(v)) {
          const int k = input_slot(v);
          std::string operand = fmt::format("v{}", next++);
          // Elementwise operands have the chain's shape; a one-element operand
          // in a longer chain is a scalar (dropout's step_offset), read at [0].
          const char* at = graph.type(v).numel() == 1 ? "0" : "i";
          const char* type = cuda_type(graph.type(v).dtype);
          loads += fmt::format("    const {0} {1} = static_cast<const {0}*>(a.in[{2}])[{3}];\n", type, operand, k, at);
          if (graph.type(v).numel() == 1) {
            pack_loads += fmt::format("    const {0} {1} = static_cast<const {0}*>(a.in[{2}])[0];\n", type, operand, k);
          } else {
            pack_loads += fmt::format("    const Pack<{0}, 8> p{1} = *reinterpret_cast<const Pack<{0}, 8>*>(static_cast<const {0}*>(a.in[{2}]) + i0);\n",
                                      type, operand, k);
            pack_reads += fmt::format("      const {0} {1} = p{1}.v[j];\n", type, operand);
            aligned += fmt::format(" | (unsigned long long)a.in[{}]", k);
          }
          var[v] = operand;
        }
        operands.push_back(var[v]);
      }
      std::string philox_base;
      if (op.kind == OpKind::Dropout) {
        // base = offset (a kernel argument) + step_offset (read from its device scalar)
        if (dropouts == mj::kChainMaxDropouts) ctx.fail(fmt::format("fuses at most {} dropouts into one kernel", mj::kChainMaxDropouts));
        chain.args.dropout_offset[dropouts] = static_cast<unsigned long long>(op.attrs.get_int("offset"));
        philox_base = fmt::format("a.dropout_offset[{}]", dropouts++);
        if (operands.size() > 1) philox_base += fmt::format(" + (unsigned long long){}", operands[1]);
      }
      name = fmt::format("v{}", next++);
      computes += fmt::format("    const {} {} = {};\n", result_type, name, elementwise_expr(graph, op, operands, philox_base));
    }
    var[r] = name;
    last_var = name;
    const bool is_last = index == ops.back();
    if (is_last ? !returns_last : stored(r)) {
      if (chain.outputs.size() == mj::kChainMaxOutputs)
        ctx.fail(fmt::format("stores at most {} values from one elementwise kernel", mj::kChainMaxOutputs));
      stores += fmt::format("    static_cast<{}*>(a.out[{}])[i] = {};\n", result_type, chain.outputs.size(), name);
      pack_decls += fmt::format("    Pack<{}, 8> q{};\n", result_type, name);
      pack_writes += fmt::format("      q{0}.v[j] = {0};\n", name);
      pack_stores += fmt::format("    *reinterpret_cast<Pack<{0}, 8>*>(static_cast<{0}*>(a.out[{1}]) + i0) = q{2};\n", result_type,
                                 chain.outputs.size(), name);
      aligned += fmt::format(" | (unsigned long long)a.out[{}]", chain.outputs.size());
      chain.outputs.push_back(r);
    }
  }
  std::string stem = ops.size() == 1 ? fmt::format("{}_{}", op_name(last.kind).substr(3), cuda_type(graph.type(last.results[0]).dtype))
                                     : fmt::format("fused{}", ops.size());
  std::string members;
  if (returns_last) {
    members = fmt::format("  static __device__ __forceinline__ {} value(const ElementwiseArgs& a, i64 i) {{\n", cuda_type(graph.type(last.results[0]).dtype)) +
              loads + computes + stores + "    return " + last_var + ";\n  }\n";
    stem = "value_" + stem;
  } else {
    std::string indented;  // the computation inside apply8's loop over j
    for (std::size_t at = 0; at < computes.size();) {
      std::size_t end = computes.find('\n', at);
      indented += "  " + computes.substr(at, end - at + 1);
      at = end + 1;
    }
    members = "  static __device__ __forceinline__ void apply(const ElementwiseArgs& a, i64 i) {\n" + loads + computes + stores +
              "  }\n  static __device__ __forceinline__ bool packed(const ElementwiseArgs& a) {\n    return ((" + aligned +
              ") & 15ull) == 0;\n  }\n  static __device__ __forceinline__ void apply8(const ElementwiseArgs& a, i64 i0) {\n" +
              pack_loads + pack_decls + "#pragma unroll\n    for (int j = 0; j < 8; ++j) {\n      const i64 i = i0 + j;\n      (void)i;\n" +
              pack_reads + indented + pack_writes + "    }\n" + pack_stores + "  }\n";
  }
  chain.functor = "mj::" + ctx.define_functor("chain_" + stem, members);
  chain.args.n = n;
  return chain;
}

std::vector<Bind> ChainFunctor::binds(const mj::ElementwiseArgs& at) const {
  std::vector<Bind> binds;
  for (std::size_t k = 0; k < inputs.size(); ++k) binds.push_back({&at.in[k], Buffer::of(inputs[k])});
  for (std::size_t k = 0; k < outputs.size(); ++k) binds.push_back({&at.out[k], Buffer::of(outputs[k])});
  return binds;
}

void emit_elementwise_chain(EmitContext& ctx, const std::vector<int>& ops, const std::vector<bool>& stored) {
  MOEJIT_ASSERT(!ops.empty() && ops.back() == ctx.op_index(), "the context is at the chain's last op");
  const ChainFunctor chain = chain_functor(ctx, ops, [&](ValueId v) { return static_cast<bool>(stored[static_cast<std::size_t>(v)]); }, false);
  const TileConfig config = TileConfig::fixed_threads(256);
  ctx.launch("elementwise", instantiation("elementwise_kernel", {chain.functor, std::to_string(config.threads)}), config,
             {blocks_for(chain.n)}, chain.args, chain.binds(chain.args));
}

// ---- the module ----

namespace {

std::string dims3(const unsigned d[3]) { return fmt::format("({}, {}, {})", d[0], d[1], d[2]); }

std::string step_label(const Graph& graph, const StepCode& step) {
  const Op& op = graph.ops()[static_cast<std::size_t>(step.ops.back())];
  std::string label = fmt::format("{} = \"{}\"", value_ref(graph, op.results.empty() ? kNoValue : op.results[0]), op_name(op.kind));
  if (step.ops.size() > 1) label += fmt::format(" (fused group of {} ops)", step.ops.size());
  return label;
}

std::string assemble_source(const Graph& graph, const ModuleCode& module, const GeneratedCode& generated) {
  std::string s = fmt::format(
      "// moejit CUDA module @{} for {} (generated by codegen/). The kernels are\n"
      "// the templates of the included families; each launch below names its\n"
      "// instantiation, which NVRTC instantiates through nvrtcAddNameExpression.\n",
      graph.name(), module.target.arch);
  for (const auto& header : module.headers) s += fmt::format("#include \"{}\"\n", header);
  if (!generated.functors.empty()) {
    s += "\nnamespace mj {\n";
    for (const auto& [name, definition] : generated.functors) s += "\n" + definition;
    s += "\n}  // namespace mj\n";
  }
  s += "\n// ---- launches ----\n";
  for (std::size_t i = 0; i < module.steps.size(); ++i) {
    const StepCode& step = module.steps[i];
    s += fmt::format("// step {}: {}\n", i, step_label(graph, step));
    for (const Launch& l : step.launches) {
      switch (l.kind) {
        case Launch::Kind::zero: s += fmt::format("//   memset 0, {} bytes\n", l.bytes); break;
        case Launch::Kind::copy: s += fmt::format("//   copy {} bytes\n", l.bytes); break;
        case Launch::Kind::collective:
          s += fmt::format("//   nccl {} over {} ranks, {} elements, {} bytes per rank\n", collective_name(l.collective), l.world_size,
                           l.count, l.bytes);
          break;
        case Launch::Kind::kernel:
          s += fmt::format("//   {}\n//     grid {} block {} smem {} cluster {}; {}\n", l.kernel, dims3(l.grid), dims3(l.block), l.shared_bytes,
                           dims3(l.cluster), l.config.str());
          break;
      }
    }
  }
  return s;
}

// An mj.reshape is a view of its operand when the operand has its own
// bytes in the arena (stored, or a view itself: then of that view's source)
// and the result is no graph output (outputs are read after the run, when
// the source may be gone). Arguments are never viewed: AdamW may write one
// in place. Returns the source, or kNoValue.
ValueId reshape_view_source(const Graph& graph, const Op& op, const std::vector<bool>& stored,
                            const std::vector<std::pair<ValueId, ValueId>>& aliases) {
  if (op.kind != OpKind::Reshape) return kNoValue;
  for (const auto& out : graph.outputs())
    if (out.value == op.results[0]) return kNoValue;
  ValueId source = op.operands[0];
  for (const auto& [result, of] : aliases)
    if (result == source) source = of;
  if (graph.arg_of(source) != nullptr || !stored[static_cast<std::size_t>(source)]) return kNoValue;
  return source;
}

}  // namespace

ModuleCode generate_module(const Graph& graph, const Target& target) {
  ModuleCode module;
  module.name = graph.name();
  module.target = target;
  GeneratedCode generated;
  const auto& ops = graph.ops();
  const int num_ops = static_cast<int>(ops.size());
  // Fusion groups: op indices per group id, in graph order.
  std::map<std::int64_t, std::vector<int>> groups;
  std::vector<std::int64_t> group_of(ops.size(), -1);
  for (int i = 0; i < num_ops; ++i) {
    const Op& op = ops[static_cast<std::size_t>(i)];
    if (const AttrValue* g = op.attrs.find(kFusionGroupAttr); g && std::holds_alternative<std::int64_t>(*g) &&
                                                              joins_elementwise_chain(op.kind)) {
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
  // Op groups (codegen/op_groups.cpp), found with the step of each op.
  std::vector<int> step_of_op(ops.size());
  for (int i = 0; i < num_ops; ++i) {
    const std::int64_t g = group_of[static_cast<std::size_t>(i)];
    step_of_op[static_cast<std::size_t>(i)] = g >= 0 && groups[g].size() > 1 ? groups[g].back() : i;
  }
  const std::vector<OpGroup> op_groups = find_op_groups(graph, step_of_op, target);
  std::vector<int> op_group_of(ops.size(), -1);
  for (std::size_t k = 0; k < op_groups.size(); ++k) {
    for (int m : op_groups[k].ops) op_group_of[static_cast<std::size_t>(m)] = static_cast<int>(k);
    for (ValueId v : op_groups[k].internal) stored[static_cast<std::size_t>(v)] = false;
    for (const auto& [result, argument] : op_groups[k].in_place) {
      stored[static_cast<std::size_t>(result)] = false;
      module.in_place.push_back({result, argument});
    }
  }
  for (int i = 0; i < num_ops; ++i) {
    std::int64_t g = group_of[static_cast<std::size_t>(i)];
    if (const int k = op_group_of[static_cast<std::size_t>(i)]; k >= 0) {
      const OpGroup& group = op_groups[static_cast<std::size_t>(k)];
      if (group.position != i) continue;  // the group runs at its first op
      StepCode step;
      step.ops = group.ops;
      EmitContext ctx(graph, target, group.anchor, step, generated);
      emit_op_group(ctx, group);
      module.steps.push_back(std::move(step));
      continue;
    }
    StepCode step;
    EmitContext ctx(graph, target, i, step, generated);
    if (const ValueId source = reshape_view_source(graph, ops[static_cast<std::size_t>(i)], stored, module.aliases); source != kNoValue) {
      step.ops = {i};  // a view: no launch
      stored[static_cast<std::size_t>(ops[static_cast<std::size_t>(i)].results[0])] = false;
      module.aliases.push_back({ops[static_cast<std::size_t>(i)].results[0], source});
      module.steps.push_back(std::move(step));
      continue;
    }
    if (g >= 0 && groups[g].size() > 1) {
      if (groups[g].back() != i) continue;  // the group runs at its last op
      step.ops = groups[g];
      emit_elementwise_chain(ctx, step.ops, stored);
    } else {
      step.ops = {i};
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
  for (const auto& family : generated.families) module.headers.push_back(fmt::format("codegen/kernels/{}.cuh", family));
  std::set<std::string> seen;
  for (const auto& step : module.steps)
    for (const auto& l : step.launches)
      if (l.kind == Launch::Kind::kernel && seen.insert(l.kernel).second) module.kernels.push_back(l.kernel);
  module.source = assemble_source(graph, module, generated);
  return module;
}

std::string describe_kernel_configs(const ModuleCode& module, const std::string& prefix) {
  std::map<std::pair<std::string, std::string>, int> launches;
  std::vector<std::pair<std::string, std::string>> order;
  for (const auto& step : module.steps)
    for (const auto& l : step.launches) {
      if (l.kind != Launch::Kind::kernel) continue;
      auto key = std::make_pair(l.kernel, l.config.str());
      if (launches[key]++ == 0) order.push_back(key);
    }
  std::string text;
  for (const auto& key : order) {
    int n = launches.at(key);
    text += fmt::format("{}{}: {}, {} launch{}\n", prefix, key.first, key.second, n, n == 1 ? "" : "es");
  }
  return text;
}

std::vector<int> compile_weights(const ModuleCode& module) {
  std::map<std::string, int> weight;
  for (const auto& step : module.steps)
    for (const auto& l : step.launches)
      if (l.kind == Launch::Kind::kernel) {
        const bool gemm = l.family == "gemm_sm90" || l.family == "gemm_sm90_streamk" || l.family == "gemm_sm80";
        const bool heavy = l.family == "matmul" || l.family == "model" || l.family == "attention";
        weight[l.kernel] = gemm ? 8 : heavy ? 3 : 1;
      }
  std::vector<int> weights;
  for (const auto& k : module.kernels) weights.push_back(weight.at(k));
  return weights;
}

std::string emit_cuda_source(const Graph& graph, const Target& target) { return generate_module(graph, target).source; }

}  // namespace moejit::codegen
