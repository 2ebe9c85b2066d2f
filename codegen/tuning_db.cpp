// The per-GPU tuning database (see tuning_db.h): file name, identity, JSON
// payload, lookup, and the once-per-process load with its warning.
#include "codegen/tuning_db.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <set>
#include <nlohmann/json.hpp>
#include <sstream>

#include "ir/checked_file.h"

namespace moejit::codegen {

namespace {

using nlohmann::json;

const char* const kFieldNames[] = {"tile_m", "tile_n", "tile_k", "stages", "threads", "split_k"};

int* field(TunedFields& f, std::string_view name) {
  if (name == "tile_m") return &f.tile_m;
  if (name == "tile_n") return &f.tile_n;
  if (name == "tile_k") return &f.tile_k;
  if (name == "stages") return &f.stages;
  if (name == "threads") return &f.threads;
  if (name == "split_k") return &f.split_k;
  return nullptr;
}

int distance(const TuningKey& a, const TuningKey& b) {
  return std::abs(a.m_log2 - b.m_log2) + std::abs(a.n_log2 - b.n_log2) + std::abs(a.k_log2 - b.k_log2);
}

std::string verdict_text(const CheckedRead& read) {
  switch (read.verdict) {
    case CheckedFileVerdict::ok: return "ok";
    case CheckedFileVerdict::missing: return "does not exist";
    case CheckedFileVerdict::unreadable: return "cannot be read";
    case CheckedFileVerdict::empty: return "is empty";
    case CheckedFileVerdict::truncated: return "is truncated (" + read.problem + ")";
    case CheckedFileVerdict::not_checked_file: return "is not a moejit checked file (" + read.problem + ")";
    case CheckedFileVerdict::unknown_version: return "has another checked-file version (" + read.problem + ")";
    case CheckedFileVerdict::foreign: return "was written for another GPU or architecture (" + read.problem + ")";
    case CheckedFileVerdict::wrong_length: return "is longer than it records (" + read.problem + ")";
    case CheckedFileVerdict::wrong_checksum: return "is corrupted (" + read.problem + ")";
  }
  return "?";
}

std::optional<TuningDb> parse_payload(const std::string& payload, const Target& target, std::string& problem) {
  json doc = json::parse(payload, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object()) {
    problem = "holds no JSON object";
    return std::nullopt;
  }
  if (!doc.contains("schema") || !doc["schema"].is_number_integer() || doc["schema"].get<int>() != kTuningDbSchema) {
    problem = fmt::format("has schema version {}, expected {}", doc.contains("schema") ? doc["schema"].dump() : "(none)",
                          kTuningDbSchema);
    return std::nullopt;
  }
  TuningDb db;
  if (!doc.contains("device") || !doc["device"].is_string() || !doc.contains("arch") || !doc["arch"].is_string()) {
    problem = "has no \"device\" and \"arch\" strings";
    return std::nullopt;
  }
  db.device = doc["device"].get<std::string>();
  db.arch = doc["arch"].get<std::string>();
  if (db.device != target.device_name || db.arch != target.arch) {
    problem = fmt::format("was tuned on \"{}\" {}, this is \"{}\" {}", db.device, db.arch, target.device_name, target.arch);
    return std::nullopt;
  }
  if (!doc.contains("entries") || !doc["entries"].is_array()) {
    problem = "has no \"entries\" array";
    return std::nullopt;
  }
  for (std::size_t i = 0; i < doc["entries"].size(); ++i) {
    const json& e = doc["entries"][i];
    auto bad = [&](const std::string& what) {
      problem = fmt::format("entry {}: {}", i, what);
      return std::nullopt;
    };
    if (!e.is_object()) return bad("not an object");
    TuningEntry entry;
    for (const char* name : {"family", "version", "dtype", "kind"})
      if (!e.contains(name) || !e[name].is_string()) return bad(fmt::format("expected a string \"{}\"", name));
    for (const char* name : {"m_log2", "n_log2", "k_log2"})
      if (!e.contains(name) || !e[name].is_number_integer() || e[name].get<int>() < 0 || e[name].get<int>() > 62)
        return bad(fmt::format("expected an integer \"{}\" in [0, 62]", name));
    entry.key = {e["family"].get<std::string>(), e["dtype"].get<std::string>(), e["kind"].get<std::string>(),
                 e["m_log2"].get<int>(), e["n_log2"].get<int>(), e["k_log2"].get<int>()};
    entry.version = e["version"].get<std::string>();
    if (!e.contains("config") || !e["config"].is_object()) return bad("expected a \"config\" object");
    for (const auto& [name, value] : e["config"].items()) {
      int* slot = field(entry.fields, name);
      if (!slot) return bad(fmt::format("unknown config field \"{}\"", name));
      if (!value.is_number_integer() || value.get<std::int64_t>() <= 0 || value.get<std::int64_t>() > 4096)
        return bad(fmt::format("config field \"{}\": expected an integer in [1, 4096], found {}", name, value.dump()));
      *slot = value.get<int>();
    }
    db.entries.push_back(std::move(entry));
  }
  return db;
}

std::string read_bytes(const std::string& path, bool& ok) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  ok = static_cast<bool>(in) || in.eof();
  return s.str();
}

}  // namespace

