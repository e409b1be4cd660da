// A host emulation of the CUDA execution model, for testing only: the CUDA kernel files
// (csrc/cuda/*.cu) compile as host C++ against this header (with FASTNAS_SIMT defined)
// and run on CPU tensors, so CI executes every __global__ kernel without a GPU.
//
// Threads of a block run as fibers on one OS thread, blocks one after another. A thread
// runs until it reaches a barrier (__syncthreads, a warp-synchronous intrinsic) or ends;
// the scheduler then resumes the next runnable thread, in forward or reverse order
// (simt::Device::reverse_order), so a missing barrier changes the result between the two
// orders. What real hardware rejects or leaves undefined fails loudly here: launch limits,
// threads of a block waiting at different barriers or exiting while others wait, warp
// masks naming exited or missing lanes, reads of lanes outside the mask (poisoned).
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// ---- CUDA keywords ----------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
// One copy per OS thread, shared by the fibers (threads) of the block it is running.
#define __shared__ static thread_local

struct uint3 {
  unsigned x, y, z;
};

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

constexpr int warpSize = 32;

namespace fastnas::simt {

// The built-in variables of the emulated thread now running.
struct ThreadBuiltins {
  uint3 thread_idx;
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
};

inline thread_local const ThreadBuiltins* current_thread = nullptr;

// The emulated device: what a test may change between launches.
struct Device {
  int multiprocessors = 2;  // few SMs: grids are small and grid-stride loops take several steps
  int blocks_per_multiprocessor = 4;  // what the occupancy query answers
  size_t shared_memory_per_block = 48 * 1024;  // what launchers may plan with (the tests lower it)
  bool reverse_order = false;  // run threads (and blocks) last to first
  int64_t int32_index_limit = std::numeric_limits<int32_t>::max();  // above: the int64 kernels
  bool check_thread_order = true;  // run every op twice, threads in opposite orders (simt_ops.h)
};
Device& device();

// ---- synchronisation (simt.cpp) --------------------------------------------------------
void syncthreads(const char* site);
// Every lane of `mask` publishes `value`; all 32 slots are returned (lanes outside the
// mask or the block hold nothing valid). Two warp barriers, like a hardware shuffle.
struct WarpValues {
  uint64_t slots[32];
  unsigned mask;
  int lane;
};
WarpValues warp_exchange(unsigned mask, uint64_t value, const char* site);
void syncwarp(unsigned mask, const char* site);
void* dynamic_shared_memory();
// Fails like the GPU's "misaligned address" unless `address` is a multiple of `alignment`.
void check_aligned(const void* address, size_t alignment);

// What a lane reads from a lane it may not read (outside the mask, a missing lane, or
// another width segment on hardware that returns undefined values): NaN, or an
// improbable integer, so a kernel that relies on it gives visibly wrong results.
template <typename T>
T poison() {
  if constexpr (std::is_floating_point_v<T> || std::is_same_v<T, c10::Half> || std::is_same_v<T, c10::BFloat16>) {
    return static_cast<T>(std::numeric_limits<float>::quiet_NaN());
  } else {
    T value;
    std::memset(&value, 0x5a, sizeof(T));
    return value;
  }
}

enum class ShuffleKind { index, up, down, bfly };

template <typename T>
T shuffle(unsigned mask, T value, ShuffleKind kind, int operand, int width, const char* site) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= sizeof(uint64_t),
                "the emulated shuffles move values of up to 8 bytes, like the hardware's 32/64-bit shuffles");
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  const WarpValues all = warp_exchange(mask, bits, site);
  const int lane = all.lane;
  const int segment = lane - lane % width;
  int source = lane;
  switch (kind) {
    case ShuffleKind::index: source = segment + ((operand % width) + width) % width; break;
    case ShuffleKind::up: source = lane % width >= operand ? lane - operand : lane; break;
    case ShuffleKind::down: source = lane % width + operand < width ? lane + operand : lane; break;
    case ShuffleKind::bfly: source = (lane ^ operand) < segment + width ? lane ^ operand : lane; break;
  }
  if (((all.mask >> source) & 1u) == 0) return poison<T>();
  T result;
  std::memcpy(&result, &all.slots[source], sizeof(T));
  return result;
}

