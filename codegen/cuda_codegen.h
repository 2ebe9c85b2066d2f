// CUDA code generation: every op of ir/ops.def becomes one or more launches
// of kernel templates from the kernel families (codegen/kernels/*.cuh).
//
// A family is an ordinary CUDA header: argument structs declared once and
// shared by this host code and NVRTC, and kernel templates over element
// types, tile shape and functors, each taking its one argument struct
// (`__global__ void softmax_kernel<T, LOG, THREADS>(const SoftmaxArgs<T>)`).
// An emitter fills the struct on the host, names the device buffers of its
// pointer fields (the executor patches them once buffers are allocated),
// and names the instantiation; the generated layer is only that name (given
// to NVRTC with nvrtcAddNameExpression) plus the functors of fused
// elementwise chains. The module of a graph includes only the families its
// launches use, and is deterministic for a given graph and target.
//
// Elementwise ops that the fuse-elementwise pass put in one group (the
// attribute mj.fusion_group) become one chain; a value used only inside its
// group is never stored (see passes/fuse_elementwise.cpp).
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "codegen/kernels/common.cuh"
#include "codegen/kernels/elementwise.cuh"
#include "codegen/target.h"
#include "codegen/tile_config.h"
#include "ir/graph.h"

namespace moejit::codegen {

// A device buffer a launch reads or writes: a value's storage (from `offset`
// bytes into it: a view, e.g. k and v of a packed qkv), a byte offset into
// the step's scratch, or nothing (a null pointer).
struct Buffer {
  enum class Kind : std::uint8_t { null, value, scratch };
  Kind kind = Kind::null;
  ValueId value = kNoValue;
  std::int64_t offset = 0;  // bytes from the value's (or the step's scratch) start

