// The pass manager and pipeline parser (see pass_manager.h).
//
// Pipeline grammar (MLIR's textual pass pipeline, without nesting):
//   pipeline := entry (',' entry)*
//   entry    := name ('{' option (' ' option)* '}')?
//   option   := key '=' value      value: any text without spaces or braces
// Whitespace around names and between options is ignored.
#include "passes/pass_manager.h"

#include <fmt/format.h>

#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <iostream>
#include <ostream>

#include "ir/error.h"
#include "ir/printer.h"
#include "ir/verifier.h"

namespace moejit {

void Pass::count(const std::string& counter, std::int64_t n) {
  for (auto& [name, value] : stats_)
    if (name == counter) {
      value += n;
      return;
    }
  stats_.emplace_back(counter, n);
}

// ---- pipeline text ----
namespace {

bool is_space(char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; }

std::string_view trim(std::string_view s) {
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}

bool is_pass_name(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_')) return false;
  return true;
}

// Parses "key=value key2=value2" (the text inside one entry's braces).
PassOptions parse_options(std::string_view pass, std::string_view text, std::string_view pipeline) {
  PassOptions options;
  std::size_t i = 0;
  while (i < text.size()) {
    if (is_space(text[i])) {
      ++i;
      continue;
    }
    std::size_t end = i;
    while (end < text.size() && !is_space(text[end])) ++end;
    std::string_view item = text.substr(i, end - i);
    auto eq = item.find('=');
    if (eq == std::string_view::npos || eq == 0)
      throw Error(fmt::format("pass pipeline '{}': option '{}' of pass '{}': expected key=value", pipeline, item, pass));
    std::string key(item.substr(0, eq));
    if (options.count(key))
      throw Error(fmt::format("pass pipeline '{}': option '{}' of pass '{}' is given twice", pipeline, key, pass));
    options.emplace(std::move(key), std::string(item.substr(eq + 1)));
    i = end;
  }
  return options;
}

}  // namespace

std::vector<PipelineEntry> parse_pipeline(std::string_view text) {
  std::vector<PipelineEntry> pipeline;
  if (trim(text).empty()) return pipeline;
  std::size_t i = 0;
  while (true) {
    // One entry: up to the next ',' outside braces.
    std::size_t start = i;
    std::size_t brace = std::string_view::npos, close = std::string_view::npos;
    while (i < text.size() && !(text[i] == ',' && (brace == std::string_view::npos || close != std::string_view::npos))) {
      if (text[i] == '{') {
        if (brace != std::string_view::npos)
          throw Error(fmt::format("pass pipeline '{}': unexpected '{{' at column {} (options do not nest)", text, i + 1));
        brace = i;
      } else if (text[i] == '}') {
        if (brace == std::string_view::npos || close != std::string_view::npos)
          throw Error(fmt::format("pass pipeline '{}': unexpected '}}' at column {}", text, i + 1));
        close = i;
      }
      ++i;
    }
    if (brace != std::string_view::npos && close == std::string_view::npos)
      throw Error(fmt::format("pass pipeline '{}': the '{{' at column {} is never closed", text, brace + 1));
    std::string_view name = trim(text.substr(start, (brace == std::string_view::npos ? i : brace) - start));
    if (name.empty())
      throw Error(fmt::format("pass pipeline '{}': expected a pass name at column {}", text, start + 1));
    if (!is_pass_name(name))
      throw Error(fmt::format("pass pipeline '{}': expected a pass name ([A-Za-z0-9_-]+), found '{}'", text, name));
    PipelineEntry entry{std::string(name), {}};
    if (brace != std::string_view::npos) {
      if (!trim(text.substr(close + 1, i - close - 1)).empty())
        throw Error(fmt::format("pass pipeline '{}': unexpected text after the options of pass '{}' at column {}", text, name,
                                close + 2));
      entry.options = parse_options(name, text.substr(brace + 1, close - brace - 1), text);
    }
    pipeline.push_back(std::move(entry));
    if (i >= text.size()) break;
    ++i;  // the ','
  }
  return pipeline;
}

std::string pipeline_str(const std::vector<PipelineEntry>& pipeline) {
  std::string out;
  for (const auto& entry : pipeline) {
    if (!out.empty()) out += ",";
    out += entry.name;
    if (!entry.options.empty()) {
      std::vector<std::string> items;
      for (const auto& [key, value] : entry.options) items.push_back(key + "=" + value);
      out += fmt::format("{{{}}}", fmt::join(items, " "));
    }
  }
  return out;
}

// ---- option helpers ----
std::vector<std::string> option_list(const PassOptions& options, const std::string& key) {
  std::vector<std::string> items;
  auto it = options.find(key);
  if (it == options.end()) return items;
  std::string_view rest = it->second;
  while (!rest.empty()) {
    auto comma = rest.find(',');
    auto item = trim(rest.substr(0, comma));
    if (!item.empty()) items.emplace_back(item);
    if (comma == std::string_view::npos) break;
    rest.remove_prefix(comma + 1);
  }
  return items;
}

std::int64_t option_int(std::string_view pass, const PassOptions& options, const std::string& key, std::int64_t fallback) {
  auto it = options.find(key);
  if (it == options.end()) return fallback;
  const std::string& text = it->second;
  char* end = nullptr;
  errno = 0;
  long long value = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno != 0)
    throw Error(fmt::format("pass '{}': option '{}': expected an integer, found '{}'", pass, key, text));
  return value;
}

