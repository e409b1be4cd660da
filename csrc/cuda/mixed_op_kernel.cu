// Weighted sum of candidate outputs on CUDA. One launch reads every computed
// candidate once; the backward reads the gradient once, writes every candidate's
// gradient and reduces the weight gradients per block (deterministic two-stage sum).
// The batch-normalised variant (a DARTS edge: BN without affine at the end of each
// candidate, then the weighted sum) adds one per-(candidate, channel) reduction before
// each pass and never materialises the normalised outputs.
// The weights stay on the device: nothing here synchronises with the host.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <type_traits>
#include <vector>

#include "../checks.h"
#include "../elementwise_layout.h"
#include "../normalization_math.h"
#include "../ops.h"
#include "grid_stride.cuh"
#include "runtime.cuh"

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

// The computed candidates' weights, read by the kernels: `all` holds every candidate's weight
// (on the device, in the accumulation type), index[j] is computed output j's candidate. Passed
// in the kernel's parameters, so nothing is copied from the host and nothing waits for it.
template <typename acc_t>
struct WeightTable {
  const acc_t* all;
  int32_t index[kMaxCandidates];

  // j must be a compile-time index (an unrolled loop's): a run-time index into a kernel
  // parameter array makes nvcc copy the array to local memory.
  __device__ __forceinline__ acc_t of(int j) const { return all[index[j]]; }
};

// All K weights in the accumulation type: no copy (and no launch) where they have it already.
at::Tensor accumulation_weights(const at::Tensor& weights, at::ScalarType acc_type) {
  return weights.detach().to(acc_type).contiguous();
}

template <typename acc_t>
WeightTable<acc_t> weight_table(const at::Tensor& all_weights, at::IntArrayRef computed) {
  WeightTable<acc_t> table{};
  table.all = all_weights.data_ptr<acc_t>();
  for (size_t j = 0; j < computed.size(); ++j) table.index[j] = static_cast<int32_t>(computed[j]);
  return table;
}

// 16 bytes of one dtype: the width of one vector load or store.
template <typename scalar_t>
struct alignas(16) Vector16 {
  static constexpr int kSize = 16 / sizeof(scalar_t);
  scalar_t values[kSize];
};

bool aligned16(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }

// Candidates in the layout the op runs in, 16-byte aligned (a view at an odd offset is copied: the kernels load
// 16 bytes at a time).
std::vector<at::Tensor> gather_inputs(at::TensorList outputs, const ElementwiseLayout& layout) {
  FASTNAS_CHECK(static_cast<int>(outputs.size()) <= kMaxCandidates, outputs.size(),
                " computed candidates exceed the CUDA kernel's limit of ", kMaxCandidates,
                "; split the mixed op into smaller ones");
  std::vector<at::Tensor> inputs;
  for (const at::Tensor& out : outputs) {
    at::Tensor input = layout.prepare(out);
    inputs.push_back(aligned16(input) ? input : input.clone());  // clone keeps the strides
  }
  return inputs;
}

// Grid of a grid-stride kernel: as many blocks as the SMs hold at once (the occupancy the
// compiled kernel allows), fewer for small work.
template <typename Kernel>
int64_t resident_grid(Kernel, int64_t work) {
  return grid_stride_blocks(work, kThreads, device::max_active_blocks_per_sm(Kernel::pointer, kThreads, 0));
}

// Kernels are templated on the candidate count (kCount > 0) so the per-candidate loops
// unroll and the weight-gradient partial sums live in registers; kCount == 0 is the
// general path for any count up to kMaxCandidates (its sums spill to local memory).
constexpr int kMaxTemplatedCount = 8;

template <int kCount>
__device__ __forceinline__ int candidate_count(int runtime_count) {
  return kCount > 0 ? kCount : runtime_count;
}

// out = sum_j w_j * inputs[j], 16 bytes per load and store, then the numel % width tail.
template <typename scalar_t, typename index_t, int kCount>
__global__ void mixed_forward_kernel(PointerTable<const scalar_t> inputs, int num_inputs,
                                     WeightTable<at::opmath_type<scalar_t>> weights, scalar_t* __restrict__ out,
                                     index_t numel) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vector = Vector16<scalar_t>;
  constexpr int kSlots = kCount > 0 ? kCount : kMaxCandidates;
  constexpr int kWidth = Vector::kSize;
  const int count = candidate_count<kCount>(num_inputs);
  acc_t w[kSlots];
