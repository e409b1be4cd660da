// The 3x3 max + average pooling pair on CUDA. Forward: a thread per output reads its
// window once for both pools. Backward: a thread per input gathers from the (at most 9)
// windows covering it, so nothing is written twice and no atomics are needed.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <optional>

#include "../checks.h"
#include "../pool_math.h"
#include "../ops.h"
#include "grid_stride.cuh"
#include "runtime.cuh"

namespace fastnas {
namespace {

constexpr int kThreads = 256;

int64_t blocks_for(int64_t work) { return grid_stride_blocks(work, kThreads, /*blocks_per_sm=*/16); }

template <typename scalar_t>
__global__ void pool_pair_forward_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ max_out,
                                         scalar_t* __restrict__ avg_out, uint8_t* __restrict__ positions,
                                         int64_t total, int64_t height, int64_t width, int64_t out_h,
                                         int64_t out_w, int64_t stride) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t o = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; o < total;
       o += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t ow = o % out_w;
    const int64_t oh = (o / out_w) % out_h;
    const int64_t plane = o / (out_w * out_h);
    acc_t mean;
    pool_pair_at<scalar_t, acc_t>(x + plane * height * width, height, width, oh, ow, stride, &max_out[o], &mean,
                                  &positions[o]);
    avg_out[o] = static_cast<scalar_t>(mean);
  }
}

template <typename scalar_t>
__global__ void pool_pair_backward_kernel(const scalar_t* __restrict__ grad_max, const scalar_t* __restrict__ grad_avg,
                                          const uint8_t* __restrict__ positions, scalar_t* __restrict__ grad_x,
                                          int64_t total, int64_t height, int64_t width, int64_t out_h,
                                          int64_t out_w, int64_t stride) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t w = i % width;
    const int64_t h = (i / width) % height;
    const int64_t plane = i / (width * height);
    const acc_t total_grad = pool_pair_input_grad<scalar_t, acc_t>(
        grad_max, grad_avg, positions, plane * out_h * out_w, h, w, height, width, out_h, out_w, stride);
    grad_x[i] = static_cast<scalar_t>(total_grad);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pool3x3_pair_cuda(const at::Tensor& x_in, int64_t stride) {
  const auto [out_h, out_w] = check_pool_pair_args(x_in, stride);
  const device::Guard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  auto max_out = at::empty({x.size(0), x.size(1), out_h, out_w}, x.options());
  auto avg_out = at::empty_like(max_out);
  auto positions = at::empty(max_out.sizes(), x.options().dtype(at::kByte));
  const int64_t total = max_out.numel();
  if (total == 0) return {max_out, avg_out, positions};
  const auto stream = device::current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pool3x3_pair_cuda", [&] {
    FASTNAS_LAUNCH(blocks_for(total), kThreads, 0, stream, pool_pair_forward_kernel<scalar_t>)(
        x.data_ptr<scalar_t>(), max_out.data_ptr<scalar_t>(), avg_out.data_ptr<scalar_t>(),
        positions.data_ptr<uint8_t>(), total, x.size(2), x.size(3), out_h, out_w, stride);
    FASTNAS_LAUNCH_CHECK();
  });
  return {max_out, avg_out, positions};
}

at::Tensor pool3x3_pair_backward_cuda(const std::optional<at::Tensor>& grad_max_in,
                                      const std::optional<at::Tensor>& grad_avg_in, const at::Tensor& positions_in,
                                      at::IntArrayRef input_size, int64_t stride) {
  const PoolPairBackwardArgs args = check_pool_pair_backward_args(grad_max_in, grad_avg_in, positions_in, input_size, stride);
  const at::Tensor& reference = args.any_grad();
  const device::Guard guard(reference.device());
  const at::Tensor& positions = args.positions;
  auto grad_x = at::empty(input_size, reference.options());
  const int64_t total = grad_x.numel();
  if (total == 0) return grad_x;
  const auto stream = device::current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, reference.scalar_type(), "pool3x3_pair_backward_cuda", [&] {
    FASTNAS_LAUNCH(blocks_for(total), kThreads, 0, stream, pool_pair_backward_kernel<scalar_t>)(
        args.grad_max.defined() ? args.grad_max.data_ptr<scalar_t>() : nullptr,
        args.grad_avg.defined() ? args.grad_avg.data_ptr<scalar_t>() : nullptr,
        positions.data_ptr<uint8_t>(), grad_x.data_ptr<scalar_t>(), total, input_size[2], input_size[3],
        positions.size(2), positions.size(3), stride);
    FASTNAS_LAUNCH_CHECK();
  });
  return grad_x;
}

}  // namespace

FASTNAS_CUDA_KERNELS(m) {
  FASTNAS_CUDA_IMPL(m, "pool3x3_pair", pool3x3_pair_cuda);
  FASTNAS_CUDA_IMPL(m, "pool3x3_pair_backward", pool3x3_pair_backward_cuda);
}

}  // namespace fastnas
