// Hugging Face checkpoints: Llama and Mixtral directories (single file and
// sharded, both Mixtral expert layouts, bf16) loaded by name and run by
// moejit's builder against an independent double-precision forward pass;
// errors for missing, unexpected and wrongly shaped tensors; the Mixtral
// export read back; and, when tests/fixtures/hf/generated/ exists, the logits
// transformers computed (else reported as skipped).
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include "frontends/hf_checkpoint.h"
#include "hf_reference.h"
#include "ir/error.h"
#include "ir/file_io.h"
#include "runtime/backend.h"

using namespace moejit;
using namespace hf_test;

namespace {

LlamaConfig small_llama() {
  LlamaConfig c;
  c.vocab_size = 40;
  c.hidden_size = 16;
  c.intermediate_size = 24;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 6;  // Hq * Dh = 24 != hidden_size: the projections are not square
  c.max_position_embeddings = 32;
  return c;
}

LlamaConfig small_mixtral() {
  LlamaConfig c = small_llama();
  c.architecture = "MixtralForCausalLM";
  c.num_local_experts = 4;
  c.num_experts_per_tok = 2;
  c.head_dim = 4;
  return c;
}

const std::vector<int> kIds = {1, 5, 39, 0, 12, 12, 7, 30, 21};

HostTensor ids_tensor(const std::vector<int>& ids) {
  return HostTensor::from_ints({1, static_cast<std::int64_t>(ids.size())}, ids);
}

double relative_error_vs_reference(const HfModel& model, const std::map<std::string, HostTensor>& hf_tensors) {
  auto cpu = make_cpu_backend();
  HostTensor logits = llama_logits(*cpu, model.config, model.params, ids_tensor(kIds));
  return max_relative_difference(logits, ReferenceLlama(model.config, hf_tensors).logits(kIds));
}

template <typename Fn>
std::string error_of(Fn fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("Llama checkpoints load by name and match a reference forward pass", "[hf]") {
  struct Case {
    const char* name;
    bool tie;
    std::int64_t kv_heads;
    RopeConfig rope;
    int shards;
  };
  const Case cases[] = {
      {"gqa_untied", false, 2, {.theta = 10000.0}, 1},
      {"mqa_tied_llama3", true, 1,
       {.theta = 10000.0, .scaling = "llama3", .factor = 8, .low_freq_factor = 1, .high_freq_factor = 4,
        .original_max_position_embeddings = 16},
       3},
      {"mha_linear", false, 4, {.theta = 500.0, .scaling = "linear", .factor = 2.0}, 2},
  };
  for (const Case& k : cases) {
    LlamaConfig c = small_llama();
    c.tie_word_embeddings = k.tie;
    c.num_key_value_heads = k.kv_heads;
    c.rope = k.rope;
    fs::path dir = temp_dir(std::string("hf_llama_") + k.name);
    auto tensors = random_hf_tensors(c, 11);
    write_hf_dir(dir, c, tensors, k.shards);
    HfModel model = load_hf_model(dir.string());
    CHECK(model.config.tie_word_embeddings == k.tie);
    CHECK(model.config.rope.scaling == k.rope.scaling);
    double err = relative_error_vs_reference(model, tensors);
    INFO(k.name << ": max relative logit difference " << err);
    CHECK(err < 1e-5);
  }
}

TEST_CASE("Mixtral checkpoints load in both expert layouts and match a reference forward pass", "[hf]") {
  LlamaConfig c = small_mixtral();
  auto tensors = random_hf_tensors(c, 5);
  fs::path dir = temp_dir("hf_mixtral");
  write_hf_dir(dir, c, tensors, 2);
  HfModel model = load_hf_model(dir.string());
  double err = relative_error_vs_reference(model, tensors);
  INFO("per-expert layout: " << err);
  CHECK(err < 1e-5);

  // transformers 5's fused layout of the same weights.
  std::map<std::string, HostTensor> fused;
  const std::int64_t E = c.num_local_experts, D = c.hidden_size, F = c.intermediate_size;
  for (const auto& [name, t] : tensors)
    if (name.find(".block_sparse_moe.") == std::string::npos) fused[name] = t;
  for (std::int64_t l = 0; l < c.num_hidden_layers; ++l) {
    std::string p = fmt::format("model.layers.{}.", l);
    fused[p + "mlp.gate.weight"] = tensors.at(p + "block_sparse_moe.gate.weight");
    HostTensor gate_up(TensorType{DType::f32, {E, 2 * F, D}}), down(TensorType{DType::f32, {E, D, F}});
    for (std::int64_t e = 0; e < E; ++e) {
      std::string q = fmt::format("{}block_sparse_moe.experts.{}.", p, e);
      for (std::int64_t i = 0; i < F * D; ++i) {
        gate_up.set(e * 2 * F * D + i, tensors.at(q + "w1.weight").get(i));
        gate_up.set(e * 2 * F * D + F * D + i, tensors.at(q + "w3.weight").get(i));
        down.set(e * D * F + i, tensors.at(q + "w2.weight").get(i));
      }
    }
    fused[p + "mlp.experts.gate_up_proj"] = gate_up;
    fused[p + "mlp.experts.down_proj"] = down;
  }
  fs::path fused_dir = temp_dir("hf_mixtral_fused");
  write_hf_dir(fused_dir, c, fused);
  HfModel fused_model = load_hf_model(fused_dir.string());
  for (const auto& [name, t] : model.params) CHECK(fused_model.params.at(name).to_doubles() == t.to_doubles());
}

TEST_CASE("bf16 and f16 weights are converted to f32 on load", "[hf]") {
  LlamaConfig c = small_llama();
  auto tensors = random_hf_tensors(c, 3);
  for (DType dtype : {DType::bf16, DType::f16}) {
    std::map<std::string, HostTensor> narrow, rounded;
    for (const auto& [name, t] : tensors) {
      narrow[name] = t.cast(dtype);
      rounded[name] = narrow[name].cast(DType::f32);
    }
    fs::path dir = temp_dir(fmt::format("hf_{}", dtype_name(dtype)));
    write_hf_dir(dir, c, narrow);
    HfModel model = load_hf_model(dir.string());
    for (const auto& [name, t] : model.params) {
      CHECK(t.dtype() == DType::f32);
      CHECK(t.to_doubles() == rounded.at(name).to_doubles());
    }
    CHECK(relative_error_vs_reference(model, rounded) < 1e-5);
  }
}

TEST_CASE("missing, unexpected and wrongly shaped Hugging Face tensors are clear errors", "[hf]") {
  LlamaConfig c = small_mixtral();
  auto good = random_hf_tensors(c, 2);
  auto load_with = [&](const char* test, std::map<std::string, HostTensor> tensors) {
    fs::path dir = temp_dir(test);
    write_hf_dir(dir, c, tensors);
    return error_of([&] { load_hf_model(dir.string()); });
  };
  auto missing = good;
  missing.erase("model.layers.1.block_sparse_moe.experts.3.w2.weight");
  std::string msg = load_with("hf_missing", missing);
  CHECK(msg.find("tensor model.layers.1.block_sparse_moe.experts.3.w2.weight: expected [16, 24]") != std::string::npos);
  CHECK(msg.find("found no such tensor") != std::string::npos);

  auto extra = good;
  extra["model.layers.0.self_attn.q_proj.bias"] = HostTensor(TensorType{DType::f32, {24}});
  msg = load_with("hf_unexpected", extra);
  CHECK(msg.find("tensor model.layers.0.self_attn.q_proj.bias: expected no such tensor") != std::string::npos);

  auto wrong = good;
  wrong["model.layers.0.self_attn.k_proj.weight"] = HostTensor(TensorType{DType::f32, {16, 16}});
  msg = load_with("hf_wrong_shape", wrong);
  CHECK(msg.find("tensor model.layers.0.self_attn.k_proj.weight: expected [8, 16]") != std::string::npos);
  CHECK(msg.find("found [16, 16] f32") != std::string::npos);

  auto ints = good;
  ints["model.norm.weight"] = HostTensor(TensorType{DType::i32, {16}});
  msg = load_with("hf_int_weight", ints);
  CHECK(msg.find("model.norm.weight: expected a float tensor") != std::string::npos);

  // A shard the index names but that is not there.
  fs::path dir = temp_dir("hf_missing_shard");
  write_hf_dir(dir, c, good, 2);
  fs::remove(dir / "model-00002-of-00002.safetensors");
  msg = error_of([&] { load_hf_model(dir.string()); });
  CHECK(msg.find("shard model-00002-of-00002.safetensors") != std::string::npos);

  // Config keys moejit does not implement are refused, naming the key.
  msg = error_of([&] { llama_config_from_hf_json(R"({"vocab_size": 4, "hidden_size": 8, "intermediate_size": 8,
      "num_hidden_layers": 1, "num_attention_heads": 2, "attention_bias": true})"); });
  CHECK(msg.find("attention_bias: expected false") != std::string::npos);
  msg = error_of([&] { llama_config_from_hf_json(R"({"vocab_size": 4, "hidden_size": 8, "intermediate_size": 8,
      "num_hidden_layers": 1, "num_attention_heads": 2, "rope_scaling": {"rope_type": "yarn", "factor": 4}})"); });
  CHECK(msg.find("expected default, linear or llama3") != std::string::npos);
  msg = error_of([&] { load_hf_model((dir / "nowhere").string()); });
  CHECK(msg.find("config.json") != std::string::npos);
}

TEST_CASE("an exported Mixtral directory reads back to the same parameters and logits", "[hf]") {
  LlamaConfig c = small_mixtral();
  c.rope = {.theta = 10000.0, .scaling = "llama3", .factor = 4, .low_freq_factor = 1, .high_freq_factor = 4,
            .original_max_position_embeddings = 16};
  auto tensors = random_hf_tensors(c, 9);
  auto params = params_from_hf_tensors(c, tensors, "test");
  fs::path dir = temp_dir("hf_export");
  export_mixtral(dir.string(), c, params);
  HfModel back = load_hf_model(dir.string());
  CHECK(back.config.rope.scaling == "llama3");
  CHECK(back.config.num_local_experts == 4);
  for (const auto& [name, t] : params) CHECK(back.params.at(name).to_doubles() == t.to_doubles());
  // The exported tensors are the per-expert Hugging Face ones.
  Checkpoint file = load_safetensors((dir / "model.safetensors").string());
  CHECK(file.metadata.at("format") == "pt");
  for (const auto& [name, t] : tensors) CHECK(file.tensors.at(name).to_doubles() == t.to_doubles());
  CHECK(file.tensors.size() == tensors.size());
  // config.json carries both the transformers 4 and 5 rope keys.
  std::string text;
  REQUIRE(read_whole_file((dir / "config.json").string(), &text));
  auto j = nlohmann::json::parse(text);
  CHECK(j["rope_scaling"]["rope_type"] == "llama3");
  CHECK(j["rope_parameters"]["rope_theta"] == 10000.0);
  // A dense model is not a Mixtral.
  CHECK(error_of([&] { export_mixtral(dir.string(), small_llama(), {}); }).find("mixture-of-experts") !=
        std::string::npos);
}

// ---- the fixtures transformers wrote (tests/fixtures/hf/make_fixtures.py) ----

TEST_CASE("moejit's logits equal transformers' on the generated Llama and Mixtral fixtures", "[hf]") {
  const fs::path root = fs::path(MOEJIT_SOURCE_DIR) / "tests" / "fixtures" / "hf" / "generated";
  if (!fs::exists(root / "llama_gqa_untied" / "expected_logits.safetensors")) {
    std::puts("SKIPPED: no transformers fixtures in tests/fixtures/hf/generated (run "
              "tests/fixtures/hf/make_fixtures.py on a machine with transformers, see docs/huggingface.md)");
    return;
  }
  auto cpu = make_cpu_backend();
  int checked = 0;
  for (const char* name : {"llama_gqa_untied", "llama_tied_llama3", "llama_linear_sharded", "llama_bf16", "mixtral",
                           "mixtral_classic"}) {
    fs::path dir = root / name;
    if (!fs::exists(dir)) {
      CHECK(std::string(name) == "mixtral_classic");  // only written when save_pretrained fuses the experts
      continue;
    }
    Checkpoint expected = load_safetensors((dir / "expected_logits.safetensors").string());
    HfModel model = load_hf_model(dir.string());
    HostTensor logits = llama_logits(*cpu, model.config, model.params, expected.tensors.at("input_ids"));
    const HostTensor& want = expected.tensors.at("logits");
    REQUIRE(logits.shape() == want.shape());
    double diff = 0, scale = 0;
    for (std::int64_t i = 0; i < want.numel(); ++i) {
      diff = std::max(diff, std::abs(logits.get(i) - want.get(i)));
      scale = std::max(scale, std::abs(want.get(i)));
    }
    INFO(name << ": max relative logit difference " << diff / scale);
    CHECK(diff / scale < 1e-4);
    std::printf("%s: max relative logit difference vs transformers %.3g\n", name, diff / scale);
    ++checked;
  }
  CHECK(checked >= 5);
}
