// The fused router's kernels (codegen/kernels/moe.cuh) on their own, built
// by nvcc: route_kernel (router product + gate + per-tile counts) and
// dispatch's scan and scatter, at the shapes of config B and moe_bench,
// beside the kernels they replaced (route_kernel_v0 below: the 2026-12-02
// fused router, a warp per token in the gate, x staged through registers;
// then dispatch_scan + dispatch_scatter). Every new configuration's outputs
// (logits, weights, experts, slots, offsets, positions, counts) must equal
// the old kernels' bit for bit on random data. Then speed: CUDA events, 5
// warm-ups, median of 20, each run after a 2x-L2 flush; each kernel alone
// and the chain. Also the router's weight gradient x^T dlogits
// (matmul_split_k_narrow_kernel) at several splits, with the thread- and
// the warp-per-output finish.
//
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -I. -o route_probe bench/route_probe.cu
//   ./route_probe            # checks, then timings
//   ncu -k regex:route ./route_probe --ncu   # config B's chains once, for a profiler
//
// Exit code 1 if any check fails. Results: docs/perf.md.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "codegen/kernels/matmul.cuh"
#include "codegen/kernels/moe.cuh"

#define CK(x)                                                                  \
  do {                                                                         \
    cudaError_t e = (x);                                                       \
    if (e != cudaSuccess) {                                                    \
      printf("CUDA %s at %s:%d\n", cudaGetErrorString(e), __FILE__, __LINE__); \
      exit(1);                                                                 \
    }                                                                          \
  } while (0)

using mj::bf16_t;
using mj::i64;

namespace mj {
// The fused router as it was (main 675c94e), for comparison.
template <class T> __device__ __forceinline__ float4 route_load4_v0(const T* p, i64 k, i64 end, bool vec) {
  float4 v;
  if (vec && k + 4 <= end) {
    load4_raw(p + k, v);
    return v;
  }
  v.x = k < end ? (float)ld(p[k]) : 0.0f;
  v.y = k + 1 < end ? (float)ld(p[k + 1]) : 0.0f;
  v.z = k + 2 < end ? (float)ld(p[k + 2]) : 0.0f;
  v.w = k + 3 < end ? (float)ld(p[k + 3]) : 0.0f;
  return v;
}

template <class T, int EP, int TN, int TM, int THREADS> __global__ void __launch_bounds__(THREADS) route_kernel_v0(const RouteArgs<T> a) {
  constexpr int BK = EP <= 32 ? 64 : 32;
  constexpr int TE = EP / TN, TR = THREADS / TE, BM = TR * TM;
  constexpr int XS = BM + 4;
  constexpr int LS = EP + 1;
  constexpr int STAGE = BK * XS + BK * EP, TILE = BM * LS;
  constexpr int FLOATS = STAGE > TILE ? STAGE : TILE;
  constexpr int XLOADS = BM * BK / 4 / THREADS;
  constexpr int WLOADS = BK * EP / THREADS;
  constexpr int KPL = (EP + 31) / 32;
  __shared__ __align__(16) float smem[FLOATS];
  __shared__ int hist[EP];
  float* xs = smem;
  float* ws = smem + BK * XS;
  float* ls = smem;
  const int tid = threadIdx.x, te = tid % TE, tr = tid / TE;
  MOEJIT_FOR_EACH(i, a.rows) a.slots[i] = -1;
  for (int e = tid; e < EP; e += THREADS) hist[e] = 0;
  const i64 m0 = (i64)blockIdx.x * BM;
  const bool vec = a.D % 4 == 0 && ((unsigned long long)a.x % (4 * sizeof(T))) == 0;
  float4 xr[XLOADS];
  float wr[WLOADS];
  auto fetch = [&](i64 k0) {
#pragma unroll
    for (int i = 0; i < XLOADS; ++i) {
      int g = tid + THREADS * i, mm = g / (BK / 4), kq = g % (BK / 4);
      i64 m = m0 + mm;
      xr[i] = m < a.tokens ? route_load4_v0(a.x + m * a.D, k0 + kq * 4, a.D, vec) : make_float4(0.f, 0.f, 0.f, 0.f);
    }
#pragma unroll
    for (int i = 0; i < WLOADS; ++i) {
      int g = tid + THREADS * i, kk = g / EP, e = g % EP;
      i64 k = k0 + kk;
      wr[i] = k < a.D && e < a.E ? (float)ld(a.w[k * a.E + e]) : 0.0f;
    }
  };
  float acc[TM][TN];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;
  fetch(0);
  for (i64 k0 = 0; k0 < a.D; k0 += BK) {
#pragma unroll
    for (int i = 0; i < XLOADS; ++i) {
      int g = tid + THREADS * i, mm = g / (BK / 4), kq = g % (BK / 4);
      xs[(kq * 4 + 0) * XS + mm] = xr[i].x;
      xs[(kq * 4 + 1) * XS + mm] = xr[i].y;
      xs[(kq * 4 + 2) * XS + mm] = xr[i].z;
      xs[(kq * 4 + 3) * XS + mm] = xr[i].w;
    }
#pragma unroll
    for (int i = 0; i < WLOADS; ++i) ws[tid + THREADS * i] = wr[i];
    __syncthreads();
    if (k0 + BK < a.D) fetch(k0 + BK);
#pragma unroll 8
    for (int kk = 0; kk < BK; ++kk) {
      float xv[TM], wv[TN];
      shared_row<TM>(xs + kk * XS + tr * TM, xv);
      shared_row<TN>(ws + kk * EP + te * TN, wv);
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] += xv[i] * wv[j];
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) ls[(tr * TM + i) * LS + te * TN + j] = (float)ld(st<T>(acc[i][j]));
  __syncthreads();
  const int valid = a.tokens - m0 < BM ? (int)(a.tokens - m0) : BM;
  for (int i = tid; i < valid * a.E; i += THREADS) a.logits[m0 * a.E + i] = st<T>(ls[(i / a.E) * LS + i % a.E]);
  for (int r = tid >> 5; r < valid; r += THREADS / 32) {
    const i64 t = m0 + r;
    gate_token<KPL>(ls + r * LS, a.bias, a.E, a.K, a.softmax_score, a.score_first, a.normalize, a.experts + t * a.K, a.weights + t * a.K,
                    hist);
  }
  __syncthreads();
  for (int e = tid; e < a.E; e += THREADS) a.ranks[(i64)e * a.tiles + blockIdx.x] = hist[e];
}
}  // namespace mj

