// The backend interface: compile a graph into an Executable, bind arguments,
// run, read outputs. Every backend runs the same IR; the CPU backend defines
// what each op means.
//
//   auto cpu = make_cpu_backend();
//   auto exe = cpu->compile(graph);
//   exe->set("w1", w1);             // params and state stay bound across runs
//   exe->set("x", batch);           // inputs are set before each run
//   exe->run();
//   HostTensor loss = exe->get("loss");
#pragma once
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "ir/graph.h"
#include "runtime/host_tensor.h"

namespace moejit {

class Executable {
 public:
  virtual ~Executable() = default;

  // The graph this executable runs (after the backend's own passes).
  virtual const Graph& graph() const = 0;
  // Binds an argument by name; throws moejit::Error if there is no such
  // argument or the type differs (naming both types).
  virtual void set(std::string_view name, const HostTensor& value) = 0;
  // Reads an output or an argument by name; throws moejit::Error if absent.
  virtual HostTensor get(std::string_view name) const = 0;
  // Runs the graph once. Every argument must be bound (else moejit::Error
  // naming the first unbound one). Outputs that update an argument (AdamW's
  // parameters and moments) replace it when the run ends.
  virtual void run() = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  // Verifies the graph (moejit::Error on failure) and prepares it to run.
  virtual std::unique_ptr<Executable> compile(const Graph& graph) = 0;
};

std::unique_ptr<Backend> make_cpu_backend();

}  // namespace moejit