  static Buffer of(ValueId v) { return {Kind::value, v, 0}; }
  static Buffer scratch(std::int64_t byte_offset) { return {Kind::scratch, kNoValue, byte_offset}; }
  static Buffer none() { return {}; }
};

// A pointer field of a launch's argument struct: 8 bytes at `offset` that
// the executor sets to the buffer's device address.
struct PointerField {
  std::uint32_t offset = 0;
  Buffer buffer;
};

// A TmaDescriptor field (codegen/kernels/common.cuh) that the executor
// encodes with cuTensorMapEncodeTiled once the arena is allocated (before
// any CUDA-graph capture). Dims and strides are in elements, innermost
// first as the driver wants them; strides[0] is 1 and implicit.
struct TensorMapField {
  enum class Swizzle : std::uint8_t { none, b32, b64, b128 };
  std::uint32_t offset = 0;
  Buffer buffer;
  DType dtype = DType::f32;
  int rank = 2;                       // 1..5
  std::int64_t dims[5] = {1, 1, 1, 1, 1};
  std::int64_t strides[5] = {1, 1, 1, 1, 1};
  std::uint32_t box[5] = {1, 1, 1, 1, 1};
  Swizzle swizzle = Swizzle::b128;    // out-of-bounds elements always read as zero
};

struct Launch {
  enum class Kind : std::uint8_t {
    kernel,  // `kernel` with `args`
    zero,    // dst := `bytes` zero bytes
    copy,    // dst := src, `bytes` bytes (device to device)
    collective,  // NCCL on the executor's stream (codegen/emit_comm.cpp): see Collective
  };
  // all_reduce (sum), all_gather, reduce_scatter (sum): `count` elements of
  // `dtype` per rank (all_gather: sent; reduce_scatter: received), src -> dst.
  // exchange: block p of src (`bytes` each) to rank p, block s of dst from
  // rank s, and likewise one i32 of src_counts / dst_counts per rank.
  enum class Collective : std::uint8_t { all_reduce, all_gather, reduce_scatter, exchange };
  Kind kind = Kind::kernel;
  Collective collective = Collective::all_reduce;
  DType dtype = DType::f32;     // collective
  std::int64_t count = 0;       // collective
  int world_size = 1;           // collective: the ranks the graph was built for
  Buffer src_counts, dst_counts;  // collective exchange
  std::string family;  // "matmul" for codegen/kernels/matmul.cuh
  std::string kernel;  // the instantiation: "mj::softmax_kernel<float, 0, 256>"
  TileConfig config;   // sets block, cluster and the template arguments
  unsigned grid[3] = {1, 1, 1};
  unsigned block[3] = {256, 1, 1};
  unsigned cluster[3] = {1, 1, 1};
  unsigned shared_bytes = 0;  // dynamic shared memory
  std::vector<std::byte> args;  // the family's argument struct, pointer fields zero
  std::vector<PointerField> pointers;
  std::vector<TensorMapField> tensor_maps;
  std::int64_t bytes = 0;  // zero / copy / collective exchange (per rank)
  Buffer src, dst;         // zero / copy / collective
};

// "all_reduce", "all_gather", "reduce_scatter", "exchange" (codegen/emit_comm.cpp).
const char* collective_name(Launch::Collective collective);

// What one step of the schedule runs: one op, or one fused elementwise
// chain (ops in graph order).
struct StepCode {
  std::vector<int> ops;
  std::vector<Launch> launches;
  std::int64_t scratch_bytes = 0;  // temporary device memory live during the step
};

struct ModuleCode {
  std::string name;    // from the graph's name
  Target target;
  std::string source;  // the includes, generated functors, and one comment per launch
  std::vector<std::string> headers;  // the families included ("codegen/kernels/matmul.cuh")
  std::vector<std::string> kernels;  // every instantiation, once, in first-use order
  std::vector<StepCode> steps;       // in execution order
  std::vector<bool> materialized;    // per value: needs device storage
  // (result, argument): the result is written into the argument's buffer
  // and the output that updates the argument needs no copy (AdamW's new
  // parameters and moments, codegen/op_groups.cpp). Not materialized.
  std::vector<std::pair<ValueId, ValueId>> in_place;
  // (result, source): an mj.reshape whose result is a view of its operand's
  // bytes (no launch; the source, itself never an alias, stays alive while
  // the result is read). In graph order. Not materialized.
  std::vector<std::pair<ValueId, ValueId>> aliases;
};

// One embedded header: its path in the source tree (the name NVRTC gets)
// and its text. kernel_headers() holds ir/philox.h and every
// codegen/kernels/*.cuh, embedded by CMake at configure time.
struct KernelHeader {
  const char* name;
  const char* text;
};
const std::vector<KernelHeader>& kernel_headers();
const KernelHeader* find_kernel_header(std::string_view name);

// Generates the module of `graph` for `target` (throws moejit::Error for
// what the CUDA backend cannot run, naming the op: rank > 8, too many
// experts, a tile attribute the family cannot take, ...).
ModuleCode generate_module(const Graph& graph, const Target& target);

// One line per distinct (instantiation, config) of the module, in first-use
// order: "<prefix><kernel>: <config, source> , N launches" (MOEJIT_DEBUG=1).
std::string describe_kernel_configs(const ModuleCode& module, const std::string& prefix);

// The expected NVRTC cost of each of module.kernels, by family (for
// cuda::compile_module_parts): the tensor-core GEMM 8, the SIMT tiles and
// attention 3, the rest 1.
std::vector<int> compile_weights(const ModuleCode& module);

// The CUDA C++ of `graph`'s module (what `moejit opt --emit=cuda` prints).
std::string emit_cuda_source(const Graph& graph, const Target& target);

// The C type of a dtype inside generated code in namespace mj ("float",
// "bf16_t", "bool_t", ...), and the same type spelled for a template
// argument of a name expression ("float", "mj::bf16_t", "mj::bool_t").
const char* cuda_type(DType dtype);
std::string template_type(DType dtype);

// "mj::<name><arg0, arg1, ...>": the spelling of an instantiation.
std::string instantiation(std::string_view name, std::initializer_list<std::string> template_args);

// The attribute that groups elementwise ops into one fused kernel.
inline constexpr const char* kFusionGroupAttr = "mj.fusion_group";

// A pointer field of an argument struct and the buffer it points to, for
// EmitContext::launch: {&args.x, Buffer::of(v)}.
struct Bind {
  const void* field;
  Buffer buffer;
};
struct TensorMapBind {
  const void* field;
  TensorMapField map;  // offset is filled in from `field`
};

// What emitters add to a module besides launches.
struct GeneratedCode {
  std::set<std::string> families;  // stems of the headers to include
  std::vector<std::pair<std::string, std::string>> functors;  // (name, definition), in definition order
};

// ---- what an emitter sees ----
class EmitContext {
 public:
  EmitContext(const Graph& graph, const Target& target, int op_index, StepCode& step, GeneratedCode& generated);

