// Device memory shared beyond one handle.
//
// Export: cuda hands out the allocation's CUDA IPC handle; cuda-emu moves the buffer's pages
// into a POSIX shared memory object in place and hands out its name. The exporting buffer
// owns the memory: imports never free it, and once it is freed new imports fail.
// Import: in the exporting process (another worker thread) the import is a view that holds
// the exporting buffer itself, since CUDA refuses to open a process's own IPC handle; in
// another process it maps the handle (cudaIpcOpenMemHandle, or shm_open + mmap).
// Wrap: a pointer the caller owns becomes a buffer that never frees it.
// Lifetime: an export's owner may dispose of it while other processes still have it open.
// Freeing it then is undefined behaviour under CUDA IPC, so every export has an ExportCounter
// (sharing.h) that importing processes raise and lower, and a disposed export's memory is
// kept ("parked", device_buffer.cc) until the count falls to 0; new imports are refused.
#include "sharing.h"

#include <algorithm>
#include <atomic>
#include <set>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "boundary.h"
#include "cuda_host.h"
#include "device_buffer.h"

namespace cutloss {

namespace {

constexpr int64_t kMaxBytes = int64_t{1} << 53;
constexpr const char* kShmPrefix = "/cutloss-";

/** This process among all others on the machine: pid (reused over time) and a random tag. */
const std::string& processTag() {
  static const std::string tag = [] {
    std::random_device rd;
    uint64_t r = (static_cast<uint64_t>(rd()) << 32) ^ rd();
    char text[48];
    std::snprintf(text, sizeof text, "%lx-%016llx", static_cast<unsigned long>(getpid()),
                  static_cast<unsigned long long>(r));
    return std::string(text);
  }();
  return tag;
}

std::string readString(const Napi::Value& v, const char* name) {
  if (!v.IsString()) throw ArgError("E_OPTION", std::string(name) + " must be a string");
  return v.As<Napi::String>().Utf8Value();
}

// ---------------------------------------------------------------- export counters

/** Names this code makes: the prefix, then hex digits and dashes. Nothing else is opened. */
bool isCutlossShmName(const std::string& name) {
  if (name.size() > 128 || name.rfind(kShmPrefix, 0) != 0 || name.size() == std::strlen(kShmPrefix)) return false;
  for (size_t i = std::strlen(kShmPrefix); i < name.size(); i++) {
    char c = name[i];
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || c == '-')) return false;
  }
  return true;
}


constexpr uint64_t kRevoked = uint64_t{1} << 62;
static_assert(std::atomic<uint64_t>::is_always_lock_free, "the counter is shared between processes");

// Counter names of this process not yet unlinked: unlinked at exit, so none is left in /dev/shm.
std::mutex gCounterNamesMutex;
std::set<std::string>* gCounterNames = new std::set<std::string>;  // never destroyed: used at exit

void unlinkCountersAtExit() {
  std::lock_guard<std::mutex> lock(gCounterNamesMutex);
  for (const std::string& name : *gCounterNames) shm_unlink(name.c_str());
}

std::atomic<uint64_t>* mapCounter(int fd, const std::string& name) {
  void* p = mmap(nullptr, sizeof(std::atomic<uint64_t>), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  int err = errno;
  close(fd);
  if (p == MAP_FAILED) throw ArgError("E_BACKEND", "cannot map the export counter " + name + ": " + std::strerror(err));
  return static_cast<std::atomic<uint64_t>*>(p);
}

}  // namespace

ExportCounter::ExportCounter(std::atomic<uint64_t>* word, std::string name, bool owner)
    : word_(word), name_(std::move(name)), owner_(owner) {}

std::string ExportCounter::nameFor(const std::string& process, const std::string& handle) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a of the handle bytes
  for (unsigned char c : handle) h = (h ^ c) * 1099511628211ull;
  char text[24];
  std::snprintf(text, sizeof text, "-cc%016llx", static_cast<unsigned long long>(h));
  return kShmPrefix + process + text;
}

