// Autograd for the fastnas ops, registered in C++ at the Autograd key for every device.
// A Python autograd formula (torch.library.register_autograd) costs 100-300 us of
// interpreter work per forward + backward; on a GPU that is longer than the kernels.
// Each forward redispatches below autograd to the device kernel (or the fake kernel
// under torch.compile); each backward calls the backward ops through the dispatcher
// and skips the gradients nobody asked for.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

#include "library.h"

namespace fastnas {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

template <typename Signature>
c10::TypedOperatorHandle<Signature> fastnas_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// Sizes as plain integers: the schemas take int[], so symbolic sizes are specialised.
std::vector<int64_t> concrete_sizes(const at::Tensor& x) {
  std::vector<int64_t> sizes;
  for (const c10::SymInt& size : x.sym_sizes()) sizes.push_back(size.guard_int(__FILE__, __LINE__));
  return sizes;
}

// ---- channel shuffle ----
class ChannelShuffleFunction : public torch::autograd::Function<ChannelShuffleFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, int64_t groups) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor out = op().call(x, groups);  // validates groups before it is divided by
    ctx->saved_data["inverse_groups"] = concrete_sizes(x)[1] / groups;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    // Shuffling with C/groups groups undoes a shuffle with `groups` groups.
    return {op().call(grads[0], ctx->saved_data["inverse_groups"].toInt()), at::Tensor()};
  }

 private:
  static c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, int64_t)> op() {
    return fastnas_op<at::Tensor(const at::Tensor&, int64_t)>(FASTNAS_OP("channel_shuffle"));
  }
};

at::Tensor channel_shuffle_autograd(const at::Tensor& x, int64_t groups) {
  return ChannelShuffleFunction::apply(x, groups);
}

// ---- shuffle + grouped 1x1 conv ----
class ShuffleGConv1x1Function : public torch::autograd::Function<ShuffleGConv1x1Function> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, int64_t groups,
                            int64_t shuffle_groups) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({x, weight});
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["shuffle_groups"] = shuffle_groups;
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    return fastnas_op<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                 int64_t, int64_t)>(FASTNAS_OP("shuffle_gconv1x1"))
        .call(x, weight, bias, groups, shuffle_groups);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor& grad = grads[0];
    const int64_t groups = ctx->saved_data["groups"].toInt();
    const int64_t shuffle_groups = ctx->saved_data["shuffle_groups"].toInt();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    using GradSignature = at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, int64_t);
    at::Tensor grad_x, grad_weight, grad_bias;
    if (ctx->needs_input_grad(0)) {
      grad_x = fastnas_op<GradSignature>(FASTNAS_OP("shuffle_gconv1x1_grad_input"))
                   .call(grad, saved[1], groups, shuffle_groups);
    }
    if (ctx->needs_input_grad(1)) {
      grad_weight = fastnas_op<GradSignature>(FASTNAS_OP("shuffle_gconv1x1_grad_weight"))
                        .call(grad, saved[0], groups, shuffle_groups);
    }
    if (has_bias && ctx->needs_input_grad(2)) {
      // Per-channel sums of the shuffled gradient, moved back to conv channel order.
      grad_bias = grad.sum({0, 2, 3}).view({-1, shuffle_groups}).t().reshape({-1});
    }
    return {grad_x, grad_weight, grad_bias, at::Tensor(), at::Tensor()};
  }
};

at::Tensor shuffle_gconv1x1_autograd(const at::Tensor& x, const at::Tensor& weight,
                                     const std::optional<at::Tensor>& bias, int64_t groups,
                                     int64_t shuffle_groups) {
  return ShuffleGConv1x1Function::apply(x, weight, bias, groups, shuffle_groups);
}

