// Byte-level tokenizer (see tokenizer.h).
#include "frontends/tokenizer.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>

#include "ir/error.h"

namespace moejit {

void CharTokenizer::build_index() {
  std::fill(std::begin(index_), std::end(index_), static_cast<std::int16_t>(-1));
  for (std::size_t i = 0; i < bytes_.size(); ++i) index_[bytes_[i]] = static_cast<std::int16_t>(i);
}

CharTokenizer CharTokenizer::from_text(std::string_view text) {
  bool seen[256] = {};
  for (char c : text) seen[static_cast<unsigned char>(c)] = true;
  CharTokenizer t;
  for (int b = 0; b < 256; ++b)
    if (seen[b]) t.bytes_.push_back(static_cast<std::uint8_t>(b));
  t.build_index();
  return t;
}

CharTokenizer CharTokenizer::from_string(std::string_view list) {
  CharTokenizer t;
  std::size_t pos = 0;
  while (pos < list.size()) {
    std::size_t comma = list.find(',', pos);
    if (comma == std::string_view::npos) comma = list.size();
    std::string_view item = list.substr(pos, comma - pos);
    int value = -1;
    auto [end, ec] = std::from_chars(item.data(), item.data() + item.size(), value);
    if (ec != std::errc() || end != item.data() + item.size() || value < 0 || value > 255 ||
        (!t.bytes_.empty() && value <= t.bytes_.back()))
      throw Error(fmt::format("tokenizer: expected increasing byte values 0..255 separated by commas, found '{}' in '{}'",
                              item, list));
    t.bytes_.push_back(static_cast<std::uint8_t>(value));
    pos = comma + 1;
  }
  if (t.bytes_.empty()) throw Error("tokenizer: expected at least one byte value, found an empty list");
  t.build_index();
  return t;
}

std::string CharTokenizer::to_string() const {
  std::string out;
  for (std::uint8_t b : bytes_) out += (out.empty() ? "" : ",") + std::to_string(b);
  return out;
}

std::vector<std::int32_t> CharTokenizer::encode(std::string_view text) const {
  std::vector<std::int32_t> tokens;
  tokens.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(text[i]);
    if (index_[c] < 0)
      throw Error(fmt::format("tokenizer: byte {} at position {} is not in the vocabulary of {} characters",
                              printable_byte(c), i, bytes_.size()));
    tokens.push_back(index_[c]);
  }
  return tokens;
}

char CharTokenizer::decode_one(std::int32_t token) const {
  MOEJIT_ASSERT(token >= 0 && token < vocab_size(), "token id out of the vocabulary");
  return static_cast<char>(bytes_[static_cast<std::size_t>(token)]);
}

std::string CharTokenizer::decode(const std::vector<std::int32_t>& tokens) const {
  std::string out;
  out.reserve(tokens.size());
  for (std::int32_t t : tokens) out += decode_one(t);
  return out;
}

std::string printable_byte(unsigned char byte) {
  if (byte == '\n') return "\\n";
  if (byte == '\t') return "\\t";
  if (byte == ' ') return "' '";
  if (byte >= 33 && byte < 127) return std::string(1, static_cast<char>(byte));
  return fmt::format("\\x{:02x}", byte);
}

}  // namespace moejit
