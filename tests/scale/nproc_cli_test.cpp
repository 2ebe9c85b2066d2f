// `gpt_moe train --nproc N` as a user runs it (the built binary, real
// processes, the CPU backend): it trains and ends like one process, and a
// rank that dies makes every rank exit within seconds with a message naming
// it, whether the local launcher watches the ranks or another launcher
// (torchrun, srun: RANK/WORLD_SIZE in the environment) started them; the
// last checkpoint stays loadable. SIGINT to the launcher stops every rank at
// the same step, saved.
#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <thread>

#include "frontends/gpt_checkpoint.h"
#include "ir/error.h"
#include "scale/socket_world.h"

using namespace moejit;
namespace fs = std::filesystem;
using Catch::Matchers::Contains;
using Clock = std::chrono::steady_clock;

namespace {

const fs::path kBinary = fs::path(MOEJIT_BINARY_DIR) / "bin" / "gpt_moe";

fs::path fresh_dir(const std::string& name) {
  fs::path dir = fs::path(MOEJIT_BINARY_DIR) / "tests_tmp" / "scale" / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// A tiny model the CPU trains in milliseconds per step.
std::vector<std::string> tiny_train_args(const fs::path& out_dir, std::int64_t max_iters) {
  return {"train", "--device", "cpu", "--out_dir", out_dir.string(), "--no_report", "--num_samples", "0",
          "--corpus_bytes", "6000", "--n_layer", "2", "--n_embd", "16", "--n_head", "2", "--block_size", "8",
          "--batch_size", "8", "--num_experts", "4", "--d_expert", "16", "--aux_loss_coeff", "0",
          "--warmup_iters", "2", "--max_iters", std::to_string(max_iters), "--eval_iters", "2",
          "--eval_interval", std::to_string(std::min<std::int64_t>(max_iters, 1000)), "--log_interval", "1000"};
}

// Starts the binary with `args`, stdout and stderr into files, extra environment variables.
pid_t spawn(const std::vector<std::string>& args, const fs::path& log_prefix,
            const std::vector<std::pair<std::string, std::string>>& env = {}) {
  const std::string out = log_prefix.string() + ".out", err = log_prefix.string() + ".err";
  std::fflush(stdout);  // else the child's freopen writes the test's buffered output again
  std::fflush(stderr);
  pid_t pid = fork();
  if (pid == 0) {
    if (!freopen(out.c_str(), "w", stdout) || !freopen(err.c_str(), "w", stderr)) _exit(126);
    for (const auto& [name, value] : env) setenv(name.c_str(), value.c_str(), 1);
    std::vector<char*> argv{const_cast<char*>(kBinary.c_str())};
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  return pid;
}

// Waits up to `limit` for `pid`; its wait status, or -1 (then it is killed).
int wait_at_most(pid_t pid, std::chrono::seconds limit) {
  const auto deadline = Clock::now() + limit;
  int status = 0;
  while (Clock::now() < deadline) {
    if (waitpid(pid, &status, WNOHANG) == pid) return status;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  kill(pid, SIGKILL);
  waitpid(pid, &status, 0);
  return -1;
}

bool wait_for_file(const fs::path& path, std::chrono::seconds limit) {
  const auto deadline = Clock::now() + limit;
  while (Clock::now() < deadline) {
    if (fs::exists(path)) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

// The child of `parent` whose environment has RANK=<rank> (-1: none).
pid_t rank_child(pid_t parent, int rank) {
  for (const fs::directory_entry& entry : fs::directory_iterator("/proc")) {
    const std::string name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    const std::string stat = read_text(entry.path() / "stat");
    const std::size_t close = stat.rfind(')');
    if (close == std::string::npos) continue;
    int ppid = -1;
    char state = 0;
    if (std::sscanf(stat.c_str() + close + 1, " %c %d", &state, &ppid) != 2 || ppid != parent) continue;
    const std::string environ = read_text(entry.path() / "environ");
    if (environ.find(fmt::format("RANK={}", rank) + '\0') == 0 ||
        environ.find(std::string(1, '\0') + fmt::format("RANK={}", rank) + '\0') != std::string::npos)
      return static_cast<pid_t>(std::stoi(name));
  }
  return -1;
}

double final_val_loss(const std::string& out) {
  std::smatch m;
  const std::regex line("final val loss \\(full precision[^:]*: ([0-9.eE+-]+)");
  if (!std::regex_search(out, m, line)) return NAN;
  return std::stod(m[1]);
}

bool have_binary() {
  if (fs::exists(kBinary)) return true;
  WARN("SKIPPED: " << kBinary << " is not built (ninja gpt_moe)");
  return false;
}

}  // namespace

TEST_CASE("gpt_moe train --nproc 2 trains like one process; rank 0 alone prints and saves", "[scale][nproc][cli]") {
  if (!have_binary()) return;
  const fs::path one = fresh_dir("cli_nproc1"), two = fresh_dir("cli_nproc2");
  const int status1 = wait_at_most(spawn(tiny_train_args(one, 6), one / "log"), std::chrono::seconds(120));
  const int status2 = wait_at_most(spawn([&] {
                                     auto a = tiny_train_args(two, 6);
                                     a.insert(a.end(), {"--nproc", "2"});
                                     return a;
                                   }(),
                                         two / "log"),
                                   std::chrono::seconds(120));
  const std::string out1 = read_text(one / "log.out"), out2 = read_text(two / "log.out");
  INFO(read_text(two / "log.err"));
  REQUIRE(status1 == 0);
  REQUIRE(status2 == 0);
  CHECK_THAT(out2, Contains("rank 0 of 2"));
  // One copy of every line: the other rank prints nothing.
  CHECK(std::count(out2.begin(), out2.end(), '\n') == std::count(out1.begin(), out1.end(), '\n'));
  const double loss1 = final_val_loss(out1), loss2 = final_val_loss(out2);
  REQUIRE(std::isfinite(loss1));
  CHECK(loss2 == Approx(loss1).epsilon(1e-4));  // tolerance: tests/scale/nproc_train_test.cpp
  const GptMoeCheckpoint ckpt = load_gpt_checkpoint((two / "ckpt.safetensors").string());
  CHECK(ckpt.metadata.at("step") == "6");
  // And it resumes on 1 rank (the file is the one-process format).
  const int status3 = wait_at_most(spawn({"train", "--resume", "--device", "cpu", "--out_dir", two.string(),
                                          "--max_iters", "8", "--no_report", "--num_samples", "0"},
                                         two / "resume"),
                                   std::chrono::seconds(120));
  INFO(read_text(two / "resume.err"));
  CHECK(status3 == 0);
  CHECK(load_gpt_checkpoint((two / "ckpt.safetensors").string()).metadata.at("step") == "8");
}

TEST_CASE("gpt_moe train --nproc 2: a rank killed mid-run stops every rank within seconds, last checkpoint intact",
          "[scale][nproc][cli][failure]") {
  if (!have_binary()) return;
  const fs::path dir = fresh_dir("cli_kill");
  auto args = tiny_train_args(dir, 1000000);
  args.insert(args.end(), {"--nproc", "2", "--checkpoint_interval", "5"});
  const pid_t launcher = spawn(args, dir / "log");
  REQUIRE(wait_for_file(dir / "ckpt.safetensors", std::chrono::seconds(60)));
  const pid_t rank1 = rank_child(launcher, 1);
  REQUIRE(rank1 > 0);
  REQUIRE(kill(rank1, SIGKILL) == 0);
  const auto killed = Clock::now();
  const int status = wait_at_most(launcher, std::chrono::seconds(30));
  const double seconds = std::chrono::duration<double>(Clock::now() - killed).count();
  const std::string err = read_text(dir / "log.err");
  INFO(err);
  REQUIRE(status != -1);
  CHECK(seconds < 10);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 1);
  CHECK_THAT(err, Contains(fmt::format("rank 1 (pid {}) was killed by signal 9", rank1)));
  // Rank 0 ended too: stopped by the launcher, or on its own when it saw rank 1's socket close.
  const bool rank0_ended = err.find("stopped rank 0") != std::string::npos ||
                           err.find("rank 0: error: ") != std::string::npos;
  CHECK(rank0_ended);
  // The last checkpoint loads (checksums, every tensor) at a step it saved.
  const GptMoeCheckpoint ckpt = load_gpt_checkpoint((dir / "ckpt.safetensors").string());
  CHECK(std::stoll(ckpt.metadata.at("step")) % 5 == 0);
}

TEST_CASE("ranks started by another launcher (RANK, WORLD_SIZE): a killed rank ends the other by itself",
          "[scale][nproc][cli][failure]") {
  if (!have_binary()) return;
  const fs::path dir = fresh_dir("cli_kill_env");
  auto args = tiny_train_args(dir, 1000000);
  args.insert(args.end(), {"--checkpoint_interval", "5"});
  const std::string rendezvous = "unix:" + scale_test::fresh_socket_path();
  std::vector<pid_t> ranks;
  for (int r = 0; r < 2; ++r)
    ranks.push_back(spawn(args, dir / fmt::format("rank{}", r),
                          {{"RANK", std::to_string(r)}, {"WORLD_SIZE", "2"}, {"MOEJIT_RENDEZVOUS", rendezvous}}));
  REQUIRE(wait_for_file(dir / "ckpt.safetensors", std::chrono::seconds(60)));
  REQUIRE(kill(ranks[1], SIGKILL) == 0);
  waitpid(ranks[1], nullptr, 0);
  const auto killed = Clock::now();
  const int status = wait_at_most(ranks[0], std::chrono::seconds(30));  // no launcher watches it
  const double seconds = std::chrono::duration<double>(Clock::now() - killed).count();
  const std::string err = read_text(dir / "rank0.err");
  INFO(err);
  REQUIRE(status != -1);
  CHECK(seconds < 10);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 1);
  CHECK_THAT(err, Contains("gpt_moe: rank 0: error: "));
  CHECK_THAT(err, Contains("communicator: rank 1 closed its connection during"));
  CHECK_NOTHROW(load_gpt_checkpoint((dir / "ckpt.safetensors").string()));
}

TEST_CASE("gpt_moe train --nproc 2: SIGINT to the launcher stops both ranks at one step, saved", "[scale][nproc][cli]") {
  if (!have_binary()) return;
  const fs::path dir = fresh_dir("cli_sigint");
  auto args = tiny_train_args(dir, 1000000);
  args.insert(args.end(), {"--nproc", "2", "--checkpoint_interval", "5"});
  const pid_t launcher = spawn(args, dir / "log");
  REQUIRE(wait_for_file(dir / "ckpt.safetensors", std::chrono::seconds(60)));
  REQUIRE(kill(launcher, SIGINT) == 0);
  const int status = wait_at_most(launcher, std::chrono::seconds(30));
  const std::string err = read_text(dir / "log.err");
  INFO(err);
  REQUIRE(status != -1);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 130);
  CHECK_THAT(err, Contains("passed signal 2"));
  CHECK_THAT(err, Contains("rank 0 exited with status 130"));
  CHECK_THAT(err, Contains("rank 1 exited with status 130"));
  std::smatch m;
  REQUIRE(std::regex_search(err, m, std::regex("SIGINT at step ([0-9]+): saved")));
  CHECK(load_gpt_checkpoint((dir / "ckpt.safetensors").string()).metadata.at("step") == m[1].str());
}
