// The parser of the text form (see ir/parser.h for the contract).
//
// Two phases. Phase 1 reads the text with a character cursor into plain
// records (arguments, results, ops with their operand names, attributes and
// declared types), keeping the byte offset of everything a message may point
// at. Phase 2 resolves names in order, checks the declared types against the
// values, builds the Graph and runs the verifier. Splitting the phases lets
// "use of %7 before its definition" be told apart from "undefined %7".
//
// Safety: the grammar has no nesting deeper than module > func > op, so the
// parser is a handful of loops and never recurses; every loop advances the
// cursor or stops; cur() returns '\0' past the end.
#include "ir/parser.h"

#include <fmt/format.h>

#include <charconv>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>

#include "ir/verifier.h"

namespace moejit {

std::string ParseDiagnostic::str() const { return fmt::format("{}:{}:{}: error: {}", filename, line, column, message); }

namespace {
std::string join_diagnostics(const std::vector<ParseDiagnostic>& diagnostics) {
  std::string out;
  for (const auto& d : diagnostics) {
    if (!out.empty()) out += '\n';
    out += d.str();
  }
  return out;
}
}  // namespace

ParseError::ParseError(std::vector<ParseDiagnostic> diagnostics)
    : Error(join_diagnostics(diagnostics)), diagnostics_(std::move(diagnostics)) {}

namespace {

constexpr std::int64_t kMaxElements = std::int64_t{1} << 40;
constexpr int kMaxRank = 16;
constexpr std::int64_t kMaxResultGroup = 64;

bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
bool is_hex(char c) { return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }
bool is_id_start(char c) { return is_alpha(c) || c == '_'; }
bool is_id_char(char c) { return is_alpha(c) || is_digit(c) || c == '_' || c == '$' || c == '.'; }
// Characters of an SSA name after '%' (MLIR's suffix-id).
bool is_value_char(char c) { return is_id_char(c) || c == '-'; }

std::string quoted(const std::string& s) { return attr_value_str(AttrValue{s}); }

struct TypeAt {
  TensorType type;
  std::size_t offset = 0;
};

struct ValueRef {
  std::string name;  // without '%'
  int result = -1;   // the #n suffix, -1 when absent
  std::size_t offset = 0;
};

struct ParsedArg {
  std::string name;
  std::size_t offset = 0;
  TypeAt type;
  ArgRole role = ArgRole::input;
};

struct ParsedResult {
  TypeAt type;
  std::string name, updates;
};

struct ParsedOp {
  std::size_t offset = 0;  // the result name: where diagnostics point
  std::string name;        // result group name, without '%'
  std::int64_t declared_results = 1;
  OpKind kind{};
  std::vector<ValueRef> operands;
  AttrList attrs;
  std::size_t operand_types_offset = 0, result_types_offset = 0;
  std::vector<TypeAt> operand_types, result_types;
};

struct ParsedFunc {
  std::string name;
  std::vector<ParsedArg> args;
  std::vector<ParsedResult> results;
  std::vector<ParsedOp> ops;
  std::size_t return_offset = 0, return_types_offset = 0;
  std::vector<ValueRef> returned;
  std::vector<TypeAt> return_types;
};

class Parser {
 public:
  Parser(std::string_view text, std::string_view filename) : text_(text), filename_(filename) {}

  Graph run() {
    ParsedFunc func = parse_top();
    return build(func);
  }

 private:
  // ---- locations and errors ----
  ParseDiagnostic diagnostic(std::size_t offset, std::string message) const {
    int line = 1, column = 1;
    for (std::size_t i = 0; i < offset && i < text_.size(); ++i) {
      if (text_[i] == '\n') {
        ++line;
        column = 1;
      } else {
        ++column;
      }
    }
    return ParseDiagnostic{filename_, line, column, std::move(message)};
  }
  [[noreturn]] void fail(std::size_t offset, std::string message) const {
    throw ParseError({diagnostic(offset, std::move(message))});
  }
  std::string where(std::size_t offset) const {
    auto d = diagnostic(offset, "");
    return fmt::format("{}:{}", d.line, d.column);
  }

