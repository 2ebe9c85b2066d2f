// The local launcher with a fake worker (/bin/sh scripts reading $RANK): every
// rank gets its environment; the first rank that exits non-zero or is killed
// stops the others within seconds (SIGTERM, then SIGKILL for one that ignores
// it), and the message names the rank and how it ended.
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "frontends/launcher.h"
#include "ir/error.h"

using namespace moejit;
namespace fs = std::filesystem;

namespace {

fs::path fresh_dir(const std::string& name) {
  fs::path dir = fs::temp_directory_path() / fmt::format("moejit_launcher_{}_{}", name, getpid());
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

struct Timed {
  LaunchResult result;
  double seconds;
};

Timed launch(int nproc, const std::string& script, std::chrono::milliseconds grace = std::chrono::milliseconds(2000),
             std::vector<std::pair<std::string, std::string>> env = {}) {
  LaunchOptions options;
  options.nproc = nproc;
  options.command = {"/bin/sh", "-c", script};
  options.grace = grace;
  options.environment = std::move(env);
  auto start = std::chrono::steady_clock::now();
  LaunchResult result = launch_local_ranks(options);
  return {result, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count()};
}

}  // namespace

TEST_CASE("launcher: every rank runs with RANK, WORLD_SIZE, LOCAL_RANK and the extra variables", "[scale][launcher]") {
  fs::path dir = fresh_dir("env");
  Timed t = launch(3, "echo \"$RANK $WORLD_SIZE $LOCAL_RANK $LOCAL_WORLD_SIZE $MOEJIT_TEST_TAG\" > \"$OUT_DIR/rank$RANK\"",
                   std::chrono::milliseconds(2000), {{"OUT_DIR", dir.string()}, {"MOEJIT_TEST_TAG", "tag"}});
  CHECK(t.result.exit_code == 0);
  CHECK(t.result.message.empty());
  for (int r = 0; r < 3; ++r) CHECK(read_text(dir / fmt::format("rank{}", r)) == fmt::format("{} 3 {} 3 tag\n", r, r));
  fs::remove_all(dir);
}

TEST_CASE("launcher: a rank that exits non-zero stops the others within seconds", "[scale][launcher]") {
  Timed t = launch(3, "if [ \"$RANK\" = 1 ]; then sleep 0.2; exit 3; fi; sleep 60");
  INFO(t.result.message);
  CHECK(t.result.exit_code == 1);
  CHECK_THAT(t.result.message, Catch::StartsWith("rank 1 (pid "));
  CHECK_THAT(t.result.message, Catch::Contains("exited with status 3"));
  CHECK_THAT(t.result.message, Catch::Contains("stopped ranks 0, 2 (SIGTERM)"));
  CHECK(t.seconds < 5.0);
}

TEST_CASE("launcher: a rank killed by a signal stops the others; one ignoring SIGTERM gets SIGKILL", "[scale][launcher]") {
  // rank 2 kills itself; rank 0 ignores SIGTERM (trap), so only SIGKILL ends it.
  Timed t = launch(3,
                   "if [ \"$RANK\" = 2 ]; then sleep 0.2; kill -9 $$; fi; "
                   "if [ \"$RANK\" = 0 ]; then trap '' TERM; fi; "
                   "i=0; while [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done",
                   std::chrono::milliseconds(1000));
  INFO(t.result.message);
  CHECK(t.result.exit_code == 1);
  CHECK_THAT(t.result.message, Catch::StartsWith("rank 2 (pid "));
  CHECK_THAT(t.result.message, Catch::Contains("was killed by signal 9"));
  CHECK_THAT(t.result.message, Catch::Contains("stopped ranks 0, 1 (SIGKILL after the grace period)"));
  CHECK(t.seconds < 6.0);
}

TEST_CASE("launcher: a command that cannot run fails its rank with exit status 127", "[scale][launcher]") {
  LaunchOptions options;
  options.nproc = 2;
  options.command = {"/nonexistent/worker"};
  options.grace = std::chrono::milliseconds(500);
  LaunchResult result = launch_local_ranks(options);
  CHECK(result.exit_code == 1);
  CHECK_THAT(result.message, Catch::Contains("exited with status 127"));
  CHECK_THROWS_WITH(launch_local_ranks(LaunchOptions{.nproc = 0, .command = {"true"}}),
                    Catch::Contains("expected nproc >= 1, found 0"));
  CHECK_THROWS_WITH(launch_local_ranks(LaunchOptions{.nproc = 2}), Catch::Contains("expected a command"));
}

TEST_CASE("launcher: gpu_per_rank gives rank r the r-th visible device", "[scale][launcher]") {
  fs::path dir = fresh_dir("gpus");
  const char* saved = std::getenv("CUDA_VISIBLE_DEVICES");
  const std::string saved_value = saved ? saved : "";
  auto run = [&](const char* visible) {
    if (visible) ::setenv("CUDA_VISIBLE_DEVICES", visible, 1);
    else ::unsetenv("CUDA_VISIBLE_DEVICES");
    LaunchOptions options;
    options.nproc = 3;
    options.command = {"/bin/sh", "-c", "echo \"$CUDA_VISIBLE_DEVICES\" > \"$OUT_DIR/rank$RANK\""};
    options.environment = {{"OUT_DIR", dir.string()}};
    options.gpu_per_rank = true;
    REQUIRE(launch_local_ranks(options).exit_code == 0);
    return read_text(dir / "rank0") + read_text(dir / "rank1") + read_text(dir / "rank2");
  };
  CHECK(run(nullptr) == "0\n1\n2\n");
  CHECK(run("4,5,7") == "4\n5\n7\n");
  CHECK(run("4,5") == "4\n5\nnone\n");
  if (saved) ::setenv("CUDA_VISIBLE_DEVICES", saved_value.c_str(), 1);
  else ::unsetenv("CUDA_VISIBLE_DEVICES");
  fs::remove_all(dir);
}

TEST_CASE("launcher: a stop signal is passed on once to every rank, which all end with their own status",
          "[scale][launcher]") {
  // Each rank exits 7 on SIGTERM (as gpt_moe saves and exits 143); rank 1 takes
  // a while, and the launch waits for it instead of stopping it.
  LaunchOptions options;
  options.nproc = 2;
  options.command = {"/bin/sh", "-c",
                     "trap 'if [ \"$RANK\" = 1 ]; then sleep 0.3; fi; exit 7' TERM; while :; do sleep 0.02; done"};
  const auto start = std::chrono::steady_clock::now();
  options.stop_requested = [&] {
    return std::chrono::steady_clock::now() - start > std::chrono::milliseconds(300) ? SIGTERM : 0;
  };
  const LaunchResult result = launch_local_ranks(options);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  CHECK(result.exit_code == 7);
  CHECK_THAT(result.message, Catch::Matchers::Contains("passed signal 15"));
  CHECK_THAT(result.message, Catch::Matchers::Contains("rank 0 exited with status 7"));
  CHECK_THAT(result.message, Catch::Matchers::Contains("rank 1 exited with status 7"));
  CHECK(seconds < 5);
}
