// Multi-dilation depthwise conv on the CPU, one (n, c) plane at a time with the dilation of
// the channel's group. K = 3, 5, 7: each plane is zero-padded once and every kernel row is
// one long vectorised run (any stride through the stride-1 kernels, see below). Other K:
// a direct loop over the output columns whose taps are in bounds (valid_output_span).
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "../library.h"
#include "../checks.h"
#include "../index_math.h"
#include "../ops.h"
#include "cpu_clones.h"

namespace fastnas {
namespace {

struct PlaneGeometry {
  int64_t height, width, out_height, out_width, kernel_size, stride;
};

template <typename scalar_t>
FASTNAS_ALWAYS_INLINE void forward_plane(const scalar_t* in, const scalar_t* w, scalar_t bias, scalar_t* out,
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

// Gather form of the input gradient, the same per-element index math the CUDA kernel
// runs (output_coord_for_input): each input element sums the output taps that read it.
template <typename scalar_t>
FASTNAS_ALWAYS_INLINE void grad_input_plane(const scalar_t* grad_out, const scalar_t* w, scalar_t* grad_in,
                                            const PlaneGeometry& g, int64_t dilation) {
  const int64_t pad = same_padding(dilation, g.kernel_size);
  for (int64_t ih = 0; ih < g.height; ++ih) {
    for (int64_t iw = 0; iw < g.width; ++iw) {
      scalar_t acc = 0;
      for (int64_t kh = 0; kh < g.kernel_size; ++kh) {
        int64_t oh;
        if (!output_coord_for_input(ih, kh, g.stride, dilation, pad, g.out_height, &oh)) continue;
        for (int64_t kw = 0; kw < g.kernel_size; ++kw) {
          int64_t ow;
          if (!output_coord_for_input(iw, kw, g.stride, dilation, pad, g.out_width, &ow)) continue;
          acc += w[kh * g.kernel_size + kw] * grad_out[oh * g.out_width + ow];
        }
      }
      grad_in[ih * g.width + iw] = acc;
    }
  }
}

// Adds sum_{oh,ow} grad_out[oh,ow] * in[tap(oh,ow)] for every tap into acc[K*K].
template <typename scalar_t>
FASTNAS_ALWAYS_INLINE void grad_weight_plane(const scalar_t* grad_out, const scalar_t* in, double* acc,
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

// ---- stride 1: each tap is one shifted run over a zero-padded plane ------------------------
// The padded plane has row pitch W + 2*pad. Output (oh, ow) is placed at oh*pitch + ow in
// the same pitch, so tap (kh, kw) reads at the constant offset kh*d*pitch + kw*d and a
// whole plane is one long vectorisable loop; the few columns past W are computed and
// dropped. The kernel size is a template parameter so the taps unroll.
struct PaddedGeometry {
  int64_t pad, pitch, padded_size, span;  // span = (H - 1) * pitch + W outputs
};

PaddedGeometry padded_geometry(const PlaneGeometry& g, int64_t dilation) {
  const int64_t pad = same_padding(dilation, g.kernel_size);
  const int64_t pitch = g.width + 2 * pad;
  return {pad, pitch, (g.height + 2 * pad) * pitch, (g.height - 1) * pitch + g.width};
}

template <typename scalar_t>
FASTNAS_ALWAYS_INLINE void pad_plane(const scalar_t* src, const PlaneGeometry& g,
                                     const PaddedGeometry& p, scalar_t* dst) {
  std::fill(dst, dst + p.padded_size, scalar_t(0));
  for (int64_t r = 0; r < g.height; ++r) {
    std::copy(src + r * g.width, src + (r + 1) * g.width, dst + (r + p.pad) * p.pitch + p.pad);
  }
}

// result[i] = bias + sum_t taps[t] * padded[i + offset(t)], i in [0, span). One pass per
// kernel row with the row's K taps unrolled: few enough live values for the compiler to
// vectorise over i (all K*K taps in one body defeats it from K = 5 on).
template <typename scalar_t, int K>
FASTNAS_ALWAYS_INLINE void correlate_padded(const scalar_t* __restrict__ padded, const scalar_t* taps,
                                            scalar_t bias, int64_t dilation,
                                            const PaddedGeometry& p, scalar_t* __restrict__ result) {
  std::fill(result, result + p.span, bias);
  for (int kh = 0; kh < K; ++kh) {
    const scalar_t* row = padded + kh * dilation * p.pitch;
    scalar_t w[K];
    const scalar_t* src[K];
    for (int kw = 0; kw < K; ++kw) {
      w[kw] = taps[kh * K + kw];
      src[kw] = row + kw * dilation;
    }
    for (int64_t i = 0; i < p.span; ++i) {
      scalar_t acc = result[i];
#pragma GCC unroll 8
      for (int kw = 0; kw < K; ++kw) acc += w[kw] * src[kw][i];
      result[i] = acc;
    }
  }
}

template <typename scalar_t>
FASTNAS_ALWAYS_INLINE void unpitch(const scalar_t* pitched, const PlaneGeometry& g,
                                   const PaddedGeometry& p, scalar_t* out) {
  for (int64_t r = 0; r < g.height; ++r) {
    std::copy(pitched + r * p.pitch, pitched + r * p.pitch + g.width, out + r * g.width);
  }
}

// Scratch of one plane: the padded input and the pitched result.
template <typename scalar_t>
struct PlaneScratch {
  std::vector<scalar_t> padded, pitched, full;
  void reserve(const PaddedGeometry& p) {
    if (static_cast<int64_t>(padded.size()) < p.padded_size) padded.resize(p.padded_size);
    if (static_cast<int64_t>(pitched.size()) < p.padded_size) pitched.resize(p.padded_size);
  }
};

template <typename scalar_t, int K>
FASTNAS_ALWAYS_INLINE void forward_plane_s1(const scalar_t* in, const scalar_t* w, scalar_t bias,
                                            scalar_t* out, const PlaneGeometry& g,
                                            int64_t dilation, PlaneScratch<scalar_t>& scratch) {
  const PaddedGeometry p = padded_geometry(g, dilation);
  scratch.reserve(p);
  pad_plane(in, g, p, scratch.padded.data());
  correlate_padded<scalar_t, K>(scratch.padded.data(), w, bias, dilation, p, scratch.pitched.data());
  unpitch(scratch.pitched.data(), g, p, out);
}

// With stride 1 and same padding the input gradient is the correlation of the padded
// output gradient with the flipped kernel.
template <typename scalar_t, int K>
FASTNAS_ALWAYS_INLINE void grad_input_plane_s1(const scalar_t* grad_out, const scalar_t* w,
                                               scalar_t* grad_in, const PlaneGeometry& g,
                                               int64_t dilation, PlaneScratch<scalar_t>& scratch) {
  scalar_t flipped[K * K];
  for (int t = 0; t < K * K; ++t) flipped[t] = w[K * K - 1 - t];
  forward_plane_s1<scalar_t, K>(grad_out, flipped, scalar_t(0), grad_in, g, dilation, scratch);
}

// acc[t] += sum_i grad[i] * padded_in[i + offset(t)], grad laid out in the row pitch with
// zeros in the dropped columns.

template <typename scalar_t, int K>
FASTNAS_ALWAYS_INLINE void grad_weight_plane_s1(const scalar_t* grad_out, const scalar_t* in,
                                                double* acc, const PlaneGeometry& g,
                                                int64_t dilation, PlaneScratch<scalar_t>& scratch) {
  const PaddedGeometry p = padded_geometry(g, dilation);
  scratch.reserve(p);
  pad_plane(in, g, p, scratch.padded.data());
  scalar_t* grad = scratch.pitched.data();
  std::fill(grad, grad + p.span, scalar_t(0));
  for (int64_t r = 0; r < g.height; ++r) {
    std::copy(grad_out + r * g.width, grad_out + (r + 1) * g.width, grad + r * p.pitch);
  }
  for (int kh = 0; kh < K; ++kh) {
    for (int kw = 0; kw < K; ++kw) {
      const scalar_t* src = scratch.padded.data() + kh * dilation * p.pitch + kw * dilation;
      const scalar_t total = dot_and_scale_vec<scalar_t>(grad, src, p.span, scalar_t(0), nullptr);
      acc[kh * K + kw] += static_cast<double>(total);
    }
  }
}

// ---- any stride through the stride-1 kernels ----------------------------------------------
// With same padding, output (oh, ow) at stride s equals the stride-1 output at (oh*s, ow*s):
// the forward subsamples a full-resolution correlation, and the backward passes spread the
// output gradient onto the full-resolution grid (zeros between). That does s*s times the
// arithmetic of a direct strided kernel, but in long vectorised runs, which is faster.
template <typename scalar_t>
FASTNAS_ALWAYS_INLINE PlaneGeometry full_resolution(const PlaneGeometry& g) {
  PlaneGeometry full = g;
  full.out_height = g.height;
  full.out_width = g.width;
  full.stride = 1;
  return full;
}

template <typename scalar_t>
FASTNAS_ALWAYS_INLINE const scalar_t* spread_gradient(const scalar_t* grad_out, const PlaneGeometry& g,
                                                      PlaneScratch<scalar_t>& scratch) {
  scratch.full.assign(g.height * g.width, scalar_t(0));
  for (int64_t oh = 0; oh < g.out_height; ++oh) {
    for (int64_t ow = 0; ow < g.out_width; ++ow) {
      scratch.full[oh * g.stride * g.width + ow * g.stride] = grad_out[oh * g.out_width + ow];
    }
  }
  return scratch.full.data();
}

template <typename scalar_t, int K>
FASTNAS_ALWAYS_INLINE void forward_plane_unrolled(std::integral_constant<int, K>, const scalar_t* in, const scalar_t* w, scalar_t bias,
                                                  scalar_t* out, const PlaneGeometry& g, int64_t dilation,
                                                  PlaneScratch<scalar_t>& scratch) {
  if (g.stride == 1) return forward_plane_s1<scalar_t, K>(in, w, bias, out, g, dilation, scratch);
  scratch.full.resize(g.height * g.width);
  forward_plane_s1<scalar_t, K>(in, w, bias, scratch.full.data(), full_resolution<scalar_t>(g), dilation, scratch);
  for (int64_t oh = 0; oh < g.out_height; ++oh) {
    for (int64_t ow = 0; ow < g.out_width; ++ow) {
      out[oh * g.out_width + ow] = scratch.full[oh * g.stride * g.width + ow * g.stride];
    }
  }
}

template <typename scalar_t, int K>
FASTNAS_ALWAYS_INLINE void grad_input_plane_unrolled(std::integral_constant<int, K>, const scalar_t* grad_out, const scalar_t* w,
                                                     scalar_t* grad_in, const PlaneGeometry& g,
                                                     int64_t dilation, PlaneScratch<scalar_t>& scratch) {
  if (g.stride == 1) return grad_input_plane_s1<scalar_t, K>(grad_out, w, grad_in, g, dilation, scratch);
  const scalar_t* spread = spread_gradient(grad_out, g, scratch);
  grad_input_plane_s1<scalar_t, K>(spread, w, grad_in, full_resolution<scalar_t>(g), dilation, scratch);
}

template <typename scalar_t, int K>
FASTNAS_ALWAYS_INLINE void grad_weight_plane_unrolled(std::integral_constant<int, K>, const scalar_t* grad_out, const scalar_t* in,
                                                      double* acc, const PlaneGeometry& g,
                                                      int64_t dilation, PlaneScratch<scalar_t>& scratch) {
  if (g.stride == 1) return grad_weight_plane_s1<scalar_t, K>(grad_out, in, acc, g, dilation, scratch);
  const scalar_t* spread = spread_gradient(grad_out, g, scratch);
  grad_weight_plane_s1<scalar_t, K>(spread, in, acc, full_resolution<scalar_t>(g), dilation, scratch);
}

// Per-dtype entry points, each compiled for several ISAs (see cpu_clones.h).
#define FASTNAS_CLONED_PLANE_KERNELS(scalar_t)                                                        \
  FASTNAS_MULTIVERSIONED(void, forward_plane_cloned, forward_plane<scalar_t>,                         \
                         (const scalar_t* in, const scalar_t* w, scalar_t bias, scalar_t* out,        \
                          const PlaneGeometry& g, int64_t dilation),                                  \
                         (in, w, bias, out, g, dilation))                                             \
  FASTNAS_MULTIVERSIONED(void, grad_input_plane_cloned, grad_input_plane<scalar_t>,                   \
                         (const scalar_t* grad_out, const scalar_t* w, scalar_t* grad_in,             \
                          const PlaneGeometry& g, int64_t dilation),                                  \
                         (grad_out, w, grad_in, g, dilation))                                         \
  FASTNAS_MULTIVERSIONED(void, grad_weight_plane_cloned, grad_weight_plane<scalar_t>,                 \
                         (const scalar_t* grad_out, const scalar_t* in, double* acc,                  \
                          const PlaneGeometry& g, int64_t dilation),                                  \
                         (grad_out, in, acc, g, dilation))
FASTNAS_CLONED_PLANE_KERNELS(float)
FASTNAS_CLONED_PLANE_KERNELS(double)
#undef FASTNAS_CLONED_PLANE_KERNELS

#define FASTNAS_CLONED_UNROLLED_KERNELS(scalar_t, K)                                                  \
  FASTNAS_MULTIVERSIONED(void, forward_plane_unrolled_cloned, (forward_plane_unrolled<scalar_t, K>),  \
                         (std::integral_constant<int, K> unroll, const scalar_t* in, const scalar_t* w,\
                          scalar_t bias, scalar_t* out, const PlaneGeometry& g, int64_t dilation,     \
                          PlaneScratch<scalar_t>& scratch),                                           \
                         (unroll, in, w, bias, out, g, dilation, scratch))                                    \
  FASTNAS_MULTIVERSIONED(void, grad_input_plane_unrolled_cloned,                                      \
                         (grad_input_plane_unrolled<scalar_t, K>),                                    \
                         (std::integral_constant<int, K> unroll, const scalar_t* grad_out,            \
                          const scalar_t* w, scalar_t* grad_in, const PlaneGeometry& g,               \
                          int64_t dilation, PlaneScratch<scalar_t>& scratch),                         \
                         (unroll, grad_out, w, grad_in, g, dilation, scratch))                                \
  FASTNAS_MULTIVERSIONED(void, grad_weight_plane_unrolled_cloned,                                     \
                         (grad_weight_plane_unrolled<scalar_t, K>),                                   \
                         (std::integral_constant<int, K> unroll, const scalar_t* grad_out,            \
                          const scalar_t* in, double* acc, const PlaneGeometry& g, int64_t dilation,  \
                          PlaneScratch<scalar_t>& scratch),                                           \
                         (unroll, grad_out, in, acc, g, dilation, scratch))
FASTNAS_CLONED_UNROLLED_KERNELS(float, 3)
FASTNAS_CLONED_UNROLLED_KERNELS(float, 5)
FASTNAS_CLONED_UNROLLED_KERNELS(float, 7)
FASTNAS_CLONED_UNROLLED_KERNELS(double, 3)
FASTNAS_CLONED_UNROLLED_KERNELS(double, 5)
FASTNAS_CLONED_UNROLLED_KERNELS(double, 7)
#undef FASTNAS_CLONED_UNROLLED_KERNELS

// Calls the unrolled kernel for K = 3, 5 or 7 and returns true, or returns false so the
// caller takes the general path (other kernel sizes).
#define FASTNAS_TRY_UNROLLED(name, kernel_size, ...)                                     \
  ((kernel_size) == 3   ? (name(std::integral_constant<int, 3>{}, __VA_ARGS__), true)    \
   : (kernel_size) == 5 ? (name(std::integral_constant<int, 5>{}, __VA_ARGS__), true)    \
   : (kernel_size) == 7 ? (name(std::integral_constant<int, 7>{}, __VA_ARGS__), true)    \
                        : false)

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
      PlaneScratch<scalar_t> scratch;
      for (int64_t plane = begin; plane < end; ++plane) {
        const int64_t c = plane % channels;
        const scalar_t* in = xp + plane * geom.height * geom.width;
        scalar_t* out = op + plane * geom.out_height * geom.out_width;
        const scalar_t bias = bp ? bp[c] : scalar_t(0);
        const int64_t d = dil[dilation_group_of(c, per_group)];
        if (!FASTNAS_TRY_UNROLLED(forward_plane_unrolled_cloned, geom.kernel_size, in, wp + c * kk,
                                 bias, out, geom, d, scratch)) {
          forward_plane_cloned(in, wp + c * kk, bias, out, geom, d);
        }
      }
    });
  });
  return out;
}

