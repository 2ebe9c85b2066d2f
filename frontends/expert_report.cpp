// Expert report: routing statistics of a trained GPT-MoE on tagged text,
// as text tables and an SVG heat map (see expert_report.h).
#include "frontends/expert_report.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <utility>

#include "frontends/generate.h"
#include "frontends/rope.h"
#include "frontends/gpt_moe.h"
#include "ir/error.h"
#include "ir/file_io.h"

namespace moejit {

double ExpertLayerStats::imbalance() const {
  if (slots_per_expert.empty()) return 0.0;
  std::int64_t total = 0, max = 0;
  for (std::int64_t n : slots_per_expert) {
    total += n;
    max = std::max(max, n);
  }
  if (total == 0) return 0.0;
  return static_cast<double>(max) / (static_cast<double>(total) / static_cast<double>(slots_per_expert.size()));
}

double ExpertLayerStats::kind_share(std::size_t expert, std::size_t kind) const {
  std::int64_t total = 0;
  for (const auto& by_kind : slots_by_kind) total += by_kind[kind];
  return total == 0 ? 0.0 : static_cast<double>(slots_by_kind[expert][kind]) / static_cast<double>(total);
}

ExpertReport collect_expert_report(const GptMoeConfig& config, Backend& backend,
                                   const std::map<std::string, HostTensor>& params, const CharTokenizer& tokenizer,
                                   const TaggedText& text, std::int64_t max_tokens) {
  const GptMoeConfig c = inference_config(config);
  const std::int64_t T = c.block_size, B = 8;
  ExpertReport report;
  report.kind_names = text.kind_names;
  report.tokens_by_kind.assign(text.kind_names.size(), 0);
  report.num_experts = c.num_experts;
  report.top_k = c.top_k;
  report.expert_choice = c.router_type == "expert_choice";

  Graph graph("gpt_moe_routing");
  GptMoeGraph model = build_gpt_moe(graph, c, {.batch = B, .with_loss = false, .output_routing = true});
  check_parameters(params, model.params, "report parameters");
  std::unique_ptr<Executable> exe = backend.compile(graph);
  for (const ParamSpec& s : model.params) exe->set(s.name, params.at(s.name));
  bind_rope_tables(*exe, {.theta = c.rope_theta});
  for (const RoutingTable& table : model.routing_tables) {
    ExpertLayerStats stats;
    stats.layer = table.layer;
    stats.name = table.name;
    stats.experts_per_head = table.rows_per_token > 1 ? table.num_experts / table.rows_per_token : 0;
    stats.slots_per_expert.assign(static_cast<std::size_t>(table.num_experts), 0);
    stats.slots_by_kind.assign(static_cast<std::size_t>(table.num_experts),
                               std::vector<std::int64_t>(text.kind_names.size(), 0));
    stats.slots_by_byte.assign(static_cast<std::size_t>(table.num_experts), std::array<std::int64_t, 256>{});
    report.layers.push_back(std::move(stats));
  }
  if (report.layers.empty()) return report;

  const std::vector<std::int32_t> tokens = tokenizer.encode(text.text);
  const std::int64_t windows = std::min<std::int64_t>(static_cast<std::int64_t>(tokens.size()), max_tokens) / T;
  if (windows == 0)
    throw Error(fmt::format("expert report: expected at least block_size = {} tokens to route, found {} (held-out "
                            "text of {} tokens, report_tokens {})",
                            T, std::min<std::int64_t>(static_cast<std::int64_t>(tokens.size()), max_tokens),
                            tokens.size(), max_tokens));
  HostTensor idx({DType::i32, {B, T}});
  for (std::int64_t first = 0; first < windows; first += B) {
    const std::int64_t used = std::min(B, windows - first);  // windows in this batch; the rest is padding
    std::span<std::int32_t> ids = idx.values<std::int32_t>();
    std::fill(ids.begin(), ids.end(), 0);
    for (std::int64_t w = 0; w < used; ++w)
      std::copy_n(tokens.begin() + (first + w) * T, T, ids.begin() + w * T);
    exe->set("idx", idx);
    exe->run();
    for (std::int64_t row = 0; row < used * T; ++row) {
      const std::size_t pos = static_cast<std::size_t>(first * T + row);
      const unsigned char byte = static_cast<unsigned char>(text.text[pos]);
      const std::size_t kind = text.kinds[pos];
      report.tokens += 1;
      report.tokens_by_kind[kind] += 1;
      report.tokens_by_byte[byte] += 1;
    }
    for (std::size_t i = 0; i < report.layers.size(); ++i) {
      ExpertLayerStats& stats = report.layers[i];
      const RoutingTable& table = model.routing_tables[i];
      HostTensor routed = exe->get(table.output);  // [B*T*rows_per_token, K] ids, or [B*T, E] positions
      std::span<const std::int32_t> values = std::as_const(routed).values<std::int32_t>();
      const std::int64_t columns = routed.type().dim(1);
      auto count = [&](std::int64_t token_row, std::int64_t e) {
        MOEJIT_ASSERT(e >= 0 && e < table.num_experts, "expert id out of range in the routing output");
        const std::size_t pos = static_cast<std::size_t>(first * T + token_row);
        const std::size_t ei = static_cast<std::size_t>(e);
        stats.slots_per_expert[ei] += 1;
        stats.slots_by_kind[ei][text.kinds[pos]] += 1;
        stats.slots_by_byte[ei][static_cast<unsigned char>(text.text[pos])] += 1;
      };
      for (std::int64_t row = 0; row < used * T * table.rows_per_token; ++row)
        for (std::int64_t k = 0; k < columns; ++k) {
          const std::int32_t v = values[static_cast<std::size_t>(row * columns + k)];
          if (!table.expert_mask) count(row / table.rows_per_token, v);
          else if (v >= 0) count(row, k);  // expert k took this token
        }
    }
  }
  return report;
}

namespace {

// The characters that expert e takes most: those with the largest share of
// their occurrences routed to e (among characters seen at least min_count times).
std::vector<std::pair<unsigned char, double>> top_characters(const ExpertReport& report, const ExpertLayerStats& stats,
                                                             std::size_t e, std::size_t count) {
  std::int64_t min_count = std::max<std::int64_t>(5, report.tokens / 1000);
  std::vector<std::pair<unsigned char, double>> chars;
  for (int byte = 0; byte < 256; ++byte) {
    std::int64_t seen = report.tokens_by_byte[static_cast<std::size_t>(byte)];
    if (seen < min_count) continue;
    chars.emplace_back(static_cast<unsigned char>(byte),
                       static_cast<double>(stats.slots_by_byte[e][static_cast<std::size_t>(byte)]) /
                           static_cast<double>(seen));
  }
  // Largest share (in whole percent, as printed) first; among equal shares,
  // the more frequent character.
  std::stable_sort(chars.begin(), chars.end(), [&](const auto& a, const auto& b) {
    const long pa = std::lround(100 * a.second), pb = std::lround(100 * b.second);
    if (pa != pb) return pa > pb;
    return report.tokens_by_byte[a.first] > report.tokens_by_byte[b.first];
  });
  if (chars.size() > count) chars.resize(count);
  return chars;
}

// "e", or "h.e" for expert e of head h in a SwitchHead table.
std::string expert_label(const ExpertLayerStats& s, std::size_t e) {
  if (s.experts_per_head <= 0) return std::to_string(e);
  const std::size_t per_head = static_cast<std::size_t>(s.experts_per_head);
  return fmt::format("{}.{}", e / per_head, e % per_head);
}

std::string xml_escape(std::string_view s) {
  std::string out;
  for (char ch : s) {
    switch (ch) {
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '&': out += "&amp;"; break;
      case '"': out += "&quot;"; break;
      default: out += ch;
    }
  }
  return out;
}

}  // namespace

std::string format_expert_report(const ExpertReport& r) {
  std::size_t attention_tables = 0;
  for (const ExpertLayerStats& s : r.layers) attention_tables += s.experts_per_head > 0 ? 1 : 0;
  std::string out = fmt::format("Expert report: {} held-out tokens, {} experts, {}, {} MoE layer(s){}\n", r.tokens,
                                r.num_experts, r.expert_choice ? "expert choice" : fmt::format("top-{}", r.top_k),
                                r.layers.size() - attention_tables,
                                attention_tables ? fmt::format(", {} SwitchHead table(s)", attention_tables) : "");
  if (r.layers.empty()) return out + "  (no MoE layers)\n";
  out += "  tokens by kind:";
  for (std::size_t k = 0; k < r.kind_names.size(); ++k)
    out += fmt::format(" {} {}", r.kind_names[k], r.tokens_by_kind[k]);
  out += fmt::format("\n  a kind's column is the share of its routed slots per expert (uniform = {:.0f}% in the "
                     "feed-forward layers);\n",
                     100.0 / static_cast<double>(r.num_experts));
  out += "  top characters: those with the largest share of their occurrences routed to the expert\n";
  for (const ExpertLayerStats& s : r.layers) {
    out += fmt::format("\n{}: load imbalance (max/mean slots) {:.2f}\n", s.name, s.imbalance());
    std::string header = fmt::format("  {:>6} {:>8} {:>6} |", "expert", "slots", "load");
    for (const std::string& kind : r.kind_names) header += fmt::format(" {:>10}", kind.substr(0, 10));
    header += " | top characters\n";
    out += header;
    std::int64_t total = 0;
    for (std::int64_t n : s.slots_per_expert) total += n;
    for (std::size_t e = 0; e < s.slots_per_expert.size(); ++e) {
      const double load = total ? 100.0 * static_cast<double>(s.slots_per_expert[e]) / static_cast<double>(total) : 0;
      std::string line = fmt::format("  {:>6} {:>8} {:>5.1f}% |", expert_label(s, e), s.slots_per_expert[e], load);
      for (std::size_t k = 0; k < r.kind_names.size(); ++k) line += fmt::format(" {:>9.1f}%", 100.0 * s.kind_share(e, k));
      line += " |";
      for (const auto& [byte, share] : top_characters(r, s, e, 8))
        line += fmt::format(" {}:{:.0f}%", printable_byte(byte), 100.0 * share);
      out += line + "\n";
    }
  }
  return out;
}

std::string expert_report_svg(const ExpertReport& r) {
  const int cell_w = 70, cell_h = 28, label_w = 110, title_h = 40, header_h = 36, gap = 30;
  const int kinds = static_cast<int>(r.kind_names.size());
  int experts = 1;
  for (const ExpertLayerStats& s : r.layers) experts = std::max(experts, static_cast<int>(s.slots_per_expert.size()));
  const int panel_h = header_h + kinds * cell_h + 22;
  const int width = std::max(label_w + experts * cell_w + 20, 540);
  // Colour scale: white at 0 to dark blue at the largest share in the report.
  double max_share = 1e-9;
  for (const ExpertLayerStats& s : r.layers)
    for (int e = 0; e < static_cast<int>(s.slots_per_expert.size()); ++e)
      for (int k = 0; k < kinds; ++k)
        max_share = std::max(max_share, s.kind_share(static_cast<std::size_t>(e), static_cast<std::size_t>(k)));
  const int height = title_h + static_cast<int>(r.layers.size()) * (panel_h + gap) + 10;
  std::string svg = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" "
      "font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      "<text x=\"10\" y=\"20\" font-size=\"14\" font-weight=\"bold\">Share of each kind's routed slots per expert "
      "(top-{}, {} tokens; uniform = {:.0f}%)</text>\n",
      width, height, r.top_k, r.tokens, 100.0 / static_cast<double>(std::max<std::int64_t>(1, r.num_experts)));
  int y0 = title_h;
  for (const ExpertLayerStats& s : r.layers) {
    const int layer_experts = static_cast<int>(s.slots_per_expert.size());
    svg += fmt::format("<text x=\"10\" y=\"{}\" font-weight=\"bold\">{} (imbalance {:.2f})</text>\n",
                       y0 + 14, xml_escape(s.name), s.imbalance());
    for (int e = 0; e < layer_experts; ++e)
      svg += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">expert {}</text>\n",
                         label_w + e * cell_w + cell_w / 2, y0 + header_h - 4, expert_label(s, static_cast<std::size_t>(e)));
    for (int k = 0; k < kinds; ++k) {
      const int y = y0 + header_h + 4 + k * cell_h;
      svg += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n", label_w - 8, y + cell_h / 2 + 4,
                         xml_escape(r.kind_names[static_cast<std::size_t>(k)]));
      for (int e = 0; e < layer_experts; ++e) {
        const double share = s.kind_share(static_cast<std::size_t>(e), static_cast<std::size_t>(k));
        const double intensity = std::clamp(share / max_share, 0.0, 1.0);
        const int shade = static_cast<int>(255.0 * (1.0 - intensity));
        const std::string fill = fmt::format("rgb({},{},{})", shade * 8 / 10, shade * 9 / 10, 255 - (255 - shade) / 3);
        const int x = label_w + e * cell_w;
        svg += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{}\" stroke=\"#888\"/>\n", x, y,
                           cell_w, cell_h, fill);
        svg += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"{}\">{:.0f}%</text>\n", x + cell_w / 2,
                           y + cell_h / 2 + 4, intensity > 0.6 ? "white" : "black", 100.0 * share);
      }
    }
    y0 += panel_h + gap;
  }
  svg += "</svg>\n";
  return svg;
}

void write_text_file_atomic(const std::string& path, const std::string& text) { write_file_atomically(path, text, "report"); }

}  // namespace moejit
