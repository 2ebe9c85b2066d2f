// The parser of moejit's text form: reads exactly what ir/printer.h prints
// (MLIR generic op syntax inside one func.func, optionally inside a
// `module { ... }`, with `// comments`), builds the Graph, then runs the
// verifier. Printing, parsing and printing again gives identical text.
//
// Every problem is a ParseError whose what() holds one line per diagnostic,
//   file:line:col: error: expected ',' or ')' in operand list, found 'foo'
// Verifier diagnostics point at the offending op's result name. The parser
// never crashes on bad input: no recursion, every read is bounds-checked,
// integer overflow is an error and tensor types are capped (rank <= 16,
// at most 2^40 elements).
#pragma once
#include <string>
#include <string_view>
#include <vector>

#include "ir/error.h"
#include "ir/graph.h"

namespace moejit {

struct ParseDiagnostic {
  std::string filename;
  int line = 0;    // 1-based
  int column = 0;  // 1-based, in bytes
  std::string message;
  // "file:line:col: error: message"
  std::string str() const;
};

class ParseError : public Error {
 public:
  explicit ParseError(std::vector<ParseDiagnostic> diagnostics);
  const std::vector<ParseDiagnostic>& diagnostics() const { return diagnostics_; }

 private:
  std::vector<ParseDiagnostic> diagnostics_;
};

// Parses and verifies one graph. `filename` only names the text in messages.
Graph parse_graph(std::string_view text, std::string_view filename = "<input>");

// Reads `path` and parses it; a file that cannot be read is a moejit::Error.
Graph parse_graph_file(const std::string& path);

}  // namespace moejit