at::Tensor grad_input_cpu(const at::Tensor& grad_out_in, const at::Tensor& weight_in,
                          at::IntArrayRef dilations, int64_t stride, at::IntArrayRef input_size) {
  check_multi_dilation_grad_input_args(grad_out_in, weight_in, dilations, stride, input_size);
  check_cpu_dtype(grad_out_in, "grad_out");
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
      PlaneScratch<scalar_t> scratch;
      for (int64_t plane = begin; plane < end; ++plane) {
        const int64_t c = plane % channels;
        const scalar_t* grad = gp + plane * geom.out_height * geom.out_width;
        scalar_t* grad_in = ip + plane * geom.height * geom.width;
        const int64_t d = dil[dilation_group_of(c, per_group)];
        if (!FASTNAS_TRY_UNROLLED(grad_input_plane_unrolled_cloned, geom.kernel_size, grad,
                                 wp + c * kk, grad_in, geom, d, scratch)) {
          grad_input_plane_cloned(grad, wp + c * kk, grad_in, geom, d);
        }
      }
    });
  });
  return grad_in;
}

at::Tensor grad_weight_cpu(const at::Tensor& grad_out_in, const at::Tensor& x_in,
                           at::IntArrayRef dilations, int64_t stride, int64_t kernel_size) {
  check_multi_dilation_grad_weight_args(grad_out_in, x_in, dilations, stride, kernel_size);
  check_cpu_dtype(x_in, "x");
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
      PlaneScratch<scalar_t> scratch;
      for (int64_t c = begin; c < end; ++c) {
        const int64_t d = dil[dilation_group_of(c, per_group)];
        for (int64_t n = 0; n < batch; ++n) {
          const int64_t plane = n * channels + c;
          const scalar_t* grad = gp + plane * geom.out_height * geom.out_width;
          const scalar_t* in = xp + plane * geom.height * geom.width;
          if (!FASTNAS_TRY_UNROLLED(grad_weight_plane_unrolled_cloned, kernel_size, grad, in,
                                   ap + c * kk, geom, d, scratch)) {
            grad_weight_plane_cloned(grad, in, ap + c * kk, geom, d);
          }
        }
      }
    });
  });
  return acc.to(x.scalar_type()).view({channels, 1, kernel_size, kernel_size});
}

}  // namespace

FASTNAS_TORCH_LIBRARY_IMPL(CPU, m) {
  m.impl("multi_dilation_dwconv2d", &forward_cpu);
  m.impl("multi_dilation_dwconv2d_grad_input", &grad_input_cpu);
  m.impl("multi_dilation_dwconv2d_grad_weight", &grad_weight_cpu);
}

}  // namespace fastnas
