// Weighted sum of candidate outputs on the CPU, forward and fused backward.
// Skipped (None) candidates are never read. The backward reads the gradient once,
// writes every candidate's gradient and accumulates the weight gradients in the same
// pass; fixed-size chunks make the reduction order, and so the result, deterministic.
// The batch-normalised variant (BN without affine on candidates, then the weighted sum)
// computes per-(candidate, channel) sums plane by plane, in double across planes.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../library.h"
#include "../checks.h"
#include "../elementwise_layout.h"
#include "../normalization_math.h"
#include "../ops.h"
#include "cpu_clones.h"

namespace fastnas {
namespace {

constexpr int64_t kChunk = 16384;

std::vector<at::Tensor> contiguous_outputs(at::TensorList outputs) {
  std::vector<at::Tensor> result;
  result.reserve(outputs.size());
  for (const at::Tensor& out : outputs) result.push_back(out.contiguous());
  return result;
}

// sum_i grad[i] * out[i] over [begin, end); with out_grad, also out_grad[i] = weight * grad[i].
template <typename scalar_t>
FASTNAS_ALWAYS_INLINE scalar_t dot_and_scale(const scalar_t* grad, const scalar_t* out, scalar_t weight,
                                             scalar_t* out_grad, int64_t begin, int64_t end) {
  return dot_and_scale_vec(grad + begin, out + begin, end - begin, weight,
                           out_grad == nullptr ? nullptr : out_grad + begin);
}

// dst[i] (=|+=) weight * src[i] over [begin, end).
template <typename scalar_t>
FASTNAS_ALWAYS_INLINE void scaled_add(scalar_t* __restrict__ dst, const scalar_t* __restrict__ src,
                                      scalar_t weight, bool overwrite, int64_t begin, int64_t end) {
  if (overwrite) {
    for (int64_t i = begin; i < end; ++i) dst[i] = weight * src[i];
  } else {
    for (int64_t i = begin; i < end; ++i) dst[i] += weight * src[i];
  }
}

// Per-dtype entry points, each compiled for several ISAs (see cpu_clones.h).
#define FASTNAS_CLONED_MIXED_KERNELS(scalar_t)                                                     \
  FASTNAS_MULTIVERSIONED(scalar_t, dot_and_scale_cloned, dot_and_scale<scalar_t>,                  \
                         (const scalar_t* grad, const scalar_t* out, scalar_t weight,              \
                          scalar_t* out_grad, int64_t begin, int64_t end),                         \
                         (grad, out, weight, out_grad, begin, end))                                \
  FASTNAS_MULTIVERSIONED(void, scaled_add_cloned, scaled_add<scalar_t>,                            \
                         (scalar_t * dst, const scalar_t* src, scalar_t weight, bool overwrite,    \
                          int64_t begin, int64_t end),                                             \
                         (dst, src, weight, overwrite, begin, end))
FASTNAS_CLONED_MIXED_KERNELS(float)
FASTNAS_CLONED_MIXED_KERNELS(double)
#undef FASTNAS_CLONED_MIXED_KERNELS

// dst[i] (=|+=) weight * (z[i] - mean) * invstd over [0, n).
template <typename scalar_t>
FASTNAS_ALWAYS_INLINE void normalized_accumulate(scalar_t* __restrict__ dst, const scalar_t* __restrict__ z,
                                                 scalar_t weight, scalar_t mean, scalar_t invstd, bool overwrite,
                                                 int64_t n) {
  if (overwrite) {
    for (int64_t i = 0; i < n; ++i) dst[i] = normalized_term(weight, z[i], mean, invstd);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] += normalized_term(weight, z[i], mean, invstd);
  }
}

// dst[i] = the candidate's input gradient (normalized_input_grad) over [0, n).
template <typename scalar_t>
FASTNAS_ALWAYS_INLINE void normalized_grad(scalar_t* __restrict__ dst, const scalar_t* __restrict__ g,
                                           const scalar_t* __restrict__ z, bool normalized, scalar_t weight,
                                           scalar_t mean, scalar_t invstd, scalar_t mean_g, scalar_t mean_gx,
                                           int64_t n) {
  if (normalized) {
    for (int64_t i = 0; i < n; ++i) dst[i] = normalized_input_grad(true, weight, g[i], z[i], mean, invstd, mean_g, mean_gx);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = normalized_input_grad(false, weight, g[i], z[i], mean, invstd, mean_g, mean_gx);
  }
}

#define FASTNAS_CLONED_NORMALIZED_KERNELS(scalar_t)                                                 \
  FASTNAS_MULTIVERSIONED(void, shifted_pair_sums_cloned, shifted_pair_sums_vec<scalar_t>,            \
                         (const scalar_t* a, scalar_t a_shift, const scalar_t* b, scalar_t b_shift,   \
                          int64_t n, scalar_t* sum_a, scalar_t* sum_ab),                              \
                         (a, a_shift, b, b_shift, n, sum_a, sum_ab))                                  \
  FASTNAS_MULTIVERSIONED(void, normalized_accumulate_cloned, normalized_accumulate<scalar_t>,        \
                         (scalar_t * dst, const scalar_t* z, scalar_t weight, scalar_t mean,          \
                          scalar_t invstd, bool overwrite, int64_t n),                                \
                         (dst, z, weight, mean, invstd, overwrite, n))                                \
  FASTNAS_MULTIVERSIONED(void, normalized_grad_cloned, normalized_grad<scalar_t>,                    \
                         (scalar_t * dst, const scalar_t* g, const scalar_t* z, bool normalized,      \
                          scalar_t weight, scalar_t mean, scalar_t invstd, scalar_t mean_g,           \
                          scalar_t mean_gx, int64_t n),                                               \
                         (dst, g, z, normalized, weight, mean, invstd, mean_g, mean_gx, n))
FASTNAS_CLONED_NORMALIZED_KERNELS(float)
FASTNAS_CLONED_NORMALIZED_KERNELS(double)
#undef FASTNAS_CLONED_NORMALIZED_KERNELS

at::Tensor mixed_op_cpu(at::TensorList outputs, const at::Tensor& weights,
                        at::IntArrayRef computed) {
  check_mixed_op_args(outputs, weights, computed);
  const ElementwiseLayout layout(outputs);
  const std::vector<at::Tensor> inputs = layout.prepare(outputs);
  check_cpu_dtype(inputs.front(), "outputs");
  at::Tensor out = layout.empty_like(inputs.front());
  const int64_t numel = out.numel();
  if (numel == 0) return out;
  const at::Tensor w = weights.detach().to(at::kDouble).contiguous();
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "mixed_op_cpu", [&] {
    std::vector<const scalar_t*> src;
    std::vector<scalar_t> coef;
    for (size_t j = 0; j < inputs.size(); ++j) {
      src.push_back(inputs[j].data_ptr<scalar_t>());
      coef.push_back(static_cast<scalar_t>(w.data_ptr<double>()[computed[j]]));
    }
    scalar_t* dst = out.data_ptr<scalar_t>();
    at::parallel_for(0, numel, kChunk, [&](int64_t begin, int64_t end) {
      for (size_t j = 0; j < src.size(); ++j) {
        scaled_add_cloned(dst, src[j], coef[j], /*overwrite=*/j == 0, begin, end);
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> mixed_op_backward_cpu(
    const at::Tensor& grad_in, at::TensorList outputs, const at::Tensor& weights,
    at::IntArrayRef computed, bool need_output_grads) {
  check_mixed_op_backward_args(grad_in, outputs, weights, computed);
  const ElementwiseLayout layout(outputs, grad_in);
  const std::vector<at::Tensor> inputs = layout.prepare(outputs);
  const at::Tensor grad = layout.prepare(grad_in);
  const int64_t numel = grad.numel();
  const int64_t num_chunks = (numel + kChunk - 1) / kChunk;
  const auto num_computed = static_cast<int64_t>(computed.size());
  // One allocation for all candidate gradients: several separate ones freed together
  // make glibc trim its heap, and every step then pays page faults on fresh memory.
  const at::Tensor output_grads = layout.empty_stacked(need_output_grads ? num_computed : 0, grad);
  auto partial = at::zeros({num_chunks, num_computed}, grad.options().dtype(at::kDouble));
  const at::Tensor w = weights.detach().to(at::kDouble).contiguous();
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "mixed_op_backward_cpu", [&] {
    const scalar_t* g = grad.data_ptr<scalar_t>();
    double* part = partial.data_ptr<double>();
    scalar_t* output_grads_data = need_output_grads ? output_grads.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, num_chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
      for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
        const int64_t begin = chunk * kChunk;
        const int64_t end = std::min(numel, begin + kChunk);
        for (int64_t j = 0; j < num_computed; ++j) {
          const auto weight = static_cast<scalar_t>(w.data_ptr<double>()[computed[j]]);
          scalar_t* out_grad = need_output_grads ? output_grads_data + j * output_grads.stride(0) : nullptr;
          part[chunk * num_computed + j] = static_cast<double>(dot_and_scale_cloned(
              g, inputs[j].data_ptr<scalar_t>(), weight, out_grad, begin, end));
        }
      }
    });
  });
  return {output_grads, scatter_weight_grads(weights, computed, partial.sum(0))};
}

// ---- batch-normalised mixed op ----
// Planes per parallel task: about kChunk elements each.
int64_t plane_grain(int64_t plane) { return std::max<int64_t>(1, kChunk / std::max<int64_t>(plane, 1)); }

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_norm_mixed_op_cpu(at::TensorList outputs,
                                                                       const at::Tensor& weights,
                                                                       at::IntArrayRef computed,
                                                                       const c10::List<bool>& normalize,
                                                                       double eps) {
  const int64_t count = check_batch_norm_mixed_op_args(outputs, weights, computed, normalize, eps);
  const std::vector<at::Tensor> inputs = contiguous_outputs(outputs);
  const at::Tensor& first = inputs.front();
  check_cpu_dtype(first, "outputs");
  const int64_t batch = first.size(0), channels = first.size(1), plane = first.size(2) * first.size(3);
  const auto num_inputs = static_cast<int64_t>(inputs.size());
  auto out = at::empty(first.sizes(), first.options());
  auto mean = at::zeros({num_inputs, channels}, first.options());
  auto invstd = at::ones({num_inputs, channels}, first.options());
  auto variance = at::zeros({num_inputs, channels}, first.options());
  if (out.numel() == 0) return {out, mean, invstd, variance};
  const at::Tensor w = weights.detach().to(at::kDouble).contiguous();
  AT_DISPATCH_FLOATING_TYPES(first.scalar_type(), "batch_norm_mixed_op_cpu", [&] {
    std::vector<const scalar_t*> src;
    for (const at::Tensor& input : inputs) src.push_back(input.data_ptr<scalar_t>());
    scalar_t* mean_data = mean.data_ptr<scalar_t>();
    scalar_t* invstd_data = invstd.data_ptr<scalar_t>();
    scalar_t* variance_data = variance.data_ptr<scalar_t>();
    // Slots channel-major, so the tasks of one channel read neighbouring planes.
    at::parallel_for(0, num_inputs * channels, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t c = task / num_inputs, j = task % num_inputs;
        if (!normalize.get(j)) continue;
        const scalar_t shift = src[j][c * plane];
        double sum = 0, sum_sq = 0;
        for (int64_t n = 0; n < batch; ++n) {
          const scalar_t* row = src[j] + (n * channels + c) * plane;
          scalar_t plane_sum, plane_sum_sq;
          shifted_pair_sums_cloned(row, shift, row, shift, plane, &plane_sum, &plane_sum_sq);
          sum += plane_sum;
          sum_sq += plane_sum_sq;
        }
        double m, var, inv;
        finalize_moments<double>(sum, sum_sq, count, shift, eps, &m, &var, &inv);
        mean_data[j * channels + c] = static_cast<scalar_t>(m);
        variance_data[j * channels + c] = static_cast<scalar_t>(var);
        invstd_data[j * channels + c] = static_cast<scalar_t>(inv);
      }
    });
    scalar_t* dst = out.data_ptr<scalar_t>();
    at::parallel_for(0, batch * channels, plane_grain(plane), [&](int64_t begin, int64_t end) {
      for (int64_t plane_index = begin; plane_index < end; ++plane_index) {
        const int64_t c = channel_of(plane_index, channels);
        for (int64_t j = 0; j < num_inputs; ++j) {
          normalized_accumulate_cloned(dst + plane_index * plane, src[j] + plane_index * plane,
                                       static_cast<scalar_t>(w.data_ptr<double>()[computed[j]]),
                                       mean_data[j * channels + c], invstd_data[j * channels + c], j == 0, plane);
        }
      }
    });
  });
  return {out, mean, invstd, variance};
}

