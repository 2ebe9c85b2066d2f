// The kernel cache verifies what it loads (no GPU needed: PTX compiles).
// Each case runs child processes of this binary (the cache in memory would
// otherwise serve every second request), with their stdout and stderr read
// back: a damaged entry (a flipped byte, cut inside the payload or inside the
// header, empty, another key's file) is reported once, compiled again with a
// result (binary and lowered names) equal to a fresh compile, and replaced by a valid entry; with
// MOEJIT_ASSERT_CACHED=1 it is an error naming the file. An unwritable cache
// directory and a full disk cost a warning, not the run. Eight processes
// compiling one module into one empty directory all succeed and leave one
// valid entry. NVRTC that cannot be loaded is a clear error, not a crash.
#include <fmt/format.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "cuda/child_process.h"
#include "ir/error.h"
#include "ir/file_io.h"
#include "runtime/cuda/cuda_backend.h"
#include "runtime/cuda/nvrtc_compiler.h"

using namespace moejit;
namespace fs = std::filesystem;

namespace {

using namespace moejit::cuda_test;

// Two modules: "a" is the one whose entry gets damaged (a template, so that
// its entry holds a lowered name with the binary), "b" supplies a valid entry
// of another key.
const char* kModuleA = "template <int N> __global__ void cache_a(float* x) { x[threadIdx.x] += N; }\n";
const char* kModuleB = "extern \"C\" __global__ void cache_b(float* x) { x[threadIdx.x] *= 3.0f; }\n";

cuda::CompileRequest request_for(const std::string& module, bool use_cache) {
  if (module == "b") return {kModuleB, "cache_b", "compute_80", cuda::CompileOutput::ptx, use_cache};
  return {kModuleA, "cache_a", "compute_80", cuda::CompileOutput::ptx, use_cache, {"cache_a<1>"}};
}

void write_bytes(const fs::path& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
  REQUIRE(out.good());
}

// The files of a cache directory.
std::vector<fs::path> entries(const fs::path& dir) {
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(dir)) files.push_back(entry.path());
  return files;
}

fs::path fresh_dir(const std::string& name) {
  fs::path dir = fs::temp_directory_path() / fmt::format("moejit-{}-{}", name, ::getpid());
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

// The line a cache child prints about its compile.
const char* kChildSays = "cache-child:";

}  // namespace

// Run in child processes: compiles module $MOEJIT_TEST_MODULE ("a", "b" or
// "ab": both) through the cache, then compares with a fresh compile.
// MOEJIT_TEST_START_AT (milliseconds since the epoch) makes the children
// of the 8-process test start their compiles together.
TEST_CASE("cache child (verify)", "[.cache_verify_child]") {
  const char* module_env = std::getenv("MOEJIT_TEST_MODULE");
  REQUIRE(module_env != nullptr);
  if (const char* start_at = std::getenv("MOEJIT_TEST_START_AT")) {
    auto at = std::chrono::system_clock::time_point(std::chrono::milliseconds(std::atoll(start_at)));
    std::this_thread::sleep_until(at);
  }
  std::string modules = module_env;
  std::vector<cuda::CompiledModule> cached;
  try {
    for (char m : modules) cached.push_back(cuda::compile_module(request_for(std::string(1, m), true)));
  } catch (const Error& e) {
    // On one line (Catch2 would wrap it), for the parent to search.
    std::printf("%s error: %s\n", kChildSays, e.what());
    FAIL("compile_module threw");
  }
  CudaCompileStats stats = cuda_compile_stats();
  bool equal = true;
  for (std::size_t i = 0; i < modules.size(); ++i) {
    cuda::CompiledModule fresh = cuda::compile_module(request_for(std::string(1, modules[i]), false));
    equal &= cached[i].binary == fresh.binary && cached[i].lowered_names == fresh.lowered_names;
    // Module a's lowered name, served from the cache, names its PTX entry.
    if (modules[i] == 'a')
      equal &= cached[i].binary.find(".entry " + cached[i].lowered("cache_a<1>") + "(") != std::string::npos;
  }
  std::printf("%s compiles=%lld disk_hits=%lld equal_to_fresh=%d\n", kChildSays, static_cast<long long>(stats.compiles),
              static_cast<long long>(stats.disk_hits), equal ? 1 : 0);
  CHECK(equal);
}