int bucket_log2(std::int64_t v) {
  int e = 0;
  while (e < 62 && (std::int64_t{1} << e) < v) ++e;
  return e;
}

std::optional<TunedLookup> lookup_tuned(const TuningDb& db, const TuningKey& key) {
  const TuningEntry* best = nullptr;
  for (const auto& e : db.entries) {
    if (e.key.family != key.family || e.key.dtype != key.dtype || e.key.kind != key.kind) continue;
    if (e.key == key) return TunedLookup{e.fields, true, e.key};
    if (!best || distance(e.key, key) < distance(best->key, key)) best = &e;
  }
  if (!best) return std::nullopt;
  return TunedLookup{best->fields, false, best->key};
}

std::string tuning_db_file_name(const Target& target) {
  std::string name;
  for (char c : target.device_name)
    name += (std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-') ? c : '_';
  return name + "." + target.arch + ".json";
}

std::uint64_t tuning_db_identity(const std::string& device, const std::string& arch) {
  return fnv1a64("moejit tuning database\n" + device + "\n" + arch);
}

std::string tuning_db_payload(const TuningDb& db) {
  json entries = json::array();
  for (const auto& e : db.entries) {
    json config = json::object();
    TunedFields fields = e.fields;
    for (const char* name : kFieldNames)
      if (int v = *field(fields, name); v > 0) config[name] = v;
    entries.push_back({{"family", e.key.family},
                       {"version", e.version},
                       {"dtype", e.key.dtype},
                       {"kind", e.key.kind},
                       {"m_log2", e.key.m_log2},
                       {"n_log2", e.key.n_log2},
                       {"k_log2", e.key.k_log2},
                       {"config", config}});
  }
  json doc = {{"schema", kTuningDbSchema}, {"device", db.device}, {"arch", db.arch}, {"entries", entries}};
  return doc.dump(1) + "\n";
}

void write_tuning_db(const std::string& path, const TuningDb& db) {
  write_checked_file(path, tuning_db_payload(db), tuning_db_identity(db.device, db.arch), "tuning database");
}

std::optional<TuningDb> parse_tuning_db(const std::string& bytes, const Target& target, std::string& problem) {
  CheckedRead read = parse_checked_file(bytes, tuning_db_identity(target.device_name, target.arch));
  if (!read.ok()) {
    // A foreign identity may be a file of another GPU: name it when its payload says so.
    problem = verdict_text(read);
    if (read.verdict == CheckedFileVerdict::foreign && bytes.size() > kCheckedFileHeaderBytes) {
      json doc = json::parse(bytes.substr(kCheckedFileHeaderBytes), nullptr, false);
      if (doc.is_object() && doc.contains("device") && doc["device"].is_string() && doc.contains("arch") &&
          doc["arch"].is_string())
        problem = fmt::format("was tuned on \"{}\" {}, this is \"{}\" {}", doc["device"].get<std::string>(),
                              doc["arch"].get<std::string>(), target.device_name, target.arch);
    }
    return std::nullopt;
  }
  try {
    return parse_payload(read.payload, target, problem);
  } catch (const std::exception& e) {  // a type mismatch nlohmann reports by throwing
    problem = std::string("holds malformed JSON (") + e.what() + ")";
    return std::nullopt;
  }
}

std::string tuning_db_path(const Target& target) {
  if (const char* env = std::getenv("MOEJIT_TUNING_DB"); env && *env) return std::string(env) == "none" ? "" : env;
  const std::string name = tuning_db_file_name(target);
  std::error_code ec;
  for (const char* dir : {MOEJIT_SHIPPED_TUNING_DIR, MOEJIT_INSTALLED_TUNING_DIR}) {
    std::filesystem::path p = std::filesystem::path(dir) / name;
    if (std::filesystem::is_regular_file(p, ec)) return p.string();
  }
  return "";
}

namespace {
// The override of this thread (ScopedTuningDbOverride), when `active`.
struct ThreadOverride {
  bool active = false;
  const TuningDb* db = nullptr;
};
thread_local ThreadOverride g_override;
}  // namespace

ScopedTuningDbOverride::ScopedTuningDbOverride(const TuningDb* db)
    : had_previous_(g_override.active), previous_(g_override.db) {
  g_override = {true, db};
}

ScopedTuningDbOverride::~ScopedTuningDbOverride() { g_override = {had_previous_, previous_}; }

std::optional<TuningDb> read_tuning_db(const std::string& path, const Target& target, std::string& problem) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    problem = "does not exist";
    return std::nullopt;
  }
  bool read_ok = false;
  std::string bytes = read_bytes(path, read_ok);
  if (!read_ok) {
    problem = "cannot be read";
    return std::nullopt;
  }
  return parse_tuning_db(bytes, target, problem);
}