#pragma unroll
  for (int j = 0; j < kSlots; ++j) w[j] = j < count ? weights.of(j) : acc_t(0);
  const index_t first = blockIdx.x * blockDim.x + threadIdx.x;
  const index_t step = static_cast<index_t>(gridDim.x) * blockDim.x;
  const index_t vectors = numel / kWidth;
  for (index_t v = first; v < vectors; v += step) {
    acc_t acc[kWidth] = {};
#pragma unroll
    for (int j = 0; j < kSlots; ++j) {
      if (j < count) {
        const Vector x = load_vector<Vector>(inputs.values[j], v);
#pragma unroll
        for (int e = 0; e < kWidth; ++e) acc[e] += w[j] * static_cast<acc_t>(x.values[e]);
      }
    }
    Vector result;
#pragma unroll
    for (int e = 0; e < kWidth; ++e) result.values[e] = static_cast<scalar_t>(acc[e]);
    store_vector(out, v, result);
  }
  for (index_t i = vectors * kWidth + first; i < numel; i += step) {
    acc_t acc = 0;
#pragma unroll
    for (int j = 0; j < kSlots; ++j) {
      if (j < count) acc += w[j] * static_cast<acc_t>(inputs.values[j][i]);
    }
    out[i] = static_cast<scalar_t>(acc);
  }
}

// Sums v over a block of kBlockThreads; the total is valid in thread 0. Ends with a
// barrier, so the shared slots can be reused at once.
template <int kBlockThreads, typename acc_t>
__device__ __forceinline__ acc_t block_sum(acc_t v) {
  __shared__ acc_t warp_sums[kBlockThreads / 32];
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = v;
  __syncthreads();
  acc_t total = 0;
  if (threadIdx.x == 0) {
    for (int w = 0; w < kBlockThreads / 32; ++w) total += warp_sums[w];
  }
  __syncthreads();
  return total;
}

// One pass over the gradient: every candidate's gradient w_j * grad (if asked for), and
// per block the sums grad . inputs[j] into partial[block][j]. The last block to finish adds
// the partial sums up in block order (deterministic) and writes all K weight gradients,
// 0 for the candidates that were not computed: the whole backward is this one launch.
template <typename scalar_t, typename index_t, int kCount>
__global__ void mixed_backward_kernel(const scalar_t* __restrict__ grad, PointerTable<const scalar_t> inputs,
                                      int num_inputs, WeightTable<at::opmath_type<scalar_t>> weights,
                                      PointerTable<scalar_t> input_grads, bool need_input_grads,
                                      at::opmath_type<scalar_t>* __restrict__ partial,
                                      unsigned* __restrict__ blocks_done,
                                      at::opmath_type<scalar_t>* __restrict__ weight_grads, int num_weights,
                                      index_t numel) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vector = Vector16<scalar_t>;
  constexpr int kSlots = kCount > 0 ? kCount : kMaxCandidates;
  constexpr int kWidth = Vector::kSize;
  const int count = candidate_count<kCount>(num_inputs);
  acc_t w[kSlots], dots[kSlots];
#pragma unroll
  for (int j = 0; j < kSlots; ++j) {
    w[j] = j < count ? weights.of(j) : acc_t(0);
    dots[j] = 0;
  }
  const index_t first = blockIdx.x * blockDim.x + threadIdx.x;
  const index_t step = static_cast<index_t>(gridDim.x) * blockDim.x;
  const index_t vectors = numel / kWidth;
  for (index_t v = first; v < vectors; v += step) {
    const Vector g = load_vector<Vector>(grad, v);
#pragma unroll
    for (int j = 0; j < kSlots; ++j) {
      if (j < count) {
        const Vector x = load_vector<Vector>(inputs.values[j], v);
        Vector scaled;
#pragma unroll
        for (int e = 0; e < kWidth; ++e) {
          const acc_t ge = static_cast<acc_t>(g.values[e]);
          dots[j] += ge * static_cast<acc_t>(x.values[e]);
          scaled.values[e] = static_cast<scalar_t>(w[j] * ge);
        }
        if (need_input_grads) store_vector(input_grads.values[j], v, scaled);
      }
    }
  }
  for (index_t i = vectors * kWidth + first; i < numel; i += step) {
    const acc_t g = static_cast<acc_t>(grad[i]);
#pragma unroll
    for (int j = 0; j < kSlots; ++j) {
      if (j < count) {
        dots[j] += g * static_cast<acc_t>(inputs.values[j][i]);
        if (need_input_grads) input_grads.values[j][i] = static_cast<scalar_t>(w[j] * g);
      }
    }
  }
