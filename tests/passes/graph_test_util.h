// Helpers the pass tests share: a random tensor, a bit-for-bit comparison,
// and a graph run on the CPU backend for every output.
#pragma once
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "ir/graph.h"
#include "runtime/backend.h"
#include "runtime/host_tensor.h"

namespace moejit::pass_test {

// Normal values of the given scale.
inline HostTensor random_tensor(const TensorType& type, std::mt19937& rng, double scale = 1.0) {
  std::normal_distribution<double> normal(0.0, scale);
  std::vector<double> values(static_cast<std::size_t>(type.numel()));
  for (auto& v : values) v = normal(rng);
  return HostTensor::from_doubles(type, values);
}

inline bool same_bits(const HostTensor& a, const HostTensor& b) {
  return a.type() == b.type() && a.bytes() == b.bytes() && std::memcmp(a.raw(), b.raw(), a.bytes()) == 0;
}

// Runs `graph` on the CPU with `args`, returning every output by name.
inline std::map<std::string, HostTensor> run_cpu(const Graph& graph, const std::map<std::string, HostTensor>& args) {
  auto exe = make_cpu_backend()->compile(graph);
  for (const auto& [name, value] : args) exe->set(name, value);
  exe->run();
  std::map<std::string, HostTensor> results;
  for (const Output& o : graph.outputs()) results.emplace(o.name, exe->get(o.name));
  return results;
}

}  // namespace moejit::pass_test
