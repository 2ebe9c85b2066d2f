// What the benchmark programs of bench/ share: the device ceilings a floor is
// measured against, timing of one Executable (CUDA events, or the host clock
// on the CPU) with warm-up, an L2 flush between runs and the median, random
// inputs, the normalized error against a reference, a fixed-width table and a
// JSON report (written to a temporary name and renamed).
//
// Method (/work/.library/device/METHOD.md): count the floor (FLOPs and the
// fewest bytes), check against a reference before timing, time with events
// after warm-up, report medians.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "runtime/backend.h"
#include "runtime/host_tensor.h"
#include "runtime/tensor_compare.h"

namespace moejit::bench {

// ---- the device and its ceilings ----

// "cuda" when a GPU is usable, else "cpu"; *why says what cuda_available
// found. `wanted`: "auto" | "cuda" | "cpu" (moejit::Error when "cuda" and
// no GPU).
std::string pick_device(const std::string& wanted, std::string* why);

// One line naming the device: "NVIDIA H100 80GB HBM3 (sm_90a, 132 SMs, L2 50 MiB)"
// or "cpu (N threads)".
std::string device_description(const std::string& device);

// The rates a floor is turned into a time with. Each says where it comes
// from ("measured: ..." or "lead: ..."), printed beside the results.
struct Ceilings {
  double flops_per_s = 0.0;  // 0: unknown (floors shown without a time)
  double bytes_per_s = 0.0;
  std::string flops_source, bytes_source;
};

// Device-to-device copy rate of a `bytes`-byte buffer through cuMemcpyDtoDAsync,
// counting bytes read plus bytes written, median of `runs` after warm-up
// (CUDA events). Throws moejit::Error without a GPU.
double measure_copy_bytes_per_s(std::int64_t bytes, int runs = 20);

// Size of device 0's L2 cache in bytes (0 if unknown).
std::int64_t device_l2_bytes();

// Overwrites a device buffer of twice the L2 size (at least 64 MiB) and waits,
// so the next timed run starts with none of its inputs in L2. CUDA only.
class L2Flusher {
 public:
  L2Flusher();
  ~L2Flusher();
  L2Flusher(const L2Flusher&) = delete;
  L2Flusher& operator=(const L2Flusher&) = delete;
  void flush();
  std::int64_t bytes() const { return bytes_; }

 private:
  unsigned long long buffer_ = 0;  // CUdeviceptr
  std::int64_t bytes_ = 0;
  int pass_ = 0;
};

// ---- timing ----

struct Samples {
  std::vector<double> ms;  // sorted
  double median() const;
  double quantile(double q) const;  // nearest rank, q in [0, 1]
  double min() const { return ms.empty() ? 0.0 : ms.front(); }
  double max() const { return ms.empty() ? 0.0 : ms.back(); }
};
Samples make_samples(std::vector<double> ms);

struct TimingOptions {
  int warmup = 5;
  int runs = 20;
  L2Flusher* flush = nullptr;                  // CUDA: flush L2 before every timed run
  std::function<void(int run)> before_run;     // e.g. set a new "step"; not timed
};

// Times exe.run(): on "cuda" each run is bracketed by the executor's CUDA
// events (cuda_last_run_ms, which waits for the run); on "cpu" the host clock
// around run() (synchronous). Warm-up runs are not recorded.
Samples time_runs(Executable& exe, const std::string& device, const TimingOptions& options);

// ---- data ----

// Fills a float tensor with uniform values of mean 0 and standard deviation
// `stddev` (never zeros), from a seeded counter-based generator; fast enough
// for hundreds of millions of elements.
void fill_random(HostTensor& tensor, std::uint64_t seed, double stddev);

// normalized_error(got, reference) and tolerance(dtype, slack): the one
// definition the tests use too (runtime/tensor_compare.h).
using moejit::normalized_error;
using moejit::tolerance;

// ---- report ----

using Field = std::variant<std::int64_t, double, std::string, bool>;
using Record = std::vector<std::pair<std::string, Field>>;

// Collects records by section and writes them as JSON:
//   {"program": ..., "meta": {...}, "<section>": [ {..}, ... ], ...}
class JsonReport {
 public:
  explicit JsonReport(std::string program);
  void meta(const std::string& key, Field value);
  void add(const std::string& section, Record record);
  // Writes to `path` through a temporary file and a rename; throws
  // moejit::Error when the file cannot be written.
  void write(const std::string& path) const;

 private:
  std::string program_;
  Record meta_;
  std::vector<std::pair<std::string, std::vector<Record>>> sections_;
};

// A fixed-width text table: add rows of cells, then print with the column
// widths fitted to the contents.
class Table {
 public:
  explicit Table(std::vector<std::string> header) : header_(std::move(header)) {}
  void row(std::vector<std::string> cells) { rows_.push_back(std::move(cells)); }
  std::string str() const;

 private:
  std::vector<std::string> header_;
  std::vector<std::vector<std::string>> rows_;
};

// Number formatting for tables: "12.3", "0.0412", "1.2e+03"; "-" for a
// negative value (unknown).
std::string fmt_num(double value, int significant = 3);

}  // namespace moejit::bench