  // What the cursor is on, for "found ..." (after skip()).
  std::string found() const {
    if (pos_ >= text_.size()) return "end of input";
    char c = text_[pos_];
    std::size_t end = pos_ + 1;
    if (is_id_start(c)) {
      while (end < text_.size() && is_id_char(text_[end])) ++end;
    } else if (is_digit(c) || (c == '-' && end < text_.size() && is_digit(text_[end]))) {
      while (end < text_.size() && (is_alpha(text_[end]) || is_digit(text_[end]) || text_[end] == '.')) ++end;
    } else if (c == '%' || c == '@') {
      while (end < text_.size() && is_value_char(text_[end])) ++end;
    } else if (c == '"') {
      while (end < text_.size() && text_[end] != '"' && text_[end] != '\n' && end - pos_ < 24) ++end;
      if (end < text_.size() && text_[end] == '"') ++end;
    } else if (c == '-' && end < text_.size() && text_[end] == '>') {
      ++end;
    } else if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) {
      return fmt::format("byte 0x{:02X}", static_cast<unsigned char>(c));
    }
    std::string token(text_.substr(pos_, std::min<std::size_t>(end - pos_, 32)));
    for (char& ch : token)
      if (static_cast<unsigned char>(ch) < 0x20 || static_cast<unsigned char>(ch) >= 0x7f) ch = '?';
    return "'" + token + "'";
  }
  [[noreturn]] void fail_expected(std::string_view what) {
    skip();
    fail(pos_, fmt::format("expected {}, found {}", what, found()));
  }

  // ---- the cursor ----
  char cur() const { return pos_ < text_.size() ? text_[pos_] : '\0'; }
  char next() const { return pos_ + 1 < text_.size() ? text_[pos_ + 1] : '\0'; }
  bool at_end() const { return pos_ >= text_.size(); }
  void skip() {
    while (pos_ < text_.size()) {
      char c = text_[pos_];
      if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
        ++pos_;
      } else if (c == '/' && next() == '/') {
        while (pos_ < text_.size() && text_[pos_] != '\n') ++pos_;
      } else {
        break;
      }
    }
  }
  bool accept(char c) {
    skip();
    if (at_end() || cur() != c) return false;
    ++pos_;
    return true;
  }
  bool accept(std::string_view s) {
    skip();
    if (text_.substr(pos_, s.size()) != s) return false;
    pos_ += s.size();
    return true;
  }
  void expect(char c, std::string_view what) {
    if (!accept(c)) fail_expected(what);
  }
  void expect(std::string_view s, std::string_view what) {
    if (!accept(s)) fail_expected(what);
  }
  // A bare identifier at the cursor (no skip), or empty.
  std::string_view bare_id() {
    if (!is_id_start(cur())) return {};
    std::size_t start = pos_;
    while (pos_ < text_.size() && is_id_char(text_[pos_])) ++pos_;
    return text_.substr(start, pos_ - start);
  }
  bool accept_keyword(std::string_view word) {
    skip();
    std::size_t saved = pos_;
    if (bare_id() == word) return true;
    pos_ = saved;
    return false;
  }
  bool peek_keyword(std::string_view word) {
    std::size_t saved = pos_;
    bool yes = accept_keyword(word);
    pos_ = saved;
    return yes;
  }

  // ---- literals ----
  std::int64_t integer(std::string_view what) {
    skip();
    std::size_t start = pos_;
    if (cur() == '-') ++pos_;
    if (!is_digit(cur())) {
      pos_ = start;
      fail_expected(what);
    }
    while (is_digit(cur()) && !at_end()) ++pos_;
    std::int64_t value = 0;
    auto [ptr, ec] = std::from_chars(text_.data() + start, text_.data() + pos_, value);
    if (ec != std::errc() || ptr != text_.data() + pos_)
      fail(start, fmt::format("integer {} does not fit in 64 bits", text_.substr(start, std::min<std::size_t>(pos_ - start, 40))));
    return value;
  }
  std::int64_t integer_in(std::int64_t lo, std::int64_t hi, std::string_view what) {
    skip();
    std::size_t start = pos_;
    std::int64_t v = integer(what);
    if (v < lo || v > hi) fail(start, fmt::format("expected {} in [{}, {}], found {}", what, lo, hi, v));
    return v;
  }