TEST_CASE("a damaged kernel cache entry is reported once, recompiled and replaced", "[cuda][nvrtc][cache]") {
  struct Damage {
    const char* name;
    const char* detail;  // what the warning must say is wrong
  };
  const Damage damages[] = {
      {"a flipped byte in the middle", "expected checksum"},
      {"cut inside the payload", "payload bytes, found"},
      {"cut inside the header", "-byte header, found a 20-byte file"},
      {"an empty file", "(empty file)"},
      {"the entry of another key", "the file of another entry"},
      {"trailing bytes", "payload bytes, found"},
  };
  fs::path dir = fresh_dir("cache-damage");
  fs::path other_dir = dir / "other";
  ChildResult b =
      run_child(fmt::format("MOEJIT_CACHE_DIR='{}' MOEJIT_TEST_MODULE=b", other_dir.string()), "[.cache_verify_child]");
  REQUIRE(b.exit_code == 0);
  REQUIRE(entries(other_dir).size() == 1);
  const std::string entry_b = read_bytes(entries(other_dir)[0]);
  fs::path cache = dir / "cache";
  const std::string env = fmt::format("MOEJIT_CACHE_DIR='{}' MOEJIT_TEST_MODULE=a", cache.string());

  for (const Damage& damage : damages) {
    INFO("damage: " << damage.name);
    fs::remove_all(cache);
    ChildResult clean = run_child(env, "[.cache_verify_child]");
    INFO(clean.output);
    REQUIRE(clean.exit_code == 0);
    REQUIRE(entries(cache).size() == 1);
    const fs::path entry = entries(cache)[0];
    const std::string good = read_bytes(entry);
    std::string bad = good;
    const std::string name = damage.name;
    if (name == "a flipped byte in the middle")
      bad[bad.size() / 2] = static_cast<char>(bad[bad.size() / 2] ^ 0x10);
    else if (name == "cut inside the payload")
      bad.resize(bad.size() - bad.size() / 3);
    else if (name == "cut inside the header")
      bad.resize(20);
    else if (name == "an empty file")
      bad.clear();
    else if (name == "the entry of another key")
      bad = entry_b;
    else
      bad += "junk";
    REQUIRE(bad != good);
    write_bytes(entry, bad);

    // MOEJIT_ASSERT_CACHED=1: an error naming the file; the file is left as it was.
    ChildResult refused = run_child(env + " MOEJIT_ASSERT_CACHED=1", "[.cache_verify_child]");
    INFO(refused.output);
    CHECK(refused.exit_code != 0);
    CHECK(count(refused.output,
                fmt::format("cache-child: error: kernel cache entry {} is damaged (", entry.string())) == 1);
    CHECK(count(refused.output, "MOEJIT_ASSERT_CACHED=1 forbids recompiling it") == 1);
    CHECK(read_bytes(entry) == bad);

    // Without it: one warning, one compile, the result of a fresh compile.
    ChildResult recompiled = run_child(env, "[.cache_verify_child]");
    INFO(recompiled.output);
    CHECK(recompiled.exit_code == 0);
    CHECK(count(recompiled.output,
                fmt::format("moejit: warning: kernel cache entry {} is damaged (", entry.string())) == 1);
    CHECK(count(recompiled.output, damage.detail) == 1);
    CHECK(count(recompiled.output, "; recompiling\n") == 1);
    CHECK(count(recompiled.output, "cache-child: compiles=1 disk_hits=0 equal_to_fresh=1") == 1);

    // The entry was replaced, atomically: the same bytes as the clean entry,
    // no temporary left, and a process that may not compile finds it.
    CHECK(entries(cache).size() == 1);
    CHECK(read_bytes(entry) == good);
    ChildResult warm = run_child(env + " MOEJIT_ASSERT_CACHED=1", "[.cache_verify_child]");
    INFO(warm.output);
    CHECK(warm.exit_code == 0);
    CHECK(count(warm.output, "cache-child: compiles=0 disk_hits=1 equal_to_fresh=1") == 1);
    CHECK(count(warm.output, "warning") == 0);
  }
  fs::remove_all(dir);
}

