// Multi-dilation depthwise conv on CUDA: one launch for all dilation groups.
// Forward, and the input gradient at stride 1: the tiled kernel (a band of rows per block,
// staged in shared memory). Where a plane does not fit it, and for the input gradient at
// larger strides: one thread per element, consecutive threads on consecutive columns
// (coalesced). The kernel size is a template parameter so the tap loops unroll. Weight
// gradient: a two-stage deterministic reduction.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "../checks.h"
#include "../index_math.h"
#include "../ops.h"
#include "grid_stride.cuh"
#include "runtime.cuh"

namespace fastnas {
namespace {

constexpr int kMaxDilations = 16;
constexpr int kThreads = 256;

struct Dims {
  int64_t channels, height, width, out_height, out_width, channels_per_group, stride;
};

struct DilationTable {
  int64_t values[kMaxDilations];

  // values[group] with static indices only: indexing a kernel-parameter array with a
  // run-time index makes nvcc copy the whole table to local memory in every thread.
  __device__ __forceinline__ int64_t of_group(int64_t group) const {
    int64_t dilation = values[0];
#pragma unroll
    for (int i = 1; i < kMaxDilations; ++i) dilation = group == i ? values[i] : dilation;
    return dilation;
  }
};

DilationTable make_dilation_table(at::IntArrayRef dilations) {
  FASTNAS_CHECK(static_cast<int>(dilations.size()) <= kMaxDilations, "len(dilations)=",
                dilations.size(), " exceeds the CUDA kernel's limit of ", kMaxDilations,
                "; use at most ", kMaxDilations, " dilation groups");
  DilationTable table{};
  for (size_t i = 0; i < dilations.size(); ++i) table.values[i] = dilations[i];
  return table;
}

int64_t grid_for(int64_t work) { return grid_stride_blocks(work, kThreads, /*blocks_per_sm=*/32); }

// Direct kernels, for planes the tiled kernels cannot stage and the input gradient at
// strides > 1: one thread per element, coordinates in index_t (32-bit where the tensors
// fit), the stride a constant where kStride > 0.
template <typename scalar_t, typename index_t, int K>
__global__ void depthwise_forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ w,
                                         const scalar_t* __restrict__ bias, scalar_t* __restrict__ out, Dims d,
                                         DilationTable table, index_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  const index_t width = d.width, height = d.height, stride = d.stride;
  const index_t out_width = d.out_width, out_height = d.out_height, channels = d.channels;
  const index_t channels_per_group = d.channels_per_group;
  for (index_t idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const auto [t, oh, ow] = plane_position(idx, out_height, out_width);
    const index_t c = t % channels;
    const index_t dil = static_cast<index_t>(table.of_group(dilation_group_of(c, channels_per_group)));
    const index_t pad = static_cast<index_t>(same_padding(dil, K));
    const scalar_t* plane = x + t * height * width;
    const scalar_t* wc = w + c * K * K;
    acc_t acc = bias != nullptr ? static_cast<acc_t>(bias[c]) : acc_t(0);
#pragma unroll
    for (int kh = 0; kh < K; ++kh) {
      const index_t ih = input_coord(oh, kh, stride, dil, pad);
      if (ih < 0 || ih >= height) continue;
#pragma unroll
      for (int kw = 0; kw < K; ++kw) {
        const index_t iw = input_coord(ow, kw, stride, dil, pad);
        if (iw < 0 || iw >= width) continue;
        acc += static_cast<acc_t>(wc[kh * K + kw]) * static_cast<acc_t>(plane[ih * width + iw]);
      }
    }
    out[idx] = static_cast<scalar_t>(acc);
  }
}

// Gather form: each input element sums the output taps that read it (no atomics).
template <typename scalar_t, typename index_t, int K, int kStride>
__global__ void depthwise_grad_input_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ w,
                                            scalar_t* __restrict__ grad_in, Dims d, DilationTable table,
                                            index_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  const index_t width = d.width, height = d.height, channels = d.channels;
  const index_t channels_per_group = d.channels_per_group;
  const index_t out_width = d.out_width, out_height = d.out_height;
  const index_t stride = kStride > 0 ? kStride : static_cast<index_t>(d.stride);
  for (index_t idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const auto [t, ih, iw] = plane_position(idx, height, width);
    const index_t c = t % channels;
    const index_t dil = static_cast<index_t>(table.of_group(dilation_group_of(c, channels_per_group)));
    const index_t pad = static_cast<index_t>(same_padding(dil, K));
    const scalar_t* plane = grad_out + t * out_height * out_width;
    const scalar_t* wc = w + c * K * K;
    acc_t acc = 0;
#pragma unroll
    for (int kh = 0; kh < K; ++kh) {
      index_t oh;
      if (!output_coord_for_input(ih, kh, stride, dil, pad, out_height, &oh)) continue;
#pragma unroll
      for (int kw = 0; kw < K; ++kw) {
        index_t ow;
        if (!output_coord_for_input(iw, kw, stride, dil, pad, out_width, &ow)) continue;
        acc += static_cast<acc_t>(wc[kh * K + kw]) * static_cast<acc_t>(plane[oh * out_width + ow]);
      }
    }
    grad_in[idx] = static_cast<scalar_t>(acc);
  }
}

