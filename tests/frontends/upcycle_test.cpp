// Upcycling: right after upcycle (no noise, normalized top-k) the MoE model's
// logits equal the dense model's within f32 rounding, for GPT-MoE (gelu and
// swiglu) and Llama, with whole and fine-grained experts; a few training
// steps make the copies differ; bad options are clear errors.
#include <catch2/catch.hpp>

#include <random>

#include "runtime/tensor_compare.h"
#include "frontends/generate.h"
#include "frontends/gpt_moe.h"
#include "frontends/hf_checkpoint.h"
#include "frontends/hf_trainer.h"
#include "frontends/trainer.h"
#include "frontends/upcycle.h"
#include "hf_reference.h"
#include "ir/error.h"
#include "runtime/backend.h"
#include "tiny_config.h"

using namespace moejit;

namespace {

GptMoeConfig dense_config(const std::string& activation) {
  GptMoeConfig c = testing::tiny_training_config();
  c.moe_every = 0;
  c.ffn_hidden_size = 32;
  c.activation = activation;
  c.init_std = 0.2;  // logits far from uniform, so a wrong expert shows
  return c;
}

HostTensor random_ids(std::int64_t B, std::int64_t T, std::int64_t vocab, unsigned seed) {
  std::mt19937 rng(seed);
  std::vector<std::int32_t> ids(static_cast<std::size_t>(B * T));
  for (auto& id : ids) id = static_cast<std::int32_t>(rng() % static_cast<unsigned>(vocab));
  return HostTensor::from_ints({B, T}, ids);
}

// max |expert a - expert b| of an [E, ...] tensor.
double expert_difference(const HostTensor& w, std::int64_t a, std::int64_t b) {
  const std::int64_t per = w.numel() / w.shape()[0];
  double diff = 0;
  for (std::int64_t i = 0; i < per; ++i) diff = std::max(diff, std::abs(w.get(a * per + i) - w.get(b * per + i)));
  return diff;
}

}  // namespace

TEST_CASE("an upcycled GPT-MoE computes the dense model's logits", "[upcycle]") {
  for (const char* activation : {"gelu", "swiglu"}) {
    for (std::int64_t granularity : {1, 2, 4}) {
      GptMoeConfig dense = dense_config(activation);
      auto params = init_parameters(gpt_moe_param_specs(dense), 3);
      UpcycledGptMoe moe = upcycle_gpt_moe(dense, params,
                                           {.num_copies = 4, .top_k = 2, .granularity = granularity, .seed = 5});
      CHECK(moe.config.num_experts == 4 * granularity);
      CHECK(moe.config.top_k == 2 * granularity);
      CHECK(moe.config.d_expert == 32 / granularity);
      CHECK(moe.config.num_moe_layers() == dense.n_layer);
      HostTensor idx = random_ids(2, dense.block_size, dense.vocab_size, 9);
      double err = max_relative_difference(gpt_moe_logits(moe.config, moe.params, idx), gpt_moe_logits(dense, params, idx));
      INFO(activation << " granularity " << granularity << ": max relative logit difference " << err);
      CHECK(err < 1e-5);
    }
  }
}

TEST_CASE("upcycling a model with shared layers (group_size) and RoPE keeps its logits", "[upcycle]") {
  GptMoeConfig dense = dense_config("swiglu");
  dense.n_layer = 4;
  dense.group_size = 2;  // layers 2, 3 repeat layers 0, 1
  dense.position_embedding = "rope";
  auto params = init_parameters(gpt_moe_param_specs(dense), 8);
  UpcycledGptMoe moe = upcycle_gpt_moe(dense, params, {.num_copies = 3, .top_k = 2, .granularity = 2, .seed = 2});
  CHECK(moe.params.count("h.1.moe.experts.w_up") == 1);
  CHECK(moe.params.count("h.2.moe.experts.w_up") == 0);
  HostTensor idx = random_ids(2, dense.block_size, dense.vocab_size, 4);
  double err = max_relative_difference(gpt_moe_logits(moe.config, moe.params, idx), gpt_moe_logits(dense, params, idx));
  INFO("max relative logit difference " << err);
  CHECK(err < 1e-5);
}

