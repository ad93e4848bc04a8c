// SIMT emulation: compiles CUDA kernel sources with a host C++ compiler and runs them on
// the CPU, the way Triton's interpreter runs Triton kernels, so every kernel is executed
// and checked where no GPU exists.
//
// Model: a launch runs its blocks one at a time; the threads of a block are cooperative
// fibers on one OS thread that switch only at __syncthreads, warp collectives and exit.
// The order in which runnable fibers are resumed is forward, reverse or shuffled (seeded),
// so code that reads another thread's shared-memory writes without a barrier gets
// different answers in different orders. Barriers reached from different call sites, a
// barrier some threads skip (or exit past), and warp collectives not reached by the whole
// warp are reported as simt::Error, never a hang.
//
// Shared-memory checks. Kernel sources compiled with -fsanitize=thread (GCC's instrumentation
// only: no sanitizer runtime is linked; this emulator supplies the __tsan_* hooks) report every
// load and store. Within one barrier interval, a shared word written by one thread and read
// or written by another (not of the same warp with a warp collective in between) is a race,
// reported with kernel, block, threads and address; accesses outside the dynamic shared
// window are out of bounds. Without the instrumentation only the warp operations below check.
//
// Warp-level matrix and copy operations (cp.async, ldmatrix, mma.sync) are emulated lane by
// lane in warp_ops.h; kernels reach them through cuda/warp_ops.cuh.
//
// Kernel sources keep to the subset below; anything else sits behind a wrapper with an
// emulated twin (see the CUTLOSS_* macros in cuda/runtime.h).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

namespace simt {

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

/** A kernel misbehaved: divergent barrier, deadlock, partial-warp collective, bad launch. */
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class Order { Forward, Reverse, Shuffled };

/** Fiber run order for subsequent launches on this OS thread (seed used by Shuffled). */
void setOrder(Order order, uint64_t seed = 0);
Order order();

/** Per-fiber stack size in bytes for subsequent launches (default 64 KiB). */
void setStackSize(size_t bytes);

/** Shared-memory race and bounds checking for subsequent launches (default on). */
void setRaceCheck(bool on);
bool raceCheck();

namespace detail {

using KernelThunk = void (*)(void* closure);

/**
 * Runs `thunk(closure)` as every thread of every block of the grid. Throws simt::Error.
 * Launches are serialized process-wide: static __shared__ arrays are plain statics.
 */
void launch(const char* name, dim3 grid, dim3 block, size_t dynamicSharedBytes, KernelThunk thunk, void* closure);

dim3 currentThreadIdx();
dim3 currentBlockIdx();
dim3 currentBlockDim();
dim3 currentGridDim();
void* dynamicShared();

void syncthreads(const char* site);
int syncthreadsCount(int predicate, const char* site);
int syncthreadsOr(int predicate, const char* site);
int syncthreadsAnd(int predicate, const char* site);

/** Warp collectives: every lane of the (full) warp contributes `value`; returns lane's result. */
enum class WarpOp { ShflIdx, ShflXor, ShflDown, ShflUp, Ballot, Any, All, Sync, Exchange };
uint64_t warpCollective(WarpOp op, unsigned mask, uint64_t value, int arg, int width, const char* site);
/** The mask of the lanes that exist in the calling thread's warp. */
unsigned currentWarpMask();
/** The calling thread's index in its block (x fastest) and its lane. */
unsigned currentLinearThread();

/**
 * A warp-wide exchange: every lane of the (full) warp arrives with its own `lane` record at the
 * same call site; once all have, `combine(records, lanes)` runs once with the records in lane
 * order. Used by the warp matrix operations. Reports divergence like a shuffle.
 */
using ExchangeFn = void (*)(void* const* records, unsigned lanes);
void warpExchange(void* lane, ExchangeFn combine, const char* file, int line);

/** Records a shared-memory access made on behalf of `thread` (the warp operations' copies and loads). */
void noteSharedAccess(const void* p, size_t bytes, bool write, unsigned thread, const char* what);
/** Whether [p, p + bytes) lies in shared memory (the dynamic window or a static __shared__). */
bool isShared(const void* p, size_t bytes);

}  // namespace detail

/** Launch a kernel through the emulator: simt::launchNamedKernel("name", kernel, grid, block, smem, args...). */
template <class... Params, class... Args>
void launchNamedKernel(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block, size_t dynamicSharedBytes,
                       Args&&... args) {
  struct Closure {
    void (*kernel)(Params...);
    std::tuple<std::decay_t<Params>...> params;
  };
  Closure c{kernel, std::tuple<std::decay_t<Params>...>(std::forward<Args>(args)...)};
  detail::launch(
      name, grid, block, dynamicSharedBytes,
      [](void* p) {
        auto* cl = static_cast<Closure*>(p);
        std::apply(cl->kernel, cl->params);  // each fiber gets copies of the arguments, as on a GPU
      },
      &c);
}

template <class... Params, class... Args>
void launchKernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t dynamicSharedBytes, Args&&... args) {
  launchNamedKernel("kernel", kernel, grid, block, dynamicSharedBytes, std::forward<Args>(args)...);
}

// ---------------------------------------------------------------- bit casts and types

template <class To, class From>
inline To bitCast(From v) {
  static_assert(sizeof(To) == sizeof(From), "bitCast needs equal sizes");
  To t;
  std::memcpy(&t, &v, sizeof t);
  return t;
}

}  // namespace simt