// Block (c, split) sums grad_out * input over its share of the N*Ho*Wo positions of
// channel c for all K*K taps and writes partial[split][c][tap] (in the accumulation
// type); summing the splits afterwards keeps the result deterministic.
template <typename scalar_t, int K>
__global__ void depthwise_grad_weight_kernel(const scalar_t* __restrict__ grad_out,
                                   const scalar_t* __restrict__ x,
                                   at::opmath_type<scalar_t>* __restrict__ partial,
                                   Dims d, DilationTable table, int64_t batch) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t c = blockIdx.x;
  const int64_t split = blockIdx.y;
  const int64_t splits = gridDim.y;
  const int64_t dil = table.of_group(dilation_group_of(c, d.channels_per_group));
  const int64_t pad = same_padding(dil, K);
  const int64_t positions = batch * d.out_height * d.out_width;
  acc_t acc[K * K];
#pragma unroll
  for (int i = 0; i < K * K; ++i) acc[i] = 0;
  for (int64_t p = split * blockDim.x + threadIdx.x; p < positions; p += splits * blockDim.x) {
    const int64_t ow = p % d.out_width;
    const int64_t oh = (p / d.out_width) % d.out_height;
    const int64_t n = p / (d.out_width * d.out_height);
    const int64_t plane_index = n * d.channels + c;
    const acc_t g = static_cast<acc_t>(
        grad_out[(plane_index * d.out_height + oh) * d.out_width + ow]);
    const scalar_t* plane = x + plane_index * d.height * d.width;
#pragma unroll
    for (int kh = 0; kh < K; ++kh) {
      const int64_t ih = input_coord(oh, kh, d.stride, dil, pad);
      if (ih < 0 || ih >= d.height) continue;
#pragma unroll
      for (int kw = 0; kw < K; ++kw) {
        const int64_t iw = input_coord(ow, kw, d.stride, dil, pad);
        if (iw < 0 || iw >= d.width) continue;
        acc[kh * K + kw] += g * static_cast<acc_t>(plane[ih * d.width + iw]);
      }
    }
  }
  __shared__ acc_t warp_sums[kThreads / 32];
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
#pragma unroll
  for (int tap = 0; tap < K * K; ++tap) {
    acc_t v = acc[tap];
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
    if (lane == 0) warp_sums[warp] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
      acc_t total = 0;
      for (int i = 0; i < kThreads / 32; ++i) total += warp_sums[i];
      partial[(split * d.channels + c) * K * K + tap] = total;
    }
    __syncthreads();
  }
}

// ---- tiled kernels -----------------------------------------------------------------------
// Block (plane, band of output rows): the input rows the band reads, with the channel's
// halo and zeros outside the image, are staged in shared memory once; each output then
// takes its K*K taps from there, without bounds checks. The channel's dilation and weights
// are fetched once per block, offsets inside a plane are 32-bit. With kFlip the taps are
// mirrored: at stride 1 that is the input gradient (the forward of grad_out with the
// kernel flipped), so both passes share this kernel.
struct TileGeometry {
  int channels, channels_per_group;
  int height, width;          // the input planes
  int out_height, out_width;  // the output planes
  int stride, band_rows;      // output rows per block
};

// Outputs per thread in the tiled forward where the stride is a constant: kOutputsPerThread
// outputs of one column, `dilation` rows apart, read overlapping tap rows (output row
// r + j*d at tap row kh reads tile row r + (j*stride + kh)*d), so a thread loads each of
// those stride*(R-1)+K rows once instead of K times per output. Columns go to consecutive
// threads: conflict-free shared loads, coalesced stores.
constexpr int kOutputsPerThread = 4;

template <int kStride>
constexpr int outputs_per_thread() {
  return kStride > 0 ? kOutputsPerThread : 1;
}

