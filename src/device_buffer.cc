#include "device_buffer.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "boundary.h"
#include "cuda_host.h"
#include "sharing.h"

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

// The emulator's free lists: the same caching as the GPU's (cuda_host.cc), so CI exercises it.
// Cached pages are memory the machine cannot use otherwise: the cache keeps at most an eighth
// of it (and 4 GiB), and frees what does not fit.
BlockCache& emuCache() {
  static BlockCache* c = new BlockCache(std::min<size_t>(physicalMemory() / 8, size_t{4} << 30));
  return *c;
}

void emuFree(void* data, size_t capacity) {
  munmap(data, capacity);
  emuCache().countFree();
}

// ---------------------------------------------------------------- parked exports

/** Memory freed by its owner while another process may still have it open (sharing.h). */
struct Parked {
  Backend backend;
  void* data;
  size_t capacity;
  int device;
  std::shared_ptr<ExportCounter> counter;
};
std::mutex gParkedMutex;
std::vector<Parked>* gParked = new std::vector<Parked>;  // never destroyed: touched by late destructors

void freeExported(const Parked& p) {
  // Never back to the cache: an importer that closed its mapping still named this block once.
  if (p.backend == Backend::Gpu) cudahost::freeBlock({p.data, p.capacity, p.device});
  else emuFree(p.data, p.capacity);
}

