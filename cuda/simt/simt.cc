// The SIMT emulator's scheduler: blocks one at a time, a block's threads as fibers on one
// OS thread, switched by a small assembly routine on x86-64 (ucontext elsewhere, or with
// -DSIMT_USE_UCONTEXT). Launches from different OS threads are serialized (static
// __shared__ arrays are plain statics); the scheduler's state is thread_local. Also here: the
// shared-memory race and bounds checker with its __tsan_* hooks, and the emulated warp
// operations of warp_ops.h.
#include "simt.h"

#include <link.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <new>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#if !defined(__x86_64__) && !defined(SIMT_USE_UCONTEXT)
#define SIMT_USE_UCONTEXT 1
#endif
#if defined(SIMT_USE_UCONTEXT)
#include <ucontext.h>
#endif
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
// AddressSanitizer must be told of every stack switch, or it takes a fiber's frames for the
// thread's and leaves poison (or unpoisons the wrong range) on the thread's own stack.
#define SIMT_ASAN_FIBERS 1
#else
#define SIMT_ASAN_FIBERS 0
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

/** A cp.async copy queued by a thread, landing at its wait_group. */
struct AsyncCopy {
  unsigned char* dst;
  const unsigned char* src;
  int bytes;
  int srcBytes;
};

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
#if SIMT_ASAN_FIBERS
  void* fakeStack = nullptr;  // ASan's fake stack of this fiber while it is switched out
#endif
  uint64_t result = 0;
  int line = 0;  // warp exchanges: the call site is (site, line)
  void* record = nullptr;
  detail::ExchangeFn combine = nullptr;
  uintptr_t stackLo = 0, stackHi = 0;
  std::vector<AsyncCopy> uncommitted;
  std::vector<std::vector<AsyncCopy>> groups;  // oldest first
};

/**
 * A fiber stack the system refused to map. A std::bad_alloc rather than a simt::Error: it is
 * memory running out, not a kernel's fault, and the addon reports bad_alloc as E_OOM; what()
 * names the bytes asked for.
 */
class StackOutOfMemory : public std::bad_alloc {
 public:
  explicit StackOutOfMemory(size_t bytes)
      : message_("cannot allocate " + std::to_string(bytes) + " bytes for a fiber stack of the emulator") {}
  const char* what() const noexcept override { return message_.c_str(); }

 private:
  std::string message_;
};

struct StackPool {
  std::vector<char*> stacks;
  size_t size = 0;
  ~StackPool() { release(); }
  void release() {
    for (char* s : stacks) {
#if SIMT_ASAN_FIBERS
      // fibers never return, so their frames' redzones outlive them: memory mapped here later
      // (a V8 heap page) must not inherit them
      ASAN_UNPOISON_MEMORY_REGION(s, size);
#endif
      munmap(s, size);
    }
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
      if (p == MAP_FAILED) throw StackOutOfMemory(size);
      mprotect(p, static_cast<size_t>(sysconf(_SC_PAGESIZE)), PROT_NONE);
      stacks.push_back(static_cast<char*>(p));
    }
  }
};