// Tile rows a band of `rows` output rows reads at this dilation when each thread takes
// `per_thread` rows `dilation` apart: the band rounded up to whole groups of
// per_thread * dilation rows (the extra outputs are computed from zeros and not stored).
__host__ __device__ __forceinline__ int tiled_input_rows(int rows, int stride, int dilation, int kernel_size,
                                                         int per_thread) {
  const int group = per_thread * dilation;
  const int padded = (rows + group - 1) / group * group;
  return (padded - 1) * stride + (kernel_size - 1) * dilation + 1;
}

template <typename scalar_t, int K, int kStride, bool kFlip>
__global__ void __launch_bounds__(kThreads) depthwise_tiled_kernel(const scalar_t* __restrict__ x,
                                                                   const scalar_t* __restrict__ w,
                                                                   const scalar_t* __restrict__ bias,
                                                                   scalar_t* __restrict__ out, TileGeometry g,
                                                                   DilationTable table) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kPerThread = outputs_per_thread<kStride>();
  constexpr int kStep = kStride > 0 ? kStride : 1;  // tap rows between a thread's outputs, in dilations
  constexpr int kTapRows = kStep * (kPerThread - 1) + K;
  FASTNAS_DYNAMIC_SHARED(scalar_t, tile);
  const int stride = kStride > 0 ? kStride : g.stride;
  const int64_t plane = blockIdx.x;
  const int c = static_cast<int>(plane % g.channels);
  const int dilation = static_cast<int>(table.of_group(c / g.channels_per_group));
  const int pad = static_cast<int>(same_padding(dilation, K));
  const int first_row = static_cast<int>(blockIdx.y) * g.band_rows;
  const int rows = std::min(g.band_rows, g.out_height - first_row);
  const int tile_rows = tiled_input_rows(rows, stride, dilation, K, kPerThread);
  const int tile_cols = (g.out_width - 1) * stride + (K - 1) * dilation + 1;
  const int top = first_row * stride - pad;
  const scalar_t* source = x + plane * g.height * g.width;
  for (int i = threadIdx.x; i < tile_rows * tile_cols; i += blockDim.x) {
    const int r = i / tile_cols;
    const int ih = top + r, iw = i - r * tile_cols - pad;
    tile[i] = ih >= 0 && ih < g.height && iw >= 0 && iw < g.width ? source[ih * g.width + iw] : scalar_t(0);
  }
  acc_t taps[K * K];
#pragma unroll
  for (int t = 0; t < K * K; ++t) taps[t] = static_cast<acc_t>(w[c * K * K + (kFlip ? K * K - 1 - t : t)]);
  const acc_t offset = bias != nullptr ? static_cast<acc_t>(bias[c]) : acc_t(0);
  __syncthreads();
  scalar_t* destination = out + plane * g.out_height * g.out_width + first_row * g.out_width;
  // work item: (group of rows, column); group q holds rows (q / d) * R * d + q % d + j * d
  const int groups = (rows + kPerThread * dilation - 1) / (kPerThread * dilation) * dilation;
  for (int item = threadIdx.x; item < groups * g.out_width; item += blockDim.x) {
    const int group = item / g.out_width, ow = item - group * g.out_width;
    const int first = group / dilation * kPerThread * dilation + group % dilation;
    const scalar_t* window = tile + first * stride * tile_cols + ow * stride;
    acc_t acc[kPerThread];
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) acc[j] = offset;
#pragma unroll
    for (int m = 0; m < kTapRows; ++m) {
      acc_t values[K];
#pragma unroll
      for (int kw = 0; kw < K; ++kw) values[kw] = static_cast<acc_t>(window[(m * tile_cols + kw) * dilation]);
#pragma unroll
      for (int j = 0; j < kPerThread; ++j) {
        const int kh = m - kStep * j;  // output j's tap row that reads tile row m
        if (kh < 0 || kh >= K) continue;
#pragma unroll
        for (int kw = 0; kw < K; ++kw) acc[j] += taps[kh * K + kw] * values[kw];
      }
    }
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) {
      const int r = first + j * dilation;
      if (r < rows) destination[r * g.out_width + ow] = static_cast<scalar_t>(acc[j]);
    }
  }
}