#pragma unroll
  for (int j = 0; j < kSlots; ++j) {
    if (j >= count) break;
    const acc_t total = block_sum<kThreads>(dots[j]);
    if (threadIdx.x == 0) partial[blockIdx.x * count + j] = total;
  }
  __shared__ bool last_block;
  if (threadIdx.x == 0) {
    __threadfence();  // this block's partial sums before its count
    last_block = atomicAdd(blocks_done, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!last_block) return;
  __threadfence();  // and the other blocks' partial sums before reading them
  for (int k = threadIdx.x; k < num_weights; k += blockDim.x) {
    acc_t total = 0;
#pragma unroll
    for (int j = 0; j < kSlots; ++j) {
      if (j < count && weights.index[j] == k) {
        for (unsigned b = 0; b < gridDim.x; ++b) total += partial[b * count + j];
      }
    }
    weight_grads[k] = total;
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

// Calls launch(kernel, blocks, index) with the kernel for `count` candidates (a KernelRef)
// and the index width its grid needs: the 32-bit, count-templated kernel where a
// grid-stride loop over numel fits int32 (sized by its own occupancy), else the 64-bit
// general one.
template <typename Launch, typename Narrow, typename Wide>
void with_mixed_kernel(int64_t numel, int count, Narrow narrow_kernel, Wide wide_kernel, const Launch& launch) {
  with_candidate_count(count, true, [&](auto k) {
    const auto kernel = narrow_kernel(k);
    const int64_t blocks = resident_grid(kernel, numel);
    if (int32_grid_stride_fits(numel, blocks, kThreads)) {
      launch(kernel, blocks, int32_t{});
    } else {
      launch(wide_kernel, resident_grid(wide_kernel, numel), int64_t{});
    }
  });
}

at::Tensor mixed_op_cuda(at::TensorList outputs, const at::Tensor& weights, at::IntArrayRef computed) {
  check_mixed_op_args(outputs, weights, computed);
  const ElementwiseLayout layout(outputs);
  const std::vector<at::Tensor> inputs = gather_inputs(outputs, layout);
  const device::Guard guard(inputs.front().device());
  at::Tensor out = layout.empty_like(inputs.front());
  const int64_t numel = out.numel();
  if (numel == 0) return out;
  const int num_inputs = static_cast<int>(inputs.size());
  const auto stream = device::current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "mixed_op_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor all_weights = accumulation_weights(weights, at::toOpMathType(out.scalar_type()));
    const auto table = input_table<scalar_t>(inputs);
    const auto weight_values = weight_table<acc_t>(all_weights, computed);
    with_mixed_kernel(
        numel, num_inputs,
        [](auto k) { return KernelRef<&mixed_forward_kernel<scalar_t, int32_t, decltype(k)::value>>{}; },
        KernelRef<&mixed_forward_kernel<scalar_t, int64_t, 0>>{}, [&](auto kernel, int64_t blocks, auto index) {
          using index_t = decltype(index);
          constexpr auto kernel_pointer = decltype(kernel)::pointer;
          FASTNAS_LAUNCH(blocks, kThreads, 0, stream, kernel_pointer)(table, num_inputs, weight_values,
                                                                      out.data_ptr<scalar_t>(),
                                                                      static_cast<index_t>(numel));
          FASTNAS_LAUNCH_CHECK();
        });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> mixed_op_backward_cuda(
    const at::Tensor& grad_in, at::TensorList outputs, const at::Tensor& weights,
    at::IntArrayRef computed, bool need_output_grads) {
  check_mixed_op_backward_args(grad_in, outputs, weights, computed);
  const ElementwiseLayout layout(outputs, grad_in);
  const std::vector<at::Tensor> inputs = gather_inputs(outputs, layout);
  const device::Guard guard(grad_in.device());
  at::Tensor grad = layout.prepare(grad_in);
  if (!aligned16(grad)) grad = grad.clone();
  const int64_t numel = grad.numel();
  const int num_inputs = static_cast<int>(inputs.size());
  const int num_weights = static_cast<int>(weights.size(0));
  const auto acc_type = at::toOpMathType(grad.scalar_type());
  const at::Tensor output_grads = layout.empty_stacked(need_output_grads ? num_inputs : 0, grad);
  if (numel == 0) return {output_grads, at::zeros_like(weights)};
  auto weight_grads = at::empty({num_weights}, weights.options().dtype(acc_type));
  const auto stream = device::current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "mixed_op_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor all_weights = accumulation_weights(weights, acc_type);
    const auto table = input_table<scalar_t>(inputs);
    const auto weight_values = weight_table<acc_t>(all_weights, computed);
    PointerTable<scalar_t> grads{};
    for (int64_t j = 0; j < output_grads.size(0); ++j) grads.values[j] = output_grads[j].data_ptr<scalar_t>();
    with_mixed_kernel(
        numel, num_inputs,
        [](auto k) { return KernelRef<&mixed_backward_kernel<scalar_t, int32_t, decltype(k)::value>>{}; },
        KernelRef<&mixed_backward_kernel<scalar_t, int64_t, 0>>{}, [&](auto kernel, int64_t blocks, auto index) {
          using index_t = decltype(index);
          constexpr auto kernel_pointer = decltype(kernel)::pointer;
          const CountedScratch<acc_t> scratch(1, blocks * num_inputs, grad.options());
          FASTNAS_LAUNCH(blocks, kThreads, 0, stream, kernel_pointer)(
              grad.data_ptr<scalar_t>(), table, num_inputs, weight_values, grads, need_output_grads, scratch.values,
              scratch.counters,
              weight_grads.data_ptr<acc_t>(), num_weights, static_cast<index_t>(numel));
          FASTNAS_LAUNCH_CHECK();
        });
  });
  return {output_grads, weight_grads.to(weights.scalar_type())};
}

// ---- batch-normalised mixed op ----------------------------------------------------------
constexpr int kReduceThreads = 512;

// values[index] read with static indices only: a run-time index into a register array
// makes nvcc move the whole array to local memory.
template <int kSlots, typename T>
__device__ __forceinline__ T shift_of(const T (&values)[kSlots], int index) {
  T result = values[0];
#pragma unroll
  for (int j = 1; j < kSlots; ++j) {
    if (j == index) result = values[j];
  }
  return result;
}

// Threads of a reduction block cover `rows` planes at a time, `lanes` threads per plane
// (a multiple of 32), so small planes (8x8) still keep every thread busy.
struct PlaneTiling {
  int lanes, rows;
  __host__ __device__ __forceinline__ static PlaneTiling of(int64_t plane) {
    int lanes = kReduceThreads;
    while (lanes > 32 && lanes / 2 >= plane) lanes /= 2;
    return {lanes, kReduceThreads / lanes};
  }
};

// The per-channel reductions of the batch-normalised mixed op run on grid (channel, split):
// a block sums its share of the channel's images for every candidate in one pass, writes
// its kValues partial sums per candidate to partial[channel][split], and the channel's last
// block to finish adds the splits in order (deterministic). Returns true in that block,
// whose thread j then holds candidate j's totals in totals[0..kValues).
template <int kValues, int kSlots, typename acc_t>
__device__ __forceinline__ bool channel_totals(acc_t (&sums)[kValues][kSlots], int count, acc_t* partial,
                                               unsigned* channel_blocks_done, acc_t (&totals)[kValues]) {
  const int64_t c = blockIdx.x;
  const int split = blockIdx.y, splits = gridDim.y;
  const int64_t row = kValues * static_cast<int64_t>(count);  // one split's partial sums
#pragma unroll
  for (int j = 0; j < kSlots; ++j) {
    if (j >= count) break;
#pragma unroll
    for (int v = 0; v < kValues; ++v) {
      const acc_t total = block_sum<kReduceThreads>(sums[v][j]);
      if (threadIdx.x == 0) partial[(c * splits + split) * row + v * count + j] = total;
    }
  }
  __shared__ bool last_block;
  if (threadIdx.x == 0) {
    __threadfence();  // this block's partial sums before its count
    last_block = atomicAdd(channel_blocks_done + c, 1u) == static_cast<unsigned>(splits) - 1;
  }
  __syncthreads();
  if (!last_block) return false;
  __threadfence();  // and the other splits' partial sums before reading them
  if (threadIdx.x < count) {
#pragma unroll
    for (int v = 0; v < kValues; ++v) {
      totals[v] = 0;
      for (int s = 0; s < splits; ++s) totals[v] += partial[(c * splits + s) * row + v * count + threadIdx.x];
    }
  }
  return true;
}

// Mean, variance and invstd of every candidate's channel c over (N, H, W), shifted by the
// channel's first value (finalize_moments); not normalised: mean 0, variance 0, invstd 1.
template <typename scalar_t, int kCount>
__global__ void __launch_bounds__(kReduceThreads) batch_norm_stats_kernel(
    PointerTable<const scalar_t> inputs, int num_inputs, uint32_t normalized_mask, int64_t batch, int64_t channels,
    int64_t plane, double eps, at::opmath_type<scalar_t>* partial, unsigned* channel_blocks_done,
    at::opmath_type<scalar_t>* __restrict__ mean, at::opmath_type<scalar_t>* __restrict__ variance,
    at::opmath_type<scalar_t>* __restrict__ invstd) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kSlots = kCount > 0 ? kCount : kMaxCandidates;
  const int count = candidate_count<kCount>(num_inputs);
  const int64_t c = blockIdx.x;
  acc_t shifts[kSlots], sums[2][kSlots];
#pragma unroll
  for (int j = 0; j < kSlots; ++j) {
    shifts[j] = j < count ? static_cast<acc_t>(inputs.values[j][c * plane]) : acc_t(0);
    sums[0][j] = 0;
    sums[1][j] = 0;
  }
  const PlaneTiling tiling = PlaneTiling::of(plane);
  for (int64_t n = blockIdx.y * tiling.rows + threadIdx.x / tiling.lanes; n < batch;
       n += static_cast<int64_t>(gridDim.y) * tiling.rows) {
    const int64_t offset = (n * channels + c) * plane;
    for (int64_t p = threadIdx.x % tiling.lanes; p < plane; p += tiling.lanes) {
#pragma unroll
      for (int j = 0; j < kSlots; ++j) {
        if (j < count && ((normalized_mask >> j) & 1u)) {
          const acc_t v = static_cast<acc_t>(inputs.values[j][offset + p]) - shifts[j];
          sums[0][j] += v;
          sums[1][j] += v * v;
        }
      }
    }
  }
  acc_t totals[2];
  if (!channel_totals(sums, count, partial, channel_blocks_done, totals) || threadIdx.x >= count) return;
  const int j = threadIdx.x;
  const int64_t slot = j * channels + c;
  if ((normalized_mask >> j) & 1u) {
    finalize_moments(totals[0], totals[1], batch * plane, shift_of<kSlots>(shifts, j), eps, &mean[slot],
                     &variance[slot], &invstd[slot]);
  } else {
    mean[slot] = 0;
    variance[slot] = 0;
    invstd[slot] = 1;
  }
}

