// The CUDA backend's executor. compile(): verify, run the backend's pipeline
// (kCudaPipeline: the MoE fusions, expert tiling, elementwise fusion groups),
// generate the module for the device's Target, compile it with NVRTC
// (cached, kernels found by their lowered names), plan the arena, and
// resolve every launch once (buffers never move): copy its argument struct,
// patch the pointer fields with device addresses, encode its TMA
// descriptors, and look up the function. run(): the launches on one stream, then the copies of
// updated arguments (AdamW's parameters and moments) into their buffers; or
// one replay of the captured CUDA graph.
//
// Device memory: one buffer per argument (kept across runs) and one arena
// for every intermediate value and per-step scratch (passes/memory_plan.h).
//
// MOEJIT_PROFILE=1 (read when an executable is built): a CUDA event after
// every launch, each run's per-launch times collected before the next run,
// and a table per op kind and kernel printed to stderr when the executable
// is destroyed (cuda_profile_report gives the same text). Profiling syncs
// the host after every run; the times are the GPU's.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <map>

#include "codegen/cuda_codegen.h"
#include "ir/error.h"
#include "ir/verifier.h"
#include "passes/memory_plan.h"
#include "passes/pass_manager.h"
#include "runtime/cuda/cuda_backend.h"
#include "runtime/cuda/driver.h"
#include "runtime/cuda/nccl_communicator.h"
#include "runtime/executable.h"
#include "runtime/cuda/nvrtc_compiler.h"

