// CUDA tests that need no GPU: each kernel family header compiles on its
// own; every kernel emitted for a GPT-MoE training step and for the every-op
// sample graph compiles through NVRTC to PTX for compute_80 and compute_90a
// (each instantiation an entry of the PTX under its lowered name); a module
// includes only the families it uses; generated source is deterministic; the
// headers embed ir/philox.h; the disk cache serves a second process, lowered
// names included; without a GPU the backend says why.
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <unistd.h>

#include <cstdlib>
#include <map>
#include <set>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "cuda/ptx_check.h"
#include "codegen/cuda_codegen.h"
#include "cuda/cuda_test_util.h"
#include "ir/error.h"
#include "ir/builder.h"
#include "ir/sample_graphs.h"
#include "passes/passes.h"
#include "runtime/cuda/cuda_backend.h"
#include "runtime/cuda/nvrtc_compiler.h"

using namespace moejit;
namespace fs = std::filesystem;

namespace {

Graph fused(Graph graph) {
  create_fuse_elementwise_pass({})->run(graph);
  return graph;
}

// Compiles the module of `graph` to PTX for `arch` with no cache, and checks
// that every instantiation is an entry of the PTX under its lowered name.
void check_compiles(const Graph& graph, const std::string& arch) {
  codegen::ModuleCode module = codegen::generate_module(graph, codegen::Target::named(arch));
  cuda::CompiledModule compiled = cuda_test::compile_to_ptx(module, graph.name(), arch);
  const std::string& ptx = compiled.binary;
  REQUIRE(ptx.find(".target sm_" + arch.substr(std::string("compute_").size())) != std::string::npos);
  // The host's argument struct has the size of the kernel's one parameter in
  // the PTX (".param .align A .b8 <entry>_param_0[SIZE]"): host C++ and NVRTC
  // lay the shared struct out alike.
  for (const auto& step : module.steps)
    for (const auto& launch : step.launches) {
      if (launch.kind != codegen::Launch::Kind::kernel) continue;
      INFO(launch.kernel);
      const std::string param = compiled.lowered(launch.kernel) + "_param_0[";
      auto at = ptx.find(param);
      REQUIRE(at != std::string::npos);
      CHECK(std::stoul(ptx.substr(at + param.size())) == launch.args.size());
      CHECK(ptx.find(compiled.lowered(launch.kernel) + "_param_1") == std::string::npos);
    }
  // Every value a launch reads or writes has storage (an argument, stored,
  // or written into an argument's buffer), and every pointer field lies
  // inside its argument struct.
  std::set<ValueId> in_place, views;
  for (const auto& [result, argument] : module.in_place) {
    CHECK(graph.arg_of(argument) != nullptr);
    in_place.insert(result);
  }
  for (const auto& [result, source] : module.aliases) {
    CHECK(module.materialized[static_cast<std::size_t>(source)]);
    CHECK_FALSE(module.materialized[static_cast<std::size_t>(result)]);
    views.insert(result);
  }
  for (const auto& step : module.steps)
    for (const auto& launch : step.launches) {
      std::vector<codegen::Buffer> buffers = {launch.src, launch.dst};
      for (const auto& field : launch.pointers) {
        CHECK(field.offset + 8 <= launch.args.size());
        buffers.push_back(field.buffer);
      }
      for (const auto& buffer : buffers)
        if (buffer.kind == codegen::Buffer::Kind::value) {
          INFO("op " << step.ops.back() << " value " << buffer.value);
          CHECK((module.materialized[static_cast<std::size_t>(buffer.value)] || graph.arg_of(buffer.value) != nullptr ||
                 in_place.count(buffer.value) == 1 || views.count(buffer.value) == 1));
        }
    }
  // Every op of the graph ran through some launch.
  std::size_t ops = 0;
  for (const auto& step : module.steps) {
    const Op& last = graph.ops()[static_cast<std::size_t>(step.ops.back())];
    CHECK((!step.launches.empty() || views.count(last.results[0]) == 1));  // a view of a reshape launches nothing
    ops += step.ops.size();
  }
  CHECK(ops == graph.ops().size());
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

TEST_CASE("every op of the all-ops graph compiles to PTX for compute_80 and compute_90a", "[cuda][nvrtc]") {
  Graph graph = make_all_ops_graph();
  // The sample uses every op of the table.
  std::set<OpKind> kinds;
  for (const auto& op : graph.ops()) kinds.insert(op.kind);
  CHECK(static_cast<int>(kinds.size()) == kNumOps);
  check_compiles(graph, "compute_80");
  check_compiles(fused(graph), "compute_90a");
}

TEST_CASE("every kernel of a GPT-MoE training step compiles to PTX", "[cuda][nvrtc]") {
  Graph graph = cuda_test::make_gpt_training_graph(cuda_test::small_gpt_config(), 2);
  bool has_adamw = false, has_attention_grad = false, has_wgrad = false;
  for (const auto& op : graph.ops()) {
    has_adamw |= op.kind == OpKind::AdamW;
    has_attention_grad |= op.kind == OpKind::AttentionGrad;
    has_wgrad |= op.kind == OpKind::GroupedMatmulWgrad;
  }
  CHECK(has_adamw);
  CHECK(has_attention_grad);
  CHECK(has_wgrad);
  Graph f = fused(graph);
  check_compiles(f, "compute_80");
  check_compiles(f, "compute_90a");
}

TEST_CASE("a GPT-MoE inference graph (dead aux losses in a fused group) compiles to PTX", "[cuda][nvrtc]") {
  GptMoeConfig config = cuda_test::small_gpt_config();
  Graph graph("gpt_sample");
  build_gpt_moe(graph, config, {.batch = 1, .with_loss = false, .output_logits = true});
  check_compiles(fused(graph), "compute_90a");
}

// The comm ops need no kernel on one rank: each is device copies (x to y,
// and all_to_all's counts). For several ranks each is an NCCL collective
// launch; all_to_all packs the rows into per-peer blocks, exchanges them and
// their counts, and unpacks them (kernels of codegen/kernels/comm.cuh, which
// compile to PTX with the rest of the module).
TEST_CASE("comm ops emit device copies on one rank and NCCL collectives on several", "[cuda][comm]") {
  auto build = [](std::int64_t world_size) {
    Graph graph("comm");
    Builder b(graph);
    const AttrList world{{"world_size", world_size}};
    Tensor x = b.input("x", {8, 4});
    Tensor counts = b.input("counts", {world_size}, DType::i32);
    Tensor gathered = b.op1(OpKind::AllGather, {b.op1(OpKind::AllReduce, {x}, world)}, world);
    auto exchanged = b.op(OpKind::AllToAll, {gathered, counts}, world);
    b.output(b.op1(OpKind::ReduceScatter, {exchanged[0]}, world), "y");
    b.output(exchanged[1], "recv_counts");
    return graph;
  };
  codegen::ModuleCode module = codegen::generate_module(build(1), codegen::Target::named("sm_90a"));
  int copies = 0;
  for (const auto& step : module.steps)
    for (const auto& launch : step.launches) {
      CHECK(launch.kind == codegen::Launch::Kind::copy);
      if (launch.kind == codegen::Launch::Kind::copy) ++copies;
    }
  CHECK(copies == 5);  // all_reduce, all_gather, all_to_all (rows and counts), reduce_scatter
  CHECK(module.kernels.empty());

  codegen::ModuleCode two = codegen::generate_module(build(2), codegen::Target::named("sm_90a"));
  std::vector<std::string> collectives;
  for (const auto& step : two.steps)
    for (const auto& launch : step.launches)
      if (launch.kind == codegen::Launch::Kind::collective) {
        collectives.push_back(codegen::collective_name(launch.collective));
        CHECK(launch.world_size == 2);
        if (launch.collective == codegen::Launch::Collective::exchange) {
          CHECK(launch.bytes == 16 * 4 * 4);  // a block per peer: capacity 16 rows (x's) of 4 f32
          CHECK(launch.src_counts.kind == codegen::Buffer::Kind::scratch);
        }
      }
  CHECK(collectives == std::vector<std::string>{"all_reduce", "all_gather", "exchange", "reduce_scatter"});
  CHECK(two.kernels == std::vector<std::string>{"mj::a2a_pack_kernel<float, 256>", "mj::a2a_unpack_kernel<float, 256>"});
  check_compiles(build(2), "compute_90a");
  check_compiles(build(2), "compute_80");
}

TEST_CASE("a module compiled in parts on several threads holds every kernel exactly once", "[cuda][nvrtc]") {
  GptMoeConfig config = cuda_test::small_gpt_config();
  Graph graph("gpt_sample");
  build_gpt_moe(graph, config, {.batch = 1, .with_loss = false, .output_logits = true});
  graph = fused(graph);
  codegen::ModuleCode module = codegen::generate_module(graph, codegen::Target::named("sm_80"));
  cuda::CompileRequest request{module.source, graph.name(), "compute_80", cuda::CompileOutput::ptx, false};
  request.name_expressions = module.kernels;
  std::vector<cuda::CompiledModule> parts;
  try {
    parts = cuda::compile_module_parts(request, 3);
  } catch (const Error& e) {
    FAIL(e.what());
  }
  REQUIRE(parts.size() == 3);
  std::map<std::string, int> found;
  for (const auto& part : parts)
    for (const auto& [expression, lowered] : part.lowered_names) {
      CHECK(part.binary.find(".entry " + lowered + "(") != std::string::npos);
      ++found[expression];
    }
  CHECK(found.size() == module.kernels.size());
  for (const auto& k : module.kernels) CHECK(found[k] == 1);
  // Heaviest first, each to the lightest part: [8, 1, 3, 1, 1, 3] over 2 parts.
  CHECK(cuda::assign_parts({8, 1, 3, 1, 1, 3}, 2) == std::vector<int>{0, 1, 1, 1, 0, 1});
  CHECK(cuda::assign_parts({1, 1, 1, 1}, 3) == std::vector<int>{0, 1, 2, 0});
  // The knob: MOEJIT_COMPILE_THREADS wins; nonsense is an error naming it.
  ::setenv("MOEJIT_COMPILE_THREADS", "5", 1);
  CHECK(cuda::compile_parts(40) == 5);
  ::setenv("MOEJIT_COMPILE_THREADS", "zero", 1);
  CHECK_THROWS_WITH(cuda::compile_parts(40), Catch::Contains("MOEJIT_COMPILE_THREADS"));
  ::unsetenv("MOEJIT_COMPILE_THREADS");
  CHECK(cuda::compile_parts(1) == 1);
  CHECK(cuda::compile_parts(40) >= 1);
  CHECK(cuda::compile_parts(40) <= 10);  // by size: 40 kernels, 4 a part
  CHECK(cuda::compile_parts(400) <= 16);
}

TEST_CASE("generated source is deterministic and kernels are shared", "[cuda]") {
  Graph graph = fused(cuda_test::make_gpt_training_graph(cuda_test::small_gpt_config(), 2));
  const codegen::Target target = codegen::Target::named("sm_90a");
  codegen::ModuleCode a = codegen::generate_module(graph, target);
  codegen::ModuleCode b = codegen::generate_module(graph, target);
  CHECK(a.source == b.source);
  CHECK(a.source == codegen::emit_cuda_source(graph, target));
  std::set<std::string> names;
  for (const auto& k : a.kernels) CHECK(names.insert(k).second);
  std::size_t launches = 0;
  for (const auto& s : a.steps) launches += s.launches.size();
  // One kernel serves every op of its kind and dtype: far fewer kernels than launches.
  CHECK(a.kernels.size() * 2 < launches);
}

TEST_CASE("the embedded headers are ir/philox.h and every kernel family, byte for byte", "[cuda]") {
  std::set<std::string> families;
  for (const auto& entry : fs::directory_iterator(fs::path(MOEJIT_SOURCE_DIR) / "codegen" / "kernels"))
    if (entry.path().extension() == ".cuh") families.insert("codegen/kernels/" + entry.path().filename().string());
  REQUIRE(families.size() >= 6);
  std::set<std::string> embedded;
  for (const auto& h : codegen::kernel_headers()) {
    INFO(h.name);
    CHECK(std::string(h.text) == read_text(fs::path(MOEJIT_SOURCE_DIR) / h.name));
    embedded.insert(h.name);
  }
  families.insert("ir/philox.h");
  CHECK(embedded == families);
  CHECK(codegen::find_kernel_header("ir/philox.h") != nullptr);
  CHECK(codegen::find_kernel_header("codegen/kernels/nope.cuh") == nullptr);
}

TEST_CASE("each kernel family header compiles on its own to PTX", "[cuda][nvrtc]") {
  for (const auto& h : codegen::kernel_headers()) {
    for (const char* arch : {"compute_80", "compute_90a"}) {
      INFO(h.name << " for " << arch);
      std::string source = fmt::format("#include \"{}\"\n", h.name);
      try {
        std::string ptx = cuda::compile_cuda({source, "header_alone", arch, cuda::CompileOutput::ptx, false});
        CHECK(ptx.find(".version") != std::string::npos);
      } catch (const Error& e) {
        FAIL(e.what());
      }
    }
  }
}

TEST_CASE("the Hopper GEMM family instantiates through a name expression for compute_90a", "[cuda][nvrtc]") {
  // What a launch of the sm90 family asks NVRTC for: the template
  // instantiated by name, its lowered name an entry of the PTX, and one
  // parameter (the argument struct with its two TMA descriptors).
  cuda::CompileRequest request{"#include \"codegen/kernels/gemm_sm90.cuh\"\n", "sm90_probe", "compute_90a", cuda::CompileOutput::ptx, false};
  const std::string kernel = "moejit::sm90::gemm_sm90_kernel<128, 128, 64, 4, true, false, moejit::sm90::StoreBf16>";
  request.name_expressions = {kernel};
  cuda::CompiledModule compiled;
  try {
    compiled = cuda::compile_module(request);
  } catch (const Error& e) {
    FAIL(e.what());
  }
  const std::string& lowered = compiled.lowered(kernel);
  CHECK(compiled.binary.find(".entry " + lowered + "(") != std::string::npos);
  CHECK(compiled.binary.find("wgmma.mma_async") != std::string::npos);
  CHECK(compiled.binary.find(lowered + "_param_1") == std::string::npos);
}

TEST_CASE("MOEJIT_DEBUG's kernel lines give each instantiation's config and its source", "[cuda]") {
  // A grouped matmul with moe-tiling's attributes next to a dense matmul on the heuristic.
  Graph graph("configs");
  Builder b(graph);
  Tensor xs = b.input("xs", {32, 16});
  Tensor w = b.input("w", {2, 16, 8});
  Tensor offsets = b.input("offsets", {3}, DType::i32);
  AttrList attrs;
  attrs.set("transpose_w", false);
  attrs.set("tile_m", std::int64_t{16});
  attrs.set("tile_n", std::int64_t{8});
  attrs.set("tile_k", std::int64_t{8});
  b.output(b.op1(OpKind::GroupedMatmul, {xs, w, offsets}, attrs), "ys");
  b.output(b.matmul(xs, b.input("v", {16, 64})), "zs");  // N 64: not the narrow-N tile
  codegen::ModuleCode module = codegen::generate_module(graph, codegen::Target::named("sm_90a"));
  CHECK(codegen::describe_kernel_configs(module, "> ") ==
        "> mj::grouped_matmul_kernel<float, 16, 8, 8, 32>: tile 16x8x8 stages 1 threads 32 (attribute), 1 launch\n"
        "> mj::matmul_kernel<float, 64, 64, 16, 256>: tile 64x64x16 stages 1 threads 256 (heuristic), 1 launch\n");
}

TEST_CASE("named targets carry their architecture's numbers; a persistent grid fills the SMs", "[cuda]") {
  codegen::Target hopper = codegen::Target::named("sm_90a");
  CHECK(hopper.arch == "sm_90a");
  CHECK(hopper.ptx_arch() == "compute_90a");
  CHECK(hopper.sm() == 90);
  CHECK(hopper.sm_count == 132);
  CHECK(hopper.shared_memory_per_block_optin == 227 * 1024);
  codegen::Target ampere = codegen::Target::named("compute_80");
  CHECK(ampere.arch == "sm_80");
  CHECK(ampere.sm_count == 108);
  CHECK_THROWS_WITH(codegen::Target::named("hopper"), Catch::Contains("expected sm_XY or sm_XYa"));
  CHECK(codegen::persistent_grid(hopper, 10'000) == 132);
  CHECK(codegen::persistent_grid(hopper, 10'000, 2) == 264);
  CHECK(codegen::persistent_grid(hopper, 7) == 7);
  CHECK(codegen::persistent_grid(hopper, 0) == 1);
}

TEST_CASE("a module includes only the families its launches use", "[cuda]") {
  Graph graph("only_softmax");
  Builder b(graph);
  b.output(b.softmax(b.input("x", {4, 8})), "y");
  codegen::ModuleCode module = codegen::generate_module(graph, codegen::Target::named("sm_90a"));
  CHECK(module.headers == std::vector<std::string>{"codegen/kernels/reduce.cuh"});
  CHECK(module.source.find("#include \"codegen/kernels/reduce.cuh\"") != std::string::npos);
  CHECK(module.source.find("matmul.cuh") == std::string::npos);
  CHECK(module.source.find("moe.cuh") == std::string::npos);
  REQUIRE(module.kernels.size() == 1);
  CHECK(module.kernels[0] == "mj::softmax_warp_kernel<float, 0, 1, 256>");  // rows of 8: a warp each
}

TEST_CASE("an NVRTC error carries the log and the dumped source", "[cuda][nvrtc]") {
  std::string source = "extern \"C\" __global__ void broken() { this_is_not_defined(); }\n";
  try {
    cuda::compile_cuda({source, "broken_test", "compute_80", cuda::CompileOutput::ptx, false});
    FAIL("expected an error");
  } catch (const Error& e) {
    std::string message = e.what();
    CHECK(message.find("this_is_not_defined") != std::string::npos);  // the NVRTC log
    auto at = message.find("source: ");
    REQUIRE(at != std::string::npos);
    std::string path = message.substr(at + 8, message.find('\n', at) - at - 8);
    CHECK(read_text(path) == source);
  }
}

namespace {
const char* kCacheProbe = "template <int N> __global__ void cache_probe(float* x) { x[threadIdx.x] *= N; }\n";
cuda::CompileRequest cache_probe_request() {
  cuda::CompileRequest request{kCacheProbe, "cache_probe", "compute_80", cuda::CompileOutput::ptx, true};
  request.name_expressions = {"cache_probe<2>"};
  return request;
}
}  // namespace

// Run by the test below in a child process, with MOEJIT_ASSERT_CACHED=1: the
// binary and the lowered name come from the disk.
TEST_CASE("cache child (PTX)", "[.cache_child_ptx]") {
  cuda::CompiledModule module = cuda::compile_module(cache_probe_request());
  CHECK(module.binary.find(".entry " + module.lowered("cache_probe<2>") + "(") != std::string::npos);
  CHECK(cuda_compile_stats().compiles == 0);
  CHECK(cuda_compile_stats().disk_hits == 1);
}

TEST_CASE("the disk cache serves a second process that compiles nothing", "[cuda][nvrtc]") {
  fs::path dir = fs::temp_directory_path() / fmt::format("moejit-cache-test-{}", ::getpid());
  fs::remove_all(dir);
  ::setenv("MOEJIT_CACHE_DIR", dir.c_str(), 1);
  auto before = cuda_compile_stats();
  cuda::CompiledModule first = cuda::compile_module(cache_probe_request());
  CHECK(cuda_compile_stats().compiles == before.compiles + 1);
  CHECK(first.lowered("cache_probe<2>").find("cache_probe") != std::string::npos);
  // The same request again is a memory hit.
  cuda::CompiledModule again = cuda::compile_module(cache_probe_request());
  CHECK(again.binary == first.binary);
  CHECK(again.lowered_names == first.lowered_names);
  CHECK(cuda_compile_stats().memory_hits == before.memory_hits + 1);
  std::size_t files = 0;
  for (const auto& entry : fs::directory_iterator(dir)) {
    ++files;
    CHECK(entry.path().string().find(".tmp.") == std::string::npos);  // no temp file left behind
  }
  CHECK(files == 1);
  std::string self = fs::read_symlink("/proc/self/exe").string();
  std::string child = fmt::format("MOEJIT_CACHE_DIR='{}' MOEJIT_ASSERT_CACHED=1 '{}' '[cache_child_ptx]' > /dev/null 2>&1", dir.string(), self);
  CHECK(std::system(child.c_str()) == 0);
  // Control: with an empty cache the child's compile is refused.
  fs::path empty = dir / "empty";
  std::string refused = fmt::format("MOEJIT_CACHE_DIR='{}' MOEJIT_ASSERT_CACHED=1 '{}' '[cache_child_ptx]' > /dev/null 2>&1", empty.string(), self);
  CHECK(std::system(refused.c_str()) != 0);
  ::unsetenv("MOEJIT_CACHE_DIR");
  fs::remove_all(dir);
}

TEST_CASE("without a GPU the backend says why", "[cuda]") {
  std::string why;
  if (cuda_available(&why)) {
    CHECK(why.empty());
    CHECK(cuda_device_info().sm_count > 0);
    return;
  }
  CHECK(!why.empty());
  try {
    make_cuda_backend();
    FAIL("expected moejit::Error");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find(why) != std::string::npos);
  }
}
