// The 3x3 max + average pooling pair on the CPU. The forward reads the input once for
// both pools, row by row; the backward gathers each input's gradient with the CUDA
// kernel's per-element function (pool_pair_input_grad).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <type_traits>
#include <vector>

#include "../library.h"
#include "../checks.h"
#include "../pool_math.h"
#include "../ops.h"

namespace fastnas {
namespace {

// One output row of both pools. A column pass (vectorisable across the row) takes each
// column's maximum over the window's rows, the top-most row holding it, and the column
// sum; each output then combines its (up to) 3 columns. Scanned as pool_pair_at scans
// (replaces_max), a window's maximum is, among its columns holding the window maximum, the
// one whose top-most maximum row is smallest, then the left-most; where the window holds a
// NaN, the column whose bottom-most NaN is lowest, then the right-most.
template <typename scalar_t>
void pool_pair_row(const scalar_t* plane, int64_t width, int64_t h0, int64_t h1, int64_t oh, int64_t out_w,
                   int64_t stride, scalar_t* column_max, int32_t* column_row, scalar_t* column_sum,
                   scalar_t* max_row, scalar_t* avg_row, uint8_t* position_row) {
  const scalar_t* top = plane + h0 * width;
  for (int64_t w = 0; w < width; ++w) {
    column_max[w] = top[w];
    column_sum[w] = top[w];
    column_row[w] = static_cast<int32_t>(h0);
  }
  // Branch-free selects: on random data a branch per comparison mispredicts half the time.
  for (int64_t h = h0 + 1; h < h1; ++h) {
    const scalar_t* row = plane + h * width;
    for (int64_t w = 0; w < width; ++w) {
      const scalar_t v = row[w], current = column_max[w];
      column_sum[w] += v;
      const bool take = replaces_max(v, current);
      column_max[w] = take ? v : current;
      column_row[w] = take ? static_cast<int32_t>(h) : column_row[w];
    }
  }
  for (int64_t ow = 0; ow < out_w; ++ow) {
    int64_t w0, w1;
    pool_window(ow, stride, width, &w0, &w1);
    scalar_t best_value = column_max[w0], sum = column_sum[w0];
    int32_t best_row = column_row[w0];
    int64_t best_column = w0;
    for (int64_t w = w0 + 1; w < w1; ++w) {
      const scalar_t v = column_max[w];
      const int32_t r = column_row[w];
      sum += column_sum[w];
      const bool v_nan = v != v, best_nan = best_value != best_value;
      const bool better = best_nan ? v_nan & (r >= best_row)
                                   : v_nan | (v > best_value) | ((v == best_value) & (r < best_row));
      best_value = better ? v : best_value;
      best_row = better ? r : best_row;
      best_column = better ? w : best_column;
    }
    max_row[ow] = best_value;
    avg_row[ow] = sum / static_cast<scalar_t>((h1 - h0) * (w1 - w0));
    position_row[ow] = static_cast<uint8_t>(pool_window_position(int64_t{best_row}, best_column, oh, ow, stride));
  }
}

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
      std::vector<scalar_t> column_max(width), column_sum(width);
      std::vector<int32_t> column_row(width);
      for (int64_t p = begin; p < end; ++p) {
        for (int64_t oh = 0; oh < out_h; ++oh) {
          int64_t h0, h1;
          pool_window(oh, stride, height, &h0, &h1);
          const int64_t o = (p * out_h + oh) * out_w;
          pool_pair_row(src + p * height * width, width, h0, h1, oh, out_w, stride, column_max.data(),
                        column_row.data(), column_sum.data(), max_data + o, avg_data + o, position_data + o);
        }
      }
    });
  });
  return {max_out, avg_out, positions};
}

at::Tensor pool3x3_pair_backward_cpu(const std::optional<at::Tensor>& grad_max_in,
                                     const std::optional<at::Tensor>& grad_avg_in, const at::Tensor& positions_in,
                                     at::IntArrayRef input_size, int64_t stride) {
  const PoolPairBackwardArgs args = check_pool_pair_backward_args(grad_max_in, grad_avg_in, positions_in, input_size, stride);
  const at::Tensor& reference = args.any_grad();
  check_cpu_dtype(reference, "grad");
  const at::Tensor& positions = args.positions;
  const int64_t planes = input_size[0] * input_size[1], height = input_size[2], width = input_size[3];
  const int64_t out_h = positions.size(2), out_w = positions.size(3);
  auto grad_x = at::empty(input_size, reference.options());
  AT_DISPATCH_FLOATING_TYPES(reference.scalar_type(), "pool3x3_pair_backward_cpu", [&] {
    const scalar_t* gmax = args.grad_max.defined() ? args.grad_max.data_ptr<scalar_t>() : nullptr;
    const scalar_t* gavg = args.grad_avg.defined() ? args.grad_avg.data_ptr<scalar_t>() : nullptr;
    const uint8_t* position_data = positions.data_ptr<uint8_t>();
    scalar_t* dst = grad_x.data_ptr<scalar_t>();
    // The stride as a constant for the usual 1 and 2, so the window math's divisions fold.
    const auto gather = [&](auto stride_constant) {
      const int64_t fixed_stride = stride_constant > 0 ? int64_t{stride_constant} : stride;
      at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
        for (int64_t p = begin; p < end; ++p) {
          scalar_t* plane = dst + p * height * width;
          for (int64_t h = 0; h < height; ++h) {
            for (int64_t w = 0; w < width; ++w) {
              plane[h * width + w] = pool_pair_input_grad<scalar_t, scalar_t>(
                  gmax, gavg, position_data, p * out_h * out_w, h, w, height, width, out_h, out_w, fixed_stride);
            }
          }
        }
      });
    };
    if (stride == 1) {
      gather(std::integral_constant<int64_t, 1>{});
    } else if (stride == 2) {
      gather(std::integral_constant<int64_t, 2>{});
    } else {
      gather(std::integral_constant<int64_t, 0>{});
    }
  });
  return grad_x;
}

}  // namespace

FASTNAS_TORCH_LIBRARY_IMPL(CPU, m) {
  m.impl("pool3x3_pair", &pool3x3_pair_cpu);
  m.impl("pool3x3_pair_backward", &pool3x3_pair_backward_cpu);
}

}  // namespace fastnas