struct Launch {
  const char* name = "kernel";
  dim3 grid, block, blockIndex;
  unsigned threads = 0;
  std::vector<Fiber> fibers;
  std::vector<unsigned char> dynamicShared;  // guard bytes, the window, guard bytes
  size_t dynamicBytes = 0;
  detail::KernelThunk thunk = nullptr;
  void* closure = nullptr;
  Fiber* current = nullptr;
  std::exception_ptr error;
#if defined(SIMT_USE_UCONTEXT)
  ucontext_t scheduler;
#else
  void* schedulerSp = nullptr;
#endif
#if SIMT_ASAN_FIBERS
  const void* schedulerStack = nullptr;  // the scheduler's (OS thread's) stack, for ASan
  size_t schedulerStackSize = 0;
  void* schedulerFakeStack = nullptr;
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

std::string describeDim(dim3 d);

// ---------------------------------------------------------------- shared-memory checks
// Launches are serialized (g_launchMutex), so the checker's state is one global. The hooks
// below run for every instrumented load and store, from any OS thread: they act only on the
// running fiber's own stack frames and on addresses in shared memory.

constexpr size_t kSharedGuard = 256;  // bytes around the dynamic window that catch overruns

std::mutex g_launchMutex;
bool g_raceCheck = true;

// Shared memory is tracked in 2-byte granules: bf16 and half neighbours written by different
// threads are no race. (Single bytes share their granule.)
constexpr uintptr_t kGranule = 2;

struct ShadowWord {
  uintptr_t word = 0;  // address / kGranule; 0 = never used
  uint32_t epoch = 0;
  int32_t writer = -1;  // thread, or -1
  int32_t reader = -1;  // thread, -1 none, -2 several
  uint32_t writerSync = 0, readerSync = 0;  // the thread's warp-collective count at the access
  const char* writerWhat = nullptr;         // what wrote it, if not a plain store
};

struct RaceChecker {
  Launch* launch = nullptr;
  uintptr_t windowLo = 0, windowHi = 0;  // the dynamic window
  uintptr_t guardLo = 0, guardHi = 0;    // with its guards
  std::vector<std::pair<uintptr_t, uintptr_t>> statics;  // writable segments of the kernels' module
  std::vector<ShadowWord> table;
  size_t used = 0;
  uint32_t epoch = 1;
  std::vector<uint32_t> warpSync;  // warp collectives completed per warp in this block
  std::string report;              // the first problem, thrown at the next scheduling point

  void newInterval() {
    ++epoch;
    used = 0;
  }
};

RaceChecker* g_checker = nullptr;

/** Writable segments of the module that holds this code (static __shared__ arrays live there). */
std::vector<std::pair<uintptr_t, uintptr_t>> moduleWritableSegments() {
  struct Search {
    uintptr_t probe;
    std::vector<std::pair<uintptr_t, uintptr_t>> found;
  } search{reinterpret_cast<uintptr_t>(&moduleWritableSegments), {}};
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* data) -> int {
        auto* s = static_cast<Search*>(data);
        bool mine = false;
        for (int i = 0; i < info->dlpi_phnum; ++i) {
          const ElfW(Phdr)& ph = info->dlpi_phdr[i];
          const uintptr_t lo = info->dlpi_addr + ph.p_vaddr;
          if (ph.p_type == PT_LOAD && s->probe >= lo && s->probe < lo + ph.p_memsz) mine = true;
        }
        if (!mine) return 0;
        for (int i = 0; i < info->dlpi_phnum; ++i) {
          const ElfW(Phdr)& ph = info->dlpi_phdr[i];
          if (ph.p_type == PT_LOAD && (ph.p_flags & PF_W) != 0) {
            const uintptr_t lo = info->dlpi_addr + ph.p_vaddr;
            s->found.emplace_back(lo, lo + ph.p_memsz);
          }
        }
        return 1;
      },
      &search);
  return search.found;
}

std::string describeThread(const Launch& l, unsigned linear) {
  return describeDim(dim3(linear % l.block.x, (linear / l.block.x) % l.block.y, linear / (l.block.x * l.block.y)));
}

std::string describeAddress(const RaceChecker& c, uintptr_t a) {
  std::ostringstream s;
  if (a >= c.guardLo && a < c.guardHi) {
    s << "dynamic shared memory byte " << static_cast<long long>(a) - static_cast<long long>(c.windowLo);
  } else {
    s << "static __shared__ address 0x" << std::hex << a;
  }
  return s.str();
}

void reportOnce(RaceChecker& c, const std::string& what) {
  if (c.report.empty()) c.report = what;
}

ShadowWord& shadowOf(RaceChecker& c, uintptr_t word) {
  if (c.table.empty() || 2 * (c.used + 1) > c.table.size()) {
    std::vector<ShadowWord> old;
    old.swap(c.table);
    c.table.assign(old.empty() ? 4096 : old.size() * 2, ShadowWord{});
    c.used = 0;
    for (const ShadowWord& w : old) {
      if (w.word == 0 || w.epoch != c.epoch) continue;
      ShadowWord& slot = shadowOf(c, w.word);
      slot = w;
    }
  }
  const size_t mask = c.table.size() - 1;
  for (size_t i = ((word * 0x9e3779b97f4a7c15ull) >> 20) & mask;; i = (i + 1) & mask) {
    ShadowWord& w = c.table[i];
    if (w.word == word && w.epoch == c.epoch) return w;
    if (w.word == 0 || w.epoch != c.epoch) {  // free in this interval: no word of this interval lies past it
      w = ShadowWord{};
      w.word = word;
      w.epoch = c.epoch;
      ++c.used;
      return w;
    }
  }
}