// ---- multi-dilation depthwise conv ----
class MultiDilationFunction : public torch::autograd::Function<MultiDilationFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            at::IntArrayRef dilations, const std::optional<at::Tensor>& bias,
                            int64_t stride) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({x, weight});
    ctx->saved_data["dilations"] = dilations.vec();
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    return fastnas_op<at::Tensor(const at::Tensor&, const at::Tensor&, at::IntArrayRef,
                                 const std::optional<at::Tensor>&, int64_t)>(FASTNAS_OP("multi_dilation_dwconv2d"))
        .call(x, weight, dilations, bias, stride);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    const at::Tensor& weight = saved[1];
    const at::Tensor& grad = grads[0];
    const std::vector<int64_t> dilations = ctx->saved_data["dilations"].toIntVector();
    const int64_t stride = ctx->saved_data["stride"].toInt();
    at::Tensor grad_x, grad_weight, grad_bias;
    if (ctx->needs_input_grad(0)) {
      grad_x = fastnas_op<at::Tensor(const at::Tensor&, const at::Tensor&, at::IntArrayRef, int64_t,
                                     at::IntArrayRef)>(FASTNAS_OP("multi_dilation_dwconv2d_grad_input"))
                   .call(grad, weight, dilations, stride, concrete_sizes(x));
    }
    if (ctx->needs_input_grad(1)) {
      grad_weight = fastnas_op<at::Tensor(const at::Tensor&, const at::Tensor&, at::IntArrayRef, int64_t,
                                          int64_t)>(FASTNAS_OP("multi_dilation_dwconv2d_grad_weight"))
                        .call(grad, x, dilations, stride, concrete_sizes(weight).back());
    }
    // Edges exist only for tensors: x, weight, then bias (dilations is not one).
    if (ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2)) {
      grad_bias = grad.sum({0, 2, 3});
    }
    return {grad_x, grad_weight, at::Tensor(), grad_bias, at::Tensor()};
  }
};

at::Tensor multi_dilation_dwconv2d_autograd(const at::Tensor& x, const at::Tensor& weight,
                                            at::IntArrayRef dilations,
                                            const std::optional<at::Tensor>& bias, int64_t stride) {
  return MultiDilationFunction::apply(x, weight, dilations, bias, stride);
}

// ---- mixed op ----
c10::TypedOperatorHandle<std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, at::TensorList, const at::Tensor&, at::IntArrayRef, bool)>
mixed_op_backward_op() {
  return fastnas_op<std::tuple<at::Tensor, at::Tensor>(
      const at::Tensor&, at::TensorList, const at::Tensor&, at::IntArrayRef, bool)>(FASTNAS_OP("mixed_op_backward"));
}

class MixedOpFunction : public torch::autograd::Function<MixedOpFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, at::TensorList outputs, const at::Tensor& weights,
                            at::IntArrayRef indices) {
    at::AutoDispatchBelowADInplaceOrView guard;
    std::vector<at::Tensor> saved(outputs.begin(), outputs.end());
    saved.push_back(weights);
    ctx->save_for_backward(saved);
    ctx->saved_data["indices"] = indices.vec();
    return fastnas_op<at::Tensor(at::TensorList, const at::Tensor&, at::IntArrayRef)>(FASTNAS_OP("mixed_op"))
        .call(outputs, weights, indices);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list saved = ctx->get_saved_variables();
    const at::Tensor weights = saved.back();
    saved.pop_back();
    const auto count = saved.size();
    // Edges: one per computed output, then the weights.
    bool need_output_grads = false;
    for (size_t j = 0; j < count; ++j) need_output_grads = need_output_grads || ctx->needs_input_grad(j);
    auto [output_grads, grad_weights] = mixed_op_backward_op().call(
        grads[0], saved, weights, ctx->saved_data["indices"].toIntVector(), need_output_grads);
    variable_list result(count + 2);
    for (size_t j = 0; j < count && need_output_grads; ++j) {
      if (ctx->needs_input_grad(j)) result[j] = output_grads[j];
    }
    if (ctx->needs_input_grad(count)) result[count] = grad_weights;
    return result;  // the last entry (indices) stays undefined
  }
};

