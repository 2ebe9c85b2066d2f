// `moejit opt FILE|- --passes=a,b [--print-ir-after-all] [--pass-statistics]
//  [--emit=ir|dot|cuda] [--arch=sm_90a] [--split-input-file] [--no-verify-each] [-o OUT]`
//
// Parses IR text, runs a pass pipeline on it and prints the result, as
// mlir-opt does. --print-ir-after-all and --pass-statistics write to stderr.
// With --split-input-file the input is cut at lines starting with `// -----`
// and each piece is a separate graph (diagnostics keep the line numbers of
// the whole file); outputs are joined with `// -----` lines, and a piece that
// fails prints its error and does not stop the others (exit code 1 at the
// end; an -o file is then not written). --emit=cuda prints the CUDA
// backend's module for the target named by --arch (default sm_90a, with
// H100-like numbers; no GPU is needed).
#include <fmt/format.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <sstream>
#include <unistd.h>

#if MOEJIT_WITH_CUDA
#include "codegen/cuda_codegen.h"
#endif
#include "ir/error.h"
#include "ir/file_io.h"
#include "ir/graphviz.h"
#include "ir/parser.h"
#include "ir/printer.h"
#include "passes/pass_manager.h"
#include "tools/commands.h"

namespace moejit::cli {

std::string read_input(const std::string& path) {
  if (path == "-") {
    std::ostringstream text;
    text << std::cin.rdbuf();
    return text.str();
  }
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    throw Error(fmt::format("input '{}': expected an IR file, found a directory", path));
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("cannot open input file '{}'", path));
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_output(const std::string& path, const std::string& text) {
  if (path == "-") {
    std::cout << text;
    std::cout.flush();
    return;
  }
  write_file_atomically(path, text, "output");
}

namespace {

struct OptOptions {
  std::string input = "-";
  std::string output = "-";
  std::string passes;
  std::string emit = "ir";
  std::string arch = "sm_90a";
  bool print_ir_after_all = false;
  bool pass_statistics = false;
  bool split_input_file = false;
  bool verify_each = true;
};

// The pieces of a --split-input-file input, each padded with the newlines of
// the lines before it so that line numbers in diagnostics match the file.
std::vector<std::string> split_input(const std::string& text) {
  std::vector<std::string> pieces;
  std::string current;
  int line_count = 0;
  std::size_t pos = 0;
  while (pos < text.size()) {
    std::size_t end = text.find('\n', pos);
    std::size_t next = end == std::string::npos ? text.size() : end + 1;
    std::string_view line(text.data() + pos, next - pos);
    ++line_count;
    if (line.starts_with("// -----")) {
      pieces.push_back(std::move(current));
      current.assign(static_cast<std::size_t>(line_count), '\n');
    } else {
      current.append(line);
    }
    pos = next;
  }
  pieces.push_back(std::move(current));
  return pieces;
}

// Parses one graph, runs the pipeline and returns its printed form.
std::string process(const std::string& text, const OptOptions& o) {
  Graph graph = parse_graph(text, o.input == "-" ? "<stdin>" : o.input);
  PassManagerOptions pm_options;
  pm_options.verify_each = o.verify_each;
  pm_options.print_ir_after_all = o.print_ir_after_all ? &std::cerr : nullptr;
  PassManager manager(pm_options);
  manager.add_pipeline(o.passes);
  manager.run(graph);
  if (o.pass_statistics) manager.print_statistics(std::cerr);
#if MOEJIT_WITH_CUDA
  if (o.emit == "cuda") return codegen::emit_cuda_source(graph, codegen::Target::named(o.arch));  // the CUDA backend's module
#else
  if (o.emit == "cuda")
    throw Error("--emit=cuda: this build has no CUDA backend (configured with -DMOEJIT_WITH_CUDA=OFF)");
#endif
  return o.emit == "dot" ? graph_to_dot(graph) : print_graph(graph);
}

int run_opt(const OptOptions& o) {
  // A bad pipeline or architecture is reported once, before reading any input.
  PassManager{}.add_pipeline(o.passes);
#if MOEJIT_WITH_CUDA
  codegen::Target::named(o.arch);
#endif
  std::string text = read_input(o.input);
  std::vector<std::string> pieces = o.split_input_file ? split_input(text) : std::vector<std::string>{text};
  std::string output;
  bool failed = false;
  for (std::size_t i = 0; i < pieces.size(); ++i) {
    std::string piece_output;
    try {
      piece_output = process(pieces[i], o);
    } catch (const ParseError& e) {
      std::fprintf(stderr, "%s\n", e.what());
      failed = true;
      continue;
    } catch (const Error& e) {
      std::fprintf(stderr, "moejit: error: %s\n", e.what());
      failed = true;
      continue;
    }
    if (!output.empty()) output += "// -----\n";
    output += piece_output;
  }
  if (!(failed && o.output != "-")) write_output(o.output, output);
  return failed ? 1 : 0;
}

}  // namespace

void register_opt_command(CLI::App& app, Command& selected) {
  auto options = std::make_shared<OptOptions>();
  CLI::App* opt = app.add_subcommand("opt", "Parse IR, run a pass pipeline, print the result");
  opt->add_option("input", options->input, "IR file, or - for stdin")->required();
  opt->add_option("--passes", options->passes, "Pass pipeline, e.g. canonicalize,cse,autodiff{loss=loss wrt=w},dce");
  opt->add_flag("--print-ir-after-all", options->print_ir_after_all, "Print the IR after every pass to stderr");
  opt->add_flag("--pass-statistics", options->pass_statistics, "Print each pass's counters to stderr");
  opt->add_option("--emit", options->emit, "Output format")->check(CLI::IsMember({"ir", "dot", "cuda"}));
  opt->add_option("--arch", options->arch, "GPU architecture of --emit=cuda (sm_80, sm_90a, ...; default sm_90a)");
  opt->add_flag("--split-input-file", options->split_input_file,
                "Treat each piece between '// -----' lines as a separate graph");
  opt->add_flag("--verify-each,!--no-verify-each", options->verify_each,
                "Verify the graph after every pass (default on)");
  opt->add_option("-o,--output", options->output, "Output file (- for stdout)");
  opt->callback([options, &selected] { selected = [options] { return run_opt(*options); }; });
}

}  // namespace moejit::cli
