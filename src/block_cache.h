// The free lists of the caching device allocator (cuda_host.cc for the GPU, device_buffer.cc
// for the emulator's pages): blocks freed by one call are handed to the next call that asks
// for the same size class on the same device, so a training loop stops calling cudaMalloc /
// cudaFree (each of which synchronizes the device) after its first step.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <utility>
#include <vector>

namespace cutloss {

struct BlockCacheStats {
  size_t cachedBytes = 0;   // held in the free lists, ready for reuse
  size_t cachedBlocks = 0;
  size_t hits = 0;          // requests served from the free lists
  size_t misses = 0;        // requests that needed a new block
  size_t allocations = 0;   // blocks obtained from the system (cudaMalloc / mmap)
  size_t frees = 0;         // blocks given back to it (cudaFree / munmap)
  size_t oomRetries = 0;    // times a failed allocation emptied the cache and tried again
};

class BlockCache {
 public:
  /**
   * The size a block of `bytes` is allocated with: powers of two from `granule` up to 1 MiB
   * (at most half wasted on small buffers), whole 2 MiB units above (under 2 MiB wasted on a
   * large one). 0 when the rounding would overflow.
   */
  static size_t sizeClass(size_t bytes, size_t granule) {
    constexpr size_t kSmall = size_t{1} << 20;
    constexpr size_t kUnit = size_t{2} << 20;
    if (bytes <= granule) return granule;
    if (bytes <= kSmall) {
      size_t c = granule;
      while (c < bytes) c <<= 1;
      return c;
    }
    if (bytes > SIZE_MAX - kUnit) return 0;
    return (bytes + kUnit - 1) / kUnit * kUnit;
  }

  /** limit: the most bytes the free lists keep; a block past it is freed instead. */
  explicit BlockCache(size_t limit) : limit_(limit) {}

  /** A cached block of exactly `size` on `device`, or null (a miss, counted). */
  void* take(int device, size_t size) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = free_.find({device, size});
    if (it == free_.end() || it->second.empty()) {
      stats_.misses++;
      return nullptr;
    }
    void* p = it->second.back();
    it->second.pop_back();
    stats_.hits++;
    stats_.cachedBytes -= size;
    stats_.cachedBlocks--;
    return p;
  }

  /** Keeps the block for reuse; false when the cache is full (the caller frees it). */
  bool put(int device, size_t size, void* p) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stats_.cachedBytes + size > limit_) return false;
    free_[{device, size}].push_back(p);
    stats_.cachedBytes += size;
    stats_.cachedBlocks++;
    return true;
  }

  /** Removes and returns every cached block (all devices when device < 0), for the caller to free. */
  std::vector<std::pair<void*, size_t>> drain(int device) {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<std::pair<void*, size_t>> out;
    for (auto it = free_.begin(); it != free_.end();) {
      if (device >= 0 && it->first.first != device) {
        ++it;
        continue;
      }
      for (void* p : it->second) out.emplace_back(p, it->first.second);
      stats_.cachedBytes -= it->first.second * it->second.size();
      stats_.cachedBlocks -= it->second.size();
      it = free_.erase(it);
    }
    return out;
  }

  void countAllocation() { bump(&BlockCacheStats::allocations); }
  void countFree() { bump(&BlockCacheStats::frees); }
  void countOomRetry() { bump(&BlockCacheStats::oomRetries); }

  BlockCacheStats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return stats_;
  }

 private:
  void bump(size_t BlockCacheStats::*field) {
    std::lock_guard<std::mutex> lock(mutex_);
    stats_.*field += 1;
  }

  const size_t limit_;
  std::mutex mutex_;
  std::map<std::pair<int, size_t>, std::vector<void*>> free_;  // (device, size class) → blocks
  BlockCacheStats stats_;
};

}  // namespace cutloss
