// Channel shuffle fused into a grouped 1x1 convolution, for every device.
//
// A grouped 1x1 conv is one matrix product per group. The shuffle only moves
// output rows, and the rows of one group that land in one shuffle block end up
// `shuffle_groups` channels apart, i.e. at a constant stride. So each such run of
// rows is written straight to its shuffled place by a strided batched GEMM
// (BLAS on the CPU, cuBLAS on CUDA, through ATen): no extra pass over the output,
// and the backward reads the shuffled gradient through the same strided views.
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "library.h"
#include "checks.h"
#include "index_math.h"

namespace fastnas {
namespace {

// Conv output channels [conv_begin, conv_begin + length) of one group, all in one
// shuffle block, land on output channels out_begin + t * shuffle_groups.
struct ShuffleSegment {
  int64_t group;
  int64_t conv_begin;
  int64_t length;
  int64_t out_begin;
};

std::vector<ShuffleSegment> shuffle_segments(int64_t out_channels, int64_t groups,
                                             int64_t shuffle_groups) {
  const int64_t per_group = out_channels / groups;
  const int64_t per_shuffle_block = out_channels / shuffle_groups;
  std::vector<ShuffleSegment> segments;
  for (int64_t group = 0; group < groups; ++group) {
    int64_t channel = group * per_group;
    const int64_t group_end = channel + per_group;
    while (channel < group_end) {
      const int64_t block_end =
          std::min(group_end, (channel / per_shuffle_block + 1) * per_shuffle_block);
      segments.push_back({group, channel, block_end - channel,
                          shuffled_channel(channel, shuffle_groups, per_shuffle_block)});
      channel = block_end;
    }
  }
  return segments;
}

// (N, count, H*W) view of channels first, first+step, ... of a contiguous NCHW tensor.
at::Tensor channel_rows(const at::Tensor& t, int64_t first, int64_t count, int64_t step) {
  const int64_t plane = t.size(2) * t.size(3);
  return t.as_strided({t.size(0), count, plane}, {t.size(1) * plane, step * plane, 1},
                      t.storage_offset() + first * plane);
}

void check_shuffle_gconv_args(const at::Tensor& x, const at::Tensor& weight, int64_t groups,
                              int64_t shuffle_groups) {
  FASTNAS_CHECK_DIM(x, 4, "(N, C_in, H, W)");
  FASTNAS_CHECK_DIM(weight, 4, "(C_out, C_in/groups, 1, 1)");
  FASTNAS_CHECK_FLOATING(x);
  check_same_device_dtype(x, "x", weight, "weight");
  FASTNAS_CHECK(groups >= 1, "groups must be >= 1, got ", groups);
  FASTNAS_CHECK(shuffle_groups >= 1, "shuffle_groups must be >= 1, got ", shuffle_groups);
  const int64_t in_channels = x.size(1);
  const int64_t out_channels = weight.size(0);
  FASTNAS_CHECK(in_channels % groups == 0, "x has C_in=", in_channels,
                " channels, not divisible by groups=", groups,
                "; choose groups that divide the input channels");
  FASTNAS_CHECK(out_channels % groups == 0, "weight has C_out=", out_channels,
                " output channels, not divisible by groups=", groups,
                "; choose groups that divide the output channels");
  FASTNAS_CHECK(out_channels % shuffle_groups == 0, "C_out=", out_channels,
                " is not divisible by shuffle_groups=", shuffle_groups,
                "; choose shuffle_groups that divide the output channels");
  FASTNAS_CHECK(weight.size(1) * groups == in_channels && weight.size(2) == 1 &&
                    weight.size(3) == 1,
                "weight must be shaped (C_out, C_in/groups, 1, 1) = (", out_channels, ", ",
                in_channels / groups, ", 1, 1) for x with C_in=", in_channels,
                " and groups=", groups, ", got ", weight.sizes());
}

}  // namespace

at::Tensor channel_shuffle(const at::Tensor& x, int64_t groups) {
  FASTNAS_CHECK(x.dim() >= 2, "x must have a channel dimension (N, C, ...), got shape ",
                x.sizes());
  FASTNAS_CHECK(groups >= 1 && x.size(1) % groups == 0, "x has C=", x.size(1),
                " channels, not divisible by groups=", groups,
                "; choose groups that divide the channels");
  auto out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  // out viewed as (N, C/g, g, ...) and transposed is the (N, g, C/g, ...) layout of x.
  std::vector<int64_t> split(x.sizes().begin(), x.sizes().end());
  split[1] = x.size(1) / groups;
  split.insert(split.begin() + 2, groups);
  out.view(split).transpose(1, 2).copy_(x.unflatten(1, {groups, x.size(1) / groups}));
  return out;
}

at::Tensor shuffle_gconv1x1(const at::Tensor& x_in, const at::Tensor& weight_in,
                            const c10::optional<at::Tensor>& bias, int64_t groups,
                            int64_t shuffle_groups) {
  check_shuffle_gconv_args(x_in, weight_in, groups, shuffle_groups);
  const int64_t out_channels = weight_in.size(0);
  if (bias.has_value() && bias->defined()) {
    check_same_device_dtype(x_in, "x", *bias, "bias");
    FASTNAS_CHECK(bias->dim() == 1 && bias->size(0) == out_channels,
                  "bias must be shaped (C_out,) = (", out_channels, ",), got ", bias->sizes());
  }
  const at::Tensor x = x_in.contiguous();
  const int64_t batch = x.size(0);
  const int64_t in_per_group = x.size(1) / groups;
  auto out = at::empty({batch, out_channels, x.size(2), x.size(3)}, x.options());
  if (out.numel() == 0) return out;
  const at::Tensor weight = weight_in.contiguous().view({out_channels, in_per_group});
  const int64_t plane = x.size(2) * x.size(3);
  for (const ShuffleSegment& s : shuffle_segments(out_channels, groups, shuffle_groups)) {
    const at::Tensor x_group = channel_rows(x, s.group * in_per_group, in_per_group, 1);
    const at::Tensor w_rows =
        weight.narrow(0, s.conv_begin, s.length).unsqueeze(0).expand({batch, s.length, in_per_group});
    at::Tensor out_rows = channel_rows(out, s.out_begin, s.length, shuffle_groups);
    if (bias.has_value() && bias->defined()) {
      const at::Tensor b = bias->narrow(0, s.conv_begin, s.length).view({1, s.length, 1});
      at::baddbmm_out(out_rows, b.expand({batch, s.length, plane}), w_rows, x_group);
    } else {
      at::bmm_out(out_rows, w_rows, x_group);
    }
  }
  return out;
}

at::Tensor shuffle_gconv1x1_grad_input(const at::Tensor& grad_out_in, const at::Tensor& weight_in,
                                       int64_t groups, int64_t shuffle_groups) {
  const int64_t out_channels = weight_in.size(0);
  const int64_t in_per_group = weight_in.size(1);
  FASTNAS_CHECK(grad_out_in.dim() == 4 && grad_out_in.size(1) == out_channels,
                "grad_out must be shaped (N, C_out=", out_channels, ", H, W), got ",
                grad_out_in.sizes());
  const at::Tensor grad_out = grad_out_in.contiguous();
  const int64_t batch = grad_out.size(0);
  auto grad_x = at::empty({batch, in_per_group * groups, grad_out.size(2), grad_out.size(3)},
                          grad_out.options());
  if (grad_x.numel() == 0) return grad_x;
  const at::Tensor weight = weight_in.contiguous().view({out_channels, in_per_group});
  int64_t previous_group = -1;
  for (const ShuffleSegment& s : shuffle_segments(out_channels, groups, shuffle_groups)) {
    at::Tensor grad_x_group = channel_rows(grad_x, s.group * in_per_group, in_per_group, 1);
    const at::Tensor w_rows_t = weight.narrow(0, s.conv_begin, s.length)
                                    .t()
                                    .unsqueeze(0)
                                    .expand({batch, in_per_group, s.length});
    const at::Tensor grad_rows = channel_rows(grad_out, s.out_begin, s.length, shuffle_groups);
    if (s.group != previous_group) {
      at::bmm_out(grad_x_group, w_rows_t, grad_rows);
    } else {
      grad_x_group.baddbmm_(w_rows_t, grad_rows);
    }
    previous_group = s.group;
  }
  return grad_x;
}

at::Tensor shuffle_gconv1x1_grad_weight(const at::Tensor& grad_out_in, const at::Tensor& x_in,
                                        int64_t groups, int64_t shuffle_groups) {
  const int64_t out_channels = grad_out_in.size(1);
  const int64_t in_per_group = x_in.size(1) / groups;
  const at::Tensor grad_out = grad_out_in.contiguous();
  const at::Tensor x = x_in.contiguous();
  auto grad_weight = at::zeros({out_channels, in_per_group, 1, 1}, x.options());
  if (x.numel() == 0) return grad_weight;
  const at::Tensor grad_weight_2d = grad_weight.view({out_channels, in_per_group});
  const auto accumulate = at::toOpMathType(x.scalar_type());
  for (const ShuffleSegment& s : shuffle_segments(out_channels, groups, shuffle_groups)) {
    const at::Tensor grad_rows = channel_rows(grad_out, s.out_begin, s.length, shuffle_groups);
    const at::Tensor x_group_t =
        channel_rows(x, s.group * in_per_group, in_per_group, 1).transpose(1, 2);
    grad_weight_2d.narrow(0, s.conv_begin, s.length)
        .copy_(at::bmm(grad_rows, x_group_t).sum(0, false, accumulate));
  }
  return grad_weight;
}

FASTNAS_TORCH_LIBRARY_IMPL(CPU, m) {
  m.impl("channel_shuffle", &channel_shuffle);
  m.impl("shuffle_gconv1x1", &shuffle_gconv1x1);
  m.impl("shuffle_gconv1x1_grad_input", &shuffle_gconv1x1_grad_input);
  m.impl("shuffle_gconv1x1_grad_weight", &shuffle_gconv1x1_grad_weight);
}

#ifdef FASTNAS_WITH_CUDA
FASTNAS_TORCH_LIBRARY_IMPL(CUDA, m) {
  m.impl("channel_shuffle", &channel_shuffle);
  m.impl("shuffle_gconv1x1", &shuffle_gconv1x1);
  m.impl("shuffle_gconv1x1_grad_input", &shuffle_gconv1x1_grad_input);
  m.impl("shuffle_gconv1x1_grad_weight", &shuffle_gconv1x1_grad_weight);
}
#endif

}  // namespace fastnas
