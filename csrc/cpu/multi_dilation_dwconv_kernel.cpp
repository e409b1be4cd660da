// Multi-dilation depthwise conv on the CPU: one pass over every (n, c) plane, the
// dilation chosen by the channel's group. Inner loops run over the output columns
// whose taps are in bounds (valid_output_span), so they are branch-free and vectorise.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../checks.h"
#include "../index_math.h"
#include "../ops.h"

namespace fastnas {
namespace {

struct PlaneGeometry {
  int64_t height, width, out_height, out_width, kernel_size, stride;
};

template <typename scalar_t>
void forward_plane(const scalar_t* in, const scalar_t* w, scalar_t bias, scalar_t* out,
                   const PlaneGeometry& g, int64_t dilation) {
  const int64_t pad = same_padding(dilation, g.kernel_size);
  for (int64_t oh = 0; oh < g.out_height; ++oh) {
    scalar_t* out_row = out + oh * g.out_width;
    for (int64_t ow = 0; ow < g.out_width; ++ow) out_row[ow] = bias;
    for (int64_t kh = 0; kh < g.kernel_size; ++kh) {
      const int64_t ih = input_coord(oh, kh, g.stride, dilation, pad);
      if (ih < 0 || ih >= g.height) continue;
      const scalar_t* in_row = in + ih * g.width;
      for (int64_t kw = 0; kw < g.kernel_size; ++kw) {
        const scalar_t wv = w[kh * g.kernel_size + kw];
        int64_t first, last;
        valid_output_span(kw, g.stride, dilation, pad, g.width, g.out_width, &first, &last);
        const int64_t offset = input_coord(0, kw, g.stride, dilation, pad);
        if (g.stride == 1) {
          const scalar_t* src = in_row + offset;
          for (int64_t ow = first; ow < last; ++ow) out_row[ow] += wv * src[ow];
        } else {
          for (int64_t ow = first; ow < last; ++ow) out_row[ow] += wv * in_row[ow * g.stride + offset];
        }
      }
    }
  }
}

// Scatter form of the input gradient: each output tap adds into the input it read.
template <typename scalar_t>
void grad_input_plane(const scalar_t* grad_out, const scalar_t* w, scalar_t* grad_in,
                      const PlaneGeometry& g, int64_t dilation) {
  const int64_t pad = same_padding(dilation, g.kernel_size);
  std::fill(grad_in, grad_in + g.height * g.width, scalar_t(0));
  for (int64_t oh = 0; oh < g.out_height; ++oh) {
    const scalar_t* grad_row = grad_out + oh * g.out_width;
    for (int64_t kh = 0; kh < g.kernel_size; ++kh) {
      const int64_t ih = input_coord(oh, kh, g.stride, dilation, pad);
      if (ih < 0 || ih >= g.height) continue;
      scalar_t* in_row = grad_in + ih * g.width;
      for (int64_t kw = 0; kw < g.kernel_size; ++kw) {
        const scalar_t wv = w[kh * g.kernel_size + kw];
        int64_t first, last;
        valid_output_span(kw, g.stride, dilation, pad, g.width, g.out_width, &first, &last);
        const int64_t offset = input_coord(0, kw, g.stride, dilation, pad);
        if (g.stride == 1) {
          scalar_t* dst = in_row + offset;
          for (int64_t ow = first; ow < last; ++ow) dst[ow] += wv * grad_row[ow];
        } else {
          for (int64_t ow = first; ow < last; ++ow) in_row[ow * g.stride + offset] += wv * grad_row[ow];
        }
      }
    }
  }
}

// Adds sum_{oh,ow} grad_out[oh,ow] * in[tap(oh,ow)] for every tap into acc[K*K].
template <typename scalar_t>
void grad_weight_plane(const scalar_t* grad_out, const scalar_t* in, double* acc,
                       const PlaneGeometry& g, int64_t dilation) {
  const int64_t pad = same_padding(dilation, g.kernel_size);
  for (int64_t oh = 0; oh < g.out_height; ++oh) {
    const scalar_t* grad_row = grad_out + oh * g.out_width;
    for (int64_t kh = 0; kh < g.kernel_size; ++kh) {
      const int64_t ih = input_coord(oh, kh, g.stride, dilation, pad);
      if (ih < 0 || ih >= g.height) continue;
      const scalar_t* in_row = in + ih * g.width;
      for (int64_t kw = 0; kw < g.kernel_size; ++kw) {
        int64_t first, last;
        valid_output_span(kw, g.stride, dilation, pad, g.width, g.out_width, &first, &last);
        const int64_t offset = input_coord(0, kw, g.stride, dilation, pad);
        scalar_t sum = 0;
        for (int64_t ow = first; ow < last; ++ow) sum += grad_row[ow] * in_row[ow * g.stride + offset];
        acc[kh * g.kernel_size + kw] += static_cast<double>(sum);
      }
    }
  }
}

at::Tensor forward_cpu(const at::Tensor& x_in, const at::Tensor& weight_in,
                       at::IntArrayRef dilations, const c10::optional<at::Tensor>& bias_in,
                       int64_t stride) {
  const auto out_size = check_multi_dilation_args(x_in, weight_in, dilations, stride);
  check_cpu_dtype(x_in, "x");
  const bool has_bias = bias_in.has_value() && bias_in->defined();
  if (has_bias) {
    check_same_device_dtype(x_in, "x", *bias_in, "bias");
    FASTNAS_CHECK(bias_in->dim() == 1 && bias_in->size(0) == x_in.size(1),
                  "bias must be shaped (C,) = (", x_in.size(1), ",), got ", bias_in->sizes());
  }
  const at::Tensor x = x_in.contiguous();
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor bias = has_bias ? bias_in->contiguous() : at::Tensor();
  const int64_t batch = x.size(0), channels = x.size(1);
  auto out = at::empty({batch, channels, out_size.first, out_size.second}, x.options());
  if (out.numel() == 0) return out;
  const PlaneGeometry geom{x.size(2), x.size(3), out_size.first, out_size.second,
                           weight.size(2), stride};
  const int64_t per_group = channels / static_cast<int64_t>(dilations.size());
  const std::vector<int64_t> dil(dilations.begin(), dilations.end());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "multi_dilation_dwconv2d_cpu", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* wp = weight.data_ptr<scalar_t>();
    const scalar_t* bp = has_bias ? bias.data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.data_ptr<scalar_t>();
    const int64_t kk = geom.kernel_size * geom.kernel_size;
    at::parallel_for(0, batch * channels, 1, [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        const int64_t c = plane % channels;
        forward_plane<scalar_t>(xp + plane * geom.height * geom.width, wp + c * kk,
                                bp ? bp[c] : scalar_t(0),
                                op + plane * geom.out_height * geom.out_width, geom,
                                dil[dilation_group_of(c, per_group)]);
      }
    });
  });
  return out;
}

