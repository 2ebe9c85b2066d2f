// The process's NCCL communicator, for the collective launches of the CUDA
// executor (codegen::Launch::Kind::collective). One per process, one process
// per GPU, created on first use from the environment a launcher sets:
//   RANK, WORLD_SIZE              this process's rank and the number of ranks
//                                  (must equal the graph's world_size)
//   MOEJIT_NCCL_ID_FILE           where rank 0 writes NCCL's unique id and the
//                                  others read it (`gpt_moe train --nproc N`
//                                  puts it in the output directory; a shared
//                                  file system works across hosts); a fresh
//                                  path per launch: a stale id from an earlier
//                                  run would be read by the other ranks
//   MOEJIT_NCCL_TIMEOUT           seconds to wait for the id file (default 120)
// The GPU is the context's device: give each process its own with
// CUDA_VISIBLE_DEVICES (the local launcher sets it to LOCAL_RANK).
//
// A watchdog thread polls ncclCommGetAsyncError every 100 ms; on an error
// (a peer that died, a network failure) it aborts the communicator
// (ncclCommAbort, so no collective hangs) and ends the process with exit
// status 1 after one line on stderr naming the rank and the error.
#pragma once
#include <cuda.h>

#include <cstdint>

#include "codegen/cuda_codegen.h"

namespace moejit::cuda {

// One collective launch with its device addresses resolved.
struct CollectiveCall {
  codegen::Launch::Collective kind = codegen::Launch::Collective::all_reduce;
  DType dtype = DType::f32;
  std::int64_t count = 0;  // elements (all_gather: sent; reduce_scatter: received; exchange: per peer)
  std::int64_t bytes = 0;  // exchange: per peer
  int world_size = 1;
  CUdeviceptr src = 0, dst = 0, src_counts = 0, dst_counts = 0;
};

// Creates the process's communicator now if it does not exist (the executor
// calls it while preparing its launches: ncclCommInitRank must not run inside
// a CUDA-graph capture). Throws like run_collective.
void prepare_collectives(int world_size);

// Issues `call` on `stream` through the process's communicator (created on
// first use, see above). Throws moejit::Error naming what is missing (NCCL,
// RANK/WORLD_SIZE, the id file) or what NCCL said.
void run_collective(const CollectiveCall& call, CUstream stream);

}  // namespace moejit::cuda
