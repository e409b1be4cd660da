// The fastnas ops under torch.autocast. On CUDA the convolution-like ops (shuffle +
// grouped 1x1 conv, multi-dilation depthwise conv) run in the autocast dtype, as torch's
// convolutions do; the weighted sums take their candidates in the widest dtype among them
// (autocast's promote rule: a DARTS edge mixes bfloat16 convolutions with a float32
// identity). The CPU kernels compute in float32 and float64, so under CPU autocast every
// lower-precision input is brought to float32. The pooling pair keeps its input's dtype on
// either device (no kernel needed here). Each kernel casts, then redispatches below
// autocast to autograd and the device kernel; the casts are recorded by autograd.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

#include "library.h"

namespace fastnas {
namespace {

template <c10::DeviceType kDevice>
constexpr c10::DispatchKey autocast_key() {
  return kDevice == c10::DeviceType::CUDA ? c10::DispatchKey::AutocastCUDA : c10::DispatchKey::AutocastCPU;
}

// The dtype the convolution-like ops run in: autocast's on CUDA, float32 on the CPU.
template <c10::DeviceType kDevice>
at::ScalarType lower_precision() {
  return kDevice == c10::DeviceType::CUDA ? at::autocast::get_autocast_dtype(at::kCUDA) : at::kFloat;
}

template <c10::DeviceType kDevice>
at::Tensor cast(at::ScalarType dtype, const at::Tensor& t) {
  return at::autocast::cached_cast(dtype, t, kDevice);
}

template <c10::DeviceType kDevice>
std::optional<at::Tensor> cast(at::ScalarType dtype, const std::optional<at::Tensor>& t) {
  if (!t.has_value() || !t->defined()) return t;
  return cast<kDevice>(dtype, *t);
}

// The widest floating dtype of `tensors` (float32 at least on the CPU).
template <c10::DeviceType kDevice>
at::ScalarType widest(at::TensorList tensors) {
  at::ScalarType dtype = kDevice == c10::DeviceType::CUDA ? at::kHalf : at::kFloat;
  bool first = kDevice == c10::DeviceType::CUDA;
  for (const at::Tensor& t : tensors) {
    if (!t.is_floating_point()) continue;
    dtype = first ? t.scalar_type() : at::promote_types(dtype, t.scalar_type());
    first = false;
  }
  return dtype;
}

template <c10::DeviceType kDevice>
std::vector<at::Tensor> cast_all(at::ScalarType dtype, at::TensorList tensors) {
  std::vector<at::Tensor> result;
  result.reserve(tensors.size());
  for (const at::Tensor& t : tensors) result.push_back(cast<kDevice>(dtype, t));
  return result;
}

template <typename Signature>
c10::TypedOperatorHandle<Signature> fastnas_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

template <c10::DeviceType kDevice>
at::Tensor shuffle_gconv1x1(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            int64_t groups, int64_t shuffle_groups) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(autocast_key<kDevice>());
  const at::ScalarType dtype = lower_precision<kDevice>();
  static const auto op = fastnas_op<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                               int64_t, int64_t)>(FASTNAS_OP("shuffle_gconv1x1"));
  return op.call(cast<kDevice>(dtype, x), cast<kDevice>(dtype, weight), cast<kDevice>(dtype, bias), groups,
                 shuffle_groups);
}

template <c10::DeviceType kDevice>
at::Tensor multi_dilation_dwconv2d(const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef dilations,
                                   const std::optional<at::Tensor>& bias, int64_t stride) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(autocast_key<kDevice>());
  const at::ScalarType dtype = lower_precision<kDevice>();
  static const auto op = fastnas_op<at::Tensor(const at::Tensor&, const at::Tensor&, at::IntArrayRef,
                                               const std::optional<at::Tensor>&, int64_t)>(
      FASTNAS_OP("multi_dilation_dwconv2d"));
  return op.call(cast<kDevice>(dtype, x), cast<kDevice>(dtype, weight), dilations, cast<kDevice>(dtype, bias), stride);
}

template <c10::DeviceType kDevice>
at::Tensor mixed_op(at::TensorList outputs, const at::Tensor& weights, at::IntArrayRef indices) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(autocast_key<kDevice>());
  static const auto op =
      fastnas_op<at::Tensor(at::TensorList, const at::Tensor&, at::IntArrayRef)>(FASTNAS_OP("mixed_op"));
  return op.call(cast_all<kDevice>(widest<kDevice>(outputs), outputs), weights, indices);
}

template <c10::DeviceType kDevice>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_norm_mixed_op(at::TensorList outputs,
                                                                               const at::Tensor& weights,
                                                                               at::IntArrayRef indices,
                                                                               const c10::List<bool>& normalize,
                                                                               double eps) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(autocast_key<kDevice>());
  static const auto op =
      fastnas_op<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
          at::TensorList, const at::Tensor&, at::IntArrayRef, const c10::List<bool>&, double)>(
          FASTNAS_OP("batch_norm_mixed_op"));
  return op.call(cast_all<kDevice>(widest<kDevice>(outputs), outputs), weights, indices, normalize, eps);
}

template <c10::DeviceType kDevice>
void register_autocast(torch::Library& m) {
  m.impl("shuffle_gconv1x1", &shuffle_gconv1x1<kDevice>);
  m.impl("multi_dilation_dwconv2d", &multi_dilation_dwconv2d<kDevice>);
  m.impl("mixed_op", &mixed_op<kDevice>);
  m.impl("batch_norm_mixed_op", &batch_norm_mixed_op<kDevice>);
}

}  // namespace

FASTNAS_TORCH_LIBRARY_IMPL(AutocastCUDA, m) { register_autocast<c10::DeviceType::CUDA>(m); }
FASTNAS_TORCH_LIBRARY_IMPL(AutocastCPU, m) { register_autocast<c10::DeviceType::CPU>(m); }

}  // namespace fastnas
