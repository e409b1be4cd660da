// Launch sizes of the grid-stride kernels, shared by the CUDA kernel files.
#pragma once

#include <algorithm>
#include <cstdint>

#include "runtime.cuh"

namespace fastnas {

// Blocks for `work` items at `threads` per block: one item per thread up to
// `blocks_per_sm` blocks per SM; the grid-stride loops cover the rest.
inline int64_t grid_stride_blocks(int64_t work, int threads, int blocks_per_sm) {
  const int64_t max_blocks = static_cast<int64_t>(device::multiprocessor_count()) * blocks_per_sm;
  return std::max<int64_t>(1, std::min<int64_t>((work + threads - 1) / threads, max_blocks));
}

// Whether a grid-stride loop over [0, work) may count in int32: its last step, an index
// below `work` plus one grid of threads, must not overflow.
inline bool int32_grid_stride_fits(int64_t work, int64_t blocks, int threads) {
  return work + blocks * threads <= device::int32_index_limit();
}

}  // namespace fastnas
