// The operator library's name: fastnas, or fastnas_simt in the test build that runs the CUDA
// kernels on the SIMT emulator (csrc/simt) beside the real library.
#pragma once

#include <torch/library.h>

#ifdef FASTNAS_SIMT
#define FASTNAS_LIBRARY_NAME fastnas_simt
#else
#define FASTNAS_LIBRARY_NAME fastnas
#endif

#define FASTNAS_STRINGIFY_(x) #x
#define FASTNAS_STRINGIFY(x) FASTNAS_STRINGIFY_(x)
// "fastnas::name", the qualified name the dispatcher knows the op by.
#define FASTNAS_OP(name) FASTNAS_STRINGIFY(FASTNAS_LIBRARY_NAME) "::" name

// TORCH_LIBRARY pastes its namespace argument; the extra level expands the name first.
#define FASTNAS_TORCH_LIBRARY_(ns, m) TORCH_LIBRARY(ns, m)
#define FASTNAS_TORCH_LIBRARY(m) FASTNAS_TORCH_LIBRARY_(FASTNAS_LIBRARY_NAME, m)
#define FASTNAS_TORCH_LIBRARY_IMPL_(ns, key, m) TORCH_LIBRARY_IMPL(ns, key, m)
#define FASTNAS_TORCH_LIBRARY_IMPL(key, m) FASTNAS_TORCH_LIBRARY_IMPL_(FASTNAS_LIBRARY_NAME, key, m)
