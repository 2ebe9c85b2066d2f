// The tuning database (codegen/tuning_db.h) and the tuning spaces
// (codegen/tuning_space.h), CI, no GPU: problem collection from config B,
// candidates within the target's limits and accepted by the families,
// moe-tiling's tiles replaced by an entry while a user's win, the writer
// round trip and merge; then the reading side:
// bucket lookup, a valid entry changing the instantiated template arguments
// of generate_module for the sm_90a named target (and the config's source
// becoming "tuned"), an entry the family's checks refuse being ignored with a
// note, and every kind of bad file (corrupted, truncated, foreign GPU, stale
// schema or checked-file version, not a checked file, missing) reported once
// on stderr and leaving the generated source byte-identical to no database.
#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <set>
#include <sstream>

#include "codegen/cuda_codegen.h"
#include "codegen/target.h"
#include "codegen/tuning_db.h"
#include "codegen/tuning_space.h"
#include "codegen/kernels/gemm_sm80.cuh"
#include "codegen/kernels/gemm_sm90.cuh"
#include "frontends/config.h"
#include "frontends/trainer.h"
#include "ir/builder.h"
#include "passes/pass_manager.h"
#include "ir/checked_file.h"
#include "ir/file_io.h"

using namespace moejit;
using codegen::TuningDb;
using codegen::TuningEntry;
using codegen::TunedFields;

namespace {

// MOEJIT_TUNING_DB = `path` for the scope (unset when empty), then restored.
class ScopedTuningDb {
 public:
  explicit ScopedTuningDb(const std::string& path) {
    if (const char* old = std::getenv("MOEJIT_TUNING_DB")) old_ = old;
    if (path.empty())
      unsetenv("MOEJIT_TUNING_DB");
    else
      setenv("MOEJIT_TUNING_DB", path.c_str(), 1);
  }
  ~ScopedTuningDb() {
    if (old_)
      setenv("MOEJIT_TUNING_DB", old_->c_str(), 1);
    else
      unsetenv("MOEJIT_TUNING_DB");
  }

 private:
  std::optional<std::string> old_;
};

// Captures std::cerr for the scope.
class CaptureStderr {
 public:
  CaptureStderr() : old_(std::cerr.rdbuf(text_.rdbuf())) {}
  ~CaptureStderr() { std::cerr.rdbuf(old_); }
  std::string text() const { return text_.str(); }

