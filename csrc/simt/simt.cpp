// The SIMT emulator's scheduler: blocks one after another, the threads of a block as
// fibers with their own stacks, barriers and warp exchanges as scheduling points.
#include "simt.h"

#include <torch/library.h>

#include <sys/mman.h>
#include <unistd.h>

#include <exception>
#include <mutex>
#include <sstream>

namespace fastnas::simt {

Device& device() {
  static Device emulated;  // the one emulated GPU of the process, like the CUDA runtime's
  return emulated;
}

// ---- context switch -----------------------------------------------------------------------
// Saves the callee-saved registers on the current stack, stores the stack pointer in *from
// and continues on `to`. glibc's swapcontext also saves the signal mask with a system call,
// which made it 70 times slower; fibers here never touch signals.
extern "C" void fastnas_simt_switch(void** from, void* to);
extern "C" void fastnas_simt_trampoline();

#if defined(__x86_64__)
asm(R"(
  .text
  .p2align 4
  .globl fastnas_simt_switch
  .hidden fastnas_simt_switch
  .type fastnas_simt_switch, @function
fastnas_simt_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size fastnas_simt_switch, .-fastnas_simt_switch

  .p2align 4
  .globl fastnas_simt_trampoline
  .hidden fastnas_simt_trampoline
  .type fastnas_simt_trampoline, @function
fastnas_simt_trampoline:
  movq %r12, %rdi
  callq *%r13
  ud2
  .size fastnas_simt_trampoline, .-fastnas_simt_trampoline
)");

namespace {
// The frame fastnas_simt_switch pops when it first enters a fiber: control words, r15..rbp,
// then the trampoline as return address; it calls entry(argument) (r13, r12).
void* initial_stack(char* top, void (*entry)(void*), void* argument) {
  auto* sp = reinterpret_cast<uint64_t*>(reinterpret_cast<uintptr_t>(top) & ~uintptr_t{15}) - 2;
  *--sp = reinterpret_cast<uint64_t>(&fastnas_simt_trampoline);
  *--sp = 0;                                        // rbp
  *--sp = 0;                                        // rbx
  *--sp = reinterpret_cast<uint64_t>(argument);     // r12
  *--sp = reinterpret_cast<uint64_t>(entry);        // r13
  *--sp = 0;                                        // r14
  *--sp = 0;                                        // r15
  uint32_t mxcsr;
  uint16_t fpu_control;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpu_control));
  *--sp = static_cast<uint64_t>(mxcsr) | (static_cast<uint64_t>(fpu_control) << 32);
  return sp;
}
}  // namespace