/** Frees the parked memory no other process holds any more. */
void reapParked() {
  std::vector<Parked> done;
  {
    std::lock_guard<std::mutex> lock(gParkedMutex);
    if (gParked->empty()) return;
    for (auto it = gParked->begin(); it != gParked->end();) {
      if (it->counter->opens() == 0) {
        done.push_back(std::move(*it));
        it = gParked->erase(it);
      } else {
        ++it;
      }
    }
  }
  for (const Parked& p : done) freeExported(p);
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

DeviceBuffer::DeviceBuffer(Backend backend, Ownership ownership, void* data, size_t bytes, size_t capacity)
    : backend_(backend), ownership_(ownership), data_(data), bytes_(bytes), capacity_(capacity) {
  gLiveCount++;
  if (ownership_ == Ownership::Owned) {
    gLiveBytes += bytes;
    accountOwned(backend, bytes);
  }
}

DeviceBuffer::~DeviceBuffer() {
  if (ownership_ == Ownership::Owned && data_ != nullptr) {
    // Importers that mapped emulator memory keep their pages; new imports now fail (E_DISPOSED).
    if (!shmName_.empty()) shm_unlink(shmName_.c_str());
    if (exportCounter_) {
      Parked p{backend_, data_, capacity_, device_, std::move(exportCounter_)};
      if (p.counter->revoke() == 0) {
        freeExported(p);
      } else {
        std::lock_guard<std::mutex> lock(gParkedMutex);
        gParked->push_back(std::move(p));
      }
    } else if (backend_ == Backend::Gpu) {
      cudahost::releaseBlock({data_, capacity_, device_});
    } else if (!shmName_.empty() || !emuCache().put(0, capacity_, data_)) {
      emuFree(data_, capacity_);  // shared pages are never reused
    }
  }
  gLiveCount--;
  if (ownership_ == Ownership::Owned) {
    gLiveBytes -= bytes_;
    gBackendLive[static_cast<int>(backend_)] -= bytes_;
  }
}

std::shared_ptr<DeviceBuffer> DeviceBuffer::allocate(Backend backend, size_t bytes, Init init) {
  reapParked();
  void* data = nullptr;
  size_t capacity = 0;
  int device = 0;
  if (bytes > 0) {
    if (backend == Backend::Gpu) {
      const cudahost::Block block = cudahost::allocateBlock(bytes, init == Init::Zeroed);
      data = block.data;
      capacity = block.capacity;
      device = block.device;
    } else {
      capacity = BlockCache::sizeClass(bytes, pageSize());
      if (capacity == 0 || capacity > physicalMemory()) {
        throw ArgError("E_OOM", "cannot allocate " + std::to_string(bytes) + " bytes of emulator memory: the machine has " +
                                    std::to_string(physicalMemory()));
      }
      data = emuCache().take(0, capacity);
      const bool fresh = data == nullptr;
      if (fresh) {
        data = mmap(nullptr, capacity, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (data == MAP_FAILED) {
          // What the cache holds may be what is missing: give it back and try once more.
          emuCache().countOomRetry();
          for (const auto& [p, size] : emuCache().drain(-1)) emuFree(p, size);
          data = mmap(nullptr, capacity, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        }
        if (data == MAP_FAILED) {
          throw ArgError("E_OOM", "cannot allocate " + std::to_string(bytes) + " bytes of emulator memory: " + errnoText());
        }
        emuCache().countAllocation();
      }
      if (init == Init::Uninitialized) {
        std::memset(data, 0xFF, bytes);  // NaN: what a kernel reads without writing shows in its results
      } else if (!fresh) {
        std::memset(data, 0, bytes);  // fresh pages are zero already
      }
    }
  } else if (backend == Backend::Gpu) {
    cudahost::requireAvailable();
  }
  auto buffer = std::shared_ptr<DeviceBuffer>(new DeviceBuffer(backend, Ownership::Owned, data, bytes, capacity));
  buffer->device_ = device;
  return buffer;
}

std::shared_ptr<DeviceBuffer> DeviceBuffer::fromHost(Backend backend, const void* src, size_t bytes) {
  auto buffer = allocate(backend, bytes, Init::Uninitialized);  // every byte is overwritten
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
  if (ftruncate(fd, static_cast<off_t>(capacity_)) != 0) fail("E_OOM", "cannot size shared memory " + name);
  if (int err = posix_fallocate(fd, 0, static_cast<off_t>(capacity_)); err != 0) {
    errno = err;
    fail("E_OOM", "cannot reserve " + std::to_string(capacity_) + " bytes of shared memory (/dev/shm)");
  }
  void* staging = mmap(nullptr, capacity_, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (staging == MAP_FAILED) fail("E_OOM", "cannot map shared memory " + name);
  std::memcpy(staging, data_, capacity_);
  // Same address, so ids, running jobs and wrapped views of this memory all stay valid; the
  // contents are equal, so a kernel reading it meanwhile sees no change.
  void* fixed = mmap(data_, capacity_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0);
  if (fixed == MAP_FAILED) {
    int err = errno;
    // A failed MAP_FIXED may have unmapped the range: put private pages back, with the data.
    if (mmap(data_, capacity_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != MAP_FAILED) {
      std::memcpy(data_, staging, capacity_);
    }
    munmap(staging, capacity_);
    errno = err;
    fail("E_OOM", "cannot map shared memory " + name + " in place");
  }
  munmap(staging, capacity_);
  close(fd);
  // The block's tail past this tensor held some earlier tensor: importers map the whole block.
  if (capacity_ > bytes_) std::memset(static_cast<char*>(data_) + bytes_, 0, capacity_ - bytes_);
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

void DeviceBuffer::exportCounterOnce(const std::function<std::shared_ptr<ExportCounter>()>& make) {
  std::lock_guard<std::mutex> lock(shareMutex_);
  if (!exportCounter_) exportCounter_ = make();
}

DeviceBuffer::CacheStats DeviceBuffer::cacheStats(Backend backend) {
  reapParked();
  CacheStats out{backend == Backend::Gpu ? cudahost::cacheStats() : emuCache().stats(), 0, 0};
  std::lock_guard<std::mutex> lock(gParkedMutex);
  for (const Parked& p : *gParked) {
    if (p.backend != backend) continue;
    out.parkedBytes += p.capacity;
    out.parkedBlocks++;
  }
  return out;
}

size_t DeviceBuffer::trimCache(Backend backend) {
  reapParked();
  if (backend == Backend::Gpu) return cudahost::trimCache();
  size_t bytes = 0;
  for (const auto& [p, size] : emuCache().drain(-1)) {
    emuFree(p, size);
    bytes += size;
  }
  return bytes;
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
  napi_env env = nullptr;
};

std::mutex gMutex;
std::unordered_map<uint64_t, Entry> gTable;
std::unordered_set<napi_env> gHookedEnvs;
uint64_t gNextId = 1;

bool validId(double id) { return id >= 1 && id == std::floor(id) && id <= 9007199254740991.0; }

/** The environment's cleanup hook: drops every id it still holds. */
void releaseEnv(void* arg) {
  const auto env = static_cast<napi_env>(arg);
  std::vector<Entry> dropped;  // freed after the lock is released
  std::lock_guard<std::mutex> lock(gMutex);
  for (auto it = gTable.begin(); it != gTable.end();) {
    if (it->second.env == env) {
      dropped.push_back(std::move(it->second));
      it = gTable.erase(it);
    } else {
      ++it;
    }
  }
  gHookedEnvs.erase(env);
}

double insert(Entry entry) {
  std::lock_guard<std::mutex> lock(gMutex);
  if (gHookedEnvs.insert(entry.env).second) napi_add_env_cleanup_hook(entry.env, releaseEnv, entry.env);
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

double add(napi_env env, std::shared_ptr<DeviceBuffer> buffer) { return insert({std::move(buffer), nullptr, env}); }
double add(napi_env env, std::shared_ptr<OpState> state) { return insert({nullptr, std::move(state), env}); }
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

namespace {

Napi::Value DeviceCacheStats(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const DeviceBuffer::CacheStats s = DeviceBuffer::cacheStats(readBackend(info[0], "backend"));
    Napi::Object out = Napi::Object::New(info.Env());
    out.Set("cachedBytes", static_cast<double>(s.cache.cachedBytes));
    out.Set("cachedBlocks", static_cast<double>(s.cache.cachedBlocks));
    out.Set("hits", static_cast<double>(s.cache.hits));
    out.Set("misses", static_cast<double>(s.cache.misses));
    out.Set("allocations", static_cast<double>(s.cache.allocations));
    out.Set("frees", static_cast<double>(s.cache.frees));
    out.Set("oomRetries", static_cast<double>(s.cache.oomRetries));
    out.Set("parkedBytes", static_cast<double>(s.parkedBytes));
    out.Set("parkedBlocks", static_cast<double>(s.parkedBlocks));
    return out;
  });
}

Napi::Value TrimDeviceCache(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    return Napi::Number::New(info.Env(), static_cast<double>(DeviceBuffer::trimCache(readBackend(info[0], "backend"))));
  });
}

Napi::Value IsStickyCudaError(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    return Napi::Boolean::New(info.Env(), cudahost::isStickyError(static_cast<int>(readFinite(info[0], "code"))));
  });
}

/** For tests, in a child process: records a CUDA error as if a call had returned it. */
Napi::Value NoteCudaError(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    if (!info[1].IsString() || !info[2].IsString()) throw ArgError("E_OPTION", "name and message must be strings");
    cudahost::noteError(static_cast<int>(readFinite(info[0], "code")), info[1].As<Napi::String>().Utf8Value(),
                        info[2].As<Napi::String>().Utf8Value());
    return info.Env().Undefined();
  });
}

}  // namespace

void registerDeviceMemory(Napi::Env env, Napi::Object exports) {
  exports.Set("deviceCacheStats", Napi::Function::New(env, DeviceCacheStats, "deviceCacheStats"));
  exports.Set("trimDeviceCache", Napi::Function::New(env, TrimDeviceCache, "trimDeviceCache"));
  exports.Set("isStickyCudaError", Napi::Function::New(env, IsStickyCudaError, "isStickyCudaError"));
  exports.Set("noteCudaError", Napi::Function::New(env, NoteCudaError, "noteCudaError"));
}

std::shared_ptr<DeviceBuffer> readBuffer(const Napi::Value& v, const char* name) {
  if (!v.IsNumber()) throw ArgError("E_DISPOSED", std::string(name) + " is not a device buffer handle");
  auto buffer = handles::findBuffer(v.As<Napi::Number>().DoubleValue());
  if (!buffer) throw ArgError("E_DISPOSED", std::string(name) + " refers to device memory that was freed (disposed)");
  return buffer;
}

}  // namespace cutloss
