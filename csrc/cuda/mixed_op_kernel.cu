// Weighted sum of candidate outputs on CUDA. One launch reads every computed
// candidate once; the backward reads the gradient once, writes every candidate's
// gradient and reduces the weight gradients per block (deterministic two-stage sum).
// The weights stay on the device: nothing here synchronises with the host.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>
#include <type_traits>
#include <vector>

#include "../checks.h"
#include "../ops.h"

namespace fastnas {
namespace {

constexpr int kMaxCandidates = 32;
constexpr int kThreads = 256;

template <typename T>
struct PointerTable {
  T* values[kMaxCandidates];
};

template <typename scalar_t>
PointerTable<const scalar_t> input_table(const std::vector<at::Tensor>& inputs) {
  PointerTable<const scalar_t> table{};
  for (size_t j = 0; j < inputs.size(); ++j) table.values[j] = inputs[j].data_ptr<scalar_t>();
  return table;
}

std::vector<at::Tensor> gather_inputs(at::TensorList outputs) {
  FASTNAS_CHECK(static_cast<int>(outputs.size()) <= kMaxCandidates, outputs.size(),
                " computed candidates exceed the CUDA kernel's limit of ", kMaxCandidates,
                "; split the mixed op into smaller ones");
  std::vector<at::Tensor> inputs;
  for (const at::Tensor& out : outputs) inputs.push_back(out.contiguous());
  return inputs;
}

// Weights of the computed candidates in the accumulation type, gathered on the device.
at::Tensor computed_weights(const at::Tensor& weights, at::IntArrayRef computed,
                            at::ScalarType acc_type) {
  const auto index = at::tensor(computed.vec(), at::kLong).to(weights.device(), /*non_blocking=*/true);
  return weights.detach().index_select(0, index).to(acc_type).contiguous();
}

int64_t grid_for(int64_t work) {
  const int64_t max_blocks =
      static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 8;
  return std::max<int64_t>(1, std::min<int64_t>((work + kThreads - 1) / kThreads, max_blocks));
}

// Kernels are templated on the candidate count (kCount > 0) so the per-candidate loops
// unroll and the weight-gradient partial sums live in registers; kCount == 0 is the
// general path for any count up to kMaxCandidates (its sums spill to local memory).
constexpr int kMaxTemplatedCount = 8;

template <int kCount>
__device__ __forceinline__ int candidate_count(int runtime_count) {
  return kCount > 0 ? kCount : runtime_count;
}

template <typename scalar_t, typename index_t, int kCount>
__global__ void forward_kernel(PointerTable<const scalar_t> inputs, int num_inputs,
                               const at::opmath_type<scalar_t>* __restrict__ weights,
                               scalar_t* __restrict__ out, index_t numel) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kSlots = kCount > 0 ? kCount : kMaxCandidates;
  const int count = candidate_count<kCount>(num_inputs);
  for (index_t i = blockIdx.x * blockDim.x + threadIdx.x; i < numel;
       i += static_cast<index_t>(gridDim.x) * blockDim.x) {
    acc_t acc = 0;
#pragma unroll
    for (int j = 0; j < kSlots; ++j) {
      if (j < count) acc += weights[j] * static_cast<acc_t>(inputs.values[j][i]);
    }
    out[i] = static_cast<scalar_t>(acc);
  }
}

// Block b writes partial[b][j] = its share of sum_i grad[i] * inputs[j][i].
template <typename scalar_t, typename index_t, int kCount>
__global__ void backward_kernel(const scalar_t* __restrict__ grad,
                                PointerTable<const scalar_t> inputs, int num_inputs,
                                const at::opmath_type<scalar_t>* __restrict__ weights,
                                PointerTable<scalar_t> input_grads, bool need_input_grads,
                                at::opmath_type<scalar_t>* __restrict__ partial, index_t numel) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kSlots = kCount > 0 ? kCount : kMaxCandidates;
  const int count = candidate_count<kCount>(num_inputs);
  acc_t dots[kSlots];
#pragma unroll
  for (int j = 0; j < kSlots; ++j) dots[j] = 0;
  for (index_t i = blockIdx.x * blockDim.x + threadIdx.x; i < numel;
       i += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const acc_t g = static_cast<acc_t>(grad[i]);
#pragma unroll
    for (int j = 0; j < kSlots; ++j) {
      if (j < count) {
        dots[j] += g * static_cast<acc_t>(inputs.values[j][i]);
        if (need_input_grads) input_grads.values[j][i] = static_cast<scalar_t>(weights[j] * g);
      }
    }
  }
  __shared__ acc_t warp_sums[kThreads / 32];
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
#pragma unroll
  for (int j = 0; j < kSlots; ++j) {
    if (j >= count) break;
    acc_t v = dots[j];
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
    if (lane == 0) warp_sums[warp] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
      acc_t total = 0;
      for (int w = 0; w < kThreads / 32; ++w) total += warp_sums[w];
      partial[blockIdx.x * count + j] = total;
    }
    __syncthreads();
  }
}

