// Byte-level BPE tokenizer (see bpe_tokenizer.h).
#include "frontends/bpe_tokenizer.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <limits>
#include <nlohmann/json.hpp>

#include "ir/error.h"
#include "ir/file_io.h"

namespace moejit {
namespace {

using nlohmann::json;

struct CodepointRange {
  char32_t first, last;
};
#include "frontends/bpe_tokenizer_unicode.inc"

template <std::size_t N>
bool in_ranges(const CodepointRange (&ranges)[N], char32_t cp) {
  auto it = std::upper_bound(std::begin(ranges), std::end(ranges), cp,
                             [](char32_t c, const CodepointRange& r) { return c < r.first; });
  return it != std::begin(ranges) && cp <= std::prev(it)->last;
}
bool is_letter(char32_t cp) { return in_ranges(kLetterRanges, cp); }
bool is_number(char32_t cp) { return in_ranges(kNumberRanges, cp); }
// Unicode White_Space, what \s matches in the regex engines `tokenizers` uses.
bool is_space(char32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
         cp == 0x3000;
}
bool is_other(char32_t cp) { return !is_space(cp) && !is_letter(cp) && !is_number(cp); }

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// The length of the valid UTF-8 sequence at bytes[i], or the length of its
// maximal invalid prefix as a negative number (at least -1): the Unicode
// "maximal subpart" rule that Rust's from_utf8_lossy follows.
int utf8_sequence(std::string_view bytes, std::size_t i, char32_t* cp) {
  const auto b0 = static_cast<unsigned char>(bytes[i]);
  if (b0 < 0x80) {
    *cp = b0;
    return 1;
  }
  int len;
  unsigned char lo = 0x80, hi = 0xBF;
  if (b0 >= 0xC2 && b0 <= 0xDF) len = 2;
  else if (b0 >= 0xE0 && b0 <= 0xEF) len = 3, lo = b0 == 0xE0 ? 0xA0 : 0x80, hi = b0 == 0xED ? 0x9F : 0xBF;
  else if (b0 >= 0xF0 && b0 <= 0xF4) len = 4, lo = b0 == 0xF0 ? 0x90 : 0x80, hi = b0 == 0xF4 ? 0x8F : 0xBF;
  else return -1;
  char32_t value = b0 & (len == 2 ? 0x1F : len == 3 ? 0x0F : 0x07);
  for (int k = 1; k < len; ++k) {
    if (i + k >= bytes.size()) return -k;
    const auto b = static_cast<unsigned char>(bytes[i + k]);
    if (b < (k == 1 ? lo : 0x80) || b > (k == 1 ? hi : 0xBF)) return -k;
    value = (value << 6) | (b & 0x3F);
  }
  *cp = value;
  return len;
}

struct Utf8Text {
  std::vector<char32_t> cps;
  std::vector<std::size_t> offsets;  // byte offset of each code point, plus the end
};
Utf8Text decode_utf8_strict(std::string_view text) {
  Utf8Text out;
  for (std::size_t i = 0; i < text.size();) {
    char32_t cp = 0;
    int len = utf8_sequence(text, i, &cp);
    if (len < 0)
      throw Error(fmt::format("bpe tokenizer: text: expected UTF-8, found an invalid byte 0x{:02X} at offset {}",
                              static_cast<unsigned char>(text[i + static_cast<std::size_t>(-len) - 1]), i));
    out.cps.push_back(cp);
    out.offsets.push_back(i);
    i += static_cast<std::size_t>(len);
  }
  out.offsets.push_back(text.size());
  return out;
}

// GPT-2's byte alphabet: printable bytes stand for themselves, the other 68
// bytes for U+0100 onward in byte order.
struct ByteAlphabet {
  std::array<char32_t, 256> char_of_byte{};
  std::unordered_map<char32_t, unsigned char> byte_of_char;
  ByteAlphabet() {
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      char_of_byte[b] = printable ? static_cast<char32_t>(b) : next++;
      byte_of_char[char_of_byte[b]] = static_cast<unsigned char>(b);
    }
  }
};
const ByteAlphabet& byte_alphabet() {
  static const ByteAlphabet alphabet;
  return alphabet;
}

// The GPT-2 split regex over code points [begin, end): the end of the match at i.
std::size_t gpt2_match_end(const std::vector<char32_t>& s, std::size_t i, std::size_t end) {
  auto at = [&](std::size_t k) -> char32_t { return k < end ? s[k] : 0; };
  auto run = [&](std::size_t k, bool (*pred)(char32_t)) {
    while (k < end && pred(s[k])) ++k;
    return k;
  };
  if (s[i] == U'\'' && i + 1 < end) {  // 's 't 're 've 'm 'll 'd
    char32_t a = at(i + 1), b = at(i + 2);
    if (a == U's' || a == U't' || a == U'm' || a == U'd') return i + 2;
    if ((a == U'r' && b == U'e') || (a == U'v' && b == U'e') || (a == U'l' && b == U'l')) return i + 3;
  }
  const std::size_t j = (s[i] == U' ' && i + 1 < end) ? i + 1 : i;  // the optional leading space
  for (bool (*pred)(char32_t) : {is_letter, is_number, is_other})
    if (pred(s[j])) return run(j, pred);
  // Whitespace: \s+(?!\S) leaves the last space of a run before a word to it.
  std::size_t k = run(i, is_space);
  if (k < end && k - i >= 2) return k - 1;
  return k;
}

}  // namespace