static unsigned short f2bf(float f) {
  unsigned u;
  memcpy(&u, &f, 4);
  u += 0x7FFF + ((u >> 16) & 1);
  return (unsigned short)(u >> 16);
}

struct Timer {
  cudaEvent_t a, b;
  Timer() {
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
  }
};

static char* flush_buf = nullptr;
static size_t flush_bytes = 0;
static void flush_l2() { CK(cudaMemsetAsync(flush_buf, 1, flush_bytes)); }

// Median of `runs` timings (us) of f after `warmup` runs, each after an L2 flush.
static double time_us(const std::function<void()>& f, int warmup = 5, int runs = 20) {
  static Timer t;
  for (int i = 0; i < warmup; ++i) f();
  CK(cudaDeviceSynchronize());  // a failing warm-up run is reported here
  std::vector<float> ms;
  for (int i = 0; i < runs; ++i) {
    flush_l2();
    if (i == 0) CK(cudaDeviceSynchronize());  // and a failing flush here
    CK(cudaEventRecord(t.a));
    f();
    CK(cudaEventRecord(t.b));
    CK(cudaEventSynchronize(t.b));
    float m = 0;
    CK(cudaEventElapsedTime(&m, t.a, t.b));
    ms.push_back(m);
  }
  CK(cudaGetLastError());
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2] * 1000.0;
}

struct Case {
  const char* name;
  i64 T, D;
  int E, K;
  bool bf16 = false;
  int softmax_score = 1, score_first = 1, normalize = 1;
  bool bias = false;
  double cf = 0.0;
  i64 block = 1;
  bool time = true;
};

