// Starting the ranks of a multi-process run on this host (`gpt_moe train
// --nproc N`): N copies of a command, each with the environment variables
// torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE), watched
// until all end. The first rank that fails (a non-zero exit, or killed by a
// signal) stops the rest: SIGTERM, then SIGKILL after a grace period, so no
// rank waits forever in a collective for a peer that is gone. Each rank runs
// in its own process group (a stop reaches what it started) and gets SIGTERM
// when the launcher itself dies (PR_SET_PDEATHSIG).
#pragma once
#include <chrono>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace moejit {

struct LaunchOptions {
  int nproc = 1;
  std::vector<std::string> command;  // program (searched in PATH) and its arguments
  // Extra variables for every rank (MOEJIT_NCCL_ID_FILE, ...).
  std::vector<std::pair<std::string, std::string>> environment;
  // Give rank r its own GPU: CUDA_VISIBLE_DEVICES = the r-th entry of the
  // launcher's CUDA_VISIBLE_DEVICES list, or r when it is unset.
  bool gpu_per_rank = false;
  // How long a rank stopped with SIGTERM has before SIGKILL.
  std::chrono::milliseconds grace{5000};
  // Polled with the children (every 20 ms): a signal number != 0 is sent
  // once to every running rank (the launcher's own SIGINT/SIGTERM, passed on
  // so that the ranks stop together at a step boundary and save). From then
  // on a rank that exits non-zero does not stop the others: the launch waits
  // for every rank, and its exit code is the largest of theirs.
  std::function<int()> stop_requested;
};

struct LaunchResult {
  int exit_code = 0;    // 0 when every rank exited 0; else 1 (after a passed-on stop signal: the ranks' largest)
  std::string message;  // empty on success; else which rank failed first, how, and what was stopped
};

// Runs the ranks and waits for them. Throws moejit::Error when nproc < 1,
// the command is empty or a process cannot be started.
LaunchResult launch_local_ranks(const LaunchOptions& options);

}  // namespace moejit