// sum(g) and sum(g * x_j) over channel c for every candidate j in one pass over the
// incoming gradient, x_j the normalised candidate (the candidate itself where it is not
// normalised: mean 0, invstd 1).
template <typename scalar_t, int kCount>
__global__ void __launch_bounds__(kReduceThreads) batch_norm_grad_sums_kernel(
    const scalar_t* __restrict__ grad, PointerTable<const scalar_t> inputs, int num_inputs, int64_t batch,
    int64_t channels, int64_t plane, const at::opmath_type<scalar_t>* __restrict__ mean,
    const at::opmath_type<scalar_t>* __restrict__ invstd, at::opmath_type<scalar_t>* partial,
    unsigned* channel_blocks_done, at::opmath_type<scalar_t>* __restrict__ sum_g,
    at::opmath_type<scalar_t>* __restrict__ sum_gx) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kSlots = kCount > 0 ? kCount : kMaxCandidates;
  const int count = candidate_count<kCount>(num_inputs);
  const int64_t c = blockIdx.x;
  // sums[0][j] = sum(g), the same for every candidate: kept per candidate so that
  // channel_totals treats both sums alike
  acc_t shifts[kSlots], sums[2][kSlots];
#pragma unroll
  for (int j = 0; j < kSlots; ++j) {
    shifts[j] = j < count ? static_cast<acc_t>(inputs.values[j][c * plane]) : acc_t(0);
    sums[0][j] = 0;
    sums[1][j] = 0;
  }
  const PlaneTiling tiling = PlaneTiling::of(plane);
  acc_t g_total = 0;
  for (int64_t n = blockIdx.y * tiling.rows + threadIdx.x / tiling.lanes; n < batch;
       n += static_cast<int64_t>(gridDim.y) * tiling.rows) {
    const int64_t offset = (n * channels + c) * plane;
    for (int64_t p = threadIdx.x % tiling.lanes; p < plane; p += tiling.lanes) {
      const acc_t g = static_cast<acc_t>(grad[offset + p]);
      g_total += g;
#pragma unroll
      for (int j = 0; j < kSlots; ++j) {
        if (j < count) sums[1][j] += g * (static_cast<acc_t>(inputs.values[j][offset + p]) - shifts[j]);
      }
    }
  }