TEST_CASE("an entry of the old format (a text tag, no checksum) is replaced", "[cuda][nvrtc][cache]") {
  fs::path dir = fresh_dir("cache-old");
  const std::string env = fmt::format("MOEJIT_CACHE_DIR='{}' MOEJIT_TEST_MODULE=a", dir.string());
  REQUIRE(run_child(env, "[.cache_verify_child]").exit_code == 0);
  REQUIRE(entries(dir).size() == 1);
  const fs::path entry = entries(dir)[0];
  const std::string good = read_bytes(entry);
  write_bytes(entry, "moejit-kernel 0123456789abcdef\n.version 8.0\n");
  ChildResult recompiled = run_child(env, "[.cache_verify_child]");
  INFO(recompiled.output);
  CHECK(recompiled.exit_code == 0);
  CHECK(count(recompiled.output, "is damaged (expected the header \"MJCHECK\"") == 1);
  CHECK(count(recompiled.output, "cache-child: compiles=1 disk_hits=0 equal_to_fresh=1") == 1);
  CHECK(read_bytes(entry) == good);
  fs::remove_all(dir);
}

TEST_CASE("a cache directory that cannot be created costs one warning, not the run", "[cuda][nvrtc][cache]") {
  fs::path dir = fresh_dir("cache-unwritable");
  // A regular file where a directory should be: fails for root as well (chmod would not).
  write_bytes(dir / "a_file", "not a directory");
  fs::path cache = dir / "a_file" / "cache";
  ChildResult child =
      run_child(fmt::format("MOEJIT_CACHE_DIR='{}' MOEJIT_TEST_MODULE=ab", cache.string()), "[.cache_verify_child]");
  INFO(child.output);
  CHECK(child.exit_code == 0);
  CHECK(count(child.output,
              fmt::format("moejit: warning: the kernel cache directory {} cannot be written (", cache.string())) == 1);
  CHECK(count(child.output, "compiled modules are kept in memory only") == 1);
  CHECK(count(child.output, "cache-child: compiles=2 disk_hits=0 equal_to_fresh=1") == 1);
  fs::remove_all(dir);
}

TEST_CASE("a full disk costs one warning, not the run, and leaves no temporary file", "[cuda][nvrtc][cache]") {
  fs::path cache = fresh_dir("cache-full");
  // `ulimit -f 0` makes every write to a regular file fail (EFBIG, as on a
  // full disk; SIGXFSZ is ignored so the write returns the error).
  ChildResult child =
      run_child(fmt::format("MOEJIT_CACHE_DIR='{}' MOEJIT_TEST_MODULE=ab CUDA_CACHE_DISABLE=1", cache.string()),
                "[.cache_verify_child]", "trap '' XFSZ; ulimit -f 0;");
  INFO(child.output);
  CHECK(child.exit_code == 0);
  CHECK(count(child.output,
              fmt::format("moejit: warning: the kernel cache directory {} cannot be written (", cache.string())) == 1);
  CHECK(count(child.output, "disk full?") == 1);
  CHECK(count(child.output, "cache-child: compiles=2 disk_hits=0 equal_to_fresh=1") == 1);
  CHECK(entries(cache).empty());  // neither an entry nor a temporary
  fs::remove_all(cache);
}

