// Host buffers for the CPU backend's workspaces and the inputs an async call copies:
// zero-filled, large ones mapped on their own (page-aligned, returned to the system on release).
// Mappings of 8 MiB and more ask for transparent huge pages (MADV_HUGEPAGE): on a 2-core EPYC
// VM (THP `madvise`, defrag `madvise`) S2's linearCrossEntropy took 705 ms with them and 780 ms
// without, bf16 425 / 455 ms, its fresh gradients faulting once per 2 MiB instead of per 4 KiB.
// Where memory is fragmented such a fault can stall on compaction instead (an earlier machine
// measured that cost more than it saved); the pools below keep most calls off fresh memory.
#pragma once

#include <cstdint>

#include <cstddef>
#include <new>
#include <string>

namespace cutloss::cpu {

/**
 * A failed host allocation, naming the bytes asked for; src/boundary.cc reports a bad_alloc
 * with its what() as E_OOM. A bad_alloc, not an ArgError, so the kernels need no N-API.
 */
class HostOutOfMemory : public std::bad_alloc {
 public:
  explicit HostOutOfMemory(size_t bytes)
      : message_("cannot allocate " + std::to_string(bytes) + " bytes of host memory") {}
  const char* what() const noexcept override { return message_.c_str(); }

 private:
  std::string message_;
};

inline HostOutOfMemory outOfHostMemory(size_t bytes) { return HostOutOfMemory(bytes); }

/**
 * Recently freed large outputs, kept for the next output of the same size: a fresh mapping
 * costs a page fault per 4 KiB when first written (a 500 MB dLogits: ~250 ms of kernel time,
 * several times the op itself), a reused one none. Holds at most kPooledBuffers buffers of at
 * least kPooledMinBytes. Thread-safe; buffers come back from ArrayBuffer finalizers.
 */
namespace outputPool {
constexpr size_t kPooledMinBytes = size_t{16} << 20;
constexpr size_t kPooledBuffers = 2;
/** A buffer of exactly `bytes` (rounded to pages) that was given back, or null. Its contents are stale. */
void* take(size_t bytes);
/** Keeps the buffer for a later take(), or releases it when the pool is full. */
void give(void* data, size_t bytes) noexcept;
/** Bytes held now. */
size_t heldBytes();
/**
 * Pooled-size outputs handed to JavaScript whose finalizers have not run yet. Finalizers run
 * only when the event loop turns, so a loop that never yields would map a new buffer every
 * call without bound; past liveCapFor(bytes) new outputs are V8's own (freed by its GC, but
 * in fresh memory: a page fault per 4 KiB).
 */
constexpr size_t kMaxLiveBytes = size_t{1} << 30;
/**
 * kMaxLiveBytes, or four outputs of this size where that is more: a loop that yields between
 * calls holds the output being made and the one it just dropped, and up to two more wait for
 * V8 to find them dead and for Node to run their finalizers on a later turn. Below that, such a
 * loop would get a V8 buffer in fresh memory every other call (~200 ms of page faults for S1's
 * 500 MB dLogits, five times the op).
 */
size_t liveCapFor(size_t bytes);
/** Registers an output handed to JavaScript under a new id (its finalizer's hint). */
uint64_t startLive(void* data, size_t bytes);
/**
 * Ends the output's life and gives its memory to the pool, the first time for its id (true);
 * later calls do nothing. Its finalizer calls it; recycling (cpuRecycle) may do so earlier.
 */
bool endLive(uint64_t id);
/** The id of the live output whose memory is exactly [data, data + bytes), or 0. */
uint64_t liveAt(const void* data, size_t bytes);
size_t liveBytes();
}  // namespace outputPool

class HostBuffer {
 public:
  /** Zero-filled memory of `bytes` (none for 0). Throws outOfHostMemory(bytes) (E_OOM). */
  explicit HostBuffer(size_t bytes);
  ~HostBuffer();
  HostBuffer(const HostBuffer&) = delete;
  HostBuffer& operator=(const HostBuffer&) = delete;

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  template <class T>
  T* as() const {
    return static_cast<T*>(data_);
  }
  /** Gives up ownership; free the memory with HostBuffer::release(p, bytes). */
  void* detach();
  static void release(void* data, size_t bytes) noexcept;

 private:
  void* data_;
  size_t bytes_;
};

/**
 * Scratch memory with stale contents: a pooled buffer of its size where the output pool has one
 * (a fresh mapping of 48 MB is 12 000 first-touch faults and zeroing per call), else new; given
 * to the pool when done.
 */
class PooledScratch {
 public:
  explicit PooledScratch(size_t bytes) : data_(nullptr), bytes_(bytes) {
    if (bytes >= outputPool::kPooledMinBytes) data_ = outputPool::take(bytes);
    if (data_ == nullptr && bytes > 0) data_ = HostBuffer(bytes).detach();
  }
  ~PooledScratch() { outputPool::give(data_, bytes_); }
  PooledScratch(const PooledScratch&) = delete;
  PooledScratch& operator=(const PooledScratch&) = delete;

  size_t bytes() const { return bytes_; }
  template <class T>
  T* as() const {
    return static_cast<T*>(data_);
  }

 private:
  void* data_;
  size_t bytes_;
};

}  // namespace cutloss::cpu
