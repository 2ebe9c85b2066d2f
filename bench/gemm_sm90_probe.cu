// The Hopper GEMM family (codegen/kernels/gemm_sm90.cuh) on its own, built
// by nvcc, before and beside the NVRTC path: correctness of every layout
// (K-/M-major A, K-/N-major B), the batched, grouped (varlen rows) and
// weight-gradient (varlen K) modes and the epilogues (plain f32 / bf16
// stores, GELU keeping the pre-activation, GELU's backward reading it) against
// a naive f32 reference on random bf16 data (shapes that are multiples of no
// tile, empty groups, output poisoned with NaN first), then speed at 4096^3,
// 8192^3 and the example's shapes (CUDA events, 5 warm-ups, median of 30),
// and each epilogue against the plain bf16 store at the MoE layer's shapes.
//
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -I. -o gemm_sm90_probe \
//        bench/gemm_sm90_probe.cu -lcuda -L/usr/local/cuda/lib64/stubs
//   ./gemm_sm90_probe && python3 bench/torch_gemm.py   # torch.matmul in the same run
//   ./gemm_sm90_probe --overlap                        # the opt-in overlapped epilogue: checks, then timings
//
// Exit code 1 if any check fails. Results: docs/perf.md.
#include <cuda.h>
#include <cuda_runtime.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include <algorithm>
#include <random>
#include <cmath>
#include <string>
#include "codegen/kernels/gemm_sm90.cuh"

using namespace moejit::sm90;
#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("CUDA %s at %s:%d\n", cudaGetErrorString(e), __FILE__, __LINE__); exit(1);} } while (0)
#define CU(x) do { CUresult e = (x); if (e != CUDA_SUCCESS) { const char* s; cuGetErrorString(e, &s); printf("CU %s at %s:%d\n", s, __FILE__, __LINE__); exit(1);} } while (0)

static unsigned short f2bf(float f) { unsigned u; memcpy(&u, &f, 4); u += 0x7FFF + ((u >> 16) & 1); return u >> 16; }
static float bf2f(unsigned short b) { unsigned u = (unsigned)b << 16; float f; memcpy(&f, &u, 4); return f; }

// map over a [batch][outer][inner] bf16 array
static TmaDescriptor make_map(void* ptr, long long inner, long long outer, long long batch, long long outer_stride, long long batch_stride, int box_outer) {
  CUtensorMap m;
  cuuint64_t dims[3] = {(cuuint64_t)inner, (cuuint64_t)outer, (cuuint64_t)batch};
  cuuint64_t strides[2] = {(cuuint64_t)outer_stride * 2, (cuuint64_t)batch_stride * 2};
  cuuint32_t box[3] = {64, (cuuint32_t)box_outer, 1};
  cuuint32_t es[3] = {1, 1, 1};
  CU(cuTensorMapEncodeTiled(&m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, ptr, dims, strides, box, es, CU_TENSOR_MAP_INTERLEAVE_NONE,
                            CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE));
  TmaDescriptor d; memcpy(&d, &m, sizeof d); return d;
}

// reference: C[g][r][c] = sum_k A(g,r,k) B(g,k,c) with explicit strides
__global__ void ref_gemm(const unsigned short* A, const unsigned short* B, float* C, int G, int M, int N, int K,
                         long long a_sr, long long a_sk, long long a_sg, long long b_sk, long long b_sn, long long b_sg) {
  long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x;
  if (idx >= (long long)G * M * N) return;
  int g = idx / ((long long)M * N); int r = (idx / N) % M; int c = idx % N;
  float s = 0;
  for (int k = 0; k < K; ++k) {
    unsigned ua = (unsigned)A[g * a_sg + r * a_sr + k * a_sk] << 16, ub = (unsigned)B[g * b_sg + k * b_sk + c * b_sn] << 16;
    s += __uint_as_float(ua) * __uint_as_float(ub);
  }
  C[idx] = s;
}

template <int BN, int STAGES, bool AK, bool BK_, class Epi, bool OV = false>
void launch(const GemmArgs& args, int sms, cudaStream_t st = 0) {
  auto kern = gemm_sm90_kernel<128, BN, 64, STAGES, AK, BK_, Epi, OV>;
  long long smem = SmemLayout<128, BN, 64, STAGES>::bytes(args.groups);
  CK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  kern<<<sms, 384, smem, st>>>(args);
}