#pragma unroll
  for (int j = 0; j < kSlots; ++j) sums[0][j] = g_total;
  acc_t totals[2];
  if (!channel_totals(sums, count, partial, channel_blocks_done, totals) || threadIdx.x >= count) return;
  const int j = threadIdx.x;
  const int64_t slot = j * channels + c;
  sum_g[slot] = totals[0];
  sum_gx[slot] = normalized_dot(totals[1], totals[0], mean[slot], shift_of<kSlots>(shifts, j), invstd[slot]);
}

// Grid (x: spans of a plane, y: planes, strided): out = sum_j w_j * (z_j - mean) * invstd.
template <typename scalar_t, int kCount>
__global__ void batch_norm_mixed_forward_kernel(PointerTable<const scalar_t> inputs, int num_inputs,
                                                WeightTable<at::opmath_type<scalar_t>> weights,
                                                const at::opmath_type<scalar_t>* __restrict__ mean,
                                                const at::opmath_type<scalar_t>* __restrict__ invstd,
                                                scalar_t* __restrict__ out, int64_t num_planes,
                                                int64_t channels, int64_t plane) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kSlots = kCount > 0 ? kCount : kMaxCandidates;
  const int count = candidate_count<kCount>(num_inputs);
  for (int64_t plane_index = blockIdx.y; plane_index < num_planes; plane_index += gridDim.y) {
    const int64_t c = channel_of(plane_index, channels);
    const int64_t offset = plane_index * plane;
    for (int64_t p = blockIdx.x * blockDim.x + threadIdx.x; p < plane; p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      acc_t acc = 0;
#pragma unroll
      for (int j = 0; j < kSlots; ++j) {
        if (j < count) {
          acc += normalized_term(weights.of(j), static_cast<acc_t>(inputs.values[j][offset + p]),
                                 mean[j * channels + c], invstd[j * channels + c]);
        }
      }
      out[offset + p] = static_cast<scalar_t>(acc);
    }
  }
}

