// The NCCL path of the CUDA backend on ONE GPU: with
// MOEJIT_COMM_NCCL_SINGLE_RANK=1 the comm ops of a world_size-1 graph go
// through a one-rank NCCL communicator (bootstrapped from RANK, WORLD_SIZE
// and the id file like N ranks), the all_to_all through its pack kernel,
// ncclSend/ncclRecv and its unpack kernel. On one rank every collective is
// the identity, so the results must equal the CPU backend's bit for bit,
// eagerly and replayed from a captured CUDA graph. Needs a GPU and
// libnccl.so.2 (MOEJIT_NCCL_LIBRARY may point at PyTorch's copy); skipped
// otherwise.
#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>

#include "codegen/cuda_codegen.h"
#include "cuda/cuda_test_util.h"
#include "ir/builder.h"
#include "runtime/cuda/cuda_backend.h"
#include "runtime/cuda/nccl_loader.h"

using namespace moejit;

TEST_CASE("comm ops through a one-rank NCCL communicator equal the CPU backend, eager and replayed", "[gpu][nccl]") {
  MOEJIT_SKIP_WITHOUT_GPU();
  std::string why;
  if (!cuda::nccl_available(&why)) {
    WARN("SKIPPED: no CUDA device with NCCL (" << why << ")");
    return;
  }
  const std::string id_file =
      (std::filesystem::temp_directory_path() / fmt::format("moejit_nccl_gpu_test.{}", getpid())).string();
  ::setenv("RANK", "0", 1);
  ::setenv("WORLD_SIZE", "1", 1);
  ::setenv("MOEJIT_NCCL_ID_FILE", id_file.c_str(), 1);
  ::setenv("MOEJIT_COMM_NCCL_SINGLE_RANK", "1", 1);

  Graph graph("nccl_one_rank");
  Builder b(graph);
  const AttrList world{{"world_size", std::int64_t{1}}};
  Tensor x = b.input("x", {8, 4});
  Tensor counts = b.input("counts", {1}, DType::i32);
  Tensor reduced = b.op1(OpKind::AllReduce, {x}, world);
  Tensor gathered = b.op1(OpKind::AllGather, {reduced}, world);
  auto exchanged = b.op(OpKind::AllToAll, {gathered, counts}, {{"recv_rows", std::int64_t{12}}, {"world_size", std::int64_t{1}}});
  b.output(b.op1(OpKind::ReduceScatter, {exchanged[0]}, world), "y");
  b.output(exchanged[1], "recv_counts");

  codegen::ModuleCode module = codegen::generate_module(graph, codegen::Target::named("sm_90a"));
  int collectives = 0;
  for (const auto& step : module.steps)
    for (const auto& launch : step.launches) collectives += launch.kind == codegen::Launch::Kind::collective;
  CHECK(collectives == 4);

  auto cpu = make_cpu_backend()->compile(graph);
  auto gpu = make_cuda_backend()->compile(graph);
  std::mt19937 rng(7);
  auto check_same = [&](std::int32_t sent) {
    INFO("rows sent " << sent);
    HostTensor xv = cuda_test::random_args(graph, rng(), 1, 1.0).at("x");
    HostTensor cv = HostTensor::from_ints({1}, std::vector<std::int32_t>{sent});
    for (auto* exe : {cpu.get(), gpu.get()}) {
      exe->set("x", xv);
      exe->set("counts", cv);
      exe->run();
    }
    for (const char* name : {"y", "recv_counts"}) {
      HostTensor want = cpu->get(name), got = gpu->get(name);
      REQUIRE(got.bytes() == want.bytes());
      CHECK(std::memcmp(got.raw(), want.raw(), want.bytes()) == 0);
    }
  };
  check_same(5);
  check_same(8);
  cuda_capture_graph(*gpu);
  check_same(3);  // replayed: the counts are read on the device
  check_same(0);
  ::unsetenv("MOEJIT_COMM_NCCL_SINGLE_RANK");
  std::filesystem::remove(id_file);
}
