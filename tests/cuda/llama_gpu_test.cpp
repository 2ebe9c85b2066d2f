// The Llama-family graphs (RoPE from slice/concat, grouped-query attention
// with broadcast kv heads, SwiGLU, Mixtral MoE) on the CUDA backend against
// the CPU reference: logits, loss and every gradient. Without a GPU each
// test prints "SKIPPED: no CUDA device (<why>)".
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include "cuda/cuda_test_util.h"
#include "frontends/hf_checkpoint.h"
#include "frontends/llama.h"
#include "passes/autodiff.h"
#include "runtime/backend.h"
#include "runtime/cuda/cuda_backend.h"

using namespace moejit;

namespace {

LlamaConfig gpu_llama(bool moe) {
  LlamaConfig c;
  c.architecture = moe ? "MixtralForCausalLM" : "LlamaForCausalLM";
  c.vocab_size = 50;
  c.hidden_size = 32;
  c.intermediate_size = 40;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.max_position_embeddings = 64;
  c.tie_word_embeddings = !moe;
  c.rope = {.theta = 10000.0, .scaling = "llama3", .factor = 8, .low_freq_factor = 1, .high_freq_factor = 4,
            .original_max_position_embeddings = 32};
  if (moe) c.num_local_experts = 4;
  return c;
}

}  // namespace

TEST_CASE("gpu: Llama and Mixtral logits, loss and gradients match the CPU", "[cuda][gpu]") {
  std::string why;
  if (!cuda_available(&why)) {
    WARN("SKIPPED: no CUDA device (" << why << ")");
    return;
  }
  for (bool moe : {false, true}) {
    INFO((moe ? "Mixtral" : "Llama"));
    LlamaConfig c = gpu_llama(moe);
    Graph graph("llama_train");
    LlamaGraph model = build_llama(graph, c, {.batch = 2, .seq_len = 24, .with_loss = true, .output_logits = true});
    std::vector<std::string> names;
    for (const ParamSpec& s : model.params) names.push_back(s.name);
    append_backward(graph, {.loss = "loss", .wrt = names});
    auto values = init_parameters(model.params, 3);
    HostTensor idx = cuda_test::random_args(graph, 7, c.vocab_size).at("idx");
    HostTensor targets = cuda_test::random_args(graph, 8, c.vocab_size).at("targets");
    auto cpu = make_cpu_backend();
    auto cuda = make_cuda_backend();
    auto cpu_exe = cpu->compile(graph);
    auto gpu_exe = cuda->compile(graph);
    for (auto* exe : {cpu_exe.get(), gpu_exe.get()}) {
      for (const auto& [name, value] : values) exe->set(name, value);
      bind_rope_tables(*exe, c.rope);
      exe->set("idx", idx);
      exe->set("targets", targets);
      exe->run();
    }
    int grads = 0;
    for (const auto& out : graph.outputs()) {
      HostTensor want = cpu_exe->get(out.name), got = gpu_exe->get(out.name);
      double err = cuda_test::normalized_error(got, want);
      double tol = out.name.rfind("grad.", 0) == 0 ? 2e-3 : 1e-4;
      grads += out.name.rfind("grad.", 0) == 0;
      INFO(fmt::format("{}: normalized error {:.3g} (tolerance {:.3g})", out.name, err, tol));
      CHECK(err <= tol);
    }
    CHECK(grads == static_cast<int>(names.size()));
  }
}