namespace moejit {

namespace {

using codegen::Buffer;
using codegen::Launch;

struct ResolvedLaunch {
  Launch::Kind kind = Launch::Kind::kernel;
  std::string label;  // profile row: "moe.gather_matmul  mj::permute_kernel"
  CUfunction function = nullptr;
  unsigned grid[3] = {1, 1, 1}, block[3] = {1, 1, 1}, cluster[3] = {1, 1, 1}, shared_bytes = 0;
  // The argument struct, 64-byte aligned (TMA descriptors inside must be).
  std::vector<mj::TmaDescriptor> storage;
  void* params[1] = {nullptr};  // the kernel's one parameter: the struct
  CUdeviceptr dst = 0, src = 0;
  std::int64_t bytes = 0;
  cuda::CollectiveCall collective;  // Launch::Kind::collective
};

CUtensorMapDataType tensor_map_dtype(DType dtype) {
  switch (dtype) {
    case DType::f32: return CU_TENSOR_MAP_DATA_TYPE_FLOAT32;
    case DType::f64: return CU_TENSOR_MAP_DATA_TYPE_FLOAT64;
    case DType::bf16: return CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
    case DType::f16: return CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
    case DType::i32: return CU_TENSOR_MAP_DATA_TYPE_INT32;
    case DType::i64: return CU_TENSOR_MAP_DATA_TYPE_INT64;
    case DType::i1: return CU_TENSOR_MAP_DATA_TYPE_UINT8;
  }
  return CU_TENSOR_MAP_DATA_TYPE_FLOAT32;
}

CUtensorMapSwizzle tensor_map_swizzle(codegen::TensorMapField::Swizzle s) {
  switch (s) {
    case codegen::TensorMapField::Swizzle::none: return CU_TENSOR_MAP_SWIZZLE_NONE;
    case codegen::TensorMapField::Swizzle::b32: return CU_TENSOR_MAP_SWIZZLE_32B;
    case codegen::TensorMapField::Swizzle::b64: return CU_TENSOR_MAP_SWIZZLE_64B;
    case codegen::TensorMapField::Swizzle::b128: return CU_TENSOR_MAP_SWIZZLE_128B;
  }
  return CU_TENSOR_MAP_SWIZZLE_NONE;
}

class CudaExecutable final : public ExecutableBase {
 public:
  CudaExecutable(const Graph& input, std::string_view pipeline)
      : ExecutableBase(prepared(input, pipeline)), graph_(ExecutableBase::graph()) {
    target_ = cuda_device_target();
    code_ = codegen::generate_module(graph_, target_);
    if (debug_level() >= 3)
      std::fprintf(stderr, "moejit cuda: generated source of @%s:\n%s\n", graph_.name().c_str(), code_.source.c_str());
    auto before = cuda_compile_stats();
    auto start = std::chrono::steady_clock::now();
    // A target older than the device (MOEJIT_ARCH) is compiled to its PTX,
    // which cuModuleLoadData JIT-compiles for the device.
    const bool jit = target_.arch != cuda_device_info().arch();
    cuda::CompileRequest request{code_.source, graph_.name(), jit ? target_.ptx_arch() : target_.arch,
                                 jit ? cuda::CompileOutput::ptx : cuda::CompileOutput::cubin, true, {}};
    request.name_expressions = code_.kernels;
    compiled_ = cuda::compile_module_parts(request, cuda::compile_parts(code_.kernels.size()), codegen::compile_weights(code_));
    if (debug_level() >= 1) {
      auto after = cuda_compile_stats();
      const char* how = after.compiles > before.compiles ? "compiled by NVRTC" : after.disk_hits > before.disk_hits ? "loaded from the disk cache" : "found in memory";
      std::fprintf(stderr, "moejit cuda: module @%s (%zu kernels in %zu parts, %zu launches, families:%s) for %s: %s in %.3f s\n",
                   graph_.name().c_str(), code_.kernels.size(), compiled_.size(), launch_count(), families().c_str(), request.arch.c_str(), how,
                   std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
      std::string parts;  // NVRTC seconds and kernels per part: the slowest part is the compile's wall time
      for (const auto& part : compiled_)
        parts += fmt::format(" {:.2f} s/{}", part.nvrtc_seconds, part.lowered_names.size());
      std::fprintf(stderr, "moejit cuda:   parts (NVRTC s/kernels):%s\n", parts.c_str());
      std::fputs(codegen::describe_kernel_configs(code_, "moejit cuda:   ").c_str(), stderr);
    }
    for (const auto& part : compiled_) {
      CUmodule m = nullptr;
      MOEJIT_CU(cuModuleLoadData, &m, part.binary.data());
      modules_.push_back(m);
    }
    MOEJIT_CU(cuStreamCreate, &stream_, CU_STREAM_NON_BLOCKING);
    MOEJIT_CU(cuEventCreate, &start_, CU_EVENT_DEFAULT);
    MOEJIT_CU(cuEventCreate, &stop_, CU_EVENT_DEFAULT);
    allocate();
    resolve();
    const char* profile = std::getenv("MOEJIT_PROFILE");
    profiling_ = profile && *profile && std::string(profile) != "0";
    if (profiling_) {
      profile_events_.resize(launches_.size() + 1);
      for (auto& e : profile_events_) MOEJIT_CU(cuEventCreate, &e, CU_EVENT_DEFAULT);
      profile_ms_.resize(launches_.size());
    }
  }

  // The passes the backend runs before generating code: its pipeline
  // (kCudaPipeline unless the backend was made with another,
  // passes/pipelines.cpp) through the PassManager, which verifies the graph
  // after every pass; MOEJIT_DEBUG=2 prints the IR after each pass and the
  // passes' statistics.
  static void prepare_graph(Graph& graph, std::string_view pipeline) {
    PassManager manager;
    manager.add_pipeline(pipeline);
    manager.run(graph);
    if (debug_level() >= 2) manager.print_statistics(std::cerr);
  }
  static Graph prepared(const Graph& input, std::string_view pipeline) {
    cuda::driver();  // throws with the reason when there is no usable GPU
    Graph graph = input;
    prepare_graph(graph, pipeline);
    return graph;
  }

  HostTensor download(ValueId value) const {
    HostTensor result(graph_.type(value));
    MOEJIT_CU(cuStreamSynchronize, stream_);
    MOEJIT_CU(cuMemcpyDtoH, result.raw(), value_ptr_[static_cast<std::size_t>(value)], result.bytes());
    return result;
  }

  ~CudaExecutable() override {
    const auto& d = cuda::driver();
    if (stream_) d.cuStreamSynchronize(stream_);
    if (profiling_) {
      try {
        collect_profile();
        if (profile_runs_ > 0) std::fputs(profile_report().c_str(), stderr);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "moejit cuda: profile of @%s lost: %s\n", graph_.name().c_str(), e.what());
      }
      for (CUevent e : profile_events_)
        if (e) d.cuEventDestroy(e);
    }
    if (graph_exec_) d.cuGraphExecDestroy(graph_exec_);
    if (cuda_graph_) d.cuGraphDestroy(cuda_graph_);
    for (CUdeviceptr p : arg_buffers_)
      if (p) d.cuMemFree(p);
    if (arena_) d.cuMemFree(arena_);
    if (start_) d.cuEventDestroy(start_);
    if (stop_) d.cuEventDestroy(stop_);
    if (stream_) d.cuStreamDestroy(stream_);
    for (CUmodule m : modules_) d.cuModuleUnload(m);
  }

