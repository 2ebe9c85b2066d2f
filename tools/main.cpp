// The `moejit` command-line tool: parses the command line with CLI11 and runs
// one subcommand (see commands.h). Exit codes: 0 success, 1 an error in the
// input (printed to stderr), 2 a bad command line.
#include <cstdio>
#include <exception>

#include "ir/error.h"
#include "ir/parser.h"
#include "tools/commands.h"

int main(int argc, char** argv) {
  using namespace moejit::cli;
  CLI::App app{"moejit: a compiler for Mixture-of-Experts models", "moejit"};
  app.set_version_flag("--version", "moejit " MOEJIT_VERSION);
  app.require_subcommand(1);
  Command selected;
  register_opt_command(app, selected);
  register_ops_command(app, selected);
  register_passes_command(app, selected);
  register_tune_command(app, selected);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);  // prints help, the version, or the error
    return code == 0 ? 0 : 2;
  }
  if (!selected) return 2;
  try {
    return selected();
  } catch (const moejit::ParseError& e) {
    std::fprintf(stderr, "%s\n", e.what());  // already "file:line:col: error: ..."
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moejit: error: %s\n", e.what());
  }
  return 1;
}