BpeTokenizer BpeTokenizer::from_json(std::string_view text, const std::string& source) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(fmt::format("{}: expected JSON, found a parse error ({})", source, e.what()));
  }
  auto fail = [&](const std::string& what) { return Error(fmt::format("{}: {}", source, what)); };
  if (!j.is_object()) throw fail("expected a JSON object");
  auto is_null_or = [](const json& o, const char* key) { return !o.contains(key) || o[key].is_null(); };
  auto type_of = [](const json& o) { return o.is_object() && o.contains("type") ? o["type"].dump() : o.dump(); };
  BpeTokenizer t;

  if (!is_null_or(j, "normalizer")) throw fail("normalizer: expected null, found " + type_of(j["normalizer"]));
  json pre = j.value("pre_tokenizer", json());
  if (pre.is_object() && pre.value("type", "") == "Sequence" && pre["pretokenizers"].is_array()) {
    // [ByteLevel] or [Digits, ByteLevel] (StarCoder / SmolLM).
    json seq = pre["pretokenizers"];
    if (seq.size() == 2 && seq[0].is_object() && seq[0].value("type", "") == "Digits") {
      t.digits_ = seq[0].value("individual_digits", false) ? DigitSplit::each : DigitSplit::runs;
      seq.erase(seq.begin());
    }
    if (seq.size() != 1) throw fail("pre_tokenizer: expected [ByteLevel] or [Digits, ByteLevel], found " + pre.dump());
    pre = seq[0];
  }
  if (!pre.is_object() || pre.value("type", "") != "ByteLevel")
    throw fail("pre_tokenizer: expected ByteLevel, found " + type_of(pre));
  t.add_prefix_space_ = pre.value("add_prefix_space", false);
  if (t.add_prefix_space_ && t.digits_ != DigitSplit::none)
    throw fail("pre_tokenizer: expected add_prefix_space false after Digits (not implemented), found true");
  t.use_regex_ = pre.value("use_regex", true);
  if (!is_null_or(j, "decoder") && j["decoder"].value("type", "") != "ByteLevel")
    throw fail("decoder: expected ByteLevel or null, found " + type_of(j["decoder"]));
  if (!is_null_or(j, "post_processor") && j["post_processor"].value("type", "") != "ByteLevel")
    throw fail("post_processor: expected ByteLevel or null, found " + type_of(j["post_processor"]));

  const json& model = j.value("model", json());
  if (!model.is_object() || model.value("type", "") != "BPE") throw fail("model: expected type BPE, found " + type_of(model));
  if (!is_null_or(model, "dropout")) throw fail("model.dropout: expected null, found " + model["dropout"].dump());
  if (model.value("byte_fallback", false)) throw fail("model.byte_fallback: expected false, found true");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (!is_null_or(model, key) && model[key] != "")
      throw fail(fmt::format("model.{}: expected null, found {}", key, model[key].dump()));
  t.ignore_merges_ = model.value("ignore_merges", false);
  if (!model.contains("vocab") || !model["vocab"].is_object()) throw fail("model.vocab: expected an object");
  std::int64_t max_id = -1;
  for (auto it = model["vocab"].begin(); it != model["vocab"].end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<std::int64_t>() < 0)
      throw fail(fmt::format("model.vocab.{}: expected an id >= 0, found {}", it.key(), it.value().dump()));
    const auto id = it.value().get<std::int32_t>();
    t.vocab_[it.key()] = id;
    max_id = std::max<std::int64_t>(max_id, id);
  }
  if (!model.contains("merges") || !model["merges"].is_array()) throw fail("model.merges: expected an array");
  std::int32_t rank = 0;
  for (const json& m : model["merges"]) {
    std::pair<std::string, std::string> pair;
    if (m.is_string()) {  // "a b" (tokenizers < 0.20)
      const std::string s = m.get<std::string>();
      const auto space = s.find(' ');
      if (space == std::string::npos || space == 0 || space + 1 == s.size())
        throw fail(fmt::format("model.merges[{}]: expected \"left right\", found {}", rank, m.dump()));
      pair = {s.substr(0, space), s.substr(space + 1)};
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {  // ["a", "b"]
      pair = {m[0].get<std::string>(), m[1].get<std::string>()};
    } else {
      throw fail(fmt::format("model.merges[{}]: expected \"left right\" or [left, right], found {}", rank, m.dump()));
    }
    if (!t.vocab_.count(pair.first + pair.second))
      throw fail(fmt::format("model.merges[{}]: expected the merged token '{}' in the vocabulary, found none", rank,
                             pair.first + pair.second));
    t.merge_rank_.emplace(pair, rank++);
  }

  for (const json& a : j.value("added_tokens", json::array())) {
    if (!a.is_object() || !a.contains("id") || !a.contains("content") || !a["content"].is_string() ||
        !a["id"].is_number_integer())
      throw fail("added_tokens: expected objects with id and content, found " + a.dump());
    for (const char* key : {"lstrip", "rstrip", "single_word"})
      if (a.value(key, false))
        throw fail(fmt::format("added token {}: {}: expected false (not implemented), found true", a["content"].dump(),
                               key));
    AddedToken token{a["content"].get<std::string>(), a["id"].get<std::int32_t>(), a.value("special", false)};
    if (token.content.empty()) throw fail("added_tokens: expected non-empty content, found \"\"");
    max_id = std::max<std::int64_t>(max_id, token.id);
    t.added_.push_back(token);
  }
  std::stable_sort(t.added_.begin(), t.added_.end(),
                   [](const AddedToken& a, const AddedToken& b) { return a.content.size() > b.content.size(); });
  for (std::size_t i = 0; i < t.added_.size(); ++i) t.added_by_id_[t.added_[i].id] = i;
  t.vocab_size_ = max_id + 1;
  t.id_to_token_.assign(static_cast<std::size_t>(t.vocab_size_), "");
  for (const auto& [token, id] : t.vocab_) t.id_to_token_[static_cast<std::size_t>(id)] = token;
  return t;
}