static i64 capacity_of(const Case& c) {
  if (c.cf <= 0) return c.T * c.K;
  double v = std::ceil(c.cf * (double)(c.T * c.K) / c.E);
  if (!(v < (double)(c.T * c.K))) return c.T * c.K;
  return std::max<i64>((i64)v, 1);
}
static i64 rows_of(const Case& c) {
  i64 kept = c.T * c.K;
  if (c.cf > 0) kept = std::min(kept, (i64)c.E * capacity_of(c));
  if (c.block <= 1) return kept;
  i64 bound = kept + c.E * (c.block - 1);
  return (bound + c.block - 1) / c.block * c.block;
}

struct Outputs {
  std::vector<unsigned char> logits, weights;
  std::vector<int> experts, slots, offsets, positions, counts;
};

struct Buffers {
  void *x, *w, *bias, *logits, *weights;
  int *experts, *ranks, *slots, *offsets, *positions, *counts;
};

static int failures = 0;

template <class T> struct Runner {
  Case c;
  Buffers b{};
  i64 rows = 0, capacity = 0;
  int es = sizeof(T);

  explicit Runner(const Case& cs) : c(cs) {
    rows = rows_of(c);
    capacity = capacity_of(c);
    std::mt19937 rng(1234 + (unsigned)c.T + 7 * c.E);
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    auto upload = [&](i64 n, float scale) {
      void* d = nullptr;
      CK(cudaMalloc(&d, n * es));
      if (es == 4) {
        std::vector<float> h(n);
        for (auto& v : h) v = u(rng) * scale;
        CK(cudaMemcpy(d, h.data(), n * 4, cudaMemcpyHostToDevice));
      } else {
        std::vector<unsigned short> h(n);
        for (auto& v : h) v = f2bf(u(rng) * scale);
        CK(cudaMemcpy(d, h.data(), n * 2, cudaMemcpyHostToDevice));
      }
      return d;
    };
    b.x = upload(c.T * c.D, 1.0f);
    b.w = upload(c.D * c.E, 1.0f / std::sqrt((float)c.D));
    b.bias = c.bias ? upload(c.E, 0.1f) : nullptr;
    CK(cudaMalloc(&b.logits, c.T * c.E * es));
    CK(cudaMalloc(&b.weights, c.T * c.K * es));
    CK(cudaMalloc(&b.experts, c.T * c.K * 4));
    CK(cudaMalloc(&b.ranks, (size_t)c.E * (c.T + 1) * 4));
    CK(cudaMalloc(&b.slots, rows * 4));
    CK(cudaMalloc(&b.offsets, (c.E + 1) * 4));
    CK(cudaMalloc(&b.positions, c.T * c.K * 4));
    CK(cudaMalloc(&b.counts, c.E * 4));
  }
  void poison() {
    CK(cudaMemset(b.logits, 0xff, c.T * c.E * es));
    CK(cudaMemset(b.weights, 0xff, c.T * c.K * es));
    CK(cudaMemset(b.experts, 0xff, c.T * c.K * 4));
    CK(cudaMemset(b.slots, 0x7f, rows * 4));
    CK(cudaMemset(b.offsets, 0x7f, (c.E + 1) * 4));
    CK(cudaMemset(b.positions, 0x7f, c.T * c.K * 4));
    CK(cudaMemset(b.counts, 0x7f, c.E * 4));
  }
  Outputs read() {
    Outputs o;
    auto get = [](auto& v, const void* d, size_t n) {
      v.resize(n);
      CK(cudaMemcpy(v.data(), d, n * sizeof(v[0]), cudaMemcpyDeviceToHost));
    };
    get(o.logits, b.logits, c.T * c.E * es);
    get(o.weights, b.weights, c.T * c.K * es);
    get(o.experts, b.experts, c.T * c.K);
    get(o.slots, b.slots, rows);
    get(o.offsets, b.offsets, c.E + 1);
    get(o.positions, b.positions, c.T * c.K);
    get(o.counts, b.counts, c.E);
    return o;
  }
  mj::RouteArgs<T> args(i64 tiles) {
    mj::RouteArgs<T> a{};
    a.x = (const T*)b.x;
    a.w = (const T*)b.w;
    a.bias = (const T*)b.bias;
    a.logits = (T*)b.logits;
    a.weights = (T*)b.weights;
    a.experts = b.experts;
    a.ranks = b.ranks;
    a.slots = b.slots;
    a.tokens = c.T;
    a.D = c.D;
    a.rows = rows;
    a.tiles = tiles;
    a.E = c.E;
    a.K = c.K;
    a.softmax_score = c.softmax_score;
    a.score_first = c.score_first;
    a.normalize = c.normalize;
    return a;
  }
  void scan(i64 tiles) {
    mj::DispatchScanArgs s{};
    s.ranks = b.ranks;
    s.offsets = b.offsets;
    s.counts = b.counts;
    s.E = c.E;
    s.tiles = tiles;
    s.capacity = capacity;
    s.block = c.block;
    mj::dispatch_scan_kernel<1024><<<1, 1024>>>(s);
  }
  void scatter(i64 tile, i64 tiles) {
    mj::DispatchScatterArgs s{};
    s.experts = b.experts;
    s.ranks = b.ranks;
    s.offsets = b.offsets;
    s.slots = b.slots;
    s.positions = b.positions;
    s.num_slots = c.T * c.K;
    s.E = c.E;
    s.capacity = capacity;
    s.tile = tile;
    s.tiles = tiles;
    mj::dispatch_scatter_kernel<256><<<(unsigned)std::max<i64>((tiles * 32 + 255) / 256, 1), 256>>>(s);
  }
  void scan_scatter(i64 tile, i64 tiles) {
    mj::DispatchScanScatterArgs s{};
    s.experts = b.experts;
    s.ranks = b.ranks;
    s.offsets = b.offsets;
    s.counts = b.counts;
    s.slots = b.slots;
    s.positions = b.positions;
    s.num_slots = c.T * c.K;
    s.E = c.E;
    s.capacity = capacity;
    s.block = c.block;
    s.tile = tile;
    s.tiles = tiles;
    constexpr int THREADS = 256;
    mj::dispatch_scan_scatter_kernel<THREADS><<<(unsigned)((tiles + THREADS / 32 - 1) / (THREADS / 32)), THREADS>>>(s);
  }
};