  // ExecutableBase checks names, types and binding; these keep the tensors on the device.
  void store_arg(int index, const HostTensor& value) override {
    // The copy goes on the executable's own stream, then waits for it. A
    // plain cuMemcpyHtoD runs on the legacy stream, which this non-blocking
    // stream does not wait for, and from pageable memory it may return before
    // the DMA lands: the next run's kernels could read the buffer's old bytes.
    MOEJIT_CU(cuStreamSynchronize, stream_);
    MOEJIT_CU(cuMemcpyHtoDAsync, arg_buffers_[static_cast<std::size_t>(index)], value.raw(), value.bytes(), stream_);
    MOEJIT_CU(cuStreamSynchronize, stream_);  // `value` may be freed once this returns
    uploaded_[static_cast<std::size_t>(index)] = true;
  }

  HostTensor load_arg(int index) const override { return download(graph_.args()[static_cast<std::size_t>(index)].value); }

  HostTensor load_output(int index) const override { return download(graph_.outputs()[static_cast<std::size_t>(index)].value); }

  // Asynchronous: the next get() (or last_run_ms) waits.
  void run_bound() override {
    if (profiling_) collect_profile();
    MOEJIT_CU(cuEventRecord, start_, stream_);
    if (graph_exec_) {
      MOEJIT_CU(cuGraphLaunch, graph_exec_, stream_);
    } else {
      issue();
    }
    MOEJIT_CU(cuEventRecord, stop_, stream_);
  }

  void capture() {
    for (std::size_t i = 0; i < uploaded_.size(); ++i)
      if (!uploaded_[i]) throw Error("cuda_capture_graph: bind every argument before capturing (the first run checks them)");
    if (graph_exec_) return;
    MOEJIT_CU(cuStreamSynchronize, stream_);
    MOEJIT_CU(cuStreamBeginCapture, stream_, CU_STREAM_CAPTURE_MODE_RELAXED);
    try {
      issue(true);
    } catch (...) {
      CUgraph broken = nullptr;
      cuda::driver().cuStreamEndCapture(stream_, &broken);
      if (broken) cuda::driver().cuGraphDestroy(broken);
      throw;
    }
    MOEJIT_CU(cuStreamEndCapture, stream_, &cuda_graph_);
    MOEJIT_CU(cuGraphInstantiate, &graph_exec_, cuda_graph_, 0);
  }

  double last_run_ms() {
    MOEJIT_CU(cuEventSynchronize, stop_);
    float ms = 0.0f;
    MOEJIT_CU(cuEventElapsedTime, &ms, start_, stop_);
    return ms;
  }

  // Per op kind and kernel: launches per run, the median over profiled runs
  // of their summed time, and the share of the run.
  std::string profile_report() {
    collect_profile();
    if (!profiling_) return "moejit cuda: profiling is off (set MOEJIT_PROFILE=1 before building the executable)\n";
    struct Row {
      int launches = 0;
      std::vector<double> per_run;
    };
    std::map<std::string, Row> rows;
    std::vector<double> totals(static_cast<std::size_t>(profile_runs_), 0.0);
    for (std::size_t i = 0; i < launches_.size(); ++i) {
      Row& row = rows[launches_[i].label];
      row.launches += 1;
      row.per_run.resize(static_cast<std::size_t>(profile_runs_), 0.0);
      for (int r = 0; r < profile_runs_; ++r) {
        row.per_run[static_cast<std::size_t>(r)] += profile_ms_[i][static_cast<std::size_t>(r)];
        totals[static_cast<std::size_t>(r)] += profile_ms_[i][static_cast<std::size_t>(r)];
      }
    }
    auto median = [](std::vector<double> v) {
      if (v.empty()) return 0.0;
      std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2), v.end());
      return v[v.size() / 2];
    };
    std::vector<std::pair<double, std::string>> sorted;
    for (auto& [label, row] : rows) sorted.emplace_back(median(row.per_run), label);
    std::sort(sorted.begin(), sorted.end(), std::greater<>());
    const double total = median(totals);
    std::string text = fmt::format("moejit cuda: profile of @{}: {} launches, median of {} runs {:.1f} us (GPU time between launches, events)\n",
                                   graph_.name(), launches_.size(), profile_runs_, total * 1000.0);
    text += fmt::format("  {:>10} {:>6} {:>8}  {}\n", "us/run", "%", "launches", "op kind / kernel");
    for (const auto& [ms, label] : sorted)
      text += fmt::format("  {:>10.1f} {:>6.1f} {:>8}  {}\n", ms * 1000.0, total > 0 ? 100.0 * ms / total : 0.0, rows[label].launches, label);
    return text;
  }

