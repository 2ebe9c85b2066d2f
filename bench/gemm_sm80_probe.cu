// The sm_80 tensor-core GEMM family (codegen/kernels/gemm_sm80.cuh) on its
// own, built by nvcc, beside the NVRTC path: correctness of every layout
// (K-/M-major A, K-/N-major B), with 16-byte rows (cp.async) and without
// (element loads), bf16 and f16, f32 / 16-bit / GELU epilogues, the batched, grouped (varlen rows, rows
// gathered through slots) and weight-gradient (varlen K) modes against a CPU
// reference on random data (shapes that are multiples of no tile, empty
// groups, one group taking every row, outputs poisoned with NaN first), then
// speed at 4096^3, 8192^3 and the example's shapes (CUDA events, 5 warm-ups,
// median of 20; each timed product also checked on 2000 sampled entries).
//
// compute_80 PTX, which the driver JIT-compiles on the H200 (what
// MOEJIT_ARCH=sm_80 runs), or sm_90 SASS of the same source:
//   nvcc -O3 -std=c++17 -gencode=arch=compute_80,code=compute_80 -I. -o gemm_sm80_probe bench/gemm_sm80_probe.cu
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90,code=sm_90 -I. -o gemm_sm80_probe_sm90 bench/gemm_sm80_probe.cu
//   ./gemm_sm80_probe [--quick]     # --quick: checks and 4096^3 only
//
// Exit code 1 if any check fails. Results: docs/cuda.md (the sm80 family).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "codegen/kernels/gemm_sm80.cuh"

using namespace moejit::sm80;
#define CK(x)                                                                                \
  do {                                                                                       \
    cudaError_t e = (x);                                                                     \
    if (e != cudaSuccess) {                                                                  \
      printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e), __FILE__, __LINE__);        \
      exit(1);                                                                               \
    }                                                                                        \
  } while (0)

static unsigned short f2bf(float f) {
  unsigned u;
  memcpy(&u, &f, 4);
  u += 0x7FFF + ((u >> 16) & 1);
  return (unsigned short)(u >> 16);
}
static float bf2f(unsigned short b) {
  unsigned u = (unsigned)b << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
static unsigned short f2h(float f) { return __half_as_ushort(__float2half_rn(f)); }
static float h2f(unsigned short h) { return __half2float(__ushort_as_half(h)); }

static std::mt19937 rng(1234);

// Random 16-bit values (and their floats, for the reference).
struct Operand {
  std::vector<unsigned short> bits;
  std::vector<float> values;
  unsigned short* device = nullptr;
  Operand(size_t n, bool f16) : bits(n), values(n) {
    std::normal_distribution<float> d(0.0f, 1.0f);
    for (size_t i = 0; i < n; ++i) {
      bits[i] = f16 ? f2h(d(rng)) : f2bf(d(rng));
      values[i] = f16 ? h2f(bits[i]) : bf2f(bits[i]);
    }
    CK(cudaMalloc(&device, std::max<size_t>(n, 1) * 2));
    CK(cudaMemcpy(device, bits.data(), n * 2, cudaMemcpyHostToDevice));
  }
  ~Operand() { cudaFree(device); }
};

template <class T, int BN, int STAGES, bool AK, bool BK, bool VEC, class Epi>
float launch(const GemmArgs& args, long long tile_bound, int sms, int reps = 1) {
  auto kernel = gemm_sm80_kernel<T, 128, BN, 32, STAGES, AK, BK, VEC, Epi>;
  const bool grouped = args.group_offsets && !args.varlen_k;
  const int smem = (int)smem_bytes(128, BN, 32, STAGES, args.groups, grouped);
  CK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  int per_sm = 0;
  CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads_for(128, BN), smem));
  const long long grid = std::max(1ll, std::min(tile_bound, (long long)sms * std::max(per_sm, 1)));
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  cudaEventRecord(e0);
  for (int i = 0; i < reps; ++i) kernel<<<(unsigned)grid, threads_for(128, BN), smem>>>(args);
  cudaEventRecord(e1);
  CK(cudaGetLastError());
  CK(cudaEventSynchronize(e1));
  float ms = 0;
  cudaEventElapsedTime(&ms, e0, e1);
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return ms / reps;
}

static int failures = 0;

