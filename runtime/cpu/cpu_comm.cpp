// CPU kernels of the communication ops (comm.*). The CPU backend runs a
// single rank, so each one is the identity there (a one-rank collective
// sends everything to itself); a graph built for world_size > 1 is rejected
// with an error naming the op, never run as if it were one rank.
#include <cstring>

#include "ir/verifier.h"
#include "runtime/cpu/cpu_util.h"

namespace moejit::cpu {
namespace {

std::string label(const KernelArgs& args) {
  const auto& ops = args.graph.ops();
  if (!ops.empty() && &args.op >= ops.data() && &args.op < ops.data() + ops.size())
    return describe_op(args.graph, static_cast<int>(&args.op - ops.data()));
  return fmt::format("\"{}\"", op_name(args.op.kind));
}

[[noreturn]] void fail(const KernelArgs& args, const std::string& message) {
  throw Error(fmt::format("{}: {}", label(args), message));
}

void expect_single_rank(const KernelArgs& args) {
  const std::int64_t world_size = args.op.attrs.get_int("world_size");
  if (world_size != 1)
    fail(args, fmt::format("world_size {}: the CPU backend runs a single rank only (expected world_size 1)", world_size));
}

void copy_operand_to_result(const KernelArgs& args, int operand, int result) {
  if (input(args, operand).bytes() > 0)
    std::memcpy(output(args, result).raw(), input(args, operand).raw(), input(args, operand).bytes());
}

}  // namespace

/// all_reduce on one rank: y = x (the sum over one rank).
void kernel_AllReduce(const KernelArgs& args) {
  expect_single_rank(args);
  copy_operand_to_result(args, 0, 0);
}

/// all_gather on one rank: y = x (world_size * R = R rows).
void kernel_AllGather(const KernelArgs& args) {
  expect_single_rank(args);
  copy_operand_to_result(args, 0, 0);
}

/// reduce_scatter on one rank: y = x.
void kernel_ReduceScatter(const KernelArgs& args) {
  expect_single_rank(args);
  copy_operand_to_result(args, 0, 0);
}

/// all_to_all on one rank: every row goes to rank 0, itself: y = x,
/// recv_counts = send_counts. The counts are checked as a real exchange
/// would: none negative, their sum within x's rows.
void kernel_AllToAll(const KernelArgs& args) {
  expect_single_rank(args);
  const std::int64_t rows = input(args, 0).shape().empty() ? 0 : input(args, 0).shape()[0];
  std::int64_t total = 0;
  for (std::int32_t count : in<std::int32_t>(args, 1)) {
    if (count < 0) fail(args, fmt::format("send_counts: expected counts >= 0, found {}", count));
    total += count;
  }
  if (total > rows)
    fail(args, fmt::format("send_counts: expected a sum of at most {} (the rows of x), found {}", rows, total));
  copy_operand_to_result(args, 0, 0);
  copy_operand_to_result(args, 1, 1);
}

}  // namespace moejit::cpu