#elif defined(__aarch64__)
asm(R"(
  .text
  .p2align 4
  .globl fastnas_simt_switch
  .hidden fastnas_simt_switch
  .type fastnas_simt_switch, %function
fastnas_simt_switch:
  sub sp, sp, #160
  stp x19, x20, [sp, #0]
  stp x21, x22, [sp, #16]
  stp x23, x24, [sp, #32]
  stp x25, x26, [sp, #48]
  stp x27, x28, [sp, #64]
  stp x29, x30, [sp, #80]
  stp d8, d9, [sp, #96]
  stp d10, d11, [sp, #112]
  stp d12, d13, [sp, #128]
  stp d14, d15, [sp, #144]
  mov x2, sp
  str x2, [x0]
  mov sp, x1
  ldp x19, x20, [sp, #0]
  ldp x21, x22, [sp, #16]
  ldp x23, x24, [sp, #32]
  ldp x25, x26, [sp, #48]
  ldp x27, x28, [sp, #64]
  ldp x29, x30, [sp, #80]
  ldp d8, d9, [sp, #96]
  ldp d10, d11, [sp, #112]
  ldp d12, d13, [sp, #128]
  ldp d14, d15, [sp, #144]
  add sp, sp, #160
  ret
  .size fastnas_simt_switch, .-fastnas_simt_switch

  .p2align 4
  .globl fastnas_simt_trampoline
  .hidden fastnas_simt_trampoline
  .type fastnas_simt_trampoline, %function
fastnas_simt_trampoline:
  mov x0, x19
  blr x20
  brk #0
  .size fastnas_simt_trampoline, .-fastnas_simt_trampoline
)");

namespace {
// x19 = argument, x20 = entry, x30 = trampoline, the rest zero.
void* initial_stack(char* top, void (*entry)(void*), void* argument) {
  auto* sp = reinterpret_cast<uint64_t*>(reinterpret_cast<uintptr_t>(top) & ~uintptr_t{15}) - 20;
  std::memset(sp, 0, 20 * sizeof(uint64_t));
  sp[0] = reinterpret_cast<uint64_t>(argument);
  sp[1] = reinterpret_cast<uint64_t>(entry);
  sp[11] = reinterpret_cast<uint64_t>(&fastnas_simt_trampoline);
  return sp;
}
}  // namespace
#else
#error "the SIMT emulator's context switch is written for x86-64 and AArch64"
#endif

namespace {

constexpr size_t kStackBytes = 64 * 1024;
constexpr int kMaxThreadsPerBlock = 1024;
constexpr size_t kMaxDynamicSharedBytes = 48 * 1024;
// About a minute of emulation: a larger launch is a test that forgot to stay small.
constexpr uint64_t kMaxEmulatedThreads = uint64_t{1} << 26;

enum class State { ready, running, at_block_barrier, at_warp_barrier, done };

struct Fiber {
  void* stack_pointer = nullptr;
  State state = State::ready;
  ThreadBuiltins builtins{};
  const char* site = nullptr;  // the barrier it waits at
};

struct WarpBarrier {
  unsigned arrived = 0, mask = 0;
  const char* site = nullptr;
  uint64_t slots[32] = {};
};

// A stack per thread of the largest block, mapped once per OS thread (untouched pages cost
// nothing), a guard page below each so an overflow faults instead of corrupting a neighbour.
class StackPool {
 public:
  StackPool() : page_(static_cast<size_t>(sysconf(_SC_PAGESIZE))) {
    void* memory = mmap(nullptr, bytes(), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    TORCH_CHECK(memory != MAP_FAILED, "fastnas simt: could not map ", kMaxThreadsPerBlock, " fiber stacks");
    base_ = static_cast<char*>(memory);
    for (int i = 0; i < kMaxThreadsPerBlock; ++i) mprotect(base_ + i * slot(), page_, PROT_NONE);
  }
  ~StackPool() { munmap(base_, bytes()); }
  StackPool(const StackPool&) = delete;
  StackPool& operator=(const StackPool&) = delete;

  char* top(int thread) const { return base_ + (thread + 1) * slot(); }

 private:
  size_t slot() const { return kStackBytes + page_; }
  size_t bytes() const { return kMaxThreadsPerBlock * slot(); }

  size_t page_;
  char* base_ = nullptr;
};

// One block in flight on this OS thread.
struct Block {
  const char* kernel = nullptr;
  void (*thread_body)(const void*) = nullptr;
  const void* closure = nullptr;
  std::vector<Fiber> fibers;
  std::vector<WarpBarrier> warps;
  std::vector<unsigned char> dynamic_shared;
  int running = -1;
  void* scheduler_stack_pointer = nullptr;
  int at_block_barrier = 0;
  const char* block_barrier_site = nullptr;
  std::exception_ptr error;

  Fiber& self() { return fibers[running]; }
  int threads() const { return static_cast<int>(fibers.size()); }

  std::string where(int thread) const {
    const ThreadBuiltins& b = fibers[thread].builtins;
    std::ostringstream text;
    text << kernel << ", block (" << b.block_idx.x << ", " << b.block_idx.y << ", " << b.block_idx.z
         << "), thread (" << b.thread_idx.x << ", " << b.thread_idx.y << ", " << b.thread_idx.z << ")";
    return text.str();
  }
};

thread_local Block* current_block = nullptr;

// The scheduler sets `running` and current_thread before it resumes a fiber.
void yield_to_scheduler(Block& block) {
  fastnas_simt_switch(&block.self().stack_pointer, block.scheduler_stack_pointer);
}

[[noreturn]] void fail(const std::string& message) { TORCH_CHECK(false, "fastnas simt: ", message); }

void thread_entry(void* argument) {
  Block& block = *static_cast<Block*>(argument);
  try {
    block.thread_body(block.closure);
  } catch (...) {
    block.error = std::current_exception();
  }
  block.self().state = State::done;
  const int lane = block.running % 32;
  const WarpBarrier& warp = block.warps[block.running / 32];
  try {
    if (!block.error && block.at_block_barrier > 0) {
      fail(block.where(block.running) + " ended while other threads of its block wait at __syncthreads() (" +
           block.block_barrier_site + "): every thread must reach every __syncthreads()");
    }
    if (!block.error && warp.arrived != 0 && ((warp.mask >> lane) & 1u)) {
      fail(block.where(block.running) + " ended while lanes of its warp wait for it at " + warp.site +
           ": every lane of a mask must reach the warp-synchronous call");
    }
  } catch (...) {
    block.error = std::current_exception();
  }
  fastnas_simt_switch(&block.self().stack_pointer, block.scheduler_stack_pointer);
  __builtin_unreachable();  // a finished fiber is never resumed
}

Block& active_block(const char* what) {
  if (current_block == nullptr || current_block->running < 0) {
    fail(std::string(what) + " called outside an emulated kernel");
  }
  return *current_block;
}

std::string describe_waiting(const Block& block) {
  std::ostringstream text;
  int listed = 0;
  for (int t = 0; t < block.threads() && listed < 4; ++t) {
    const Fiber& fiber = block.fibers[t];
    if (fiber.state == State::at_block_barrier || fiber.state == State::at_warp_barrier) {
      text << "\n  " << block.where(t) << " waits at " << fiber.site;
      ++listed;
    }
  }
  return text.str();
}

void run_block(Block& block) {
  const int threads = block.threads();
  const bool reverse = device().reverse_order;
  int remaining = threads;
  while (remaining > 0) {
    bool resumed = false;
    for (int k = 0; k < threads; ++k) {
      const int t = reverse ? threads - 1 - k : k;
      if (block.fibers[t].state != State::ready) continue;
      block.running = t;
      block.fibers[t].state = State::running;
      current_thread = &block.fibers[t].builtins;
      fastnas_simt_switch(&block.scheduler_stack_pointer, block.fibers[t].stack_pointer);
      if (block.error) std::rethrow_exception(block.error);
      resumed = true;
    }
    remaining = 0;
    for (const Fiber& fiber : block.fibers) remaining += fiber.state != State::done;
    if (remaining > 0 && !resumed) {
      fail("deadlock: no thread can go on; threads wait for threads that ended or wait elsewhere:" +
           describe_waiting(block));
    }
  }
}

void check_launch(const char* kernel, const LaunchConfig& config) {
  const dim3& g = config.grid;
  const dim3& b = config.block;
  const uint64_t threads = static_cast<uint64_t>(b.x) * b.y * b.z;
  auto text = [](const dim3& d) {
    std::ostringstream s;
    s << "(" << d.x << ", " << d.y << ", " << d.z << ")";
    return s.str();
  };
  if (g.x == 0 || g.y == 0 || g.z == 0) fail(std::string(kernel) + ": empty grid " + text(g) + " (CUDA: invalid configuration)");
  if (b.x == 0 || b.y == 0 || b.z == 0) fail(std::string(kernel) + ": empty block " + text(b) + " (CUDA: invalid configuration)");
  if (threads > kMaxThreadsPerBlock || b.x > 1024 || b.y > 1024 || b.z > 64) {
    fail(std::string(kernel) + ": block " + text(b) + " exceeds CUDA's limits (1024 threads; x, y <= 1024, z <= 64)");
  }
  if (g.x > static_cast<unsigned>(std::numeric_limits<int32_t>::max()) || g.y > 65535 || g.z > 65535) {
    fail(std::string(kernel) + ": grid " + text(g) + " exceeds CUDA's limits (x < 2^31, y and z <= 65535)");
  }
  const uint64_t grid_threads = static_cast<uint64_t>(g.x) * g.y * g.z * threads;
  if (grid_threads > kMaxEmulatedThreads) {
    fail(std::string(kernel) + ": grid " + text(g) + " x block " + text(b) + " = " + std::to_string(grid_threads) +
         " threads, more than the emulator runs (" + std::to_string(kMaxEmulatedThreads) +
         "); test with smaller sizes (the launch itself is valid CUDA)");
  }
  if (config.dynamic_shared_bytes > kMaxDynamicSharedBytes) {
    fail(std::string(kernel) + ": " + std::to_string(config.dynamic_shared_bytes) +
         " bytes of dynamic shared memory exceed the 48 KiB a launch gets without opting in");
  }
}

struct KernelRegistry {
  std::mutex mutex;
  std::vector<std::string> names;
  std::vector<uint64_t> launches;
};

KernelRegistry& registry() {
  static KernelRegistry kernels;
  return kernels;
}

// "const char* fastnas::simt::kernel_signature() [with auto Kernel = fastnas::{anonymous}::k<float, 3>]"
// -> "k<float, 3>"
std::string kernel_name(const char* signature) {
  std::string text(signature);
  const std::string marker = "Kernel = ";
  const size_t start = text.find(marker);
  if (start == std::string::npos) return text;
  std::string name = text.substr(start + marker.size());
  if (!name.empty() && name.back() == ']') name.pop_back();
  for (const std::string prefix : {"fastnas::{anonymous}::", "fastnas::(anonymous namespace)::", "fastnas::", "&"}) {
    for (size_t at = name.find(prefix); at != std::string::npos; at = name.find(prefix)) name.erase(at, prefix.size());
  }
  return name;
}

}  // namespace

int register_kernel(const char* signature) {
  KernelRegistry& kernels = registry();
  const std::lock_guard<std::mutex> lock(kernels.mutex);
  kernels.names.push_back(kernel_name(signature));
  kernels.launches.push_back(0);
  return static_cast<int>(kernels.names.size()) - 1;
}

void run_kernel(int kernel_id, const LaunchConfig& config, void (*thread_body)(const void*), const void* closure) {
  KernelRegistry& kernels = registry();
  std::string name;
  {
    const std::lock_guard<std::mutex> lock(kernels.mutex);
    name = kernels.names.at(kernel_id);
    ++kernels.launches[kernel_id];
  }
  check_launch(name.c_str(), config);
  TORCH_CHECK(current_block == nullptr, "fastnas simt: ", name, " launched from inside a kernel");
  thread_local StackPool stacks;
  const dim3 grid = config.grid, block_dim = config.block;
  const int threads = static_cast<int>(block_dim.x * block_dim.y * block_dim.z);
  Block block;
  block.kernel = name.c_str();
  block.thread_body = thread_body;
  block.closure = closure;
  block.fibers.resize(threads);
  block.warps.resize((threads + 31) / 32);
  block.dynamic_shared.resize(config.dynamic_shared_bytes);
  const uint64_t blocks = static_cast<uint64_t>(grid.x) * grid.y * grid.z;
  const bool reverse = device().reverse_order;
  struct Reset {
    ~Reset() {
      current_block = nullptr;
      current_thread = nullptr;
    }
  } reset;
  current_block = &block;
  for (uint64_t k = 0; k < blocks; ++k) {
    const uint64_t b = reverse ? blocks - 1 - k : k;
    const uint3 block_idx{static_cast<unsigned>(b % grid.x), static_cast<unsigned>(b / grid.x % grid.y),
                          static_cast<unsigned>(b / grid.x / grid.y)};
    for (int t = 0; t < threads; ++t) {
      Fiber& fiber = block.fibers[t];
      fiber.state = State::ready;
      fiber.site = nullptr;
      fiber.builtins = {{static_cast<unsigned>(t % block_dim.x), static_cast<unsigned>(t / block_dim.x % block_dim.y),
                         static_cast<unsigned>(t / block_dim.x / block_dim.y)},
                        block_idx, block_dim, grid};
      fiber.stack_pointer = initial_stack(stacks.top(t), &thread_entry, &block);
    }
    for (WarpBarrier& warp : block.warps) warp = WarpBarrier{};
    std::fill(block.dynamic_shared.begin(), block.dynamic_shared.end(), static_cast<unsigned char>(0xff));
    block.at_block_barrier = 0;
    block.block_barrier_site = nullptr;
    run_block(block);
  }
}

void syncthreads(const char* site) {
  Block& block = active_block("__syncthreads()");
  if (block.at_block_barrier > 0 && std::strcmp(block.block_barrier_site, site) != 0) {
    fail(block.where(block.running) + " reached __syncthreads() at " + site + " while others wait at the one at " +
         block.block_barrier_site + ": every thread must reach the same __syncthreads()");
  }
  block.block_barrier_site = site;
  if (++block.at_block_barrier == block.threads()) {
    block.at_block_barrier = 0;
    for (Fiber& fiber : block.fibers) {
      if (fiber.state == State::at_block_barrier) fiber.state = State::ready;
    }
    return;  // the last to arrive goes on
  }
  block.self().state = State::at_block_barrier;
  block.self().site = site;
  yield_to_scheduler(block);
}

namespace {

// Waits until every lane of `mask` has arrived at the warp barrier at `site`.
WarpBarrier& warp_barrier(Block& block, unsigned mask, const char* site, const char* what) {
  const int thread = block.running;
  const int lane = thread % 32, warp = thread / 32;
  const int lanes = std::min(32, block.threads() - warp * 32);
  const unsigned existing = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1u;
  if (((mask >> lane) & 1u) == 0) {
    fail(block.where(thread) + " called " + what + " at " + site + " with a mask that leaves out its own lane");
  }
  if ((mask & ~existing) != 0) {
    fail(block.where(thread) + ": " + what + " at " + site + " names lanes that do not exist (the block's last warp has " +
         std::to_string(lanes) + " threads)");
  }
  for (int other = 0; other < lanes; ++other) {
    if (((mask >> other) & 1u) && block.fibers[warp * 32 + other].state == State::done) {
      fail(block.where(thread) + ": " + what + " at " + site + " names lane " + std::to_string(other) +
           ", which has ended");
    }
  }
  WarpBarrier& barrier = block.warps[warp];
  if (barrier.arrived != 0 && (barrier.mask != mask || std::strcmp(barrier.site, site) != 0)) {
    fail(block.where(thread) + " reached " + what + " at " + site + " while lanes of its warp wait at " + barrier.site +
         " (mask or site differ): the lanes of a mask must meet at the same warp-synchronous call");
  }
  barrier.mask = mask;
  barrier.site = site;
  barrier.arrived |= 1u << lane;
  if (barrier.arrived == mask) {
    barrier.arrived = 0;
    for (int other = 0; other < lanes; ++other) {
      Fiber& fiber = block.fibers[warp * 32 + other];
      if (((mask >> other) & 1u) && fiber.state == State::at_warp_barrier) fiber.state = State::ready;
    }
    return barrier;
  }
  block.self().state = State::at_warp_barrier;
  block.self().site = site;
  yield_to_scheduler(block);
  return barrier;
}

}  // namespace

void syncwarp(unsigned mask, const char* site) {
  Block& block = active_block("__syncwarp()");
  warp_barrier(block, mask, site, "__syncwarp");
}

WarpValues warp_exchange(unsigned mask, uint64_t value, const char* site) {
  Block& block = active_block("a warp-synchronous intrinsic");
  const int lane = block.running % 32;
  WarpBarrier& barrier = block.warps[block.running / 32];
  // Publish, meet, read, meet again before anyone can overwrite a slot.
  if (barrier.arrived == 0) std::fill(std::begin(barrier.slots), std::end(barrier.slots), uint64_t{0});
  barrier.slots[lane] = value;
  warp_barrier(block, mask, site, "a warp shuffle/vote");
  WarpValues values;
  std::copy(std::begin(barrier.slots), std::end(barrier.slots), std::begin(values.slots));
  values.mask = mask;
  values.lane = lane;
  warp_barrier(block, mask, site, "a warp shuffle/vote");
  return values;
}

void* dynamic_shared_memory() {
  Block& block = active_block("dynamic shared memory");
  TORCH_CHECK(!block.dynamic_shared.empty(), "fastnas simt: ", block.kernel,
              " uses dynamic shared memory but was launched with 0 shared bytes");
  return block.dynamic_shared.data();
}

void check_aligned(const void* address, size_t alignment) {
  if (reinterpret_cast<uintptr_t>(address) % alignment == 0) return;
  Block& block = active_block("a vector access");
  std::ostringstream text;
  text << block.where(block.running) << ": " << alignment << "-byte vector access at " << address
       << ", which is not a multiple of " << alignment << " (CUDA: misaligned address)";
  fail(text.str());
}

std::string kernel_report() {
  KernelRegistry& kernels = registry();
  const std::lock_guard<std::mutex> lock(kernels.mutex);
  std::ostringstream json;
  json << "[";
  for (size_t i = 0; i < kernels.names.size(); ++i) {
    json << (i ? ", " : "") << "{\"kernel\": \"" << kernels.names[i] << "\", \"launches\": " << kernels.launches[i]
         << "}";
  }
  json << "]";
  return json.str();
}

}  // namespace fastnas::simt

// The emulated device's settings and what ran, for the tests (tests/simt.py).
TORCH_LIBRARY_FRAGMENT(fastnas_simt, m) {
  m.def("configure(int multiprocessors, int int32_index_limit, bool check_thread_order, int shared_memory_per_block)"
        " -> ()",
        [](int64_t multiprocessors, int64_t int32_index_limit, bool check_thread_order, int64_t shared_memory_per_block) {
          TORCH_CHECK(multiprocessors >= 1, "fastnas simt: multiprocessors must be >= 1, got ", multiprocessors);
          TORCH_CHECK(int32_index_limit >= 0 && int32_index_limit <= std::numeric_limits<int32_t>::max(),
                      "fastnas simt: int32_index_limit must be in [0, 2^31 - 1], got ", int32_index_limit);
          fastnas::simt::Device& device = fastnas::simt::device();
          device.multiprocessors = static_cast<int>(multiprocessors);
          device.int32_index_limit = int32_index_limit;
          device.check_thread_order = check_thread_order;
          TORCH_CHECK(shared_memory_per_block >= 0 && shared_memory_per_block <= 48 * 1024,
                      "fastnas simt: shared_memory_per_block must be in [0, 49152], got ", shared_memory_per_block);
          device.shared_memory_per_block = static_cast<size_t>(shared_memory_per_block);
        });
  // JSON: every compiled kernel instantiation and how often it was launched.
  m.def("kernel_report() -> str", &fastnas::simt::kernel_report);
}
