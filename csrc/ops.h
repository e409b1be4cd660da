// Input validation shared by the per-device kernels. Each device's kernels register
// themselves with TORCH_LIBRARY_IMPL in their own file.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <vector>

namespace fastnas {

// ---- multi-dilation depthwise conv ----
// Validates arguments shared by every device; returns the output spatial size.
std::pair<int64_t, int64_t> check_multi_dilation_args(const at::Tensor& x,
                                                      const at::Tensor& weight,
                                                      at::IntArrayRef dilations, int64_t stride);
// The backward ops' checks: the forward's, and grad_out shaped as the forward's output.
void check_multi_dilation_grad_input_args(const at::Tensor& grad_out, const at::Tensor& weight,
                                          at::IntArrayRef dilations, int64_t stride, at::IntArrayRef input_size);
void check_multi_dilation_grad_weight_args(const at::Tensor& grad_out, const at::Tensor& x,
                                           at::IntArrayRef dilations, int64_t stride, int64_t kernel_size);

// ---- mixed op ----
// Validates the computed candidates (outputs[j] is candidate indices[j]) and weights;
// every candidate left out must have weight exactly zero.
void check_mixed_op_args(at::TensorList outputs, const at::Tensor& weights,
                         at::IntArrayRef indices);

// The backward's checks: the forward's, and the incoming gradient shaped, typed and placed
// as the outputs.
void check_mixed_op_backward_args(const at::Tensor& grad, at::TensorList outputs, const at::Tensor& weights,
                                  at::IntArrayRef indices);
void check_incoming_gradient(const at::Tensor& grad, const at::Tensor& first_output);

// The gradient of all K weights from the gradients of the computed candidates' weights
// (per_computed[j] for candidate indices[j]); skipped candidates were never computed, so
// their weights get zero.
at::Tensor scatter_weight_grads(const at::Tensor& weights, at::IntArrayRef indices,
                                const at::Tensor& per_computed);

// ---- batch-normalised mixed op ----
// The mixed op's checks, plus: (N, C, H, W) outputs, one normalize flag per computed
// output, eps > 0, and more than one value per channel when anything is normalised.
// Returns the number of values per channel, N*H*W.
int64_t check_batch_norm_mixed_op_args(at::TensorList outputs, const at::Tensor& weights,
                                       at::IntArrayRef indices, const c10::List<bool>& normalize,
                                       double eps);

// The backward's checks: the forward's (but eps), grad as the outputs, and mean/invstd
// shaped (J, C) as the forward returns them. Returns the number of values per channel.
int64_t check_batch_norm_mixed_op_backward_args(const at::Tensor& grad, at::TensorList outputs,
                                                const at::Tensor& weights, at::IntArrayRef indices,
                                                const c10::List<bool>& normalize, const at::Tensor& mean,
                                                const at::Tensor& invstd);

// ---- 3x3 pooling pair ----
// Validates x (N, C, H, W) and stride; returns the output spatial size.
std::pair<int64_t, int64_t> check_pool_pair_args(const at::Tensor& x, int64_t stride);

// The backward's gradients (contiguous; undefined where that pool's output got none) and
// window positions, checked against each other and the forward's input size and stride.
struct PoolPairBackwardArgs {
  at::Tensor grad_max, grad_avg, positions;
  // A defined gradient: its dtype, device and options are the input gradient's.
  const at::Tensor& any_grad() const { return grad_max.defined() ? grad_max : grad_avg; }
};
PoolPairBackwardArgs check_pool_pair_backward_args(const std::optional<at::Tensor>& grad_max,
                                                   const std::optional<at::Tensor>& grad_avg,
                                                   const at::Tensor& positions, at::IntArrayRef input_size,
                                                   int64_t stride);

}  // namespace fastnas
