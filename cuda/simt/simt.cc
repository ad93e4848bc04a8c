// The SIMT emulator's scheduler: blocks one at a time, a block's threads as fibers on one
// OS thread, switched by a small assembly routine on x86-64 (ucontext elsewhere, or with
// -DSIMT_USE_UCONTEXT). All state is thread_local, so separate OS threads may run separate
// launches at once.
#include "simt.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <exception>
#include <random>
#include <sstream>
#include <vector>

#if !defined(__x86_64__) && !defined(SIMT_USE_UCONTEXT)
#define SIMT_USE_UCONTEXT 1
#endif
#if defined(SIMT_USE_UCONTEXT)
#include <ucontext.h>
#endif

#if !defined(SIMT_USE_UCONTEXT)
// simt_switch(save, load): saves the callee-saved registers, MXCSR and the x87 control word
// on the current stack, stores its pointer in *save, and resumes the stack at `load`.
extern "C" void simt_switch(void** save, void* load);
asm(R"(
  .text
  .globl simt_switch
  .type simt_switch, @function
simt_switch:
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
  .size simt_switch, .-simt_switch
  .section .note.GNU-stack,"",@progbits
  .text
)");
#endif

namespace simt {
namespace {

using detail::WarpOp;

enum class State { Runnable, AtBarrier, AtWarp, Done };

struct Fiber {
#if defined(SIMT_USE_UCONTEXT)
  ucontext_t context;
#else
  void* sp = nullptr;
#endif
  unsigned linear = 0;
  dim3 tid;
  State state = State::Runnable;
  const char* site = nullptr;
  int predicate = 0;
  int barrierResult = 0;
  WarpOp op = WarpOp::Sync;
  unsigned mask = 0;
  uint64_t value = 0;
  int arg = 0;
  int width = 32;
  uint64_t result = 0;
};

struct StackPool {
  std::vector<char*> stacks;
  size_t size = 0;
  ~StackPool() { release(); }
  void release() {
    for (char* s : stacks) munmap(s, size);
    stacks.clear();
  }
  /** `count` stacks of `bytes` each, the lowest page of each a guard against overflow. */
  void reserve(size_t count, size_t bytes) {
    if (bytes != size) {
      release();
      size = bytes;
    }
    while (stacks.size() < count) {
      void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (p == MAP_FAILED) throw Error("simt: cannot map a fiber stack");
      mprotect(p, static_cast<size_t>(sysconf(_SC_PAGESIZE)), PROT_NONE);
      stacks.push_back(static_cast<char*>(p));
    }
  }
};

struct Launch {
  dim3 grid, block, blockIndex;
  unsigned threads = 0;
  std::vector<Fiber> fibers;
  std::vector<unsigned char> dynamicShared;
  detail::KernelThunk thunk = nullptr;
  void* closure = nullptr;
  Fiber* current = nullptr;
  std::exception_ptr error;
#if defined(SIMT_USE_UCONTEXT)
  ucontext_t scheduler;
#else
  void* schedulerSp = nullptr;
#endif
};

thread_local Launch* g_launch = nullptr;
thread_local Order g_order = Order::Forward;
thread_local uint64_t g_seed = 0;
thread_local size_t g_stackSize = 64 * 1024;
thread_local StackPool g_stacks;

Launch& active(const char* what) {
  if (g_launch == nullptr || g_launch->current == nullptr) {
    throw Error(std::string("simt: ") + what + " used outside a kernel");
  }
  return *g_launch;
}

void switchToScheduler(Launch& l, Fiber& f) {
#if defined(SIMT_USE_UCONTEXT)
  swapcontext(&f.context, &l.scheduler);
#else
  simt_switch(&f.sp, l.schedulerSp);
#endif
}

void resume(Launch& l, Fiber& f) {
  l.current = &f;
#if defined(SIMT_USE_UCONTEXT)
  swapcontext(&l.scheduler, &f.context);
#else
  simt_switch(&l.schedulerSp, f.sp);
#endif
  l.current = nullptr;
}

/** Every fiber starts here; it never returns (its stack has no caller). */
void fiberMain() {
  Launch& l = *g_launch;
  Fiber& f = *l.current;
  try {
    l.thunk(l.closure);
  } catch (...) {
    if (!l.error) l.error = std::current_exception();
  }
  f.state = State::Done;
  switchToScheduler(l, f);
  std::abort();  // a finished fiber is never resumed
}

void prepareFiber(Fiber& f, char* stack, size_t size) {
#if defined(SIMT_USE_UCONTEXT)
  getcontext(&f.context);
  f.context.uc_stack.ss_sp = stack;
  f.context.uc_stack.ss_size = size;
  f.context.uc_link = nullptr;
  makecontext(&f.context, fiberMain, 0);
#else
  // Frame that simt_switch pops: [mxcsr, fpucw][r15 r14 r13 r12 rbx rbp][return address].
  // After its `ret` the stack pointer is ≡ 8 (mod 16), as at any function entry.
  uintptr_t top = reinterpret_cast<uintptr_t>(stack + size) & ~static_cast<uintptr_t>(15);
  uintptr_t sp = top - 72;
  auto* words = reinterpret_cast<uint64_t*>(sp);
  uint32_t control[2];
  asm volatile("stmxcsr %0" : "=m"(control[0]));
  asm volatile("fnstcw %0" : "=m"(control[1]));
  std::memcpy(&words[0], control, 8);
  for (int i = 1; i < 7; ++i) words[i] = 0;
  words[7] = reinterpret_cast<uint64_t>(&fiberMain);
  f.sp = reinterpret_cast<void*>(sp);
#endif
}

std::string describeDim(dim3 d) {
  std::ostringstream s;
  s << "(" << d.x << "," << d.y << "," << d.z << ")";
  return s.str();
}

std::string where(const Launch& l, const Fiber& f) {
  return "block " + describeDim(l.blockIndex) + " thread " + describeDim(f.tid);
}

std::vector<unsigned> runOrder(unsigned n, std::mt19937_64& rng) {
  std::vector<unsigned> order(n);
  for (unsigned i = 0; i < n; ++i) order[i] = i;
  if (g_order == Order::Reverse) std::reverse(order.begin(), order.end());
  if (g_order == Order::Shuffled) std::shuffle(order.begin(), order.end(), rng);
  return order;
}

/** Lanes of warp w that exist (the last warp of a block may be partial). */
unsigned existingLanes(const Launch& l, unsigned warp) {
  const unsigned first = warp * 32;
  const unsigned count = std::min(32u, l.threads - first);
  return count == 32 ? 0xffffffffu : ((1u << count) - 1u);
}

uint64_t laneResult(const std::vector<Fiber>& fibers, unsigned first, unsigned lane) {
  const Fiber& f = fibers[first + lane];
  const int w = f.width;
  auto own = [&] { return f.value; };
  auto from = [&](int src) { return fibers[first + static_cast<unsigned>(src)].value; };
  const int l = static_cast<int>(lane);
  const int segment = (l / w) * w;
  switch (f.op) {
    case WarpOp::ShflIdx: return from(segment + ((f.arg % w) + w) % w);
    case WarpOp::ShflXor: {
      const int src = l ^ f.arg;
      return (src / w == l / w) ? from(src) : own();
    }
    case WarpOp::ShflDown: return (l % w) + f.arg < w ? from(l + f.arg) : own();
    case WarpOp::ShflUp: return (l % w) >= f.arg ? from(l - f.arg) : own();
    default: return 0;
  }
}

/** Completes warp collectives whose lanes have all arrived; true if any did. */
bool releaseWarps(Launch& l) {
  bool released = false;
  const unsigned warps = (l.threads + 31) / 32;
  for (unsigned w = 0; w < warps; ++w) {
    const unsigned first = w * 32;
    const unsigned lanes = existingLanes(l, w);
    const unsigned count = static_cast<unsigned>(__builtin_popcount(lanes));
    unsigned arrived = 0;
    for (unsigned i = 0; i < count; ++i) arrived += l.fibers[first + i].state == State::AtWarp ? 1 : 0;
    if (arrived == 0) continue;
    const Fiber* lead = nullptr;
    for (unsigned i = 0; i < count && lead == nullptr; ++i) {
      if (l.fibers[first + i].state == State::AtWarp) lead = &l.fibers[first + i];
    }
    for (unsigned i = 0; i < count; ++i) {
      const Fiber& f = l.fibers[first + i];
      if (f.state != State::AtWarp) {
        const std::string elsewhere = f.state == State::Done ? "has exited" : std::string("waits at ") + f.site;
        throw Error("simt: divergent warp collective at " + std::string(lead->site) + ": " + where(l, f) + " " +
                    elsewhere + " (every lane of the warp must take part)");
      }
      if (f.op != lead->op || std::strcmp(f.site, lead->site) != 0) {
        throw Error("simt: divergent warp collective: " + where(l, *lead) + " at " + lead->site + ", " +
                    where(l, f) + " at " + f.site);
      }
      if (f.mask != lanes) {
        std::ostringstream s;
        s << "simt: warp collective at " << f.site << " with mask 0x" << std::hex << f.mask
          << " but the warp's lanes are 0x" << lanes << " (only whole-warp collectives are supported)";
        throw Error(s.str());
      }
    }
    uint64_t ballot = 0;
    for (unsigned i = 0; i < count; ++i) ballot |= (l.fibers[first + i].value & 1u) << i;
    for (unsigned i = 0; i < count; ++i) {
      Fiber& f = l.fibers[first + i];
      switch (f.op) {
        case WarpOp::Ballot: f.result = ballot; break;
        case WarpOp::Any: f.result = ballot != 0; break;
        case WarpOp::All: f.result = ballot == lanes; break;
        case WarpOp::Sync: f.result = 0; break;
        default: f.result = laneResult(l.fibers, first, i);
      }
    }
    for (unsigned i = 0; i < count; ++i) l.fibers[first + i].state = State::Runnable;
    released = true;
  }
  return released;
}

/**
 * Releases a block-wide barrier when every thread waits at the same one, or reports why not.
 * Runs after releaseWarps, which has already reported any warp stuck in a collective.
 */
void releaseBarrier(Launch& l) {
  const Fiber* waiting = nullptr;
  const Fiber* exited = nullptr;
  for (const Fiber& f : l.fibers) {
    if (f.state == State::AtBarrier && waiting == nullptr) waiting = &f;
    if (f.state == State::Done && exited == nullptr) exited = &f;
  }
  if (waiting == nullptr) throw Error("simt: scheduler stalled with no thread waiting");  // unreachable
  for (const Fiber& f : l.fibers) {
    if (f.state == State::AtBarrier && std::strcmp(f.site, waiting->site) != 0) {
      throw Error("simt: divergent __syncthreads: " + where(l, *waiting) + " waits at " + waiting->site + ", " +
                  where(l, f) + " at " + f.site);
    }
  }
  if (exited != nullptr) {
    throw Error("simt: __syncthreads at " + std::string(waiting->site) + " can never complete: " + where(l, *exited) +
                " has exited (a barrier in divergent code)");
  }
  int count = 0;
  for (const Fiber& f : l.fibers) count += f.predicate != 0;
  for (Fiber& f : l.fibers) {
    f.barrierResult = count;
    f.state = State::Runnable;
  }
}

void runBlock(Launch& l, std::mt19937_64& rng) {
  for (unsigned i = 0; i < l.threads; ++i) {
    Fiber& f = l.fibers[i];
    f = Fiber{};
    f.linear = i;
    f.tid = dim3(i % l.block.x, (i / l.block.x) % l.block.y, i / (l.block.x * l.block.y));
    prepareFiber(f, g_stacks.stacks[i], g_stacks.size);
  }
  // Uninitialized dynamic shared memory reads as NaN, so kernels that rely on zeros fail.
  std::fill(l.dynamicShared.begin(), l.dynamicShared.end(), static_cast<unsigned char>(0xff));
  for (;;) {
    for (unsigned idx : runOrder(l.threads, rng)) {
      Fiber& f = l.fibers[idx];
      while (f.state == State::Runnable) {
        resume(l, f);
        if (l.error) std::rethrow_exception(l.error);
      }
    }
    bool allDone = true;
    for (const Fiber& f : l.fibers) allDone = allDone && f.state == State::Done;
    if (allDone) return;
    if (releaseWarps(l)) continue;
    releaseBarrier(l);
  }
}

/** Suspends the current fiber in state `s` at `site` and returns once the scheduler resumes it. */
Fiber& wait(State s, const char* site) {
  Launch& l = active(site);
  Fiber& f = *l.current;
  f.state = s;
  f.site = site;
  switchToScheduler(l, f);
  return f;
}

}  // namespace

void setOrder(Order order, uint64_t seed) {
  g_order = order;
  g_seed = seed;
}

Order order() { return g_order; }

void setStackSize(size_t bytes) { g_stackSize = std::max<size_t>(bytes, 16 * 1024); }

namespace detail {

void launch(dim3 grid, dim3 block, size_t dynamicSharedBytes, KernelThunk thunk, void* closure) {
  if (g_launch != nullptr) throw Error("simt: a kernel may not launch a kernel");
  const uint64_t threads = static_cast<uint64_t>(block.x) * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.z > 64) {
    throw Error("simt: invalid block " + describeDim(block) + " (1 to 1024 threads, z at most 64)");
  }
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535) {
    throw Error("simt: invalid grid " + describeDim(grid));
  }
  if (dynamicSharedBytes > 227 * 1024) throw Error("simt: more than 227 KiB of dynamic shared memory");
  Launch l;
  l.grid = grid;
  l.block = block;
  l.threads = static_cast<unsigned>(threads);
  l.fibers.resize(l.threads);
  l.dynamicShared.resize(dynamicSharedBytes);
  l.thunk = thunk;
  l.closure = closure;
  g_stacks.reserve(l.threads, g_stackSize);
  std::mt19937_64 rng(g_seed);
  g_launch = &l;
  try {
    for (unsigned z = 0; z < grid.z; ++z) {
      for (unsigned y = 0; y < grid.y; ++y) {
        for (unsigned x = 0; x < grid.x; ++x) {
          l.blockIndex = dim3(x, y, z);
          runBlock(l, rng);
        }
      }
    }
  } catch (...) {
    g_launch = nullptr;
    throw;
  }
  g_launch = nullptr;
}