// Block (channel, split) of the weight gradient: walks its share of the channel's (image,
// band) items. Each item's grad_out rows (zeros past the band) and the input rows they read
// (with halo) are staged in shared memory. The warps of tap column kw (kWarpsPerTapColumn of
// them) take the forward's work items, kPerThread rows `dilation` apart in one column, and
// sum grad * input for the K taps of column kw: kPerThread gradient and kTapRows input loads
// feed kPerThread * K FMAs, into K accumulators per thread. The splits' partial sums go to
// `partial`; the channel's last block to finish adds them in split order (deterministic) and
// writes the channel's gradient: one launch, no second pass.
template <int K>
constexpr int weight_grad_warps_per_tap_column() {
  return (kThreads / 32) / K > 1 ? (kThreads / 32) / K : 1;
}

template <int K>
constexpr int weight_grad_threads() {
  return K * weight_grad_warps_per_tap_column<K>() * 32;
}

template <typename scalar_t, int K, int kStride>
__global__ void __launch_bounds__(kThreads) depthwise_tiled_grad_weight_kernel(
    const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ x, at::opmath_type<scalar_t>* partial,
    unsigned* channel_blocks_done, scalar_t* __restrict__ grad_weight, TileGeometry g, DilationTable table,
    int batch) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kPerThread = outputs_per_thread<kStride>();
  constexpr int kStep = kStride > 0 ? kStride : 1;
  constexpr int kTapRows = kStep * (kPerThread - 1) + K;
  constexpr int kLanes = weight_grad_warps_per_tap_column<K>() * 32;  // threads per tap column
  constexpr int kWarps = weight_grad_threads<K>() / 32;
  FASTNAS_DYNAMIC_SHARED(scalar_t, staged);
  __shared__ acc_t warp_sums[kWarps][K];
  __shared__ bool last_block;
  const int stride = kStride > 0 ? kStride : g.stride;
  const int c = blockIdx.x;
  const int split = blockIdx.y, splits = gridDim.y;
  const int dilation = static_cast<int>(table.of_group(c / g.channels_per_group));
  const int pad = static_cast<int>(same_padding(dilation, K));
  const int bands = (g.out_height + g.band_rows - 1) / g.band_rows;
  const int kw = threadIdx.x / kLanes, lane = threadIdx.x % kLanes;
  const int tile_cols = (g.out_width - 1) * stride + (K - 1) * dilation + 1;
  acc_t acc[K];
#pragma unroll
  for (int kh = 0; kh < K; ++kh) acc[kh] = 0;
  for (int item = split; item < batch * bands; item += splits) {
    const int band = item % bands;
    const int64_t plane = static_cast<int64_t>(item / bands) * g.channels + c;
    const int first_row = band * g.band_rows;
    const int rows = std::min(g.band_rows, g.out_height - first_row);
    const int group_rows = kPerThread * dilation;
    const int padded_rows = (rows + group_rows - 1) / group_rows * group_rows;
    const int tile_rows = tiled_input_rows(rows, stride, dilation, K, kPerThread);
    const int top = first_row * stride - pad;
    const scalar_t* grad_source = grad_out + plane * g.out_height * g.out_width + first_row * g.out_width;
    const scalar_t* source = x + plane * g.height * g.width;
    scalar_t* grad_rows = staged;
    scalar_t* tile = staged + padded_rows * g.out_width;
    __syncthreads();  // the previous item's reads are done before its rows are overwritten
    for (int i = threadIdx.x; i < padded_rows * g.out_width; i += blockDim.x) {
      grad_rows[i] = i < rows * g.out_width ? grad_source[i] : scalar_t(0);
    }
    for (int i = threadIdx.x; i < tile_rows * tile_cols; i += blockDim.x) {
      const int r = i / tile_cols;
      const int ih = top + r, iw = i - r * tile_cols - pad;
      tile[i] = ih >= 0 && ih < g.height && iw >= 0 && iw < g.width ? source[ih * g.width + iw] : scalar_t(0);
    }
    __syncthreads();
    const int groups = padded_rows / group_rows * dilation;
    for (int work = lane; work < groups * g.out_width; work += kLanes) {
      const int group = work / g.out_width, ow = work - group * g.out_width;
      const int first = group / dilation * group_rows + group % dilation;
      acc_t grads[kPerThread];
#pragma unroll
      for (int j = 0; j < kPerThread; ++j) {
        grads[j] = static_cast<acc_t>(grad_rows[(first + j * dilation) * g.out_width + ow]);
      }
      const scalar_t* window = tile + first * stride * tile_cols + ow * stride + kw * dilation;
#pragma unroll
      for (int m = 0; m < kTapRows; ++m) {
        const acc_t value = static_cast<acc_t>(window[m * dilation * tile_cols]);
#pragma unroll
        for (int j = 0; j < kPerThread; ++j) {
          const int kh = m - kStep * j;  // output j's tap row that reads tile row m
          if (kh >= 0 && kh < K) acc[kh] += grads[j] * value;
        }
      }
    }
  }
  const int warp = threadIdx.x / 32;
