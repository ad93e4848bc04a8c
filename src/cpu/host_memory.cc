#include "host_memory.h"

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <new>
#include <utility>
#include <string>
#include <unordered_map>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <sys/mman.h>
#define CUTLOSS_HAS_MMAP 1
#else
#define CUTLOSS_HAS_MMAP 0
#endif

namespace cutloss::cpu {

namespace {
// Below this, malloc's arenas serve better than a mapping of its own.
constexpr size_t kMapThreshold = size_t{1} << 20;
// From here a mapping asks for transparent huge pages (most of it lies in whole 2 MiB pages).
constexpr size_t kHugePageThreshold = size_t{8} << 20;
}  // namespace

namespace outputPool {

namespace {
std::mutex gMutex;
std::vector<std::pair<void*, size_t>> gFree;  // (data, bytes), most recent last
}  // namespace

void* take(size_t bytes) {
  std::lock_guard<std::mutex> lock(gMutex);
  for (size_t i = gFree.size(); i-- > 0;) {
    if (gFree[i].second == bytes) {
      void* p = gFree[i].first;
      gFree.erase(gFree.begin() + static_cast<std::ptrdiff_t>(i));
      return p;
    }
  }
  return nullptr;
}

void give(void* data, size_t bytes) noexcept {
  if (data == nullptr) return;
  if (bytes >= kPooledMinBytes) {
    std::lock_guard<std::mutex> lock(gMutex);
    if (gFree.size() < kPooledBuffers) {
      try {
        gFree.emplace_back(data, bytes);
        return;
      } catch (...) {
        // no room to remember it: release it below
      }
    }
  }
  HostBuffer::release(data, bytes);
}

namespace {
struct LiveOutput {
  void* data;
  size_t bytes;
};
std::mutex gLiveMutex;
std::unordered_map<uint64_t, LiveOutput> gLiveOutputs;  // by id
uint64_t gNextId = 1;
std::atomic<size_t> gLive{0};
}  // namespace

uint64_t startLive(void* data, size_t bytes) {
  std::lock_guard<std::mutex> lock(gLiveMutex);
  const uint64_t id = gNextId++;
  gLiveOutputs.emplace(id, LiveOutput{data, bytes});
  gLive.fetch_add(bytes);
  return id;
}

bool endLive(uint64_t id) {
  LiveOutput o{};
  {
    std::lock_guard<std::mutex> lock(gLiveMutex);
    auto it = gLiveOutputs.find(id);
    if (it == gLiveOutputs.end()) return false;
    o = it->second;
    gLiveOutputs.erase(it);
    gLive.fetch_sub(o.bytes);
  }
  give(o.data, o.bytes);
  return true;
}

uint64_t liveAt(const void* data, size_t bytes) {
  std::lock_guard<std::mutex> lock(gLiveMutex);
  for (const auto& [id, o] : gLiveOutputs) {
    if (o.data == data && o.bytes == bytes) return id;
  }
  return 0;
}

size_t liveCapFor(size_t bytes) {
  const size_t four = bytes <= SIZE_MAX / 4 ? 4 * bytes : SIZE_MAX;
  return four > kMaxLiveBytes ? four : kMaxLiveBytes;
}

size_t liveBytes() { return gLive.load(); }

size_t heldBytes() {
  std::lock_guard<std::mutex> lock(gMutex);
  size_t total = 0;
  for (const auto& f : gFree) total += f.second;
  return total;
}

}  // namespace outputPool

HostBuffer::HostBuffer(size_t bytes) : data_(nullptr), bytes_(bytes) {
  if (bytes == 0) return;
#if CUTLOSS_HAS_MMAP
  if (bytes >= kMapThreshold) {
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw outOfHostMemory(bytes);
#ifdef MADV_HUGEPAGE
    // 2 MiB pages where the kernel offers them on request: first writes into a fresh 64 MiB
    // gradient otherwise fault 16 384 times (host_memory.h says what it cost and saved)
    if (bytes >= kHugePageThreshold) madvise(p, bytes, MADV_HUGEPAGE);
#endif
    data_ = p;
    return;
  }
#endif
  data_ = std::calloc(bytes, 1);
  if (data_ == nullptr) throw outOfHostMemory(bytes);
}

HostBuffer::~HostBuffer() { release(data_, bytes_); }

void* HostBuffer::detach() {
  void* p = data_;
  data_ = nullptr;
  return p;
}

void HostBuffer::release(void* data, size_t bytes) noexcept {
  if (data == nullptr) return;
#if CUTLOSS_HAS_MMAP
  if (bytes >= kMapThreshold) {
    munmap(data, bytes);
    return;
  }
#endif
  (void)bytes;
  std::free(data);
}

}  // namespace cutloss::cpu
