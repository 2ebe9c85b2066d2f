// A byte-level (character) tokenizer, as nanoGPT's shakespeare_char uses:
// the vocabulary is the distinct bytes of the training text, sorted; token i
// is the i-th of them. Stored in checkpoint metadata as the byte values,
// comma-separated ("10,32,33,..."), which is valid JSON text for any bytes.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace moejit {

class CharTokenizer {
 public:
  CharTokenizer() = default;
  // The distinct bytes of `text`, sorted.
  static CharTokenizer from_text(std::string_view text);
  // From the metadata form; throws moejit::Error on a malformed list.
  static CharTokenizer from_string(std::string_view byte_list);
  std::string to_string() const;

  std::int64_t vocab_size() const { return static_cast<std::int64_t>(bytes_.size()); }
  const std::vector<std::uint8_t>& bytes() const { return bytes_; }
  bool contains(unsigned char byte) const { return index_[byte] >= 0; }

  // Throws moejit::Error naming the first byte not in the vocabulary (and
  // its position).
  std::vector<std::int32_t> encode(std::string_view text) const;
  std::string decode(const std::vector<std::int32_t>& tokens) const;
  char decode_one(std::int32_t token) const;

 private:
  void build_index();
  std::vector<std::uint8_t> bytes_;
  std::int16_t index_[256] = {};
};

// "a", "\n", "' '", "\x07": a byte as a report or error shows it.
std::string printable_byte(unsigned char byte);

}  // namespace moejit
