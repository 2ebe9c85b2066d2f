// The process's NCCL communicator (nccl_communicator.h).
#include "runtime/cuda/nccl_communicator.h"

#include <fmt/format.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <thread>

#include "ir/error.h"
#include "ir/file_io.h"
#include "runtime/cuda/nccl_loader.h"

namespace moejit::cuda {

namespace {

using namespace nccl_api;

int env_int(const char* name) {
  const char* text = std::getenv(name);
  if (!text || !*text)
    throw Error(fmt::format("a graph for several ranks needs {} in the environment (set by `gpt_moe train --nproc N`, "
                            "torchrun, srun or mpirun), found it unset",
                            name));
  char* end = nullptr;
  long value = std::strtol(text, &end, 10);
  if (*end != '\0' || value < 0 || value > (1 << 20))
    throw Error(fmt::format("{}: expected a non-negative integer, found '{}'", name, text));
  return static_cast<int>(value);
}

DataType nccl_dtype(DType dtype) {
  switch (dtype) {
    case DType::f32: return kFloat32;
    case DType::f64: return kFloat64;
    case DType::bf16: return kBfloat16;
    case DType::f16: return kFloat16;
    case DType::i32: return kInt32;
    case DType::i64: return kInt64;
    case DType::i1: return kUint8;
  }
  return kFloat32;
}

// Rank 0 makes the id and publishes it atomically; the others wait for it.
UniqueId exchange_unique_id(const Nccl& n, int rank) {
  const char* path = std::getenv("MOEJIT_NCCL_ID_FILE");
  if (!path || !*path)
    throw Error("a graph for several ranks needs MOEJIT_NCCL_ID_FILE (where rank 0 writes NCCL's unique id) in the "
                "environment, found it unset");
  UniqueId id{};
  if (rank == 0) {
    check_nccl(n.ncclGetUniqueId(&id), "ncclGetUniqueId");
    write_file_atomically(path, std::string_view(id.internal, sizeof id.internal), "NCCL unique id");
    return id;
  }
  const char* timeout_text = std::getenv("MOEJIT_NCCL_TIMEOUT");
  const int timeout_s = timeout_text && *timeout_text ? std::atoi(timeout_text) : 120;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  while (std::chrono::steady_clock::now() < deadline) {
    std::ifstream in(path, std::ios::binary);
    if (in.read(id.internal, sizeof id.internal) && in.gcount() == static_cast<std::streamsize>(sizeof id.internal))
      return id;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  throw Error(fmt::format("rank {}: NCCL's unique id did not appear in {} within {} s (MOEJIT_NCCL_TIMEOUT): did rank 0 "
                          "start?",
                          rank, path, timeout_s));
}

class Communicator {
 public:
  explicit Communicator(int graph_world_size) : nccl_(nccl()) {
    rank_ = env_int("RANK");
    world_size_ = env_int("WORLD_SIZE");
    if (world_size_ != graph_world_size)
      throw Error(fmt::format("the graph was built for world_size {}, but WORLD_SIZE is {}", graph_world_size, world_size_));
    if (rank_ >= world_size_) throw Error(fmt::format("RANK: expected < WORLD_SIZE {}, found {}", world_size_, rank_));
    UniqueId id = exchange_unique_id(nccl_, rank_);
    check_nccl(nccl_.ncclCommInitRank(&comm_, world_size_, id, rank_), "ncclCommInitRank");
    watchdog_ = std::thread([this] { watch(); });
    watchdog_.detach();  // lives as long as the process: the communicator is never destroyed
  }

  void run(const CollectiveCall& c, CUstream cu_stream) {
    if (c.world_size != world_size_)
      throw Error(fmt::format("a collective for world_size {} in a process of WORLD_SIZE {}", c.world_size, world_size_));
    auto stream = reinterpret_cast<Stream>(cu_stream);
    auto src = reinterpret_cast<const void*>(c.src);
    auto dst = reinterpret_cast<void*>(c.dst);
    const auto count = static_cast<std::size_t>(c.count);
    const DataType type = nccl_dtype(c.dtype);
    switch (c.kind) {
      case codegen::Launch::Collective::all_reduce:
        check_nccl(nccl_.ncclAllReduce(src, dst, count, type, kSum, comm_, stream), "ncclAllReduce");
        return;
      case codegen::Launch::Collective::all_gather:
        check_nccl(nccl_.ncclAllGather(src, dst, count, type, comm_, stream), "ncclAllGather");
        return;
      case codegen::Launch::Collective::reduce_scatter:
        check_nccl(nccl_.ncclReduceScatter(src, dst, count, type, kSum, comm_, stream), "ncclReduceScatter");
        return;
      case codegen::Launch::Collective::exchange: {
        // Block p of src and count p to rank p; block s of dst and count s from rank s.
        const auto block = static_cast<std::size_t>(c.bytes);
        check_nccl(nccl_.ncclGroupStart(), "ncclGroupStart");
        for (int peer = 0; peer < world_size_; ++peer) {
          const auto p = static_cast<std::size_t>(peer);
          check_nccl(nccl_.ncclSend(reinterpret_cast<const char*>(c.src) + p * block, block, kUint8, peer, comm_, stream), "ncclSend");
          check_nccl(nccl_.ncclRecv(reinterpret_cast<char*>(c.dst) + p * block, block, kUint8, peer, comm_, stream), "ncclRecv");
          check_nccl(nccl_.ncclSend(reinterpret_cast<const std::int32_t*>(c.src_counts) + p, 1, kInt32, peer, comm_, stream),
                     "ncclSend");
          check_nccl(nccl_.ncclRecv(reinterpret_cast<std::int32_t*>(c.dst_counts) + p, 1, kInt32, peer, comm_, stream), "ncclRecv");
        }
        check_nccl(nccl_.ncclGroupEnd(), "ncclGroupEnd");
        return;
      }
    }
  }

 private:
  void watch() {
    for (;;) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      Result async = kSuccess;
      Result polled = nccl_.ncclCommGetAsyncError(comm_, &async);
      if (polled == kSuccess && (async == kSuccess || async == kInProgress)) continue;
      const Result error = polled != kSuccess ? polled : async;
      std::string line = fmt::format("moejit: rank {} of {}: NCCL reported error {} ({}); aborting the communicator and "
                                     "exiting\n",
                                     rank_, world_size_, error, nccl_.ncclGetErrorString(error));
      [[maybe_unused]] auto written = write(2, line.data(), line.size());
      nccl_.ncclCommAbort(comm_);
      _exit(1);
    }
  }

  const Nccl& nccl_;
  int rank_ = 0, world_size_ = 1;
  Comm comm_ = nullptr;
  std::thread watchdog_;
};

Communicator& process_communicator(int world_size) {
  static std::mutex mutex;
  static Communicator* communicator = nullptr;  // one per process, never destroyed (the watchdog reads it)
  std::lock_guard lock(mutex);
  if (!communicator) communicator = new Communicator(world_size);
  return *communicator;
}

}  // namespace

void prepare_collectives(int world_size) { process_communicator(world_size); }

void run_collective(const CollectiveCall& call, CUstream stream) { process_communicator(call.world_size).run(call, stream); }

}  // namespace moejit::cuda
