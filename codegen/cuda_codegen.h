// CUDA code generation: every op of ir/ops.def becomes one or more launches
// of kernels instantiated from the kernel library (codegen/kernels/*.cuh).
//
// The generated layer is thin: each kernel is an `extern "C" __global__`
// wrapper that calls one library template with the element types (and, for
// fused elementwise chains, the chain's expression) filled in; sizes travel
// as kernel arguments, so one kernel serves every op of its kind and dtype.
// A kernel's name ends in a hash of its text, so equal kernels are emitted
// once and names are stable from run to run. The module of a graph is the
// library followed by its kernels, deterministic for a given graph.
//
// Elementwise ops that the fuse-elementwise pass put in one group (the
// attribute mj.fusion_group) become one kernel; a value used only inside its
// group is never stored (see passes/fuse_elementwise.cpp).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "ir/graph.h"

namespace moejit::codegen {

// One argument of a launch, resolved to bytes by the executor.
struct KernelArg {
  enum class Kind : std::uint8_t { value, scratch, null, i32, i64, f32, f64, bytes };
  Kind kind = Kind::null;
  ValueId value = kNoValue;  // value: its device buffer
  std::int64_t number = 0;   // scratch: byte offset in the step's scratch; i32 / i64
  double real = 0.0;         // f32 / f64
  std::vector<std::byte> bytes;

  static KernelArg of(ValueId v) { return {Kind::value, v, 0, 0.0, {}}; }
  static KernelArg scratch(std::int64_t byte_offset) { return {Kind::scratch, kNoValue, byte_offset, 0.0, {}}; }
  static KernelArg none() { return {}; }
  static KernelArg i32(std::int64_t v) { return {Kind::i32, kNoValue, v, 0.0, {}}; }
  static KernelArg i64(std::int64_t v) { return {Kind::i64, kNoValue, v, 0.0, {}}; }
  static KernelArg f32(double v) { return {Kind::f32, kNoValue, 0, v, {}}; }
  static KernelArg f64(double v) { return {Kind::f64, kNoValue, 0, v, {}}; }
};

struct Launch {
  enum class Kind : std::uint8_t {
    kernel,  // kernel `kernel` with `args`
    zero,    // args[0] (a value or scratch) := `bytes` zero bytes
    copy,    // args[1] := args[0], `bytes` bytes (device to device)
  };
  Kind kind = Kind::kernel;
  std::string kernel;
  unsigned grid[3] = {1, 1, 1};
  unsigned block[3] = {256, 1, 1};
  unsigned shared_bytes = 0;  // dynamic shared memory
  std::int64_t bytes = 0;     // zero / copy
  std::vector<KernelArg> args;
};

struct KernelDef {
  std::string name;
  std::string source;
};

// What one step of the schedule runs: one op, or one fused elementwise
// chain (ops in graph order).
struct StepCode {
  std::vector<int> ops;
  std::vector<Launch> launches;
  std::int64_t scratch_bytes = 0;  // temporary device memory live during the step
};

struct ModuleCode {
  std::string name;     // from the graph's name
  std::string source;   // the kernel library, then every kernel of `kernels`
  std::vector<KernelDef> kernels;
  std::vector<StepCode> steps;    // in execution order
  std::vector<bool> materialized;  // per value: needs device storage
};

// The kernel library (codegen/kernels/*.cuh) as one string, and the
// device part of ir/philox.h inside it (embedded at build time).
const std::string& kernel_library();
const char* philox_library_part();

// Generates the module of `graph` (throws moejit::Error for what the CUDA
// backend cannot run, naming the op: rank > 8, too many experts, ...).
ModuleCode generate_module(const Graph& graph);

// The CUDA C++ of every kernel of `graph` (what `moejit opt --emit=cuda` prints).
std::string emit_cuda_source(const Graph& graph);

// The C type of a dtype in generated code ("float", "bf16_t", "bool_t", ...).
const char* cuda_type(DType dtype);

// The attribute that groups elementwise ops into one fused kernel.
inline constexpr const char* kFusionGroupAttr = "mj.fusion_group";

// ---- what an emitter sees ----
class EmitContext {
 public:
  EmitContext(const Graph& graph, int op_index, StepCode& step, std::vector<KernelDef>& kernels);

  const Graph& graph() const { return graph_; }
  const Op& op() const { return op_; }
  int op_index() const { return op_index_; }
  StepCode& step() { return step_; }
  std::vector<KernelDef>& kernels() { return kernels_; }
  const AttrList& attrs() const { return op_.attrs; }
  ValueId operand(int i) const { return op_.operands.at(static_cast<std::size_t>(i)); }
  ValueId result(int i) const { return op_.results.at(static_cast<std::size_t>(i)); }
  bool has_operand(int i) const { return static_cast<int>(op_.operands.size()) > i; }
  const TensorType& in(int i) const { return graph_.type(operand(i)); }
  const TensorType& out(int i) const { return graph_.type(result(i)); }
  // "T" of the kernel templates for operand i / result i.
  const char* in_type(int i) const { return cuda_type(in(i).dtype); }
  const char* out_type(int i) const { return cuda_type(out(i).dtype); }

  // Defines `extern "C" __global__ void <name>(params) { body }` once and
  // returns its name: mj_<stem>_<hash of the text>.
  std::string define(const std::string& stem, const std::string& params, const std::string& body);
  // Appends a kernel launch; grid is capped for grid-stride kernels by the caller.
  Launch& launch(const std::string& kernel, unsigned grid_x, std::vector<KernelArg> args, unsigned block_x = 256,
                 unsigned shared_bytes = 0);
  void zero(KernelArg target, std::int64_t bytes);
  void copy(KernelArg source, KernelArg target, std::int64_t bytes);
  // Reserves `bytes` of step scratch (256-byte aligned); returns its offset.
  std::int64_t scratch(std::int64_t bytes);
  // Error "<op>: the CUDA backend ...".
  [[noreturn]] void fail(const std::string& message) const;

 private:
  const Graph& graph_;
  const Op& op_;
  int op_index_;
  StepCode& step_;
  std::vector<KernelDef>& kernels_;
};

// Blocks for a grid-stride loop over n elements with 256 threads (at most 8192).
unsigned blocks_for(std::int64_t n, unsigned threads = 256);

// The Dims struct of the kernel library (rank, size[8], stride[8]) as bytes.
KernelArg dims_arg(const std::vector<std::int64_t>& sizes, const std::vector<std::int64_t>& strides);
// Row-major strides of a shape.
std::vector<std::int64_t> contiguous_strides(const Shape& shape);

// Declares codegen::emit_<Kind> for every op. A missing emitter is a link error.
#define MOEJIT_OP(kind, ...) void emit_##kind(EmitContext& ctx);
#include "ir/ops.def"
#undef MOEJIT_OP

// The fused kernel of an elementwise chain (op indices in graph order); used
// by generate_module for groups and by the elementwise emitters for one op.
void emit_elementwise_chain(const Graph& graph, const std::vector<int>& ops, const std::vector<bool>& stored, StepCode& step,
                            std::vector<KernelDef>& kernels);

}  // namespace moejit::codegen
