// Input checks whose messages name the argument and say how to fix it.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#define FASTNAS_CHECK(cond, ...) TORCH_CHECK(cond, "fastnas: ", __VA_ARGS__)

#define FASTNAS_CHECK_DIM(t, n, shape_hint)                                                 \
  FASTNAS_CHECK((t).dim() == (n), #t " must be a ", n, "-D tensor shaped ", shape_hint, \
                ", got shape ", (t).sizes())

#define FASTNAS_CHECK_FLOATING(t)                                                   \
  FASTNAS_CHECK(at::isFloatingType((t).scalar_type()), #t " must be a floating-point " \
                "tensor, got ", (t).scalar_type(), "; convert it with .float()")

namespace fastnas {

inline void check_same_device_dtype(const at::Tensor& reference, const char* reference_name,
                                    const at::Tensor& other, const char* other_name) {
  FASTNAS_CHECK(other.device() == reference.device(), other_name, " is on ", other.device(),
                " but ", reference_name, " is on ", reference.device(),
                "; move both to the same device");
  FASTNAS_CHECK(other.scalar_type() == reference.scalar_type(), other_name, " has dtype ",
                other.scalar_type(), " but ", reference_name, " has dtype ",
                reference.scalar_type(), "; cast both to the same dtype");
}

inline void check_cpu_dtype(const at::Tensor& t, const char* name) {
  FASTNAS_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
                " has dtype ", t.scalar_type(),
                "; on the CPU fastnas supports float32 and float64 (half and bfloat16 run on "
                "CUDA), cast it with .float()");
}

}  // namespace fastnas
