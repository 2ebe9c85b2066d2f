// NCCL, opened at run time like the driver and NVRTC: no binary links
// libnccl, so every binary starts where NCCL is not installed, and only a run
// with world_size > 1 needs it. The library tried, in order:
//   $MOEJIT_NCCL_LIBRARY   when set, and then only that one
//   libnccl.so.2, libnccl.so                          (the loader's search path)
// No NCCL header is needed: the few types and entry points moejit uses are
// declared here from NCCL's documented C API (nccl.h of NCCL 2.x), and each
// entry point is looked up with dlsym.
#pragma once
#include <cstddef>
#include <string>
#include <vector>

namespace moejit::cuda {

// ---- NCCL's C API, the part moejit calls (values as documented) ----
namespace nccl_api {

using Result = int;  // ncclResult_t: 0 = ncclSuccess, 7 = ncclInProgress
inline constexpr Result kSuccess = 0;
inline constexpr Result kInProgress = 7;

using Comm = struct ncclComm*;  // ncclComm_t, opaque
using Stream = struct CUstream_st*;  // cudaStream_t, the driver's CUstream

// ncclUniqueId: 128 opaque bytes, made by rank 0 and handed to every rank.
struct UniqueId {
  char internal[128];
};

// ncclDataType_t
enum DataType : int { kInt8 = 0, kUint8 = 1, kInt32 = 2, kUint32 = 3, kInt64 = 4, kUint64 = 5, kFloat16 = 6,
                      kFloat32 = 7, kFloat64 = 8, kBfloat16 = 9 };
// ncclRedOp_t
enum RedOp : int { kSum = 0, kProd = 1, kMax = 2, kMin = 3, kAvg = 4 };

using GetErrorStringFn = const char* (*)(Result);
using GetUniqueIdFn = Result (*)(UniqueId*);
using CommInitRankFn = Result (*)(Comm*, int nranks, UniqueId id, int rank);  // id by value, as in nccl.h
using CommAbortFn = Result (*)(Comm);
using CommDestroyFn = Result (*)(Comm);
using CommGetAsyncErrorFn = Result (*)(Comm, Result*);
using AllReduceFn = Result (*)(const void* send, void* recv, std::size_t count, DataType, RedOp, Comm, Stream);
using AllGatherFn = Result (*)(const void* send, void* recv, std::size_t send_count, DataType, Comm, Stream);
using ReduceScatterFn = Result (*)(const void* send, void* recv, std::size_t recv_count, DataType, RedOp, Comm, Stream);
using SendFn = Result (*)(const void* send, std::size_t count, DataType, int peer, Comm, Stream);
using RecvFn = Result (*)(void* recv, std::size_t count, DataType, int peer, Comm, Stream);
using GroupFn = Result (*)();
using GetVersionFn = Result (*)(int*);

}  // namespace nccl_api

// One function pointer per NCCL entry point moejit uses.
struct Nccl {
  nccl_api::GetErrorStringFn ncclGetErrorString = nullptr;
  nccl_api::GetVersionFn ncclGetVersion = nullptr;
  nccl_api::GetUniqueIdFn ncclGetUniqueId = nullptr;
  nccl_api::CommInitRankFn ncclCommInitRank = nullptr;
  nccl_api::CommAbortFn ncclCommAbort = nullptr;
  nccl_api::CommDestroyFn ncclCommDestroy = nullptr;
  nccl_api::CommGetAsyncErrorFn ncclCommGetAsyncError = nullptr;
  nccl_api::AllReduceFn ncclAllReduce = nullptr;
  nccl_api::AllGatherFn ncclAllGather = nullptr;
  nccl_api::ReduceScatterFn ncclReduceScatter = nullptr;
  nccl_api::SendFn ncclSend = nullptr;
  nccl_api::RecvFn ncclRecv = nullptr;
  nccl_api::GroupFn ncclGroupStart = nullptr;
  nccl_api::GroupFn ncclGroupEnd = nullptr;
  std::string library;  // the name or path that was opened
};

// The names tried, in order ($MOEJIT_NCCL_LIBRARY alone when it is set).
std::vector<std::string> nccl_library_candidates();

// Tries each candidate in order; "" when one opened with every entry point
// (then `out` holds them), else the message naming each name tried and why
// it failed. nccl() calls it once with nccl_library_candidates().
std::string load_nccl(const std::vector<std::string>& candidates, Nccl& out);

// NCCL, loaded on first use (once per process); throws moejit::Error
// "NCCL could not be loaded (tried NAME: why; ...)" when no candidate opens
// or one lacks an entry point.
const Nccl& nccl();

// Whether NCCL loads; when not, *why (if given) says what was tried.
bool nccl_available(std::string* why = nullptr);

// Throws moejit::Error "<what>: NCCL error N (<string>)" unless result is
// ncclSuccess.
void check_nccl(nccl_api::Result result, const char* what);

}  // namespace moejit::cuda