struct Problem { int G, M, N, K; bool ak, bk; bool grouped; };

static std::mt19937 rng(1234);
// Normal(0, 1) bf16 values: Box-Muller over splitmix64 (a few ns per value; the operands of the larger
// timings are hundreds of millions of elements), a new stream per call seeded from rng.
static std::vector<unsigned short> rand_bf(size_t n) {
  unsigned long long state = rng();
  auto next = [&] {
    unsigned long long z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  };
  std::vector<unsigned short> v(n);
  for (size_t i = 0; i < n; i += 2) {
    const unsigned long long bits = next();
    const float u1 = ((float)(bits >> 40) + 0.5f) * (1.0f / 16777216.0f), u2 = (float)((bits >> 16) & 0xFFFFFF) * (1.0f / 16777216.0f);
    const float r = std::sqrt(-2.0f * std::log(u1)), a = 6.2831853f * u2;
    v[i] = f2bf(r * std::cos(a));
    if (i + 1 < n) v[i + 1] = f2bf(r * std::sin(a));
  }
  return v;
}

template <int BN, int STAGES, bool AK, bool BK_, bool OV = false>
double check(int G, int M, int N, int K, bool grouped, int sms, int mode) {
  // mode 0: f32 out; 1: GELU (+ aux = the product); 2: bf16; 3: GELU backward (aux = x, read)
  const bool gelu = mode != 0;  // a bf16 output
  // grouped: G groups with random row counts summing to M (some empty); A is [M, K] rows
  std::vector<int> offs(G + 1, 0);
  int total_rows = grouped ? M : M;  // grouped: M = total rows
  if (grouped) {
    std::uniform_int_distribution<int> u(0, 3);
    std::vector<int> w(G); int sw = 0; for (auto& x : w) { x = u(rng); if (x == 3) x = 8; sw += x; }
    if (sw == 0) { w[0] = 1; sw = 1; }
    int acc = 0; for (int g = 0; g < G; ++g) { offs[g] = acc; acc += (int)((long long)M * w[g] / sw); } offs[G] = M;
  }
  int GA = grouped ? 1 : G;
  long long a_elems = (long long)GA * total_rows * K, b_elems = (long long)G * K * N;
  auto ha = rand_bf(a_elems), hb = rand_bf(b_elems);
  unsigned short *da, *db; float *dc, *dref; int* doff;
  CK(cudaMalloc(&da, a_elems * 2)); CK(cudaMalloc(&db, b_elems * 2));
  long long c_elems = (long long)GA * total_rows * N;
  CK(cudaMalloc(&dc, c_elems * 4)); CK(cudaMalloc(&dref, c_elems * 4)); CK(cudaMalloc(&doff, (G + 1) * 4));
  unsigned short* dcb; unsigned short* daux; CK(cudaMalloc(&dcb, c_elems * 2)); CK(cudaMalloc(&daux, c_elems * 2));
  CK(cudaMemcpy(da, ha.data(), a_elems * 2, cudaMemcpyHostToDevice)); CK(cudaMemcpy(db, hb.data(), b_elems * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(doff, offs.data(), (G + 1) * 4, cudaMemcpyHostToDevice));
  CK(cudaMemset(dc, 0xFF, c_elems * 4)); CK(cudaMemset(dcb, 0xFF, c_elems * 2)); CK(cudaMemset(daux, 0xFF, c_elems * 2));
  std::vector<unsigned short> hx;
  if (mode == 3) { hx = rand_bf(c_elems); CK(cudaMemcpy(daux, hx.data(), c_elems * 2, cudaMemcpyHostToDevice)); }
  GemmArgs args{};
  int rows = total_rows;
  // A: K-major [GA][rows][K]; M-major [GA][K][rows]
  if (AK) args.a = make_map(da, K, rows, GA, K, (long long)rows * K, 128);
  else args.a = make_map(da, rows, K, GA, rows, (long long)rows * K, 64);
  // B: K-major [G][N][K]; N-major [G][K][N]
  if (BK_) args.b = make_map(db, K, N, G, K, (long long)N * K, BN);
  else args.b = make_map(db, N, K, G, N, (long long)N * K, 64);
  args.c = gelu ? (void*)dcb : (void*)dc; args.aux = daux;
  args.group_offsets = grouped ? doff : nullptr;
  args.m = rows; args.n = N; args.k = K; args.ldc = N; args.c_group_stride = (long long)rows * N;
  args.groups = G; args.a_batched = grouped ? 0 : 1; args.b_batched = 1;
  if (N % 8 == 0) {  // TMA needs 16-byte rows; the other epilogues store from registers
    args.c_map = make_map(dcb, N, rows, GA, N, (long long)rows * N, 64);
    args.aux_map = make_map(daux, N, rows, GA, N, (long long)rows * N, 64);
  }
  if (mode == 1 && N % 8 == 0) launch<BN, STAGES, AK, BK_, StoreGeluBf16<true>, OV>(args, sms);
  else if (mode == 1) launch<BN, STAGES, AK, BK_, StoreGeluBf16<false>, OV>(args, sms);
  else if (mode == 3 && N % 8 == 0) launch<BN, STAGES, AK, BK_, StoreGeluGradBf16<true>, OV>(args, sms);
  else if (mode == 3) launch<BN, STAGES, AK, BK_, StoreGeluGradBf16<false>, OV>(args, sms);
  else if (mode == 2) launch<BN, STAGES, AK, BK_, StoreBf16, OV>(args, sms);
  else launch<BN, STAGES, AK, BK_, StoreF32, OV>(args, sms);
  CK(cudaGetLastError()); CK(cudaDeviceSynchronize());
  // reference per group
  if (!grouped) {
    long long a_sr = AK ? K : 1, a_sk = AK ? 1 : rows, b_sk = BK_ ? 1 : N, b_sn = BK_ ? K : 1;
    long long n = (long long)G * rows * N;
    ref_gemm<<<(n + 255) / 256, 256>>>(da, db, dref, G, rows, N, K, a_sr, a_sk, (long long)rows * K, b_sk, b_sn, (long long)N * K);
  } else {
    for (int g = 0; g < G; ++g) {
      int r = offs[g + 1] - offs[g]; if (!r) continue;
      long long a_sr = AK ? K : 1, a_sk = AK ? 1 : rows;
      const unsigned short* ab = da + (AK ? (long long)offs[g] * K : offs[g]);
      long long n = (long long)r * N;
      ref_gemm<<<(n + 255) / 256, 256>>>(ab, db + (long long)g * N * K, dref + (long long)offs[g] * N, 1, r, N, K, a_sr, a_sk, 0,
                                         BK_ ? 1 : N, BK_ ? K : 1, 0);
    }
  }
  CK(cudaGetLastError()); CK(cudaDeviceSynchronize());
  std::vector<float> ref(c_elems), got(c_elems); std::vector<unsigned short> gotb(c_elems), auxb(c_elems);
  CK(cudaMemcpy(ref.data(), dref, c_elems * 4, cudaMemcpyDeviceToHost));
  if (gelu) { CK(cudaMemcpy(gotb.data(), dcb, c_elems * 2, cudaMemcpyDeviceToHost)); CK(cudaMemcpy(auxb.data(), daux, c_elems * 2, cudaMemcpyDeviceToHost)); }
  else CK(cudaMemcpy(got.data(), dc, c_elems * 4, cudaMemcpyDeviceToHost));
  double num = 0, den = 0, aux_num = 0; long long bad = 0;
  const float c = 0.7978845608f;
  for (long long i = 0; i < c_elems; ++i) {
    float want = ref[i];
    float g = gelu ? bf2f(gotb[i]) : got[i];
    if (mode == 1) {  // aux holds the product (bf16), c its gelu
      float a = bf2f(auxb[i]);
      aux_num += (double)(a - want) * (a - want);
      if (!(a == a)) ++bad;
      want = 0.5f * want * (1.f + tanhf(c * (want + 0.044715f * want * want * want)));
    }
    if (mode == 3) {  // c = dy * gelu'(x), dy the product
      float x = bf2f(hx[i]), t = tanhf(c * (x + 0.044715f * x * x * x));
      want *= 0.5f * (1 + t) + 0.5f * x * (1 - t * t) * c * (1 + 3 * 0.044715f * x * x);
    }
    if (!(g == g)) { ++bad; continue; }
    num += (double)(g - want) * (g - want); den += (double)want * want;
  }
  if (mode == 1) {  // the pre-activation's error counts too (against the product's scale)
    double ref_den = 0;
    for (long long i = 0; i < c_elems; ++i) ref_den += (double)ref[i] * ref[i];
    num += aux_num * den / std::max(ref_den, 1e-30);
  }
  double err = std::sqrt(num / std::max(den, 1e-30));
  printf("check G%-3d M%-5d N%-5d K%-5d %s A%s B%s BN%d st%d%s %s: rel err %.2e, unwritten/NaN %lld\n", G, M, N, K,
         grouped ? "grouped" : "batched", AK ? "k" : "m", BK_ ? "k" : "n", BN, STAGES, OV ? " overlap" : "",
         mode == 1 ? "gelu" : mode == 2 ? "bf16" : mode == 3 ? "gelu_grad" : "f32", err, bad);
  cudaFree(da); cudaFree(db); cudaFree(dc); cudaFree(dref); cudaFree(doff); cudaFree(dcb); cudaFree(daux);
  return (bad == 0 && err < 1e-2) ? err : -1;
}


// weight-gradient form: dw[g] = xs[seg g]^T dys[seg g] (varlen K)
template <bool OV = false>
double check_wgrad(int G, int rows, int D, int F, int sms) {
  std::vector<int> offs(G + 1, 0);
  std::uniform_int_distribution<int> u(0, 3);
  std::vector<int> w(G); int sw = 0; for (auto& x : w) { x = u(rng); if (x == 3) x = 8; sw += x; }
  if (sw == 0) { w[0] = 1; sw = 1; }
  int acc = 0; for (int g = 0; g < G; ++g) { offs[g] = acc; acc += (int)((long long)rows * w[g] / sw); } offs[G] = rows;
  auto hx = rand_bf((size_t)rows * D), hy = rand_bf((size_t)rows * F);
  unsigned short *dx, *dy; float *dw, *dref; int* doff;
  long long c_e = (long long)G * D * F;
  CK(cudaMalloc(&dx, (size_t)rows * D * 2)); CK(cudaMalloc(&dy, (size_t)rows * F * 2)); CK(cudaMalloc(&dw, c_e * 4)); CK(cudaMalloc(&dref, c_e * 4));
  CK(cudaMalloc(&doff, (G + 1) * 4));
  CK(cudaMemcpy(dx, hx.data(), (size_t)rows * D * 2, cudaMemcpyHostToDevice)); CK(cudaMemcpy(dy, hy.data(), (size_t)rows * F * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(doff, offs.data(), (G + 1) * 4, cudaMemcpyHostToDevice)); CK(cudaMemset(dw, 0xFF, c_e * 4));
  GemmArgs args{};
  args.a = make_map(dx, D, rows, 1, D, (long long)rows * D, 64);
  args.b = make_map(dy, F, rows, 1, F, (long long)rows * F, 64);
  args.c = dw; args.group_offsets = doff; args.varlen_k = 1; args.m = D; args.n = F; args.k = 0; args.ldc = F; args.c_group_stride = (long long)D * F;
  args.groups = G; args.a_batched = 0; args.b_batched = 0;
  launch<128, 6, false, false, StoreF32, OV>(args, sms);
  CK(cudaGetLastError()); CK(cudaDeviceSynchronize());
  CK(cudaMemset(dref, 0, c_e * 4));
  for (int g = 0; g < G; ++g) {
    int r = offs[g + 1] - offs[g]; if (!r) continue;
    long long n = (long long)D * F;
    ref_gemm<<<(n + 255) / 256, 256>>>(dx + (long long)offs[g] * D, dy + (long long)offs[g] * F, dref + (long long)g * D * F, 1, D, F, r, 1, D, 0, F, 1, 0);
  }
  CK(cudaGetLastError()); CK(cudaDeviceSynchronize());
  std::vector<float> ref(c_e), got(c_e);
  CK(cudaMemcpy(ref.data(), dref, c_e * 4, cudaMemcpyDeviceToHost)); CK(cudaMemcpy(got.data(), dw, c_e * 4, cudaMemcpyDeviceToHost));
  double num = 0, den = 0; long long bad = 0;
  for (long long i = 0; i < c_e; ++i) { if (!(got[i] == got[i])) { ++bad; continue; } num += (double)(got[i] - ref[i]) * (got[i] - ref[i]); den += (double)ref[i] * ref[i]; }
  double err = std::sqrt(num / std::max(den, 1e-30));
  int empty = 0; for (int g = 0; g < G; ++g) empty += offs[g + 1] == offs[g];
  printf("check wgrad G%d rows%d D%d F%d (%d empty groups)%s: rel err %.2e, unwritten/NaN %lld\n", G, rows, D, F, empty,
         OV ? " overlap" : "", err, bad);
  cudaFree(dx); cudaFree(dy); cudaFree(dw); cudaFree(dref); cudaFree(doff);
  return (bad == 0 && err < 1e-2) ? err : -1;
}

// An epilogue that stores nothing: the product's MMAs and loads alone (what
// the epilogue costs is the difference to a real one).
struct StoreNothing {
  static constexpr bool kTmaStore = false, kStoresAux = false;
  __device__ __forceinline__ static unsigned load(const GemmArgs&, long long) { return 0; }
  __device__ __forceinline__ static void value(unsigned, float&, float&) {}
  __device__ __forceinline__ static void apply(const GemmArgs&, long long, float, float, bool) {}
};

// Runs per timing (PROBE_RUNS, default 30; 1 under a profiler).
static int timed_runs() { const char* v = getenv("PROBE_RUNS"); return v ? std::max(1, atoi(v)) : 30; }

// One product C = A * B timed; with G > 1 in grouped mode (moe.grouped_matmul):
// M rows split into G groups of random sizes around M / G (as top-k routing
// gives), A [M, K], B [G] of [K, N] or [N, K].
template <int BN, int STAGES, bool AK, bool BK_, class Epi = StoreBf16, bool OV = false>
double bench(int M, int N, int K, int sms, const char* label = "", int G = 1, bool exact_groups = false, bool shared_b = false) {
  long long a_e = (long long)M * K, b_e = (long long)G * N * K, c_e = (long long)M * N;
  auto ha = rand_bf(a_e), hb = rand_bf(b_e);
  unsigned short *da, *db, *dc, *daux;
  CK(cudaMalloc(&da, a_e * 2)); CK(cudaMalloc(&db, b_e * 2)); CK(cudaMalloc(&dc, c_e * 2)); CK(cudaMalloc(&daux, c_e * 2));
  CK(cudaMemcpy(da, ha.data(), a_e * 2, cudaMemcpyHostToDevice)); CK(cudaMemcpy(db, hb.data(), b_e * 2, cudaMemcpyHostToDevice));
  { auto hx = rand_bf(c_e); CK(cudaMemcpy(daux, hx.data(), c_e * 2, cudaMemcpyHostToDevice)); }
  GemmArgs args{};
  int* doff = nullptr;
  if (G > 1) {
    std::vector<int> offs(G + 1, 0);
    std::uniform_int_distribution<int> jitter(-M / G / 20, M / G / 20);
    for (int g = 1; g < G; ++g) offs[g] = std::min(M, (int)((long long)M * g / G) + (exact_groups ? 0 : jitter(rng)));
    offs[G] = M;
    CK(cudaMalloc(&doff, (G + 1) * 4));
    CK(cudaMemcpy(doff, offs.data(), (G + 1) * 4, cudaMemcpyHostToDevice));
    args.group_offsets = doff;
  }
  if (AK) args.a = make_map(da, K, M, 1, K, a_e, 128); else args.a = make_map(da, M, K, 1, M, a_e, 64);
  if (BK_) args.b = make_map(db, K, N, G, K, (long long)N * K, BN); else args.b = make_map(db, N, K, G, N, (long long)N * K, 64);
  args.c_map = make_map(dc, N, M, 1, N, c_e, 64);
  args.aux_map = make_map(daux, N, M, 1, N, c_e, 64);
  args.aux = daux;
  args.c = dc; args.m = M; args.n = N; args.k = K; args.ldc = N; args.c_group_stride = c_e; args.groups = G;
  args.a_batched = G > 1 ? 0 : 1; args.b_batched = shared_b ? 0 : 1;
  cudaEvent_t e0, e1; cudaEventCreate(&e0); cudaEventCreate(&e1);
  const int runs = timed_runs();
  for (int i = 0; i < (runs == 1 ? 0 : 5); ++i) launch<BN, STAGES, AK, BK_, Epi, OV>(args, sms);  // (one launch under a profiler)
  CK(cudaGetLastError()); CK(cudaDeviceSynchronize());
  std::vector<float> ms;
#ifdef MOEJIT_SM90_TIMING
  { unsigned long long zeros[5] = {}; CK(cudaMemcpyToSymbol(sm90_timing, zeros, sizeof zeros)); }
#endif
  for (int i = 0; i < runs; ++i) {
    cudaEventRecord(e0); launch<BN, STAGES, AK, BK_, Epi, OV>(args, sms); cudaEventRecord(e1); cudaEventSynchronize(e1);
    float t; cudaEventElapsedTime(&t, e0, e1); ms.push_back(t);
  }
  CK(cudaGetLastError());
  std::sort(ms.begin(), ms.end());
  double med = ms[ms.size() / 2];
  printf("bench %dx%dx%d G%d A%s B%s BN%d st%d%s%s: %.3f ms, %.0f TFLOP/s\n", M, N, K, G, AK ? "k" : "m", BK_ ? "k" : "n", BN, STAGES,
         OV ? " overlap" : "", label, med,
         2.0 * M * N * K / med / 1e9);
#ifdef MOEJIT_SM90_TIMING
  {  // where consumer 0 and the producer of each block spent their cycles (codegen/kernels/gemm_sm90.cuh)
    unsigned long long t[5];
    CK(cudaMemcpyFromSymbol(t, sm90_timing, sizeof t));
    printf("  timing: consumer waits for full stages %.1f%%, epilogues %.1f%%; producer waits for empty stages %.1f%% "
           "(of each one's cycles)\n", 100.0 * t[0] / t[2], 100.0 * t[1] / t[2], 100.0 * t[3] / t[4]);
  }
#endif
  cudaFree(da); cudaFree(db); cudaFree(dc); cudaFree(daux); if (doff) cudaFree(doff);
  return med;
}

// One product with each epilogue: the plain bf16 store, GELU (+ the
// pre-activation stored), GELU's backward (the pre-activation read).
template <int BN, int STAGES, bool AK, bool BK_, bool OV = false>
void bench_epilogues(int M, int N, int K, int sms) {
  const double plain = bench<BN, STAGES, AK, BK_, StoreBf16, OV>(M, N, K, sms, " store");
  const double gelu = bench<BN, STAGES, AK, BK_, StoreGeluBf16<true>, OV>(M, N, K, sms, " gelu+aux");
  const double grad = bench<BN, STAGES, AK, BK_, StoreGeluGradBf16<true>, OV>(M, N, K, sms, " gelu_grad");
  printf("epilogue %dx%dx%d: gelu+aux %+.1f%%, gelu_grad %+.1f%% against the plain store\n", M, N, K, 100 * (gelu / plain - 1),
         100 * (grad / plain - 1));
}

#ifndef MOEJIT_SM90_TIMING
// The overlapped epilogue (two accumulator sets per consumer, tile_n <= 128):
// checks, then timings beside the default kernel at the same shapes.
int overlap(int sms) {
  int fails = 0;
  auto C = [&](double r) { if (r < 0) ++fails; };
  C(check<128, 6, true, true, true>(1, 1000, 712, 520, false, sms, 0));
  C(check<128, 6, false, false, true>(2, 1000, 384, 256, false, sms, 0));
  C(check<128, 6, true, false, true>(8, 5000, 384, 1536, true, sms, 2));
  C(check<64, 8, true, false, true>(64, 4000, 384, 256, true, sms, 2));
  C(check<128, 6, true, false, true>(8, 5000, 1536, 384, true, sms, 1));
  C(check<128, 6, true, true, true>(3, 300, 200, 136, false, sms, 3));
  C(check<128, 6, true, false, true>(2, 300, 100, 136, false, sms, 1));
  C(check_wgrad<true>(16, 3001, 200, 136, sms));
  C(check_wgrad<true>(8, 5000, 384, 1536, sms));
  printf("overlap checks failed: %d\n", fails);
  if (fails) return 1;
  // 128 x 256 tiles against overlapped 128 x 128 ones, each epilogue, at D384's up projection (both B layouts)
  bench_epilogues<256, 4, true, false>(32768, 1536, 384, sms);
  bench_epilogues<128, 6, true, false, true>(32768, 1536, 384, sms);
  bench_epilogues<256, 4, true, true>(32768, 1536, 384, sms);
  bench_epilogues<128, 6, true, true, true>(32768, 1536, 384, sms);
  // D1536 E128 K8's product shapes (N 256 K 1536, N 1536 K 256), 32768 rows
  bench<256, 4, true, false>(32768, 256, 1536, sms);
  bench<128, 6, true, false, StoreBf16, true>(32768, 256, 1536, sms);
  bench<256, 4, true, false>(32768, 1536, 256, sms);
  bench<128, 6, true, false, StoreBf16, true>(32768, 1536, 256, sms);
  return 0;
}

#endif

// The D1536 F256 E128 K8 layer's expert products (196608 rows: T 24576 x
// K 8) in grouped mode over 128 experts of random sizes around 1536 rows
// (nearly every group ends in a partial tile, as routed tokens do): the K = 256
// ones (the down projection, B N-major, and the up projection's input
// gradient, B K-major) and the K = 1536 ones (the up projection, B
// N-major, and the down projection's input gradient, B K-major), 128 x 256
// tiles; beside them the same products over groups of exactly 1536 rows (no
// partial tile) and with no stores at all (the MMAs and loads alone). Timings
// only: the probe's default run checks these kernels against the reference
// first (grouped, partial tiles, every epilogue), so run it before this.
int layer_shapes(int sms) {
  const int rows = 196608, G = 128;
  bench<256, 4, true, false>(rows, 1536, 256, sms, " down", G);
  bench<256, 4, true, false>(rows, 1536, 256, sms, " down, groups of 1536 rows", G, true);
  bench<256, 4, true, false, StoreNothing>(rows, 1536, 256, sms, " down no-store", G);
  bench<256, 4, true, true>(rows, 1536, 256, sms, " dx", G);
  bench<256, 4, true, true>(rows, 1536, 256, sms, " dx, groups of 1536 rows", G, true);
  bench<256, 4, true, true>(rows, 1536, 256, sms, " dx, one B for every group", G, false, true);
  bench<256, 4, true, true>(rows, 1536, 256, sms, " dx dense", 1);
  bench<256, 4, true, false, StoreGeluBf16<true>>(rows, 256, 1536, sms, " up gelu+aux", G);
  bench<256, 4, true, false, StoreGeluBf16<true>>(rows, 256, 1536, sms, " up gelu+aux, groups of 1536 rows", G, true);
  bench<256, 4, true, false>(rows, 256, 1536, sms, " up", G);
  bench<256, 4, true, true>(rows, 256, 1536, sms, " dh", G);
  bench<256, 4, true, true>(rows, 256, 1536, sms, " dh, groups of 1536 rows", G, true);
  bench<256, 4, true, true, StoreGeluGradBf16<true>>(rows, 256, 1536, sms, " dh gelu_grad", G);
  return 0;
}

int main(int argc, char** argv) {
  setvbuf(stdout, nullptr, _IOLBF, 0);  // every line out at once: a run cut by a timeout keeps what it printed
  CU(cuInit(0));
  int sms; CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
#ifdef MOEJIT_SM90_TIMING
  return layer_shapes(sms);  // the timing build: only the layer's products (and fewer instantiations to compile)
#else
  if (argc > 1 && std::string(argv[1]) == "--overlap") return overlap(sms);  // only the overlapped epilogue (opt-in)
  if (argc > 1 && std::string(argv[1]) == "--layer-shapes") return layer_shapes(sms);  // the D1536 E128 layer's products
  int fails = 0;
  auto C = [&](double r) { if (r < 0) ++fails; };
  C(check<256, 4, true, true>(1, 1000, 712, 520, false, sms, 0));
  C(check<256, 4, true, false>(1, 1000, 712, 520, false, sms, 0));
  C(check<256, 4, false, true>(1, 1000, 712, 520, false, sms, 0));
  C(check<256, 4, false, false>(1, 1000, 712, 520, false, sms, 0));
  C(check<128, 6, true, true>(3, 300, 200, 136, false, sms, 0));
  C(check<128, 6, true, false>(8, 5000, 384, 1536, true, sms, 0));
  C(check<256, 4, true, false>(8, 5000, 1536, 384, true, sms, 1));
  C(check<128, 6, true, false>(64, 4000, 384, 256, true, sms, 0));
  C(check<128, 6, false, false>(2, 1000, 384, 256, false, sms, 0));
  C(check<64, 8, true, true>(1, 4096, 4096, 4096, false, sms, 0));
  C(check_wgrad(8, 5000, 384, 1536, sms));
  C(check<256, 4, true, false>(1, 1000, 712, 520, false, sms, 2));  // bf16 out through TMA stores (+ a partial block)
  C(check<128, 4, true, true>(3, 300, 200, 136, false, sms, 2));
  C(check<256, 4, true, false>(8, 5000, 1536, 384, true, sms, 2));   // grouped: partial group tiles take the register path
  C(check<64, 6, true, false>(8, 5000, 384, 1536, true, sms, 2));
  C(check_wgrad(16, 3001, 200, 136, sms));
  C(check<256, 4, true, false>(1, 1000, 712, 520, false, sms, 1));  // GELU + aux through TMA stores (+ a partial block)
  C(check<128, 4, true, true>(3, 300, 200, 136, false, sms, 3));    // GELU backward, batched
  C(check<256, 4, true, false>(8, 5000, 1536, 384, true, sms, 3));  // grouped, partial tiles on the register path
  C(check<64, 6, true, true>(2, 300, 100, 136, false, sms, 1));     // N 100: register stores only (B K-major: TMA cannot address 200-byte rows)
  C(check<64, 6, true, true>(2, 300, 100, 136, false, sms, 3));
  printf("checks failed: %d\n", fails);
  bench<256, 4, true, true>(4096, 4096, 4096, sms);
  bench<256, 4, true, false>(4096, 4096, 4096, sms);
  bench<256, 4, true, true>(8192, 8192, 8192, sms);
  bench<256, 4, true, false>(8192, 8192, 8192, sms);
  bench<256, 4, false, false>(8192, 8192, 8192, sms);
  // the example-sized shapes (config B: 16384 tokens, D 384, F 1536, top-2)
  bench<256, 4, true, false>(32768, 1536, 384, sms);
  bench<128, 4, true, false>(32768, 1536, 384, sms);
  bench<128, 6, true, false>(32768, 384, 1536, sms);
  bench<256, 4, true, false>(32768, 384, 1536, sms);
  bench<256, 4, true, false>(16384, 1152, 384, sms);
  bench<128, 4, true, false>(16384, 384, 384, sms);
  // the epilogues at the layer's expert shapes (D384 F1536 and D768 F3072, T16384 top-2): the up-projection
  // (gelu) and the down-projection's input gradient (gelu_grad, B K-major)
  bench_epilogues<256, 4, true, false>(32768, 1536, 384, sms);
  bench_epilogues<256, 4, true, true>(32768, 1536, 384, sms);
  bench_epilogues<256, 4, true, false>(32768, 3072, 768, sms);
  bench_epilogues<256, 4, true, true>(32768, 3072, 768, sms);
  bench_epilogues<256, 4, true, false>(8192, 8192, 8192, sms);
  return fails ? 1 : 0;
#endif
}
