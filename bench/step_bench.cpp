// step_bench: one training step of the GPT-MoE example's model (forward,
// backward, clipping, AdamW: the graph the trainer runs), eager launches vs
// one CUDA-graph replay; median milliseconds per step and tokens per second.
//
//   step_bench                                 # the example's default model
//   step_bench --set batch_size=16 --set block_size=32 --runs 100 --json step.json
//
// Method: before timing, one step on the device is compared with the CPU
// backend (loss, grad norm, every parameter and moment after AdamW; normalized
// error, tolerance 2e-3 as tests/cuda). Then `--rounds` rounds, each timing
// eager and then replay: `--warmup` untimed steps and `--runs` timed ones,
// each bracketed by the executor's CUDA events; "step" advances every run, as
// in training. After the rounds the eager and replayed executables, which ran
// the same steps on the same inputs, must hold bit-identical parameters.
// Without a GPU: "cuda: SKIPPED (why)" and the CPU backend's step is timed
// (host clock; no replay).
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstring>

#include "bench/bench_util.h"
#include "bench/gpt_step.h"
#include "frontends/gpt_moe.h"
#include "ir/error.h"
#include "runtime/cuda/cuda_backend.h"

namespace {

using namespace moejit;
using namespace moejit::bench;

struct Flags {
  std::string device = "auto";
  std::vector<std::string> overrides;
  int warmup = -1, runs = -1, rounds = 2;  // -1: per device (cuda 5/50, cpu 1/5)
  std::string json;
  std::uint64_t seed = 1;
};

int run(Flags flags) {
  std::string why;
  const std::string device = pick_device(flags.device, &why);
  const bool cuda = device == "cuda";
  if (!cuda) fmt::print("cuda: SKIPPED ({}); timing the CPU backend's step, no graph replay\n", why.empty() ? "--device cpu" : why);
  if (flags.warmup < 0) flags.warmup = cuda ? 5 : 1;
  if (flags.runs < 0) flags.runs = cuda ? 50 : 5;
  if (flags.runs < 1) throw Error(fmt::format("--runs: expected at least 1, found {}", flags.runs));

  GptMoeConfig config = example_config();
  apply_overrides(config, flags.overrides);
  const std::int64_t tokens = config.batch_size * config.block_size;
  const std::int64_t params = count_parameters(gpt_moe_param_specs(config));
  Graph graph = build_gpt_train_graph(config);
  const auto args = gpt_train_args(graph, config, flags.seed);
  fmt::print("device: {}\n", device_description(device));
  fmt::print("model: n_layer {} n_embd {} n_head {} block {} batch {} experts {} top_k {} d_expert {}: {} parameters, {} ops, "
             "{} tokens per step\n",
             config.n_layer, config.n_embd, config.n_head, config.block_size, config.batch_size, config.num_experts, config.top_k,
             config.d_expert, params, graph.ops().size(), tokens);

  auto backend = cuda ? make_cuda_backend() : make_cpu_backend();
  auto make = [&] {
    auto exe = backend->compile(graph);
    for (const auto& [name, value] : args) exe->set(name, value);
    return exe;
  };

  // ---- check: one step on the device against the CPU backend ----
  std::string check = "n/a (the device is the CPU reference)";
  bool passed = true;
  double worst = 0.0;
  if (cuda) {
    auto device_exe = make();
    auto cpu = make_cpu_backend();
    auto cpu_exe = cpu->compile(graph);
    for (const auto& [name, value] : args) cpu_exe->set(name, value);
    device_exe->run();
    cpu_exe->run();
    std::string worst_name;
    std::vector<std::string> names;
    for (const auto& out : graph.outputs())
      if (out.updates.empty()) names.push_back(out.name);
    for (const auto& [name, value] : args) names.push_back(name);  // parameters and moments after AdamW
    for (const auto& name : names) {
      HostTensor ref = cpu_exe->get(name);
      double err = normalized_error(device_exe->get(name), ref);
      if (!(err <= tolerance(ref.dtype(), 20.0))) passed = false;
      if (worst_name.empty() || !(err <= worst)) {
        worst = err;
        worst_name = name;
      }
    }
    check = fmt::format("one step vs cpu backend: worst normalized error {} ({}) over {} values, tolerance 2e-3: {}", fmt_num(worst),
                        worst_name, names.size(), passed ? "ok" : "FAILED");
  }
  fmt::print("check: {}\n", check);
  if (!passed) return 1;

  // ---- timing ----
  std::unique_ptr<Executable> eager = make(), replay;
  if (cuda) {
    replay = make();
    cuda_capture_graph(*replay);
  }
  std::vector<double> eager_ms, replay_ms;
  std::vector<double> eager_round, replay_round;
  int step = 0;
  auto time_mode = [&](Executable& exe, int& step_of_exe, std::vector<double>& all, std::vector<double>& rounds) {
    TimingOptions options{.warmup = flags.warmup, .runs = flags.runs, .before_run = [&](int) {
                            exe.set("step", HostTensor::scalar(static_cast<double>(++step_of_exe)));
                          }};
    Samples s = time_runs(exe, device, options);
    rounds.push_back(s.median());
    all.insert(all.end(), s.ms.begin(), s.ms.end());
  };
  int replay_step = 0;
  for (int r = 0; r < flags.rounds; ++r) {
    time_mode(*eager, step, eager_ms, eager_round);
    if (replay) time_mode(*replay, replay_step, replay_ms, replay_round);
  }
  std::string identical = "n/a";
  bool same = true;
  if (replay) {
    for (const auto& [name, value] : args) {
      HostTensor a = eager->get(name), b = replay->get(name);
      same &= std::memcmp(a.raw(), b.raw(), a.bytes()) == 0;
    }
    HostTensor la = eager->get("loss"), lb = replay->get("loss");
    same &= std::memcmp(la.raw(), lb.raw(), la.bytes()) == 0;
    identical = same ? "yes" : "NO";
  }

  // ---- report ----
  Samples eager_s = make_samples(eager_ms), replay_s = make_samples(replay_ms);
  auto round_text = [](const std::vector<double>& v) {
    std::string s;
    for (double x : v) s += (s.empty() ? "" : " / ") + fmt_num(x);
    return s;
  };
  Table table({"mode", "ms/step (median)", "p10-p90 ms", "round medians ms", "tokens/s"});
  auto add = [&](const char* mode, const Samples& s, const std::vector<double>& rounds) {
    table.row({mode, fmt_num(s.median()), fmt::format("{}-{}", fmt_num(s.quantile(0.1)), fmt_num(s.quantile(0.9))), round_text(rounds),
               fmt_num(static_cast<double>(tokens) / (s.median() * 1e-3))});
  };
  add(cuda ? "eager" : "cpu", eager_s, eager_round);
  if (replay) add("CUDA graph replay", replay_s, replay_round);

  JsonReport json("step_bench");
  json.meta("device", device_description(device));
  json.meta("backend", device);
  if (!why.empty()) json.meta("cuda_skipped", why);
  json.meta("tokens_per_step", tokens);
  json.meta("parameters", params);
  json.meta("ops", static_cast<std::int64_t>(graph.ops().size()));
  json.meta("warmup", static_cast<std::int64_t>(flags.warmup));
  json.meta("runs_per_round", static_cast<std::int64_t>(flags.runs));
  json.meta("rounds", static_cast<std::int64_t>(flags.rounds));
  json.meta("check", check);
  json.meta("check_error", worst);
  json.meta("replay_bit_identical", identical);
  for (const auto& [mode, s, rounds] : {std::tuple{cuda ? "eager" : "cpu", &eager_s, &eager_round}, std::tuple{"graph_replay", &replay_s, &replay_round}}) {
    if (s->ms.empty()) continue;
    Record rec{{"mode", std::string(mode)},
               {"median_ms", s->median()},
               {"p10_ms", s->quantile(0.1)},
               {"p90_ms", s->quantile(0.9)},
               {"min_ms", s->min()},
               {"max_ms", s->max()},
               {"tokens_per_s", static_cast<double>(tokens) / (s->median() * 1e-3)}};
    for (std::size_t i = 0; i < rounds->size(); ++i) rec.emplace_back(fmt::format("round{}_median_ms", i + 1), (*rounds)[i]);
    json.add("results", std::move(rec));
  }
  if (!flags.json.empty()) json.write(flags.json);

  fmt::print("\n==== step_bench: {} backend, {} round(s) of {} warm-up + {} timed steps per mode, {}\n{}", device, flags.rounds, flags.warmup,
             flags.runs, cuda ? "CUDA events around run()" : "host clock around run()", table.str());
  if (replay) fmt::print("eager and replayed parameters after the same steps bit-identical: {}\n", identical);
  fmt::print("step-bench: tokens_per_step={} eager_ms={:.3f} graph_replay_ms={} eager_tok_s={:.0f} replay_tok_s={}\n", tokens,
             eager_s.median(), replay ? fmt::format("{:.3f}", replay_s.median()) : "n/a",
             static_cast<double>(tokens) / (eager_s.median() * 1e-3),
             replay ? fmt::format("{:.0f}", static_cast<double>(tokens) / (replay_s.median() * 1e-3)) : "n/a");
  if (!flags.json.empty()) fmt::print("wrote {}\n", flags.json);
  return same ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  Flags flags;
  CLI::App app{"step_bench: the GPT-MoE example's training step, eager vs CUDA-graph replay"};
  app.add_option("--device", flags.device, "auto | cuda | cpu (default auto)");
  app.add_option("--set", flags.overrides, "key=value config override (frontends/config.h keys; repeatable)");
  app.add_option("--warmup", flags.warmup, "untimed steps per mode and round (default 5 on cuda, 1 on cpu)");
  app.add_option("--runs", flags.runs, "timed steps per mode and round (default 50 on cuda, 5 on cpu)");
  app.add_option("--rounds", flags.rounds, "rounds of (eager, replay) timing (default 2)")->check(CLI::PositiveNumber);
  app.add_option("--json", flags.json, "write every number to this JSON file");
  app.add_option("--seed", flags.seed, "seed of the parameters and the batch (default 1)");
  CLI11_PARSE(app, argc, argv);
  try {
    return run(flags);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "step_bench: %s\n", e.what());
    return 1;
  }
}