// Same grid: every candidate's input gradient from the incoming gradient.
template <typename scalar_t, int kCount>
__global__ void batch_norm_mixed_backward_kernel(
    const scalar_t* __restrict__ grad, PointerTable<const scalar_t> inputs, int num_inputs,
    uint32_t normalized_mask, WeightTable<at::opmath_type<scalar_t>> weights,
    const at::opmath_type<scalar_t>* __restrict__ mean, const at::opmath_type<scalar_t>* __restrict__ invstd,
    const at::opmath_type<scalar_t>* __restrict__ sum_g, const at::opmath_type<scalar_t>* __restrict__ sum_gx,
    PointerTable<scalar_t> input_grads, int64_t num_planes, int64_t channels, int64_t plane, int64_t count_per_channel) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kSlots = kCount > 0 ? kCount : kMaxCandidates;
  const int count = candidate_count<kCount>(num_inputs);
  const acc_t inv_count = acc_t(1) / static_cast<acc_t>(count_per_channel);
  for (int64_t plane_index = blockIdx.y; plane_index < num_planes; plane_index += gridDim.y) {
    const int64_t c = channel_of(plane_index, channels);
    const int64_t offset = plane_index * plane;
    for (int64_t p = blockIdx.x * blockDim.x + threadIdx.x; p < plane; p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const acc_t g = static_cast<acc_t>(grad[offset + p]);
#pragma unroll
      for (int j = 0; j < kSlots; ++j) {
        if (j < count) {
          const int64_t slot = j * channels + c;
          input_grads.values[j][offset + p] = static_cast<scalar_t>(normalized_input_grad(
              ((normalized_mask >> j) & 1u) != 0, weights.of(j), g, static_cast<acc_t>(inputs.values[j][offset + p]),
              mean[slot], invstd[slot], sum_g[slot] * inv_count, sum_gx[slot] * inv_count));
        }
      }
    }
  }
}