at::Tensor grad_input_cpu(const at::Tensor& grad_out_in, const at::Tensor& weight_in,
                          at::IntArrayRef dilations, int64_t stride, at::IntArrayRef input_size) {
  FASTNAS_CHECK(input_size.size() == 4, "input_size must be (N, C, H, W), got ", input_size);
  const at::Tensor grad_out = grad_out_in.contiguous();
  const at::Tensor weight = weight_in.contiguous();
  auto grad_in = at::empty(input_size, grad_out.options());
  if (grad_in.numel() == 0) return grad_in;
  const int64_t channels = input_size[1];
  const PlaneGeometry geom{input_size[2], input_size[3], grad_out.size(2), grad_out.size(3),
                           weight.size(2), stride};
  const int64_t per_group = channels / static_cast<int64_t>(dilations.size());
  const std::vector<int64_t> dil(dilations.begin(), dilations.end());
  AT_DISPATCH_FLOATING_TYPES(grad_out.scalar_type(), "multi_dilation_dwconv2d_grad_input_cpu", [&] {
    const scalar_t* gp = grad_out.data_ptr<scalar_t>();
    const scalar_t* wp = weight.data_ptr<scalar_t>();
    scalar_t* ip = grad_in.data_ptr<scalar_t>();
    const int64_t kk = geom.kernel_size * geom.kernel_size;
    at::parallel_for(0, input_size[0] * channels, 1, [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        const int64_t c = plane % channels;
        grad_input_plane<scalar_t>(gp + plane * geom.out_height * geom.out_width, wp + c * kk,
                                   ip + plane * geom.height * geom.width, geom,
                                   dil[dilation_group_of(c, per_group)]);
      }
    });
  });
  return grad_in;
}

at::Tensor grad_weight_cpu(const at::Tensor& grad_out_in, const at::Tensor& x_in,
                           at::IntArrayRef dilations, int64_t stride, int64_t kernel_size) {
  const at::Tensor grad_out = grad_out_in.contiguous();
  const at::Tensor x = x_in.contiguous();
  const int64_t batch = x.size(0), channels = x.size(1);
  const int64_t kk = kernel_size * kernel_size;
  auto acc = at::zeros({channels, kk}, x.options().dtype(at::kDouble));
  const PlaneGeometry geom{x.size(2), x.size(3), grad_out.size(2), grad_out.size(3), kernel_size,
                           stride};
  const int64_t per_group = channels / static_cast<int64_t>(dilations.size());
  const std::vector<int64_t> dil(dilations.begin(), dilations.end());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "multi_dilation_dwconv2d_grad_weight_cpu", [&] {
    const scalar_t* gp = grad_out.data_ptr<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    double* ap = acc.data_ptr<double>();
    // Parallel over channels: each channel's K*K sums are owned by one thread.
    at::parallel_for(0, channels, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        for (int64_t n = 0; n < batch; ++n) {
          const int64_t plane = n * channels + c;
          grad_weight_plane<scalar_t>(gp + plane * geom.out_height * geom.out_width,
                                      xp + plane * geom.height * geom.width, ap + c * kk, geom,
                                      dil[dilation_group_of(c, per_group)]);
        }
      }
    });
  });
  return acc.to(x.scalar_type()).view({channels, 1, kernel_size, kernel_size});
}

}  // namespace

TORCH_LIBRARY_IMPL(fastnas, CPU, m) {
  m.impl("multi_dilation_dwconv2d", &forward_cpu);
  m.impl("multi_dilation_dwconv2d_grad_input", &grad_input_cpu);
  m.impl("multi_dilation_dwconv2d_grad_weight", &grad_weight_cpu);
}

}  // namespace fastnas
