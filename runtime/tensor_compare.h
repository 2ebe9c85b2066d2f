// How a backend's result is compared with the CPU reference, one definition
// for the tests and the benches: the normalized error (ggml's nmse, llm.c's
// check_tensor) and the tolerance per dtype.
#pragma once
#include "runtime/host_tensor.h"

namespace moejit {

// ||got - reference|| / max(||reference||, 0.01 sqrt(n)) over the elements
// as doubles: the relative error, except that a reference whose RMS is under
// 0.01 (a gradient that nearly cancels) is judged against RMS 0.01. NaN in
// only one of them gives infinity. Types must match (else moejit::Error).
double normalized_error(const HostTensor& got, const HostTensor& reference);

// The allowed normalized error of one op's result against the CPU
// reference: f32 1e-4, f64 1e-10, bf16 2e-2 (8 bits of mantissa: half an ulp
// is 2^-9; a few roundings apart), f16 5e-3; integers 0 (exact). Results at
// the end of a longer chain (gradients, a whole step) get `slack` times that.
double tolerance(DType dtype, double slack = 1.0);

// max |got - reference| / max |reference| over the elements (the measure the
// Hugging Face comparisons report: "max relative logit difference");
// max |got - reference| when the reference is all zeros.
double max_relative_difference(const HostTensor& got, const HostTensor& reference);

}  // namespace moejit
