#include "device_buffer.h"

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_map>

#include <unistd.h>

#include "boundary.h"
#include "cuda_host.h"

namespace cutloss {

namespace {

std::atomic<size_t> gLiveCount{0};
std::atomic<size_t> gLiveBytes{0};

// cudaMalloc's alignment, so emulated kernels see the same pointer alignment as real ones.
constexpr size_t kEmuAlignment = 256;

// Emulator memory is zeroed on allocation; asking for more than the machine has would let
// an overcommitted allocation succeed and the zeroing summon the OOM killer.
size_t physicalMemory() {
  static const size_t bytes = static_cast<size_t>(sysconf(_SC_PHYS_PAGES)) * static_cast<size_t>(sysconf(_SC_PAGE_SIZE));
  return bytes;
}

}  // namespace

const char* backendName(Backend b) { return b == Backend::Gpu ? "cuda" : "cuda-emu"; }

Backend readBackend(const Napi::Value& v, const char* name) {
  if (v.IsNumber()) {
    double d = v.As<Napi::Number>().DoubleValue();
    if (d == 0) return Backend::Emu;
    if (d == 1) return Backend::Gpu;
  }
  throw ArgError("E_BACKEND", std::string(name) + " must be 0 (cuda-emu) or 1 (cuda)");
}

DeviceBuffer::DeviceBuffer(Backend backend, void* data, size_t bytes) : backend_(backend), data_(data), bytes_(bytes) {
  gLiveCount++;
  gLiveBytes += bytes;
}

DeviceBuffer::~DeviceBuffer() {
  if (data_ != nullptr) {
    if (backend_ == Backend::Gpu) cudahost::release(data_);
    else std::free(data_);
  }
  gLiveCount--;
  gLiveBytes -= bytes_;
}

std::shared_ptr<DeviceBuffer> DeviceBuffer::allocate(Backend backend, size_t bytes) {
  void* data = nullptr;
  if (bytes > 0) {
    if (backend == Backend::Gpu) {
      data = cudahost::allocateZeroed(bytes);
    } else {
      size_t rounded = (bytes + kEmuAlignment - 1) / kEmuAlignment * kEmuAlignment;
      if (rounded < bytes || rounded > physicalMemory()) {
        throw ArgError("E_OOM", "cannot allocate " + std::to_string(bytes) + " bytes of emulator memory: the machine has " +
                                    std::to_string(physicalMemory()));
      }
      data = std::aligned_alloc(kEmuAlignment, rounded);
      if (data == nullptr) throw ArgError("E_OOM", "cannot allocate " + std::to_string(bytes) + " bytes of emulator memory");
      std::memset(data, 0, rounded);
    }
  } else if (backend == Backend::Gpu) {
    cudahost::requireAvailable();
  }
  return std::shared_ptr<DeviceBuffer>(new DeviceBuffer(backend, data, bytes));
}

std::shared_ptr<DeviceBuffer> DeviceBuffer::fromHost(Backend backend, const void* src, size_t bytes) {
  auto buffer = allocate(backend, bytes);
  if (bytes == 0) return buffer;
  if (backend == Backend::Gpu) cudahost::copyToDevice(buffer->data_, src, bytes);
  else std::memcpy(buffer->data_, src, bytes);
  return buffer;
}

void DeviceBuffer::copyToHost(void* dst, size_t bytes) const {
  if (bytes == 0) return;
  if (backend_ == Backend::Gpu) cudahost::copyToHost(dst, data_, bytes);
  else std::memcpy(dst, data_, bytes);
}

size_t DeviceBuffer::liveCount() { return gLiveCount.load(); }
size_t DeviceBuffer::liveBytes() { return gLiveBytes.load(); }

namespace handles {

namespace {

struct Entry {
  std::shared_ptr<DeviceBuffer> buffer;
  std::shared_ptr<OpState> state;
};

std::mutex gMutex;
std::unordered_map<uint64_t, Entry> gTable;
uint64_t gNextId = 1;

bool validId(double id) { return id >= 1 && id == std::floor(id) && id <= 9007199254740991.0; }

double insert(Entry entry) {
  std::lock_guard<std::mutex> lock(gMutex);
  uint64_t id = gNextId++;
  gTable.emplace(id, std::move(entry));
  return static_cast<double>(id);
}

Entry lookup(double id) {
  if (!validId(id)) return {};
  std::lock_guard<std::mutex> lock(gMutex);
  auto it = gTable.find(static_cast<uint64_t>(id));
  return it == gTable.end() ? Entry{} : it->second;
}

}  // namespace

double add(std::shared_ptr<DeviceBuffer> buffer) { return insert({std::move(buffer), nullptr}); }
double add(std::shared_ptr<OpState> state) { return insert({nullptr, std::move(state)}); }
std::shared_ptr<DeviceBuffer> findBuffer(double id) { return lookup(id).buffer; }
std::shared_ptr<OpState> findState(double id) { return lookup(id).state; }

bool release(double id) {
  if (!validId(id)) return false;
  Entry dropped;  // freed after the lock is released
  std::lock_guard<std::mutex> lock(gMutex);
  auto it = gTable.find(static_cast<uint64_t>(id));
  if (it == gTable.end()) return false;
  dropped = std::move(it->second);
  gTable.erase(it);
  return true;
}

size_t count() {
  std::lock_guard<std::mutex> lock(gMutex);
  return gTable.size();
}

}  // namespace handles

std::shared_ptr<DeviceBuffer> readBuffer(const Napi::Value& v, const char* name) {
  if (!v.IsNumber()) throw ArgError("E_DISPOSED", std::string(name) + " is not a device buffer handle");
  auto buffer = handles::findBuffer(v.As<Napi::Number>().DoubleValue());
  if (!buffer) throw ArgError("E_DISPOSED", std::string(name) + " refers to device memory that was freed (disposed)");
  return buffer;
}

}  // namespace cutloss
