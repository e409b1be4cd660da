// Kernels that test the SIMT emulator itself (tests/test_simt.py): what it must compute
// like a GPU, and what it must refuse. Compiled only into the emulator library.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "cuda/runtime.cuh"

// Named fastnas::selftest::*, so the kernel report tells them from fastnas's own kernels.

namespace fastnas::selftest {

constexpr int kBlock = 64;

// out[b] = the sum of block b's 64 values, staged in shared memory. Without the barrier
// thread 0 reads slots the other threads have not written yet (or did, in reverse order).
__global__ void shared_sum_kernel(const float* __restrict__ x, float* __restrict__ out, bool with_barrier) {
  __shared__ float slots[kBlock];
  slots[threadIdx.x] = x[blockIdx.x * blockDim.x + threadIdx.x];
  if (with_barrier) __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0;
    for (int i = 0; i < kBlock; ++i) total += slots[i];
    out[blockIdx.x] = total;
  }
}

at::Tensor shared_sum(const at::Tensor& x, bool with_barrier) {
  auto out = at::empty({x.numel() / kBlock}, x.options());
  FASTNAS_LAUNCH(out.numel(), kBlock, 0, device::current_stream(), shared_sum_kernel)(
      x.data_ptr<float>(), out.data_ptr<float>(), with_barrier);
  return out;
}

// Every thread's result of one warp shuffle (kind 0: __shfl_sync, 1: up, 2: down, 3: xor) of
// its value among the lanes of `mask`; lanes outside the mask keep their value.
__global__ void shuffle_kernel(const float* __restrict__ x, float* __restrict__ out, int kind, int operand, int width,
                               unsigned mask) {
  const int t = threadIdx.x;
  const float value = x[t];
  if (((mask >> (t % 32)) & 1u) == 0) {
    out[t] = value;
    return;
  }
  float result = 0;
  switch (kind) {
    case 0: result = __shfl_sync(mask, value, operand, width); break;
    case 1: result = __shfl_up_sync(mask, value, static_cast<unsigned>(operand), width); break;
    case 2: result = __shfl_down_sync(mask, value, static_cast<unsigned>(operand), width); break;
    default: result = __shfl_xor_sync(mask, value, operand, width); break;
  }
  out[t] = result;
}

at::Tensor shuffle(const at::Tensor& x, int64_t kind, int64_t operand, int64_t width, int64_t mask) {
  auto out = at::empty_like(x);
  FASTNAS_LAUNCH(1, x.numel(), 0, device::current_stream(), shuffle_kernel)(
      x.data_ptr<float>(), out.data_ptr<float>(), static_cast<int>(kind), static_cast<int>(operand),
      static_cast<int>(width), static_cast<unsigned>(mask));
  return out;
}

// Every thread's __ballot_sync of x > 0 over the full warp.
__global__ void ballot_kernel(const float* __restrict__ x, int64_t* __restrict__ out) {
  out[threadIdx.x] = __ballot_sync(0xffffffffu, x[threadIdx.x] > 0);
}

at::Tensor ballot(const at::Tensor& x) {
  auto out = at::empty(x.sizes(), x.options().dtype(at::kLong));
  FASTNAS_LAUNCH(1, x.numel(), 0, device::current_stream(), ballot_kernel)(x.data_ptr<float>(), out.data_ptr<int64_t>());
  return out;
}

// What every thread finds in dynamic shared memory before anyone wrote it.
__global__ void unwritten_shared_kernel(float* __restrict__ out) {
  FASTNAS_DYNAMIC_SHARED(float, tile);
  out[threadIdx.x] = tile[threadIdx.x];
}

at::Tensor unwritten_shared(int64_t threads) {
  auto out = at::empty({threads}, at::kFloat);
  FASTNAS_LAUNCH(1, threads, threads * sizeof(float), device::current_stream(), unwritten_shared_kernel)(
      out.data_ptr<float>());
  return out;
}

// Kernels that break CUDA's rules, each in one way (`fault`): a thread ends while the others
// wait at a barrier; threads wait at two different barriers; a full-warp shuffle while a lane
// of the mask has ended; a full-warp shuffle in a warp of 16 threads.
__global__ void faulty_kernel(float* __restrict__ out, int fault) {
  const int t = threadIdx.x;
  if (fault == 0) {
    if (t == 5) return;
    __syncthreads();
  } else if (fault == 1) {
    if (t % 2 == 1) {
      __syncthreads();
    } else {
      __syncthreads();
    }
  } else if (fault == 2) {
    if (t == 3) return;
    out[t] = __shfl_down_sync(0xffffffffu, 1.0f, 1);
    return;
  } else {
    out[t] = __shfl_down_sync(0xffffffffu, 1.0f, 1);
    return;
  }
  out[t] = 1;
}

void faulty(int64_t fault, int64_t threads) {
  auto out = at::zeros({threads}, at::kFloat);
  FASTNAS_LAUNCH(1, threads, 0, device::current_stream(), faulty_kernel)(out.data_ptr<float>(), static_cast<int>(fault));
}

__global__ void empty_kernel() {}

// An empty kernel launched with the given sizes, so the tests can probe the launch checks.
void launch(int64_t grid_x, int64_t grid_y, int64_t block_x, int64_t shared_bytes) {
  FASTNAS_LAUNCH(dim3(simt::to_dim3(grid_x, "grid").x, simt::to_dim3(grid_y, "grid").x), block_x,
                 static_cast<size_t>(shared_bytes), device::current_stream(), empty_kernel)();
}

}  // namespace fastnas::selftest

TORCH_LIBRARY_FRAGMENT(fastnas_simt, m) {
  m.def("selftest_shared_sum(Tensor x, bool with_barrier) -> Tensor");
  m.def("selftest_shuffle(Tensor x, int kind, int operand, int width, int mask) -> Tensor", &fastnas::selftest::shuffle);
  m.def("selftest_ballot(Tensor x) -> Tensor", &fastnas::selftest::ballot);
  m.def("selftest_unwritten_shared(int threads) -> Tensor", &fastnas::selftest::unwritten_shared);
  m.def("selftest_faulty(int fault, int threads) -> ()", &fastnas::selftest::faulty);
  m.def("selftest_launch(int grid_x, int grid_y, int block_x, int shared_bytes) -> ()", &fastnas::selftest::launch);
}

// Registered like the real ops, so the calls run in both thread orders.
FASTNAS_CUDA_KERNELS(m) { FASTNAS_CUDA_IMPL(m, "selftest_shared_sum", fastnas::selftest::shared_sum); }
