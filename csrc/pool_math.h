// Per-element window math of the 3x3 pooling pair (padding 1), shared by the CPU and
// CUDA kernels. Templated on the index type: the CUDA kernels count in 32 bits where the
// tensor allows (a 64-bit division is a long instruction sequence on a GPU), the CPU in 64.
#pragma once

#include <cstdint>

#include "index_math.h"

namespace fastnas {

// Input rows (or columns) [first, last) inside the 3-wide window of output `out`.
template <typename index_t>
FASTNAS_HD void pool_window(index_t out, index_t stride, index_t in_size, index_t* first, index_t* last) {
  const index_t start = out * stride - 1;
  *first = start < 0 ? 0 : start;
  *last = start + 3 > in_size ? in_size : start + 3;
}

// Outputs [first, last) whose window covers input coordinate `in`: out*stride - 1 <= in
// <= out*stride + 1.
template <typename index_t>
FASTNAS_HD void pool_outputs_covering(index_t in, index_t stride, index_t out_size, index_t* first, index_t* last) {
  const index_t lo = in - 1 <= 0 ? 0 : (in - 1 + stride - 1) / stride;
  index_t hi = (in + 1) / stride + 1;
  if (hi > out_size) hi = out_size;
  *first = lo;
  *last = hi < lo ? lo : hi;
}

// The window position (0..8, row-major from the unclipped top-left) of input (h, w) in
// the window of output (oh, ow).
template <typename index_t>
FASTNAS_HD int pool_window_position(index_t h, index_t w, index_t oh, index_t ow, index_t stride) {
  return static_cast<int>((h - (oh * stride - 1)) * 3 + (w - (ow * stride - 1)));
}

// 1 / size for the sizes a clipped 3x3 window can have, selected rather than divided.
template <typename acc_t>
FASTNAS_HD acc_t reciprocal_window_size(int size) {
  return size == 9 ? acc_t(1) / acc_t(9)
       : size == 6 ? acc_t(1) / acc_t(6)
       : size == 4 ? acc_t(0.25)
       : size == 3 ? acc_t(1) / acc_t(3)
       : size == 2 ? acc_t(0.5)
                   : acc_t(1);
}

// Whether v replaces `best` as a window's maximum, scanning the window in row-major order:
// the first maximum wins ties, and a NaN wins over everything, the last NaN over earlier
// ones (the rule of PyTorch's max pooling, which the backward's routing follows).
template <typename scalar_t>
FASTNAS_HD bool replaces_max(scalar_t v, scalar_t best) {
  return v > best || v != v;
}

// Max (with its window position) and the mean over the valid part of the window (avg
// pooling, count_include_pad=False) of output (oh, ow) of one (H, W) plane.
template <typename scalar_t, typename acc_t, typename index_t>
FASTNAS_HD void pool_pair_at(const scalar_t* plane, index_t height, index_t width, index_t oh, index_t ow,
                             index_t stride, scalar_t* max_out, acc_t* mean_out, uint8_t* position_out) {
  index_t h0, h1, w0, w1;
  pool_window(oh, stride, height, &h0, &h1);
  pool_window(ow, stride, width, &w0, &w1);
  scalar_t best = plane[h0 * width + w0];
  index_t best_h = h0, best_w = w0;
  acc_t sum = 0;
  for (index_t h = h0; h < h1; ++h) {
    for (index_t w = w0; w < w1; ++w) {
      const scalar_t v = plane[h * width + w];
      sum += static_cast<acc_t>(v);
      if (replaces_max(v, best)) {
        best = v;
        best_h = h;
        best_w = w;
      }
    }
  }
  *max_out = best;
  *mean_out = sum * reciprocal_window_size<acc_t>(static_cast<int>((h1 - h0) * (w1 - w0)));
  *position_out = static_cast<uint8_t>(pool_window_position(best_h, best_w, oh, ow, stride));
}

// Gradient of input (h, w) of one plane, gathered from the outputs whose windows cover it:
// max-pool gradients of the windows whose maximum it is, plus every covering window's
// average-pool gradient divided by the window's size. grad_max / grad_avg (either may be
// null: that pool got no gradient) and positions are whole tensors; the plane's outputs
// start at `plane_outputs`. Gathering writes each input once, so threads never collide.
template <typename scalar_t, typename acc_t, typename index_t>
FASTNAS_HD acc_t pool_pair_input_grad(const scalar_t* grad_max, const scalar_t* grad_avg, const uint8_t* positions,
                                      index_t plane_outputs, index_t h, index_t w, index_t height, index_t width,
                                      index_t out_h, index_t out_w, index_t stride) {
  index_t oh0, oh1, ow0, ow1;
  pool_outputs_covering(h, stride, out_h, &oh0, &oh1);
  pool_outputs_covering(w, stride, out_w, &ow0, &ow1);
  acc_t total = 0;
  for (index_t oh = oh0; oh < oh1; ++oh) {
    index_t h0, h1;
    pool_window(oh, stride, height, &h0, &h1);
    for (index_t ow = ow0; ow < ow1; ++ow) {
      const index_t o = plane_outputs + oh * out_w + ow;
      if (grad_max != nullptr && positions[o] == pool_window_position(h, w, oh, ow, stride)) {
        total += static_cast<acc_t>(grad_max[o]);
      }
      if (grad_avg != nullptr) {
        index_t w0, w1;
        pool_window(ow, stride, width, &w0, &w1);
        total += static_cast<acc_t>(grad_avg[o]) *
                 reciprocal_window_size<acc_t>(static_cast<int>((h1 - h0) * (w1 - w0)));
      }
    }
  }
  return total;
}

}  // namespace fastnas
