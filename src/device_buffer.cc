#include "device_buffer.h"

#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_map>

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "boundary.h"
#include "cuda_host.h"

namespace cutloss {

namespace {

std::atomic<size_t> gLiveCount{0};
std::atomic<size_t> gLiveBytes{0};
// Per backend (index: Backend), for the benchmark's allocator high-water mark.
std::atomic<size_t> gBackendLive[2]{};
std::atomic<size_t> gBackendPeak[2]{};

void accountOwned(Backend backend, size_t bytes) {
  const int b = static_cast<int>(backend);
  const size_t now = gBackendLive[b] += bytes;
  size_t peak = gBackendPeak[b].load();
  while (now > peak && !gBackendPeak[b].compare_exchange_weak(peak, now)) {
  }
}

// Emulator memory is whole pages from mmap: page-aligned (more than cudaMalloc's 256 bytes,
// so emulated kernels see real pointer alignment), zero-filled by the kernel, and replaceable
// in place by a shared mapping when it is exported (shareEmulated).
size_t pageSize() {
  static const size_t bytes = static_cast<size_t>(sysconf(_SC_PAGE_SIZE));
  return bytes;
}

// Asking for more than the machine has would let an overcommitted mapping succeed and the
// first writes summon the OOM killer.
size_t physicalMemory() {
  static const size_t bytes = static_cast<size_t>(sysconf(_SC_PHYS_PAGES)) * pageSize();
  return bytes;
}

std::string errnoText() { return std::strerror(errno); }

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

DeviceBuffer::DeviceBuffer(Backend backend, Ownership ownership, void* data, size_t bytes, size_t mapped)
    : backend_(backend), ownership_(ownership), data_(data), bytes_(bytes), mapped_(mapped) {
  gLiveCount++;
  if (ownership_ == Ownership::Owned) {
    gLiveBytes += bytes;
    accountOwned(backend, bytes);
  }
}

DeviceBuffer::~DeviceBuffer() {
  if (ownership_ == Ownership::Owned && data_ != nullptr) {
    if (backend_ == Backend::Gpu) {
      cudahost::release(data_);
    } else {
      munmap(data_, mapped_);
      // Importers that mapped it keep their pages; new imports now fail (E_DISPOSED).
      if (!shmName_.empty()) shm_unlink(shmName_.c_str());
    }
  }
  gLiveCount--;
  if (ownership_ == Ownership::Owned) {
    gLiveBytes -= bytes_;
    gBackendLive[static_cast<int>(backend_)] -= bytes_;
  }
}

std::shared_ptr<DeviceBuffer> DeviceBuffer::allocate(Backend backend, size_t bytes) {
  void* data = nullptr;
  size_t mapped = 0;
  if (bytes > 0) {
    if (backend == Backend::Gpu) {
      data = cudahost::allocateZeroed(bytes);
    } else {
      mapped = (bytes + pageSize() - 1) / pageSize() * pageSize();
      if (mapped < bytes || mapped > physicalMemory()) {
        throw ArgError("E_OOM", "cannot allocate " + std::to_string(bytes) + " bytes of emulator memory: the machine has " +
                                    std::to_string(physicalMemory()));
      }
      data = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (data == MAP_FAILED) {
        throw ArgError("E_OOM", "cannot allocate " + std::to_string(bytes) + " bytes of emulator memory: " + errnoText());
      }
    }
  } else if (backend == Backend::Gpu) {
    cudahost::requireAvailable();
  }
  return std::shared_ptr<DeviceBuffer>(new DeviceBuffer(backend, Ownership::Owned, data, bytes, mapped));
}

std::shared_ptr<DeviceBuffer> DeviceBuffer::fromHost(Backend backend, const void* src, size_t bytes) {
  auto buffer = allocate(backend, bytes);
  buffer->copyFromHost(src, bytes);
  return buffer;
}

std::shared_ptr<DeviceBuffer> DeviceBuffer::borrow(Backend backend, Ownership ownership, void* data, size_t bytes,
                                                   std::shared_ptr<void> holder) {
  auto buffer = std::shared_ptr<DeviceBuffer>(new DeviceBuffer(backend, ownership, data, bytes, 0));
  buffer->holder_ = std::move(holder);
  return buffer;
}

void DeviceBuffer::copyToHost(void* dst, size_t bytes) const {
  if (bytes == 0) return;
  if (backend_ == Backend::Gpu) cudahost::copyToHost(dst, data_, bytes);
  else std::memcpy(dst, data_, bytes);
}

void DeviceBuffer::copyFromHost(const void* src, size_t bytes) {
  if (bytes == 0) return;
  if (backend_ == Backend::Gpu) cudahost::copyToDevice(data_, src, bytes);
  else std::memcpy(data_, src, bytes);
}

std::string DeviceBuffer::shareEmulated(const std::string& name) {
  std::lock_guard<std::mutex> lock(shareMutex_);
  if (!shmName_.empty()) return shmName_;
  if (backend_ != Backend::Emu || ownership_ != Ownership::Owned || data_ == nullptr) {
    throw ArgError("E_OPTION", "only non-empty emulator memory that cutloss allocated can be shared");
  }
  int fd = shm_open(name.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
  if (fd < 0) throw ArgError("E_BACKEND", "shm_open(" + name + ") failed: " + errnoText());
  auto fail = [&](const char* code, const std::string& what) {
    int err = errno;
    close(fd);
    shm_unlink(name.c_str());
    throw ArgError(code, what + ": " + std::strerror(err));
  };
  // Reserve the pages now: tmpfs that runs full later would kill us with SIGBUS on a write.
  if (ftruncate(fd, static_cast<off_t>(mapped_)) != 0) fail("E_OOM", "cannot size shared memory " + name);
  if (int err = posix_fallocate(fd, 0, static_cast<off_t>(mapped_)); err != 0) {
    errno = err;
    fail("E_OOM", "cannot reserve " + std::to_string(mapped_) + " bytes of shared memory (/dev/shm)");
  }
  void* staging = mmap(nullptr, mapped_, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (staging == MAP_FAILED) fail("E_OOM", "cannot map shared memory " + name);
  std::memcpy(staging, data_, mapped_);
  // Same address, so ids, running jobs and wrapped views of this memory all stay valid; the
  // contents are equal, so a kernel reading it meanwhile sees no change.
  void* fixed = mmap(data_, mapped_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0);
  if (fixed == MAP_FAILED) {
    int err = errno;
    // A failed MAP_FIXED may have unmapped the range: put private pages back, with the data.
    if (mmap(data_, mapped_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != MAP_FAILED) {
      std::memcpy(data_, staging, mapped_);
    }
    munmap(staging, mapped_);
    errno = err;
    fail("E_OOM", "cannot map shared memory " + name + " in place");
  }
  munmap(staging, mapped_);
  close(fd);
  shmName_ = name;
  return shmName_;
}

std::string DeviceBuffer::ipcHandle() {
  std::lock_guard<std::mutex> lock(shareMutex_);
  if (!ipcHandle_.empty()) return ipcHandle_;
  if (backend_ != Backend::Gpu || ownership_ != Ownership::Owned || data_ == nullptr) {
    throw ArgError("E_OPTION", "only non-empty GPU memory that cutloss allocated can be exported");
  }
  ipcHandle_ = cudahost::ipcHandle(data_);
  return ipcHandle_;
}

size_t DeviceBuffer::liveCount() { return gLiveCount.load(); }
size_t DeviceBuffer::liveBytes() { return gLiveBytes.load(); }
size_t DeviceBuffer::liveBytes(Backend backend) { return gBackendLive[static_cast<int>(backend)].load(); }
size_t DeviceBuffer::peakBytes(Backend backend) { return gBackendPeak[static_cast<int>(backend)].load(); }
void DeviceBuffer::resetPeak(Backend backend) {
  const int b = static_cast<int>(backend);
  gBackendPeak[b].store(gBackendLive[b].load());
}
size_t DeviceBuffer::emulatorCapacity() { return physicalMemory(); }

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