std::shared_ptr<ExportCounter> ExportCounter::create(const std::string& name) {
  int fd = shm_open(name.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
  if (fd < 0) throw ArgError("E_BACKEND", "shm_open(" + name + ") failed: " + std::strerror(errno));
  if (ftruncate(fd, sizeof(std::atomic<uint64_t>)) != 0) {
    int err = errno;
    close(fd);
    shm_unlink(name.c_str());
    throw ArgError("E_OOM", "cannot size the export counter " + name + ": " + std::strerror(err));
  }
  std::atomic<uint64_t>* word = nullptr;
  try {
    word = mapCounter(fd, name);  // zero-filled: no import, not revoked
  } catch (...) {
    shm_unlink(name.c_str());
    throw;
  }
  {
    static std::once_flag once;
    std::call_once(once, [] { std::atexit(unlinkCountersAtExit); });
    std::lock_guard<std::mutex> lock(gCounterNamesMutex);
    gCounterNames->insert(name);
  }
  return std::shared_ptr<ExportCounter>(new ExportCounter(word, name, true));
}

std::shared_ptr<ExportCounter> ExportCounter::join(const std::string& name) {
  // Only names this code makes are opened; a process tag that is none is no live exporter.
  if (!isCutlossShmName(name)) throw ArgError("E_DISPOSED", "the handle's process exports nothing: " + name);
  int fd = shm_open(name.c_str(), O_RDWR, 0);
  if (fd < 0) {
    if (errno == ENOENT) throw ArgError("E_DISPOSED", "the exported tensor was disposed, or its process ended");
    throw ArgError("E_BACKEND", "shm_open(" + name + ") failed: " + std::strerror(errno));
  }
  std::atomic<uint64_t>* word = mapCounter(fd, name);
  uint64_t v = word->load();
  do {
    if ((v & kRevoked) != 0) {
      munmap(word, sizeof *word);
      throw ArgError("E_DISPOSED", "the exported tensor was disposed: its owner no longer shares it");
    }
  } while (!word->compare_exchange_weak(v, v + 1));
  return std::shared_ptr<ExportCounter>(new ExportCounter(word, name, false));
}

ExportCounter::~ExportCounter() {
  if (owner_) {
    revoke();
  } else {
    word_->fetch_sub(1);  // this process's import closed
  }
  munmap(word_, sizeof *word_);
}

uint64_t ExportCounter::revoke() {
  const uint64_t v = word_->fetch_or(kRevoked);
  if (owner_ && !revoked_) {
    revoked_ = true;
    shm_unlink(name_.c_str());  // later imports find no counter: E_DISPOSED
    std::lock_guard<std::mutex> lock(gCounterNamesMutex);
    gCounterNames->erase(name_);
  }
  return v & ~kRevoked;
}

uint64_t ExportCounter::opens() const { return word_->load() & ~kRevoked; }

namespace {

// ---------------------------------------------------------------- exports of this process

/** What this process exported, by backend and handle bytes, so its own imports find the buffer. */
std::mutex gExportsMutex;
std::unordered_map<std::string, std::weak_ptr<DeviceBuffer>> gExports;

std::string exportKey(Backend backend, const std::string& handle) {
  return std::string(1, static_cast<char>('0' + static_cast<int>(backend))) + handle;
}

void remember(const std::string& key, const std::shared_ptr<DeviceBuffer>& buffer) {
  std::lock_guard<std::mutex> lock(gExportsMutex);
  for (auto it = gExports.begin(); it != gExports.end();) {
    it = it->second.expired() ? gExports.erase(it) : std::next(it);
  }
  gExports[key] = buffer;
}

std::shared_ptr<DeviceBuffer> findExport(const std::string& key) {
  std::lock_guard<std::mutex> lock(gExportsMutex);
  auto it = gExports.find(key);
  return it == gExports.end() ? nullptr : it->second.lock();
}

// ---------------------------------------------------------------- imports from other processes

// CUDA maps an IPC handle once per process: imports of the same handle share one mapping.
std::mutex gIpcMutex;
std::map<std::string, std::weak_ptr<void>> gIpcMappings;

std::shared_ptr<void> openIpc(const std::string& handle, const std::string& process) {
  std::lock_guard<std::mutex> lock(gIpcMutex);
  auto it = gIpcMappings.find(handle);
  if (it != gIpcMappings.end()) {
    if (auto mapping = it->second.lock()) return mapping;
  }
  cudahost::requireAvailable();
  // Counted before it is opened: the owner, seeing the count, keeps the memory until we close it.
  auto share = ExportCounter::join(ExportCounter::nameFor(process, handle));
  void* base = cudahost::ipcOpen(handle);
  std::shared_ptr<void> mapping(base, [share](void* p) {
    std::lock_guard<std::mutex> closing(gIpcMutex);  // not reopened while it closes
    cudahost::ipcClose(p);
  });  // the share is lowered after the close, when the deleter goes
  gIpcMappings[handle] = mapping;
  return mapping;
}

/** Maps another process's exported emulator memory; returns the mapping and its length. */
std::shared_ptr<void> openShm(const std::string& name, const std::string& process, size_t* length) {
  if (!isCutlossShmName(name)) throw ArgError("E_OPTION", "handle does not name memory that cutloss exported");
  auto share = ExportCounter::join(ExportCounter::nameFor(process, name));
  int fd = shm_open(name.c_str(), O_RDWR, 0);
  if (fd < 0) {
    if (errno == ENOENT) {
      throw ArgError("E_DISPOSED", "the exported tensor was disposed, or its process ended: no shared memory " + name);
    }
    throw ArgError("E_BACKEND", "shm_open(" + name + ") failed: " + std::strerror(errno));
  }
  struct stat st {};
  if (fstat(fd, &st) != 0 || st.st_size <= 0) {
    close(fd);
    throw ArgError("E_BACKEND", "cannot read the size of shared memory " + name);
  }
  *length = static_cast<size_t>(st.st_size);
  void* base = mmap(nullptr, *length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  int err = errno;
  close(fd);  // the mapping keeps the memory
  if (base == MAP_FAILED) throw ArgError("E_BACKEND", "cannot map shared memory " + name + ": " + std::strerror(err));
  size_t n = *length;
  return std::shared_ptr<void>(base, [n, share](void* p) { munmap(p, n); });
}

// ---------------------------------------------------------------- entry points

/** exportBuffer(id) → { handle: Uint8Array, process: string } */
Napi::Value ExportBuffer(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    auto buffer = readBuffer(info[0], "id");
    if (buffer->ownership() != Ownership::Owned) {
      throw ArgError("E_OPTION", "only memory that cutloss allocated can be exported; this tensor is " +
                                     std::string(buffer->ownership() == Ownership::Imported ? "an import: export the original"
                                                                                            : "wrapped memory it does not own"));
    }
    if (buffer->bytes() == 0) throw ArgError("E_SHAPE", "an empty tensor has no memory to export");
    static std::atomic<uint64_t> serial{0};
    std::string handle = buffer->backend() == Backend::Emu
                             ? buffer->shareEmulated(kShmPrefix + processTag() + "-" + std::to_string(++serial))
                             : buffer->ipcHandle();
    buffer->exportCounterOnce([&] { return ExportCounter::create(ExportCounter::nameFor(processTag(), handle)); });
    remember(exportKey(buffer->backend(), handle), buffer);
    Napi::Object out = Napi::Object::New(info.Env());
    out.Set("handle", Napi::Buffer<char>::Copy(info.Env(), handle.data(), handle.size()));
    out.Set("process", processTag());
    return out;
  });
}

/** importBuffer(backend, handle: Uint8Array, process, byteOffset, byteLength) → id */
Napi::Value ImportBuffer(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Backend backend = readBackend(info[0], "backend");
    std::vector<uint8_t> bytes = copyUint8(info[1], "handle");
    std::string handle(bytes.begin(), bytes.end());
    std::string process = readString(info[2], "process");
    int64_t byteOffset = readCount(info[3], "byteOffset", kMaxBytes);
    int64_t byteLength = readCount(info[4], "byteLength", kMaxBytes);
    if (byteOffset + byteLength > kMaxBytes) throw ArgError("E_SHAPE", "byteOffset + byteLength exceeds 2^53");
    const size_t offset = static_cast<size_t>(byteOffset);
    const size_t length = static_cast<size_t>(byteLength);
    auto outOfRange = [&](size_t available) {
      return ArgError("E_SHAPE", "the handle describes " + std::to_string(length) + " bytes at offset " +
                                     std::to_string(offset) + ", the exported memory has " + std::to_string(available));
    };

    std::shared_ptr<DeviceBuffer> imported;
    if (process == processTag()) {
      auto exporter = findExport(exportKey(backend, handle));
      if (!exporter) throw ArgError("E_DISPOSED", "the exported tensor was disposed: its memory is freed");
      if (offset + length > exporter->bytes()) throw outOfRange(exporter->bytes());
      imported = DeviceBuffer::borrow(backend, Ownership::Imported, static_cast<char*>(exporter->data()) + offset,
                                      length, exporter);
    } else if (backend == Backend::Emu) {
      size_t mapped = 0;
      auto mapping = openShm(handle, process, &mapped);
      if (offset + length > mapped) throw outOfRange(mapped);
      imported = DeviceBuffer::borrow(backend, Ownership::Imported, static_cast<char*>(mapping.get()) + offset, length,
                                      mapping);
    } else {
      // CUDA does not say how large the exported allocation is: the handle's shape is trusted.
      auto mapping = openIpc(handle, process);
      imported = DeviceBuffer::borrow(backend, Ownership::Imported, static_cast<char*>(mapping.get()) + offset, length,
                                      mapping);
    }
    return Napi::Number::New(info.Env(), handles::add(info.Env(), std::move(imported)));
  });
}