TEST_CASE("noise makes the copies differ at once, training separates them anyway", "[upcycle]") {
  GptMoeConfig dense = dense_config("gelu");
  auto params = init_parameters(gpt_moe_param_specs(dense), 3);
  UpcycledGptMoe noisy = upcycle_gpt_moe(dense, params, {.num_copies = 4, .top_k = 2, .noise_std = 0.05, .seed = 5});
  CHECK(expert_difference(noisy.params.at("h.0.moe.experts.w_up"), 0, 1) > 1e-3);
  HostTensor idx = random_ids(2, dense.block_size, dense.vocab_size, 9);
  double err = max_relative_difference(gpt_moe_logits(noisy.config, noisy.params, idx), gpt_moe_logits(dense, params, idx));
  CHECK(err > 1e-5);  // not the dense model any more ...
  CHECK(err < 0.2);   // ... but close to it

  UpcycledGptMoe moe = upcycle_gpt_moe(dense, params, {.num_copies = 4, .top_k = 2, .seed = 5});
  const HostTensor& before = moe.params.at("h.1.moe.experts.w_down");
  for (std::int64_t e = 1; e < 4; ++e) CHECK(expert_difference(before, 0, e) == 0.0);
  moe.config.aux_loss_coeff = 0.01;
  auto cpu = make_cpu_backend();
  GptMoeTrainer trainer(moe.config, *cpu, moe.params);
  std::vector<std::int32_t> tokens(400);
  std::mt19937 rng(1);
  for (auto& t : tokens) t = static_cast<std::int32_t>(rng() % 12);
  BatchSampler batches(tokens, moe.config.batch_size, moe.config.block_size, 2);
  for (std::int64_t iter = 0; iter < 6; ++iter) trainer.step(batches.next(), iter);
  auto trained = trainer.parameters();
  for (const char* name : {"h.0.moe.experts.w_up", "h.1.moe.experts.w_down"}) {
    const HostTensor& w = trained.at(name);
    for (std::int64_t a = 0; a < 4; ++a)
      for (std::int64_t b = a + 1; b < 4; ++b) {
        INFO(name << " experts " << a << " and " << b);
        CHECK(expert_difference(w, a, b) > 1e-6);
      }
  }
}

TEST_CASE("an upcycled Llama computes the dense logits and exports as a Mixtral", "[upcycle]") {
  LlamaConfig dense;
  dense.vocab_size = 30;
  dense.hidden_size = 16;
  dense.intermediate_size = 24;
  dense.num_hidden_layers = 2;
  dense.num_attention_heads = 4;
  dense.num_key_value_heads = 2;
  dense.max_position_embeddings = 16;
  dense.tie_word_embeddings = true;
  auto params = params_from_hf_tensors(dense, hf_test::random_hf_tensors(dense, 4), "test");
  auto cpu = make_cpu_backend();
  HostTensor ids = random_ids(1, 10, dense.vocab_size, 3);
  HostTensor want = llama_logits(*cpu, dense, params, ids);
  for (std::int64_t granularity : {1, 3}) {
    UpcycledLlama moe = upcycle_llama(dense, params, {.num_copies = 3, .top_k = 2, .granularity = granularity});
    CHECK(moe.config.architecture == "MixtralForCausalLM");
    CHECK(moe.config.num_local_experts == 3 * granularity);
    double err = max_relative_difference(llama_logits(*cpu, moe.config, moe.params, ids), want);
    INFO("granularity " << granularity << ": " << err);
    CHECK(err < 1e-5);
    hf_test::fs::path dir = hf_test::temp_dir(fmt::format("upcycle_export_{}", granularity));
    export_mixtral(dir.string(), moe.config, moe.params);
    HfModel back = load_hf_model(dir.string());
    CHECK(max_relative_difference(llama_logits(*cpu, back.config, back.params, ids), want) < 1e-5);
    // Tied, and the head written out too (for readers that do not tie).
    Checkpoint file = load_safetensors((dir / "model.safetensors").string());
    CHECK(file.tensors.at("lm_head.weight").to_doubles() == params.at("model.embed_tokens.weight").to_doubles());
  }
}

