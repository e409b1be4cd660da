// The fastnas operator library: every schema in one TORCH_LIBRARY block, the
// argument checks shared by all devices, and the build description.
#ifndef FASTNAS_NO_PYTHON_MODULE
#include <Python.h>
#endif
#include <torch/library.h>
#include <torch/version.h>

#include <sstream>

#include "library.h"
#include "checks.h"
#include "ops.h"

#ifndef FASTNAS_CUDA_ARCH_LIST
#define FASTNAS_CUDA_ARCH_LIST ""
#endif

#ifndef FASTNAS_NO_PYTHON_MODULE
extern "C" {
// Importing fastnas._C only loads the library, which registers the ops. (The CMake
// build is loaded with torch.ops.load_library instead and has no module init.)
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
#endif

namespace fastnas {

namespace {

// What the forward and both backward ops share: the input's (N, C, H, W) size, the kernel
// size, the dilations and the stride. Returns the output's spatial size.
std::pair<int64_t, int64_t> check_multi_dilation_geometry(at::IntArrayRef input_size, int64_t kernel_size,
                                                          at::IntArrayRef dilations, int64_t stride) {
  FASTNAS_CHECK(kernel_size >= 1 && kernel_size % 2 == 1, "weight has an even kernel size K=", kernel_size,
                "; 'same' padding d*(K-1)/2 needs an odd K such as 3 or 5");
  FASTNAS_CHECK(!dilations.empty(), "dilations is empty; pass at least one dilation, e.g. (1,)");
  for (const int64_t d : dilations) {
    FASTNAS_CHECK(d >= 1, "dilations must all be >= 1, got ", dilations);
  }
  const int64_t channels = input_size[1];
  const auto num_groups = static_cast<int64_t>(dilations.size());
  FASTNAS_CHECK(channels % num_groups == 0, "x has C=", channels,
                " channels, which cannot be split into len(dilations)=", num_groups,
                " equal groups; make C a multiple of ", num_groups);
  FASTNAS_CHECK(stride >= 1, "stride must be >= 1, got ", stride);
  FASTNAS_CHECK(input_size[2] >= 1 && input_size[3] >= 1, "x must have a non-empty spatial size, got ",
                input_size);
  // With same padding the output size does not depend on the dilation.
  return {(input_size[2] - 1) / stride + 1, (input_size[3] - 1) / stride + 1};
}

void check_depthwise_weight(const at::Tensor& weight, int64_t channels) {
  FASTNAS_CHECK_DIM(weight, 4, "(C, 1, K, K)");
  FASTNAS_CHECK(weight.size(0) == channels && weight.size(1) == 1 && weight.size(3) == weight.size(2),
                "weight must be shaped (C, 1, K, K) = (", channels,
                ", 1, K, K) for a depthwise conv over x with C=", channels, " channels, got ", weight.sizes());
}

// grad_out of a backward op must be the forward's output gradient: (N, C, H_out, W_out).
void check_output_gradient(const at::Tensor& grad_out, at::IntArrayRef input_size,
                           std::pair<int64_t, int64_t> out_size) {
  const std::vector<int64_t> expected{input_size[0], input_size[1], out_size.first, out_size.second};
  FASTNAS_CHECK(grad_out.sizes() == at::IntArrayRef(expected), "grad_out must be shaped ", at::IntArrayRef(expected),
                ", the output of the forward for an input of size ", input_size, ", got ", grad_out.sizes());
}

}  // namespace

std::pair<int64_t, int64_t> check_multi_dilation_args(const at::Tensor& x,
                                                      const at::Tensor& weight,
                                                      at::IntArrayRef dilations,
                                                      int64_t stride) {
  FASTNAS_CHECK_DIM(x, 4, "(N, C, H, W)");
  FASTNAS_CHECK_FLOATING(x);
  check_depthwise_weight(weight, x.size(1));
  check_same_device_dtype(x, "x", weight, "weight");
  return check_multi_dilation_geometry(x.sizes(), weight.size(2), dilations, stride);
}

void check_multi_dilation_grad_input_args(const at::Tensor& grad_out, const at::Tensor& weight,
                                          at::IntArrayRef dilations, int64_t stride, at::IntArrayRef input_size) {
  FASTNAS_CHECK(input_size.size() == 4, "input_size must be (N, C, H, W), got ", input_size);
  FASTNAS_CHECK_FLOATING(grad_out);
  check_depthwise_weight(weight, input_size[1]);
  check_same_device_dtype(weight, "weight", grad_out, "grad_out");
  check_output_gradient(grad_out, input_size, check_multi_dilation_geometry(input_size, weight.size(2), dilations, stride));
}

void check_multi_dilation_grad_weight_args(const at::Tensor& grad_out, const at::Tensor& x,
                                           at::IntArrayRef dilations, int64_t stride, int64_t kernel_size) {
  FASTNAS_CHECK_DIM(x, 4, "(N, C, H, W)");
  FASTNAS_CHECK_FLOATING(x);
  check_same_device_dtype(x, "x", grad_out, "grad_out");
  FASTNAS_CHECK(kernel_size >= 1 && kernel_size % 2 == 1, "kernel_size=", kernel_size,
                " is not an odd size such as 3 or 5; pass the forward weight's K");
  check_output_gradient(grad_out, x.sizes(), check_multi_dilation_geometry(x.sizes(), kernel_size, dilations, stride));
}

void check_mixed_op_args(at::TensorList outputs, const at::Tensor& weights,
                         at::IntArrayRef indices) {
  FASTNAS_CHECK(weights.dim() == 1, "weights must be a 1-D tensor of K weights, got shape ",
                weights.sizes());
  FASTNAS_CHECK_FLOATING(weights);
  FASTNAS_CHECK(!outputs.empty(), "no candidate output was computed; at least one is needed");
  FASTNAS_CHECK(outputs.size() == indices.size(), "got ", outputs.size(), " outputs but ",
                indices.size(), " indices; pass the candidate index of every computed output");
  const int64_t num_weights = weights.size(0);
  const at::Tensor& first = outputs.front();
  FASTNAS_CHECK(at::isFloatingType(first.scalar_type()),
                "outputs must be floating-point tensors, got ", first.scalar_type());
  FASTNAS_CHECK(weights.device() == first.device(), "weights is on ", weights.device(),
                " but the outputs are on ", first.device(),
                "; move the weights to the outputs' device");
  for (size_t j = 0; j < outputs.size(); ++j) {
    const int64_t k = indices[j];
    FASTNAS_CHECK(k >= 0 && k < num_weights && (j == 0 || k > indices[j - 1]),
                  "indices must be increasing candidate positions in [0, ", num_weights,
                  "), got ", indices);
    FASTNAS_CHECK(outputs[j].sizes() == first.sizes(), "outputs[", k, "] has shape ",
                  outputs[j].sizes(), " but outputs[", indices[0], "] has shape ",
                  first.sizes(), "; every candidate must produce the same shape");
    FASTNAS_CHECK(outputs[j].device() == first.device() &&
                      outputs[j].scalar_type() == first.scalar_type(),
                  "outputs[", k, "] is ", outputs[j].scalar_type(), " on ", outputs[j].device(),
                  " but outputs[", indices[0], "] is ", first.scalar_type(), " on ",
                  first.device(), "; every candidate must share dtype and device");
  }
  if (static_cast<int64_t>(indices.size()) != num_weights && weights.device().is_cpu()) {
    // A skipped candidate is only exact when its weight is zero. On a GPU that read would
    // make the host wait for the device on every call: there the caller vouches for it
    // (MixedOp skips exactly the candidates it read as zero).
    const at::Tensor host_weights = weights.detach().to(at::kCPU, at::kDouble).contiguous();
    const double* w = host_weights.data_ptr<double>();
    size_t next = 0;
    for (int64_t k = 0; k < num_weights; ++k) {
      if (next < indices.size() && indices[next] == k) {
        ++next;
        continue;
      }
      FASTNAS_CHECK(w[k] == 0.0, "outputs[", k, "] is None but weights[", k, "] = ", w[k],
                    "; only candidates with weight exactly 0 may be skipped, compute "
                    "outputs[", k, "] or zero its weight");
    }
  }
}

void check_mixed_op_backward_args(const at::Tensor& grad, at::TensorList outputs, const at::Tensor& weights,
                                  at::IntArrayRef indices) {
  check_mixed_op_args(outputs, weights, indices);
  check_incoming_gradient(grad, outputs.front());
}

void check_incoming_gradient(const at::Tensor& grad, const at::Tensor& first_output) {
  FASTNAS_CHECK(grad.sizes() == first_output.sizes(), "grad has shape ", grad.sizes(),
                " but the outputs have shape ", first_output.sizes(), "; pass the gradient of the mixed sum");
  FASTNAS_CHECK(grad.device() == first_output.device() && grad.scalar_type() == first_output.scalar_type(),
                "grad has dtype ", grad.scalar_type(), " on ", grad.device(), " but the outputs have dtype ",
                first_output.scalar_type(), " on ", first_output.device(), "; pass the gradient of the mixed sum");
}

at::Tensor scatter_weight_grads(const at::Tensor& weights, at::IntArrayRef indices,
                                const at::Tensor& per_computed) {
  auto grad_weights = at::zeros({weights.size(0)}, weights.options());
  const auto index = at::tensor(indices.vec(), at::kLong).to(weights.device(), /*non_blocking=*/true);
  grad_weights.index_copy_(0, index, per_computed.to(weights.scalar_type()));
  return grad_weights;
}

namespace {

int64_t check_batch_norm_mixed_op_common(at::TensorList outputs, const at::Tensor& weights,
                                         at::IntArrayRef indices, const c10::List<bool>& normalize) {
  check_mixed_op_args(outputs, weights, indices);
  const at::Tensor& first = outputs.front();
  FASTNAS_CHECK(first.dim() == 4, "outputs must be 4-D tensors shaped (N, C, H, W) for batch "
                "normalisation, got shape ", first.sizes());
  FASTNAS_CHECK(normalize.size() == outputs.size(), "got ", normalize.size(),
                " normalize flags for ", outputs.size(),
                " computed outputs; pass one flag per computed output");
  const int64_t count = first.size(0) * first.size(2) * first.size(3);
  bool any_normalized = false;
  for (const bool flag : normalize) any_normalized = any_normalized || flag;
  // As nn.BatchNorm2d: an empty batch passes (and keeps the running statistics), one value
  // per channel has no variance.
  FASTNAS_CHECK(!any_normalized || count != 1, "batch normalisation needs more than one value "
                "per channel, got outputs of shape ", first.sizes(),
                "; use a batch of 2 or more, or eval mode");
  return count;
}

}  // namespace

int64_t check_batch_norm_mixed_op_args(at::TensorList outputs, const at::Tensor& weights,
                                       at::IntArrayRef indices, const c10::List<bool>& normalize,
                                       double eps) {
  FASTNAS_CHECK(eps > 0, "eps must be > 0, got ", eps);
  return check_batch_norm_mixed_op_common(outputs, weights, indices, normalize);
}

int64_t check_batch_norm_mixed_op_backward_args(const at::Tensor& grad, at::TensorList outputs,
                                                const at::Tensor& weights, at::IntArrayRef indices,
                                                const c10::List<bool>& normalize, const at::Tensor& mean,
                                                const at::Tensor& invstd) {
  const int64_t count = check_batch_norm_mixed_op_common(outputs, weights, indices, normalize);
  check_incoming_gradient(grad, outputs.front());
  const std::vector<int64_t> expected{static_cast<int64_t>(outputs.size()), outputs.front().size(1)};
  FASTNAS_CHECK(mean.sizes() == at::IntArrayRef(expected) && invstd.sizes() == at::IntArrayRef(expected),
                "mean and invstd must be shaped (", expected[0], ", ", expected[1],
                "), as batch_norm_mixed_op returns them, got ", mean.sizes(), " and ", invstd.sizes());
  return count;
}

std::pair<int64_t, int64_t> check_pool_pair_args(const at::Tensor& x, int64_t stride) {
  FASTNAS_CHECK_DIM(x, 4, "(N, C, H, W)");
  FASTNAS_CHECK_FLOATING(x);
  FASTNAS_CHECK(stride >= 1, "stride must be >= 1, got ", stride);
  FASTNAS_CHECK(x.size(2) >= 1 && x.size(3) >= 1, "x must have a non-empty spatial size, got ",
                x.sizes());
  return {(x.size(2) - 1) / stride + 1, (x.size(3) - 1) / stride + 1};
}

PoolPairBackwardArgs check_pool_pair_backward_args(const std::optional<at::Tensor>& grad_max,
                                                   const std::optional<at::Tensor>& grad_avg,
                                                   const at::Tensor& positions, at::IntArrayRef input_size,
                                                   int64_t stride) {
  PoolPairBackwardArgs args;
  if (grad_max.has_value() && grad_max->defined()) args.grad_max = grad_max->contiguous();
  if (grad_avg.has_value() && grad_avg->defined()) args.grad_avg = grad_avg->contiguous();
  FASTNAS_CHECK(args.grad_max.defined() || args.grad_avg.defined(), "pass grad_max, grad_avg or both");
  FASTNAS_CHECK(input_size.size() == 4, "input_size must be (N, C, H, W), got ", input_size);
  FASTNAS_CHECK(positions.scalar_type() == at::kByte && positions.dim() == 4,
                "positions must be the uint8 (N, C, H_out, W_out) tensor pool3x3_pair returns, got ",
                positions.scalar_type(), " of shape ", positions.sizes());
  FASTNAS_CHECK(stride >= 1, "stride must be >= 1, got ", stride);
  FASTNAS_CHECK(input_size[2] >= 1 && input_size[3] >= 1, "input_size must have a non-empty spatial size, got ",
                input_size);
  const std::vector<int64_t> out_size{input_size[0], input_size[1], (input_size[2] - 1) / stride + 1,
                                      (input_size[3] - 1) / stride + 1};
  FASTNAS_CHECK(positions.sizes() == at::IntArrayRef(out_size), "positions has shape ", positions.sizes(),
                " but pooling input_size ", input_size, " with stride ", stride, " gives ", at::IntArrayRef(out_size),
                "; pass the forward's input size and stride");
  const at::Tensor& reference = args.any_grad();
  FASTNAS_CHECK_FLOATING(reference);
  for (const auto& [grad, name] : {std::pair{&args.grad_max, "grad_max"}, std::pair{&args.grad_avg, "grad_avg"}}) {
    if (!grad->defined()) continue;
    FASTNAS_CHECK(grad->sizes() == positions.sizes(), name, " has shape ", grad->sizes(), " but positions has shape ",
                  positions.sizes(), "; pass the gradients of pool3x3_pair's outputs");
    check_same_device_dtype(args.grad_max.defined() ? args.grad_max : reference, "grad_max", *grad, name);
  }
  FASTNAS_CHECK(positions.device() == reference.device(), "positions is on ", positions.device(),
                " but the gradients are on ", reference.device(), "; move them to the same device");
  args.positions = positions.contiguous();
  return args;
}

std::string build_info() {
  std::ostringstream json;
  json << "{\"torch\": \"" << TORCH_VERSION << "\", \"cuda\": "
#ifdef FASTNAS_WITH_CUDA
       << "true"
#else
       << "false"
#endif
       << ", \"cuda_arch_list\": \"" << FASTNAS_CUDA_ARCH_LIST << "\", \"openmp\": "
#ifdef _OPENMP
       << "true"
#else
       << "false"
#endif
       << "}";
  return json.str();
}

}  // namespace fastnas

FASTNAS_TORCH_LIBRARY(m) {
  m.def("build_info() -> str", &fastnas::build_info);

  m.def("channel_shuffle(Tensor x, int groups) -> Tensor");
  m.def(
      "shuffle_gconv1x1(Tensor x, Tensor weight, Tensor? bias, int groups, int shuffle_groups)"
      " -> Tensor");
  m.def(
      "shuffle_gconv1x1_grad_input(Tensor grad_out, Tensor weight, int groups,"
      " int shuffle_groups) -> Tensor");
  m.def(
      "shuffle_gconv1x1_grad_weight(Tensor grad_out, Tensor x, int groups,"
      " int shuffle_groups) -> Tensor");

  m.def(
      "multi_dilation_dwconv2d(Tensor x, Tensor weight, int[] dilations, Tensor? bias,"
      " int stride) -> Tensor");
  m.def(
      "multi_dilation_dwconv2d_grad_input(Tensor grad_out, Tensor weight, int[] dilations,"
      " int stride, int[] input_size) -> Tensor");
  m.def(
      "multi_dilation_dwconv2d_grad_weight(Tensor grad_out, Tensor x, int[] dilations,"
      " int stride, int kernel_size) -> Tensor");

  // outputs[j] is candidate indices[j]; candidates left out were never computed, and their
  // weights must be 0 (checked on the CPU; on CUDA the check would make the host wait).
  m.def("mixed_op(Tensor[] outputs, Tensor weights, int[] indices) -> Tensor");
  m.def(
      "mixed_op_backward(Tensor grad, Tensor[] outputs, Tensor weights, int[] indices,"
      " bool need_output_grads) -> (Tensor, Tensor)");
  // The backward ops return the candidates' gradients stacked in one (J, N, C, H, W) tensor
  // (J = 0 without need_output_grads): one allocation, and a custom op's outputs may not
  // alias each other, so they cannot be returned as J views of it.

  // sum_j weights[indices[j]] * bn(outputs[j]), bn = batch norm without affine over the
  // batch statistics where normalize[j] (identity otherwise). Also returns the per-(j, C)
  // mean, 1/sqrt(var + eps) and biased variance var (0, 1 and 0 where not normalised), in
  // the accumulation type.
  m.def(
      "batch_norm_mixed_op(Tensor[] outputs, Tensor weights, int[] indices, bool[] normalize,"
      " float eps) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "batch_norm_mixed_op_backward(Tensor grad, Tensor[] outputs, Tensor weights, int[] indices,"
      " bool[] normalize, Tensor mean, Tensor invstd, bool need_output_grads) -> (Tensor, Tensor)");

  // A DARTS edge's two poolings in one pass: 3x3 max pooling and 3x3 average pooling
  // (count_include_pad=False), padding 1. Also returns each max's window position
  // (uint8, 0..8), all the backward needs: 1 byte per output instead of int64 indices.
  m.def("pool3x3_pair(Tensor x, int stride) -> (Tensor, Tensor, Tensor)");
  m.def(
      "pool3x3_pair_backward(Tensor? grad_max, Tensor? grad_avg, Tensor positions, int[] input_size,"
      " int stride) -> Tensor");
}
