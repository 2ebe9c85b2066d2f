// What each expert learned: run a trained GPT-MoE over held-out tagged text,
// read the routing decisions (the model's routing tables: "experts.<layer>"
// [tokens, K], or [tokens, E] positions for expert choice, and SwitchHead's
// "att_v_experts.<layer>" / "att_o_experts.<layer>" [tokens * heads, K]),
// and count, per table and expert, the routed slots by kind of text and by
// character of the input token.
//
//   ExpertReport r = collect_expert_report(config, *backend, params, tokenizer, held_out, 8192);
//   fmt::print("{}", format_expert_report(r, tokenizer));
//   write_text_file_atomic(dir + "/experts.svg", expert_report_svg(r));
#pragma once
#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "frontends/config.h"
#include "frontends/corpus.h"
#include "frontends/tokenizer.h"
#include "runtime/backend.h"

namespace moejit {

struct ExpertLayerStats {
  std::int64_t layer = 0;
  std::string name;                  // "layer 0", "layer 0 attention output", ...
  std::int64_t experts_per_head = 0;  // SwitchHead tables: expert id h*E + e prints as h.e; 0 otherwise
  std::vector<std::int64_t> slots_per_expert;               // [E]
  std::vector<std::vector<std::int64_t>> slots_by_kind;     // [E][kinds]
  std::vector<std::array<std::int64_t, 256>> slots_by_byte; // [E][byte of the input token]

  // max over experts / mean over experts of slots_per_expert (1 = balanced).
  double imbalance() const;
  // Share of a kind's routed slots that go to expert e (sums to 1 over e).
  double kind_share(std::size_t expert, std::size_t kind) const;
};

struct ExpertReport {
  std::vector<std::string> kind_names;
  std::vector<std::int64_t> tokens_by_kind;      // [kinds]
  std::array<std::int64_t, 256> tokens_by_byte{};
  std::int64_t tokens = 0, num_experts = 0, top_k = 0;
  bool expert_choice = false;  // the feed-forward layers route by expert choice
  std::vector<ExpertLayerStats> layers;
};

// Routes up to `max_tokens` tokens of `text` (cut into windows of block_size,
// batched) through the model and counts. The text's bytes must all be in the
// tokenizer's vocabulary.
ExpertReport collect_expert_report(const GptMoeConfig& config, Backend& backend,
                                   const std::map<std::string, HostTensor>& params, const CharTokenizer& tokenizer,
                                   const TaggedText& text, std::int64_t max_tokens);

// Plain-text tables: per layer, slots per expert and imbalance, the share of
// each kind per expert, and the characters each expert takes most.
std::string format_expert_report(const ExpertReport& report);

// A heat map (experts x kinds, one panel per MoE layer) as a standalone SVG.
std::string expert_report_svg(const ExpertReport& report);

// Writes `text` to `path` through a temporary file and a rename.
void write_text_file_atomic(const std::string& path, const std::string& text);

}  // namespace moejit