// Compares the device output (f32 or 16-bit) with a reference; entries the
// reference marks NaN must still hold the poison (unwritten rows).
static void report(const char* what, const std::vector<float>& got, const std::vector<double>& want, double tol) {
  double num = 0, den = 0;
  long long bad = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (std::isnan(want[i])) {
      if (!std::isnan(got[i])) ++bad;
      continue;
    }
    if (!std::isfinite(got[i])) {
      ++bad;
      continue;
    }
    num += (got[i] - want[i]) * (got[i] - want[i]);
    den += want[i] * want[i];
  }
  const double err = std::sqrt(num / std::max(den, 1e-30));
  const bool ok = bad == 0 && err <= tol;
  if (!ok) ++failures;
  printf("%s %-70s rel err %.2e (tol %.0e), bad entries %lld\n", ok ? "ok  " : "FAIL", what, err, tol, bad);
}

static std::vector<float> download(const void* c, size_t n, bool f32, bool f16) {
  std::vector<float> out(n);
  if (f32) {
    CK(cudaMemcpy(out.data(), c, n * 4, cudaMemcpyDeviceToHost));
  } else {
    std::vector<unsigned short> bits(n);
    CK(cudaMemcpy(bits.data(), c, n * 2, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < n; ++i) out[i] = f16 ? h2f(bits[i]) : bf2f(bits[i]);
  }
  return out;
}

// Batched: `groups` products [m x k] x [k x n], A per group, B per group or shared.
template <class T, int BN, int STAGES, bool AK, bool BK, bool VEC, bool F32OUT>
void check_batched(int groups, long long m, long long n, long long k, bool b_shared) {
  constexpr bool f16 = sizeof(T) == 2 && !std::is_same<T, mj::bf16_t>::value;
  Operand a(groups * m * k, f16), b((b_shared ? 1 : groups) * n * k, f16);
  const size_t c_elems = groups * m * n;
  void* c;
  CK(cudaMalloc(&c, c_elems * 4));
  CK(cudaMemset(c, 0xFF, c_elems * 4));
  GemmArgs args{};
  args.a = a.device;
  args.b = b.device;
  args.c = c;
  args.m = m;
  args.n = n;
  args.k = k;
  args.lda = AK ? k : m;
  args.ldb = BK ? k : n;
  args.ldc = n;
  args.a_group_stride = m * k;
  args.b_group_stride = b_shared ? 0 : n * k;
  args.c_group_stride = m * n;
  args.groups = groups;
  using Epi = typename std::conditional<F32OUT, StoreF32, Store16<T>>::type;
  if (VEC && (args.lda % 8 || args.ldb % 8)) {  // cp.async needs 16-byte rows: a wrong case, not a kernel error
    printf("FAIL probe case needs element loads (lda %lld, ldb %lld)\n", args.lda, args.ldb);
    ++failures;
    cudaFree(c);
    return;
  }
  launch<T, BN, STAGES, AK, BK, VEC, Epi>(args, groups * ((m + 127) / 128) * ((n + BN - 1) / BN), 132);
  std::vector<double> want(c_elems);
  for (int g = 0; g < groups; ++g)
    for (long long i = 0; i < m; ++i)
      for (long long j = 0; j < n; ++j) {
        double s = 0;
        const float* ap = a.values.data() + g * m * k;
        const float* bp = b.values.data() + (b_shared ? 0 : g * n * k);
        for (long long q = 0; q < k; ++q) s += (double)ap[AK ? i * k + q : q * m + i] * bp[BK ? j * k + q : q * n + j];
        want[(g * m + i) * n + j] = s;
      }
  char what[200];
  snprintf(what, sizeof what, "batched %s G%d %lldx%lldx%lld A %s B %s%s BN%d st%d %s out", f16 ? "f16" : "bf16", groups, m, n, k,
           AK ? "k-major" : "m-major", BK ? "k-major" : "n-major", b_shared ? " shared" : "", BN, STAGES, F32OUT ? "f32" : "16-bit");
  report(what, download(c, c_elems, F32OUT, f16), want, F32OUT ? 1e-5 : 1e-2);
  cudaFree(c);
}

// The GELU epilogue: c = gelu(a b), aux = a b, both bf16.
void check_gelu(long long m, long long n, long long k) {
  Operand a(m * k, false), b(n * k, false);
  unsigned short *c, *aux;
  CK(cudaMalloc(&c, m * n * 2));
  CK(cudaMalloc(&aux, m * n * 2));
  CK(cudaMemset(c, 0xFF, m * n * 2));
  CK(cudaMemset(aux, 0xFF, m * n * 2));
  GemmArgs args{};
  args.a = a.device;
  args.b = b.device;
  args.c = c;
  args.aux = aux;
  args.m = m;
  args.n = n;
  args.k = k;
  args.lda = k;
  args.ldb = n;
  args.ldc = n;
  args.groups = 1;
  launch<mj::bf16_t, 128, 4, true, false, true, StoreGelu16<mj::bf16_t>>(args, ((m + 127) / 128) * ((n + 127) / 128), 132);
  std::vector<double> pre(m * n), post(m * n);
  for (long long i = 0; i < m; ++i)
    for (long long j = 0; j < n; ++j) {
      double s = 0;
      for (long long q = 0; q < k; ++q) s += (double)a.values[i * k + q] * b.values[q * n + j];
      pre[i * n + j] = s;
      post[i * n + j] = 0.5 * s * (1.0 + std::tanh(0.7978845608028654 * (s + 0.044715 * s * s * s)));
    }
  char what[200];
  snprintf(what, sizeof what, "gelu epilogue %lldx%lldx%lld: gelu(a b)", m, n, k);
  report(what, download(c, m * n, false, false), post, 1e-2);
  snprintf(what, sizeof what, "gelu epilogue %lldx%lldx%lld: pre-activation", m, n, k);
  report(what, download(aux, m * n, false, false), pre, 1e-2);
  cudaFree(c);
  cudaFree(aux);
}

// Grouped: rows split by offsets (rows past the last offset unwritten), B[g]
// [k, n] or [n, k]; with `gather`, row i reads x[slots[i] / top_k] (a zero
// row where slots[i] < 0).
template <int BN, bool BK, bool VEC>
void check_grouped(long long rows, long long k, long long n, std::vector<int> offsets, bool gather) {
  const int groups = (int)offsets.size() - 1, top_k = 2;
  const long long tokens = rows / top_k + 1;
  Operand x((gather ? tokens : rows) * k, false), w(groups * n * k, false);
  std::vector<int> slots(rows);
  for (long long i = 0; i < rows; ++i) slots[i] = (i % 17 == 5) ? -1 : (int)(rng() % (tokens * top_k));
  int *d_offsets, *d_slots;
  CK(cudaMalloc(&d_offsets, offsets.size() * 4));
  CK(cudaMalloc(&d_slots, rows * 4));
  CK(cudaMemcpy(d_offsets, offsets.data(), offsets.size() * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(d_slots, slots.data(), rows * 4, cudaMemcpyHostToDevice));
  void* c;
  CK(cudaMalloc(&c, rows * n * 2));
  CK(cudaMemset(c, 0xFF, rows * n * 2));
  GemmArgs args{};
  args.a = x.device;
  args.b = w.device;
  args.c = c;
  args.group_offsets = d_offsets;
  args.a_rows = gather ? d_slots : nullptr;
  args.a_row_div = top_k;
  args.m = rows;
  args.n = n;
  args.k = k;
  args.lda = k;
  args.ldb = BK ? k : n;
  args.ldc = n;
  args.b_group_stride = n * k;
  args.groups = groups;
  launch<mj::bf16_t, BN, 4, true, BK, VEC, Store16<mj::bf16_t>>(args, ((rows + 127) / 128 + groups) * ((n + BN - 1) / BN), 132);
  std::vector<double> want(rows * n, NAN);
  for (int g = 0; g < groups; ++g)
    for (long long i = offsets[g]; i < offsets[g + 1]; ++i) {
      const float* xr = nullptr;
      if (!gather) xr = x.values.data() + i * k;
      else if (slots[i] >= 0) xr = x.values.data() + (long long)(slots[i] / top_k) * k;
      for (long long j = 0; j < n; ++j) {
        double s = 0;
        if (xr)
          for (long long q = 0; q < k; ++q) s += (double)xr[q] * w.values[g * n * k + (BK ? j * k + q : q * n + j)];
        want[i * n + j] = s;
      }
    }
  char what[200];
  snprintf(what, sizeof what, "grouped%s rows %lld %lldx%lld E%d B %s BN%d%s", gather ? " gather" : "", rows, k, n, groups,
           BK ? "k-major" : "n-major", BN, VEC ? "" : " element loads");
  report(what, download(c, rows * n, false, false), want, 1e-2);
  cudaFree(c);
  cudaFree(d_offsets);
  cudaFree(d_slots);
}

// Weight gradient: dw[g] = xs[seg g]^T dys[seg g], f32 out (empty groups give 0).
template <bool VEC> void check_wgrad(long long rows, long long d, long long f, std::vector<int> offsets) {
  const int groups = (int)offsets.size() - 1;
  Operand xs(rows * d, false), dys(rows * f, false);
  int* d_offsets;
  CK(cudaMalloc(&d_offsets, offsets.size() * 4));
  CK(cudaMemcpy(d_offsets, offsets.data(), offsets.size() * 4, cudaMemcpyHostToDevice));
  float* c;
  CK(cudaMalloc(&c, groups * d * f * 4));
  CK(cudaMemset(c, 0xFF, groups * d * f * 4));
  GemmArgs args{};
  args.a = xs.device;
  args.b = dys.device;
  args.c = c;
  args.group_offsets = d_offsets;
  args.varlen_k = 1;
  args.m = d;
  args.n = f;
  args.k = rows;
  args.lda = d;
  args.ldb = f;
  args.ldc = f;
  args.c_group_stride = d * f;
  args.groups = groups;
  launch<mj::bf16_t, 128, 4, false, false, VEC, StoreF32>(args, groups * ((d + 127) / 128) * ((f + 127) / 128), 132);
  std::vector<double> want(groups * d * f, 0.0);
  for (int g = 0; g < groups; ++g)
    for (long long r = offsets[g]; r < offsets[g + 1]; ++r)
      for (long long i = 0; i < d; ++i) {
        const double xv = xs.values[r * d + i];
        for (long long j = 0; j < f; ++j) want[(g * d + i) * f + j] += xv * dys.values[r * f + j];
      }
  char what[200];
  snprintf(what, sizeof what, "wgrad rows %lld D%lld F%lld E%d%s", rows, d, f, groups, VEC ? "" : " element loads");
  report(what, download(c, groups * d * f, true, false), want, 1e-5);
  cudaFree(c);
  cudaFree(d_offsets);
}

// m x n x k, A K-major, B N-major (row-major weight) or K-major, bf16 out.
template <int BN, int STAGES, bool BK>
void bench(long long m, long long n, long long k, int sms) {
  Operand a(m * k, false), b(n * k, false);
  unsigned short* c;
  CK(cudaMalloc(&c, m * n * 2));
  GemmArgs args{};
  args.a = a.device;
  args.b = b.device;
  args.c = c;
  args.m = m;
  args.n = n;
  args.k = k;
  args.lda = k;
  args.ldb = BK ? k : n;
  args.ldc = n;
  args.groups = 1;
  const long long tiles = ((m + 127) / 128) * ((n + BN - 1) / BN);
  using Epi = Store16<mj::bf16_t>;
  launch<mj::bf16_t, BN, STAGES, true, BK, true, Epi>(args, tiles, sms, 5);
  std::vector<float> times;
  for (int i = 0; i < 20; ++i) times.push_back(launch<mj::bf16_t, BN, STAGES, true, BK, true, Epi>(args, tiles, sms));
  std::sort(times.begin(), times.end());
  const double ms = times[times.size() / 2];
  // 2000 sampled entries against the CPU.
  std::vector<unsigned short> got(m * n);
  CK(cudaMemcpy(got.data(), c, m * n * 2, cudaMemcpyDeviceToHost));
  double num = 0, den = 0;
  for (int s = 0; s < 2000; ++s) {
    const long long i = rng() % m, j = rng() % n;
    double want = 0;
    for (long long q = 0; q < k; ++q) want += (double)a.values[i * k + q] * b.values[BK ? j * k + q : q * n + j];
    const double g = bf2f(got[i * n + j]);
    num += (g - want) * (g - want);
    den += want * want;
  }
  const double err = std::sqrt(num / den);
  if (!(err < 1e-2)) ++failures;
  printf("bench %5lldx%5lldx%5lld B %s BN%d st%d: %.3f ms, %.1f TFLOP/s (sampled rel err %.1e)\n", m, n, k, BK ? "k-major" : "n-major",
         BN, STAGES, ms, 2.0 * m * n * k / ms / 1e9, err);
  cudaFree(c);
}

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::string(argv[1]) == "--quick";
  int sms = 0, cc_major = 0, cc_minor = 0;
  CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  CK(cudaDeviceGetAttribute(&cc_major, cudaDevAttrComputeCapabilityMajor, 0));
  CK(cudaDeviceGetAttribute(&cc_minor, cudaDevAttrComputeCapabilityMinor, 0));
  cudaFuncAttributes attr{};
  CK(cudaFuncGetAttributes(&attr, gemm_sm80_kernel<mj::bf16_t, 128, 128, 32, 4, true, false, true, Store16<mj::bf16_t>>));
  printf("device sm_%d%d, %d SMs; kernel 128x128x32 st4 (A k, B n): %d registers, %zu bytes local, binary sm_%d, ptx %d\n", cc_major,
         cc_minor, sms, attr.numRegs, attr.localSizeBytes, attr.binaryVersion, attr.ptxVersion);
  using bf = mj::bf16_t;
  using hf = mj::f16_t;
  check_batched<bf, 128, 4, true, false, true, false>(1, 300, 200, 136, true);
  check_batched<bf, 128, 4, true, true, true, true>(1, 1000, 712, 520, true);
  check_batched<bf, 128, 4, false, false, true, true>(1, 1000, 712, 520, true);
  check_batched<bf, 128, 4, false, true, true, false>(1, 256, 256, 1024, true);
  check_batched<bf, 128, 3, true, false, true, true>(3, 200, 136, 72, true);
  check_batched<bf, 128, 4, true, false, true, true>(3, 200, 136, 72, false);
  check_batched<bf, 128, 2, false, false, true, true>(2, 136, 200, 64, false);
  check_batched<hf, 128, 4, true, false, true, true>(1, 333, 264, 200, true);
  check_batched<hf, 128, 4, false, true, false, false>(2, 130, 40, 96, false);  // A rows of 130 elements
  // rows whose byte length is no multiple of 16: element loads
  check_batched<bf, 128, 4, true, false, false, true>(1, 301, 203, 137, true);
  check_batched<bf, 128, 4, false, true, false, true>(1, 77, 65, 19, true);
  check_batched<bf, 128, 3, true, true, false, false>(2, 33, 7, 5, false);
  check_gelu(300, 203, 136);
  check_grouped<128, false, true>(1000, 384, 512, {0, 0, 300, 301, 301, 700, 1000, 1000, 1000}, false);
  check_grouped<128, true, true>(1000, 384, 512, {0, 0, 1000, 1000, 1000}, false);
  check_grouped<128, false, true>(777, 136, 200, {0, 777}, false);
  check_grouped<128, false, true>(1000, 384, 512, {0, 100, 200, 995}, false);
  check_grouped<128, true, true>(3001, 256, 1536, {0, 128, 384, 1500, 1501, 2900, 3001}, false);
  check_grouped<128, false, true>(1000, 384, 512, {0, 0, 300, 301, 301, 700, 990, 990, 990}, true);
  check_grouped<128, false, false>(500, 130, 75, {0, 0, 123, 400, 500}, true);
  check_wgrad<true>(1000, 384, 512, {0, 0, 300, 301, 301, 700, 1000, 1000, 1000});
  check_wgrad<true>(777, 136, 200, {0, 777});
  check_wgrad<false>(501, 130, 75, {0, 0, 250, 501});
  printf("checks failed: %d\n", failures);
  bench<128, 4, false>(4096, 4096, 4096, sms);
  bench<128, 4, true>(4096, 4096, 4096, sms);
  if (!quick) {
    bench<128, 3, false>(4096, 4096, 4096, sms);
    bench<128, 4, false>(8192, 8192, 8192, sms);
    bench<128, 4, true>(8192, 8192, 8192, sms);
    // the example-sized products (16384 tokens, D 384, F 1536, top-2: 32768 rows)
    bench<128, 4, false>(32768, 1536, 384, sms);
    bench<128, 4, false>(32768, 384, 1536, sms);
    bench<128, 4, true>(32768, 1536, 384, sms);
    bench<128, 4, false>(16384, 384, 384, sms);
    bench<128, 4, false>(16384, 1152, 384, sms);
  }
  printf("failures: %d\n", failures);
  return failures ? 1 : 0;
}
