// CPU kernels of the MoE ops (moe.*). PLACEHOLDERS: being replaced by the
// MoE work (issue 4); each throws until its real kernel lands.
#include "ir/error.h"
#include "runtime/cpu/cpu_kernels.h"

namespace moejit::cpu {

void kernel_Gate(const KernelArgs&) { throw Error("CPU kernel for moe.gate is not implemented yet"); }
void kernel_GateGrad(const KernelArgs&) { throw Error("CPU kernel for moe.gate_grad is not implemented yet"); }
void kernel_Dispatch(const KernelArgs&) { throw Error("CPU kernel for moe.dispatch is not implemented yet"); }
void kernel_Permute(const KernelArgs&) { throw Error("CPU kernel for moe.permute is not implemented yet"); }
void kernel_PermuteGrad(const KernelArgs&) { throw Error("CPU kernel for moe.permute_grad is not implemented yet"); }
void kernel_GroupedMatmul(const KernelArgs&) { throw Error("CPU kernel for moe.grouped_matmul is not implemented yet"); }
void kernel_GroupedMatmulWgrad(const KernelArgs&) { throw Error("CPU kernel for moe.grouped_matmul_wgrad is not implemented yet"); }
void kernel_Combine(const KernelArgs&) { throw Error("CPU kernel for moe.combine is not implemented yet"); }
void kernel_CombineGrad(const KernelArgs&) { throw Error("CPU kernel for moe.combine_grad is not implemented yet"); }
void kernel_LoadBalanceLoss(const KernelArgs&) { throw Error("CPU kernel for moe.load_balance_loss is not implemented yet"); }
void kernel_LoadBalanceLossGrad(const KernelArgs&) { throw Error("CPU kernel for moe.load_balance_loss_grad is not implemented yet"); }
void kernel_ZLoss(const KernelArgs&) { throw Error("CPU kernel for moe.z_loss is not implemented yet"); }
void kernel_ZLossGrad(const KernelArgs&) { throw Error("CPU kernel for moe.z_loss_grad is not implemented yet"); }
void kernel_EntropyReg(const KernelArgs&) { throw Error("CPU kernel for moe.entropy_reg is not implemented yet"); }
void kernel_EntropyRegGrad(const KernelArgs&) { throw Error("CPU kernel for moe.entropy_reg_grad is not implemented yet"); }
void kernel_Route(const KernelArgs&) { throw Error("CPU kernel for moe.route is not implemented yet"); }
void kernel_GatherMatmul(const KernelArgs&) { throw Error("CPU kernel for moe.gather_matmul is not implemented yet"); }
void kernel_MatmulCombine(const KernelArgs&) { throw Error("CPU kernel for moe.matmul_combine is not implemented yet"); }

}  // namespace moejit::cpu