/** `other`'s access is ordered before `thread`'s if both are in one warp and the warp has met in a collective since. */
bool orderedInWarp(const RaceChecker& c, int other, uint32_t otherSync, unsigned thread) {
  return static_cast<unsigned>(other) / 32 == thread / 32 && c.warpSync[thread / 32] != otherSync;
}

void checkWord(RaceChecker& c, uintptr_t word, bool write, unsigned thread, const char* what) {
  ShadowWord& w = shadowOf(c, word);
  const uint32_t sync = c.warpSync[thread / 32];
  const Launch& l = *c.launch;
  const auto race = [&](const std::string& other) {
    std::ostringstream s;
    s << "simt: shared-memory race in kernel " << l.name << ", block " << describeDim(l.blockIndex) << ": " << other
      << " and thread " << describeThread(l, thread) << " " << (write ? "wrote" : "read")
      << (what != nullptr ? std::string(" (") + what + ")" : std::string()) << " the word at "
      << describeAddress(c, word * kGranule) << " with no barrier in between";
    reportOnce(c, s.str());
  };
  const auto thr = [&](int t) { return "thread " + describeThread(l, static_cast<unsigned>(t)); };
  if (w.writer >= 0 && static_cast<unsigned>(w.writer) != thread && !orderedInWarp(c, w.writer, w.writerSync, thread)) {
    race(thr(w.writer) + " wrote" + (w.writerWhat != nullptr ? std::string(" (") + w.writerWhat + ")" : std::string()));
  }
  if (write) {
    if (w.reader >= 0 && static_cast<unsigned>(w.reader) != thread && !orderedInWarp(c, w.reader, w.readerSync, thread)) {
      race(thr(w.reader) + " read");
    }
    if (w.reader == -2) race("other threads read");
    w.writer = static_cast<int32_t>(thread);
    w.writerSync = sync;
    w.writerWhat = what;
  } else if (w.reader == -1 || static_cast<unsigned>(w.reader) == thread ||
             orderedInWarp(c, w.reader, w.readerSync, thread)) {
    w.reader = static_cast<int32_t>(thread);
    w.readerSync = sync;
  } else {
    w.reader = -2;
  }
}

/** Checks [a, a + bytes) for `thread`; false (after reporting, if it must be) when it is not shared memory. */
bool checkShared(RaceChecker& c, uintptr_t a, size_t bytes, bool write, unsigned thread, const char* what,
                 bool mustBeShared) {
  const uintptr_t end = a + bytes;
  bool tracked = false;
  if (a < c.guardHi && end > c.guardLo) {
    if (a < c.windowLo || end > c.windowHi) {
      const Launch& l = *c.launch;
      std::ostringstream s;
      s << "simt: shared-memory access out of bounds in kernel " << l.name << ", block " << describeDim(l.blockIndex)
        << ": thread " << describeThread(l, thread) << " " << (write ? "wrote" : "read") << " " << bytes
        << " bytes at " << describeAddress(c, a) << (what != nullptr ? std::string(" (") + what + ")" : std::string())
        << ", outside the " << (c.windowHi - c.windowLo) << " bytes of dynamic shared memory";
      reportOnce(c, s.str());
      return false;
    }
    tracked = true;
  } else {
    for (const auto& seg : c.statics) tracked = tracked || (a >= seg.first && end <= seg.second);
  }
  if (!tracked) {
    if (mustBeShared) {
      std::ostringstream s;
      s << "simt: " << (what != nullptr ? what : "a shared-memory operation") << " in kernel " << c.launch->name
        << " gave an address that is not shared memory (0x" << std::hex << a << ")";
      reportOnce(c, s.str());
    }
    return false;
  }
  if (g_raceCheck) {
    for (uintptr_t word = a / kGranule; word <= (end - 1) / kGranule; ++word) checkWord(c, word, write, thread, what);
  }
  return true;
}