static std::string describe(const Outputs& a, const Outputs& b) {
  auto first = [](const auto& x, const auto& y) -> long {
    if (x.size() != y.size()) return -2;
    for (size_t i = 0; i < x.size(); ++i)
      if (x[i] != y[i]) return (long)i;
    return -1;
  };
  std::string out;
  auto one = [&](const char* n, long at) {
    if (at != -1) out += std::string(" ") + n + "@" + std::to_string(at);
  };
  one("logits", first(a.logits, b.logits));
  one("weights", first(a.weights, b.weights));
  one("experts", first(a.experts, b.experts));
  one("slots", first(a.slots, b.slots));
  one("offsets", first(a.offsets, b.offsets));
  one("positions", first(a.positions, b.positions));
  one("counts", first(a.counts, b.counts));
  return out;
}

// The old chain's configuration (the emitter's route_shape of main 675c94e).
template <class T, int EP> struct Old {
  static constexpr int TN = EP == 8 ? 1 : EP == 16 ? 2 : EP <= 64 ? 4 : 8;
  static constexpr int THREADS = EP <= 32 ? 128 : 256;
  static constexpr int BM = THREADS / (EP / TN) * 4;
};

template <class T, int EP, int TN, int TM, int THREADS, int BK, int STAGES> struct New {
  static constexpr mj::RouteLayout L{EP, TN, TM, THREADS, BK, STAGES, (int)sizeof(T)};
  static constexpr int BM = L.block_tokens();
  static std::string name() {
    char s[96];
    snprintf(s, sizeof s, "TN%d TM%d thr%d BK%d st%d (BM %d, %d B)", TN, TM, THREADS, BK, STAGES, BM, L.smem_bytes());
    return s;
  }
};