  std::string string_literal(std::string_view what) {
    skip();
    if (cur() != '"') fail_expected(what);
    std::size_t start = pos_++;
    std::string out;
    for (;;) {
      if (at_end() || cur() == '\n') fail(start, "unterminated string literal (expected a closing '\"')");
      char c = text_[pos_++];
      if (c == '"') return out;
      if (c != '\\') {
        out += c;
        continue;
      }
      char e = cur();
      if (e == '"' || e == '\\') {
        out += e;
        ++pos_;
      } else if (e == 'n') {
        out += '\n';
        ++pos_;
      } else if (e == 't') {
        out += '\t';
        ++pos_;
      } else if (is_hex(e) && is_hex(next())) {
        out += static_cast<char>(std::stoi(std::string(text_.substr(pos_, 2)), nullptr, 16));
        pos_ += 2;
      } else {
        fail(pos_ - 1, "invalid escape in string literal: expected \\\\, \\\", \\n, \\t or two hex digits");
      }
    }
  }

  // %name (without '%'); the value's offset is the '%'.
  std::string value_name(std::string_view what) {
    skip();
    if (cur() != '%') fail_expected(what);
    std::size_t start = ++pos_;
    while (pos_ < text_.size() && is_value_char(text_[pos_])) ++pos_;
    if (pos_ == start) {
      --pos_;
      fail_expected(what);
    }
    return std::string(text_.substr(start, pos_ - start));
  }

  ValueRef value_ref(std::string_view what) {
    skip();
    ValueRef ref;
    ref.offset = pos_;
    ref.name = value_name(what);
    if (cur() == '#') {
      ++pos_;
      if (!is_digit(cur())) fail_expected("a result number after '#'");
      ref.result = static_cast<int>(integer_in(0, kMaxResultGroup - 1, "a result number"));
    }
    return ref;
  }

  // ---- types ----
  TypeAt tensor_type(std::string_view what) {
    skip();
    TypeAt out;
    out.offset = pos_;
    if (!accept_keyword("tensor")) fail_expected(what);
    if (cur() != '<') fail_expected("'<' after 'tensor'");
    ++pos_;
    skip();
    std::int64_t elements = 1;
    for (;;) {
      if (is_digit(cur())) {
        std::size_t dim_offset = pos_;
        std::int64_t dim = integer("a dimension");
        if (dim > kMaxElements) fail(dim_offset, fmt::format("dimension {} is too large (at most 2^40)", dim));
        if (out.type.rank() >= kMaxRank) fail(dim_offset, fmt::format("expected a rank of at most {}", kMaxRank));
        std::int64_t factor = std::max<std::int64_t>(dim, 1);
        if (elements > kMaxElements / factor)
          fail(out.offset, "tensor type has more than 2^40 elements, the most moejit supports");
        elements *= factor;
        out.type.shape.push_back(dim);
        if (cur() != 'x') fail_expected("'x' after a dimension");
        ++pos_;
        continue;
      }
      if (cur() == '?') fail(pos_, "dynamic dimension '?' is not supported: shapes are static");
      std::size_t dtype_offset = pos_;
      std::string_view name = bare_id();
      if (name.empty()) fail_expected("a dimension or an element type (f32, f64, bf16, f16, i32, i64, i1)");
      auto dtype = parse_dtype(name);
      if (!dtype) fail(dtype_offset, fmt::format("unknown element type '{}'", name.substr(0, 32)));
      out.type.dtype = *dtype;
      break;
    }
    expect('>', "'>' to close the tensor type");
    return out;
  }

  // '(' [type (',' type)*] ')'
  std::vector<TypeAt> type_list(std::string_view context) {
    std::vector<TypeAt> types;
    expect('(', fmt::format("'(' to start the {}", context));
    if (accept(')')) return types;
    for (;;) {
      types.push_back(tensor_type(fmt::format("a tensor type in the {}", context)));
      if (accept(',')) continue;
      expect(')', fmt::format("',' or ')' in the {}", context));
      return types;
    }
  }