/** An instrumented load or store of `bytes` at p by whichever code runs now. */
inline void instrumentedAccess(const void* p, size_t bytes, bool write) {
  RaceChecker* c = g_checker;
  if (c == nullptr) return;
  const Fiber* f = c->launch->current;
  if (f == nullptr) return;
  const auto frame = reinterpret_cast<uintptr_t>(__builtin_frame_address(0));
  if (frame < f->stackLo || frame >= f->stackHi) return;  // another OS thread, or the scheduler
  const auto a = reinterpret_cast<uintptr_t>(p);
  if (a >= f->stackLo && a < f->stackHi) return;  // the thread's own locals
  checkShared(*c, a, bytes, write, f->linear, nullptr, false);
}

void switchToScheduler(Launch& l, Fiber& f) {
#if SIMT_ASAN_FIBERS
  // a finished fiber's stack is dead: no fake stack to keep
  __sanitizer_start_switch_fiber(f.state == State::Done ? nullptr : &f.fakeStack, l.schedulerStack, l.schedulerStackSize);
#endif
#if defined(SIMT_USE_UCONTEXT)
  swapcontext(&f.context, &l.scheduler);
#else
  simt_switch(&f.sp, l.schedulerSp);
#endif
#if SIMT_ASAN_FIBERS
  __sanitizer_finish_switch_fiber(f.fakeStack, &l.schedulerStack, &l.schedulerStackSize);
#endif
}

void resume(Launch& l, Fiber& f) {
  l.current = &f;
#if SIMT_ASAN_FIBERS
  __sanitizer_start_switch_fiber(&l.schedulerFakeStack, reinterpret_cast<const void*>(f.stackLo), f.stackHi - f.stackLo);
#endif
#if defined(SIMT_USE_UCONTEXT)
  swapcontext(&l.scheduler, &f.context);
#else
  simt_switch(&l.schedulerSp, f.sp);
#endif
#if SIMT_ASAN_FIBERS
  __sanitizer_finish_switch_fiber(l.schedulerFakeStack, nullptr, nullptr);
#endif
  l.current = nullptr;
}

