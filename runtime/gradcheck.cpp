// The finite-difference gradient checker (see gradcheck.h).
#include "runtime/gradcheck.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "ir/error.h"
#include "passes/autodiff.h"
#include "runtime/backend.h"

namespace moejit {

std::string GradCheckEntry::str() const {
  return fmt::format("{}: max rel error {:.3g} (max abs error {:.3g}) at [{}] (analytic {:.10g}, numeric {:.10g})", name,
                     max_rel_error, max_abs_error, worst_index, analytic, numeric);
}

double GradCheckReport::max_rel_error() const {
  double worst = 0.0;
  for (const auto& entry : args) worst = std::max(worst, entry.max_rel_error);
  return worst;
}

const GradCheckEntry& GradCheckReport::at(const std::string& name) const {
  for (const auto& entry : args)
    if (entry.name == name) return entry;
  throw Error(fmt::format("gradient check report: no argument '{}'", name));
}

std::string GradCheckReport::str() const {
  std::string out;
  for (const auto& entry : args) out += entry.str() + "\n";
  return out;
}

HostTensor random_tensor(const TensorType& type, std::uint64_t seed, double lo, double hi) {
  MOEJIT_ASSERT(is_float(type.dtype), "random_tensor needs a float type");
  HostTensor t(type);
  // splitmix64: tiny, and the same stream everywhere.
  std::uint64_t state = seed * 0x9E3779B97F4A7C15ull + 0x2545F4914F6CDD1Dull;
  for (std::int64_t i = 0; i < t.numel(); ++i) {
    std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    double unit = static_cast<double>(z >> 11) * 0x1.0p-53;  // [0, 1)
    t.set(i, lo + (hi - lo) * unit);
  }
  return t;
}

Tensor probe_loss(Builder& b, Tensor y, const std::string& probe_name, const std::string& loss_name) {
  Tensor probe = b.input(probe_name, y.shape(), y.dtype());
  std::vector<std::int64_t> all(static_cast<std::size_t>(y.rank()));
  std::iota(all.begin(), all.end(), 0);
  Tensor loss = b.sum(b.mul(y, probe), all, false);
  b.output(loss, loss_name);
  return loss;
}

GradCheckReport check_gradients(const Graph& graph, const std::map<std::string, HostTensor>& values,
                                const std::vector<std::string>& wrt_names, const GradCheckOptions& options) {
  std::vector<std::string> wrt = wrt_names;  // empty: every float param, as append_backward does
  if (wrt.empty())
    for (const auto& arg : graph.args())
      if (arg.role == ArgRole::param && is_float(graph.type(arg.value).dtype)) wrt.push_back(graph.value(arg.value).name);
  // Bind every argument: given values, else random floats.
  std::map<std::string, HostTensor> bound;
  for (std::size_t i = 0; i < graph.args().size(); ++i) {
    ValueId v = graph.args()[i].value;
    const std::string& name = graph.value(v).name;
    auto it = values.find(name);
    if (it != values.end()) {
      bound.emplace(name, it->second);
    } else if (is_float(graph.type(v).dtype)) {
      bound.emplace(name, random_tensor(graph.type(v), options.seed + i));
    } else {
      throw Error(fmt::format("check_gradients: argument '{}' ({}) needs a value: only float arguments are filled at random", name,
                              graph.type(v).str()));
    }
  }
  for (const auto& [name, value] : values)
    if (!bound.count(name)) throw Error(fmt::format("check_gradients: a value is given for '{}', which is not an argument", name));

  // Analytic gradients.
  Graph backward = graph;
  append_backward(backward, AutodiffOptions{options.loss, wrt});
  auto backend = make_cpu_backend();
  auto analytic_exe = backend->compile(backward);
  auto forward_exe = backend->compile(graph);
  for (const auto& [name, value] : bound) {
    analytic_exe->set(name, value);
    forward_exe->set(name, value);
  }
  analytic_exe->run();

  auto loss_at = [&]() {
    forward_exe->run();
    return forward_exe->get(options.loss).get(0);
  };

  GradCheckReport report;
  for (const auto& name : wrt) {
    HostTensor analytic = analytic_exe->get("grad." + name);
    HostTensor x = bound.at(name);
    double h = options.step > 0 ? options.step : (x.dtype() == DType::f64 ? 1e-6 : 1e-3);
    GradCheckEntry entry;
    entry.name = name;
    for (std::int64_t i = 0; i < x.numel(); ++i) {
      double original = x.get(i);
      x.set(i, original + h);
      forward_exe->set(name, x);
      double plus = loss_at();
      x.set(i, original - h);
      forward_exe->set(name, x);
      double minus = loss_at();
      x.set(i, original);
      double numeric = (plus - minus) / (2.0 * h);
      double a = analytic.get(i);
      double abs_error = std::abs(a - numeric);
      double rel_error = abs_error / std::max({std::abs(a), std::abs(numeric), options.floor});
      if (std::isnan(rel_error)) rel_error = abs_error = INFINITY;  // a NaN anywhere is the worst error
      if (entry.worst_index < 0 || rel_error > entry.max_rel_error) {
        entry.max_rel_error = rel_error;
        entry.worst_index = i;
        entry.analytic = a;
        entry.numeric = numeric;
      }
      entry.max_abs_error = std::max(entry.max_abs_error, abs_error);
      entry.max_abs_numeric = std::max(entry.max_abs_numeric, std::abs(numeric));
    }
    forward_exe->set(name, x);
    report.args.push_back(entry);
  }
  return report;
}

GradCheckReport check_gradients(const std::function<void(Builder&)>& build, const std::map<std::string, HostTensor>& values,
                                const std::vector<std::string>& wrt, const GradCheckOptions& options) {
  Graph graph("gradcheck");
  Builder b(graph);
  build(b);
  return check_gradients(graph, values, wrt, options);
}

}  // namespace moejit