#pragma unroll
  for (int kh = 0; kh < K; ++kh) {
    acc_t v = acc[kh];
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
    if (threadIdx.x % 32 == 0) warp_sums[warp][kh] = v;
  }
  __syncthreads();
  if (threadIdx.x < K * K) {
    const int kh = threadIdx.x / K, column = threadIdx.x % K;
    acc_t total = 0;
    for (int w = column * (kLanes / 32); w < (column + 1) * (kLanes / 32); ++w) total += warp_sums[w][kh];
    partial[(static_cast<int64_t>(c) * splits + split) * K * K + threadIdx.x] = total;
    __threadfence();  // this block's partial sums before its count
  }
  __syncthreads();
  if (threadIdx.x == 0) last_block = atomicAdd(channel_blocks_done + c, 1u) == static_cast<unsigned>(splits) - 1;
  __syncthreads();
  if (!last_block) return;
  __threadfence();  // and the other splits' partial sums before reading them
  if (threadIdx.x < K * K) {
    acc_t total = 0;
    for (int s = 0; s < splits; ++s) total += partial[(static_cast<int64_t>(c) * splits + s) * K * K + threadIdx.x];
    grad_weight[c * K * K + threadIdx.x] = static_cast<scalar_t>(total);
  }
}

// How the tiled kernels cover an output: rows per block, threads, shared bytes. Not
// possible (rows == 0) where a plane exceeds 32-bit offsets or one output row's input rows
// do not fit the shared memory a block gets without opting in (48 KiB): the direct kernels
// cover those. The weight gradient also stages the band's grad_out rows, padded to whole
// row groups (`with_grad_rows`), and keeps `static_bytes` of its own.
struct TilePlan {
  int rows = 0, threads = 0;
  int64_t bands = 0;
  size_t shared_bytes = 0;
};

TilePlan plan_tiles(int64_t planes, int64_t height, int64_t width, int64_t out_height, int64_t out_width,
                    int64_t kernel_size, int64_t stride, at::IntArrayRef dilations, int per_thread,
                    size_t element_bytes, bool with_grad_rows = false, size_t static_bytes = 0) {
  TilePlan plan;
  if (planes > std::numeric_limits<int32_t>::max()) return plan;  // gridDim.x
  const size_t max_shared = device::shared_memory_per_block();
  if (static_bytes >= max_shared) return plan;
  constexpr int64_t kBandRows = 32;  // the (K-1)*d halo rows of every band are read twice
  if (height * width > std::numeric_limits<int32_t>::max() / 2) return plan;
  for (int64_t rows = std::min(out_height, kBandRows); rows >= 1; rows /= 2) {
    int64_t elements = 0;
    for (const int64_t dilation : dilations) {
      const int64_t tile_cols = (out_width - 1) * stride + (kernel_size - 1) * dilation + 1;
      const int64_t tile_rows = tiled_input_rows(static_cast<int>(rows), static_cast<int>(stride),
                                                 static_cast<int>(dilation), static_cast<int>(kernel_size), per_thread);
      const int64_t group_rows = per_thread * dilation;
      const int64_t grad_rows = with_grad_rows ? (rows + group_rows - 1) / group_rows * group_rows : 0;
      elements = std::max(elements, tile_rows * tile_cols + grad_rows * out_width);
    }
    const size_t bytes = static_cast<size_t>(elements) * element_bytes;
    if (bytes <= max_shared - static_bytes && (out_height + rows - 1) / rows <= 65535) {
      plan.rows = static_cast<int>(rows);
      plan.bands = (out_height + rows - 1) / rows;
      plan.shared_bytes = bytes;
      // small planes: about as many threads as work items, in whole warps
      const int64_t items = (rows + per_thread - 1) / per_thread * out_width;
      plan.threads = static_cast<int>(std::min<int64_t>(kThreads, (items + 31) / 32 * 32));
      return plan;
    }
  }
  return plan;
}

