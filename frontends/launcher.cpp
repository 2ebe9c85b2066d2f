// The local launcher (launcher.h): fork + exec per rank, a polling watch of
// the children, and the stop of every other rank at the first failure.
#include "frontends/launcher.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <algorithm>
#include <cstring>
#include <thread>

#include "ir/error.h"

namespace moejit {

namespace {

// How a child ended, in words ("exited with status 3", "was killed by signal 9 (Killed)").
std::string describe_status(int status) {
  if (WIFEXITED(status)) return fmt::format("exited with status {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status))
    return fmt::format("was killed by signal {} ({})", WTERMSIG(status), strsignal(WTERMSIG(status)));
  return fmt::format("ended with wait status {}", status);
}

bool failed(int status) { return !WIFEXITED(status) || WEXITSTATUS(status) != 0; }

// The r-th of the launcher's CUDA_VISIBLE_DEVICES ("2,3" -> rank 1 gets "3"), or r.
std::string visible_device(int rank) {
  const char* list = std::getenv("CUDA_VISIBLE_DEVICES");
  if (!list || !*list) return std::to_string(rank);
  std::string devices = list;
  std::size_t start = 0;
  for (int i = 0; i < rank; ++i) {
    start = devices.find(',', start);
    if (start == std::string::npos) return "none";  // fewer devices than ranks: this rank sees no GPU and says so
    ++start;
  }
  return devices.substr(start, devices.find(',', start) - start);
}

[[noreturn]] void exec_rank(const LaunchOptions& options, int rank, pid_t launcher) {
  // Die with the launcher: a rank must not outlive the process that watches it.
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  setpgid(0, 0);  // its own process group, so stopping the rank stops what it started
  if (getppid() != launcher) _exit(127);  // the launcher died before prctl took effect
  setenv("RANK", std::to_string(rank).c_str(), 1);
  setenv("LOCAL_RANK", std::to_string(rank).c_str(), 1);
  setenv("WORLD_SIZE", std::to_string(options.nproc).c_str(), 1);
  setenv("LOCAL_WORLD_SIZE", std::to_string(options.nproc).c_str(), 1);
  for (const auto& [name, value] : options.environment) setenv(name.c_str(), value.c_str(), 1);
  if (options.gpu_per_rank) setenv("CUDA_VISIBLE_DEVICES", visible_device(rank).c_str(), 1);
  std::vector<char*> argv;
  for (const std::string& arg : options.command) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  execvp(argv[0], argv.data());
  std::string why = fmt::format("launcher: rank {}: cannot run {}: {}\n", rank, options.command[0], std::strerror(errno));
  [[maybe_unused]] auto written = write(2, why.data(), why.size());
  _exit(127);
}

}  // namespace

LaunchResult launch_local_ranks(const LaunchOptions& options) {
  if (options.nproc < 1) throw Error(fmt::format("launcher: expected nproc >= 1, found {}", options.nproc));
  if (options.command.empty()) throw Error("launcher: expected a command to run, found none");
  const pid_t self = getpid();
  std::vector<pid_t> pids;
  for (int rank = 0; rank < options.nproc; ++rank) {
    pid_t pid = fork();
    if (pid == 0) exec_rank(options, rank, self);
    if (pid < 0) {
      const std::string why = std::strerror(errno);
      for (pid_t p : pids) kill(p, SIGKILL);
      for (pid_t p : pids) waitpid(p, nullptr, 0);
      throw Error(fmt::format("launcher: cannot start rank {}: fork failed: {}", rank, why));
    }
    setpgid(pid, pid);  // also here: whichever of parent and child runs first
    pids.push_back(pid);
  }

  // Poll every child (waitpid on each pid: other children of this process are not ours to reap).
  std::vector<bool> running(pids.size(), true);
  std::size_t alive = pids.size();
  LaunchResult result;
  int passed_on = 0;  // the stop signal passed on to the ranks, once
  std::vector<std::string> endings;
  auto reap = [&](bool block) {
    std::vector<std::pair<std::size_t, int>> failures;  // ended in this pass
    for (std::size_t r = 0; r < pids.size(); ++r) {
      if (!running[r]) continue;
      int status = 0;
      pid_t done = waitpid(pids[r], &status, block ? 0 : WNOHANG);
      if (done != pids[r]) continue;
      running[r] = false;
      --alive;
      if (passed_on != 0) {  // stopping on request: collect, do not stop the others
        const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        result.exit_code = std::max(result.exit_code, code);
        endings.push_back(fmt::format("rank {} {}", r, describe_status(status)));
        continue;
      }
      if (failed(status)) failures.emplace_back(r, status);
    }
    if (failures.empty() || result.exit_code != 0) return;
    // Ranks that ended together: the one killed by a signal is the cause (the
    // others saw it go and exited with an error), else the lowest rank.
    std::size_t cause = 0;
    for (std::size_t i = 0; i < failures.size(); ++i)
      if (WIFSIGNALED(failures[i].second)) {
        cause = i;
        break;
      }
    result.exit_code = 1;
    const auto [rank, status] = failures[cause];
    result.message = fmt::format("rank {} (pid {}) {}", rank, pids[rank], describe_status(status));
    for (std::size_t i = 0; i < failures.size(); ++i)
      if (i != cause)
        result.message += fmt::format("; rank {} (pid {}) {} at the same time", failures[i].first,
                                      pids[failures[i].first], describe_status(failures[i].second));
  };
  while (alive > 0 && (result.exit_code == 0 || passed_on != 0)) {
    if (passed_on == 0 && options.stop_requested) {
      if (int signal = options.stop_requested(); signal != 0) {
        passed_on = signal;
        for (std::size_t r = 0; r < pids.size(); ++r)
          if (running[r]) kill(-pids[r], signal);
      }
    }
    reap(false);
    if (alive > 0 && (result.exit_code == 0 || passed_on != 0))
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (passed_on != 0) {
    result.message = fmt::format("passed signal {} ({}) on to every rank; {}", passed_on, strsignal(passed_on),
                                 fmt::join(endings, ", "));
    return result;
  }
  if (alive == 0) return result;

  // A rank failed: stop the others, politely first.
  std::vector<std::string> stopped;
  for (std::size_t r = 0; r < pids.size(); ++r)
    if (running[r]) {
      kill(-pids[r], SIGTERM);
      stopped.push_back(std::to_string(r));
    }
  const auto deadline = std::chrono::steady_clock::now() + options.grace;
  while (alive > 0 && std::chrono::steady_clock::now() < deadline) {
    reap(false);
    if (alive > 0) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  bool forced = alive > 0;
  for (std::size_t r = 0; r < pids.size(); ++r)
    if (running[r]) kill(-pids[r], SIGKILL);
  reap(true);
  result.message += fmt::format("; stopped rank{} {}{}", stopped.size() == 1 ? "" : "s", fmt::join(stopped, ", "),
                                forced ? " (SIGKILL after the grace period)" : " (SIGTERM)");
  return result;
}

}  // namespace moejit