dim3 currentThreadIdx() { return active("threadIdx").current->tid; }
dim3 currentBlockIdx() { return active("blockIdx").blockIndex; }
dim3 currentBlockDim() { return active("blockDim").block; }
dim3 currentGridDim() { return active("gridDim").grid; }
void* dynamicShared() {
  Launch& l = active("dynamic shared memory");
  return l.dynamicShared.empty() ? nullptr : l.dynamicShared.data();
}

void syncthreads(const char* site) {
  Fiber& f = *active(site).current;
  f.predicate = 0;
  wait(State::AtBarrier, site);
}

int syncthreadsCount(int predicate, const char* site) {
  active(site).current->predicate = predicate != 0;
  return wait(State::AtBarrier, site).barrierResult;
}

int syncthreadsOr(int predicate, const char* site) { return syncthreadsCount(predicate, site) > 0; }

int syncthreadsAnd(int predicate, const char* site) {
  Launch& l = active(site);
  return syncthreadsCount(predicate, site) == static_cast<int>(l.threads);
}

uint64_t warpCollective(WarpOp op, unsigned mask, uint64_t value, int arg, int width, const char* site) {
  Fiber& f = *active(site).current;
  if (width <= 0 || width > 32 || (width & (width - 1)) != 0) {
    throw Error("simt: shuffle width must be a power of two up to 32 at " + std::string(site));
  }
  f.op = op;
  f.mask = mask;
  f.value = value;
  f.arg = arg;
  f.width = width;
  return wait(State::AtWarp, site).result;
}

unsigned currentWarpMask() {
  Launch& l = active("a warp collective");
  return existingLanes(l, l.current->linear / 32);
}

}  // namespace detail
}  // namespace simt

namespace nvcuda::wmma::detail {
void warpConverge(const char* site) {
  simt::detail::warpCollective(simt::detail::WarpOp::Sync, simt::detail::currentWarpMask(), 0, 0, 32, site);
}
}  // namespace nvcuda::wmma::detail