  // ---- attributes ----
  AttrValue number_attr() {
    std::size_t start = pos_;
    bool negative = cur() == '-';
    if (negative) ++pos_;
    if (cur() == '0' && (next() == 'x' || next() == 'X')) {
      pos_ += 2;
      std::size_t digits = pos_;
      while (is_hex(cur()) && !at_end()) ++pos_;
      if (pos_ == digits || pos_ - digits > 16 || negative)
        fail(start, "expected a hexadecimal float literal of 1 to 16 digits such as 0x7FF0000000000000");
      std::uint64_t bits = 0;
      std::from_chars(text_.data() + digits, text_.data() + pos_, bits, 16);
      if (!accept(':') || !accept_keyword("f64")) fail_expected("': f64' after a hexadecimal float literal");
      double value;
      std::memcpy(&value, &bits, sizeof value);
      return value;
    }
    if (!is_digit(cur())) {
      pos_ = start;
      fail_expected("a number");
    }
    while (is_digit(cur()) && !at_end()) ++pos_;
    bool is_float_literal = false;
    if (cur() == '.') {
      is_float_literal = true;
      ++pos_;
      while (is_digit(cur()) && !at_end()) ++pos_;
      if (cur() == 'e' || cur() == 'E') {
        ++pos_;
        if (cur() == '+' || cur() == '-') ++pos_;
        if (!is_digit(cur())) fail_expected("digits in the exponent of a float literal");
        while (is_digit(cur()) && !at_end()) ++pos_;
      }
    }
    std::string_view literal = text_.substr(start, pos_ - start);
    // An optional type: ': i64' (or i32) for an integer, ': f64' (or f32) for a float.
    bool as_float = is_float_literal;
    std::size_t saved = pos_;
    if (accept(':')) {
      skip();
      std::size_t type_offset = pos_;
      std::string_view type = bare_id();
      if (type == "f64" || type == "f32") {
        as_float = true;
      } else if (type == "i64" || type == "i32") {
        if (is_float_literal) fail(type_offset, fmt::format("expected a float type (f64) for {}, found '{}'", literal, type));
      } else {
        pos_ = type_offset;
        fail_expected("an attribute type (i64 or f64) after ':'");
      }
    } else {
      pos_ = saved;
    }
    if (as_float) {
      double value = 0;
      auto [ptr, ec] = std::from_chars(literal.data(), literal.data() + literal.size(), value);
      if (ec == std::errc::result_out_of_range)
        fail(start, fmt::format("float literal {} is out of range for f64", literal.substr(0, 40)));
      if (ec != std::errc() || ptr != literal.data() + literal.size())
        fail(start, fmt::format("invalid float literal {}", literal.substr(0, 40)));
      return value;
    }
    std::int64_t value = 0;
    auto [ptr, ec] = std::from_chars(literal.data(), literal.data() + literal.size(), value);
    if (ec != std::errc() || ptr != literal.data() + literal.size())
      fail(start, fmt::format("integer {} does not fit in 64 bits", literal.substr(0, 40)));
    return value;
  }

  AttrValue attr_value() {
    skip();
    std::size_t start = pos_;
    char c = cur();
    if (c == '"' && !at_end()) return string_literal("a string");
    if (c == '[') {
      ++pos_;
      std::vector<std::int64_t> values;
      if (accept(']')) return values;
      for (;;) {
        values.push_back(integer("an integer in the array"));
        if (accept(',')) continue;
        expect(']', "',' or ']' in the integer array");
        return values;
      }
    }
    if (c == '-' || is_digit(c)) return number_attr();
    std::string_view word = bare_id();
    if (word == "true") return true;
    if (word == "false") return false;
    if (auto dtype = parse_dtype(word)) return *dtype;
    pos_ = start;
    fail_expected("an attribute value (true, false, a number, a string, an integer array or a dtype)");
  }

