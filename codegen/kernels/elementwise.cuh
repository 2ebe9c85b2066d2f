// Kernel library, part 2: the elementwise ops as device functions on the
// arithmetic type (the generated layer strings them into one loop, one
// kernel per fused chain), and the generators: constant fill, Philox
// dropout and random normal, AdamW.
//
// The formulas are those of runtime/cpu/cpu_elementwise.cpp.
R"MOEJIT_CUDA(
// ---- unary (float arithmetic types) ----
template <class A> __device__ __forceinline__ A ew_neg(A x) { return -x; }
template <class A> __device__ __forceinline__ A ew_exp(A x) { return m_exp(x); }
template <class A> __device__ __forceinline__ A ew_log(A x) { return m_log(x); }
template <class A> __device__ __forceinline__ A ew_sqrt(A x) { return m_sqrt(x); }
template <class A> __device__ __forceinline__ A ew_rsqrt(A x) { return A(1) / m_sqrt(x); }
template <class A> __device__ __forceinline__ A ew_tanh(A x) { return m_tanh(x); }
template <class A> __device__ __forceinline__ A ew_relu(A x) { return x < A(0) ? A(0) : x; }
template <class A> __device__ __forceinline__ A ew_sigmoid(A x) { return A(1) / (A(1) + m_exp(-x)); }
template <class A> __device__ __forceinline__ A ew_silu(A x) { return x * ew_sigmoid(x); }
template <class A> __device__ __forceinline__ A ew_softplus(A x) {
  return (x > A(0) ? x : A(0)) + m_log1p(m_exp(-m_abs(x)));
}
// gelu, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
template <class A> __device__ __forceinline__ A ew_gelu(A x) {
  const A c = A(0.79788456080286535588);
  return A(0.5) * x * (A(1) + m_tanh(c * (x + A(0.044715) * x * x * x)));
}
template <class A> __device__ __forceinline__ A ew_gelu_grad(A x, A dy) {
  const A c = A(0.79788456080286535588);
  A t = m_tanh(c * (x + A(0.044715) * x * x * x));
  return dy * (A(0.5) * (A(1) + t) + A(0.5) * x * (A(1) - t * t) * c * (A(1) + A(3 * 0.044715) * x * x));
}

// ---- binary (float or integer arithmetic types; integers wrap) ----
template <class A> __device__ __forceinline__ A ew_add(A a, A b) { return a + b; }
template <> __device__ __forceinline__ int ew_add<int>(int a, int b) { return (int)((unsigned)a + (unsigned)b); }
template <> __device__ __forceinline__ i64 ew_add<i64>(i64 a, i64 b) { return (i64)((unsigned long long)a + (unsigned long long)b); }
template <class A> __device__ __forceinline__ A ew_sub(A a, A b) { return a - b; }
template <> __device__ __forceinline__ int ew_sub<int>(int a, int b) { return (int)((unsigned)a - (unsigned)b); }
template <> __device__ __forceinline__ i64 ew_sub<i64>(i64 a, i64 b) { return (i64)((unsigned long long)a - (unsigned long long)b); }
template <class A> __device__ __forceinline__ A ew_mul(A a, A b) { return a * b; }
template <> __device__ __forceinline__ int ew_mul<int>(int a, int b) { return (int)((unsigned)a * (unsigned)b); }
template <> __device__ __forceinline__ i64 ew_mul<i64>(i64 a, i64 b) { return (i64)((unsigned long long)a * (unsigned long long)b); }
// Integer division by zero gives 0 here (the CPU backend reports an error).
template <class A> __device__ __forceinline__ A ew_div(A a, A b) { return a / b; }
template <> __device__ __forceinline__ int ew_div<int>(int a, int b) { return (b == 0 || (b == -1 && a == (int)0x80000000)) ? 0 : a / b; }
template <> __device__ __forceinline__ i64 ew_div<i64>(i64 a, i64 b) {
  return (b == 0 || (b == -1 && a == (i64)0x8000000000000000ull)) ? 0 : a / b;
}
template <class A> __device__ __forceinline__ A ew_maximum(A a, A b) { return (a != a || b != b) ? a + b : (a > b ? a : b); }
template <class A> __device__ __forceinline__ A ew_minimum(A a, A b) { return (a != a || b != b) ? a + b : (a < b ? a : b); }

// ---- constant ----
template <class T> __device__ void fill_impl(T* out, i64 n, double value) {
  T v = from_double<T>(value);
  MOEJIT_FOR_EACH(i, n) out[i] = v;
}

// ---- Philox (ir/philox.h, embedded as part 0 of the library) ----
// dropout: position n (= base + element index, base = offset + step_offset,
// both kernel arguments of the generated chain) is kept iff
// dropout_uniform24(seed, n) >= threshold24 = ceil(p 2^24); kept elements are
// multiplied by scale = 1 / (1 - p) in the arithmetic type.
template <class T> __device__ __forceinline__ T dropout_value(T x, unsigned long long seed, unsigned long long n,
                                                            unsigned threshold24, double scale) {
  typedef typename acc_of<T>::type A;
  return moejit::dropout_uniform24(seed, n) >= threshold24 ? st<T>(ld(x) * A(scale)) : st<T>(A(0));
}

// random_normal: Box-Muller on one Philox call per pair of elements, in double.
__device__ __forceinline__ double philox_normal_dev(unsigned long long seed, unsigned long long n) {
  moejit::Philox4x32Block b = moejit::philox_block(seed, n / 2, moejit::kPhiloxStreamNormal);
  const double two_pow_minus_32 = 1.0 / 4294967296.0;
  double u1 = ((double)b.word[0] + 0.5) * two_pow_minus_32;
  double u2 = (double)b.word[1] * two_pow_minus_32;
  double radius = sqrt(-2.0 * log(u1));
  double theta = 2.0 * 3.141592653589793 * u2;
  return n % 2 == 0 ? radius * cos(theta) : radius * sin(theta);
}
// base = offset + *step_offset (a device scalar read at run time; null: offset alone).
template <class T> __device__ void random_normal_impl(T* out, i64 n, unsigned long long seed, unsigned long long offset,
                                                     const i64* step_offset) {
  const unsigned long long base = offset + (step_offset ? (unsigned long long)*step_offset : 0ull);
  MOEJIT_FOR_EACH(i, n) out[i] = from_double<T>(philox_normal_dev(seed, base + (unsigned long long)i));
}

// ---- AdamW (f32), decoupled weight decay, bias correction with the 1-based step ----
__device__ void adamw_impl(const float* param, const float* grad, const float* m, const float* v, const float* lr_ptr,
                           const float* step_ptr, float* new_param, float* new_m, float* new_v, i64 n, double beta1,
                           double beta2, float eps, float weight_decay) {
  float lr = *lr_ptr;
  double step = *step_ptr;
  float correction1 = (float)(1.0 - pow(beta1, step));
  float correction2 = (float)(1.0 - pow(beta2, step));
  float b1 = (float)beta1, b2 = (float)beta2;
  MOEJIT_FOR_EACH(i, n) {
    float g = grad[i];
    float m1 = b1 * m[i] + (1.0f - b1) * g;
    float v1 = b2 * v[i] + (1.0f - b2) * g * g;
    float m_hat = m1 / correction1;
    float v_hat = v1 / correction2;
    float p = param[i];
    new_param[i] = p - lr * (m_hat / (sqrtf(v_hat) + eps) + weight_decay * p);
    new_m[i] = m1;
    new_v[i] = v1;
  }
}
)MOEJIT_CUDA"