template <class T, int EP> struct Bench {
  Runner<T>& r;
  Outputs ref;
  double old_total = 0;

  void run_old() {
    using O = Old<T, EP>;
    const i64 tiles = std::max<i64>((r.c.T + O::BM - 1) / O::BM, 1);
    mj::route_kernel_v0<T, EP, O::TN, 4, O::THREADS><<<(unsigned)tiles, O::THREADS>>>(r.args(tiles));
    r.scan(tiles);
    r.scatter(O::BM * r.c.K, tiles);
  }
  void old() {
    using O = Old<T, EP>;
    const i64 tiles = std::max<i64>((r.c.T + O::BM - 1) / O::BM, 1);
    r.poison();
    run_old();
    CK(cudaDeviceSynchronize());
    ref = r.read();
    if (!r.c.time) return;
    old_total = time_us([&] { run_old(); });
    const double k = time_us([&] { mj::route_kernel_v0<T, EP, O::TN, 4, O::THREADS><<<(unsigned)tiles, O::THREADS>>>(r.args(tiles)); });
    const double sc = time_us([&] { r.scan(tiles); });
    const double st = time_us([&] { r.scatter(O::BM * r.c.K, tiles); });
    printf("  old   %-42s chain %7.1f us | route %7.1f  scan %5.1f  scatter %5.1f\n", "", old_total, k, sc, st);
  }
  template <int TN, int TM, int THREADS, int BK, int STAGES> void check(bool fused_scatter) {
    using N = New<T, EP, TN, TM, THREADS, BK, STAGES>;
    const i64 tiles = std::max<i64>((r.c.T + N::BM - 1) / N::BM, 1);
    auto route = [&] { mj::route_kernel<T, EP, TN, TM, THREADS, BK, STAGES><<<(unsigned)tiles, THREADS>>>(r.args(tiles)); };
    auto finish = [&] {
      if (fused_scatter) {
        r.scan_scatter(N::BM * r.c.K, tiles);
      } else {
        r.scan(tiles);
        r.scatter(N::BM * r.c.K, tiles);
      }
    };
    r.poison();
    route();
    finish();
    CK(cudaDeviceSynchronize());
    const std::string diff = describe(r.read(), ref);
    if (!diff.empty()) {
      ++failures;
      printf("  FAIL  %-42s differs from the old chain:%s\n", N::name().c_str(), diff.c_str());
      return;
    }
    if (!r.c.time) {
      printf("  ok    %s%s\n", N::name().c_str(), fused_scatter ? " +scan_scatter" : "");
      return;
    }
    const double total = time_us([&] {
      route();
      finish();
    });
    const double k = time_us(route);
    const double f = time_us(finish);
    printf("  new   %-42s chain %7.1f us | route %7.1f  %s %5.1f   (%.2fx)\n", N::name().c_str(), total, k,
           fused_scatter ? "scan_scatter" : "scan+scatter", f, old_total / total);
  }
};

static void header(const Case& c) {
  const double bytes = (double)c.T * c.D * (c.bf16 ? 2 : 4);
  printf("\n== %s: T%lld D%lld E%d K%d %s%s%s  (x: %.1f MB, %.1f us at 4.0 TB/s)\n", c.name, (long long)c.T, (long long)c.D, c.E, c.K,
         c.bf16 ? "bf16" : "f32", c.bias ? " bias" : "", c.cf > 0 ? " capacity" : "", bytes / 1e6, bytes / 4.0e6);
}

// Config B (and the moe_bench E8 shapes): EP 8.
template <class T> static void sweep_e8(const Case& c) {
  header(c);
  Runner<T> r(c);
  Bench<T, 8> b{r};
  b.old();
  b.template check<8, 1, 32, 64, 4>(false);
  b.template check<8, 1, 32, 64, 4>(true);
  if (!c.time) {
    b.template check<4, 1, 64, 64, 4>(true);
    b.template check<2, 2, 64, 32, 3>(true);
    b.template check<1, 4, 128, 64, 2>(true);
    return;
  }
  b.template check<8, 1, 32, 32, 4>(true);
  b.template check<8, 1, 32, 64, 3>(true);
  b.template check<8, 1, 32, 32, 8>(true);
  b.template check<8, 1, 64, 64, 2>(true);
  b.template check<8, 1, 64, 32, 4>(true);
  b.template check<8, 1, 64, 32, 3>(true);
  b.template check<8, 2, 32, 32, 4>(true);
  b.template check<4, 1, 64, 64, 4>(true);
  b.template check<4, 1, 64, 32, 4>(true);
  b.template check<4, 1, 128, 32, 4>(true);
  b.template check<4, 2, 64, 32, 4>(true);
  b.template check<2, 1, 128, 32, 4>(true);
  b.template check<1, 4, 128, 64, 2>(true);
}