std::tuple<at::Tensor, at::Tensor> batch_norm_mixed_op_backward_cpu(
    const at::Tensor& grad_in, at::TensorList outputs, const at::Tensor& weights, at::IntArrayRef computed,
    const c10::List<bool>& normalize, const at::Tensor& mean_in, const at::Tensor& invstd_in,
    bool need_output_grads) {
  const int64_t count = check_batch_norm_mixed_op_backward_args(grad_in, outputs, weights, computed, normalize, mean_in, invstd_in);
  const std::vector<at::Tensor> inputs = contiguous_outputs(outputs);
  const at::Tensor grad = grad_in.contiguous();
  const int64_t batch = grad.size(0), channels = grad.size(1), plane = grad.size(2) * grad.size(3);
  const auto num_inputs = static_cast<int64_t>(inputs.size());
  const at::Tensor mean = mean_in.to(at::kDouble).contiguous(), invstd = invstd_in.to(at::kDouble).contiguous();
  // One allocation for all candidate gradients (see mixed_op_backward_cpu).
  const at::Tensor output_grads =
      at::empty({need_output_grads ? num_inputs : 0, batch, channels, grad.size(2), grad.size(3)}, grad.options());
  auto sum_g = at::zeros({num_inputs, channels}, grad.options().dtype(at::kDouble));
  auto sum_gx = at::zeros({num_inputs, channels}, grad.options().dtype(at::kDouble));
  const at::Tensor w = weights.detach().to(at::kDouble).contiguous();
  if (grad.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "batch_norm_mixed_op_backward_cpu", [&] {
      const scalar_t* g = grad.data_ptr<scalar_t>();
      std::vector<const scalar_t*> src;
      for (const at::Tensor& input : inputs) src.push_back(input.data_ptr<scalar_t>());
      const double* mean_data = mean.data_ptr<double>();
      const double* invstd_data = invstd.data_ptr<double>();
      double* sum_g_data = sum_g.data_ptr<double>();
      double* sum_gx_data = sum_gx.data_ptr<double>();
      at::parallel_for(0, num_inputs * channels, 1, [&](int64_t begin, int64_t end) {
        for (int64_t task = begin; task < end; ++task) {
          const int64_t c = task / num_inputs, j = task % num_inputs;
          const scalar_t shift = src[j][c * plane];
          double g_total = 0, gz_total = 0;
          for (int64_t n = 0; n < batch; ++n) {
            const int64_t offset = (n * channels + c) * plane;
            scalar_t plane_g, plane_gz;
            shifted_pair_sums_cloned(g + offset, scalar_t(0), src[j] + offset, shift, plane, &plane_g, &plane_gz);
            g_total += plane_g;
            gz_total += plane_gz;
          }
          const int64_t slot = j * channels + c;
          sum_g_data[slot] = g_total;
          sum_gx_data[slot] = normalized_dot<double>(gz_total, g_total, mean_data[slot], shift, invstd_data[slot]);
        }
      });
      if (!need_output_grads) return;
      scalar_t* output_grads_data = output_grads.data_ptr<scalar_t>();
      at::parallel_for(0, batch * channels, plane_grain(plane), [&](int64_t begin, int64_t end) {
        for (int64_t plane_index = begin; plane_index < end; ++plane_index) {
          const int64_t c = channel_of(plane_index, channels);
          const int64_t offset = plane_index * plane;
          for (int64_t j = 0; j < num_inputs; ++j) {
            const int64_t slot = j * channels + c;
            normalized_grad_cloned(output_grads_data + j * output_grads.stride(0) + offset, g + offset, src[j] + offset,
                                   normalize.get(j), static_cast<scalar_t>(w.data_ptr<double>()[computed[j]]),
                                   static_cast<scalar_t>(mean_data[slot]), static_cast<scalar_t>(invstd_data[slot]),
                                   static_cast<scalar_t>(sum_g_data[slot] / count),
                                   static_cast<scalar_t>(sum_gx_data[slot] / count), plane);
          }
        }
      });
    });
  }
  // d/dw_j = sum over the channels of sum(g * x_j)
  return {output_grads, scatter_weight_grads(weights, computed, sum_gx.sum(1))};
}

}  // namespace

FASTNAS_TORCH_LIBRARY_IMPL(CPU, m) {
  m.impl("mixed_op", &mixed_op_cpu);
  m.impl("mixed_op_backward", &mixed_op_backward_cpu);
  m.impl("batch_norm_mixed_op", &batch_norm_mixed_op_cpu);
  m.impl("batch_norm_mixed_op_backward", &batch_norm_mixed_op_backward_cpu);
}

}  // namespace fastnas
