// The 3x3 max + average pooling pair on the CPU. The forward reads each window once for
// both pools; the backward scatters plane by plane (no races, parallel over planes).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../checks.h"
#include "../pool_math.h"
#include "../ops.h"

namespace fastnas {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> pool3x3_pair_cpu(const at::Tensor& x_in, int64_t stride) {
  const auto [out_h, out_w] = check_pool_pair_args(x_in, stride);
  check_cpu_dtype(x_in, "x");
  const at::Tensor x = x_in.contiguous();
  const int64_t planes = x.size(0) * x.size(1), height = x.size(2), width = x.size(3);
  auto max_out = at::empty({x.size(0), x.size(1), out_h, out_w}, x.options());
  auto avg_out = at::empty_like(max_out);
  auto positions = at::empty(max_out.sizes(), x.options().dtype(at::kByte));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "pool3x3_pair_cpu", [&] {
    const scalar_t* src = x.data_ptr<scalar_t>();
    scalar_t* max_data = max_out.data_ptr<scalar_t>();
    scalar_t* avg_data = avg_out.data_ptr<scalar_t>();
    uint8_t* position_data = positions.data_ptr<uint8_t>();
    at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const scalar_t* plane = src + p * height * width;
        for (int64_t oh = 0; oh < out_h; ++oh) {
          for (int64_t ow = 0; ow < out_w; ++ow) {
            const int64_t o = (p * out_h + oh) * out_w + ow;
            scalar_t mean;
            pool_pair_at<scalar_t, scalar_t>(plane, height, width, oh, ow, stride, &max_data[o], &mean,
                                             &position_data[o]);
            avg_data[o] = mean;
          }
        }
      }
    });
  });
  return {max_out, avg_out, positions};
}

at::Tensor pool3x3_pair_backward_cpu(const std::optional<at::Tensor>& grad_max_in,
                                     const std::optional<at::Tensor>& grad_avg_in, const at::Tensor& positions_in,
                                     at::IntArrayRef input_size, int64_t stride) {
  const bool has_max = grad_max_in.has_value() && grad_max_in->defined();
  const bool has_avg = grad_avg_in.has_value() && grad_avg_in->defined();
  FASTNAS_CHECK(has_max || has_avg, "pass grad_max, grad_avg or both");
  const at::Tensor& reference = has_max ? *grad_max_in : *grad_avg_in;
  check_cpu_dtype(reference, "grad");
  FASTNAS_CHECK(input_size.size() == 4, "input_size must be (N, C, H, W), got ", input_size);
  const at::Tensor positions = positions_in.contiguous();
  const at::Tensor grad_max = has_max ? grad_max_in->contiguous() : at::Tensor();
  const at::Tensor grad_avg = has_avg ? grad_avg_in->contiguous() : at::Tensor();
  const int64_t planes = input_size[0] * input_size[1], height = input_size[2], width = input_size[3];
  const int64_t out_h = positions.size(2), out_w = positions.size(3);
  auto grad_x = at::zeros(input_size, reference.options());
  AT_DISPATCH_FLOATING_TYPES(reference.scalar_type(), "pool3x3_pair_backward_cpu", [&] {
    const scalar_t* gmax = has_max ? grad_max.data_ptr<scalar_t>() : nullptr;
    const scalar_t* gavg = has_avg ? grad_avg.data_ptr<scalar_t>() : nullptr;
    const uint8_t* position_data = positions.data_ptr<uint8_t>();
    scalar_t* dst = grad_x.data_ptr<scalar_t>();
    at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        scalar_t* plane = dst + p * height * width;
        for (int64_t oh = 0; oh < out_h; ++oh) {
          int64_t h0, h1;
          pool_window(oh, stride, height, &h0, &h1);
          for (int64_t ow = 0; ow < out_w; ++ow) {
            const int64_t o = (p * out_h + oh) * out_w + ow;
            if (gmax != nullptr) {
              int64_t h, w;
              pool_window_input(position_data[o], oh, ow, stride, &h, &w);
              plane[h * width + w] += gmax[o];
            }
            if (gavg != nullptr) {
              int64_t w0, w1;
              pool_window(ow, stride, width, &w0, &w1);
              const scalar_t share = gavg[o] / static_cast<scalar_t>((h1 - h0) * (w1 - w0));
              for (int64_t h = h0; h < h1; ++h) {
                for (int64_t w = w0; w < w1; ++w) plane[h * width + w] += share;
              }
            }
          }
        }
      }
    });
  });
  return grad_x;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastnas, CPU, m) {
  m.impl("pool3x3_pair", &pool3x3_pair_cpu);
  m.impl("pool3x3_pair_backward", &pool3x3_pair_backward_cpu);
}

}  // namespace fastnas