 private:
  // Reads the per-launch times of the last run (waits for it).
  void collect_profile() {
    if (!profiling_ || !profile_pending_) return;
    profile_pending_ = false;
    MOEJIT_CU(cuEventSynchronize, profile_events_.back());
    for (std::size_t i = 0; i < launches_.size(); ++i) {
      float ms = 0.0f;
      MOEJIT_CU(cuEventElapsedTime, &ms, profile_events_[i], profile_events_[i + 1]);
      profile_ms_[i].push_back(ms);
    }
    ++profile_runs_;
  }

  static int debug_level() {
    const char* v = std::getenv("MOEJIT_DEBUG");
    return v ? std::atoi(v) : 0;
  }

  std::string families() const {
    std::string text;
    for (const auto& h : code_.headers) text += " " + h.substr(h.rfind('/') + 1);
    return text;
  }

  std::size_t launch_count() const {
    std::size_t n = 0;
    for (const auto& step : code_.steps) n += step.launches.size();
    return n;
  }

  void allocate() {
    const auto& args = graph_.args();
    value_ptr_.assign(static_cast<std::size_t>(graph_.num_values()), 0);
    arg_buffers_.assign(args.size(), 0);
    uploaded_.assign(args.size(), false);
    for (std::size_t i = 0; i < args.size(); ++i) {
      std::size_t bytes = std::max<std::size_t>(graph_.type(args[i].value).bytes(), 1);
      MOEJIT_CU(cuMemAlloc, &arg_buffers_[i], bytes);
      value_ptr_[static_cast<std::size_t>(args[i].value)] = arg_buffers_[i];
    }
    std::vector<ValueId> view_source(static_cast<std::size_t>(graph_.num_values()));
    for (int v = 0; v < graph_.num_values(); ++v) view_source[static_cast<std::size_t>(v)] = v;
    for (const auto& [result, source] : code_.aliases) view_source[static_cast<std::size_t>(result)] = source;
    std::vector<MemoryPlanStep> steps;
    for (const auto& step : code_.steps) {
      MemoryPlanStep s;
      s.scratch_bytes = step.scratch_bytes;
      for (int index : step.ops) {
        const Op& op = graph_.ops()[static_cast<std::size_t>(index)];
        for (ValueId v : op.operands)
          if (graph_.arg_of(v) == nullptr) s.uses.push_back(view_source[static_cast<std::size_t>(v)]);  // a view keeps its source alive
        for (ValueId v : op.results)
          if (code_.materialized[static_cast<std::size_t>(v)]) s.defines.push_back(v);
      }
      // A launch may read values its ops do not name (a weight gradient that
      // gathers a moe.permute's rows reads the permute's x and slots): every
      // value a launch binds lives through its step.
      auto binds = [&](const Buffer& b) {
        if (b.kind == Buffer::Kind::value && graph_.arg_of(b.value) == nullptr) s.uses.push_back(view_source[static_cast<std::size_t>(b.value)]);
      };
      for (const auto& launch : step.launches) {
        for (const auto& p : launch.pointers) binds(p.buffer);
        for (const auto& m : launch.tensor_maps) binds(m.buffer);
        for (const Buffer* b : {&launch.src, &launch.dst, &launch.src_counts, &launch.dst_counts}) binds(*b);
      }
      steps.push_back(std::move(s));
    }
    plan_ = plan_memory(graph_, steps);
    MOEJIT_CU(cuMemAlloc, &arena_, static_cast<std::size_t>(std::max<std::int64_t>(plan_.arena_bytes, 256)));
    // Poison (all bits set: NaN for floats, -1 for ints), so an element no
    // kernel writes shows up in the comparisons with the CPU.
    MOEJIT_CU(cuMemsetD8Async, arena_, 0xFF, static_cast<std::size_t>(std::max<std::int64_t>(plan_.arena_bytes, 256)), stream_);
    for (int v = 0; v < graph_.num_values(); ++v)
      if (plan_.offsets[static_cast<std::size_t>(v)] >= 0)
        value_ptr_[static_cast<std::size_t>(v)] = arena_ + static_cast<CUdeviceptr>(plan_.offsets[static_cast<std::size_t>(v)]);
    for (const auto& [result, source] : code_.aliases)
      value_ptr_[static_cast<std::size_t>(result)] = value_ptr_[static_cast<std::size_t>(source)];
    // Results written in place (AdamW's updates) live in their argument's buffer.
    for (const auto& [result, argument] : code_.in_place)
      value_ptr_[static_cast<std::size_t>(result)] = value_ptr_[static_cast<std::size_t>(argument)];
  }

