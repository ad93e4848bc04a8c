// The CPU backend's threads: one process-wide pool of workers that, with the calling thread,
// split a loop into pieces. Its size defaults to the CPUs this process may run on (or
// CUTLOSS_THREADS) and is settable. One op runs at a time (CpuSession), using every thread;
// BLAS calls inside an op use the same count of threads (gemm.h).
//
// Denormals are flushed to zero (FTZ and DAZ) on the pool's threads, and on the calling
// thread for the length of an op: peaked softmax rows are mostly denormal floats, which
// cost a microcode assist per operation on many x86 cores.
#pragma once

#include <cstdint>
#include <functional>

namespace cutloss::cpu {

/** Threads an op uses (the caller included). */
int threadCount();

/** Sets the thread count (1 ..= kMaxThreads) for later ops, BLAS included; waits for a running op. */
void setThreadCount(int n);

constexpr int kMaxThreads = 256;

/** The default: CUTLOSS_THREADS when set, else the CPUs in this process's affinity mask. */
int defaultThreadCount();

/**
 * body(begin, end, worker) over [0, count) in pieces of at most `grain`, on the pool and the
 * caller; worker is in [0, threadCount()) and names per-thread scratch. Must run inside a
 * CpuSession; the first exception a piece throws is rethrown here once all pieces are done.
 */
void parallelFor(int64_t count, int64_t grain, const std::function<void(int64_t, int64_t, int)>& body);

/** While alive: the op owns the pool, and this thread flushes denormals to zero. */
class CpuSession {
 public:
  CpuSession();
  ~CpuSession();
  CpuSession(const CpuSession&) = delete;
  CpuSession& operator=(const CpuSession&) = delete;

 private:
  uint32_t savedControl_;
};

/** Whether this build flushes denormals on this architecture (x86-64 and AArch64 do). */
bool flushesDenormals();

}  // namespace cutloss::cpu
