// A byte-level BPE tokenizer read from a Hugging Face tokenizer.json of the
// GPT-2 / SmolLM kind, encoding and decoding as the `tokenizers` library does:
//
//   encode: split the text at added tokens (leftmost, longest first; each is
//     one id) -> each piece between them: optional prefix space, the GPT-2
//     split regex ('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+
//     |\s+(?!\S)|\s+), each word's UTF-8 bytes mapped to GPT-2's printable
//     byte alphabet -> BPE: repeatedly merge the adjacent pair of lowest merge
//     rank (leftmost on ties) -> vocabulary ids.
//   decode: ids -> token strings (added tokens' content; special ones dropped
//     when asked) -> each token's characters back to bytes (a token with a
//     character outside the byte alphabet contributes its UTF-8 as is) ->
//     the bytes as UTF-8 with each invalid sequence replaced by U+FFFD.
//
// What tokenizer.json may hold: normalizer null; pre_tokenizer ByteLevel,
// alone or in a Sequence after a Digits pre-tokenizer (numbers split off,
// each digit alone with individual_digits; StarCoder / SmolLM); model BPE without dropout,
// byte_fallback, subword prefix or word suffix (ignore_merges allowed);
// decoder ByteLevel or null; post_processor null or ByteLevel; added tokens
// without lstrip/rstrip/single_word. Anything else is an Error naming it.
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace moejit {

class BpeTokenizer {
 public:
  static BpeTokenizer from_json(std::string_view json_text, const std::string& source = "tokenizer.json");
  static BpeTokenizer load(const std::string& path);

  // Throws moejit::Error on text that is not valid UTF-8 (naming the byte).
  std::vector<std::int32_t> encode(std::string_view text) const;
  // The words encode hands to BPE (byte-alphabet strings) of text without
  // added tokens, for tests and debugging.
  std::vector<std::string> pre_tokenize(std::string_view text) const;
  // Throws moejit::Error on an id outside the vocabulary.
  std::string decode(const std::vector<std::int32_t>& ids, bool skip_special_tokens = false) const;

  // One more than the largest id (vocabulary and added tokens).
  std::int64_t vocab_size() const { return vocab_size_; }
  std::optional<std::int32_t> token_to_id(std::string_view token) const;

 private:
  struct AddedToken {
    std::string content;
    std::int32_t id;
    bool special;
  };
  void encode_word(const std::string& word, std::vector<std::int32_t>& out) const;
  void encode_segment(std::string_view text, std::vector<std::int32_t>& out) const;

  std::unordered_map<std::string, std::int32_t> vocab_;
  std::vector<std::string> id_to_token_;
  std::map<std::pair<std::string, std::string>, std::int32_t> merge_rank_;
  std::vector<AddedToken> added_;  // longest content first
  std::unordered_map<std::int32_t, std::size_t> added_by_id_;
  enum class DigitSplit { none, each, runs };  // a Digits pre-tokenizer before ByteLevel
  DigitSplit digits_ = DigitSplit::none;
  bool add_prefix_space_ = false;
  bool use_regex_ = true;
  bool ignore_merges_ = false;
  std::int64_t vocab_size_ = 0;
};

}  // namespace moejit