/** Every fiber starts here; it never returns (its stack has no caller). */
void fiberMain() {
  Launch& l = *g_launch;
  Fiber& f = *l.current;
#if SIMT_ASAN_FIBERS
  __sanitizer_finish_switch_fiber(nullptr, &l.schedulerStack, &l.schedulerStackSize);
#endif
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
#if defined(__SANITIZE_ADDRESS__)
  // The stack's previous fiber never returned: AddressSanitizer still has its frames' redzones.
  ASAN_UNPOISON_MEMORY_REGION(stack, size);
#endif
  f.stackLo = reinterpret_cast<uintptr_t>(stack);
  f.stackHi = f.stackLo + size;
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
      if (f.op != lead->op || std::strcmp(f.site, lead->site) != 0 || f.line != lead->line) {
        const auto at = [](const Fiber& x) {
          return std::string(x.site) + (x.op == WarpOp::Exchange ? ":" + std::to_string(x.line) : std::string());
        };
        throw Error("simt: divergent warp collective: " + where(l, *lead) + " at " + at(*lead) + ", " + where(l, f) +
                    " at " + at(f));
      }
      if (f.mask != lanes) {
        std::ostringstream s;
        s << "simt: warp collective at " << f.site << " with mask 0x" << std::hex << f.mask
          << " but the warp's lanes are 0x" << lanes << " (only whole-warp collectives are supported)";
        throw Error(s.str());
      }
    }
    if (lead->op == WarpOp::Exchange) {
      if (lanes != 0xffffffffu) {
        throw Error("simt: warp matrix operation at " + std::string(lead->site) + ":" + std::to_string(lead->line) +
                    " in a partial warp (" + where(l, *lead) + "): it needs all 32 lanes");
      }
      void* records[32];
      for (unsigned i = 0; i < 32; ++i) records[i] = l.fibers[first + i].record;
      lead->combine(records, 32);
      if (g_checker != nullptr && !g_checker->report.empty()) throw Error(g_checker->report);
    }
    if (g_checker != nullptr) ++g_checker->warpSync[w];
    uint64_t ballot = 0;
    for (unsigned i = 0; i < count; ++i) ballot |= (l.fibers[first + i].value & 1u) << i;
    for (unsigned i = 0; i < count; ++i) {
      Fiber& f = l.fibers[first + i];
      switch (f.op) {
        case WarpOp::Ballot: f.result = ballot; break;
        case WarpOp::Any: f.result = ballot != 0; break;
        case WarpOp::All: f.result = ballot == lanes; break;
        case WarpOp::Sync:
        case WarpOp::Exchange: f.result = 0; break;
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
  if (g_checker != nullptr) {
    g_checker->newInterval();
    // A copy still in flight may land at any moment of this interval too.
    for (const Fiber& f : l.fibers) {
      const auto mark = [&](const AsyncCopy& cp) {
        checkShared(*g_checker, reinterpret_cast<uintptr_t>(cp.dst), static_cast<size_t>(cp.bytes), true, f.linear,
                    "cp.async in flight", true);
      };
      for (const AsyncCopy& cp : f.uncommitted) mark(cp);
      for (const auto& g : f.groups)
        for (const AsyncCopy& cp : g) mark(cp);
    }
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
  if (g_checker != nullptr) {
    g_checker->newInterval();
    std::fill(g_checker->warpSync.begin(), g_checker->warpSync.end(), 0u);
  }
  for (;;) {
    for (unsigned idx : runOrder(l.threads, rng)) {
      Fiber& f = l.fibers[idx];
      while (f.state == State::Runnable) {
        resume(l, f);
        if (l.error) std::rethrow_exception(l.error);
        if (g_checker != nullptr && !g_checker->report.empty()) throw Error(g_checker->report);
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

void setRaceCheck(bool on) {
  std::lock_guard<std::mutex> lock(g_launchMutex);
  g_raceCheck = on;
}
bool raceCheck() {
  std::lock_guard<std::mutex> lock(g_launchMutex);
  return g_raceCheck;
}

namespace detail {

void launch(const char* name, dim3 grid, dim3 block, size_t dynamicSharedBytes, KernelThunk thunk, void* closure) {
  if (g_launch != nullptr) throw Error("simt: a kernel may not launch a kernel");
  std::lock_guard<std::mutex> serialized(g_launchMutex);
  const uint64_t threads = static_cast<uint64_t>(block.x) * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.z > 64) {
    throw Error("simt: invalid block " + describeDim(block) + " (1 to 1024 threads, z at most 64)");
  }
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535) {
    throw Error("simt: invalid grid " + describeDim(grid));
  }
  if (dynamicSharedBytes > 227 * 1024) throw Error("simt: more than 227 KiB of dynamic shared memory");
  Launch l;
  l.name = name;
  l.grid = grid;
  l.block = block;
  l.threads = static_cast<unsigned>(threads);
  l.fibers.resize(l.threads);
  l.dynamicShared.resize(dynamicSharedBytes + 2 * kSharedGuard);
  l.dynamicBytes = dynamicSharedBytes;
  l.thunk = thunk;
  l.closure = closure;
  g_stacks.reserve(l.threads, g_stackSize);
  std::mt19937_64 rng(g_seed);
  static const std::vector<std::pair<uintptr_t, uintptr_t>> statics = moduleWritableSegments();
  RaceChecker checker;
  checker.launch = &l;
  checker.guardLo = reinterpret_cast<uintptr_t>(l.dynamicShared.data());
  checker.guardHi = checker.guardLo + l.dynamicShared.size();
  checker.windowLo = checker.guardLo + kSharedGuard;
  checker.windowHi = checker.windowLo + dynamicSharedBytes;
  checker.statics = statics;
  checker.warpSync.assign((l.threads + 31) / 32, 0u);
  g_checker = &checker;
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
    g_checker = nullptr;
    throw;
  }
  g_launch = nullptr;
  g_checker = nullptr;
}

dim3 currentThreadIdx() { return active("threadIdx").current->tid; }
dim3 currentBlockIdx() { return active("blockIdx").blockIndex; }
dim3 currentBlockDim() { return active("blockDim").block; }
dim3 currentGridDim() { return active("gridDim").grid; }
void* dynamicShared() {
  Launch& l = active("dynamic shared memory");
  return l.dynamicBytes == 0 ? nullptr : l.dynamicShared.data() + kSharedGuard;
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

unsigned currentLinearThread() { return active("a thread index").current->linear; }

void warpExchange(void* lane, ExchangeFn combine, const char* file, int line) {
  Launch& l = active(file);
  Fiber& f = *l.current;
  f.op = WarpOp::Exchange;
  f.mask = existingLanes(l, f.linear / 32);
  f.record = lane;
  f.combine = combine;
  f.line = line;
  wait(State::AtWarp, file);
  f.line = 0;
}

void noteSharedAccess(const void* p, size_t bytes, bool write, unsigned thread, const char* what) {
  if (g_checker != nullptr) checkShared(*g_checker, reinterpret_cast<uintptr_t>(p), bytes, write, thread, what, true);
}

bool isShared(const void* p, size_t bytes) {
  if (g_checker == nullptr) return false;
  const auto a = reinterpret_cast<uintptr_t>(p);
  if (a >= g_checker->windowLo && a + bytes <= g_checker->windowHi) return true;
  for (const auto& seg : g_checker->statics)
    if (a >= seg.first && a + bytes <= seg.second) return true;
  return false;
}

}  // namespace detail
}  // namespace simt

namespace nvcuda::wmma::detail {
void warpConverge(const char* site) {
  simt::detail::warpCollective(simt::detail::WarpOp::Sync, simt::detail::currentWarpMask(), 0, 0, 32, site);
}
unsigned currentLane() { return simt::detail::currentLinearThread() % 32; }
}  // namespace nvcuda::wmma::detail

// ---------------------------------------------------------------- instrumentation hooks
// GCC's -fsanitize=thread instrumentation calls these for every load and store of the kernel
// sources compiled with it; with no sanitizer runtime linked, they are ours. Hidden: they serve
// the kernels linked into this library, and must not stand in for a real sanitizer's elsewhere.
// A build with a real sanitizer runtime (CMakeLists.txt CUTLOSS_SANITIZE) has none of them.
#if !defined(SIMT_SANITIZER_RUNTIME)
#pragma GCC visibility push(hidden)
extern "C" {
void __tsan_init() {}
void __tsan_func_entry(void*) {}
void __tsan_func_exit() {}
void __tsan_vptr_update(void**, void*) {}
void __tsan_vptr_read(void**) {}
#define SIMT_HOOKS(n)                                                                         \
  void __tsan_read##n(void* p) { simt::instrumentedAccess(p, n, false); }                   \
  void __tsan_write##n(void* p) { simt::instrumentedAccess(p, n, true); }                   \
  void __tsan_unaligned_read##n(void* p) { simt::instrumentedAccess(p, n, false); }         \
  void __tsan_unaligned_write##n(void* p) { simt::instrumentedAccess(p, n, true); }         \
  void __tsan_volatile_read##n(void* p) { simt::instrumentedAccess(p, n, false); }          \
  void __tsan_volatile_write##n(void* p) { simt::instrumentedAccess(p, n, true); }
SIMT_HOOKS(1)
SIMT_HOOKS(2)
SIMT_HOOKS(4)
SIMT_HOOKS(8)
SIMT_HOOKS(16)
#undef SIMT_HOOKS
void __tsan_read_range(void* p, unsigned long n) { simt::instrumentedAccess(p, n, false); }
void __tsan_write_range(void* p, unsigned long n) { simt::instrumentedAccess(p, n, true); }
}
#pragma GCC visibility pop
#endif

// ---------------------------------------------------------------- warp operations

namespace simt::warp {
namespace {

Fiber& currentFiber(const char* what) { return *active(what).current; }

std::string siteOf(const char* file, int line) { return std::string(file) + ":" + std::to_string(line); }

void land(const AsyncCopy& cp, unsigned thread) {
  detail::noteSharedAccess(cp.dst, static_cast<size_t>(cp.bytes), true, thread, "cp.async landing");
  if (cp.srcBytes > 0) std::memcpy(cp.dst, cp.src, static_cast<size_t>(cp.srcBytes));
  if (cp.srcBytes < cp.bytes) std::memset(cp.dst + cp.srcBytes, 0, static_cast<size_t>(cp.bytes - cp.srcBytes));
}

struct LdmatrixLane {
  const unsigned char* row;
  uint32_t* regs;
  int count;
  bool trans;
  unsigned thread;
};

void ldmatrixCombine(void* const* records, unsigned) {
  auto lane = [&](unsigned i) -> LdmatrixLane& { return *static_cast<LdmatrixLane*>(records[i]); };
  const int count = lane(0).count;
  const bool trans = lane(0).trans;
  for (unsigned i = 1; i < 32; ++i) {
    if (lane(i).count != count || lane(i).trans != trans) throw Error("simt: ldmatrix lanes disagree on .x or .trans");
  }
  uint16_t m[4][8][8];  // the matrices, as rows of b16
  for (int j = 0; j < count; ++j) {
    for (int r = 0; r < 8; ++r) {
      const LdmatrixLane& src = lane(static_cast<unsigned>(8 * j + r));
      if (reinterpret_cast<uintptr_t>(src.row) % 16 != 0) {
        std::ostringstream s;
        s << "simt: ldmatrix row address " << static_cast<const void*>(src.row) << " of lane " << 8 * j + r
          << " is not 16-byte aligned";
        throw Error(s.str());
      }
      detail::noteSharedAccess(src.row, 16, false, src.thread, "ldmatrix");
      if (!detail::isShared(src.row, 16)) {
        std::memset(m[j][r], 0, 16);  // reported already; do not read wild memory
        continue;
      }
      std::memcpy(m[j][r], src.row, 16);
    }
  }
  for (unsigned l = 0; l < 32; ++l) {
    const unsigned g = l / 4, t = l % 4;
    for (int j = 0; j < count; ++j) {
      const uint16_t lo = trans ? m[j][2 * t][g] : m[j][g][2 * t];
      const uint16_t hi = trans ? m[j][2 * t + 1][g] : m[j][g][2 * t + 1];
      lane(l).regs[j] = static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
    }
  }
}

struct MmaLane {
  MmaKind kind;
  float* d;
  const uint32_t* a;
  const uint32_t* b;
  const float* c;
};

double b16Value(uint16_t bits, MmaKind kind) {
  if (kind == MmaKind::Bf16M16N8K16) return static_cast<double>(bitCast<float>(static_cast<uint32_t>(bits) << 16));
  __half h;
  h.x = bits;
  return static_cast<double>(__half2float(h));
}

/** The PTX ISA's fragment layouts (groupID g = lane / 4, threadID_in_group t = lane % 4). */
void mmaCombine(void* const* records, unsigned) {
  auto lane = [&](unsigned i) -> MmaLane& { return *static_cast<MmaLane*>(records[i]); };
  const MmaKind kind = lane(0).kind;
  for (unsigned i = 1; i < 32; ++i) {
    if (lane(i).kind != kind) throw Error("simt: mma lanes disagree on the shape or type");
  }
  const int K = kind == MmaKind::Tf32M16N8K8 ? 8 : 16;
  double A[16][16], B[16][8];
  float C[16][8];
  for (unsigned l = 0; l < 32; ++l) {
    const int g = static_cast<int>(l / 4), t = static_cast<int>(l % 4);
    const MmaLane& x = lane(l);
    if (kind == MmaKind::Tf32M16N8K8) {
      // a0: (g, t) a1: (g + 8, t) a2: (g, t + 4) a3: (g + 8, t + 4); b0: (k t, n g) b1: (k t + 4, n g)
      for (int i = 0; i < 4; ++i) {
        A[g + 8 * (i % 2)][t + 4 * (i / 2)] = static_cast<double>(bitCast<float>(x.a[i] & 0xffffe000u));
      }
      for (int i = 0; i < 2; ++i) B[t + 4 * i][g] = static_cast<double>(bitCast<float>(x.b[i] & 0xffffe000u));
    } else {
      // register i of A holds (row g + 8·(i % 2), columns 2t, 2t + 1 (+ 8 for i >= 2)), low half first;
      // register i of B holds (k 2t, 2t + 1 (+ 8 for i = 1), column g)
      for (int i = 0; i < 4; ++i) {
        for (int h = 0; h < 2; ++h) {
          A[g + 8 * (i % 2)][2 * t + h + 8 * (i / 2)] = b16Value(static_cast<uint16_t>(x.a[i] >> (16 * h)), kind);
        }
      }
      for (int i = 0; i < 2; ++i) {
        for (int h = 0; h < 2; ++h) B[2 * t + h + 8 * i][g] = b16Value(static_cast<uint16_t>(x.b[i] >> (16 * h)), kind);
      }
    }
    // c0, c1: (g, 2t), (g, 2t + 1); c2, c3: (g + 8, 2t), (g + 8, 2t + 1)
    for (int i = 0; i < 4; ++i) C[g + 8 * (i / 2)][2 * t + i % 2] = x.c[i];
  }
  float D[16][8];
  for (int r = 0; r < 16; ++r) {
    for (int n = 0; n < 8; ++n) {
      double sum = 0.0;  // the products are exact in double; one rounding when added to C
      for (int k = 0; k < K; ++k) sum += A[r][k] * B[k][n];
      D[r][n] = static_cast<float>(static_cast<double>(C[r][n]) + sum);
    }
  }
  for (unsigned l = 0; l < 32; ++l) {
    const int g = static_cast<int>(l / 4), t = static_cast<int>(l % 4);
    for (int i = 0; i < 4; ++i) lane(l).d[i] = D[g + 8 * (i / 2)][2 * t + i % 2];
  }
}

}  // namespace

void cpAsync(void* dst, const void* src, int bytes, int srcBytes, const char* file, int line) {
  Fiber& f = currentFiber("cp.async");
  if (bytes != 4 && bytes != 8 && bytes != 16) throw Error("simt: cp.async of " + std::to_string(bytes) + " bytes at " + siteOf(file, line));
  if (srcBytes < 0 || srcBytes > bytes) throw Error("simt: cp.async src-size out of range at " + siteOf(file, line));
  const auto d = reinterpret_cast<uintptr_t>(dst), s = reinterpret_cast<uintptr_t>(src);
  if (d % static_cast<uintptr_t>(bytes) != 0 || (srcBytes > 0 && s % static_cast<uintptr_t>(bytes) != 0)) {
    std::ostringstream m;
    m << "simt: cp.async at " << siteOf(file, line) << ": addresses " << dst << " <- " << src << " are not "
      << bytes << "-byte aligned";
    throw Error(m.str());
  }
  detail::noteSharedAccess(dst, static_cast<size_t>(bytes), true, f.linear, "cp.async");
  if (!detail::isShared(dst, static_cast<size_t>(bytes))) return;  // reported; never write there
  f.uncommitted.push_back(AsyncCopy{static_cast<unsigned char*>(dst), static_cast<const unsigned char*>(src), bytes, srcBytes});
}

void cpAsyncCommit() {
  Fiber& f = currentFiber("cp.async.commit_group");
  f.groups.push_back(std::move(f.uncommitted));
  f.uncommitted.clear();
}

void cpAsyncWait(int pending) {
  Fiber& f = currentFiber("cp.async.wait_group");
  while (static_cast<int>(f.groups.size()) > pending) {
    for (const AsyncCopy& cp : f.groups.front()) land(cp, f.linear);
    f.groups.erase(f.groups.begin());
  }
}

void ldmatrix(uint32_t* regs, int count, bool trans, const void* row, const char* file, int line) {
  Fiber& f = currentFiber("ldmatrix");
  LdmatrixLane me{static_cast<const unsigned char*>(row), regs, count, trans, f.linear};
  detail::warpExchange(&me, ldmatrixCombine, file, line);
}

void mma(MmaKind kind, float* d, const uint32_t* a, const uint32_t* b, const float* c, const char* file, int line) {
  float out[4];
  MmaLane me{kind, out, a, b, c};
  detail::warpExchange(&me, mmaCombine, file, line);
  for (int i = 0; i < 4; ++i) d[i] = out[i];
}

}  // namespace simt::warp
