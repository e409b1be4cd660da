// The 3x3 max + average pooling pair on CUDA. Forward: a thread per output reads its
// window once for both pools. Backward: a thread per input gathers from the (at most 9)
// windows covering it, so nothing is written twice and no atomics are needed. Both count
// in 32 bits where the tensors allow, with strides 1 and 2 as constants.
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

// kStride > 0: the stride as a constant (1 and 2, a DARTS edge's), so its divisions fold;
// 0: any stride, passed at run time.
template <int kStride, typename index_t>
__device__ __forceinline__ index_t stride_of(index_t stride) {
  return kStride > 0 ? index_t{kStride} : stride;
}

template <typename scalar_t, typename index_t, int kStride>
__global__ void pool_pair_forward_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ max_out,
                                         scalar_t* __restrict__ avg_out, uint8_t* __restrict__ positions,
                                         index_t total, index_t height, index_t width, index_t out_h, index_t out_w,
                                         index_t runtime_stride) {
  using acc_t = at::opmath_type<scalar_t>;
  const index_t stride = stride_of<kStride>(runtime_stride);
  for (index_t o = blockIdx.x * blockDim.x + threadIdx.x; o < total; o += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const auto [plane, oh, ow] = plane_position(o, out_h, out_w);
    acc_t mean;
    pool_pair_at<scalar_t, acc_t, index_t>(x + plane * height * width, height, width, oh, ow, stride, &max_out[o],
                                           &mean, &positions[o]);
    avg_out[o] = static_cast<scalar_t>(mean);
  }
}

template <typename scalar_t, typename index_t, int kStride>
__global__ void pool_pair_backward_kernel(const scalar_t* __restrict__ grad_max, const scalar_t* __restrict__ grad_avg,
                                          const uint8_t* __restrict__ positions, scalar_t* __restrict__ grad_x,
                                          index_t total, index_t height, index_t width, index_t out_h, index_t out_w,
                                          index_t runtime_stride) {
  using acc_t = at::opmath_type<scalar_t>;
  const index_t stride = stride_of<kStride>(runtime_stride);
  for (index_t i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const auto [plane, h, w] = plane_position(i, height, width);
    grad_x[i] = static_cast<scalar_t>(pool_pair_input_grad<scalar_t, acc_t, index_t>(
        grad_max, grad_avg, positions, plane * out_h * out_w, h, w, height, width, out_h, out_w, stride));
  }
}

// Calls launch(index type, stride constant) for a grid-stride loop over `work` items that
// also indexes a tensor of `other_numel`: 32-bit indices where both fit, the stride as a
// constant for 1 and 2.
template <typename Launch>
void with_index_and_stride(int64_t work, int64_t other_numel, int64_t stride, const Launch& launch) {
  const bool narrow = int32_grid_stride_fits(std::max(work, other_numel), blocks_for(work), kThreads);
  const auto with_stride = [&](auto index) {
    if (stride == 1) return launch(index, std::integral_constant<int, 1>{});
    if (stride == 2) return launch(index, std::integral_constant<int, 2>{});
    return launch(index, std::integral_constant<int, 0>{});
  };
  if (narrow) return with_stride(int32_t{});
  with_stride(int64_t{});
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
    with_index_and_stride(total, x.numel(), stride, [&](auto index, auto stride_constant) {
      using index_t = decltype(index);
      FASTNAS_LAUNCH(blocks_for(total), kThreads, 0, stream,
                     pool_pair_forward_kernel<scalar_t, index_t, decltype(stride_constant)::value>)(
          x.data_ptr<scalar_t>(), max_out.data_ptr<scalar_t>(), avg_out.data_ptr<scalar_t>(),
          positions.data_ptr<uint8_t>(), static_cast<index_t>(total), static_cast<index_t>(x.size(2)),
          static_cast<index_t>(x.size(3)), static_cast<index_t>(out_h), static_cast<index_t>(out_w),
          static_cast<index_t>(stride));
      FASTNAS_LAUNCH_CHECK();
    });
  });
  return {max_out, avg_out, positions};
}

at::Tensor pool3x3_pair_backward_cuda(const std::optional<at::Tensor>& grad_max_in,
                                      const std::optional<at::Tensor>& grad_avg_in, const at::Tensor& positions_in,
                                      at::IntArrayRef input_size, int64_t stride) {
  const PoolPairBackwardArgs args =
      check_pool_pair_backward_args(grad_max_in, grad_avg_in, positions_in, input_size, stride);
  const at::Tensor& reference = args.any_grad();
  const device::Guard guard(reference.device());
  const at::Tensor& positions = args.positions;
  auto grad_x = at::empty(input_size, reference.options());
  const int64_t total = grad_x.numel();
  if (total == 0) return grad_x;
  const auto stream = device::current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, reference.scalar_type(), "pool3x3_pair_backward_cuda", [&] {
    with_index_and_stride(total, positions.numel(), stride, [&](auto index, auto stride_constant) {
      using index_t = decltype(index);
      FASTNAS_LAUNCH(blocks_for(total), kThreads, 0, stream,
                     pool_pair_backward_kernel<scalar_t, index_t, decltype(stride_constant)::value>)(
          args.grad_max.defined() ? args.grad_max.data_ptr<scalar_t>() : nullptr,
          args.grad_avg.defined() ? args.grad_avg.data_ptr<scalar_t>() : nullptr, positions.data_ptr<uint8_t>(),
          grad_x.data_ptr<scalar_t>(), static_cast<index_t>(total), static_cast<index_t>(input_size[2]),
          static_cast<index_t>(input_size[3]), static_cast<index_t>(positions.size(2)),
          static_cast<index_t>(positions.size(3)), static_cast<index_t>(stride));
      FASTNAS_LAUNCH_CHECK();
    });
  });
  return grad_x;
}

}  // namespace

FASTNAS_CUDA_KERNELS(m) {
  FASTNAS_CUDA_IMPL(m, "pool3x3_pair", pool3x3_pair_cuda);
  FASTNAS_CUDA_IMPL(m, "pool3x3_pair_backward", pool3x3_pair_backward_cuda);
}

}  // namespace fastnas
