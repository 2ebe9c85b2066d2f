// Gradient rules of the MoE ops (moe.*). PLACEHOLDERS: being replaced by the
// MoE work (issue 4); each throws until its real rule lands.
#include "ir/error.h"
#include "passes/autodiff.h"

namespace moejit::grad {

GradResult rule_Gate(GradContext&) { throw Error("gradient rule for moe.gate is not implemented yet"); }
GradResult rule_Permute(GradContext&) { throw Error("gradient rule for moe.permute is not implemented yet"); }
GradResult rule_GroupedMatmul(GradContext&) { throw Error("gradient rule for moe.grouped_matmul is not implemented yet"); }
GradResult rule_Combine(GradContext&) { throw Error("gradient rule for moe.combine is not implemented yet"); }
GradResult rule_LoadBalanceLoss(GradContext&) { throw Error("gradient rule for moe.load_balance_loss is not implemented yet"); }
GradResult rule_ZLoss(GradContext&) { throw Error("gradient rule for moe.z_loss is not implemented yet"); }
GradResult rule_EntropyReg(GradContext&) { throw Error("gradient rule for moe.entropy_reg is not implemented yet"); }
GradResult rule_Route(GradContext&) { throw Error("gradient rule for moe.route is not implemented yet"); }
GradResult rule_GatherMatmul(GradContext&) { throw Error("gradient rule for moe.gather_matmul is not implemented yet"); }
GradResult rule_MatmulCombine(GradContext&) { throw Error("gradient rule for moe.matmul_combine is not implemented yet"); }

}  // namespace moejit::grad
