// Builds a tiny graph with the installed moejit and prints it, then runs the
// installed pass pipeline on it.
#include <moejit/ir/builder.h>
#include <moejit/ir/printer.h>
#include <moejit/passes/pass_manager.h>

#include <cstdio>

int main() {
  moejit::Graph graph("consumer");
  moejit::Builder b(graph);
  auto x = b.input("x", {2, 3});
  auto w = b.param("w", {3, 4});
  b.output(b.relu(b.matmul(x, w)), "y");
  b.exp(x);  // dead: dce removes it
  moejit::run_pipeline(graph, "dce");
  std::fputs(moejit::print_graph(graph).c_str(), stdout);
  return 0;
}
