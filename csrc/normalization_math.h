// Per-element math of the batch-normalised mixed op, shared by the CPU and CUDA kernels
// so the CPU tests exercise the arithmetic the GPU runs. A candidate that is not
// normalised carries mean 0 and invstd 1, which turns every formula here into the plain
// mixed op's.
#pragma once

#include <cmath>
#include <cstdint>

#include "index_math.h"

namespace fastnas {

// Channel of plane `plane_index` (= n * C + c) of a contiguous (N, C, H, W) tensor.
FASTNAS_HD int64_t channel_of(int64_t plane_index, int64_t channels) {
  return plane_index % channels;
}

// Mean, biased variance (what batch norm normalises with) and 1/sqrt(var + eps) from sums
// of (z - shift) and (z - shift)^2 over `count` values. Shifting by a value of the channel
// keeps the difference of squares from cancelling when |mean| >> std.
template <typename acc_t>
FASTNAS_HD void finalize_moments(acc_t shifted_sum, acc_t shifted_sum_sq, int64_t count, acc_t shift,
                                 double eps, acc_t* mean, acc_t* variance, acc_t* invstd) {
  const acc_t shifted_mean = shifted_sum / static_cast<acc_t>(count);
  acc_t var = shifted_sum_sq / static_cast<acc_t>(count) - shifted_mean * shifted_mean;
  if (var < acc_t(0)) var = acc_t(0);
  *mean = shifted_mean + shift;
  *variance = var;
  *invstd = acc_t(1) / std::sqrt(var + static_cast<acc_t>(eps));
}

// weight * (z - mean) * invstd: one candidate's term of the forward sum.
template <typename acc_t>
FASTNAS_HD acc_t normalized_term(acc_t weight, acc_t z, acc_t mean, acc_t invstd) {
  return weight * (z - mean) * invstd;
}

// Gradient of the loss with respect to a candidate's input z, given the incoming gradient g
// of the mixed sum. With x = (z - mean) * invstd and per-channel means over the batch,
// mean_g = mean(g) and mean_gx = mean(g * x):
//   normalised:  weight * invstd * (g - mean_g - x * mean_gx)
//   otherwise:   weight * g
template <typename acc_t>
FASTNAS_HD acc_t normalized_input_grad(bool normalized, acc_t weight, acc_t g, acc_t z, acc_t mean,
                                       acc_t invstd, acc_t mean_g, acc_t mean_gx) {
  if (!normalized) return weight * g;
  const acc_t x = (z - mean) * invstd;
  return weight * invstd * (g - mean_g - x * mean_gx);
}

// sum(g * x) over a channel from sum(g * (z - shift)) and sum(g): the channel's share of
// the candidate weight's gradient (shift as in finalize_moments).
template <typename acc_t>
FASTNAS_HD acc_t normalized_dot(acc_t sum_g_shifted_z, acc_t sum_g, acc_t mean, acc_t shift, acc_t invstd) {
  return invstd * (sum_g_shifted_z - (mean - shift) * sum_g);
}

}  // namespace fastnas