  // '{' name '=' value (',' name '=' value)* '}'
  AttrList attr_dict() {
    AttrList attrs;
    expect('{', "'{' to start the attributes");
    if (accept('}')) return attrs;
    for (;;) {
      skip();
      std::size_t name_offset = pos_;
      std::string name;
      if (cur() == '"' && !at_end()) {
        name = string_literal("an attribute name");
      } else {
        name = std::string(bare_id());
        if (name.empty()) fail_expected("an attribute name");
      }
      if (attrs.has(name)) fail(name_offset, fmt::format("attribute '{}' is given twice", name));
      expect('=', fmt::format("'=' after attribute name '{}'", name));
      attrs.set(name, attr_value());
      if (accept(',')) continue;
      expect('}', "',' or '}' in the attributes");
      return attrs;
    }
  }

  // ---- the function ----
  ParsedFunc parse_top() {
    ParsedFunc func;
    if (accept_keyword("module")) {
      if (accept('@') && bare_id().empty()) fail_expected("a module name after '@'");
      expect('{', "'{' to open the module");
      func = parse_func();
      expect('}', "'}' to close the module");
    } else {
      func = parse_func();
    }
    skip();
    if (!at_end()) fail_expected("end of input after the function");
    return func;
  }

  ParsedFunc parse_func() {
    ParsedFunc func;
    if (!accept_keyword("func.func")) fail_expected("'func.func'");
    expect('@', "'@' and the function name");
    if (cur() == '"') {
      func.name = string_literal("the function name");
    } else {
      func.name = std::string(bare_id());
      if (func.name.empty()) fail_expected("a function name after '@'");
    }
    std::map<std::string, std::size_t> defined;  // name -> offset of its definition
    expect('(', "'(' to start the argument list");
    if (!accept(')')) {
      for (;;) {
        ParsedArg arg;
        skip();
        arg.offset = pos_;
        arg.name = value_name("an argument name such as %x");
        if (auto it = defined.find(arg.name); it != defined.end())
          fail(arg.offset, fmt::format("redefinition of %{} (first defined at {})", arg.name, where(it->second)));
        defined[arg.name] = arg.offset;
        expect(':', fmt::format("':' and a type after argument %{}", arg.name));
        arg.type = tensor_type("a tensor type for the argument");
        skip();
        if (cur() == '{') {
          std::size_t attrs_offset = pos_;
          AttrList attrs = attr_dict();
          for (const auto& a : attrs.items()) {
            const auto* role = std::get_if<std::string>(&a.value);
            if (a.name != "mj.role")
              fail(attrs_offset, fmt::format("unknown argument attribute '{}' (expected mj.role)", a.name));
            if (role && *role == "param") arg.role = ArgRole::param;
            else if (role && *role == "state") arg.role = ArgRole::state;
            else if (role && *role == "input") arg.role = ArgRole::input;
            else
              fail(attrs_offset, fmt::format("mj.role: expected \"input\", \"param\" or \"state\", found {}", attr_value_str(a.value)));
          }
        }
        func.args.push_back(std::move(arg));
        if (accept(',')) continue;
        expect(')', "',' or ')' in the argument list");
        break;
      }
    }
    if (accept("->")) {
      skip();
      if (cur() != '(') {
        func.results.push_back({tensor_type("a result type"), {}, {}});
      } else {
        expect('(', "'('");
        if (!accept(')')) {
          for (;;) {
            ParsedResult result{tensor_type("a result type"), {}, {}};
            skip();
            if (cur() == '{') {
              std::size_t attrs_offset = pos_;
              AttrList attrs = attr_dict();
              for (const auto& a : attrs.items()) {
                const auto* text = std::get_if<std::string>(&a.value);
                if (a.name != "mj.name" && a.name != "mj.updates")
                  fail(attrs_offset, fmt::format("unknown result attribute '{}' (expected mj.name or mj.updates)", a.name));
                if (!text) fail(attrs_offset, fmt::format("{}: expected a string, found {}", a.name, attr_value_str(a.value)));
                (a.name == "mj.name" ? result.name : result.updates) = *text;
              }
            }
            func.results.push_back(std::move(result));
            if (accept(',')) continue;
            expect(')', "',' or ')' in the result list");
            break;
          }
        }
      }
    }
    expect('{', "'{' to open the function body");
    for (;;) {
      skip();
      if (cur() == '%') {
        func.ops.push_back(parse_op(defined));
        continue;
      }
      std::size_t offset = pos_;
      if (accept_keyword("return") || accept_keyword("func.return")) {
        func.return_offset = offset;
        break;
      }
      fail_expected("an op ('%0 = \"dialect.op\"(...) ...') or 'return'");
    }
    skip();
    if (cur() == '%') {
      for (;;) {
        func.returned.push_back(value_ref("a value to return"));
        if (!accept(',')) break;
      }
      expect(':', "',' or ':' and the types of the returned values");
      skip();
      func.return_types_offset = pos_;
      for (;;) {
        func.return_types.push_back(tensor_type("a tensor type of a returned value"));
        if (!accept(',')) break;
      }
    }
    expect('}', "'}' to close the function body after 'return'");
    return func;
  }

