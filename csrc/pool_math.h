// Per-element window math of the 3x3 pooling pair (padding 1), shared by the CPU and
// CUDA kernels.
#pragma once

#include <cstdint>

#include "index_math.h"

namespace fastnas {

// Input rows (or columns) [first, last) inside the 3-wide window of output `out`.
FASTNAS_HD void pool_window(int64_t out, int64_t stride, int64_t in_size, int64_t* first, int64_t* last) {
  const int64_t start = out * stride - 1;
  *first = start < 0 ? 0 : start;
  *last = start + 3 > in_size ? in_size : start + 3;
}

// Outputs [first, last) whose window covers input coordinate `in`: out*stride - 1 <= in
// <= out*stride + 1.
FASTNAS_HD void pool_outputs_covering(int64_t in, int64_t stride, int64_t out_size, int64_t* first,
                                      int64_t* last) {
  const int64_t lo = in - 1 <= 0 ? 0 : (in - 1 + stride - 1) / stride;
  int64_t hi = (in + 1) / stride + 1;
  if (hi > out_size) hi = out_size;
  *first = lo;
  *last = hi < lo ? lo : hi;
}

// The window position (0..8, row-major from the unclipped top-left) of input (h, w) in
// the window of output (oh, ow), and back.
FASTNAS_HD int pool_window_position(int64_t h, int64_t w, int64_t oh, int64_t ow, int64_t stride) {
  return static_cast<int>((h - (oh * stride - 1)) * 3 + (w - (ow * stride - 1)));
}

FASTNAS_HD void pool_window_input(int position, int64_t oh, int64_t ow, int64_t stride, int64_t* h, int64_t* w) {
  *h = oh * stride - 1 + position / 3;
  *w = ow * stride - 1 + position % 3;
}

// Max (first maximum in row-major order, as PyTorch's max pooling), its window position,
// and the mean over the valid part of the window (avg pooling, count_include_pad=False)
// of output (oh, ow) of one (H, W) plane.
template <typename scalar_t, typename acc_t>
FASTNAS_HD void pool_pair_at(const scalar_t* plane, int64_t height, int64_t width, int64_t oh, int64_t ow,
                             int64_t stride, scalar_t* max_out, acc_t* mean_out, uint8_t* position_out) {
  int64_t h0, h1, w0, w1;
  pool_window(oh, stride, height, &h0, &h1);
  pool_window(ow, stride, width, &w0, &w1);
  scalar_t best = plane[h0 * width + w0];
  int64_t best_h = h0, best_w = w0;
  acc_t sum = 0;
  for (int64_t h = h0; h < h1; ++h) {
    for (int64_t w = w0; w < w1; ++w) {
      const scalar_t v = plane[h * width + w];
      sum += static_cast<acc_t>(v);
      if (v > best || v != v) {  // NaN propagates, as in PyTorch
        if (!(best != best)) {
          best = v;
          best_h = h;
          best_w = w;
        }
      }
    }
  }
  *max_out = best;
  *mean_out = sum / static_cast<acc_t>((h1 - h0) * (w1 - w0));
  *position_out = static_cast<uint8_t>(pool_window_position(best_h, best_w, oh, ow, stride));
}

}  // namespace fastnas