// Splits of each channel's images for the per-channel reductions (channel_totals): enough
// blocks to fill every SM, each with at least one group of PlaneTiling rows.
template <typename Kernel>
int64_t channel_splits(Kernel kernel, int64_t batch, int64_t channels, int64_t plane) {
  const int64_t resident =
      device::multiprocessor_count() * device::max_active_blocks_per_sm(kernel, kReduceThreads, 0);
  const int64_t row_groups = (batch + PlaneTiling::of(plane).rows - 1) / PlaneTiling::of(plane).rows;
  return std::clamp<int64_t>((resident + channels - 1) / channels, 1, std::min<int64_t>(row_groups, 65535));
}

uint32_t normalized_bits(const c10::List<bool>& normalize) {
  uint32_t mask = 0;
  for (size_t j = 0; j < normalize.size(); ++j) {
    if (normalize.get(j)) mask |= 1u << j;
  }
  return mask;
}

// Grid of the element-wise kernels: x covers one plane, y strides over the planes.
dim3 plane_grid(int64_t num_planes, int64_t plane, int threads) {
  const int64_t spans = std::min<int64_t>((plane + threads - 1) / threads, 64);
  return dim3(static_cast<unsigned>(std::max<int64_t>(spans, 1)),
              static_cast<unsigned>(std::max<int64_t>(std::min<int64_t>(num_planes, 65535), 1)));
}

int plane_threads(int64_t plane) {
  return static_cast<int>(std::min<int64_t>(kThreads, std::max<int64_t>(32, (plane + 31) / 32 * 32)));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_norm_mixed_op_cuda(
    at::TensorList outputs, const at::Tensor& weights, at::IntArrayRef computed,
    const c10::List<bool>& normalize, double eps) {
  check_batch_norm_mixed_op_args(outputs, weights, computed, normalize, eps);
  const std::vector<at::Tensor> inputs = gather_inputs(outputs, ElementwiseLayout::contiguous());
  const device::Guard guard(inputs.front().device());
  const at::Tensor& first = inputs.front();
  const int64_t batch = first.size(0), channels = first.size(1), plane = first.size(2) * first.size(3);
  const int num_inputs = static_cast<int>(inputs.size());
  const auto acc_type = at::toOpMathType(first.scalar_type());
  auto out = at::empty(first.sizes(), first.options());
  // The statistics kernel writes every slot (0 and 1 where not normalised).
  auto mean = at::empty({num_inputs, channels}, first.options().dtype(acc_type));
  auto invstd = at::empty({num_inputs, channels}, first.options().dtype(acc_type));
  auto variance = at::empty({num_inputs, channels}, first.options().dtype(acc_type));
  if (out.numel() == 0) return {out, mean.zero_(), invstd.fill_(1), variance.zero_()};
  const at::Tensor all_weights = accumulation_weights(weights, acc_type);
  const uint32_t mask = normalized_bits(normalize);
  const auto stream = device::current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, first.scalar_type(), "batch_norm_mixed_op_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto table = input_table<scalar_t>(inputs);
    const auto weight_values = weight_table<acc_t>(all_weights, computed);
    with_candidate_count(num_inputs, /*small_index=*/true, [&](auto count) {
      constexpr int kCount = decltype(count)::value;
      constexpr auto stats_kernel = batch_norm_stats_kernel<scalar_t, kCount>;
      const int64_t splits = channel_splits(stats_kernel, batch, channels, plane);
      const CountedScratch<acc_t> scratch(channels, channels * splits * 2 * num_inputs, first.options());
      FASTNAS_LAUNCH(dim3(static_cast<unsigned>(channels), static_cast<unsigned>(splits)), kReduceThreads, 0, stream,
                     stats_kernel)(table, num_inputs, mask, batch, channels, plane, eps, scratch.values,
                                   scratch.counters, mean.data_ptr<acc_t>(), variance.data_ptr<acc_t>(),
                                   invstd.data_ptr<acc_t>());
      FASTNAS_LAUNCH_CHECK();
      const int threads = plane_threads(plane);
      FASTNAS_LAUNCH(plane_grid(batch * channels, plane, threads), threads, 0, stream, batch_norm_mixed_forward_kernel<scalar_t, kCount>)(
          table, num_inputs, weight_values, mean.data_ptr<acc_t>(), invstd.data_ptr<acc_t>(),
          out.data_ptr<scalar_t>(), batch * channels, channels, plane);
      FASTNAS_LAUNCH_CHECK();
    });
  });
  return {out, mean, invstd, variance};
}