// Turns the runtime kernel size into a template parameter.
#define FASTNAS_DISPATCH_KERNEL_SIZE(k, ...)                                            \
  [&] {                                                                                 \
    switch (k) {                                                                        \
      case 1: { constexpr int K = 1; return __VA_ARGS__(); }                            \
      case 3: { constexpr int K = 3; return __VA_ARGS__(); }                            \
      case 5: { constexpr int K = 5; return __VA_ARGS__(); }                            \
      case 7: { constexpr int K = 7; return __VA_ARGS__(); }                            \
      default:                                                                          \
        FASTNAS_CHECK(false, "kernel size ", k,                                         \
                      " is not supported on CUDA; use 1, 3, 5 or 7 (any odd size runs " \
                      "on the CPU)");                                                   \
    }                                                                                   \
  }()

Dims make_dims(int64_t channels, int64_t height, int64_t width, int64_t out_height,
               int64_t out_width, size_t num_dilations, int64_t stride) {
  return Dims{channels, height, width, out_height, out_width,
              channels / static_cast<int64_t>(num_dilations), stride};
}

// The tiled kernel over `in` (dims: its planes, and out's), stride 1 as a constant.
template <typename scalar_t, int K, bool kFlip>
void launch_tiled(const TilePlan& plan, int64_t stride, const at::Tensor& in, const scalar_t* weight,
                  const scalar_t* bias, at::Tensor& out, const Dims& dims, const DilationTable& table,
                  device::Stream stream) {
  const TileGeometry geometry{static_cast<int>(dims.channels),   static_cast<int>(dims.channels_per_group),
                              static_cast<int>(dims.height),     static_cast<int>(dims.width),
                              static_cast<int>(dims.out_height), static_cast<int>(dims.out_width),
                              static_cast<int>(stride),          plan.rows};
  const dim3 grid(static_cast<unsigned>(in.size(0) * in.size(1)), static_cast<unsigned>(plan.bands));
  const auto launch = [&](auto kernel) {
    constexpr auto kernel_pointer = decltype(kernel)::pointer;
    FASTNAS_LAUNCH(grid, plan.threads, plan.shared_bytes, stream, kernel_pointer)(
        in.data_ptr<scalar_t>(), weight, bias, out.data_ptr<scalar_t>(), geometry, table);
  };
  if (stride == 1) {
    launch(KernelRef<&depthwise_tiled_kernel<scalar_t, K, 1, kFlip>>{});
  } else if constexpr (!kFlip) {
    if (stride == 2) {
      launch(KernelRef<&depthwise_tiled_kernel<scalar_t, K, 2, false>>{});
    } else {
      launch(KernelRef<&depthwise_tiled_kernel<scalar_t, K, 0, false>>{});
    }
  }
}

// Outputs per thread of the tiled forward at this stride (constant strides 1 and 2).
int tiled_outputs_per_thread(int64_t stride) {
  return stride == 1 || stride == 2 ? kOutputsPerThread : 1;
}

at::Tensor forward_cuda(const at::Tensor& x_in, const at::Tensor& weight_in,
                        at::IntArrayRef dilations, const c10::optional<at::Tensor>& bias_in,
                        int64_t stride) {
  const auto out_size = check_multi_dilation_args(x_in, weight_in, dilations, stride);
  const bool has_bias = bias_in.has_value() && bias_in->defined();
  if (has_bias) {
    check_same_device_dtype(x_in, "x", *bias_in, "bias");
    FASTNAS_CHECK(bias_in->dim() == 1 && bias_in->size(0) == x_in.size(1),
                  "bias must be shaped (C,) = (", x_in.size(1), ",), got ", bias_in->sizes());
  }
  const device::Guard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor bias = has_bias ? bias_in->contiguous() : at::Tensor();
  auto out = at::empty({x.size(0), x.size(1), out_size.first, out_size.second}, x.options());
  const int64_t total = out.numel();
  if (total == 0) return out;
  const Dims dims = make_dims(x.size(1), x.size(2), x.size(3), out_size.first, out_size.second,
                              dilations.size(), stride);
  const DilationTable table = make_dilation_table(dilations);
  const int64_t blocks = grid_for(total);
  const bool wide = !int32_grid_stride_fits(std::max(x.numel(), total), blocks, kThreads);
  const TilePlan plan = plan_tiles(x.size(0) * x.size(1), x.size(2), x.size(3), out_size.first, out_size.second,
                                   weight.size(2), stride, dilations, tiled_outputs_per_thread(stride),
                                   x.element_size());
  const auto stream = device::current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
                                  "multi_dilation_dwconv2d_cuda", [&] {
    FASTNAS_DISPATCH_KERNEL_SIZE(weight.size(2), [&] {
      const scalar_t* bp = has_bias ? bias.data_ptr<scalar_t>() : nullptr;
      if (plan.rows > 0) {
        launch_tiled<scalar_t, K, /*flip=*/false>(plan, stride, x, weight.data_ptr<scalar_t>(), bp, out, dims, table,
                                                  stream);
      } else if (wide) {
        FASTNAS_LAUNCH(blocks, kThreads, 0, stream, depthwise_forward_kernel<scalar_t, int64_t, K>)(
            x.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(), bp, out.data_ptr<scalar_t>(),
            dims, table, total);
      } else {
        FASTNAS_LAUNCH(blocks, kThreads, 0, stream, depthwise_forward_kernel<scalar_t, int32_t, K>)(
            x.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(), bp, out.data_ptr<scalar_t>(),
            dims, table, static_cast<int32_t>(total));
      }
      FASTNAS_LAUNCH_CHECK();
    });
  });
  return out;
}

