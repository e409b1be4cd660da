// The memory layout an element-wise op (the mixed op) runs in. Where every tensor has the same
// sizes and strides and covers its storage densely (contiguous, channels_last or any other
// order of dimensions), the kernels walk the storage in memory order: no copies, and the
// results take that layout. Otherwise the tensors are made contiguous. The fake kernels
// (fastnas/ops/_registration.py) apply the same rule.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <utility>
#include <vector>

namespace fastnas {

// True where t's elements fill its storage span exactly once (dimensions of size 1 aside).
inline bool covers_storage_densely(const at::Tensor& t) {
  if (t.numel() == 0) return false;
  std::vector<std::pair<int64_t, int64_t>> stride_size;
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (t.size(d) != 1) stride_size.emplace_back(t.stride(d), t.size(d));
  }
  std::sort(stride_size.begin(), stride_size.end());
  int64_t expected = 1;
  for (const auto& [stride, size] : stride_size) {
    if (stride != expected) return false;
    expected *= size;
  }
  return true;
}

class ElementwiseLayout {
 public:
  // The layout of `tensors` (same sizes) and, if given, `also`.
  explicit ElementwiseLayout(at::TensorList tensors, const at::Tensor& also = at::Tensor()) {
    shared_dense_ = !tensors.empty() && covers_storage_densely(tensors.front());
    for (const at::Tensor& t : tensors) shared_dense_ = shared_dense_ && t.strides() == tensors.front().strides();
    if (also.defined()) shared_dense_ = shared_dense_ && also.strides() == tensors.front().strides();
  }

  // For ops that are not element-wise: always contiguous.
  static ElementwiseLayout contiguous() { return ElementwiseLayout(at::TensorList()); }

  // t ready for a walk in memory order alongside the others
  at::Tensor prepare(const at::Tensor& t) const { return shared_dense_ ? t : t.contiguous(); }

  std::vector<at::Tensor> prepare(at::TensorList tensors) const {
    std::vector<at::Tensor> result;
    result.reserve(tensors.size());
    for (const at::Tensor& t : tensors) result.push_back(prepare(t));
    return result;
  }

  // `count` new tensors shaped like `like`, in the layout the op runs in, stacked along a new
  // first dimension in one allocation (each starting 16-byte aligned, for the CUDA kernels'
  // vector stores)
  at::Tensor empty_stacked(int64_t count, const at::Tensor& like) const {
    std::vector<int64_t> sizes{count}, strides(like.dim() + 1);
    sizes.insert(sizes.end(), like.sizes().begin(), like.sizes().end());
    int64_t span = 1;
    for (int64_t d = like.dim() - 1; d >= 0; --d) {
      strides[d + 1] = shared_dense_ ? like.stride(d) : span;
      span *= like.size(d);
    }
    const int64_t per_16_bytes = std::max<int64_t>(1, 16 / static_cast<int64_t>(like.element_size()));
    strides[0] = (span + per_16_bytes - 1) / per_16_bytes * per_16_bytes;
    return at::empty_strided(sizes, strides, like.options());
  }

  // One new tensor shaped like `like`, in the layout the op runs in
  at::Tensor empty_like(const at::Tensor& like) const {
    return at::empty_like(like, shared_dense_ ? at::MemoryFormat::Preserve : at::MemoryFormat::Contiguous);
  }

 private:
  bool shared_dense_ = false;
};

}  // namespace fastnas