  CUdeviceptr pointer(const Buffer& buffer, std::size_t step) const {
    if (buffer.kind == Buffer::Kind::value) {
      CUdeviceptr p = value_ptr_[static_cast<std::size_t>(buffer.value)];
      MOEJIT_ASSERT(p != 0, fmt::format("value {} has no device buffer", buffer.value));
      return p + static_cast<CUdeviceptr>(buffer.offset);
    }
    if (buffer.kind == Buffer::Kind::scratch) {
      MOEJIT_ASSERT(plan_.scratch_offsets[step] >= 0, "scratch without a plan");
      return arena_ + static_cast<CUdeviceptr>(plan_.scratch_offsets[step] + buffer.offset);
    }
    return 0;
  }

  // The function of instantiation `kernel`, with its dynamic shared memory
  // limit raised to `shared_bytes` when that is above the default 48 KiB.
  CUfunction function(const std::string& kernel, unsigned shared_bytes) {
    auto it = functions_.find(kernel);
    if (it == functions_.end()) {
      CUfunction f = nullptr;
      for (std::size_t p = 0; p < compiled_.size() && !f; ++p)
        for (const auto& [expression, lowered] : compiled_[p].lowered_names)
          if (expression == kernel) MOEJIT_CU(cuModuleGetFunction, &f, modules_[p], lowered.c_str());
      if (!f) throw Error(fmt::format("kernel {} is in no compiled part of module @{}", kernel, graph_.name()));
      it = functions_.emplace(kernel, std::make_pair(f, 0u)).first;
    }
    if (shared_bytes > 48 * 1024 && shared_bytes > it->second.second) {
      if (shared_bytes > target_.shared_memory_per_block_optin)
        throw Error(fmt::format("kernel {} needs {} bytes of dynamic shared memory; {} allows at most {} per block", kernel, shared_bytes,
                                target_.device_name, target_.shared_memory_per_block_optin));
      MOEJIT_CU(cuFuncSetAttribute, it->second.first, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, static_cast<int>(shared_bytes));
      it->second.second = shared_bytes;
    }
    return it->second.first;
  }

