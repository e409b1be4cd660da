// What the CUDA kernel files use of the CUDA runtime, in one place, so each .cu compiles
// two ways: with nvcc for the GPU, and as host C++ against the SIMT emulator (csrc/simt,
// FASTNAS_SIMT) for the tests, which then run every __global__ kernel on CPU tensors.
// Include it after the ATen headers: the emulator defines CUDA's built-in names as macros.
#pragma once

#include <cstdint>
#include <limits>

#include "../library.h"

#if defined(__CUDACC__)

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

// FASTNAS_LAUNCH(grid, block, shared_bytes, stream, kernel<...>)(args...)
#define FASTNAS_LAUNCH(grid, block, shared_bytes, stream, ...) __VA_ARGS__<<<grid, block, shared_bytes, stream>>>
#define FASTNAS_LAUNCH_CHECK() C10_CUDA_KERNEL_LAUNCH_CHECK()
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
}  // namespace fastnas::device

#else
#error "compile csrc/cuda with nvcc, or as host C++ with FASTNAS_SIMT defined (the test emulator)"
#endif
