// Config: defaults, JSON loading, flag-style overrides, and the errors a user
// gets for bad values (naming the key, what was expected, what was found).
#include <catch2/catch.hpp>

#include <string>

#include "frontends/config.h"
#include "ir/error.h"

using namespace moejit;

namespace {

// The message of the moejit::Error `fn` throws ("" if none).
template <typename Fn>
std::string error_of(Fn fn) {
  try {
    fn();
  } catch (const Error& err) {
    return err.what();
  }
  return "";
}

}  // namespace

TEST_CASE("default config is valid and its MoE layout follows moe_every", "[config]") {
  GptMoeConfig c;
  REQUIRE_NOTHROW(validate_config(c));
  c.n_layer = 4;
  c.moe_every = 2;
  CHECK_FALSE(c.is_moe_layer(0));
  CHECK(c.is_moe_layer(1));
  CHECK_FALSE(c.is_moe_layer(2));
  CHECK(c.is_moe_layer(3));
  CHECK(c.num_moe_layers() == 2);
  c.moe_every = 0;
  CHECK(c.num_moe_layers() == 0);
}

TEST_CASE("config_from_json overrides only the keys it names", "[config]") {
  GptMoeConfig base;
  base.n_layer = 7;
  GptMoeConfig c = config_from_json(
      R"({"n_embd": 96, "n_head": 6, "learning_rate": 0.0005, "activation": "swiglu", "noisy_gating": true})", base);
  CHECK(c.n_embd == 96);
  CHECK(c.n_head == 6);
  CHECK(c.learning_rate == 0.0005);
  CHECK(c.activation == "swiglu");
  CHECK(c.noisy_gating);
  CHECK(c.n_layer == 7);  // from base
  CHECK(c.top_k == GptMoeConfig{}.top_k);
}

TEST_CASE("config JSON round-trips through config_to_json", "[config]") {
  GptMoeConfig c;
  c.n_layer = 3;
  c.capacity_factor = 1.25;
  c.router_score = "sigmoid";
  c.selection_bias = true;
  c.min_lr = 3.5e-5;
  GptMoeConfig back = config_from_json(config_to_json(c));
  for (const ConfigField& f : config_fields())
    CHECK(get_config_value(back, f.name) == get_config_value(c, f.name));
}

TEST_CASE("config errors name the key, the expectation and the value found", "[config]") {
  std::string msg = error_of([] { config_from_json(R"({"n_layers": 2})"); });
  CHECK(msg.find("unknown key 'n_layers'") != std::string::npos);
  CHECK(msg.find("n_layer") != std::string::npos);  // the known keys are listed

  msg = error_of([] { config_from_json(R"({"n_layer": 2.5})"); });
  CHECK(msg.find("n_layer") != std::string::npos);
  CHECK(msg.find("integer") != std::string::npos);
  CHECK(msg.find("2.5") != std::string::npos);

  msg = error_of([] { config_from_json(R"({"bias": "yes"})"); });
  CHECK(msg.find("bias") != std::string::npos);
  CHECK(msg.find("true or false") != std::string::npos);

  msg = error_of([] { config_from_json(R"({"activation": "tanh"})"); });
  CHECK(msg.find("activation") != std::string::npos);
  CHECK(msg.find("gelu | relu | swiglu") != std::string::npos);
  CHECK(msg.find("tanh") != std::string::npos);

  msg = error_of([] { config_from_json("{\"n_layer\": "); });
  CHECK(msg.find("invalid JSON") != std::string::npos);

  msg = error_of([] { config_from_json("[1, 2]"); });
  CHECK(msg.find("expected a JSON object") != std::string::npos);
}

TEST_CASE("validate_config rejects inconsistent values", "[config]") {
  GptMoeConfig c;
  c.n_embd = 66;
  c.n_head = 4;
  std::string msg = error_of([&] { validate_config(c); });
  CHECK(msg.find("n_embd") != std::string::npos);
  CHECK(msg.find("multiple of n_head (4)") != std::string::npos);
  CHECK(msg.find("66") != std::string::npos);

  c = GptMoeConfig{};
  c.num_experts = 4;
  c.top_k = 5;
  msg = error_of([&] { validate_config(c); });
  CHECK(msg.find("top_k") != std::string::npos);
  CHECK(msg.find("at most num_experts (4)") != std::string::npos);
  CHECK(msg.find("found 5") != std::string::npos);

  c = GptMoeConfig{};
  c.min_lr = 1.0;
  msg = error_of([&] { validate_config(c); });
  CHECK(msg.find("min_lr") != std::string::npos);

  c = GptMoeConfig{};
  c.dropout = 1.0;
  CHECK(error_of([&] { validate_config(c); }).find("dropout") != std::string::npos);

  c = GptMoeConfig{};
  c.moe_every = 5;  // more than n_layer
  CHECK(error_of([&] { validate_config(c); }).find("moe_every") != std::string::npos);

  c = GptMoeConfig{};
  c.batch_size = 0;
  CHECK(error_of([&] { validate_config(c); }).find("batch_size: expected a positive integer, found 0") !=
        std::string::npos);
}

TEST_CASE("validate_config bounds sizes before their products overflow", "[config]") {
  GptMoeConfig c;
  c.n_embd = std::int64_t{1} << 62;  // n_embd * 3 would wrap to a negative shape
  c.n_head = 1;
  CHECK(error_of([&] { validate_config(c); }).find("n_embd: expected at most 1048576, found 4611686018427387904") !=
        std::string::npos);
  c = GptMoeConfig{};
  c.block_size = std::int64_t{1} << 62;
  CHECK(error_of([&] { validate_config(c); }).find("block_size: expected at most 1048576") != std::string::npos);
  c = GptMoeConfig{};
  c.batch_size = 1 << 20;
  c.block_size = 1 << 12;
  CHECK(error_of([&] { validate_config(c); }).find("batch_size * block_size * top_k at most 2147483647") !=
        std::string::npos);
  // An unsigned JSON integer beyond int64 is named as such, not wrapped to -1.
  CHECK(error_of([] { config_from_json(R"({"n_embd": 18446744073709551615})"); })
            .find("n_embd: expected an integer that fits in 64 bits, found 18446744073709551615") != std::string::npos);
}

TEST_CASE("set_config_value parses flag text strictly", "[config]") {
  GptMoeConfig c;
  set_config_value(c, "n_layer", "6");
  set_config_value(c, "dropout", "0.1");
  set_config_value(c, "bias", "true");
  set_config_value(c, "router_order", "topk_then_softmax");
  CHECK(c.n_layer == 6);
  CHECK(c.dropout == 0.1);
  CHECK(c.bias);
  CHECK(c.router_order == "topk_then_softmax");
  CHECK(error_of([&] { set_config_value(c, "n_layer", "6x"); }).find("n_layer: expected an integer, found '6x'") !=
        std::string::npos);
  CHECK(error_of([&] { set_config_value(c, "learning_rate", "fast"); }).find("learning_rate") != std::string::npos);
  CHECK(error_of([&] { set_config_value(c, "no_such_key", "1"); }).find("unknown key 'no_such_key'") !=
        std::string::npos);
  CHECK(get_config_value(c, "n_layer") == "6");
  CHECK(get_config_value(c, "bias") == "true");
}
