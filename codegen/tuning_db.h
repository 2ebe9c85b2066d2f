// The per-GPU tuning database: measured-best TileConfig fields per kernel
// family, dtype, problem kind and shape bucket, read by choose_gemm
// (codegen/gemm_select.cpp). The file is a checked file (ir/checked_file.h)
// whose identity is a hash of the device name and architecture, holding a
// JSON payload:
//   {"schema": 2, "device": "NVIDIA H200", "arch": "sm_90a",
//    "entries": [{"family": "gemm_sm90", "version": "3f0c5e1a9b2d4c68",
//                 "dtype": "bf16", "kind": "matmul",
//                 "m_log2": 10, "n_log2": 12, "k_log2": 10,
//                 "config": {"tile_n": 128, "stages": 4}}]}
// A bucket is the power of two at or above each of m, n, k. "version" is
// the family's version key (tuning_family_version) when the entry was
// tuned: an entry of another version (the family's kernel or space changed
// since) is dropped when the file is loaded, with a warning, so a stale
// winner is never used. Where the file is found, and what happens to a bad
// one: docs/cuda.md ("Tuning database").
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "codegen/target.h"

namespace moejit::codegen {

inline constexpr int kTuningDbSchema = 2;  // 2: every entry has its family's "version"

struct TuningKey {
  std::string family;  // "gemm_sm90", "matmul_simt"
  std::string dtype;   // dtype_name: "bf16", "f32", ...
  std::string kind;    // "matmul", "matmul_at", "matmul_bt", "matmul_at_bt", "grouped", "grouped_wt", "wgrad" (gemm_tuning_key)
  int m_log2 = 0, n_log2 = 0, k_log2 = 0;
  bool operator==(const TuningKey&) const = default;
};

// The TileConfig fields an entry sets; 0 = not set (the family's default).
struct TunedFields {
  int tile_m = 0, tile_n = 0, tile_k = 0, stages = 0, threads = 0, split_k = 0;
  bool operator==(const TunedFields&) const = default;
};

struct TuningEntry {
  TuningKey key;
  TunedFields fields;
  std::string version;  // tuning_family_version(key.family) of the build that tuned it
};

// The version key of a family's configuration space in this build
// (tuning_space.cpp: a hash of the family's revision, its space and the
// kernel's limits that decide which configurations exist, such as the
// shared memory each needs); "" for a family this build does not tune.
std::string tuning_family_version(std::string_view family);

// Removes the entries whose "version" is not their family's in this build;
// returns how many, and sets `summary` ("3 gemm_sm90 entries of version
// 0123456789abcdef (this build: fedcba9876543210)") when there were any.
std::size_t drop_stale_entries(struct TuningDb& db, std::string& summary);

struct TuningDb {
  std::string device;  // Target::device_name it was tuned on
  std::string arch;    // Target::arch
  std::vector<TuningEntry> entries;
};

struct TunedLookup {
  TunedFields fields;
  bool exact = false;  // else the nearest bucket of the same family, dtype and kind
  TuningKey bucket;    // the entry's key
};

// ceil(log2(max(v, 1))): the bucket exponent of a dimension.
int bucket_log2(std::int64_t v);
// The exact bucket's entry, else the one nearest (least sum of exponent
// distances; the first in the file on a tie) of the same family, dtype and
// kind, else nullopt.
std::optional<TunedLookup> lookup_tuned(const TuningDb& db, const TuningKey& key);

// "NVIDIA_H200.sm_90a.json": the device name with every character other
// than [A-Za-z0-9_-] replaced by '_', then the architecture.
std::string tuning_db_file_name(const Target& target);
// The checked-file identity of a database for the target's device and arch.
std::uint64_t tuning_db_identity(const std::string& device, const std::string& arch);

// The JSON payload, and the whole file written atomically (throws
// moejit::Error naming the path when it cannot be written).
std::string tuning_db_payload(const TuningDb& db);
void write_tuning_db(const std::string& path, const TuningDb& db);

// Parses a file's bytes for the target: nullopt and `problem` set
// ("schema version 0, expected 1") when it cannot be used. Never throws.
std::optional<TuningDb> parse_tuning_db(const std::string& bytes, const Target& target, std::string& problem);

// The path used for the target: MOEJIT_TUNING_DB when set, else the shipped
// tuning/<tuning_db_file_name> of the source tree or of the install prefix
// (share/moejit/tuning) where such a file exists, else empty (no database).
std::string tuning_db_path(const Target& target);

// Reads and parses the file at `path` for the target (nullopt with `problem`
// set: "does not exist", "is corrupted (...)", ...). Never throws.
std::optional<TuningDb> read_tuning_db(const std::string& path, const Target& target, std::string& problem);

// Adds `entries` to `db`, each replacing an entry of the same key.
void merge_tuning_entries(TuningDb& db, const std::vector<TuningEntry>& entries);

// While one lives, tuning_db_for on this thread returns `db` (nullptr: no
// database) instead of reading any file: `moejit tune` compiles each
// candidate with a database holding just that candidate, on its own thread.
class ScopedTuningDbOverride {
 public:
  explicit ScopedTuningDbOverride(const TuningDb* db);
  ~ScopedTuningDbOverride();
  ScopedTuningDbOverride(const ScopedTuningDbOverride&) = delete;
  ScopedTuningDbOverride& operator=(const ScopedTuningDbOverride&) = delete;

 private:
  bool had_previous_;
  const TuningDb* previous_;
};

// The database for the target, read once per path and process; nullptr when
// there is none or it is unusable (then reported once on stderr:
// "moejit: warning: tuning database <path> <problem>: ignored"). Entries of
// a stale version are dropped, reported once the same way. Thread-safe.
const TuningDb* tuning_db_for(const Target& target);

}  // namespace moejit::codegen