// ---- launch -----------------------------------------------------------------------------
struct LaunchConfig {
  dim3 grid, block;
  size_t dynamic_shared_bytes;
};

// Runs thread_body(closure) for every thread of the grid; checks the launch limits first.
void run_kernel(int kernel_id, const LaunchConfig& config, void (*thread_body)(const void*), const void* closure);

// Registers a kernel instantiation (at library load) and returns its id.
int register_kernel(const char* signature);

// A dim3 from what a launch passes as grid or block: an integer is checked to fit instead of
// being truncated to 32 bits as <<<>>> would.
template <typename Count>
dim3 to_dim3(Count count, const char* what) {
  if constexpr (std::is_integral_v<Count>) {
    TORCH_CHECK(count >= 0 && static_cast<uint64_t>(count) <= std::numeric_limits<unsigned>::max(),
                "fastnas simt: ", what, " size ", count, " does not fit the 32-bit dim3 a CUDA launch takes");
    return dim3(static_cast<unsigned>(count));
  } else {
    return count;
  }
}

template <auto Kernel>
const char* kernel_signature() {
  return __PRETTY_FUNCTION__;  // names the instantiation: "... [with auto Kernel = ...]"
}

// Every kernel instantiation that a launcher can launch registers itself when the library
// loads, so the tests can report which compiled instantiations ran.
template <auto Kernel>
struct KernelId {
  static const int value;
};
template <auto Kernel>
const int KernelId<Kernel>::value = register_kernel(kernel_signature<Kernel>());

struct Stream {};

// FASTNAS_LAUNCH(grid, block, shared, stream, kernel)(args...): CUDA copies the arguments
// into the launch and converts them to the kernel's parameter types; so does this.
template <auto Kernel>
class Launch {
 public:
  template <typename Grid, typename Block>
  Launch(Grid grid, Block block, size_t dynamic_shared_bytes, Stream)
      : config_{to_dim3(grid, "grid"), to_dim3(block, "block"), dynamic_shared_bytes} {}

  template <typename... Args>
  void operator()(const Args&... args) const {
    const std::tuple<std::decay_t<Args>...> arguments(args...);
    run_kernel(KernelId<Kernel>::value, config_, &call<std::tuple<std::decay_t<Args>...>>, &arguments);
  }

 private:
  template <typename Arguments>
  static void call(const void* arguments) {
    std::apply([](const auto&... a) { Kernel(a...); }, *static_cast<const Arguments*>(arguments));
  }

  LaunchConfig config_;
};

// What the launchers take from the CUDA runtime (csrc/cuda/runtime.cuh).
struct DeviceGuard {
  explicit DeviceGuard(const c10::Device&) {}
};

}  // namespace fastnas::simt

// ---- CUDA built-in variables and intrinsics ---------------------------------------------
#define threadIdx (::fastnas::simt::current_thread->thread_idx)
#define blockIdx (::fastnas::simt::current_thread->block_idx)
#define blockDim (::fastnas::simt::current_thread->block_dim)
#define gridDim (::fastnas::simt::current_thread->grid_dim)

#define FASTNAS_SIMT_STRINGIFY_(x) #x
#define FASTNAS_SIMT_STRINGIFY(x) FASTNAS_SIMT_STRINGIFY_(x)
#define FASTNAS_SIMT_SITE __FILE__ ":" FASTNAS_SIMT_STRINGIFY(__LINE__)