// On the CPU there is no caching allocator: K candidate gradients returned together
// make glibc map and fault in K fresh buffers on every step, which costs more than the
// whole backward. There the mixed op is split so the engine scales the gradient for
// one candidate at a time (each buffer is consumed, freed and reused before the next is
// made): the fused sum passes its incoming gradient through unchanged and computes the
// weight gradients in one pass; a ScaleGradient node per candidate multiplies by w_k.
class ScaleGradientFunction : public torch::autograd::Function<ScaleGradientFunction> {
 public:
  // Returns a view of x; its backward multiplies the gradient by weights[index].
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weights,
                            int64_t index) {
    ctx->save_for_backward({weights});
    ctx->saved_data["index"] = index;
    return x.view_as(x);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor weight = ctx->get_saved_variables()[0].select(0, ctx->saved_data["index"].toInt());
    return {grads[0] * weight, at::Tensor(), at::Tensor()};
  }
};

class PassThroughMixedSumFunction : public torch::autograd::Function<PassThroughMixedSumFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, at::TensorList outputs, const at::Tensor& weights,
                            at::IntArrayRef indices) {
    return MixedOpFunction::forward(ctx, outputs, weights, indices);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list saved = ctx->get_saved_variables();
    const at::Tensor weights = saved.back();
    saved.pop_back();
    const auto count = saved.size();
    variable_list result(count + 2);
    for (size_t j = 0; j < count; ++j) {
      if (ctx->needs_input_grad(j)) result[j] = grads[0];  // scaled by the ScaleGradient node
    }
    if (ctx->needs_input_grad(count)) {
      result[count] = std::get<1>(mixed_op_backward_op().call(grads[0], saved, weights,
                                                              ctx->saved_data["indices"].toIntVector(), false));
    }
    return result;
  }
};

// Whether the CPU kernels run the op. The SIMT test build runs the CUDA kernels on CPU
// tensors, and must take the CUDA path to exercise them.
bool runs_cpu_kernels(const at::Tensor& t) {
#ifdef FASTNAS_SIMT
  return false;
#else
  return t.device().is_cpu();
#endif
}

at::Tensor mixed_op_autograd(at::TensorList outputs, const at::Tensor& weights, at::IntArrayRef indices) {
  const bool split = !outputs.empty() && runs_cpu_kernels(outputs[0]) && at::GradMode::is_enabled();
  if (!split) return MixedOpFunction::apply(outputs, weights, indices);
  const at::Tensor frozen_weights = weights.detach();
  std::vector<at::Tensor> scaled;
  scaled.reserve(outputs.size());
  for (size_t j = 0; j < outputs.size(); ++j) {
    scaled.push_back(outputs[j].requires_grad()
                         ? ScaleGradientFunction::apply(outputs[j], frozen_weights, indices[j])
                         : outputs[j]);
  }
  return PassThroughMixedSumFunction::apply(at::TensorList(scaled), weights, indices);
}