  const Graph& graph() const { return graph_; }
  const Target& target() const { return target_; }
  const Op& op() const { return op_; }
  int op_index() const { return op_index_; }
  StepCode& step() { return step_; }
  const AttrList& attrs() const { return op_.attrs; }
  ValueId operand(int i) const { return op_.operands.at(static_cast<std::size_t>(i)); }
  ValueId result(int i) const { return op_.results.at(static_cast<std::size_t>(i)); }
  bool has_operand(int i) const { return static_cast<int>(op_.operands.size()) > i; }
  const TensorType& in(int i) const { return graph_.type(operand(i)); }
  const TensorType& out(int i) const { return graph_.type(result(i)); }
  // The template-argument spelling of operand i's / result i's element type.
  std::string in_type(int i) const { return template_type(in(i).dtype); }
  std::string out_type(int i) const { return template_type(out(i).dtype); }
  // Whether any op or graph output reads `value` (an unused result of a
  // multi-result op need not be computed).
  bool used(ValueId value) const;

  // Appends a launch of `kernel` (an instantiation of family `family`, the
  // stem of codegen/kernels/<family>.cuh) with the argument struct `args`:
  // its bytes are copied, and each Bind names a pointer field inside `args`
  // and its buffer. The block is config.threads; cluster from the config;
  // dynamic shared memory above 48 KiB must fit the target's opt-in.
  template <class Args>
  Launch& launch(const char* family, std::string kernel, const TileConfig& config, std::initializer_list<unsigned> grid,
                 const Args& args, const std::vector<Bind>& pointers, unsigned shared_bytes = 0,
                 const std::vector<TensorMapBind>& tensor_maps = {}) {
    return launch_bytes(family, std::move(kernel), config, grid, &args, sizeof(Args), pointers, shared_bytes, tensor_maps);
  }
  // Defines `struct <name> { <members> };` in namespace mj of the module once
  // and returns its name, <stem>_<hash of the text>: the functor template
  // argument of a kernel (a fused chain).
  std::string define_functor(const std::string& stem, const std::string& members);
  void zero(Buffer target, std::int64_t bytes);
  void copy(Buffer source, Buffer target, std::int64_t bytes);
  // Reserves `bytes` of step scratch (256-byte aligned); returns its offset.
  std::int64_t scratch(std::int64_t bytes);
  // Error "<op>: the CUDA backend ...".
  [[noreturn]] void fail(const std::string& message) const;

 private:
  Launch& launch_bytes(const char* family, std::string kernel, const TileConfig& config, std::initializer_list<unsigned> grid,
                       const void* args, std::size_t size, const std::vector<Bind>& pointers, unsigned shared_bytes,
                       const std::vector<TensorMapBind>& tensor_maps);