template <class T> static void sweep_e64(const Case& c) {
  header(c);
  Runner<T> r(c);
  Bench<T, 64> b{r};
  b.old();
  b.template check<4, 4, 256, 32, 3>(false);
  b.template check<4, 4, 256, 32, 3>(true);
  b.template check<4, 4, 256, 32, 2>(false);
  b.template check<8, 4, 256, 16, 2>(false);
  b.template check<8, 4, 128, 32, 3>(false);
}

template <class T> static void sweep_e256(const Case& c) {
  header(c);
  Runner<T> r(c);
  Bench<T, 256> b{r};
  b.old();
  b.template check<8, 4, 256, 16, 3>(false);
  b.template check<8, 4, 256, 16, 2>(false);
}

template <class T> static void small_e(const Case& c) {
  header(c);
  Runner<T> r(c);
  if (c.E <= 8) {
    Bench<T, 8> b{r};
    b.old();
    b.template check<8, 1, 32, 64, 4>(true);
    b.template check<4, 1, 64, 32, 3>(false);
  } else if (c.E <= 16) {
    Bench<T, 16> b{r};
    b.old();
    b.template check<16, 1, 32, 32, 4>(true);
    b.template check<8, 1, 64, 32, 3>(false);
  } else {
    Bench<T, 32> b{r};
    b.old();
    b.template check<32, 1, 32, 32, 4>(true);
    b.template check<8, 1, 128, 32, 3>(false);
  }
}