bool option_bool(std::string_view pass, const PassOptions& options, const std::string& key, bool fallback) {
  auto it = options.find(key);
  if (it == options.end()) return fallback;
  if (it->second == "true" || it->second == "1") return true;
  if (it->second == "false" || it->second == "0") return false;
  throw Error(fmt::format("pass '{}': option '{}': expected true or false, found '{}'", pass, key, it->second));
}

// ---- the manager ----
PassManager::PassManager(PassManagerOptions options) : options_(options) {
  if (!options_.print_ir_after_all) {
    const char* debug = std::getenv("MOEJIT_DEBUG");
    if (debug && std::atoi(debug) >= 2) options_.print_ir_after_all = &std::cerr;
  }
}
PassManager::~PassManager() = default;
PassManager::PassManager(PassManager&&) noexcept = default;
PassManager& PassManager::operator=(PassManager&&) noexcept = default;

void PassManager::add(std::unique_ptr<Pass> pass) {
  MOEJIT_ASSERT(pass != nullptr, "PassManager::add(nullptr)");
  passes_.push_back(std::move(pass));
}

namespace {
// Creates the passes of `pipeline`, expanding named pipelines in place
// (`depth` stops a pipeline that names itself).
void create_passes(std::string_view pipeline, int depth, std::vector<std::unique_ptr<Pass>>& created) {
  for (const auto& entry : parse_pipeline(pipeline)) {
    if (const NamedPipeline* named = find_named_pipeline(entry.name)) {
      if (!entry.options.empty())
        throw Error(fmt::format("pipeline '{}' takes no options, found {}", entry.name, pipeline_str({entry})));
      MOEJIT_ASSERT(depth < 8, fmt::format("named pipeline '{}' expands into itself", entry.name));
      create_passes(named->pipeline, depth + 1, created);
      continue;
    }
    created.push_back(create_pass(entry.name, entry.options));
  }
}
}  // namespace

void PassManager::add_pipeline(std::string_view pipeline) {
  // Create every pass first, so a bad name late in the pipeline fails before
  // anything is added.
  std::vector<std::unique_ptr<Pass>> created;
  try {
    create_passes(pipeline, 0, created);
  } catch (const Error& e) {
    throw Error(fmt::format("pass pipeline '{}': {}", pipeline, e.what()));
  }
  for (auto& pass : created) passes_.push_back(std::move(pass));
}

std::vector<std::string> PassManager::pass_names() const {
  std::vector<std::string> names;
  for (const auto& pass : passes_) names.emplace_back(pass->name());
  return names;
}

namespace {
std::string diagnostics_text(const std::vector<Diagnostic>& diags) {
  std::string text;
  for (const auto& d : diags) text += "\n  " + d.message;
  return text;
}
}  // namespace

void PassManager::run(Graph& graph) {
  statistics_.clear();
  if (options_.verify_each) {
    auto diags = verify(graph);
    if (!diags.empty())
      throw Error(fmt::format("the input graph @{} is invalid, before any pass ran:{}", graph.name(), diagnostics_text(diags)));
  }
  for (auto& pass : passes_) {
    pass->reset_statistics();
    try {
      pass->run(graph);
    } catch (const Error& e) {
      throw Error(fmt::format("pass '{}' failed: {}", pass->name(), e.what()));
    }
    statistics_.push_back(PassStatistics{std::string(pass->name()), pass->statistics()});
    if (options_.print_ir_after_all) {
      *options_.print_ir_after_all << "// -----// IR Dump After " << pass->name() << " //----- //\n"
                                   << print_graph(graph) << "\n";
      options_.print_ir_after_all->flush();
    }
    if (options_.verify_each) {
      auto diags = verify(graph);
      if (!diags.empty())
        throw Error(fmt::format("pass '{}' left an invalid graph @{}:{}", pass->name(), graph.name(), diagnostics_text(diags)));
    }
  }
}

void PassManager::print_statistics(std::ostream& out) const {
  out << "// -----// Pass statistics //----- //\n";
  for (const auto& stats : statistics_) {
    out << stats.pass << "\n";
    if (stats.counters.empty()) out << "  (no counters)\n";
    for (const auto& [name, value] : stats.counters) out << fmt::format("  {:<28} {}\n", name, value);
  }
}

void run_pipeline(Graph& graph, std::string_view pipeline) {
  PassManager manager;
  manager.add_pipeline(pipeline);
  manager.run(graph);
}

}  // namespace moejit