  const Graph& graph_;
  const Target& target_;
  const Op& op_;
  int op_index_;
  StepCode& step_;
  GeneratedCode& generated_;
};

// A 0/1 environment switch; unset: `fallback`; anything else throws, naming it.
bool env_flag(const char* name, bool fallback);
// MOEJIT_WARP_KERNELS (default 1; 0: the loop forms, to compare with):
// moe.gate and moe.gate_grad with the picks in registers and lanes (no
// chains of dependent loads over K), and a warp per output for reductions
// of many outputs of 65..4096 elements. Measured on the H200 on 12-03: the
// D1536 E128 K8 layer 3.2% faster, config B's step unchanged within noise.
bool warp_kernels_enabled();

// Blocks for a grid-stride loop over n elements (at most 8192).
unsigned blocks_for(std::int64_t n, unsigned threads = 256);
// Tiles of `tile` covering n (at least 1).
unsigned tiles(std::int64_t n, std::int64_t tile);
// A persistent grid: `blocks_per_sm` blocks on each of the target's SMs,
// never more than the `work` items the blocks walk (at least 1).
unsigned persistent_grid(const Target& target, std::int64_t work, int blocks_per_sm = 1);

// Row-major strides of a shape, and the kernels' Dims of (sizes, strides).
std::vector<std::int64_t> contiguous_strides(const Shape& shape);
mj::Dims make_dims(const std::vector<std::int64_t>& sizes, const std::vector<std::int64_t>& strides);

// The functor of an elementwise chain (op indices in graph order, the ops
// fuse-elementwise groups, an mj.broadcast included): the values it reads
// (a.in, in order), the values it stores (a.out) and its arguments
// (binds(args) names their pointer fields inside `args`, a copy of `args`
// inside a larger struct included). `stored(v)`: whether a member's result
// is written. returns_last: the functor is `value(a, i)`, which returns the
// last op's value instead of storing it (a kernel that consumes the chain,
// the fused reductions); else apply / apply8 / packed of elementwise_kernel.
struct ChainFunctor {
  std::string functor;  // "mj::chain_..."
  mj::ElementwiseArgs args{};
  std::vector<ValueId> inputs, outputs;
  std::int64_t n = 0;
  std::vector<Bind> binds(const mj::ElementwiseArgs& at) const;
};
ChainFunctor chain_functor(EmitContext& ctx, const std::vector<int>& ops, const std::function<bool(ValueId)>& stored, bool returns_last);
// The kernel of an elementwise chain (ctx is at the last op); used by
// generate_module for groups and by the elementwise emitters for one op.
// `stored`: per value, whether it is written.
void emit_elementwise_chain(EmitContext& ctx, const std::vector<int>& ops, const std::vector<bool>& stored);
// A sum / mean / max (ctx is at it) of the last value of the chain `ops`,
// computed per element in the reduction kernel (op group reduce_chain).
void emit_reduction_of_chain(EmitContext& ctx, const std::vector<int>& ops);
// ctx at a moe.permute_grad: out = addend + its result (op group combine_add).
void emit_permute_grad_with_addend(EmitContext& ctx, Buffer addend, ValueId out);

// A residual add fused into the norm it feeds (codegen/emit_dense.cpp):
// whether `add`'s result is `norm_op`'s x and one kernel can do both (equal
// shapes, float, rows of at most 1024; it writes the add's result and the
// norm's).
bool norm_takes_residual(const Graph& graph, const Op& norm_op, const Op& add);
// An mj.cast of a norm's f32 result to bf16 (the copy a bf16 matmul reads),
// written by the norm's row kernel (rows of at most 1024), and the emitter of
// the norm with the add feeding it and / or that cast (either may be null;
// ctx at the norm; store_y false: the f32 result is read by nothing else).
bool norm_takes_cast(const Graph& graph, const Op& norm_op, const Op& cast);
// An mj.cast to f32 of a bf16 tensor that is one operand of that add (the
// mixed-precision residual x + f32(product)): the row kernel reads the bf16
// tensor and widens it, the f32 copy is never stored.
bool add_takes_widened(const Graph& graph, const Op& add, const Op& cast);
// The same as a norm backward's dy (f32, rows the warp row kernel takes).
bool norm_grad_takes_widened_dy(const Graph& graph, const Op& norm_grad_op, const Op& add, const Op& cast);
void emit_norm_group(EmitContext& ctx, const Op* add, const Op* cast, bool store_y, const Op* widened = nullptr);
// The backward's add of a norm's dx and another gradient, fused into the
// norm backward's row kernel (equal shapes, float, rows of at most 1024;
// it writes the add's result instead of dx).
bool norm_grad_takes_addend(const Graph& graph, const Op& norm_grad_op, const Op& add);
// An mj.cast to bf16 of what that row kernel writes (dx, or the add's result
// when `add` is set): written by the kernel too (the bf16 residual gradient
// the next matmul backward reads); the emitter of the norm backward with
// the add and / or the cast (either may be null; ctx at the norm backward).
bool norm_grad_takes_cast(const Graph& graph, const Op& norm_grad_op, const Op* add, const Op& cast);
// dy_add / dy_cast (or null): dy = f32 tensor + f32(bf16 tensor), a fused
// two-op chain (add_takes_widened) the row kernel computes from both.
void emit_norm_grad_group(EmitContext& ctx, const Op* add, const Op* cast, const Op* dy_add = nullptr, const Op* dy_cast = nullptr);

// An elementwise op folded into the epilogue of the GEMM producing its
// operand (passes/fuse_gemm_epilogue.cpp): what the GEMM's emitter writes
// instead of its plain result.
//   gelu:      `out` = gelu(product); `aux` = the product (the GEMM's own
//              result) when it is stored, else none;
//   gelu_grad: `out` = gelu_grad(aux, product), `aux` the pre-activation;
//   widen:     `out` (f32) = the product rounded to its 16-bit type and
//              widened (an mj.cast to f32); `aux` = the product when it is
//              stored, else none.
// gathered_rows (moe.gather_matmul): a moe.permute result of the same rows,
// written with the rows the GEMM reads (instead of a scratch copy).
struct GemmEpilogue {
  enum class Kind : std::uint8_t { store, gelu, gelu_grad, widen };
  Kind kind = Kind::store;
  Buffer out, aux;
  Buffer gathered_rows;
};
// Whether the GEMM family serving `gemm` (mj.matmul, moe.grouped_matmul,
// moe.gather_matmul, and for widen moe.grouped_matmul_wgrad) on `target` has
// the epilogue `kind` (sm90 and sm80 families, 16-bit results; a split-K
// product only widen without aux, in its finish kernel), and the emitters of
// the GEMM with it (ctx at the GEMM).
bool gemm_has_epilogue(const Graph& graph, const Op& gemm, const Target& target, GemmEpilogue::Kind kind, bool aux);
void emit_matmul_with_epilogue(EmitContext& ctx, const GemmEpilogue& epilogue);
void emit_grouped_with_epilogue(EmitContext& ctx, const GemmEpilogue& epilogue);
void emit_wgrad_with_epilogue(EmitContext& ctx, const GemmEpilogue& epilogue);

// Ops of different kinds emitted as one step (codegen/op_groups.cpp says
// which and when): a residual add with the norm it feeds, a norm
// backward with the gradient add after it, the squares of
// the global gradient norm, every AdamW of a step, a GEMM and the
// GELU (backward) folded into its epilogue. The group runs at
// `position` (its first member); `internal` values are read only inside
// it and never stored.
struct OpGroup {
  enum class Kind : std::uint8_t { add_norm, norm_grad_add, sum_squares, adamw, gemm_epilogue, weight_casts, reduce_chain, combine_add };
  Kind kind;
  int position = 0;
  int anchor = 0;  // the op whose EmitContext emits the group
  std::vector<int> ops;  // graph order
  std::vector<ValueId> internal;
  std::vector<std::pair<ValueId, ValueId>> in_place;  // see ModuleCode::in_place
  bool runs_at_anchor = false;  // position = anchor, not the first member (op_groups.cpp, add_widened_dy)
};
// step_of_op: per op, the op index at which its step runs (its own index,
// or the last op of its fused elementwise group).
std::vector<OpGroup> find_op_groups(const Graph& graph, const std::vector<int>& step_of_op, const Target& target);
// ctx is at the group's anchor.
void emit_op_group(EmitContext& ctx, const OpGroup& group);

// Declares codegen::emit_<Kind> for every op. A missing emitter is a link error.
#define MOEJIT_OP(kind, ...) void emit_##kind(EmitContext& ctx);
#include "ir/ops.def"
#undef MOEJIT_OP

}  // namespace moejit::codegen