  // Encodes one TMA descriptor of a launch into its argument bytes.
  void encode_tensor_map(const codegen::TensorMapField& m, std::size_t step, std::byte* args) const {
    CUtensorMap map;  // 64-byte aligned by its declaration in cuda.h
    cuuint64_t dims[5], strides[4];
    cuuint32_t box[5], element_strides[5];
    const std::size_t element = dtype_size(m.dtype);
    for (int i = 0; i < m.rank; ++i) {
      dims[i] = static_cast<cuuint64_t>(m.dims[i]);
      box[i] = m.box[i];
      element_strides[i] = 1;
      if (i > 0) strides[i - 1] = static_cast<cuuint64_t>(m.strides[i]) * element;  // bytes, dims 1.. only
    }
    CUdeviceptr base = pointer(m.buffer, step);
    MOEJIT_CU(cuTensorMapEncodeTiled, &map, tensor_map_dtype(m.dtype), static_cast<cuuint32_t>(m.rank), reinterpret_cast<void*>(base), dims,
              strides, box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, tensor_map_swizzle(m.swizzle), CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
              CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    static_assert(sizeof(CUtensorMap) == sizeof(mj::TmaDescriptor), "TmaDescriptor mirrors CUtensorMap");
    std::memcpy(args + m.offset, &map, sizeof map);
  }

  // "moe.gather_matmul  gemm_sm90_kernel<128, 256, ...>": the step's op
  // kinds and the kernel's name without its namespace.
  std::string profile_label(const codegen::StepCode& step, const Launch& l) const {
    std::string ops;
    for (int index : step.ops) {
      std::string name(op_name(graph_.ops()[static_cast<std::size_t>(index)].kind));
      if (ops.find(name) == std::string::npos) ops += (ops.empty() ? "" : "+") + name;
    }
    std::string what = l.kind == Launch::Kind::zero         ? "memset"
                       : l.kind == Launch::Kind::copy       ? "copy"
                       : l.kind == Launch::Kind::collective ? std::string("nccl ") + codegen::collective_name(l.collective)
                                                            : l.kernel;
    std::size_t colon = what.rfind("::", what.find('<'));
    if (colon != std::string::npos) what = what.substr(colon + 2);
    return ops + "  " + what;
  }

  void resolve() {
    for (std::size_t s = 0; s < code_.steps.size(); ++s) {
      for (const Launch& l : code_.steps[s].launches) {
        ResolvedLaunch r;
        r.kind = l.kind;
        r.bytes = l.bytes;
        r.label = profile_label(code_.steps[s], l);
        if (l.kind == Launch::Kind::zero) {
          r.dst = pointer(l.dst, s);
        } else if (l.kind == Launch::Kind::copy) {
          r.src = pointer(l.src, s);
          r.dst = pointer(l.dst, s);
        } else if (l.kind == Launch::Kind::collective) {
          cuda::prepare_collectives(l.world_size);
          r.collective = {l.collective, l.dtype, l.count, l.bytes, l.world_size, pointer(l.src, s), pointer(l.dst, s),
                          pointer(l.src_counts, s), pointer(l.dst_counts, s)};
        } else {
          r.function = function(l.kernel, l.shared_bytes);
          std::copy(l.grid, l.grid + 3, r.grid);
          std::copy(l.block, l.block + 3, r.block);
          std::copy(l.cluster, l.cluster + 3, r.cluster);
          r.shared_bytes = l.shared_bytes;
          r.storage.resize((l.args.size() + sizeof(mj::TmaDescriptor) - 1) / sizeof(mj::TmaDescriptor) + 1);
          auto* bytes = reinterpret_cast<std::byte*>(r.storage.data());
          std::memcpy(bytes, l.args.data(), l.args.size());
          for (const auto& field : l.pointers) {
            CUdeviceptr ptr = pointer(field.buffer, s);
            std::memcpy(bytes + field.offset, &ptr, sizeof ptr);
          }
          for (const auto& map : l.tensor_maps) encode_tensor_map(map, s, bytes);
        }
        launches_.push_back(std::move(r));
      }
    }
    // Pointers into storage are taken after the vector stops moving.
    for (auto& r : launches_) r.params[0] = r.storage.data();
    for (const auto& out : graph_.outputs()) {
      if (out.updates.empty()) continue;
      ValueId target = graph_.find_arg(out.updates);
      MOEJIT_ASSERT(target != kNoValue, "update of a missing argument");
      if (target == out.value || value_ptr_[static_cast<std::size_t>(out.value)] == value_ptr_[static_cast<std::size_t>(target)])
        continue;  // already there (written in place)
      ResolvedLaunch r;
      r.kind = Launch::Kind::copy;
      r.label = "(parameter update)  copy";
      r.src = value_ptr_[static_cast<std::size_t>(out.value)];
      r.dst = value_ptr_[static_cast<std::size_t>(target)];
      r.bytes = static_cast<std::int64_t>(graph_.type(target).bytes());
      launches_.push_back(std::move(r));
    }
  }

  void launch_kernel(const ResolvedLaunch& r) {
    CUlaunchAttribute cluster_attribute{};
    CUlaunchConfig config{};
    config.gridDimX = r.grid[0];
    config.gridDimY = r.grid[1];
    config.gridDimZ = r.grid[2];
    config.blockDimX = r.block[0];
    config.blockDimY = r.block[1];
    config.blockDimZ = r.block[2];
    config.sharedMemBytes = r.shared_bytes;
    config.hStream = stream_;
    if (r.cluster[0] * r.cluster[1] * r.cluster[2] > 1) {
      cluster_attribute.id = CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
      cluster_attribute.value.clusterDim.x = r.cluster[0];
      cluster_attribute.value.clusterDim.y = r.cluster[1];
      cluster_attribute.value.clusterDim.z = r.cluster[2];
      config.attrs = &cluster_attribute;
      config.numAttrs = 1;
    }
    MOEJIT_CU(cuLaunchKernelEx, &config, r.function, const_cast<void**>(r.params), nullptr);
  }

  // Profile events are left out of a captured graph: replays are not profiled.
  void issue(bool capturing = false) {
    const bool timed = profiling_ && !capturing;
    if (timed) MOEJIT_CU(cuEventRecord, profile_events_[0], stream_);
    for (std::size_t i = 0; i < launches_.size(); ++i) {
      const ResolvedLaunch& r = launches_[i];
      switch (r.kind) {
        case Launch::Kind::zero: MOEJIT_CU(cuMemsetD8Async, r.dst, 0, static_cast<std::size_t>(r.bytes), stream_); break;
        case Launch::Kind::copy: MOEJIT_CU(cuMemcpyDtoDAsync, r.dst, r.src, static_cast<std::size_t>(r.bytes), stream_); break;
        case Launch::Kind::kernel: launch_kernel(r); break;
        case Launch::Kind::collective: cuda::run_collective(r.collective, stream_); break;
      }
      if (timed) MOEJIT_CU(cuEventRecord, profile_events_[i + 1], stream_);
    }
    profile_pending_ = timed;
  }

  const Graph& graph_;  // ExecutableBase's: the input after prepare_graph
  codegen::Target target_;
  codegen::ModuleCode code_;
  std::vector<cuda::CompiledModule> compiled_;  // the module's parts (compile_module_parts)
  MemoryPlan plan_;
  std::vector<CUmodule> modules_;  // one per part
  CUstream stream_ = nullptr;
  CUevent start_ = nullptr, stop_ = nullptr;
  CUdeviceptr arena_ = 0;
  std::vector<CUdeviceptr> arg_buffers_;
  std::vector<bool> uploaded_;
  std::vector<CUdeviceptr> value_ptr_;
  std::map<std::string, std::pair<CUfunction, unsigned>> functions_;
  std::vector<ResolvedLaunch> launches_;
  CUgraph cuda_graph_ = nullptr;
  CUgraphExec graph_exec_ = nullptr;
  bool profiling_ = false, profile_pending_ = false;
  std::vector<CUevent> profile_events_;           // before the first launch, then after each
  std::vector<std::vector<double>> profile_ms_;  // per launch, per profiled run
  int profile_runs_ = 0;
};

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(std::string pipeline) : pipeline_(std::move(pipeline)) {}
  std::string name() const override { return "cuda"; }
  std::unique_ptr<Executable> compile(const Graph& graph) override {
    verify_or_throw(graph);
    return std::make_unique<CudaExecutable>(graph, pipeline_);
  }

 private:
  std::string pipeline_;
};

CudaExecutable& as_cuda(Executable& exe, const char* what) {
  auto* cuda = dynamic_cast<CudaExecutable*>(&exe);
  if (!cuda) throw Error(fmt::format("{}: the executable does not come from the CUDA backend", what));
  return *cuda;
}

}  // namespace

std::unique_ptr<Backend> make_cuda_backend() { return make_cuda_backend(std::string(kCudaPipeline)); }

std::unique_ptr<Backend> make_cuda_backend(std::string pipeline) {
  cuda::driver();  // throws with the reason when there is no usable GPU
  PassManager{}.add_pipeline(pipeline);  // a bad pipeline fails here, not at the first compile
  return std::make_unique<CudaBackend>(std::move(pipeline));
}

void cuda_capture_graph(Executable& exe) { as_cuda(exe, "cuda_capture_graph").capture(); }

double cuda_last_run_ms(Executable& exe) { return as_cuda(exe, "cuda_last_run_ms").last_run_ms(); }

std::string cuda_profile_report(Executable& exe) { return as_cuda(exe, "cuda_profile_report").profile_report(); }

}  // namespace moejit