TEST_CASE("upcycling refuses what it cannot copy exactly", "[upcycle]") {
  auto error_of = [](auto fn) {
    try {
      fn();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  GptMoeConfig dense = dense_config("gelu");
  auto params = init_parameters(gpt_moe_param_specs(dense), 3);
  CHECK(error_of([&] { upcycle_gpt_moe(dense, params, {.granularity = 5}); }).find("granularity: expected a divisor of "
                                                                                   "the MLP width 32, found 5") !=
        std::string::npos);
  CHECK(error_of([&] { upcycle_gpt_moe(dense, params, {.num_copies = 2, .top_k = 3}); }).find("top_k") !=
        std::string::npos);
  GptMoeConfig with_bias = dense;
  with_bias.bias = true;
  CHECK(error_of([&] {
          upcycle_gpt_moe(with_bias, init_parameters(gpt_moe_param_specs(with_bias), 1), {});
        }).find("bias: expected false") != std::string::npos);
  GptMoeConfig peri = dense;
  peri.layer_norm = "peri";
  CHECK(error_of([&] { upcycle_gpt_moe(peri, init_parameters(gpt_moe_param_specs(peri), 1), {}); })
            .find("layer_norm: expected pre") != std::string::npos);
  GptMoeConfig moe = dense;
  moe.moe_every = 1;
  CHECK(error_of([&] { upcycle_gpt_moe(moe, init_parameters(gpt_moe_param_specs(moe), 1), {}); })
            .find("expected a dense model") != std::string::npos);
}

TEST_CASE("an upcycled Llama trains: the loss falls and the expert copies separate", "[upcycle]") {
  LlamaConfig dense;
  dense.vocab_size = 20;
  dense.hidden_size = 16;
  dense.intermediate_size = 24;
  dense.num_hidden_layers = 2;
  dense.num_attention_heads = 4;
  dense.num_key_value_heads = 2;
  dense.max_position_embeddings = 16;
  auto params = params_from_hf_tensors(dense, hf_test::random_hf_tensors(dense, 6), "test");
  UpcycledLlama moe = upcycle_llama(dense, params, {.num_copies = 4, .top_k = 2, .router_std = 0.2});
  for (std::int64_t e = 1; e < 4; ++e)
    CHECK(expert_difference(moe.params.at("model.layers.0.block_sparse_moe.experts.w_up"), 0, e) == 0.0);
  // A text with structure: "0 1 2 ... 9" counting, repeated.
  std::vector<std::int32_t> tokens;
  for (int i = 0; i < 600; ++i) tokens.push_back(i % 10 + (i / 10) % 2 * 10);
  auto cpu = make_cpu_backend();
  LlamaTrainer trainer(moe.config, *cpu, moe.params, {.batch = 4, .seq_len = 12});
  BatchSampler batches(tokens, 4, 12, 3);
  std::vector<double> losses;
  for (std::int64_t iter = 0; iter < 30; ++iter) losses.push_back(trainer.step(batches.next(), iter, 1e-2).lm_loss);
  INFO("first loss " << losses.front() << ", last " << losses.back());
  CHECK(losses.back() < 0.5 * losses.front());
  auto trained = trainer.parameters();
  const HostTensor& w = trained.at("model.layers.1.block_sparse_moe.experts.w_down");
  for (std::int64_t a = 0; a < 4; ++a)
    for (std::int64_t b = a + 1; b < 4; ++b) CHECK(expert_difference(w, a, b) > 1e-6);
  // The trained model still runs as a Mixtral.
  CHECK(llama_logits(*cpu, moe.config, trained, random_ids(1, 8, 20, 1)).numel() == 8 * 20);
}
