// Target::named and TileConfig's printing (see target.h, tile_config.h).
#include <fmt/format.h>

#include <regex>

#include "codegen/target.h"
#include "codegen/tile_config.h"
#include "ir/error.h"

namespace moejit::codegen {

std::string Target::ptx_arch() const {
  std::string suffix = arch.substr(arch.find('_') + 1);
  return "compute_" + suffix;
}

Target Target::named(const std::string& arch) {
  static const std::regex pattern("(sm|compute)_([1-9])([0-9])(a?)");
  std::smatch m;
  if (!std::regex_match(arch, m, pattern))
    throw Error(fmt::format("unknown GPU architecture '{}': expected sm_XY or sm_XYa (sm_80, sm_90a) or compute_XY[a]", arch));
  Target t;
  t.cc_major = std::stoi(m[2].str());
  t.cc_minor = std::stoi(m[3].str());
  t.arch = fmt::format("sm_{}{}{}", t.cc_major, t.cc_minor, m[4].str());
  if (t.cc_major == 9) {
    t.sm_count = 132;
    t.shared_memory_per_block_optin = 227 * 1024;
    t.l2_bytes = 50 * 1024 * 1024;
    t.device_name = "H100-like (named target)";
  } else if (t.cc_major == 8 && t.cc_minor == 0) {
    t.sm_count = 108;
    t.shared_memory_per_block_optin = 163 * 1024;
    t.l2_bytes = 40 * 1024 * 1024;
    t.device_name = "A100-like (named target)";
  } else if (t.cc_major == 8) {
    // GA10x / AD10x (sm_86, sm_89: RTX 30/40, A10, L40): 99 KiB per block.
    t.sm_count = 80;
    t.shared_memory_per_block_optin = 99 * 1024;
    t.l2_bytes = 6 * 1024 * 1024;
    t.device_name = "GA10x/AD10x-like (named target)";
  } else {
    t.sm_count = 80;
    t.shared_memory_per_block_optin = 48 * 1024;
    t.l2_bytes = 4 * 1024 * 1024;
    t.device_name = "generic (named target)";
  }
  return t;
}

const char* source_name(TileConfig::Source source) {
  switch (source) {
    case TileConfig::Source::fixed: return "fixed";
    case TileConfig::Source::attribute: return "attribute";
    case TileConfig::Source::heuristic: return "heuristic";
    case TileConfig::Source::tuned: return "tuned";
  }
  return "?";
}

std::string TileConfig::str() const {
  std::string s;
  if (tile_m > 0) s += fmt::format("tile {}x{}x{} stages {} ", tile_m, tile_n, tile_k, stages);
  s += fmt::format("threads {}", threads);
  if (cluster_m * cluster_n > 1) s += fmt::format(" cluster {}x{}", cluster_m, cluster_n);
  if (split_k > 1) s += fmt::format(" split_k {}", split_k);
  if (consumers > 0) s += fmt::format(" consumers {}", consumers);
  if (overlap) s += " overlap";
  if (stream_k) s += " stream-k";
  s += fmt::format(" ({})", source_name(source));
  if (!note.empty()) s += " [" + note + "]";
  return s;
}

}  // namespace moejit::codegen