std::tuple<at::Tensor, at::Tensor> batch_norm_mixed_op_backward_cuda(
    const at::Tensor& grad_in, at::TensorList outputs, const at::Tensor& weights, at::IntArrayRef computed,
    const c10::List<bool>& normalize, const at::Tensor& mean_in, const at::Tensor& invstd_in,
    bool need_output_grads) {
  const int64_t count_per_channel =
      check_batch_norm_mixed_op_backward_args(grad_in, outputs, weights, computed, normalize, mean_in, invstd_in);
  const std::vector<at::Tensor> inputs = gather_inputs(outputs, ElementwiseLayout::contiguous());
  const device::Guard guard(grad_in.device());
  const at::Tensor grad = grad_in.contiguous();
  const int64_t batch = grad.size(0), channels = grad.size(1), plane = grad.size(2) * grad.size(3);
  const int num_inputs = static_cast<int>(inputs.size());
  const auto acc_type = at::toOpMathType(grad.scalar_type());
  const at::Tensor mean = mean_in.to(acc_type).contiguous(), invstd = invstd_in.to(acc_type).contiguous();
  const at::Tensor output_grads =
      at::empty({need_output_grads ? num_inputs : 0, batch, channels, grad.size(2), grad.size(3)}, grad.options());
  // The gradient-sums kernel writes every slot.
  auto sum_g = at::empty({num_inputs, channels}, grad.options().dtype(acc_type));
  auto sum_gx = at::empty({num_inputs, channels}, grad.options().dtype(acc_type));
  if (grad.numel() == 0) {
    sum_gx.zero_();
  } else {
    const at::Tensor all_weights = accumulation_weights(weights, acc_type);
    const uint32_t mask = normalized_bits(normalize);
    const auto stream = device::current_stream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "batch_norm_mixed_op_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto table = input_table<scalar_t>(inputs);
      const auto weight_values = weight_table<acc_t>(all_weights, computed);
      PointerTable<scalar_t> grads{};
      for (int64_t j = 0; j < output_grads.size(0); ++j) grads.values[j] = output_grads[j].data_ptr<scalar_t>();
      with_candidate_count(num_inputs, /*small_index=*/true, [&](auto count) {
        constexpr int kCount = decltype(count)::value;
        constexpr auto sums_kernel = batch_norm_grad_sums_kernel<scalar_t, kCount>;
        const int64_t splits = channel_splits(sums_kernel, batch, channels, plane);
        const CountedScratch<acc_t> scratch(channels, channels * splits * 2 * num_inputs, grad.options());
        FASTNAS_LAUNCH(dim3(static_cast<unsigned>(channels), static_cast<unsigned>(splits)), kReduceThreads, 0,
                       stream, sums_kernel)(grad.data_ptr<scalar_t>(), table, num_inputs, batch, channels, plane,
                                            mean.data_ptr<acc_t>(), invstd.data_ptr<acc_t>(), scratch.values,
                                            scratch.counters, sum_g.data_ptr<acc_t>(), sum_gx.data_ptr<acc_t>());
        FASTNAS_LAUNCH_CHECK();
        if (need_output_grads) {
          const int threads = plane_threads(plane);
          FASTNAS_LAUNCH(plane_grid(batch * channels, plane, threads), threads, 0, stream, batch_norm_mixed_backward_kernel<scalar_t, kCount>)(
              grad.data_ptr<scalar_t>(), table, num_inputs, mask, weight_values, mean.data_ptr<acc_t>(),
              invstd.data_ptr<acc_t>(), sum_g.data_ptr<acc_t>(), sum_gx.data_ptr<acc_t>(), grads, batch * channels,
              channels, plane, count_per_channel);
          FASTNAS_LAUNCH_CHECK();
        }
      });
    });
  }
  // d/dw_j = sum over the channels of sum(g * x_j)
  return {output_grads, scatter_weight_grads(weights, computed, sum_gx.sum(1))};
}

}  // namespace

FASTNAS_CUDA_KERNELS(m) {
  FASTNAS_CUDA_IMPL(m, "mixed_op", mixed_op_cuda);
  FASTNAS_CUDA_IMPL(m, "mixed_op_backward", mixed_op_backward_cuda);
  FASTNAS_CUDA_IMPL(m, "batch_norm_mixed_op", batch_norm_mixed_op_cuda);
  FASTNAS_CUDA_IMPL(m, "batch_norm_mixed_op_backward", batch_norm_mixed_op_backward_cuda);
}

}  // namespace fastnas