at::Tensor grad_input_cuda(const at::Tensor& grad_out_in, const at::Tensor& weight_in,
                           at::IntArrayRef dilations, int64_t stride,
                           at::IntArrayRef input_size) {
  check_multi_dilation_grad_input_args(grad_out_in, weight_in, dilations, stride, input_size);
  const device::Guard guard(grad_out_in.device());
  const at::Tensor grad_out = grad_out_in.contiguous();
  const at::Tensor weight = weight_in.contiguous();
  auto grad_in = at::empty(input_size, grad_out.options());
  const int64_t total = grad_in.numel();
  if (total == 0) return grad_in;
  const Dims dims = make_dims(input_size[1], input_size[2], input_size[3], grad_out.size(2),
                              grad_out.size(3), dilations.size(), stride);
  const DilationTable table = make_dilation_table(dilations);
  const int64_t blocks = grid_for(total);
  const bool wide = !int32_grid_stride_fits(std::max(grad_out.numel(), total), blocks, kThreads);
  // At stride 1 the input gradient is the forward of grad_out with the taps mirrored.
  const TilePlan plan =
      stride == 1 ? plan_tiles(grad_out.size(0) * grad_out.size(1), grad_out.size(2), grad_out.size(3), input_size[2],
                               input_size[3], weight.size(2), 1, dilations, tiled_outputs_per_thread(1),
                               grad_out.element_size())
                  : TilePlan{};
  const auto stream = device::current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_out.scalar_type(),
                                  "multi_dilation_dwconv2d_grad_input_cuda", [&] {
    FASTNAS_DISPATCH_KERNEL_SIZE(weight.size(2), [&] {
      if (plan.rows > 0) {
        const Dims mirrored = make_dims(input_size[1], grad_out.size(2), grad_out.size(3), input_size[2],
                                        input_size[3], dilations.size(), 1);
        launch_tiled<scalar_t, K, /*flip=*/true>(plan, 1, grad_out, weight.data_ptr<scalar_t>(), nullptr, grad_in,
                                                 mirrored, table, stream);
      } else if (wide) {
        FASTNAS_LAUNCH(blocks, kThreads, 0, stream, depthwise_grad_input_kernel<scalar_t, int64_t, K, 0>)(
            grad_out.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(), grad_in.data_ptr<scalar_t>(), dims, table,
            total);
      } else if (stride == 2) {
        FASTNAS_LAUNCH(blocks, kThreads, 0, stream, depthwise_grad_input_kernel<scalar_t, int32_t, K, 2>)(
            grad_out.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(), grad_in.data_ptr<scalar_t>(), dims, table,
            static_cast<int32_t>(total));
      } else {
        FASTNAS_LAUNCH(blocks, kThreads, 0, stream, depthwise_grad_input_kernel<scalar_t, int32_t, K, 0>)(
            grad_out.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(), grad_in.data_ptr<scalar_t>(), dims, table,
            static_cast<int32_t>(total));
      }
      FASTNAS_LAUNCH_CHECK();
    });
  });
  return grad_in;
}

