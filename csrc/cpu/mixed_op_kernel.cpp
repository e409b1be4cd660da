// Weighted sum of candidate outputs on the CPU, forward and fused backward.
// Skipped (None) candidates are never read. The backward reads the gradient once,
// writes every candidate's gradient and accumulates the weight gradients in the same
// pass; fixed-size chunks make the reduction order, and so the result, deterministic.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../checks.h"
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

at::Tensor mixed_op_cpu(at::TensorList outputs, const at::Tensor& weights,
                        at::IntArrayRef computed) {
  check_mixed_op_args(outputs, weights, computed);
  const std::vector<at::Tensor> inputs = contiguous_outputs(outputs);
  check_cpu_dtype(inputs.front(), "outputs");
  auto out = at::empty(inputs.front().sizes(), inputs.front().options());
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

std::tuple<std::vector<at::Tensor>, at::Tensor> mixed_op_backward_cpu(
    const at::Tensor& grad_in, at::TensorList outputs, const at::Tensor& weights,
    at::IntArrayRef computed, bool need_output_grads) {
  check_mixed_op_args(outputs, weights, computed);
  const std::vector<at::Tensor> inputs = contiguous_outputs(outputs);
  const at::Tensor grad = grad_in.contiguous();
  const int64_t numel = grad.numel();
  const int64_t num_chunks = (numel + kChunk - 1) / kChunk;
  const auto num_computed = static_cast<int64_t>(computed.size());
  // One allocation for all candidate gradients: several separate ones freed together
  // make glibc trim its heap, and every step then pays page faults on fresh memory.
  std::vector<at::Tensor> output_grads;
  if (need_output_grads) {
    std::vector<int64_t> shape{num_computed};
    shape.insert(shape.end(), grad.sizes().begin(), grad.sizes().end());
    output_grads = at::empty(shape, grad.options()).unbind(0);
  }
  auto partial = at::zeros({num_chunks, num_computed}, grad.options().dtype(at::kDouble));
  const at::Tensor w = weights.detach().to(at::kDouble).contiguous();
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "mixed_op_backward_cpu", [&] {
    const scalar_t* g = grad.data_ptr<scalar_t>();
    double* part = partial.data_ptr<double>();
    at::parallel_for(0, num_chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
      for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
        const int64_t begin = chunk * kChunk;
        const int64_t end = std::min(numel, begin + kChunk);
        for (int64_t j = 0; j < num_computed; ++j) {
          const auto weight = static_cast<scalar_t>(w.data_ptr<double>()[computed[j]]);
          scalar_t* out_grad = need_output_grads ? output_grads[j].data_ptr<scalar_t>() : nullptr;
          part[chunk * num_computed + j] = static_cast<double>(dot_and_scale_cloned(
              g, inputs[j].data_ptr<scalar_t>(), weight, out_grad, begin, end));
        }
      }
    });
  });
  // Skipped candidates were never computed, so their weights get a zero gradient.
  auto grad_weights = at::zeros({weights.size(0)}, weights.options());
  grad_weights.index_copy_(0, at::tensor(computed.vec(), weights.options().dtype(at::kLong)),
                           partial.sum(0).to(weights.scalar_type()));
  return {output_grads, grad_weights};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastnas, CPU, m) {
  m.impl("mixed_op", &mixed_op_cpu);
  m.impl("mixed_op_backward", &mixed_op_backward_cpu);
}

}  // namespace fastnas