 private:
  std::ostringstream text_;
  std::streambuf* old_;
};

// The directory of this process's database files, removed at exit.
const std::filesystem::path& test_dir() {
  struct Dir {
    std::filesystem::path path = std::filesystem::temp_directory_path() / fmt::format("moejit_tuning_db_test_{}", getpid());
    ~Dir() {
      std::error_code ec;
      std::filesystem::remove_all(path, ec);
    }
  };
  static const Dir dir;
  return dir.path;
}

// A fresh path per call: the database is read once per path and process.
std::string fresh_path(const std::string& what) {
  static int counter = 0;
  std::filesystem::create_directories(test_dir());
  return (test_dir() / fmt::format("{}_{}.json", what, counter++)).string();
}

std::size_t count(const std::string& text, const std::string& needle) {
  std::size_t n = 0;
  for (auto at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
  return n;
}

// c[304, 200] = a[304, 136] b[136, 200] in `dtype`: bucket m 2^9, n 2^8, k 2^8.
Graph matmul_graph(DType dtype) {
  Graph g("tuned_matmul");
  Builder b(g);
  Tensor a = b.input("a", {304, 136}, dtype), w = b.param("b", {136, 200}, dtype);
  b.output(b.matmul(a, w), "c");
  return g;
}

// An entry of this build's version of the family (tuning_family_version).
TuningEntry entry(const std::string& family, std::string dtype, int m, int n, int k, codegen::TunedFields fields) {
  return TuningEntry{{family, std::move(dtype), "matmul", m, n, k}, fields, codegen::tuning_family_version(family)};
}

TuningDb db_for(const codegen::Target& target, std::vector<TuningEntry> entries) {
  return TuningDb{target.device_name, target.arch, std::move(entries)};
}

const codegen::Target hopper = codegen::Target::named("sm_90a");

std::string first_kernel(const Graph& graph) { return codegen::generate_module(graph, hopper).kernels.at(0); }

}  // namespace

TEST_CASE("tuning database: buckets, exact and nearest lookup", "[cuda][tuning]") {
  CHECK(codegen::bucket_log2(0) == 0);
  CHECK(codegen::bucket_log2(1) == 0);
  CHECK(codegen::bucket_log2(300) == 9);
  CHECK(codegen::bucket_log2(256) == 8);
  CHECK(codegen::bucket_log2(257) == 9);
  TuningDb db = db_for(hopper, {entry("gemm_sm90", "bf16", 9, 8, 8, {.tile_n = 128}),
                                entry("gemm_sm90", "bf16", 12, 12, 12, {.tile_n = 64}),
                                entry("gemm_sm90", "f16", 9, 8, 8, {.tile_n = 256})});
  auto exact = codegen::lookup_tuned(db, {"gemm_sm90", "bf16", "matmul", 9, 8, 8});
  REQUIRE(exact);
  CHECK(exact->exact);
  CHECK(exact->fields.tile_n == 128);
  auto near = codegen::lookup_tuned(db, {"gemm_sm90", "bf16", "matmul", 11, 12, 13});
  REQUIRE(near);
  CHECK_FALSE(near->exact);
  CHECK(near->fields.tile_n == 64);
  CHECK_FALSE(codegen::lookup_tuned(db, {"gemm_sm90", "bf16", "grouped", 9, 8, 8}));  // another kind
  CHECK_FALSE(codegen::lookup_tuned(db, {"matmul_simt", "bf16", "matmul", 9, 8, 8}));
  CHECK(codegen::tuning_db_file_name(hopper) == "H100-like__named_target_.sm_90a.json");
  // A database survives its own round trip.
  std::string problem;
  auto back = codegen::parse_tuning_db(make_checked_file(codegen::tuning_db_payload(db),
                                                         codegen::tuning_db_identity(hopper.device_name, hopper.arch)),
                                       hopper, problem);
  REQUIRE(back);
  CHECK(codegen::tuning_db_payload(*back) == codegen::tuning_db_payload(db));
}

TEST_CASE("tuning database: without MOEJIT_TUNING_DB the named targets find no shipped database", "[cuda][tuning]") {
  ScopedTuningDb none("");
  CHECK(codegen::tuning_db_path(hopper).empty());
  CHECK(codegen::tuning_db_for(hopper) == nullptr);
  // MOEJIT_TUNING_DB=none: no database, whatever is shipped, and nothing to warn about.
  ScopedTuningDb off("none");
  CaptureStderr err;
  CHECK(codegen::tuning_db_path(hopper).empty());
  CHECK(codegen::tuning_db_for(hopper) == nullptr);
  CHECK(err.text().empty());
}

TEST_CASE("tuning database: a valid sm90 entry sets tile_n and stages of the instantiation", "[cuda][tuning]") {
  const Graph graph = matmul_graph(DType::bf16);
  std::string heuristic_kernel, heuristic_source;
  {
    ScopedTuningDb none("");
    heuristic_kernel = first_kernel(graph);
    heuristic_source = codegen::emit_cuda_source(graph, hopper);
  }
  CHECK(heuristic_kernel.find("gemm_sm90_kernel<128, 256, 64, 4,") != std::string::npos);

  SECTION("exact bucket") {
    std::string path = fresh_path("exact");
    codegen::write_tuning_db(path, db_for(hopper, {entry("gemm_sm90", "bf16", 9, 8, 8, {.tile_n = 128, .stages = 3})}));
    ScopedTuningDb db(path);
    CaptureStderr err;
    codegen::ModuleCode module = codegen::generate_module(graph, hopper);
    CHECK(module.kernels.at(0).find("gemm_sm90_kernel<128, 128, 64, 3,") != std::string::npos);
    // What MOEJIT_DEBUG=1 prints for the module.
    std::string configs = codegen::describe_kernel_configs(module, "");
    CHECK(configs.find("tile 128x128x64 stages 3 threads 384 consumers 2 (tuned)") != std::string::npos);
    CHECK(err.text().empty());
  }
  SECTION("nearest bucket, with a note") {
    std::string path = fresh_path("nearest");
    codegen::write_tuning_db(path, db_for(hopper, {entry("gemm_sm90", "bf16", 13, 8, 8, {.tile_n = 64}),
                                                   entry("gemm_sm90", "bf16", 10, 9, 8, {.tile_n = 128, .stages = 5})}));
    ScopedTuningDb db(path);
    codegen::ModuleCode module = codegen::generate_module(graph, hopper);
    CHECK(module.kernels.at(0).find("gemm_sm90_kernel<128, 128, 64, 5,") != std::string::npos);
    CHECK(codegen::describe_kernel_configs(module, "").find("(tuned) [nearest tuned bucket m 2^10 n 2^9 k 2^8]") !=
          std::string::npos);
  }
  SECTION("an entry the family's checks refuse is ignored with a note") {
    std::string path = fresh_path("invalid");
    codegen::write_tuning_db(path, db_for(hopper, {entry("gemm_sm90", "bf16", 9, 8, 8, {.tile_n = 96, .stages = 3})}));
    ScopedTuningDb db(path);
    codegen::ModuleCode module = codegen::generate_module(graph, hopper);
    CHECK(module.kernels.at(0) == heuristic_kernel);
    std::string configs = codegen::describe_kernel_configs(module, "");
    CHECK(configs.find("(heuristic) [tuned tile 128x96x64 stages 3 ignored") != std::string::npos);
  }
  SECTION("stages that do not fit the shared memory are refused") {
    std::string path = fresh_path("toodeep");
    codegen::write_tuning_db(path, db_for(hopper, {entry("gemm_sm90", "bf16", 9, 8, 8, {.tile_n = 256, .stages = 6})}));
    ScopedTuningDb db(path);
    CHECK(first_kernel(graph) == heuristic_kernel);
  }
  SECTION("entries of other families, dtypes or kinds change nothing") {
    std::string path = fresh_path("unrelated");
    codegen::write_tuning_db(path, db_for(hopper, {entry("gemm_sm90", "f16", 9, 8, 8, {.tile_n = 64}),
                                                   entry("matmul_simt", "f32", 9, 8, 8, {.tile_m = 32})}));
    ScopedTuningDb db(path);
    CHECK(codegen::emit_cuda_source(graph, hopper) == heuristic_source);
  }
}

TEST_CASE("tuning database: a valid SIMT entry sets the tile of matmul_kernel", "[cuda][tuning]") {
  const Graph graph = matmul_graph(DType::f32);
  std::string path = fresh_path("simt");
  codegen::write_tuning_db(path, db_for(hopper, {entry("matmul_simt", "f32", 9, 8, 8, {.tile_m = 32, .tile_n = 32, .tile_k = 8})}));
  {
    ScopedTuningDb none("");
    CHECK(first_kernel(graph) == "mj::matmul_kernel<float, 64, 64, 16, 256>");
  }
  ScopedTuningDb db(path);
  codegen::ModuleCode module = codegen::generate_module(graph, hopper);
  CHECK(module.kernels.at(0) == "mj::matmul_kernel<float, 32, 32, 8, 64>");
  CHECK(codegen::describe_kernel_configs(module, "").find("tile 32x32x8 stages 1 threads 64 (tuned)") != std::string::npos);
}

TEST_CASE("tuning database: a bad file is reported once and ignored and the source does not change", "[cuda][tuning]") {
  const Graph graph = matmul_graph(DType::bf16);
  std::string reference;
  {
    ScopedTuningDb none("");
    reference = codegen::emit_cuda_source(graph, hopper);
  }
  // A database that would change the kernel, were it read.
  const TuningDb good = db_for(hopper, {entry("gemm_sm90", "bf16", 9, 8, 8, {.tile_n = 128, .stages = 3})});
  const std::string good_bytes =
      make_checked_file(codegen::tuning_db_payload(good), codegen::tuning_db_identity(hopper.device_name, hopper.arch));

  struct BadFile {
    std::string name, bytes, says;
  };
  std::string corrupted = good_bytes;
  corrupted[corrupted.size() / 2 + kCheckedFileHeaderBytes / 2] ^= 0x20;
  std::string old_format = good_bytes;
  old_format[8] = 0;  // checked-file version 0
  TuningDb foreign = good;
  foreign.device = "NVIDIA A100-SXM4-80GB";
  foreign.arch = "sm_80";
  std::string stale_payload = codegen::tuning_db_payload(good);
  const std::string schema = fmt::format("\"schema\": {}", codegen::kTuningDbSchema);
  REQUIRE(stale_payload.find(schema) != std::string::npos);
  stale_payload.replace(stale_payload.find(schema), schema.size(), "\"schema\": 1");
  // Every entry of a version the family no longer has (its kernel or space changed since).
  TuningDb stale_entries = good;
  stale_entries.entries[0].version = "0123456789abcdef";
  std::string no_version_payload = codegen::tuning_db_payload(good);
  const std::string version_field = fmt::format("\"version\": \"{}\"", good.entries[0].version);
  REQUIRE(no_version_payload.find(version_field) != std::string::npos);
  no_version_payload.replace(no_version_payload.find(version_field), version_field.size(), "\"unversioned\": true");
  const auto identity = codegen::tuning_db_identity(hopper.device_name, hopper.arch);
  std::string same_identity_other_device_payload = codegen::tuning_db_payload(foreign);
  const std::vector<BadFile> bad = {
      {"corrupted", corrupted, "is corrupted"},
      {"truncated", good_bytes.substr(0, good_bytes.size() - 10), "is truncated"},
      {"header_only", good_bytes.substr(0, 20), "is truncated"},
      {"empty", "", "is empty"},
      {"plain_json", codegen::tuning_db_payload(good), "is not a moejit checked file"},
      {"foreign", make_checked_file(codegen::tuning_db_payload(foreign),
                                    codegen::tuning_db_identity(foreign.device, foreign.arch)),
       "was tuned on \"NVIDIA A100-SXM4-80GB\" sm_80, this is \"H100-like (named target)\" sm_90a"},
      {"foreign_payload", make_checked_file(same_identity_other_device_payload, identity),
       "was tuned on \"NVIDIA A100-SXM4-80GB\" sm_80"},
      {"stale_schema", make_checked_file(stale_payload, identity), fmt::format("has schema version 1, expected {}", codegen::kTuningDbSchema)},
      {"stale_entry_version", make_checked_file(codegen::tuning_db_payload(stale_entries), identity),
       fmt::format("holds 1 gemm_sm90 entry of version \"0123456789abcdef\" (this build: \"{}\"), tuned for another version",
                   codegen::tuning_family_version("gemm_sm90"))},
      {"entry_without_version", make_checked_file(no_version_payload, identity), "entry 0: expected a string \"version\""},
      {"stale_checked_version", old_format, "has another checked-file version"},
      {"not_json", make_checked_file("{\"schema\": 1, \"entries\": [", identity), "holds no JSON object"},
      {"bad_entry",
       make_checked_file(
           "{\"schema\": 2, \"device\": \"H100-like (named target)\", \"arch\": \"sm_90a\", \"entries\": [{\"family\": 3}]}",
           identity),
       "entry 0: expected a string \"family\""},
  };
  for (const auto& b : bad) {
    INFO(b.name);
    std::string path = fresh_path(b.name);
    write_file_atomically(path, b.bytes);
    ScopedTuningDb db(path);
    CaptureStderr err;
    CHECK(codegen::emit_cuda_source(graph, hopper) == reference);
    CHECK(codegen::emit_cuda_source(graph, hopper) == reference);  // and again: no second warning
    INFO(err.text());
    CHECK(count(err.text(), "moejit: warning: tuning database " + path + " ") == 1);
    CHECK(err.text().find(b.says) != std::string::npos);
    CHECK(err.text().find(": ignored\n") != std::string::npos);
  }
  SECTION("a missing file named by MOEJIT_TUNING_DB") {
    std::string path = fresh_path("missing");
    ScopedTuningDb db(path);
    CaptureStderr err;
    CHECK(codegen::emit_cuda_source(graph, hopper) == reference);
    CHECK(count(err.text(), "tuning database " + path + " does not exist: ignored") == 1);
  }
}

TEST_CASE("tuning database: entries of a stale family version are dropped, reported once, and the current ones used", "[cuda][tuning]") {
  // The version key: one per tunable family, stable, and none for a family this build does not tune.
  std::set<std::string> versions;
  for (const auto& f : codegen::tunable_families()) {
    const std::string v = codegen::tuning_family_version(f.name);
    INFO(f.name);
    CHECK(v.size() == 16);
    CHECK(v == codegen::tuning_family_version(f.name));
    CHECK(versions.insert(v).second);
  }
  CHECK(codegen::tuning_family_version("gemm_sm70").empty());

  const Graph graph = matmul_graph(DType::bf16);
  TuningDb db = db_for(hopper, {entry("gemm_sm90", "bf16", 9, 8, 8, {.tile_n = 128, .stages = 3}),
                                entry("matmul_simt", "f32", 9, 8, 8, {.tile_m = 32, .tile_n = 32, .tile_k = 8}),
                                entry("gemm_sm70", "bf16", 9, 8, 8, {.stages = 2})});
  db.entries[1].version = "fedcba9876543210";  // the SIMT winner of an older kernel
  db.entries[2].version = "0000000000000001";
  std::string summary;
  TuningDb copy = db;
  CHECK(codegen::drop_stale_entries(copy, summary) == 2);
  REQUIRE(copy.entries.size() == 1);
  CHECK(copy.entries[0].key.family == "gemm_sm90");
  CHECK(summary.find("1 gemm_sm70 entry of version \"0000000000000001\" (a family this build does not tune)") != std::string::npos);
  CHECK(summary.find("1 matmul_simt entry of version \"fedcba9876543210\"") != std::string::npos);

  const std::string path = fresh_path("mixed_versions");
  codegen::write_tuning_db(path, db);
  ScopedTuningDb use(path);
  CaptureStderr err;
  CHECK(first_kernel(graph).find("gemm_sm90_kernel<128, 128, 64, 3,") != std::string::npos);  // the current entry
  CHECK(first_kernel(matmul_graph(DType::f32)) == "mj::matmul_kernel<float, 64, 64, 16, 256>");  // not the stale one
  CHECK(first_kernel(graph).find("gemm_sm90_kernel<128, 128, 64, 3,") != std::string::npos);
  INFO(err.text());
  CHECK(count(err.text(), "moejit: warning: tuning database " + path + " holds ") == 1);
  CHECK(err.text().find("tuned for another version of the family's kernel or space (run moejit tune again): ignored\n") !=
        std::string::npos);
}

namespace {

Graph after_cuda_pipeline(Graph graph) {
  PassManager manager;
  manager.add_pipeline(kCudaPipeline);
  manager.run(graph);
  return graph;
}

// The GEMM launches' configs of the graph's module (after the CUDA pipeline) on `target`.
std::vector<codegen::TileConfig> gemm_configs(const Graph& graph, const codegen::Target& target) {
  std::vector<codegen::TileConfig> configs;
  for (const auto& step : codegen::generate_module(after_cuda_pipeline(graph), target).steps)
    for (const auto& launch : step.launches)
      if (launch.kind == codegen::Launch::Kind::kernel && launch.config.tile_m > 0) configs.push_back(launch.config);
  return configs;
}

// xs [512, 128] x w [4, 128, 256] in bf16 through offsets: bucket m 2^9, n 2^8, k 2^7.
Graph grouped_graph(bool user_tiles) {
  Graph g("tuned_grouped");
  Builder b(g);
  Tensor xs = b.input("xs", {512, 128}, DType::bf16), w = b.param("w", {4, 128, 256}, DType::bf16);
  Tensor offsets = b.input("offsets", {5}, DType::i32);
  Tensor y = b.moe_grouped_matmul(xs, w, offsets);
  if (user_tiles) {
    Op& op = g.mutable_ops().back();
    op.attrs.set("tile_m", std::int64_t{128});
    op.attrs.set("tile_n", std::int64_t{64});
    op.attrs.set("tile_k", std::int64_t{64});
  }
  b.output(y, "y");
  return g;
}

}  // namespace

TEST_CASE("tune: config B's training step has the 17 distinct GEMM problems and the route derived by hand", "[cuda][tuning]") {
  // Config B: T = 64 x 256 = 16384 tokens, K = 2 (32768 routed rows), D 384,
  // F 1536, E 8, 6 layers, 6 heads (qkv 1152), vocabulary 65, bf16.
  GptMoeConfig config = load_config_file(std::string(MOEJIT_SOURCE_DIR) + "/examples/gpt_moe/configs/config_b.json");
  config.vocab_size = 65;
  const Graph graph = after_cuda_pipeline(build_training_graph(config, DType::bf16).graph);
  std::map<std::string, int> got;
  std::set<std::string> keys;
  for (const auto& p : codegen::collect_tuning_problems(graph, hopper)) {
    INFO(p.family << " " << p.label());
    CHECK(got.emplace(p.family + " " + p.label(), p.uses).second);  // distinct
    if (p.family == "attention") CHECK(p.key == codegen::attention_tuning_key(p.attention));
    else if (p.family == "route") CHECK(p.key == codegen::route_tuning_key(p.route));
    else CHECK(p.key == codegen::gemm_tuning_key(p.family.c_str(), p.gemm));
    // and each has its own database entry: the layout is in the kind
    CHECK(keys.insert(fmt::format("{} {} {} {} {} {}", p.key.family, p.key.dtype, p.key.kind, p.key.m_log2, p.key.n_log2, p.key.k_log2)).second);
  }
  const std::map<std::string, int> expected = {
      // experts, per layer: up (gather_matmul) and down (matmul_combine), their
      // input gradients (W^T) and weight gradients
      {"gemm_sm90 bf16 grouped m 32768 n 1536 k 384 x8", 6},
      {"gemm_sm90 bf16 grouped m 32768 n 384 k 1536 x8", 6},
      {"gemm_sm90 bf16 grouped m 32768 n 1536 k 384 x8 (W^T)", 6},
      {"gemm_sm90 bf16 grouped m 32768 n 384 k 1536 x8 (W^T)", 6},
      {"gemm_sm90 bf16 wgrad m 1536 n 384 k 32768 x8", 6},
      {"gemm_sm90 bf16 wgrad m 384 n 1536 k 32768 x8", 6},
      // attention: qkv and the output projection (nn::linear's [out, in] weights), data and weight gradients
      {"gemm_sm90 bf16 matmul m 16384 n 1152 k 384 (A B^T)", 6},
      {"gemm_sm90 bf16 matmul m 16384 n 384 k 1152", 6},
      {"gemm_sm90 bf16 matmul m 1152 n 384 k 16384 (A^T B)", 6},
      {"gemm_sm90 bf16 matmul m 16384 n 384 k 384 (A B^T)", 6},
      {"gemm_sm90 bf16 matmul m 16384 n 384 k 384", 6},
      {"gemm_sm90 bf16 matmul m 384 n 384 k 16384 (A^T B)", 6},
      // the LM head (65 columns); its gradients have rows of 65 bf16, which the copy engine cannot address:
      // the sm80 family serves them (dx = dlogits W, dW = dlogits^T x)
      {"gemm_sm90 bf16 matmul m 16384 n 65 k 384 (A B^T)", 1},
      {"gemm_sm80 bf16 matmul m 16384 n 384 k 65", 1},
      {"gemm_sm80 bf16 matmul m 65 n 384 k 16384 (A^T B)", 1},
      // the router, in f32 (mixed precision keeps it): the fused route
      // (route_kernel: its product, gate and counts), and its gradients
      {"route f32 route T 16384 D 384 E 8 K 2", 6},
      {"matmul_simt f32 matmul m 16384 n 384 k 8 (A B^T)", 6},
      {"matmul_simt f32 matmul m 384 n 8 k 16384 (A^T B)", 6},
      // the flash attention of every layer (forward and backward: one problem), reading the packed qkv
      {"attention bf16 qkv B 64 H 6 T 256 Dh 64", 6},
  };
  CHECK(got == expected);
}

TEST_CASE("tune: candidates fit the target and every one is taken by its family", "[cuda][tuning]") {
  codegen::Target small = hopper;
  small.shared_memory_per_block_optin = 160 * 1024;  // fewer stages fit
  for (const codegen::Target& target : {hopper, small}) {
    for (bool bf16 : {true, false}) {
      const Graph graph = bf16 ? grouped_graph(false) : matmul_graph(DType::f32);
      const auto problems = codegen::collect_tuning_problems(after_cuda_pipeline(graph), target);
      REQUIRE(problems.size() == 1);
      const codegen::TuningProblem& p = problems[0];
      CHECK(p.family == (bf16 ? "gemm_sm90" : "matmul_simt"));
      const auto candidates = codegen::find_tunable_family(p.family)->candidates(p, target);
      REQUIRE(candidates.size() >= 2);
      CHECK(candidates[0] == p.heuristic);
      for (std::size_t i = 0; i < candidates.size(); ++i) {
        const TunedFields& f = candidates[i];
        INFO(codegen::fields_str(f));
        for (std::size_t j = 0; j < i; ++j) CHECK_FALSE(candidates[j] == f);  // no duplicates
        if (bf16) {
          CHECK(moejit::sm90::smem_bytes(128, f.tile_n, 64, f.stages, 4) <= target.shared_memory_per_block_optin);
        } else {
          CHECK(f.tile_m * f.tile_n <= 64 * 64);
          CHECK(f.tile_k * (f.tile_m + f.tile_n + 2) * 4 <= 48 * 1024);
        }
        // Under a database of this one entry, the family uses it as it is.
        TuningDb db = db_for(target, {{p.key, f}});
        codegen::ScopedTuningDbOverride only(&db);
        const auto configs = gemm_configs(graph, target);
        REQUIRE(configs.size() == 1);
        CHECK(configs[0].source == codegen::TileConfig::Source::tuned);
        CHECK(configs[0].tile_n == f.tile_n);
        if (bf16) CHECK(configs[0].stages == f.stages);
        else CHECK((configs[0].tile_m == f.tile_m && configs[0].tile_k == f.tile_k));
      }
    }
  }
  // The 160 KiB target drops the deepest 128- and 256-wide pipelines.
  const auto p = codegen::collect_tuning_problems(after_cuda_pipeline(grouped_graph(false)), small).at(0);
  CHECK(codegen::find_tunable_family("gemm_sm90")->candidates(p, small).size() <
        codegen::find_tunable_family("gemm_sm90")->candidates(p, hopper).size());
}

TEST_CASE("tune: the sm80 family's stages are candidates for the products sm90 cannot take", "[cuda][tuning]") {
  // c = a b with rows of 65 bf16 in a (K = 65): not TMA-addressable, so the sm80 family serves it on sm_90a.
  Graph g("sm80_matmul");
  Builder b(g);
  Tensor a = b.input("a", {300, 65}, DType::bf16), w = b.param("b", {65, 200}, DType::bf16);
  b.output(b.matmul(a, w), "c");
  codegen::Target small = hopper;
  small.shared_memory_per_block_optin = 48 * 1024;
  for (const codegen::Target& target : {hopper, small}) {
    const auto problems = codegen::collect_tuning_problems(after_cuda_pipeline(g), target);
    REQUIRE(problems.size() == 1);
    const codegen::TuningProblem& p = problems[0];
    CHECK(p.family == "gemm_sm80");
    CHECK(p.key.family == "gemm_sm80");
    const auto candidates = codegen::find_tunable_family(p.family)->candidates(p, target);
    REQUIRE(candidates.size() >= 2);
    CHECK(candidates[0] == p.heuristic);
    CHECK(p.heuristic.stages == (target.shared_memory_per_block_optin >= 64 * 1024 ? 4 : 3));
    for (const TunedFields& f : candidates) {
      INFO(codegen::fields_str(f));
      CHECK(moejit::sm80::smem_bytes(128, 128, 32, f.stages, 1, false) <= target.shared_memory_per_block_optin);
      TuningDb db = db_for(target, {{p.key, f, codegen::tuning_family_version(p.family)}});
      codegen::ScopedTuningDbOverride only(&db);
      const auto configs = gemm_configs(g, target);
      REQUIRE(configs.size() == 1);
      CHECK(configs[0].source == codegen::TileConfig::Source::tuned);
      CHECK(configs[0].stages == f.stages);
      CHECK(configs[0].tile_n == 128);
    }
    // Stages that do not fit are refused with a note, leaving the heuristic.
    TuningDb deep = db_for(target, {{p.key, {.stages = 6}, codegen::tuning_family_version(p.family)}});
    if (moejit::sm80::smem_bytes(128, 128, 32, 6, 1, false) > target.shared_memory_per_block_optin) {
      codegen::ScopedTuningDbOverride only(&deep);
      const auto configs = gemm_configs(g, target);
      REQUIRE(configs.size() == 1);
      CHECK(configs[0].source == codegen::TileConfig::Source::heuristic);
      CHECK(configs[0].note.find("ignored: the sm80 family takes") != std::string::npos);
    }
  }
}

TEST_CASE("tune: an entry replaces moe-tiling's tiles but a user's tile attributes win", "[cuda][tuning]") {
  const TuningDb db = db_for(hopper, {{{"gemm_sm90", "bf16", "grouped", 9, 8, 7}, {.tile_n = 128, .stages = 5}}});
  {
    codegen::ScopedTuningDbOverride none(nullptr);
    const auto heuristic = gemm_configs(grouped_graph(false), hopper);
    REQUIRE(heuristic.size() == 1);
    CHECK(heuristic[0].tile_n == 256);  // moe-tiling's choice for f = 256
    CHECK(heuristic[0].note.find("moe-tiling's heuristic") != std::string::npos);
  }
  codegen::ScopedTuningDbOverride tuned(&db);
  const auto configs = gemm_configs(grouped_graph(false), hopper);
  REQUIRE(configs.size() == 1);
  CHECK(configs[0].source == codegen::TileConfig::Source::tuned);
  CHECK(configs[0].tile_n == 128);
  CHECK(configs[0].stages == 5);
  CHECK(configs[0].str().find("database, exact bucket") != std::string::npos);
  const auto user = gemm_configs(grouped_graph(true), hopper);
  REQUIRE(user.size() == 1);
  CHECK(user[0].source == codegen::TileConfig::Source::attribute);
  CHECK(user[0].tile_n == 64);
}

TEST_CASE("tune: the writer round-trips through the reader and merging replaces same keys", "[cuda][tuning]") {
  TuningDb db = db_for(hopper, {entry("gemm_sm90", "bf16", 9, 8, 8, {.tile_n = 128, .stages = 5}),
                                entry("matmul_simt", "f32", 14, 3, 9, {.tile_m = 32, .tile_n = 16, .tile_k = 32})});
  const std::string path = fresh_path("roundtrip");
  codegen::write_tuning_db(path, db);
  std::string problem;
  auto back = codegen::read_tuning_db(path, hopper, problem);
  INFO(problem);
  REQUIRE(back);
  CHECK(back->device == hopper.device_name);
  CHECK(back->arch == hopper.arch);
  REQUIRE(back->entries.size() == 2);
  CHECK(back->entries[1].key == db.entries[1].key);
  CHECK(back->entries[1].fields == db.entries[1].fields);
  codegen::merge_tuning_entries(*back, {entry("gemm_sm90", "bf16", 9, 8, 8, {.tile_n = 64, .stages = 6}),
                                        entry("gemm_sm90", "bf16", 10, 8, 8, {.tile_n = 256, .stages = 4})});
  REQUIRE(back->entries.size() == 3);
  CHECK(back->entries[0].fields == TunedFields{.tile_n = 64, .stages = 6});
  CHECK(back->entries[2].key.m_log2 == 10);
  CHECK_FALSE(codegen::read_tuning_db(fresh_path("absent"), hopper, problem));
  CHECK(problem == "does not exist");
}

TEST_CASE("tuning database: the shipped H200 database is a valid file for the H200, every entry taken by its family", "[cuda][tuning]") {
  codegen::Target h200 = hopper;
  h200.device_name = "NVIDIA H200";
  h200.sm_count = 132;
  const std::string path = std::string(MOEJIT_SOURCE_DIR) + "/tuning/" + codegen::tuning_db_file_name(h200);
  REQUIRE(codegen::tuning_db_file_name(h200) == "NVIDIA_H200.sm_90a.json");
  std::string problem;
  auto db = codegen::read_tuning_db(path, h200, problem);
  INFO(path << ": " << problem);
  REQUIRE(db);
  REQUIRE_FALSE(db->entries.empty());
  // Entries a later kernel change made stale would be dropped at load with a
  // warning on every run of every user: a revision bump ships with a
  // database tuned again (or the stale entries removed).
  std::string stale;
  const std::size_t dropped = codegen::drop_stale_entries(*db, stale);
  INFO("stale: " << stale << " (run moejit tune on an H200, tuning/README.md)");
  CHECK(dropped == 0);
  for (const auto& e : db->entries) {
    INFO(e.key.family << " " << e.key.kind << " m 2^" << e.key.m_log2 << " n 2^" << e.key.n_log2 << " k 2^" << e.key.k_log2);
    CHECK(codegen::find_tunable_family(e.key.family) != nullptr);
    CHECK((e.key.dtype == "bf16" || e.key.dtype == "f32"));
    if (e.key.family == "gemm_sm90") {
      CHECK((e.fields.tile_n == 64 || e.fields.tile_n == 128 || e.fields.tile_n == 256));
      CHECK(moejit::sm90::smem_bytes(128, e.fields.tile_n, 64, e.fields.stages, 1) <= h200.shared_memory_per_block_optin);
    }
  }
}