void merge_tuning_entries(TuningDb& db, const std::vector<TuningEntry>& entries) {
  for (const auto& e : entries) {
    auto same = std::find_if(db.entries.begin(), db.entries.end(), [&](const TuningEntry& d) { return d.key == e.key; });
    if (same != db.entries.end())
      *same = e;
    else
      db.entries.push_back(e);
  }
}

std::size_t drop_stale_entries(TuningDb& db, std::string& summary) {
  std::map<std::pair<std::string, std::string>, std::size_t> stale;  // (family, version) -> entries
  std::vector<TuningEntry> kept;
  for (auto& e : db.entries) {
    if (e.version == tuning_family_version(e.key.family) && !e.version.empty())
      kept.push_back(std::move(e));
    else
      ++stale[{e.key.family, e.version}];
  }
  const std::size_t dropped = db.entries.size() - kept.size();
  db.entries = std::move(kept);
  summary.clear();
  for (const auto& [what, n] : stale) {
    const std::string now = tuning_family_version(what.first);
    summary += fmt::format("{}{} {} entr{} of version \"{}\" ({})", summary.empty() ? "" : ", ", n, what.first, n == 1 ? "y" : "ies",
                           what.second, now.empty() ? "a family this build does not tune" : "this build: \"" + now + "\"");
  }
  return dropped;
}

const TuningDb* tuning_db_for(const Target& target) {
  if (g_override.active) return g_override.db;
  static std::mutex mutex;
  const std::string path = tuning_db_path(target);
  const char* debug = std::getenv("MOEJIT_DEBUG");
  const bool say = debug && std::atoi(debug) >= 1;
  if (path.empty()) {
    if (say) {  // once per target and process
      static std::set<std::string> told;
      std::lock_guard<std::mutex> lock(mutex);
      if (told.insert(target.device_name + '\n' + target.arch).second) {
        const char* env = std::getenv("MOEJIT_TUNING_DB");
        std::cerr << "moejit: no tuning database for \"" << target.device_name << "\" " << target.arch << " ("
                  << (env && *env ? std::string("MOEJIT_TUNING_DB=none")
                                  : "no " + tuning_db_file_name(target) + " in " + MOEJIT_SHIPPED_TUNING_DIR + " or " +
                                        MOEJIT_INSTALLED_TUNING_DIR)
                  << "): every tile is the heuristic's\n";
      }
    }
    return nullptr;
  }
  // One load per (path, device, arch); a failed load is kept as nullopt so it is reported once.
  static std::map<std::string, std::optional<TuningDb>> loaded;
  std::lock_guard<std::mutex> lock(mutex);
  const std::string key = path + '\n' + target.device_name + '\n' + target.arch;
  auto it = loaded.find(key);
  if (it == loaded.end()) {
    std::string problem;
    std::optional<TuningDb> db = read_tuning_db(path, target, problem);
    if (!db) {
      std::cerr << "moejit: warning: tuning database " << path << " " << problem << ": ignored\n";
    } else {
      std::string stale;
      if (drop_stale_entries(*db, stale) > 0)
        std::cerr << "moejit: warning: tuning database " << path << " holds " << stale
                  << ", tuned for another version of the family's kernel or space (run moejit tune again): ignored\n";
      if (say) std::cerr << "moejit: tuning database " << path << ": " << db->entries.size() << " entries\n";
    }
    it = loaded.emplace(key, std::move(db)).first;
  }
  return it->second ? &*it->second : nullptr;
}

}  // namespace moejit::codegen