// ---------------------------------------------------------------- CUDA spellings

using simt::dim3;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __restrict__ __restrict
#define __launch_bounds__(...)
// Blocks run one at a time and launches one at a time, so one static per kernel is exactly
// one shared array per block. Not thread_local: the race checker's instrumentation skips
// thread-local variables.
#define __shared__ static
#define __syncwarp(...) ((void)0)

#define threadIdx (::simt::detail::currentThreadIdx())
#define blockIdx (::simt::detail::currentBlockIdx())
#define blockDim (::simt::detail::currentBlockDim())
#define gridDim (::simt::detail::currentGridDim())
constexpr int warpSize = 32;

#define SIMT_STR2(x) #x
#define SIMT_STR(x) SIMT_STR2(x)
#define SIMT_SITE __FILE__ ":" SIMT_STR(__LINE__)

#define __syncthreads() ::simt::detail::syncthreads(SIMT_SITE)
#define __syncthreads_count(p) ::simt::detail::syncthreadsCount((p), SIMT_SITE)
#define __syncthreads_or(p) ::simt::detail::syncthreadsOr((p), SIMT_SITE)
#define __syncthreads_and(p) ::simt::detail::syncthreadsAnd((p), SIMT_SITE)
#define __threadfence() ((void)0)
#define __threadfence_block() ((void)0)

namespace simt::detail {

template <class T>
inline uint64_t packLane(T v) {
  static_assert(sizeof(T) <= 8, "warp shuffles move at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof v);
  return bits;
}

template <class T>
inline T unpackLane(uint64_t bits) {
  T v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}

template <class T>
inline T shfl(WarpOp op, unsigned mask, T v, int arg, int width, const char* site) {
  return unpackLane<T>(warpCollective(op, mask, packLane(v), arg, width, site));
}

}  // namespace simt::detail

#define __shfl_sync(mask, v, lane, ...) \
  ::simt::detail::shfl(::simt::detail::WarpOp::ShflIdx, (mask), (v), (lane), ::simt::detail::widthOr32(__VA_ARGS__), SIMT_SITE)
#define __shfl_xor_sync(mask, v, laneMask, ...) \
  ::simt::detail::shfl(::simt::detail::WarpOp::ShflXor, (mask), (v), (laneMask), ::simt::detail::widthOr32(__VA_ARGS__), SIMT_SITE)
#define __shfl_down_sync(mask, v, delta, ...) \
  ::simt::detail::shfl(::simt::detail::WarpOp::ShflDown, (mask), (v), (delta), ::simt::detail::widthOr32(__VA_ARGS__), SIMT_SITE)
#define __shfl_up_sync(mask, v, delta, ...) \
  ::simt::detail::shfl(::simt::detail::WarpOp::ShflUp, (mask), (v), (delta), ::simt::detail::widthOr32(__VA_ARGS__), SIMT_SITE)
#define __ballot_sync(mask, p) \
  static_cast<unsigned>(::simt::detail::warpCollective(::simt::detail::WarpOp::Ballot, (mask), (p) ? 1 : 0, 0, 32, SIMT_SITE))
#define __any_sync(mask, p) \
  static_cast<int>(::simt::detail::warpCollective(::simt::detail::WarpOp::Any, (mask), (p) ? 1 : 0, 0, 32, SIMT_SITE))
#define __all_sync(mask, p) \
  static_cast<int>(::simt::detail::warpCollective(::simt::detail::WarpOp::All, (mask), (p) ? 1 : 0, 0, 32, SIMT_SITE))

namespace simt::detail {
constexpr int widthOr32() { return 32; }
constexpr int widthOr32(int w) { return w; }
}  // namespace simt::detail

// ---------------------------------------------------------------- atomics
// Fibers switch only at barriers and collectives, so a read-modify-write is already atomic.
// Not instrumented (SIMT_ATOMIC): atomics on one word from many threads are not a race.
#define SIMT_ATOMIC __attribute__((no_sanitize("thread"), noinline))

template <class T>
SIMT_ATOMIC T atomicAdd(T* address, T v) {
  T old = *address;
  *address = old + v;
  return old;
}
template <class T>
SIMT_ATOMIC T atomicMax(T* address, T v) {
  T old = *address;
  if (v > old) *address = v;
  return old;
}
template <class T>
SIMT_ATOMIC T atomicMin(T* address, T v) {
  T old = *address;
  if (v < old) *address = v;
  return old;
}
template <class T>
SIMT_ATOMIC T atomicExch(T* address, T v) {
  T old = *address;
  *address = v;
  return old;
}
template <class T>
SIMT_ATOMIC T atomicCAS(T* address, T compare, T v) {
  T old = *address;
  if (old == compare) *address = v;
  return old;
}

// ---------------------------------------------------------------- intrinsics

inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
inline int __float_as_int(float x) { return simt::bitCast<int>(x); }
inline unsigned __float_as_uint(float x) { return simt::bitCast<unsigned>(x); }
inline float __int_as_float(int x) { return simt::bitCast<float>(x); }
inline float __uint_as_float(unsigned x) { return simt::bitCast<float>(x); }
inline unsigned __umulhi(unsigned a, unsigned b) {
  return static_cast<unsigned>((static_cast<uint64_t>(a) * b) >> 32);
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
template <class T>
inline T __ldg(const T* p) {
  return *p;
}
using std::max;
using std::min;

#include "simt_types.h"
#include "warp_ops.h"
