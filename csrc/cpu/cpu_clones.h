// The wheel and CI build for the baseline x86-64 ISA (SSE2). The hot CPU loops are
// compiled a second time for AVX2+FMA, and a run-time check picks that build when the
// CPU has both. GCC's target_clones("arch=haswell") is not used: its resolver matches
// CPU models, not features, so AMD CPUs with AVX2 got the SSE2 build.
#pragma once

#if defined(__GNUC__) && defined(__x86_64__) && !defined(FASTNAS_NO_CPU_CLONES)
#define FASTNAS_AVX2_TARGET __attribute__((target("avx2,fma")))
#define FASTNAS_ALWAYS_INLINE inline __attribute__((always_inline))
namespace fastnas {
inline bool cpu_has_avx2_fma() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return has;
}
}  // namespace fastnas
#else
#define FASTNAS_AVX2_TARGET
#define FASTNAS_ALWAYS_INLINE inline
namespace fastnas {
inline bool cpu_has_avx2_fma() { return false; }
}  // namespace fastnas
#endif

// Defines `name` params, which calls `impl` args compiled for AVX2+FMA when the CPU has
// them and for the baseline ISA otherwise. `impl` must be FASTNAS_ALWAYS_INLINE so each
// version gets its own code generation.
#define FASTNAS_MULTIVERSIONED(ret, name, impl, params, args)                          \
  inline ret name##_baseline params { return impl args; }                              \
  FASTNAS_AVX2_TARGET inline ret name##_avx2 params { return impl args; }              \
  inline ret name params { return cpu_has_avx2_fma() ? name##_avx2 args : name##_baseline args; }

#include <cstdint>
#include <cstring>

namespace fastnas {

// 32-byte vectors (the attribute must sit on a non-dependent typedef: on a template alias
// GCC drops it silently).
typedef float Float32x8 __attribute__((vector_size(32)));
typedef double Float64x4 __attribute__((vector_size(32)));
template <typename scalar_t>
struct Vector32;
template <>
struct Vector32<float> {
  using type = Float32x8;
};
template <>
struct Vector32<double> {
  using type = Float64x4;
};

// sum_i a[i] * b[i] with two 32-byte vector accumulators (GCC/Clang vector extensions;
// each multi-versioned caller compiles them for its ISA). Keeping several partial sums
// is what lets the reduction vectorise without -ffast-math. If `scaled` is not null it
// also writes scaled[i] = scale * a[i].
template <typename scalar_t>
FASTNAS_ALWAYS_INLINE scalar_t dot_and_scale_vec(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                                                 int64_t n, scalar_t scale, scalar_t* __restrict__ scaled) {
  using vec = typename Vector32<scalar_t>::type;
  static_assert(sizeof(vec) == 32, "expected a 32-byte vector type");
  constexpr int64_t kWidth = 32 / sizeof(scalar_t);
  vec acc0 = {}, acc1 = {};
  int64_t i = 0;
  for (; i + 2 * kWidth <= n; i += 2 * kWidth) {
    vec a0, a1, b0, b1;
    std::memcpy(&a0, a + i, sizeof(vec));
    std::memcpy(&a1, a + i + kWidth, sizeof(vec));
    std::memcpy(&b0, b + i, sizeof(vec));
    std::memcpy(&b1, b + i + kWidth, sizeof(vec));
    acc0 += a0 * b0;
    acc1 += a1 * b1;
  }
  scalar_t total = 0;
  for (; i < n; ++i) total += a[i] * b[i];
  if (scaled != nullptr) {
    // A separate streaming pass: a is still in cache, and the loop has one load stream.
    for (int64_t k = 0; k < n; ++k) scaled[k] = scale * a[k];
  }
  const vec acc = acc0 + acc1;
  scalar_t lanes[kWidth];
  std::memcpy(lanes, &acc, sizeof(vec));
  for (int64_t l = 0; l < kWidth; ++l) total += lanes[l];
  return total;
}

// sum_i (a[i] - a_shift) and sum_i (a[i] - a_shift) * (b[i] - b_shift), vectorised the
// same way. With a = b it gives shifted first and second moments.
template <typename scalar_t>
FASTNAS_ALWAYS_INLINE void shifted_pair_sums_vec(const scalar_t* __restrict__ a, scalar_t a_shift,
                                                 const scalar_t* __restrict__ b, scalar_t b_shift, int64_t n,
                                                 scalar_t* sum_a, scalar_t* sum_ab) {
  using vec = typename Vector32<scalar_t>::type;
  constexpr int64_t kWidth = 32 / sizeof(scalar_t);
  vec acc_a = {}, acc_ab = {};
  int64_t i = 0;
  for (; i + kWidth <= n; i += kWidth) {
    vec va, vb;
    std::memcpy(&va, a + i, sizeof(vec));
    std::memcpy(&vb, b + i, sizeof(vec));
    va -= a_shift;
    vb -= b_shift;
    acc_a += va;
    acc_ab += va * vb;
  }
  scalar_t total_a = 0, total_ab = 0;
  for (; i < n; ++i) {
    total_a += a[i] - a_shift;
    total_ab += (a[i] - a_shift) * (b[i] - b_shift);
  }
  scalar_t lanes_a[kWidth], lanes_ab[kWidth];
  std::memcpy(lanes_a, &acc_a, sizeof(vec));
  std::memcpy(lanes_ab, &acc_ab, sizeof(vec));
  for (int64_t l = 0; l < kWidth; ++l) {
    total_a += lanes_a[l];
    total_ab += lanes_ab[l];
  }
  *sum_a = total_a;
  *sum_ab = total_ab;
}

}  // namespace fastnas
