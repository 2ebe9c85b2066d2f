// shard_check: the multi-GPU counterpart of tests/scale/shard_experts_test.cpp.
//
//   shard_check --nproc 2            launch 2 ranks on this host (one GPU each)
//   shard_check                      one rank, one GPU (world_size 1: the
//                                    unsharded graph on CUDA vs the CPU)
//
// Each rank builds the small MoE model of shard_model.h, shards it
// (shard-experts, autodiff, all-reduce-grads for its rank), runs one training
// step on the CUDA backend with the comm ops over NCCL, and compares its loss
// and gradients with the unsharded model computed on the CPU (the mean over
// the N batches). Then it times --steps more steps. --kill-rank R makes rank R
// SIGKILL itself after its first step, to show that every other rank exits
// within seconds (the launcher stops them; NCCL's errors abort them).
// Exit status 0 when every rank matched the reference.
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "examples/shard_check/shard_model.h"
#include "frontends/launcher.h"
#include "ir/error.h"
#include "runtime/cuda/cuda_backend.h"

using namespace moejit;
namespace sm = moejit::shard_model;

namespace {

struct Flags {
  int nproc = 1;
  sm::Sizes sizes;
  int steps = 20;
  int kill_rank = -1;
  bool reference = true;
  double tolerance = 2e-3;
};

int env_int(const char* name, int fallback) {
  const char* text = std::getenv(name);
  return text && *text ? std::atoi(text) : fallback;
}

int run_rank(const Flags& f, int rank, int world_size) {
  if (f.sizes.experts % world_size != 0)
    throw Error(fmt::format("--experts {}: expected a multiple of the {} ranks", f.sizes.experts, world_size));
  const sm::Problem problem = sm::make_problem(f.sizes, world_size, 2026);
  sm::Reference reference;
  if (f.reference) {
    auto cpu = make_cpu_backend();
    reference = sm::compute_reference(problem, *cpu);
  }
  Graph graph = problem.model;
  run_pipeline(graph, sm::sharded_pipeline(rank, world_size));
  auto cuda = make_cuda_backend();
  auto exe = cuda->compile(graph);
  sm::bind_rank(*exe, problem, rank);
  exe->run();
  const double loss = exe->get("loss").get(0);

  bool pass = true;
  std::string report = fmt::format("rank {}/{}: loss {:.6f}", rank, world_size, loss);
  if (f.reference) {
    const std::int64_t local = f.sizes.experts / world_size;
    double worst = std::abs(loss - reference.loss) / (1e-3 + std::abs(reference.loss));
    for (const std::string& name : sm::param_names()) {
      const HostTensor& full = reference.grads.at(name);
      HostTensor want = sm::is_expert(name) ? sm::rows(full, rank * local, local) : full;
      worst = std::max(worst, sm::worst_relative_difference(exe->get("grad." + name), want, 1e-3));
    }
    pass = worst <= f.tolerance;
    report += fmt::format(" (reference {:.6f}), worst relative difference of loss and gradients {:.2e} (tolerance {:.0e}), "
                          "rows to other ranks' experts {}: {}",
                          reference.loss, worst, f.tolerance, reference.rows_to_other_ranks, pass ? "PASS" : "FAIL");
  }
  std::fprintf(stdout, "shard_check %s\n", report.c_str());
  std::fflush(stdout);
  if (rank == f.kill_rank) {
    std::fprintf(stderr, "shard_check rank %d: --kill-rank: killing itself with SIGKILL\n", rank);
    raise(SIGKILL);
  }
  if (f.steps > 0) {
    auto start = std::chrono::steady_clock::now();
    for (int s = 0; s < f.steps; ++s) exe->run();
    (void)exe->get("loss");  // the last step has finished
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count() / f.steps;
    std::fprintf(stdout, "shard_check rank %d/%d: %d steps, %.3f ms/step, %.0f tokens/s over all ranks\n", rank, world_size,
                 f.steps, ms, static_cast<double>(world_size * f.sizes.tokens) / (ms / 1000.0));
  }
  return pass ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  Flags f;
  CLI::App app("shard_check: expert + data parallelism over NCCL against the unsharded model");
  app.add_option("--nproc", f.nproc, "ranks to launch on this host, one GPU each (default 1)")->check(CLI::PositiveNumber);
  app.add_option("--experts", f.sizes.experts, "experts E, a multiple of the ranks (default 4)")->check(CLI::PositiveNumber);
  app.add_option("--tokens", f.sizes.tokens, "tokens per rank T (default 12)")->check(CLI::PositiveNumber);
  app.add_option("--d_model", f.sizes.d_model, "model width D (default 6)")->check(CLI::PositiveNumber);
  app.add_option("--hidden", f.sizes.hidden, "expert hidden width F (default 5)")->check(CLI::PositiveNumber);
  app.add_option("--steps", f.steps, "timed steps after the check (default 20)")->check(CLI::NonNegativeNumber);
  app.add_option("--kill-rank", f.kill_rank, "this rank SIGKILLs itself after its first step (failure drill)");
  app.add_option("--tolerance", f.tolerance, "largest relative difference that passes (default 2e-3)");
  app.add_flag("!--no-reference", f.reference, "skip the CPU reference (for timing at large sizes)");
  CLI11_PARSE(app, argc, argv);
  try {
    if (std::getenv("WORLD_SIZE")) return run_rank(f, env_int("RANK", 0), env_int("WORLD_SIZE", 1));
    if (f.nproc == 1) return run_rank(f, 0, 1);
    // The launcher: the same command line once per rank, with RANK/WORLD_SIZE set.
    const std::string id_file =
        (std::filesystem::temp_directory_path() / fmt::format("shard_check_nccl_id.{}", getpid())).string();
    LaunchOptions options;
    options.nproc = f.nproc;
    options.command = {"/proc/self/exe"};
    for (int i = 1; i < argc; ++i) options.command.push_back(argv[i]);
    options.environment = {{"MOEJIT_NCCL_ID_FILE", id_file}};
    options.gpu_per_rank = true;
    LaunchResult result = launch_local_ranks(options);
    std::filesystem::remove(id_file);
    if (result.exit_code != 0) std::fprintf(stderr, "shard_check: %s\n", result.message.c_str());
    else std::fprintf(stdout, "shard_check: all %d ranks passed\n", f.nproc);
    return result.exit_code;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "shard_check: %s\n", e.what());
    return 1;
  }
}
