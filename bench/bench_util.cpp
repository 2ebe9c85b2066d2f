// Implementation of bench/bench_util.h: device ceilings and L2 flushing
// through the driver entry points of runtime/cuda/driver.h, timing, random
// data, errors, the JSON report and the text table.
#include "bench/bench_util.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "ir/file_io.h"
#include "ir/error.h"
#include "runtime/cuda/cuda_backend.h"
#include "runtime/cuda/driver.h"

namespace moejit::bench {

// ---- the device and its ceilings ----

std::string pick_device(const std::string& wanted, std::string* why) {
  if (wanted != "auto" && wanted != "cuda" && wanted != "cpu")
    throw Error(fmt::format("--device: expected auto, cuda or cpu, found '{}'", wanted));
  std::string reason;
  bool has_cuda = cuda_available(&reason);
  if (why) *why = has_cuda ? "" : reason;
  if (wanted == "cpu") return "cpu";
  if (wanted == "cuda" && !has_cuda) throw Error(fmt::format("--device cuda: no usable GPU ({})", reason));
  return has_cuda ? "cuda" : "cpu";
}

std::int64_t device_l2_bytes() {
  int l2 = 0;
  MOEJIT_CU(cuDeviceGetAttribute, &l2, CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE, cuda::device());
  return l2;
}

std::string device_description(const std::string& device) {
  if (device != "cuda") {
    const char* threads = std::getenv("MOEJIT_CPU_THREADS");
    return fmt::format("cpu ({} threads)", threads ? std::atoi(threads) : static_cast<int>(std::thread::hardware_concurrency()));
  }
  CudaDeviceInfo info = cuda_device_info();
  return fmt::format("{} ({}, {} SMs, L2 {} MiB, {} GiB)", info.name, info.arch(), info.sm_count, device_l2_bytes() >> 20,
                     info.total_memory >> 30);
}

namespace {

// A device buffer freed on scope exit.
struct DeviceBuffer {
  CUdeviceptr ptr = 0;
  explicit DeviceBuffer(std::int64_t bytes) { MOEJIT_CU(cuMemAlloc, &ptr, static_cast<std::size_t>(bytes)); }
  ~DeviceBuffer() {
    if (ptr) cuda::driver().cuMemFree(ptr);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
};

// CUDA events freed on scope exit.
struct EventPair {
  CUevent start = nullptr, stop = nullptr;
  EventPair() {
    MOEJIT_CU(cuEventCreate, &start, CU_EVENT_DEFAULT);
    MOEJIT_CU(cuEventCreate, &stop, CU_EVENT_DEFAULT);
  }
  ~EventPair() {
    if (start) cuda::driver().cuEventDestroy(start);
    if (stop) cuda::driver().cuEventDestroy(stop);
  }
  EventPair(const EventPair&) = delete;
  EventPair& operator=(const EventPair&) = delete;
};

}  // namespace

double measure_copy_bytes_per_s(std::int64_t bytes, int runs) {
  DeviceBuffer src(bytes), dst(bytes);
  EventPair events;
  CUstream stream = nullptr;
  MOEJIT_CU(cuStreamCreate, &stream, CU_STREAM_NON_BLOCKING);
  // Non-zero source contents (METHOD.md: never time on zeros).
  MOEJIT_CU(cuMemsetD8Async, src.ptr, 0x5A, static_cast<std::size_t>(bytes), stream);
  std::vector<double> ms;
  for (int i = 0; i < runs + 3; ++i) {
    MOEJIT_CU(cuEventRecord, events.start, stream);
    MOEJIT_CU(cuMemcpyDtoDAsync, dst.ptr, src.ptr, static_cast<std::size_t>(bytes), stream);
    MOEJIT_CU(cuEventRecord, events.stop, stream);
    MOEJIT_CU(cuEventSynchronize, events.stop);
    float t = 0.0f;
    MOEJIT_CU(cuEventElapsedTime, &t, events.start, events.stop);
    if (i >= 3) ms.push_back(t);
  }
  MOEJIT_CU(cuStreamSynchronize, stream);
  cuda::driver().cuStreamDestroy(stream);
  double median_ms = make_samples(std::move(ms)).median();
  return 2.0 * static_cast<double>(bytes) / (median_ms * 1e-3);
}

L2Flusher::L2Flusher() {
  bytes_ = std::max<std::int64_t>(2 * device_l2_bytes(), 64 << 20);
  CUdeviceptr p = 0;
  MOEJIT_CU(cuMemAlloc, &p, static_cast<std::size_t>(bytes_));
  buffer_ = p;
}

L2Flusher::~L2Flusher() {
  if (buffer_) cuda::driver().cuMemFree(static_cast<CUdeviceptr>(buffer_));
}

void L2Flusher::flush() {
  // The legacy default stream, then a wait: the executor's stream starts
  // its next run only after this returns, outside its timed region.
  MOEJIT_CU(cuMemsetD8Async, static_cast<CUdeviceptr>(buffer_), static_cast<unsigned char>(++pass_), static_cast<std::size_t>(bytes_),
            nullptr);
  MOEJIT_CU(cuStreamSynchronize, nullptr);
}

// ---- timing ----

Samples make_samples(std::vector<double> ms) {
  std::sort(ms.begin(), ms.end());
  return Samples{std::move(ms)};
}

double Samples::quantile(double q) const {
  if (ms.empty()) return 0.0;
  auto index = static_cast<std::size_t>(std::llround(q * static_cast<double>(ms.size() - 1)));
  return ms[std::min(index, ms.size() - 1)];
}

double Samples::median() const {
  if (ms.empty()) return 0.0;
  std::size_t n = ms.size();
  return n % 2 ? ms[n / 2] : 0.5 * (ms[n / 2 - 1] + ms[n / 2]);
}

Samples time_runs(Executable& exe, const std::string& device, const TimingOptions& options) {
  const bool cuda = device == "cuda";
  std::vector<double> ms;
  for (int i = 0; i < options.warmup + options.runs; ++i) {
    const bool timed = i >= options.warmup;
    if (options.before_run) options.before_run(i);
    if (cuda && timed && options.flush) options.flush->flush();
    if (cuda) {
      exe.run();
      double t = cuda_last_run_ms(exe);  // waits for the run
      if (timed) ms.push_back(t);
    } else {
      auto start = std::chrono::steady_clock::now();
      exe.run();
      double t = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
      if (timed) ms.push_back(t);
    }
  }
  return make_samples(std::move(ms));
}

// ---- data ----

namespace {

std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Uniform in [-1, 1), never exactly 0 (the 24 high bits plus a half step).
float uniform_pm1(std::uint64_t seed, std::int64_t index) {
  std::uint64_t bits = splitmix64(seed * 0x2545F4914F6CDD1Dull + static_cast<std::uint64_t>(index));
  float u = (static_cast<float>(bits >> 40) + 0.5f) * (1.0f / 16777216.0f);  // (0, 1)
  return 2.0f * u - 1.0f;
}

}  // namespace

void fill_random(HostTensor& tensor, std::uint64_t seed, double stddev) {
  const float scale = static_cast<float>(stddev * std::sqrt(3.0));  // uniform [-a, a] has stddev a / sqrt(3)
  const std::int64_t n = tensor.numel();
  const DType dtype = tensor.dtype();
  if (dtype != DType::f32 && dtype != DType::bf16) {
    for (std::int64_t i = 0; i < n; ++i) tensor.set(i, scale * uniform_pm1(seed, i));
    return;
  }
  // f32 and bf16 (the expert weights of the large layer shapes: billions of
  // elements) on every core; the same values as set() would store.
  auto fill = [&](std::int64_t begin, std::int64_t end) {
    if (dtype == DType::f32) {
      float* data = tensor.values<float>().data();
      for (std::int64_t i = begin; i < end; ++i) data[i] = scale * uniform_pm1(seed, i);
    } else {
      std::uint16_t* data = tensor.values<std::uint16_t>().data();
      for (std::int64_t i = begin; i < end; ++i) data[i] = float_to_bf16(scale * uniform_pm1(seed, i));
    }
  };
  const std::int64_t threads = n < (1 << 20) ? 1 : std::max(1u, std::thread::hardware_concurrency());
  std::vector<std::thread> pool;
  for (std::int64_t t = 0; t < threads; ++t) pool.emplace_back(fill, n * t / threads, n * (t + 1) / threads);
  for (auto& th : pool) th.join();
}

// ---- report ----

namespace {

nlohmann::json to_json(const Field& field) {
  return std::visit([](const auto& v) { return nlohmann::json(v); }, field);
}

nlohmann::json to_json(const Record& record) {
  nlohmann::json object = nlohmann::json::object();
  for (const auto& [key, value] : record) {
    if (const double* d = std::get_if<double>(&value); d && !std::isfinite(*d)) {
      object[key] = nullptr;  // JSON has no NaN / infinity
    } else {
      object[key] = to_json(value);
    }
  }
  return object;
}

}  // namespace

JsonReport::JsonReport(std::string program) : program_(std::move(program)) {}

void JsonReport::meta(const std::string& key, Field value) { meta_.emplace_back(key, std::move(value)); }

void JsonReport::add(const std::string& section, Record record) {
  for (auto& [name, records] : sections_)
    if (name == section) {
      records.push_back(std::move(record));
      return;
    }
  sections_.push_back({section, {std::move(record)}});
}

void JsonReport::write(const std::string& path) const {
  nlohmann::json root = nlohmann::json::object();
  root["program"] = program_;
  root["meta"] = to_json(meta_);
  for (const auto& [name, records] : sections_) {
    nlohmann::json list = nlohmann::json::array();
    for (const auto& r : records) list.push_back(to_json(r));
    root[name] = std::move(list);
  }
  write_file_atomically(path, root.dump(2) + "\n", "--json");
}

std::string Table::str() const {
  std::vector<std::size_t> width(header_.size(), 0);
  auto fit = [&](const std::vector<std::string>& cells) {
    for (std::size_t i = 0; i < cells.size() && i < width.size(); ++i) width[i] = std::max(width[i], cells[i].size());
  };
  fit(header_);
  for (const auto& r : rows_) fit(r);
  auto line = [&](const std::vector<std::string>& cells) {
    std::string s;
    for (std::size_t i = 0; i < width.size(); ++i) {
      std::string cell = i < cells.size() ? cells[i] : "";
      s += i == 0 ? fmt::format("{:<{}}", cell, width[i]) : fmt::format(" | {:>{}}", cell, width[i]);
    }
    return s + "\n";
  };
  std::string out = line(header_);
  std::size_t total = 0;
  for (std::size_t w : width) total += w + 3;
  out += std::string(total > 3 ? total - 3 : 0, '-') + "\n";
  for (const auto& r : rows_) out += line(r);
  return out;
}

std::string fmt_num(double value, int significant) {
  if (!std::isfinite(value)) return value > 0 ? "inf" : "nan";
  if (value < 0) return "-";
  if (value == 0) return "0";
  if (value >= 1e6 || value < 1e-3) return fmt::format("{:.{}e}", value, std::max(significant - 1, 0));
  int digits = static_cast<int>(std::floor(std::log10(value))) + 1;  // digits before the point
  int decimals = std::max(significant - digits, 0);
  return fmt::format("{:.{}f}", value, decimals);
}

}  // namespace moejit::bench