TEST_CASE("8 processes compiling one module into one empty cache all succeed and leave one valid entry",
          "[cuda][nvrtc][cache]") {
  fs::path dir = fresh_dir("cache-8");
  fs::path cache = dir / "cache";
  fs::create_directories(cache);
  auto start_at =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()) +
      std::chrono::milliseconds(1500);
  std::string self = fs::read_symlink("/proc/self/exe").string();
  std::string script;
  for (int i = 0; i < 8; ++i)
    script += fmt::format(
        "(MOEJIT_CACHE_DIR='{}' MOEJIT_TEST_MODULE=a MOEJIT_TEST_START_AT={} '{}' '[.cache_verify_child]' > '{}/out{}' "
        "2>&1; "
        "echo $? > '{}/rc{}') & ",
        cache.string(), start_at.count(), self, dir.string(), i, dir.string(), i);
  script += "wait";
  REQUIRE(std::system(script.c_str()) == 0);
  std::int64_t compiles = 0;
  for (int i = 0; i < 8; ++i) {
    std::string output = read_bytes(dir / fmt::format("out{}", i));
    INFO("process " << i << ": " << output);
    CHECK(read_bytes(dir / fmt::format("rc{}", i)) == "0\n");
    CHECK(count(output, "equal_to_fresh=1") == 1);
    CHECK(count(output, "warning") == 0);  // no process saw a partial entry
    compiles += count(output, "compiles=1");
  }
  INFO(compiles << " of 8 processes compiled");
  CHECK(compiles >= 1);
  std::vector<fs::path> files = entries(cache);
  REQUIRE(files.size() == 1);  // one entry, no temporary
  CHECK(files[0].string().find(".tmp.") == std::string::npos);
  ChildResult warm =
      run_child(fmt::format("MOEJIT_CACHE_DIR='{}' MOEJIT_TEST_MODULE=a MOEJIT_ASSERT_CACHED=1", cache.string()),
                "[.cache_verify_child]");
  INFO(warm.output);
  CHECK(warm.exit_code == 0);
  CHECK(count(warm.output, "cache-child: compiles=0 disk_hits=1 equal_to_fresh=1") == 1);
  fs::remove_all(dir);
}

// Run in a child process with MOEJIT_NVRTC_LIBRARY pointing nowhere.
TEST_CASE("nvrtc missing child", "[.nvrtc_missing_child]") {
  std::string why;
  CHECK(!cuda::nvrtc_available(&why));
  try {
    cuda::compile_cuda(request_for("a", false));
    FAIL("expected moejit::Error");
  } catch (const Error& e) {
    std::printf("error: %s\n", e.what());
    CHECK(std::string(e.what()) == why);
  }
  // The binary itself does not link libnvrtc: nothing of it is mapped.
  std::string maps = read_bytes("/proc/self/maps");
  std::printf("libnvrtc mapped: %s\n", maps.find("libnvrtc") == std::string::npos ? "no" : "yes");
}

TEST_CASE("NVRTC that cannot be loaded is a clear error naming what was tried, and nothing crashes", "[cuda][nvrtc]") {
  ChildResult child = run_child("MOEJIT_NVRTC_LIBRARY=/nonexistent/libnvrtc.so.13", "[.nvrtc_missing_child]");
  INFO(child.output);
  CHECK(child.exit_code == 0);
  CHECK(count(child.output, "error: NVRTC could not be loaded (tried /nonexistent/libnvrtc.so.13: ") == 1);
  CHECK(count(child.output, "set MOEJIT_NVRTC_LIBRARY to its path") == 1);
  CHECK(count(child.output, "libnvrtc mapped: no") == 1);
  // Control: without the variable, the same binary finds NVRTC here.
  CHECK(cuda::nvrtc_available());
  std::vector<std::string> names = cuda::nvrtc_library_candidates();
  REQUIRE(names.size() == 6);
  CHECK(names[0] == "libnvrtc.so.13");
  CHECK(names[5] == "/usr/local/cuda/lib64/libnvrtc.so");
}
