// `moejit ops`: every op of the op table (ir/ops.def) with its operands,
// number of results, attributes and differentiability, one per line; and
// `moejit passes`: every registered pass with its options and description.
#include <fmt/format.h>

#include <memory>

#include "ir/op_table.h"
#include "passes/pass.h"
#include "tools/commands.h"

namespace moejit::cli {

namespace {

std::string operands_str(const OpInfo& info) {
  std::vector<std::string> names;
  for (const auto& o : info.operands) names.push_back(o.name + (o.variadic ? "..." : o.optional ? "?" : ""));
  return fmt::format("({})", fmt::join(names, ", "));
}

std::string attrs_str(const OpInfo& info) {
  std::vector<std::string> attrs;
  for (const auto& a : info.attrs)
    attrs.push_back(fmt::format("{}{}: {}", a.name, a.optional ? "?" : "", attr_kind_name(a.kind)));
  return attrs.empty() ? "" : fmt::format("{{{}}}", fmt::join(attrs, ", "));
}

int run_ops(const std::string& filter) {
  for (const auto& info : all_ops()) {
    if (!filter.empty() && info.name.find(filter) == std::string_view::npos) continue;
    std::string signature = fmt::format("{} -> {}", operands_str(info), info.num_results);
    fmt::print("{:<28} {:<40} {:<8} {}\n", info.name, signature, info.differentiable ? "diff" : "no-diff",
               attrs_str(info));
  }
  return 0;
}

int run_passes() {
  for (const auto& pass : registered_passes()) {
    std::vector<std::string> keys;
    for (const auto& key : pass.options) keys.push_back(key + "=...");
    std::string options = keys.empty() ? "" : fmt::format("{{{}}}", fmt::join(keys, " "));
    fmt::print("{:<28} {}\n", pass.name + options, pass.description);
  }
  fmt::print("\nnamed pipelines (usable wherever a pass name is):\n");
  for (const auto& pipeline : named_pipelines())
    fmt::print("{:<28} {}: {}\n", pipeline.name, pipeline.description, pipeline.pipeline);
  return 0;
}

}  // namespace

void register_ops_command(CLI::App& app, Command& selected) {
  auto filter = std::make_shared<std::string>();
  CLI::App* ops = app.add_subcommand("ops", "List every op: name, (operands) -> results, diff, {attributes}");
  ops->add_option("filter", *filter, "Only ops whose name contains this text (e.g. moe.)");
  ops->callback([filter, &selected] { selected = [filter] { return run_ops(*filter); }; });
}

void register_passes_command(CLI::App& app, Command& selected) {
  CLI::App* passes = app.add_subcommand("passes", "List every pass with its options");
  passes->callback([&selected] { selected = [] { return run_passes(); }; });
}

}  // namespace moejit::cli
