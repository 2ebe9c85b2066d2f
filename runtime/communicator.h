// Communicator: how the comm.* ops of one rank reach the other ranks. The
// CPU backend's comm kernels use the communicator installed on the calling
// thread (ScopedCommunicator); with none installed a run is a single rank and
// a comm op with world_size > 1 is refused. Tests install an in-process one to
// run N ranks of a sharded graph as N threads (tests/scale/); the CUDA
// executor's NCCL communicator is the multi-GPU counterpart (docs/scale.md).
//
// Every call is collective: each of the world_size ranks makes the same
// calls in the same order, with tensors of the same type (all_to_all: the
// same row width; the counts say how many rows go to and come from each rank).
#pragma once
#include <cstdint>
#include <span>

#include "runtime/host_tensor.h"

namespace moejit {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  // y = the elementwise sum of x over ranks (y shaped like x).
  virtual void all_reduce_sum(const HostTensor& x, HostTensor& y) = 0;
  // x [R, ...] -> y [world_size * R, ...], rank r's rows at r * R.
  virtual void all_gather(const HostTensor& x, HostTensor& y) = 0;
  // x [world_size * R, ...] -> y [R, ...]: rank r gets the sum over ranks of
  // their rows r * R .. (r + 1) * R.
  virtual void reduce_scatter_sum(const HostTensor& x, HostTensor& y) = 0;
  // x's first sum(send_counts) rows, grouped by destination rank (
  // send_counts[d] rows for rank d, in rank order), go out; y receives every
  // rank's rows for this one packed in source-rank order from row 0,
  // recv_counts[s] of them from rank s; y's rows past the received ones are
  // zero. Throws moejit::Error when the rows received exceed y's rows.
  virtual void all_to_all(const HostTensor& x, std::span<const std::int32_t> send_counts, HostTensor& y,
                          std::span<std::int32_t> recv_counts) = 0;
};

// The communicator installed on this thread; nullptr when none (one rank).
Communicator* thread_communicator();

// Installs `communicator` on this thread for the scope's lifetime (restoring
// the previous one after).
class ScopedCommunicator {
 public:
  explicit ScopedCommunicator(Communicator* communicator);
  ~ScopedCommunicator();
  ScopedCommunicator(const ScopedCommunicator&) = delete;
  ScopedCommunicator& operator=(const ScopedCommunicator&) = delete;

 private:
  Communicator* previous_;
};

}  // namespace moejit