// ---- batch-normalised mixed op ----
// Saves the candidates' un-normalised inputs and the (J, C) statistics, never the
// normalised outputs: that is the memory a DARTS edge saves over BN modules + mixed op.
class BatchNormMixedOpFunction : public torch::autograd::Function<BatchNormMixedOpFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, at::TensorList outputs, const at::Tensor& weights,
                               at::IntArrayRef indices, const c10::List<bool>& normalize, double eps) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, mean, invstd, variance] =
        fastnas_op<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
            at::TensorList, const at::Tensor&, at::IntArrayRef, const c10::List<bool>&, double)>(
            FASTNAS_OP("batch_norm_mixed_op"))
            .call(outputs, weights, indices, normalize, eps);
    std::vector<at::Tensor> saved(outputs.begin(), outputs.end());
    saved.push_back(weights);
    saved.push_back(mean);
    saved.push_back(invstd);
    ctx->save_for_backward(saved);
    ctx->saved_data["indices"] = indices.vec();
    ctx->saved_data["normalize"] = normalize;
    ctx->mark_non_differentiable({mean, invstd, variance});
    return {out, mean, invstd, variance};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list saved = ctx->get_saved_variables();
    const at::Tensor invstd = saved.back();
    saved.pop_back();
    const at::Tensor mean = saved.back();
    saved.pop_back();
    const at::Tensor weights = saved.back();
    saved.pop_back();
    const auto count = saved.size();
    bool need_output_grads = false;
    for (size_t j = 0; j < count; ++j) need_output_grads = need_output_grads || ctx->needs_input_grad(j);
    auto [output_grads, grad_weights] =
        fastnas_op<std::tuple<at::Tensor, at::Tensor>(
            const at::Tensor&, at::TensorList, const at::Tensor&, at::IntArrayRef, const c10::List<bool>&,
            const at::Tensor&, const at::Tensor&, bool)>(FASTNAS_OP("batch_norm_mixed_op_backward"))
            .call(grads[0], saved, weights, ctx->saved_data["indices"].toIntVector(),
                  ctx->saved_data["normalize"].toBoolList(), mean, invstd, need_output_grads);
    variable_list result(count + 4);
    for (size_t j = 0; j < count && need_output_grads; ++j) {
      if (ctx->needs_input_grad(j)) result[j] = output_grads[j];
    }
    if (ctx->needs_input_grad(count)) result[count] = grad_weights;
    return result;  // indices, normalize and eps stay undefined
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_norm_mixed_op_autograd(
    at::TensorList outputs, const at::Tensor& weights, at::IntArrayRef indices, const c10::List<bool>& normalize,
    double eps) {
  variable_list result = BatchNormMixedOpFunction::apply(outputs, weights, indices, normalize, eps);
  return {result[0], result[1], result[2], result[3]};
}

// ---- 3x3 pooling pair ----
class Pool3x3PairFunction : public torch::autograd::Function<Pool3x3PairFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, int64_t stride) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [max_out, avg_out, positions] =
        fastnas_op<std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, int64_t)>(FASTNAS_OP("pool3x3_pair"))
            .call(x, stride);
    ctx->save_for_backward({positions});
    ctx->saved_data["input_size"] = concrete_sizes(x);
    ctx->saved_data["stride"] = stride;
    ctx->mark_non_differentiable({positions});
    ctx->set_materialize_grads(false);  // an unused pool passes no gradient
    return {max_out, avg_out, positions};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined() && !grads[1].defined()) return {at::Tensor(), at::Tensor()};
    auto optional = [](const at::Tensor& t) { return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt; };
    at::Tensor grad_x =
        fastnas_op<at::Tensor(const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, const at::Tensor&,
                              at::IntArrayRef, int64_t)>(FASTNAS_OP("pool3x3_pair_backward"))
            .call(optional(grads[0]), optional(grads[1]), ctx->get_saved_variables()[0],
                  ctx->saved_data["input_size"].toIntVector(), ctx->saved_data["stride"].toInt());
    return {grad_x, at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> pool3x3_pair_autograd(const at::Tensor& x, int64_t stride) {
  variable_list result = Pool3x3PairFunction::apply(x, stride);
  return {result[0], result[1], result[2]};
}

}  // namespace

FASTNAS_TORCH_LIBRARY_IMPL(Autograd, m) {
  m.impl("channel_shuffle", &channel_shuffle_autograd);
  m.impl("shuffle_gconv1x1", &shuffle_gconv1x1_autograd);
  m.impl("multi_dilation_dwconv2d", &multi_dilation_dwconv2d_autograd);
  m.impl("mixed_op", &mixed_op_autograd);
  m.impl("batch_norm_mixed_op", &batch_norm_mixed_op_autograd);
  m.impl("pool3x3_pair", &pool3x3_pair_autograd);
}

}  // namespace fastnas