  ParsedOp parse_op(std::map<std::string, std::size_t>& defined) {
    ParsedOp op;
    op.offset = pos_;
    op.name = value_name("a result name such as %0");
    if (auto it = defined.find(op.name); it != defined.end())
      fail(op.offset, fmt::format("redefinition of %{} (first defined at {})", op.name, where(it->second)));
    defined[op.name] = op.offset;
    if (accept(':')) op.declared_results = integer_in(1, kMaxResultGroup, "a result count");
    expect('=', "'=' after the result name");
    skip();
    std::size_t name_offset = pos_;
    std::string op_name_text = string_literal("the op name as a string, such as \"mj.add\"");
    auto kind = find_op(op_name_text);
    if (!kind) fail(name_offset, fmt::format("unknown op {}", quoted(op_name_text)));
    op.kind = *kind;
    expect('(', "'(' to start the operand list");
    if (!accept(')')) {
      for (;;) {
        op.operands.push_back(value_ref("an operand such as %0"));
        if (accept(',')) continue;
        expect(')', "',' or ')' in operand list");
        break;
      }
    }
    skip();
    if (cur() == '{') op.attrs = attr_dict();
    expect(':', "':' and the op's type");
    skip();
    op.operand_types_offset = pos_;
    op.operand_types = type_list("operand types");
    expect("->", "'->' and the result types");
    skip();
    op.result_types_offset = pos_;
    if (cur() == '(')
      op.result_types = type_list("result types");
    else
      op.result_types.push_back(tensor_type("a result type"));
    return op;
  }

  // ---- phase 2: names, types, graph ----
  struct Def {
    std::vector<ValueId> values;
    std::size_t offset = 0;
  };

  ValueId resolve(const ValueRef& ref, const std::map<std::string, Def>& defs, const std::map<std::string, std::size_t>& later) {
    auto it = defs.find(ref.name);
    if (it == defs.end()) {
      if (auto l = later.find(ref.name); l != later.end())
        fail(ref.offset, fmt::format("use of value %{} before its definition (at {})", ref.name, where(l->second)));
      fail(ref.offset, fmt::format("use of undefined value %{}", ref.name));
    }
    const auto& values = it->second.values;
    if (ref.result < 0) {
      if (values.size() != 1)
        fail(ref.offset, fmt::format("%{} has {} results: expected a result number, such as %{}#0", ref.name, values.size(), ref.name));
      return values[0];
    }
    if (static_cast<std::size_t>(ref.result) >= values.size())
      fail(ref.offset, fmt::format("expected a result number below {} for %{}, found #{}", values.size(), ref.name, ref.result));
    return values[static_cast<std::size_t>(ref.result)];
  }

  static bool is_arg_name(std::string_view s) { return !s.empty() && is_id_start(s[0]) && s.find('-') == std::string_view::npos && s.find('$') == std::string_view::npos; }

