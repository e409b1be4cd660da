// Registration wrapper of the emulated CUDA ops: every call runs the op twice, threads and
// blocks in forward and then in reverse order, and requires bit-identical results. A
// kernel that misses a barrier, or lets threads race, reads what another thread has or has
// not yet written, which the two orders differ in.
#pragma once

#include <ATen/ATen.h>

#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "../elementwise_layout.h"
#include "simt.h"

namespace fastnas::simt {

inline bool same_bits(const at::Tensor& a, const at::Tensor& b) {
  if (a.defined() != b.defined()) return false;
  if (!a.defined()) return true;
  if (a.sizes() != b.sizes() || a.scalar_type() != b.scalar_type()) return false;
  // dense results in the same layout compare in place (no copy for the tests to see)
  const bool in_place = a.strides() == b.strides() && covers_storage_densely(a);
  const at::Tensor x = in_place ? a : a.contiguous(), y = in_place ? b : b.contiguous();
  return x.nbytes() == 0 || std::memcmp(x.const_data_ptr(), y.const_data_ptr(), x.nbytes()) == 0;
}

inline bool same_bits(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!same_bits(a[i], b[i])) return false;
  }
  return true;
}

template <typename... T>
bool same_bits(const std::tuple<T...>& a, const std::tuple<T...>& b) {
  return std::apply([&](const auto&... x) { return std::apply([&](const auto&... y) { return (same_bits(x, y) && ...); }, b); },
                    a);
}

template <auto Op>
const char* op_signature() {
  return __PRETTY_FUNCTION__;
}

template <auto Op>
struct OrderChecked;

template <typename Result, typename... Args, Result (*Op)(Args...)>
struct OrderChecked<Op> {
  static Result call(Args... args) {
    Device& emulated = device();
    if (!emulated.check_thread_order) return Op(args...);
    struct Restore {
      Device& device;
      bool reverse;
      ~Restore() { device.reverse_order = reverse; }
    } restore{emulated, emulated.reverse_order};
    emulated.reverse_order = false;
    Result forward = Op(args...);
    emulated.reverse_order = true;
    const Result reverse = Op(args...);
    TORCH_CHECK(same_bits(forward, reverse), "fastnas simt: ", op_signature<Op>(),
                " gave different results with the threads run in opposite orders: a kernel misses a "
                "__syncthreads()/__syncwarp() or lets threads race");
    return forward;
  }
};

}  // namespace fastnas::simt