// Calls launch(std::integral_constant<int, K>) with K = count for 1..kMaxTemplatedCount
// candidates and 32-bit indices, else with K = 0 (the general kernel).
template <typename Launch>
void with_candidate_count(int count, bool small_index, const Launch& launch) {
  if (small_index) {
    switch (count) {
      case 1: return launch(std::integral_constant<int, 1>{});
      case 2: return launch(std::integral_constant<int, 2>{});
      case 3: return launch(std::integral_constant<int, 3>{});
      case 4: return launch(std::integral_constant<int, 4>{});
      case 5: return launch(std::integral_constant<int, 5>{});
      case 6: return launch(std::integral_constant<int, 6>{});
      case 7: return launch(std::integral_constant<int, 7>{});
      case 8: return launch(std::integral_constant<int, 8>{});
      default: break;
    }
  }
  static_assert(kMaxTemplatedCount == 8, "extend the switch above");
  launch(std::integral_constant<int, 0>{});
}

at::Tensor mixed_op_cuda(at::TensorList outputs, const at::Tensor& weights,
                         at::IntArrayRef computed) {
  check_mixed_op_args(outputs, weights, computed);
  const std::vector<at::Tensor> inputs = gather_inputs(outputs);
  const c10::cuda::CUDAGuard guard(inputs.front().device());
  auto out = at::empty(inputs.front().sizes(), inputs.front().options());
  const int64_t numel = out.numel();
  if (numel == 0) return out;
  const at::Tensor w = computed_weights(weights, computed, at::toOpMathType(out.scalar_type()));
  const int num_inputs = static_cast<int>(inputs.size());
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "mixed_op_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto table = input_table<scalar_t>(inputs);
    const bool small_index = numel <= std::numeric_limits<int32_t>::max();
    with_candidate_count(num_inputs, small_index, [&](auto count) {
      constexpr int kCount = decltype(count)::value;
      if (small_index) {
        forward_kernel<scalar_t, int32_t, kCount><<<grid_for(numel), kThreads, 0, stream>>>(
            table, num_inputs, w.data_ptr<acc_t>(), out.data_ptr<scalar_t>(), static_cast<int32_t>(numel));
      } else {
        forward_kernel<scalar_t, int64_t, 0><<<grid_for(numel), kThreads, 0, stream>>>(
            table, num_inputs, w.data_ptr<acc_t>(), out.data_ptr<scalar_t>(), numel);
      }
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> mixed_op_backward_cuda(
    const at::Tensor& grad_in, at::TensorList outputs, const at::Tensor& weights,
    at::IntArrayRef computed, bool need_output_grads) {
  check_mixed_op_args(outputs, weights, computed);
  const std::vector<at::Tensor> inputs = gather_inputs(outputs);
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const at::Tensor grad = grad_in.contiguous();
  const int64_t numel = grad.numel();
  const int num_inputs = static_cast<int>(inputs.size());
  const auto acc_type = at::toOpMathType(grad.scalar_type());
  std::vector<at::Tensor> output_grads;
  if (need_output_grads) {
    for (int j = 0; j < num_inputs; ++j) output_grads.push_back(at::empty_like(grad));
  }
  const int64_t blocks = grid_for(numel);
  auto partial = at::zeros({blocks, num_inputs}, grad.options().dtype(acc_type));
  if (numel > 0) {
    const at::Tensor w = computed_weights(weights, computed, acc_type);
    auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(),
                                    "mixed_op_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto table = input_table<scalar_t>(inputs);
      PointerTable<scalar_t> grads{};
      for (size_t j = 0; j < output_grads.size(); ++j) {
        grads.values[j] = output_grads[j].data_ptr<scalar_t>();
      }
      const bool small_index = numel <= std::numeric_limits<int32_t>::max();
      with_candidate_count(num_inputs, small_index, [&](auto count) {
        constexpr int kCount = decltype(count)::value;
        if (small_index) {
          backward_kernel<scalar_t, int32_t, kCount><<<blocks, kThreads, 0, stream>>>(
              grad.data_ptr<scalar_t>(), table, num_inputs, w.data_ptr<acc_t>(), grads,
              need_output_grads, partial.data_ptr<acc_t>(), static_cast<int32_t>(numel));
        } else {
          backward_kernel<scalar_t, int64_t, 0><<<blocks, kThreads, 0, stream>>>(
              grad.data_ptr<scalar_t>(), table, num_inputs, w.data_ptr<acc_t>(), grads,
              need_output_grads, partial.data_ptr<acc_t>(), numel);
        }
      });
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  // Skipped candidates were never computed, so their weights get a zero gradient.
  auto grad_weights = at::zeros({weights.size(0)}, weights.options());
  const auto index = at::tensor(computed.vec(), at::kLong).to(weights.device(), /*non_blocking=*/true);
  grad_weights.index_copy_(0, index, partial.sum(0).to(weights.scalar_type()));
  return {output_grads, grad_weights};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastnas, CUDA, m) {
  m.impl("mixed_op", &mixed_op_cuda);
  m.impl("mixed_op_backward", &mixed_op_backward_cuda);
}

}  // namespace fastnas
