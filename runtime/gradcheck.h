// A finite-difference gradient checker: the independent reference for every
// gradient rule (passes/grad_*.cpp). It differentiates a graph with
// append_backward, runs it on the CPU backend, and compares each analytic
// gradient element with a central difference of the loss,
//   numeric = (loss(x + h e_i) - loss(x - h e_i)) / (2 h).
// Build the graph in f64: in f32 the difference quotient is mostly noise.
//
//   Graph g("check");
//   Builder b(g);
//   auto x = b.input("x", {3, 4}, DType::f64);
//   auto w = b.param("w", {4, 5}, DType::f64);
//   probe_loss(b, b.gelu(b.matmul(x, w)));     // output "loss" = sum(y * probe)
//   auto report = check_gradients(g, {}, {"x", "w"});
//   REQUIRE(report.max_rel_error() < 1e-6);     // report.str() says where
//
// Points where the function has a kink (relu at 0, ties of max, a top-k
// boundary) must be avoided by the inputs: there the difference quotient
// straddles two pieces.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "ir/builder.h"
#include "runtime/host_tensor.h"

namespace moejit {

struct GradCheckOptions {
  std::string loss = "loss";  // the scalar float output to differentiate
  double step = 0.0;          // h; 0: 1e-6 for f64 arguments, 1e-3 otherwise
  // Denominator floor of the relative error, so that gradients near zero are
  // judged by their absolute error (relative to this scale) instead.
  double floor = 1e-3;
  std::uint64_t seed = 1;  // for float arguments with no given value
};

// The comparison for one argument.
struct GradCheckEntry {
  std::string name;
  // max over elements of |analytic - numeric| / max(|analytic|, |numeric|, floor)
  double max_rel_error = 0.0;
  double max_abs_error = 0.0;
  std::int64_t worst_index = -1;  // flat index of the element with max_rel_error
  double analytic = 0.0, numeric = 0.0;  // at worst_index
  double max_abs_numeric = 0.0;          // largest |numeric|: 0 means the check saw no signal
  std::string str() const;  // "w: max rel error 3e-09 at [5] (analytic 0.25, numeric 0.25)"
};

struct GradCheckReport {
  std::vector<GradCheckEntry> args;  // in the order of `wrt`
  double max_rel_error() const;      // over all arguments
  const GradCheckEntry& at(const std::string& name) const;  // throws if absent
  std::string str() const;           // one line per argument
};

// Checks d loss / d arg for each name in `wrt` (empty: every float param). `values` binds arguments by
// name; a float argument without a value gets random_tensor(type, seed + its
// index); a missing integer argument is a moejit::Error naming it. The graph
// is copied, never changed. Throws moejit::Error when autodiff does
// (no loss output, a wrt name that is no float argument, a NotDiff op on the
// path) or the backend does (an op without a CPU kernel).
GradCheckReport check_gradients(const Graph& graph, const std::map<std::string, HostTensor>& values,
                                const std::vector<std::string>& wrt, const GradCheckOptions& options = {});

// The same for a graph built by `build` (into an empty graph "gradcheck").
GradCheckReport check_gradients(const std::function<void(Builder&)>& build, const std::map<std::string, HostTensor>& values,
                                const std::vector<std::string>& wrt, const GradCheckOptions& options = {});

// Uniform values in [lo, hi) of a float type, from a fixed seed (the same on
// every machine).
HostTensor random_tensor(const TensorType& type, std::uint64_t seed, double lo = -1.0, double hi = 1.0);

// Adds an input `probe_name` shaped like y and the output options.loss-style
// "loss" = sum(y * probe): a scalar in which every element of y matters with
// its own weight (sum(y) alone would hide, e.g., softmax's gradient, which
// sums to zero along each row). Returns the loss.
Tensor probe_loss(Builder& b, Tensor y, const std::string& probe_name = "probe", const std::string& loss_name = "loss");

}  // namespace moejit