/** wrapPointer(backend, address: bigint, byteLength, dtype) → id */
Napi::Value WrapPointer(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Backend backend = readBackend(info[0], "backend");
    if (!info[1].IsBigInt()) throw ArgError("E_OPTION", "address must be a bigint");
    bool lossless = false;
    uint64_t address = info[1].As<Napi::BigInt>().Uint64Value(&lossless);
    if (!lossless) throw ArgError("E_OPTION", "address must be in [1, 2^64)");
    if (address == 0) throw ArgError("E_OPTION", "address is null");
    int64_t byteLength = readCount(info[2], "byteLength", kMaxBytes);
    DType dtype = readDType(info[3], "dtype");
    if (byteLength % static_cast<int64_t>(dtypeSize(dtype)) != 0) {
      throw ArgError("E_SHAPE", "byteLength must be a multiple of the dtype's " + std::to_string(dtypeSize(dtype)) + " bytes");
    }
    if (address % dtypeSize(dtype) != 0) {
      throw ArgError("E_OPTION", "address " + std::to_string(address) + " is not aligned to the dtype's " +
                                     std::to_string(dtypeSize(dtype)) + " bytes");
    }
    if (address > UINTPTR_MAX - static_cast<uint64_t>(byteLength)) {
      throw ArgError("E_SHAPE", "address + byteLength overflows the address space");
    }
    void* data = reinterpret_cast<void*>(static_cast<uintptr_t>(address));
    if (backend == Backend::Gpu) {
      cudahost::requireAvailable();
      const char* last = static_cast<const char*>(data) + (byteLength > 0 ? byteLength - 1 : 0);
      if (!cudahost::isDeviceMemory(data) || !cudahost::isDeviceMemory(last)) {
        throw ArgError("E_OPTION", "address does not point to CUDA device memory (host memory?)");
      }
    }
    auto wrapped = DeviceBuffer::borrow(backend, Ownership::Wrapped, data, static_cast<size_t>(byteLength), nullptr);
    return Napi::Number::New(info.Env(), handles::add(info.Env(), std::move(wrapped)));
  });
}

/** address(id) → bigint: where the buffer's memory starts (0n for an empty one). */
Napi::Value Address(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    auto buffer = readBuffer(info[0], "id");
    return Napi::BigInt::New(info.Env(), static_cast<uint64_t>(reinterpret_cast<uintptr_t>(buffer->data())));
  });
}

}  // namespace

void registerSharing(Napi::Env env, Napi::Object exports) {
  exports.Set("exportBuffer", Napi::Function::New(env, ExportBuffer, "exportBuffer"));
  exports.Set("importBuffer", Napi::Function::New(env, ImportBuffer, "importBuffer"));
  exports.Set("wrapPointer", Napi::Function::New(env, WrapPointer, "wrapPointer"));
  exports.Set("address", Napi::Function::New(env, Address, "address"));
}

}  // namespace cutloss
