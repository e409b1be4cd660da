// The wheel and CI build for the baseline x86-64 ISA (SSE2). GCC's function
// multi-versioning compiles the hot CPU loops also for AVX2+FMA and AVX-512 and picks
// the best one for the running CPU at load time, so the kernels vectorise as wide as
// the machine allows without a -march flag that would break older CPUs.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(FASTNAS_NO_CPU_CLONES)
#define FASTNAS_CPU_CLONES \
  __attribute__((target_clones("arch=skylake-avx512", "arch=haswell", "default")))
#define FASTNAS_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define FASTNAS_CPU_CLONES
#define FASTNAS_ALWAYS_INLINE inline
#endif