BpeTokenizer BpeTokenizer::load(const std::string& path) {
  std::string text;
  if (!read_whole_file(path, &text)) throw Error(fmt::format("{}: cannot read tokenizer.json", path));
  return from_json(text, path);
}

std::optional<std::int32_t> BpeTokenizer::token_to_id(std::string_view token) const {
  for (const AddedToken& a : added_)
    if (a.content == token) return a.id;
  auto it = vocab_.find(std::string(token));
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

// One pre-tokenized word (already in the byte alphabet, UTF-8) -> ids.
void BpeTokenizer::encode_word(const std::string& word, std::vector<std::int32_t>& out) const {
  if (ignore_merges_) {
    auto it = vocab_.find(word);
    if (it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  std::vector<std::string> symbols;  // one per character to start
  for (std::size_t i = 0; i < word.size();) {
    char32_t cp = 0;
    const int len = utf8_sequence(word, i, &cp);
    symbols.push_back(word.substr(i, static_cast<std::size_t>(len)));
    i += static_cast<std::size_t>(len);
  }
  while (symbols.size() > 1) {
    std::int32_t best = std::numeric_limits<std::int32_t>::max();
    std::size_t at = 0;
    for (std::size_t i = 0; i + 1 < symbols.size(); ++i) {
      auto it = merge_rank_.find({symbols[i], symbols[i + 1]});
      if (it != merge_rank_.end() && it->second < best) best = it->second, at = i;
    }
    if (best == std::numeric_limits<std::int32_t>::max()) break;
    symbols[at] += symbols[at + 1];
    symbols.erase(symbols.begin() + static_cast<std::ptrdiff_t>(at) + 1);
  }
  for (const std::string& s : symbols) {
    auto it = vocab_.find(s);
    if (it == vocab_.end())
      throw Error(fmt::format("bpe tokenizer: expected the symbol '{}' in the vocabulary (no unk_token), found none", s));
    out.push_back(it->second);
  }
}

// Text between added tokens: prefix space, split, byte alphabet, BPE.
void BpeTokenizer::encode_segment(std::string_view text, std::vector<std::int32_t>& out) const {
  for (const std::string& word : pre_tokenize(text)) encode_word(word, out);
}

std::vector<std::string> BpeTokenizer::pre_tokenize(std::string_view text) const {
  std::vector<std::string> words;
  std::string prefixed;
  if (add_prefix_space_ && !text.empty() && text[0] != ' ') {
    prefixed = " " + std::string(text);
    text = prefixed;
  }
  Utf8Text u = decode_utf8_strict(text);
  const ByteAlphabet& alphabet = byte_alphabet();
  auto emit = [&](std::size_t begin, std::size_t end) {  // code points [begin, end)
    std::string word;
    for (std::size_t b = u.offsets[begin]; b < u.offsets[end]; ++b)
      append_utf8(word, alphabet.char_of_byte[static_cast<unsigned char>(text[b])]);
    words.push_back(std::move(word));
  };
  // Pieces: the whole text, or (Digits) numbers split off, each digit alone
  // or each run of digits; the regex then splits every piece on its own.
  std::vector<std::pair<std::size_t, std::size_t>> pieces;
  const std::size_t n = u.cps.size();
  for (std::size_t i = 0; i < n;) {
    std::size_t end = i + 1;
    if (digits_ == DigitSplit::none) {
      end = n;
    } else if (!is_number(u.cps[i])) {
      while (end < n && !is_number(u.cps[end])) ++end;
    } else if (digits_ == DigitSplit::runs) {
      while (end < n && is_number(u.cps[end])) ++end;
    }
    pieces.emplace_back(i, end);
    i = end;
  }
  for (auto [begin, end] : pieces) {
    if (!use_regex_) {
      emit(begin, end);
      continue;
    }
    for (std::size_t i = begin; i < end;) {
      std::size_t match_end = gpt2_match_end(u.cps, i, end);
      emit(i, match_end);
      i = match_end;
    }
  }
  return words;
}

std::vector<std::int32_t> BpeTokenizer::encode(std::string_view text) const {
  std::vector<std::int32_t> out;
  std::size_t segment = 0;
  for (std::size_t i = 0; i < text.size();) {
    const AddedToken* match = nullptr;
    for (const AddedToken& a : added_)  // longest first
      if (text.compare(i, a.content.size(), a.content) == 0) {
        match = &a;
        break;
      }
    if (!match) {
      ++i;
      continue;
    }
    if (i > segment) encode_segment(text.substr(segment, i - segment), out);
    out.push_back(match->id);
    i += match->content.size();
    segment = i;
  }
  if (segment < text.size()) encode_segment(text.substr(segment), out);
  return out;
}

std::string BpeTokenizer::decode(const std::vector<std::int32_t>& ids, bool skip_special_tokens) const {
  const ByteAlphabet& alphabet = byte_alphabet();
  std::string bytes;
  for (std::int32_t id : ids) {
    std::string token;
    auto added = added_by_id_.find(id);
    if (added != added_by_id_.end()) {
      const AddedToken& a = added_[added->second];
      if (skip_special_tokens && a.special) continue;
      token = a.content;
    } else if (id >= 0 && id < vocab_size_ && !id_to_token_[static_cast<std::size_t>(id)].empty()) {
      token = id_to_token_[static_cast<std::size_t>(id)];
    } else {
      throw Error(fmt::format("bpe tokenizer: id: expected a token id of the vocabulary (0..{}), found {}",
                              vocab_size_ - 1, id));
    }
    // Characters back to bytes; a token with a character outside the byte
    // alphabet is taken as its UTF-8 bytes.
    std::string mapped;
    bool all_mapped = true;
    for (char32_t cp : decode_utf8_strict(token).cps) {
      auto it = alphabet.byte_of_char.find(cp);
      if (it == alphabet.byte_of_char.end()) {
        all_mapped = false;
        break;
      }
      mapped += static_cast<char>(it->second);
    }
    bytes += all_mapped ? mapped : token;
  }
  // Lossy UTF-8: each maximal invalid subsequence becomes U+FFFD.
  std::string text;
  for (std::size_t i = 0; i < bytes.size();) {
    char32_t cp = 0;
    const int len = utf8_sequence(bytes, i, &cp);
    if (len > 0) {
      text.append(bytes, i, static_cast<std::size_t>(len));
      i += static_cast<std::size_t>(len);
    } else {
      append_utf8(text, 0xFFFD);
      i += static_cast<std::size_t>(-len);
    }
  }
  return text;
}

}  // namespace moejit