// ---- the router's weight gradient: x^T dlogits ----
static void wgrad(i64 T, i64 D, int E) {
  printf("\n== router weight gradient: x^T dlogits, M %lld (D) N %d K %lld (tokens), f32  (x: %.1f MB, %.1f us at 4.0 TB/s)\n", (long long)D, E,
         (long long)T, T * D * 4 / 1e6, T * D * 4 / 4.0e6);
  std::mt19937 rng(99);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> hx(T * D), hg(T * E);
  for (auto& v : hx) v = u(rng);
  for (auto& v : hg) v = u(rng);
  float *x, *g, *c, *parts;
  CK(cudaMalloc(&x, T * D * 4));
  CK(cudaMalloc(&g, T * E * 4));
  CK(cudaMalloc(&c, D * E * 4));
  CK(cudaMalloc(&parts, 4096 * D * E * 4));
  CK(cudaMemcpy(x, hx.data(), T * D * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(g, hg.data(), T * E * 4, cudaMemcpyHostToDevice));
  std::vector<double> ref(D * E, 0.0);
  for (i64 t = 0; t < T; ++t)
    for (i64 d = 0; d < D; ++d)
      for (int e = 0; e < E; ++e) ref[d * E + e] += (double)hx[t * D + d] * hg[t * E + e];
  mj::MatmulSplitArgs<float> a{};
  a.a = x;
  a.b = g;
  a.c = c;
  a.partials = parts;
  a.M = D;
  a.N = E;
  a.K = T;
  a.a_sm = 1;
  a.a_sk = D;
  a.b_sk = E;
  a.b_sn = 1;
  a.batch = 1;
  constexpr int VEC = 4;
  const i64 m_blocks = (D + 32 * VEC - 1) / (32 * VEC);
  for (i64 chunk : {96LL, 128LL, 192LL, 256LL, 384LL, 512LL, 1024LL}) {
    a.chunk = chunk;
    a.split = (T + chunk - 1) / chunk;
    auto split = [&] { mj::matmul_split_k_narrow_kernel<float, 8, VEC, 256><<<dim3((unsigned)m_blocks, (unsigned)a.split, 1), 256>>>(a); };
    auto fin_thread = [&] { mj::matmul_split_k_finish_kernel<float, 256><<<(unsigned)((D * E + 255) / 256), 256>>>(a); };
    auto fin_warp = [&] {
      const i64 blocks = std::min<i64>((D * E * 32 + 255) / 256, 65535);
      mj::matmul_split_k_finish_warp_kernel<float, 256><<<(unsigned)blocks, 256>>>(a);
    };
    std::vector<float> got(D * E), again(D * E);
    double worst = 0, norm = 0;
    split();
    fin_warp();
    CK(cudaMemcpy(got.data(), c, D * E * 4, cudaMemcpyDeviceToHost));
    split();
    fin_warp();
    CK(cudaMemcpy(again.data(), c, D * E * 4, cudaMemcpyDeviceToHost));
    for (i64 i = 0; i < D * E; ++i) {
      worst = std::max(worst, std::fabs(got[i] - ref[i]));
      norm = std::max(norm, std::fabs(ref[i]));
    }
    const bool same = memcmp(got.data(), again.data(), D * E * 4) == 0;
    const bool ok = worst <= 1e-4 * std::max(norm, 1.0) && same;
    if (!ok) ++failures;
    const double ts = time_us(split), tt = time_us(fin_thread), tw = time_us(fin_warp);
    const double both = time_us([&] {
      split();
      fin_warp();
    });
    printf("  chunk %5lld split %4lld (%5lld blocks): split %6.1f us, finish thread %6.1f / warp %5.1f, split+warp %6.1f  %s (max err %.2g of %.3g%s)\n",
           (long long)chunk, (long long)a.split, (long long)(a.split * m_blocks), ts, tt, tw, both, ok ? "ok" : "FAIL", worst, norm,
           same ? ", repeatable" : ", NOT REPEATABLE");
  }
}

int main(int argc, char** argv) {
  // "--ncu": config B's old and new chains once each (no timing), for a profiler.
  const bool ncu = argc > 1 && std::string(argv[1]) == "--ncu";
  int dev = 0;
  cudaDeviceProp p{};
  CK(cudaGetDeviceProperties(&p, dev));
  printf("device: %s, %d SMs, L2 %d MB\n", p.name, p.multiProcessorCount, p.l2CacheSize >> 20);
  flush_bytes = 2 * (size_t)p.l2CacheSize;
  CK(cudaMalloc(&flush_buf, flush_bytes));

  if (ncu) {
    sweep_e8<float>({.name = "config B (for ncu)", .T = 16384, .D = 384, .E = 8, .K = 2, .time = false});
    return failures ? 1 : 0;
  }
  // Correctness over options (bit equality with the old chain), untimed.
  small_e<float>({.name = "odd sizes, D not a multiple of 4", .T = 1001, .D = 37, .E = 5, .K = 2, .bias = true, .time = false});
  small_e<float>({.name = "sigmoid, top-k first, capacity", .T = 777, .D = 96, .E = 8, .K = 3, .softmax_score = 0, .score_first = 0,
                  .cf = 1.25, .block = 4, .time = false});
  small_e<float>({.name = "softmax, top-k first, E16", .T = 515, .D = 130, .E = 13, .K = 4, .score_first = 0, .normalize = 0, .time = false});
  small_e<float>({.name = "E32 K8 bias", .T = 300, .D = 64, .E = 32, .K = 8, .bias = true, .time = false});
  small_e<bf16_t>({.name = "bf16 E20", .T = 999, .D = 200, .E = 20, .K = 2, .bf16 = true, .time = false});
  sweep_e8<float>({.name = "E8 options", .T = 4097, .D = 64, .E = 8, .K = 8, .time = false});

  // Config B's route (f32 router input), and the moe_bench shapes.
  sweep_e8<float>({.name = "config B", .T = 16384, .D = 384, .E = 8, .K = 2});
  sweep_e8<bf16_t>({.name = "config B in bf16", .T = 16384, .D = 384, .E = 8, .K = 2, .bf16 = true});
  sweep_e8<float>({.name = "moe_bench", .T = 4096, .D = 512, .E = 8, .K = 2});
  sweep_e8<float>({.name = "moe_bench", .T = 16384, .D = 1024, .E = 8, .K = 1});
  sweep_e64<float>({.name = "moe_bench", .T = 16384, .D = 1024, .E = 64, .K = 2});
  sweep_e64<float>({.name = "moe_bench", .T = 4096, .D = 1024, .E = 64, .K = 1});
  sweep_e256<float>({.name = "moe_bench", .T = 16384, .D = 1024, .E = 256, .K = 8});

  wgrad(16384, 384, 8);
  printf("\n%s\n", failures ? "route_probe: FAILED checks" : "route_probe: all checks passed");
  return failures ? 1 : 0;
}
