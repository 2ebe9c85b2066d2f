// CPU kernels of the communication ops (comm.*). Without a communicator on
// the calling thread (runtime/communicator.h) the CPU backend runs a single
// rank, so each one is the identity (a one-rank collective sends everything
// to itself) and a graph built for world_size > 1 is rejected with an error
// naming the op, never run as if it were one rank. With one installed whose
// world_size is the op's, the op is that communicator's collective (the
// in-process ranks of tests/scale/).
#include <cstring>

#include "runtime/communicator.h"

#include "ir/verifier.h"
#include "runtime/cpu/cpu_util.h"

namespace moejit::cpu {
namespace {

// The interpreter names the op in front of every kernel's error
// (cpu_backend.cpp), so the message here says only what went wrong.
[[noreturn]] void fail(const KernelArgs&, const std::string& message) { throw Error(message); }

// The communicator to run the op through, or nullptr for the one-rank identity.
Communicator* communicator_for(const KernelArgs& args) {
  const std::int64_t world_size = args.op.attrs.get_int("world_size");
  Communicator* comm = thread_communicator();
  if (comm && comm->world_size() == world_size && world_size > 1) return comm;
  if (world_size == 1) return nullptr;
  if (comm)
    fail(args, fmt::format("world_size {}: expected the world_size of this thread's communicator ({})", world_size,
                           comm->world_size()));
  fail(args, fmt::format("world_size {}: the CPU backend runs a single rank only (expected world_size 1, or a "
                         "communicator of {} ranks installed on the calling thread)",
                         world_size, world_size));
}

void copy_operand_to_result(const KernelArgs& args, int operand, int result) {
  if (input(args, operand).bytes() > 0)
    std::memcpy(output(args, result).raw(), input(args, operand).raw(), input(args, operand).bytes());
}

}  // namespace

/// all_reduce on one rank: y = x (the sum over one rank).
void kernel_AllReduce(const KernelArgs& args) {
  if (Communicator* comm = communicator_for(args)) return comm->all_reduce_sum(input(args, 0), output(args, 0));
  copy_operand_to_result(args, 0, 0);
}

/// all_gather on one rank: y = x (world_size * R = R rows).
void kernel_AllGather(const KernelArgs& args) {
  if (Communicator* comm = communicator_for(args)) return comm->all_gather(input(args, 0), output(args, 0));
  copy_operand_to_result(args, 0, 0);
}

/// reduce_scatter on one rank: y = x.
void kernel_ReduceScatter(const KernelArgs& args) {
  if (Communicator* comm = communicator_for(args)) return comm->reduce_scatter_sum(input(args, 0), output(args, 0));
  copy_operand_to_result(args, 0, 0);
}

/// all_to_all through the communicator, or on one rank: every row goes to rank 0, itself: y = x
/// (with recv_rows: x's first sum(send_counts) rows, zeros after),
/// recv_counts = send_counts. The counts are checked as a real exchange
/// would: none negative, their sum within x's rows.
void kernel_AllToAll(const KernelArgs& args) {
  Communicator* comm = communicator_for(args);
  const std::int64_t rows = input(args, 0).shape().empty() ? 0 : input(args, 0).shape()[0];
  std::int64_t total = 0;
  for (std::int32_t count : in<std::int32_t>(args, 1)) {
    if (count < 0) fail(args, fmt::format("send_counts: expected counts >= 0, found {}", count));
    total += count;
  }
  if (total > rows)
    fail(args, fmt::format("send_counts: expected a sum of at most {} (the rows of x), found {}", rows, total));
  const std::int64_t recv_rows = output(args, 0).shape().empty() ? 0 : output(args, 0).shape()[0];
  if (comm) {
    try {
      comm->all_to_all(input(args, 0), in<std::int32_t>(args, 1), output(args, 0), out<std::int32_t>(args, 1));
    } catch (const Error& e) {
      fail(args, e.what());
    }
    return;
  }
  if (recv_rows == rows) {
    copy_operand_to_result(args, 0, 0);
  } else {  // recv_rows: every row sent comes back to this one rank, the rest of y is zero
    if (total > recv_rows)
      fail(args, fmt::format("send_counts: expected a sum of at most {} (recv_rows, the rows of y), found {}", recv_rows, total));
    HostTensor& y = output(args, 0);
    const std::size_t row_bytes = rows > 0 ? input(args, 0).bytes() / static_cast<std::size_t>(rows) : 0;
    std::memset(y.raw(), 0, y.bytes());
    if (total > 0) std::memcpy(y.raw(), input(args, 0).raw(), static_cast<std::size_t>(total) * row_bytes);
  }
  copy_operand_to_result(args, 1, 1);
}

}  // namespace moejit::cpu
