// The CPU reference kernels: one function per op of the table, each one
// obvious loop nest with the shapes in comments. They define what every op
// means; every other backend is tested against them.
#pragma once
#include <span>

#include "ir/graph.h"
#include "runtime/host_tensor.h"

namespace moejit::cpu {

struct KernelArgs {
  const Graph& graph;
  const Op& op;
  std::span<const HostTensor* const> inputs;  // one per operand
  std::span<HostTensor* const> outputs;       // one per result, allocated with its type
  int threads = 1;                            // a kernel may use up to this many threads
};

// Declares cpu::kernel_<Kind> for every op. A missing definition is a link
// error: no op can lack a CPU kernel.
#define MOEJIT_OP(kind, ...) void kernel_##kind(const KernelArgs& args);
#include "ir/ops.def"
#undef MOEJIT_OP

}  // namespace moejit::cpu
