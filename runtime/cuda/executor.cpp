// The CUDA backend's executor. compile(): verify, run the backend's pipeline
// (kCudaPipeline: the MoE fusions, expert tiling, elementwise fusion groups),
// generate the module, compile it with NVRTC (cached), plan the arena, and
// resolve every launch to a function and its argument bytes once (buffers
// never move). run(): the launches on one stream, then the copies of
// updated arguments (AdamW's parameters and moments) into their buffers; or
// one replay of the captured CUDA graph.
//
// Device memory: one buffer per argument (kept across runs) and one arena
// for every intermediate value and per-step scratch (passes/memory_plan.h).
#include <fmt/format.h>

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
#include "runtime/cuda/nvrtc_compiler.h"

namespace moejit {

namespace {

using codegen::KernelArg;
using codegen::Launch;

struct ResolvedLaunch {
  Launch::Kind kind = Launch::Kind::kernel;
  CUfunction function = nullptr;
  unsigned grid[3] = {1, 1, 1}, block[3] = {1, 1, 1}, shared_bytes = 0;
  std::vector<std::byte> storage;  // argument bytes, 8-byte slots (structs in place)
  std::vector<void*> params;       // pointers into storage
  CUdeviceptr dst = 0, src = 0;
  std::int64_t bytes = 0;
};

class CudaExecutable final : public Executable {
 public:
  CudaExecutable(const Graph& input, std::string_view pipeline) : graph_(input) {
    const auto& d = cuda::driver();
    (void)d;
    run_pipeline_passes(pipeline);
    code_ = codegen::generate_module(graph_);
    if (debug_level() >= 3)
      std::fprintf(stderr, "moejit cuda: generated source of @%s:\n%s\n", graph_.name().c_str(), code_.source.c_str());
    CudaDeviceInfo info = cuda_device_info();
    auto before = cuda_compile_stats();
    auto start = std::chrono::steady_clock::now();
    std::string cubin = cuda::compile_cuda({code_.source, graph_.name(), info.arch(), cuda::CompileOutput::cubin, true});
    if (debug_level() >= 1) {
      auto after = cuda_compile_stats();
      const char* how = after.compiles > before.compiles ? "compiled by NVRTC" : after.disk_hits > before.disk_hits ? "loaded from the disk cache" : "found in memory";
      std::fprintf(stderr, "moejit cuda: module @%s (%zu kernels, %zu launches) for %s: %s in %.3f s\n", graph_.name().c_str(),
                   code_.kernels.size(), launch_count(), info.arch().c_str(), how,
                   std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
    MOEJIT_CU(cuModuleLoadData, &module_, cubin.data());
    MOEJIT_CU(cuStreamCreate, &stream_, CU_STREAM_NON_BLOCKING);
    MOEJIT_CU(cuEventCreate, &start_, CU_EVENT_DEFAULT);
    MOEJIT_CU(cuEventCreate, &stop_, CU_EVENT_DEFAULT);
    allocate();
    resolve();
  }

  ~CudaExecutable() override {
    const auto& d = cuda::driver();
    if (stream_) d.cuStreamSynchronize(stream_);
    if (graph_exec_) d.cuGraphExecDestroy(graph_exec_);
    if (cuda_graph_) d.cuGraphDestroy(cuda_graph_);
    for (CUdeviceptr p : arg_buffers_)
      if (p) d.cuMemFree(p);
    if (arena_) d.cuMemFree(arena_);
    if (start_) d.cuEventDestroy(start_);
    if (stop_) d.cuEventDestroy(stop_);
    if (stream_) d.cuStreamDestroy(stream_);
    if (module_) d.cuModuleUnload(module_);
  }

  const Graph& graph() const override { return graph_; }

  void set(std::string_view name, const HostTensor& value) override {
    int index = arg_index(name);
    if (index < 0) throw Error(fmt::format("set: graph @{} has no argument named '{}'", graph_.name(), name));
    const TensorType& want = graph_.type(graph_.args()[static_cast<std::size_t>(index)].value);
    if (value.type() != want)
      throw Error(fmt::format("set: argument '{}' expects {}, found {}", name, want.str(), value.type().str()));
    MOEJIT_CU(cuStreamSynchronize, stream_);
    MOEJIT_CU(cuMemcpyHtoD, arg_buffers_[static_cast<std::size_t>(index)], value.raw(), value.bytes());
    bound_[static_cast<std::size_t>(index)] = true;
  }

  HostTensor get(std::string_view name) const override {
    ValueId value = kNoValue;
    if (const Output* out = graph_.find_output(name)) {
      if (!has_run_) throw Error(fmt::format("get: output '{}' of @{} is read before the first run()", name, graph_.name()));
      value = out->value;
      if (!out->updates.empty()) value = graph_.find_arg(out->updates);
    } else {
      value = graph_.find_arg(name);
      if (value == kNoValue) throw Error(fmt::format("get: graph @{} has no output or argument named '{}'", graph_.name(), name));
    }
    HostTensor result(graph_.type(value));
    MOEJIT_CU(cuStreamSynchronize, stream_);
    MOEJIT_CU(cuMemcpyDtoH, result.raw(), value_ptr_[static_cast<std::size_t>(value)], result.bytes());
    return result;
  }

  void run() override {
    for (std::size_t i = 0; i < bound_.size(); ++i)
      if (!bound_[i])
        throw Error(fmt::format("run: argument '{}' of @{} is not bound (call set() first)", graph_.value(graph_.args()[i].value).name,
                                graph_.name()));
    MOEJIT_CU(cuEventRecord, start_, stream_);
    if (graph_exec_) {
      MOEJIT_CU(cuGraphLaunch, graph_exec_, stream_);
    } else {
      issue();
    }
    MOEJIT_CU(cuEventRecord, stop_, stream_);
    has_run_ = true;
  }

  void capture() {
    for (std::size_t i = 0; i < bound_.size(); ++i)
      if (!bound_[i]) throw Error("cuda_capture_graph: bind every argument before capturing (the first run checks them)");
    if (graph_exec_) return;
    MOEJIT_CU(cuStreamSynchronize, stream_);
    MOEJIT_CU(cuStreamBeginCapture, stream_, CU_STREAM_CAPTURE_MODE_RELAXED);
    try {
      issue();
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

 private:
  // The backend's pass pipeline (kCudaPipeline unless the backend was made
  // with another, passes/pipelines.cpp): the graph is verified after every
  // pass; MOEJIT_DEBUG=2 prints the IR after each pass and the passes'
  // statistics.
  void run_pipeline_passes(std::string_view pipeline) {
    PassManager manager;
    manager.add_pipeline(pipeline);
    manager.run(graph_);
    if (debug_level() >= 2) manager.print_statistics(std::cerr);
  }

  static int debug_level() {
    const char* v = std::getenv("MOEJIT_DEBUG");
    return v ? std::atoi(v) : 0;
  }

  std::size_t launch_count() const {
    std::size_t n = 0;
    for (const auto& step : code_.steps) n += step.launches.size();
    return n;
  }

  int arg_index(std::string_view name) const {
    for (std::size_t i = 0; i < graph_.args().size(); ++i)
      if (graph_.value(graph_.args()[i].value).name == name) return static_cast<int>(i);
    return -1;
  }

  void allocate() {
    const auto& args = graph_.args();
    value_ptr_.assign(static_cast<std::size_t>(graph_.num_values()), 0);
    arg_buffers_.assign(args.size(), 0);
    bound_.assign(args.size(), false);
    for (std::size_t i = 0; i < args.size(); ++i) {
      std::size_t bytes = std::max<std::size_t>(graph_.type(args[i].value).bytes(), 1);
      MOEJIT_CU(cuMemAlloc, &arg_buffers_[i], bytes);
      value_ptr_[static_cast<std::size_t>(args[i].value)] = arg_buffers_[i];
    }
    std::vector<MemoryPlanStep> steps;
    for (const auto& step : code_.steps) {
      MemoryPlanStep s;
      s.scratch_bytes = step.scratch_bytes;
      for (int index : step.ops) {
        const Op& op = graph_.ops()[static_cast<std::size_t>(index)];
        for (ValueId v : op.operands)
          if (graph_.arg_of(v) == nullptr) s.uses.push_back(v);
        for (ValueId v : op.results)
          if (code_.materialized[static_cast<std::size_t>(v)]) s.defines.push_back(v);
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
  }

  CUdeviceptr pointer(const KernelArg& arg, std::size_t step) const {
    if (arg.kind == KernelArg::Kind::value) {
      CUdeviceptr p = value_ptr_[static_cast<std::size_t>(arg.value)];
      MOEJIT_ASSERT(p != 0, fmt::format("value {} has no device buffer", arg.value));
      return p;
    }
    if (arg.kind == KernelArg::Kind::scratch) {
      MOEJIT_ASSERT(plan_.scratch_offsets[step] >= 0, "scratch without a plan");
      return arena_ + static_cast<CUdeviceptr>(plan_.scratch_offsets[step] + arg.number);
    }
    return 0;
  }

  CUfunction function(const std::string& name, unsigned shared_bytes) {
    auto it = functions_.find(name);
    if (it == functions_.end()) {
      CUfunction f = nullptr;
      MOEJIT_CU(cuModuleGetFunction, &f, module_, name.c_str());
      it = functions_.emplace(name, std::make_pair(f, 0u)).first;
    }
    if (shared_bytes > 48 * 1024 && shared_bytes > it->second.second) {
      MOEJIT_CU(cuFuncSetAttribute, it->second.first, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, static_cast<int>(shared_bytes));
      it->second.second = shared_bytes;
    }
    return it->second.first;
  }

  void resolve() {
    for (std::size_t s = 0; s < code_.steps.size(); ++s) {
      for (const Launch& l : code_.steps[s].launches) {
        ResolvedLaunch r;
        r.kind = l.kind;
        r.bytes = l.bytes;
        if (l.kind == Launch::Kind::zero) {
          r.dst = pointer(l.args[0], s);
        } else if (l.kind == Launch::Kind::copy) {
          r.src = pointer(l.args[0], s);
          r.dst = pointer(l.args[1], s);
        } else {
          r.function = function(l.kernel, l.shared_bytes);
          std::copy(l.grid, l.grid + 3, r.grid);
          std::copy(l.block, l.block + 3, r.block);
          r.shared_bytes = l.shared_bytes;
          std::vector<std::size_t> offsets;
          for (const KernelArg& a : l.args) {
            std::size_t at = r.storage.size();
            offsets.push_back(at);
            std::size_t size = a.kind == KernelArg::Kind::bytes ? (a.bytes.size() + 7) / 8 * 8 : 8;
            r.storage.resize(at + size);
            std::byte* p = r.storage.data() + at;
            switch (a.kind) {
              case KernelArg::Kind::value:
              case KernelArg::Kind::scratch:
              case KernelArg::Kind::null: {
                CUdeviceptr ptr = pointer(a, s);
                std::memcpy(p, &ptr, sizeof ptr);
                break;
              }
              case KernelArg::Kind::i32: {
                auto v = static_cast<std::int32_t>(a.number);
                std::memcpy(p, &v, 4);
                break;
              }
              case KernelArg::Kind::i64: std::memcpy(p, &a.number, 8); break;
              case KernelArg::Kind::f32: {
                auto v = static_cast<float>(a.real);
                std::memcpy(p, &v, 4);
                break;
              }
              case KernelArg::Kind::f64: std::memcpy(p, &a.real, 8); break;
              case KernelArg::Kind::bytes: std::memcpy(p, a.bytes.data(), a.bytes.size()); break;
            }
          }
          for (std::size_t at : offsets) r.params.push_back(r.storage.data() + at);
        }
        launches_.push_back(std::move(r));
      }
    }
    for (const auto& out : graph_.outputs()) {
      if (out.updates.empty()) continue;
      ValueId target = graph_.find_arg(out.updates);
      MOEJIT_ASSERT(target != kNoValue, "update of a missing argument");
      if (target == out.value) continue;
      ResolvedLaunch r;
      r.kind = Launch::Kind::copy;
      r.src = value_ptr_[static_cast<std::size_t>(out.value)];
      r.dst = value_ptr_[static_cast<std::size_t>(target)];
      r.bytes = static_cast<std::int64_t>(graph_.type(target).bytes());
      launches_.push_back(std::move(r));
    }
  }

  void issue() {
    for (auto& r : launches_) {
      switch (r.kind) {
        case Launch::Kind::zero: MOEJIT_CU(cuMemsetD8Async, r.dst, 0, static_cast<std::size_t>(r.bytes), stream_); break;
        case Launch::Kind::copy: MOEJIT_CU(cuMemcpyDtoDAsync, r.dst, r.src, static_cast<std::size_t>(r.bytes), stream_); break;
        case Launch::Kind::kernel:
          MOEJIT_CU(cuLaunchKernel, r.function, r.grid[0], r.grid[1], r.grid[2], r.block[0], r.block[1], r.block[2], r.shared_bytes,
                    stream_, r.params.data(), nullptr);
          break;
      }
    }
  }

  Graph graph_;
  codegen::ModuleCode code_;
  MemoryPlan plan_;
  CUmodule module_ = nullptr;
  CUstream stream_ = nullptr;
  CUevent start_ = nullptr, stop_ = nullptr;
  CUdeviceptr arena_ = 0;
  std::vector<CUdeviceptr> arg_buffers_;
  std::vector<bool> bound_;
  std::vector<CUdeviceptr> value_ptr_;
  std::map<std::string, std::pair<CUfunction, unsigned>> functions_;
  std::vector<ResolvedLaunch> launches_;
  CUgraph cuda_graph_ = nullptr;
  CUgraphExec graph_exec_ = nullptr;
  bool has_run_ = false;
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

}  // namespace moejit