#define __syncthreads() ::fastnas::simt::syncthreads(FASTNAS_SIMT_SITE)
#define __syncwarp(...) ::fastnas::simt::syncwarp(::fastnas::simt::mask_or_all(__VA_ARGS__), FASTNAS_SIMT_SITE)
#define __shfl_sync(mask, value, lane, ...) \
  ::fastnas::simt::shuffle(mask, value, ::fastnas::simt::ShuffleKind::index, lane, ::fastnas::simt::width_or_warp(__VA_ARGS__), FASTNAS_SIMT_SITE)
#define __shfl_up_sync(mask, value, delta, ...) \
  ::fastnas::simt::shuffle(mask, value, ::fastnas::simt::ShuffleKind::up, delta, ::fastnas::simt::width_or_warp(__VA_ARGS__), FASTNAS_SIMT_SITE)
#define __shfl_down_sync(mask, value, delta, ...) \
  ::fastnas::simt::shuffle(mask, value, ::fastnas::simt::ShuffleKind::down, delta, ::fastnas::simt::width_or_warp(__VA_ARGS__), FASTNAS_SIMT_SITE)
#define __shfl_xor_sync(mask, value, lane_mask, ...) \
  ::fastnas::simt::shuffle(mask, value, ::fastnas::simt::ShuffleKind::bfly, lane_mask, ::fastnas::simt::width_or_warp(__VA_ARGS__), FASTNAS_SIMT_SITE)
#define __ballot_sync(mask, predicate) ::fastnas::simt::ballot(mask, predicate, FASTNAS_SIMT_SITE)
#define __any_sync(mask, predicate) (::fastnas::simt::ballot(mask, predicate, FASTNAS_SIMT_SITE) != 0u)
#define __all_sync(mask, predicate) \
  (::fastnas::simt::ballot(mask, predicate, FASTNAS_SIMT_SITE) == ::fastnas::simt::ballot(mask, true, FASTNAS_SIMT_SITE))
// Dynamic shared memory: the launch's shared-bytes argument, filled with 0xff at the start
// of each block so that reading it before writing shows.
#define FASTNAS_DYNAMIC_SHARED(type, name) type* name = static_cast<type*>(::fastnas::simt::dynamic_shared_memory())

namespace fastnas::simt {
constexpr unsigned mask_or_all(unsigned mask = 0xffffffffu) { return mask; }
constexpr int width_or_warp(int width = warpSize) { return width; }
inline unsigned ballot(unsigned mask, bool predicate, const char* site) {
  const WarpValues all = warp_exchange(mask, predicate ? 1u : 0u, site);
  unsigned bits = 0;
  for (int lane = 0; lane < 32; ++lane) {
    if (((all.mask >> lane) & 1u) && all.slots[lane] != 0) bits |= 1u << lane;
  }
  return bits;
}
}  // namespace fastnas::simt

// Threads of one emulated grid never run at the same time, so atomics are plain updates
// and fences have nothing to order.
inline void __threadfence() {}
inline void __threadfence_block() {}
template <typename T>
T atomicAdd(T* address, T value) {
  const T old = *address;
  *address = static_cast<T>(old + value);
  return old;
}
template <typename T>
T atomicMax(T* address, T value) {
  const T old = *address;
  if (value > old) *address = value;
  return old;
}
template <typename T>
T atomicMin(T* address, T value) {
  const T old = *address;
  if (value < old) *address = value;
  return old;
}
template <typename T>
T atomicExch(T* address, T value) {
  const T old = *address;
  *address = value;
  return old;
}
template <typename T>
T atomicCAS(T* address, T compare, T value) {
  const T old = *address;
  if (old == compare) *address = value;
  return old;
}

// CUDA's device-side min and max, found unqualified in kernels.
template <typename T>
T min(T a, T b) {
  return b < a ? b : a;
}
template <typename T>
T max(T a, T b) {
  return a < b ? b : a;
}

template <typename T>
T __ldg(const T* address) {
  return *address;
}
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline double __drcp_rn(double x) { return 1.0 / x; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }

namespace fastnas::simt {
// JSON list of {"kernel": name, "launches": count} for every registered instantiation.
std::string kernel_report();
}  // namespace fastnas::simt