  Graph build(const ParsedFunc& func) {
    Graph graph(func.name);
    std::map<std::string, Def> defs;
    std::map<std::string, std::size_t> later;
    for (const auto& op : func.ops) later[op.name] = op.offset;
    for (const auto& arg : func.args) {
      if (!is_arg_name(arg.name))
        fail(arg.offset, fmt::format("argument name: expected an identifier ([A-Za-z_][A-Za-z0-9_.]*), found %{}", arg.name));
      defs[arg.name] = Def{{graph.add_arg(arg.name, arg.type.type, arg.role)}, arg.offset};
    }
    std::vector<std::size_t> op_offsets;
    for (const auto& op : func.ops) {
      const OpInfo& info = op_info(op.kind);
      std::vector<ValueId> operands;
      for (const auto& ref : op.operands) operands.push_back(resolve(ref, defs, later));
      if (op.operand_types.size() != operands.size())
        fail(op.operand_types_offset, fmt::format("expected {} operand types (one per operand), found {}", operands.size(),
                                                  op.operand_types.size()));
      for (std::size_t i = 0; i < operands.size(); ++i) {
        const TensorType& actual = graph.type(operands[i]);
        if (op.operand_types[i].type != actual)
          fail(op.operand_types[i].offset, fmt::format("operand #{}: expected type {} (the type of %{}), found {}", i, actual.str(),
                                                       op.operands[i].name, op.operand_types[i].type.str()));
      }
      if (static_cast<std::int64_t>(op.result_types.size()) != op.declared_results)
        fail(op.result_types_offset, fmt::format("expected {} result types (%{}{}), found {}", op.declared_results, op.name,
                                                 op.declared_results > 1 ? fmt::format(":{}", op.declared_results) : "",
                                                 op.result_types.size()));
      if (op.declared_results != info.num_results)
        fail(op.offset, fmt::format("{} has {} result{}, found {}", quoted(std::string(info.name)), info.num_results,
                                    info.num_results == 1 ? "" : "s", op.declared_results));
      std::vector<TensorType> result_types;
      for (const auto& t : op.result_types) result_types.push_back(t.type);
      auto results = graph.add_op(op.kind, std::move(operands), op.attrs, std::move(result_types));
      defs[op.name] = Def{results, op.offset};
      op_offsets.push_back(op.offset);
    }
    // return: values, their declared types, and the signature agree.
    std::vector<ValueId> returned;
    for (const auto& ref : func.returned) returned.push_back(resolve(ref, defs, later));
    if (func.returned.size() != func.results.size())
      fail(func.return_offset, fmt::format("return: expected {} values (the function's results), found {}", func.results.size(),
                                           func.returned.size()));
    if (func.return_types.size() != func.returned.size())
      fail(func.return_types_offset, fmt::format("return: expected {} types (one per value), found {}", func.returned.size(),
                                                 func.return_types.size()));
    for (std::size_t i = 0; i < func.returned.size(); ++i) {
      ValueId v = returned[i];
      const TensorType& declared = func.return_types[i].type;
      if (declared != graph.type(v))
        fail(func.return_types[i].offset, fmt::format("return value #{}: expected type {} (the type of %{}), found {}", i,
                                                      graph.type(v).str(), func.returned[i].name, declared.str()));
      if (declared != func.results[i].type.type)
        fail(func.return_types[i].offset, fmt::format("return value #{}: expected type {} (declared in the signature), found {}", i,
                                                      func.results[i].type.type.str(), declared.str()));
      graph.add_output(v, func.results[i].name, func.results[i].updates);
    }
    std::vector<ParseDiagnostic> diagnostics;
    for (auto& d : verify(graph)) {
      std::size_t offset = d.op_index >= 0 && static_cast<std::size_t>(d.op_index) < op_offsets.size()
                               ? op_offsets[static_cast<std::size_t>(d.op_index)]
                               : func.return_offset;
      diagnostics.push_back(diagnostic(offset, std::move(d.message)));
    }
    if (!diagnostics.empty()) throw ParseError(std::move(diagnostics));
    return graph;
  }

  std::string_view text_;
  std::string filename_;
  std::size_t pos_ = 0;
};

}  // namespace

Graph parse_graph(std::string_view text, std::string_view filename) { return Parser(text, filename).run(); }

Graph parse_graph_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("cannot read '{}': no such file or not readable", path));
  std::ostringstream text;
  text << in.rdbuf();
  return parse_graph(text.str(), path);
}

}  // namespace moejit