at::Tensor grad_weight_cuda(const at::Tensor& grad_out_in, const at::Tensor& x_in,
                            at::IntArrayRef dilations, int64_t stride, int64_t kernel_size) {
  check_multi_dilation_grad_weight_args(grad_out_in, x_in, dilations, stride, kernel_size);
  const device::Guard guard(x_in.device());
  const at::Tensor grad_out = grad_out_in.contiguous();
  const at::Tensor x = x_in.contiguous();
  const int64_t batch = x.size(0), channels = x.size(1);
  const int64_t positions = batch * grad_out.size(2) * grad_out.size(3);
  if (positions == 0 || channels == 0) {
    return at::zeros({channels, 1, kernel_size, kernel_size}, x.options());
  }
  const Dims dims = make_dims(channels, x.size(2), x.size(3), grad_out.size(2), grad_out.size(3),
                              dilations.size(), stride);
  const DilationTable table = make_dilation_table(dilations);
  const auto stream = device::current_stream();
  const int64_t sms = device::multiprocessor_count();
  const at::ScalarType acc_type = at::toOpMathType(x.scalar_type());
  const TilePlan plan =
      plan_tiles(batch * channels, x.size(2), x.size(3), grad_out.size(2), grad_out.size(3), kernel_size, stride,
                 dilations, tiled_outputs_per_thread(stride), x.element_size(), /*with_grad_rows=*/true,
                 kThreads * at::elementSize(acc_type) + 16);
  if (plan.rows > 0 && batch * plan.bands <= std::numeric_limits<int32_t>::max()) {
    at::Tensor grad_weight = at::empty({channels, 1, kernel_size, kernel_size}, x.options());
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
                                    "multi_dilation_dwconv2d_grad_weight_cuda", [&] {
      FASTNAS_DISPATCH_KERNEL_SIZE(kernel_size, [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto launch = [&](auto kernel) {
          constexpr auto kernel_pointer = decltype(kernel)::pointer;
          // enough splits of each channel's items to fill every SM
          constexpr int threads = weight_grad_threads<K>();
          const int64_t resident = sms * device::max_active_blocks_per_sm(kernel_pointer, threads, plan.shared_bytes);
          const int64_t splits = std::clamp<int64_t>((resident + channels - 1) / channels, 1,
                                                     std::min<int64_t>(batch * plan.bands, 65535));
          const CountedScratch<acc_t> scratch(channels, channels * splits * K * K, x.options());
          const TileGeometry geometry{static_cast<int>(channels),    static_cast<int>(dims.channels_per_group),
                                      static_cast<int>(dims.height), static_cast<int>(dims.width),
                                      static_cast<int>(dims.out_height), static_cast<int>(dims.out_width),
                                      static_cast<int>(stride),      plan.rows};
          const dim3 grid(static_cast<unsigned>(channels), static_cast<unsigned>(splits));
          FASTNAS_LAUNCH(grid, threads, plan.shared_bytes, stream, kernel_pointer)(
              grad_out.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), scratch.values, scratch.counters,
              grad_weight.data_ptr<scalar_t>(), geometry, table, static_cast<int>(batch));
        };
        if (stride == 1) {
          launch(KernelRef<&depthwise_tiled_grad_weight_kernel<scalar_t, K, 1>>{});
        } else if (stride == 2) {
          launch(KernelRef<&depthwise_tiled_grad_weight_kernel<scalar_t, K, 2>>{});
        } else {
          launch(KernelRef<&depthwise_tiled_grad_weight_kernel<scalar_t, K, 0>>{});
        }
        FASTNAS_LAUNCH_CHECK();
      });
    });
    return grad_weight;
  }
  // Planes too large to stage: enough splits to fill the device, each with at least a few
  // positions per thread, and their sum in a second pass.
  const int64_t splits = std::max<int64_t>(
      1, std::min<int64_t>((4 * sms + channels - 1) / channels, positions / (4 * kThreads)));
  auto partial = at::empty({splits, channels, kernel_size * kernel_size}, x.options().dtype(acc_type));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
                                  "multi_dilation_dwconv2d_grad_weight_cuda", [&] {
    FASTNAS_DISPATCH_KERNEL_SIZE(kernel_size, [&] {
      const dim3 grid(static_cast<unsigned>(channels), static_cast<unsigned>(splits));
      FASTNAS_LAUNCH(grid, kThreads, 0, stream, depthwise_grad_weight_kernel<scalar_t, K>)(
          grad_out.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
          partial.data_ptr<at::opmath_type<scalar_t>>(), dims,
          table, batch);
      FASTNAS_LAUNCH_CHECK();
    });
  });
  return partial.sum(0).to(x.scalar_type()).view({channels, 1, kernel_size, kernel_size});
}

}  // namespace

FASTNAS_CUDA_KERNELS(m) {
  FASTNAS_CUDA_IMPL(m, "multi_dilation_dwconv2d", forward_cuda);
  FASTNAS_CUDA_IMPL(m, "multi_dilation_dwconv2d_grad_input", grad_input_cuda);
  FASTNAS_CUDA_IMPL(m, "multi_dilation_dwconv2d_grad_weight", grad_weight_cuda);
}

}  // namespace fastnas
