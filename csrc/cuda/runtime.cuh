// What the CUDA kernel files use of the CUDA runtime, in one place, so each .cu compiles
// two ways: with nvcc for the GPU, and as host C++ against the SIMT emulator (csrc/simt,
// FASTNAS_SIMT) for the tests, which then run every __global__ kernel on CPU tensors.
// Include it after the ATen headers: the emulator defines CUDA's built-in names as macros.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <limits>

#include "../library.h"

namespace fastnas {
// A kernel as a type, so code that picks one of several kernels can hand the choice on and
// still launch it as a constant: FASTNAS_LAUNCH(..., decltype(ref)::pointer).
template <auto Kernel>
struct KernelRef {
  static constexpr auto pointer = Kernel;
};
}  // namespace fastnas

#if defined(__CUDACC__)

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

// FASTNAS_LAUNCH(grid, block, shared_bytes, stream, kernel<...>)(args...)
#define FASTNAS_LAUNCH(grid, block, shared_bytes, stream, ...) __VA_ARGS__<<<grid, block, shared_bytes, stream>>>
#define FASTNAS_LAUNCH_CHECK() C10_CUDA_KERNEL_LAUNCH_CHECK()
// A kernel's dynamic shared memory (the launch's shared_bytes), as an array of `type`.
#define FASTNAS_DYNAMIC_SHARED(type, name)                                \
  extern __shared__ __align__(16) unsigned char fastnas_dynamic_shared[]; \
  type* name = reinterpret_cast<type*>(fastnas_dynamic_shared)
// Registers the file's ops for CUDA tensors: FASTNAS_CUDA_KERNELS(m) { FASTNAS_CUDA_IMPL(m, "op", op_cuda); }
#define FASTNAS_CUDA_KERNELS(m) FASTNAS_TORCH_LIBRARY_IMPL(CUDA, m)
#define FASTNAS_CUDA_IMPL(m, name, function) m.impl(name, &function)

namespace fastnas::device {
using Stream = cudaStream_t;
using Guard = c10::cuda::CUDAGuard;
inline Stream current_stream() { return at::cuda::getCurrentCUDAStream(); }
inline int multiprocessor_count() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }
// Work sizes up to this use the kernels' 32-bit index variants.
inline int64_t int32_index_limit() { return std::numeric_limits<int32_t>::max(); }
// Dynamic shared memory a block may use without opting in to more.
inline size_t shared_memory_per_block() { return 48 * 1024; }
// Blocks of `kernel` one SM holds at once at this block size (registers, shared memory).
template <typename Kernel>
int max_active_blocks_per_sm(Kernel kernel, int threads, size_t dynamic_shared_bytes) {
  int blocks = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, threads, dynamic_shared_bytes));
  return blocks > 0 ? blocks : 1;
}
}  // namespace fastnas::device

#elif defined(FASTNAS_SIMT)

#include "../simt/order_checked.h"
#include "../simt/simt.h"

#define FASTNAS_LAUNCH(grid, block, shared_bytes, stream, ...) \
  ::fastnas::simt::Launch<__VA_ARGS__>(grid, block, shared_bytes, stream)
#define FASTNAS_LAUNCH_CHECK() ((void)0)
// The emulated kernels take CPU tensors, in their own library (fastnas_simt).
#define FASTNAS_CUDA_KERNELS(m) FASTNAS_TORCH_LIBRARY_IMPL(CPU, m)
#define FASTNAS_CUDA_IMPL(m, name, function) m.impl(name, &::fastnas::simt::OrderChecked<&function>::call)

namespace fastnas::device {
using Stream = simt::Stream;
using Guard = simt::DeviceGuard;
inline Stream current_stream() { return {}; }
inline int multiprocessor_count() { return simt::device().multiprocessors; }
inline int64_t int32_index_limit() { return simt::device().int32_index_limit; }
inline size_t shared_memory_per_block() { return simt::device().shared_memory_per_block; }
// No registers to count: a fixed occupancy, so grids stay small and loops take several steps.
template <typename Kernel>
int max_active_blocks_per_sm(Kernel, int, size_t) {
  return simt::device().blocks_per_multiprocessor;
}
}  // namespace fastnas::device

#else
#error "compile csrc/cuda with nvcc, or as host C++ with FASTNAS_SIMT defined (the test emulator)"
#endif

namespace fastnas {
// Vector v (of Vector's size) from p, in one load: p must be aligned to the vector. A GPU
// faults on a misaligned vector access ("misaligned address"); the emulator checks it, where
// an x86 host would just load.
template <typename Vector, typename T, typename index_t>
__device__ __forceinline__ Vector load_vector(const T* p, index_t v) {
  const Vector* address = reinterpret_cast<const Vector*>(p) + v;
#ifdef FASTNAS_SIMT
  simt::check_aligned(address, alignof(Vector));
#endif
  return *address;
}

template <typename Vector, typename T, typename index_t>
__device__ __forceinline__ void store_vector(T* p, index_t v, const Vector& value) {
  Vector* address = reinterpret_cast<Vector*>(p) + v;
#ifdef FASTNAS_SIMT
  simt::check_aligned(address, alignof(Vector));
#endif
  *address = value;
}
}  // namespace fastnas

namespace fastnas {
// Scratch of a reduction whose last block to finish adds the other blocks' partial sums:
// `counters` zeroed finished-block counters, then `values` partial sums of type acc_t. One
// allocation and one memset.
template <typename acc_t>
struct CountedScratch {
  at::Tensor storage;
  unsigned* counters;
  acc_t* values;

  CountedScratch(int64_t num_counters, int64_t num_values, const at::TensorOptions& options) {
    const int64_t counter_slots =
        (num_counters * static_cast<int64_t>(sizeof(unsigned)) + static_cast<int64_t>(sizeof(acc_t)) - 1) /
        static_cast<int64_t>(sizeof(acc_t));
    storage = at::empty({counter_slots + num_values}, options.dtype(c10::CppTypeToScalarType<acc_t>::value));
    storage.narrow(0, 0, counter_slots).zero_();
    counters = reinterpret_cast<unsigned*>(storage.data_ptr<acc_t>());
    values = storage.data_ptr<acc_t>() + counter_slots;
  }
};
}  // namespace fastnas
