// With a GPU: a damaged CUBIN in the kernel cache is detected, compiled
// again, and the training step's results equal those of a clean run bit for
// bit. Child processes of this binary run the step (the memory cache would
// serve a second compile in one process). Without a GPU the test prints
// "SKIPPED: no CUDA device (<why>)".
#include <fmt/format.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "cuda/child_process.h"
#include "cuda/cuda_test_util.h"
#include "ir/file_io.h"
#include "runtime/backend.h"
#include "runtime/cuda/cuda_backend.h"

using namespace moejit;
namespace fs = std::filesystem;

using namespace moejit::cuda_test;

// Run in child processes: one GPT-MoE training step on the GPU with fixed
// inputs; every output and argument after the step is written, by name and
// raw bytes, to $MOEJIT_TEST_RESULT.
TEST_CASE("gpu: cache damage child", "[.gpu_cache_child]") {
  const char* result_path = std::getenv("MOEJIT_TEST_RESULT");
  REQUIRE(result_path != nullptr);
  GptMoeConfig config = cuda_test::small_gpt_config();
  Graph graph = cuda_test::make_gpt_training_graph(config, config.batch_size);
  auto args = cuda_test::random_args(graph, 5, config.vocab_size);
  for (auto& [name, value] : init_parameters(gpt_moe_param_specs(config), 5)) args.at(name) = value;
  auto cuda = make_cuda_backend();
  auto exe = cuda->compile(graph);
  for (const auto& [name, value] : args) exe->set(name, value);
  exe->run();
  std::string results;
  auto append = [&](const std::string& name) {
    HostTensor t = exe->get(name);
    results += fmt::format("{} {}\n", name, t.bytes());
    results.append(reinterpret_cast<const char*>(t.raw()), t.bytes());
  };
  for (const auto& out : graph.outputs()) append(out.name);
  for (const auto& arg : graph.args()) append(graph.value(arg.value).name);
  write_file_atomically(result_path, results, "test results");
  CudaCompileStats stats = cuda_compile_stats();
  std::printf("gpu-cache-child: compiles=%lld disk_hits=%lld\n", static_cast<long long>(stats.compiles),
              static_cast<long long>(stats.disk_hits));
}

TEST_CASE("gpu: a damaged CUBIN in the kernel cache is recompiled and the step's results equal a clean run's",
          "[cuda][gpu][cache]") {
  MOEJIT_SKIP_WITHOUT_GPU();
  fs::path dir = fs::temp_directory_path() / fmt::format("moejit-gpu-cache-damage-{}", ::getpid());
  fs::remove_all(dir);
  fs::create_directories(dir);
  fs::path cache = dir / "cache";
  auto env = [&](const char* result, bool assert_cached) {
    return fmt::format("MOEJIT_CACHE_DIR='{}' MOEJIT_TEST_RESULT='{}' MOEJIT_ASSERT_CACHED={}", cache.string(),
                       (dir / result).string(), assert_cached ? 1 : 0);
  };

  ChildResult clean = run_child(env("clean", false), "[.gpu_cache_child]");
  INFO(clean.output);
  REQUIRE(clean.exit_code == 0);
  CHECK(count(clean.output, "warning") == 0);
  std::vector<fs::path> cubins;
  for (const auto& entry : fs::directory_iterator(cache))
    if (entry.path().extension() == ".cubin") cubins.push_back(entry.path());
  REQUIRE(!cubins.empty());

  // One flipped byte in the middle of every CUBIN.
  for (const auto& path : cubins) {
    std::string bytes = read_bytes(path);
    bytes[bytes.size() / 2] = static_cast<char>(bytes[bytes.size() / 2] ^ 0x10);
    std::ofstream(path, std::ios::binary | std::ios::trunc)
        .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  ChildResult damaged = run_child(env("damaged", false), "[.gpu_cache_child]");
  INFO(damaged.output);
  CHECK(damaged.exit_code == 0);
  CHECK(count(damaged.output, "is damaged (expected checksum ") == cubins.size());
  CHECK(count(damaged.output, "compiles=0 ") == 0);
  CHECK(read_bytes(dir / "damaged") == read_bytes(dir / "clean"));

  // Replaced: a process that may not compile runs from the cache, same results.
  ChildResult warm = run_child(env("warm", true), "[.gpu_cache_child]");
  INFO(warm.output);
  CHECK(warm.exit_code == 0);
  CHECK(count(warm.output, "gpu-cache-child: compiles=0 ") == 1);
  CHECK(count(warm.output, "warning") == 0);
  CHECK(read_bytes(dir / "warm") == read_bytes(dir / "clean"));
  fs::remove_all(dir);
}
