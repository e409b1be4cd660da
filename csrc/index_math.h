// Per-element index math shared by the CPU and CUDA kernels, so the CPU tests
// exercise exactly the arithmetic the GPU runs.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define FASTNAS_HD __host__ __device__ __forceinline__
#else
#define FASTNAS_HD inline
#endif

namespace fastnas {

// The later arguments take the first one's integer type (64-bit on the CPU; 32-bit in the
// CUDA kernels where the tensor fits), without deducing it from them.
template <typename T>
struct SameInteger {
  using type = T;
};

// ---- contiguous planes ------------------------------------------------------
// Element `index` of contiguous planes of height x width: its plane, row and column (the
// one division chain of the grid-stride kernels).
template <typename T>
struct PlanePosition {
  T plane, row, column;
};

template <typename T>
FASTNAS_HD PlanePosition<T> plane_position(T index, typename SameInteger<T>::type height,
                                           typename SameInteger<T>::type width) {
  const T rest = index / width;
  return {rest / height, rest % height, index - rest * width};
}

// ---- channel shuffle -------------------------------------------------------
// channel_shuffle(y, groups) views the C channels as (groups, C/groups), transposes
// to (C/groups, groups) and flattens: channel c = i * (C/groups) + j moves to
// j * groups + i.
FASTNAS_HD int64_t shuffled_channel(int64_t channel, int64_t groups, int64_t channels_per_group) {
  return (channel % channels_per_group) * groups + channel / channels_per_group;
}

// ---- multi-dilation depthwise conv ----------------------------------------
// Channel c belongs to dilation group c / channels_per_group.
template <typename T>
FASTNAS_HD T dilation_group_of(T channel, typename SameInteger<T>::type channels_per_group) {
  return channel / channels_per_group;
}

// "Same" padding of a KxK window with dilation d.
FASTNAS_HD int64_t same_padding(int64_t dilation, int64_t kernel_size) {
  return dilation * (kernel_size - 1) / 2;
}

// Input coordinate read by output coordinate `out` at kernel tap `tap`.
template <typename T>
FASTNAS_HD T input_coord(T out, typename SameInteger<T>::type tap, typename SameInteger<T>::type stride,
                         typename SameInteger<T>::type dilation, typename SameInteger<T>::type padding) {
  return out * stride - padding + tap * dilation;
}

// Inverse of input_coord: the output coordinate that reads input coordinate `in`
// through kernel tap `tap`, if there is one (returns false otherwise).
template <typename T>
FASTNAS_HD bool output_coord_for_input(T in, typename SameInteger<T>::type tap, typename SameInteger<T>::type stride,
                                       typename SameInteger<T>::type dilation,
                                       typename SameInteger<T>::type padding,
                                       typename SameInteger<T>::type out_size, T* out) {
  const T shifted = in + padding - tap * dilation;
  if (shifted < 0 || shifted % stride != 0) return false;
  const T o = shifted / stride;
  if (o >= out_size) return false;
  *out = o;
  return true;
}

// Half-open range [first, last) of output coordinates whose tap `tap` reads a
// valid input coordinate in [0, in_size). Lets the CPU kernels run branch-free,
// vectorisable inner loops.
FASTNAS_HD void valid_output_span(int64_t tap, int64_t stride, int64_t dilation, int64_t padding,
                                  int64_t in_size, int64_t out_size, int64_t* first,
                                  int64_t* last) {
  const int64_t offset = tap * dilation - padding;  // input = out * stride + offset
  // smallest out with out * stride + offset >= 0
  int64_t lo = offset >= 0 ? 0 : (-offset + stride - 1) / stride;
  // largest out with out * stride + offset <= in_size - 1
  const int64_t top = in_size - 1 - offset;
  int64_t hi = top < 0 ? 0 : top / stride + 1;
  if (hi > out_size) hi = out_size;
  if (lo > hi) lo = hi;
  *first = lo;
  *last = hi;
}

}  // namespace fastnas
