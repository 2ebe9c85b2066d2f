// Checkpoints: safetensors bytes checked by an independent reader written
// here, exact round trips, a rebuilt model that gives identical logits, and
// the errors for truncated, corrupted and mismatched files.
#include <catch2/catch.hpp>

#include <sys/resource.h>
#include <unistd.h>

#include <csignal>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>

#include "frontends/gpt_checkpoint.h"
#include "frontends/gpt_moe.h"
#include "frontends/safetensors.h"
#include "ir/error.h"
#include "runtime/backend.h"

using namespace moejit;
namespace fs = std::filesystem;

namespace {

// One directory per test case: ctest runs test cases as parallel processes.
fs::path temp_dir(const char* test) {
  fs::path dir = fs::path(MOEJIT_BINARY_DIR) / "tests_tmp" / "frontends" / test;
  fs::create_directories(dir);
  return dir;
}

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_bytes(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

template <typename Fn>
std::string error_of(Fn fn) {
  try {
    fn();
  } catch (const Error& err) {
    return err.what();
  }
  return "";
}

GptMoeConfig tiny_config() {
  GptMoeConfig c;
  c.vocab_size = 11;
  c.n_layer = 2;
  c.n_head = 2;
  c.n_embd = 16;
  c.block_size = 8;
  c.num_experts = 3;
  c.top_k = 2;
  c.d_expert = 12;
  c.moe_every = 2;  // block 0 dense, block 1 MoE
  c.selection_bias = true;
  return c;
}

}  // namespace

TEST_CASE("save_safetensors writes the documented layout, read independently", "[safetensors]") {
  Checkpoint ck;
  std::vector<float> a_values = {1.5f, -2.0f, 3.25f, 0.0f, 7.0f, -0.125f};
  ck.tensors["a"] = HostTensor::from_floats({2, 3}, a_values);
  ck.tensors["b.ids"] = HostTensor::from_ints({4}, std::vector<std::int32_t>{3, -1, 7, 100000});
  ck.metadata["step"] = "42";
  const fs::path path = temp_dir("layout") / "layout.safetensors";
  save_safetensors(path.string(), ck);

  const std::string bytes = read_bytes(path);
  REQUIRE(bytes.size() >= 8);
  std::uint64_t header_len = 0;
  for (int i = 0; i < 8; ++i) header_len |= static_cast<std::uint64_t>(static_cast<unsigned char>(bytes[i])) << (8 * i);
  REQUIRE(8 + header_len <= bytes.size());
  nlohmann::json header = nlohmann::json::parse(bytes.substr(8, header_len));
  CHECK(header["__metadata__"]["step"] == "42");
  CHECK(header["a"]["dtype"] == "F32");
  CHECK(header["a"]["shape"] == nlohmann::json::array({2, 3}));
  CHECK(header["b.ids"]["dtype"] == "I32");
  const std::size_t data = 8 + header_len;
  const auto a_off = header["a"]["data_offsets"].get<std::vector<std::size_t>>();
  const auto b_off = header["b.ids"]["data_offsets"].get<std::vector<std::size_t>>();
  REQUIRE(a_off[1] - a_off[0] == 6 * 4);
  REQUIRE(b_off[1] - b_off[0] == 4 * 4);
  CHECK(bytes.size() == data + 40);
  float a_read[6];
  std::memcpy(a_read, bytes.data() + data + a_off[0], sizeof a_read);
  for (int i = 0; i < 6; ++i) CHECK(a_read[i] == a_values[static_cast<std::size_t>(i)]);
  std::int32_t b_read[4];
  std::memcpy(b_read, bytes.data() + data + b_off[0], sizeof b_read);
  CHECK(b_read[3] == 100000);
  CHECK(b_read[1] == -1);
  // No temporary file left behind.
  for (const auto& entry : fs::directory_iterator(temp_dir("layout")))
    CHECK(entry.path().filename().string().find(".tmp.") == std::string::npos);
}

TEST_CASE("safetensors round trip is exact for every dtype", "[safetensors]") {
  std::mt19937 rng(7);
  std::normal_distribution<double> normal;
  Checkpoint ck;
  for (DType dtype : {DType::f32, DType::f64, DType::bf16, DType::f16, DType::i32, DType::i64, DType::i1}) {
    HostTensor t({dtype, {3, 5}});
    for (std::int64_t i = 0; i < t.numel(); ++i)
      t.set(i, dtype == DType::i1 ? (i % 2) : is_float(dtype) ? normal(rng) : static_cast<double>(i * 37 - 200));
    ck.tensors[std::string("t_") + std::string(dtype_name(dtype))] = t;
  }
  ck.tensors["scalar"] = HostTensor::scalar(3.5);
  ck.metadata = {{"config", "{\"n_layer\": 2}"}, {"note", "hello"}};
  const fs::path path = temp_dir("roundtrip") / "roundtrip.safetensors";
  save_safetensors(path.string(), ck);
  Checkpoint back = load_safetensors(path.string());
  CHECK(back.metadata == ck.metadata);
  REQUIRE(back.tensors.size() == ck.tensors.size());
  for (const auto& [name, t] : ck.tensors) {
    INFO(name);
    REQUIRE(back.tensors.count(name) == 1);
    const HostTensor& u = back.tensors.at(name);
    REQUIRE(u.type() == t.type());
    CHECK(std::memcmp(u.raw(), t.raw(), t.bytes()) == 0);
  }
}

TEST_CASE("truncated and corrupted checkpoint files give clear errors", "[safetensors]") {
  Checkpoint ck;
  ck.tensors["w"] = HostTensor::from_floats({4, 4}, std::vector<float>(16, 1.0f));
  ck.tensors["z"] = HostTensor::from_floats({2}, std::vector<float>{1, 2});
  const fs::path good = temp_dir("corrupt") / "good.safetensors";
  save_safetensors(good.string(), ck);
  const std::string bytes = read_bytes(good);
  const fs::path bad = temp_dir("corrupt") / "bad.safetensors";

  write_bytes(bad, bytes.substr(0, 5));
  CHECK(error_of([&] { load_safetensors(bad.string()); }).find("truncated") != std::string::npos);

  write_bytes(bad, bytes.substr(0, bytes.size() - 3));  // data cut short
  std::string msg = error_of([&] { load_safetensors(bad.string()); });
  CHECK(msg.find("truncated") != std::string::npos);
  CHECK(msg.find("bad.safetensors") != std::string::npos);

  write_bytes(bad, bytes.substr(0, 20));  // header cut short
  CHECK(error_of([&] { load_safetensors(bad.string()); }).find("truncated") != std::string::npos);

  std::string garbage = bytes;
  garbage[9] = '#';  // inside the JSON header
  write_bytes(bad, garbage);
  CHECK(error_of([&] { load_safetensors(bad.string()); }).find("corrupted header") != std::string::npos);

  std::string huge = bytes;
  huge[7] = '\x7f';  // header length ~ 2^62
  write_bytes(bad, huge);
  CHECK(error_of([&] { load_safetensors(bad.string()); }).find("header length") != std::string::npos);

  std::string extra = bytes + "xxxx";  // trailing bytes no tensor owns
  write_bytes(bad, extra);
  CHECK(error_of([&] { load_safetensors(bad.string()); }).find("data bytes") != std::string::npos);

  // A header whose dtype disagrees with its byte count.
  std::uint64_t header_len = 0;
  for (int i = 0; i < 8; ++i) header_len |= static_cast<std::uint64_t>(static_cast<unsigned char>(bytes[i])) << (8 * i);
  std::string header = bytes.substr(8, header_len);
  const std::size_t f32 = header.find("\"F32\"");
  REQUIRE(f32 != std::string::npos);
  header.replace(f32, 5, "\"F64\"");
  write_bytes(bad, bytes.substr(0, 8) + header + bytes.substr(8 + header_len));
  msg = error_of([&] { load_safetensors(bad.string()); });
  CHECK(msg.find("corrupted header: tensor") != std::string::npos);
  CHECK(msg.find("bytes") != std::string::npos);

  CHECK(error_of([&] { load_safetensors((temp_dir("corrupt") / "missing.safetensors").string()); }).find("cannot open") !=
        std::string::npos);
  // A directory given as the checkpoint says so (not "invalid JSON").
  CHECK(error_of([&] { load_safetensors(temp_dir("corrupt").string()); })
            .find("expected a checkpoint file, found a directory") != std::string::npos);
}

TEST_CASE("a failed save leaves the existing checkpoint intact", "[safetensors]") {
  Checkpoint old_ck;
  old_ck.tensors["w"] = HostTensor::from_floats({3}, std::vector<float>{1, 2, 3});
  const fs::path path = temp_dir("failed_save") / "ckpt.safetensors";
  save_safetensors(path.string(), old_ck);
  const std::string old_bytes = read_bytes(path);
  // A full disk, simulated by a file-size limit: writing the temporary file
  // fails (EFBIG, with SIGXFSZ ignored) after 16 bytes.
  Checkpoint new_ck;
  new_ck.tensors["w"] = HostTensor::from_floats({2}, std::vector<float>{7, 8});
  struct rlimit saved{};
  ::getrlimit(RLIMIT_FSIZE, &saved);
  auto previous_handler = std::signal(SIGXFSZ, SIG_IGN);
  struct rlimit tiny = saved;
  tiny.rlim_cur = 16;
  ::setrlimit(RLIMIT_FSIZE, &tiny);
  const std::string message = error_of([&] { save_safetensors(path.string(), new_ck); });
  ::setrlimit(RLIMIT_FSIZE, &saved);
  std::signal(SIGXFSZ, previous_handler);
  CHECK(message.find("disk full") != std::string::npos);
  CHECK(read_bytes(path) == old_bytes);
  // Saving onto a directory fails too, and leaves no temporary behind.
  const fs::path dir_target = temp_dir("failed_save") / "is_a_dir";
  fs::create_directories(dir_target);
  CHECK(error_of([&] { save_safetensors(dir_target.string(), new_ck); }).find("found a directory") != std::string::npos);
  CHECK(fs::is_directory(dir_target));
  CHECK(!fs::exists(dir_target.string() + ".tmp." + std::to_string(static_cast<long>(::getpid()))));
}

TEST_CASE("a GPT-MoE checkpoint rebuilds a model with identical logits", "[safetensors][gpt]") {
  const GptMoeConfig config = tiny_config();
  auto backend = make_cpu_backend();
  auto logits_of = [&](const std::map<std::string, HostTensor>& params) {
    Graph graph("logits");
    GptMoeGraph model = build_gpt_moe(graph, config, {.batch = 2, .with_loss = false, .output_logits = true});
    auto exe = backend->compile(graph);
    for (const ParamSpec& s : model.params) exe->set(s.name, params.at(s.name));
    std::vector<std::int32_t> ids(2 * 8);
    for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<std::int32_t>((i * 7 + 3) % 11);
    exe->set("idx", HostTensor::from_ints({2, 8}, ids));
    exe->run();
    return exe->get("logits");
  };
  std::map<std::string, HostTensor> params = init_parameters(gpt_moe_param_specs(config), 99);
  params.at("h.1.moe.router.selection_bias").set(1, 0.25);  // state is saved too
  const HostTensor before = logits_of(params);

  CharTokenizer tokenizer = CharTokenizer::from_text("abcdefghij\n");
  REQUIRE(tokenizer.vocab_size() == 11);
  const fs::path path = temp_dir("rebuild") / "gpt.safetensors";
  save_gpt_checkpoint(path.string(), config, tokenizer, params, {{"step", "5"}});
  GptMoeCheckpoint loaded = load_gpt_checkpoint(path.string());
  CHECK(loaded.metadata.at("step") == "5");
  CHECK(loaded.tokenizer.bytes() == tokenizer.bytes());
  CHECK(config_to_json(loaded.config) == config_to_json(config));
  REQUIRE(loaded.params.size() == params.size());
  for (const auto& [name, t] : params) {
    INFO(name);
    CHECK(std::memcmp(loaded.params.at(name).raw(), t.raw(), t.bytes()) == 0);
  }
  const HostTensor after = logits_of(loaded.params);
  REQUIRE(after.type() == before.type());
  CHECK(std::memcmp(after.raw(), before.raw(), before.bytes()) == 0);
}

TEST_CASE("a checkpoint that does not match its config names the tensor", "[safetensors][gpt]") {
  const GptMoeConfig config = tiny_config();
  std::map<std::string, HostTensor> params = init_parameters(gpt_moe_param_specs(config), 1);
  CharTokenizer tokenizer = CharTokenizer::from_text("abcdefghij\n");
  const fs::path path = temp_dir("mismatch") / "mismatch.safetensors";
  save_gpt_checkpoint(path.string(), config, tokenizer, params);

  // Rewrite it with one tensor of the wrong shape, and with a wrong dtype.
  Checkpoint raw = load_safetensors(path.string());
  raw.tensors["h.0.attn.c_attn.weight"] = HostTensor({DType::f32, {24, 16}});
  save_safetensors(path.string(), raw);
  std::string msg = error_of([&] { load_gpt_checkpoint(path.string()); });
  CHECK(msg.find("h.0.attn.c_attn.weight") != std::string::npos);
  CHECK(msg.find("expected [48, 16] f32") != std::string::npos);
  CHECK(msg.find("found [24, 16] f32") != std::string::npos);

  raw = load_safetensors(path.string());
  raw.tensors["h.0.attn.c_attn.weight"] = HostTensor({DType::f16, {48, 16}});
  save_safetensors(path.string(), raw);
  msg = error_of([&] { load_gpt_checkpoint(path.string()); });
  CHECK(msg.find("found [48, 16] f16") != std::string::npos);

  raw.tensors["h.0.attn.c_attn.weight"] = HostTensor({DType::f32, {48, 16}});
  raw.tensors.erase("wpe.weight");
  save_safetensors(path.string(), raw);
  msg = error_of([&] { load_gpt_checkpoint(path.string()); });
  CHECK(msg.find("wpe.weight") != std::string::npos);
  CHECK(msg.find("no such tensor") != std::string::npos);

  raw.tensors["wpe.weight"] = HostTensor({DType::f32, {8, 16}});
  raw.metadata["vocab"] = "1,2,3";
  save_safetensors(path.string(), raw);
  CHECK(error_of([&] { load_gpt_checkpoint(path.string()); }).find("vocab_size") != std::string::npos);

  // A NaN weight (a diverged or corrupted run) is refused, naming the tensor and element.
  raw = load_safetensors(path.string());
  raw.metadata["vocab"] = tokenizer.to_string();
  raw.tensors["wpe.weight"].set(5, std::nan(""));
  save_safetensors(path.string(), raw);
  msg = error_of([&] { load_gpt_checkpoint(path.string()); });
  CHECK(msg.find("tensor wpe.weight: expected finite values, found nan at element 5") != std::string::npos);
}

namespace {

// The file's header JSON and where the data starts.
std::pair<std::string, std::size_t> header_of(const std::string& bytes) {
  std::uint64_t header_len = 0;
  for (int i = 0; i < 8; ++i) header_len |= static_cast<std::uint64_t>(static_cast<unsigned char>(bytes[i])) << (8 * i);
  return {bytes.substr(8, header_len), 8 + header_len};
}

// A safetensors file with this header text (padded to 8 bytes) and data.
std::string file_with_header(std::string header, const std::string& data) {
  header.append((8 - header.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[static_cast<std::size_t>(i)] = static_cast<char>((header.size() >> (8 * i)) & 0xFF);
  return out + header + data;
}

}  // namespace

TEST_CASE("checksums: flipped data bytes and changed metadata are caught, naming what changed", "[safetensors]") {
  Checkpoint ck;
  ck.tensors["a"] = HostTensor::from_floats({4}, std::vector<float>{1, 2, 3, 4});
  ck.tensors["b"] = HostTensor::from_floats({2}, std::vector<float>{5, 6});
  ck.metadata["config"] = "{\"n_head\":2,\"top_k\":2}";
  const fs::path dir = temp_dir("checksum");
  const fs::path good = dir / "good.safetensors", bad = dir / "bad.safetensors";
  save_safetensors(good.string(), ck);
  const std::string bytes = read_bytes(good);
  CHECK(load_safetensors(good.string()).note.empty());
  // The checksums are zlib's crc32, so other tools can check them.
  CHECK(crc32("123456789", 9) == 0xCBF43926u);
  auto [header, data_start] = header_of(bytes);
  nlohmann::json parsed = nlohmann::json::parse(header);
  CHECK(parsed["__metadata__"].contains("tensor_crc32"));
  CHECK(parsed["__metadata__"].contains("metadata_crc32"));

  // One flipped bit in tensor b's data (after a's 16 bytes).
  std::string flipped = bytes;
  flipped[data_start + 16 + 1] ^= 0x01;
  write_bytes(bad, flipped);
  std::string msg = error_of([&] { load_safetensors(bad.string()); });
  CHECK_THAT(msg, Catch::Contains("bad.safetensors: corrupted file: tensor b: its data's CRC-32 is"));

  // Metadata that lies about the model (n_head 2 -> 4), same length, well-formed.
  std::string lying = bytes;
  const std::size_t at = lying.find("\\\"n_head\\\":2");
  REQUIRE(at != std::string::npos);
  lying[at + std::strlen("\\\"n_head\\\":")] = '4';
  write_bytes(bad, lying);
  msg = error_of([&] { load_safetensors(bad.string()); });
  CHECK_THAT(msg, Catch::Contains("bad.safetensors: corrupted file: the metadata's CRC-32 is") &&
                      Catch::Contains("metadata entries were changed"));

  // A checksum table that lost an entry.
  std::string dropped = bytes;
  const std::size_t crc_at = dropped.find("\\\"a\\\":");
  REQUIRE(crc_at != std::string::npos);
  dropped.replace(crc_at, 5, "\\\"z\\\":");
  write_bytes(bad, dropped);
  CHECK_THAT(error_of([&] { load_safetensors(bad.string()); }), Catch::Contains("corrupted file"));

  // A file without checksums (another tool's) loads, with a note.
  write_bytes(bad, file_with_header(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", std::string(8, '\0')));
  Checkpoint plain = load_safetensors(bad.string());
  CHECK(plain.tensors.at("w").numel() == 2);
  CHECK_THAT(plain.note, Catch::Contains("not verified"));
}

TEST_CASE("shapes whose byte size overflows 64 bits are reported, not wrapped", "[safetensors]") {
  const fs::path bad = temp_dir("overflow") / "overflow.safetensors";
  write_bytes(bad, file_with_header(R"({"w":{"dtype":"F32","shape":[1099511627776,1099511627776],"data_offsets":[0,0]}})",
                                    ""));
  std::string msg = error_of([&] { load_safetensors(bad.string()); });
  CHECK_THAT(msg, Catch::Contains("tensor w: shape [1099511627776, 1099511627776] F32 has more bytes than fit in 64 bits"));
  CHECK_THAT(msg, !Catch::Contains("expected 0 bytes"));
  // Large but representable: the file is too short for it, and nothing is allocated.
  write_bytes(bad, file_with_header(R"({"w":{"dtype":"F32","shape":[1048576,1048576],"data_offsets":[0,4398046511104]}})",
                                    ""));
  CHECK_THAT(error_of([&] { load_safetensors(bad.string()); }), Catch::Contains("truncated: tensor w needs 4398046511104 bytes"));
}

TEST_CASE("a resumable GPT-MoE checkpoint keeps the AdamW moments, all or none", "[safetensors][gpt]") {
  const GptMoeConfig config = tiny_config();
  const auto specs = gpt_moe_param_specs(config);
  std::map<std::string, HostTensor> params = init_parameters(specs, 1), moments;
  for (const ParamSpec& s : specs)
    if (s.role == ArgRole::param) {
      moments.emplace("m." + s.name, init_parameters({s}, 2).at(s.name));
      moments.emplace("v." + s.name, init_parameters({s}, 3).at(s.name));
    }
  const CharTokenizer tokenizer = CharTokenizer::from_text("abcdefghij\n");
  const fs::path path = temp_dir("moments") / "ckpt.safetensors";
  save_gpt_checkpoint(path.string(), config, tokenizer, params, {}, moments);
  GptMoeCheckpoint loaded = load_gpt_checkpoint(path.string());
  REQUIRE(loaded.optimizer.size() == moments.size());
  for (const auto& [name, t] : moments) CHECK(std::memcmp(loaded.optimizer.at(name).raw(), t.raw(), t.bytes()) == 0);
  CHECK(loaded.params.size() == params.size());

  // Half the moments: a named error.
  std::map<std::string, HostTensor> half = moments;
  half.erase(half.begin());
  save_gpt_checkpoint(path.string(), config, tokenizer, params, {}, half);
  CHECK_THAT(error_of([&] { load_gpt_checkpoint(path.string()); }), Catch::Contains("expected tensor adamw."));
}
