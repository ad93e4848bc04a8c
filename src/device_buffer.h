// Device memory that JavaScript refers to by id. On the GPU it is cudaMalloc'd memory; under
// the emulator it is host memory owned by the addon. JavaScript never holds a pointer to
// memory cutloss owns: it holds ids, and every id is looked up (and refused when unknown)
// before use. Memory cutloss does not own (an import from another process, a caller's
// pointer) is a buffer too, one that never frees what it points at.
#pragma once

#include <napi.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "block_cache.h"

namespace cutloss {

enum class Backend : int32_t { Emu = 0, Gpu = 1 };

const char* backendName(Backend b);
Backend readBackend(const Napi::Value& v, const char* name);

/** Owned: allocated (and freed) by cutloss. Imported: mapped from an export. Wrapped: the caller's. */
enum class Ownership : int32_t { Owned = 0, Imported = 1, Wrapped = 2 };

/**
 * What a new buffer holds. Zeroed: zeros, so no stale memory ever reaches JavaScript.
 * Uninitialized: whatever the cache's block held (the emulator fills it with 0xFF bytes, NaN
 * in f32 and bf16, so a kernel that reads what it never wrote fails its tests): for memory the
 * caller overwrites whole (uploads) or kernels initialize on the stream (the linear workspace).
 */
enum class Init { Zeroed, Uninitialized };

class ExportCounter;  // sharing.h

class DeviceBuffer {
 public:
  /**
   * From the caching allocator: a block of the size class of `bytes` on the backend, reused
   * when one is free. Throws ArgError (E_OOM, E_BACKEND).
   */
  static std::shared_ptr<DeviceBuffer> allocate(Backend backend, size_t bytes, Init init = Init::Zeroed);
  static std::shared_ptr<DeviceBuffer> fromHost(Backend backend, const void* data, size_t bytes);
  /**
   * Memory cutloss does not free: `holder` keeps an import mapped (its deleter unmaps it, or
   * it holds the exporting buffer of this process); it is null for wrapped memory.
   */
  static std::shared_ptr<DeviceBuffer> borrow(Backend backend, Ownership ownership, void* data, size_t bytes,
                                              std::shared_ptr<void> holder);
  ~DeviceBuffer();
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  Backend backend() const { return backend_; }
  Ownership ownership() const { return ownership_; }
  size_t bytes() const { return bytes_; }
  void* data() const { return data_; }
  void copyToHost(void* dst, size_t bytes) const;
  void copyFromHost(const void* src, size_t bytes);

  /**
   * cuda-emu, owned memory only: moves the pages into the POSIX shared memory object `name`
   * in place (same address, same contents), so another process can map them; unlinked when
   * this buffer is freed. Idempotent: returns the name it was shared under first.
   */
  std::string shareEmulated(const std::string& name);
  /** cuda, owned memory only: the CUDA IPC handle bytes, asked for once. */
  std::string ipcHandle();
  /**
   * Marks the memory exported: once this buffer is freed its memory is not reused until every
   * process that imported it closed its import (the counter says how many hold it open).
   */
  void exportCounterOnce(const std::function<std::shared_ptr<ExportCounter>()>& make);

  /** Buffers alive anywhere: referenced from JavaScript or held by a running job. */
  static size_t liveCount();
  /** Bytes of the owned ones. */
  static size_t liveBytes();
  /** Bytes of the owned ones on one backend, and their high-water mark since the last resetPeak. */
  static size_t liveBytes(Backend backend);
  static size_t peakBytes(Backend backend);
  /** Sets the backend's high-water mark to its live bytes (the benchmark's before-the-call). */
  static void resetPeak(Backend backend);
  /** The memory the emulator may use: the machine's physical memory, as allocate() checks it. */
  static size_t emulatorCapacity();

  /** The caching allocator's figures on one backend, and the exported memory kept for importers. */
  struct CacheStats {
    BlockCacheStats cache;
    size_t parkedBytes;   // exported, freed by its owner, still open in another process
    size_t parkedBlocks;
  };
  static CacheStats cacheStats(Backend backend);
  /** Frees the backend's cached blocks (and parked ones no process holds any more); returns the bytes freed. */
  static size_t trimCache(Backend backend);

 private:
  DeviceBuffer(Backend backend, Ownership ownership, void* data, size_t bytes, size_t capacity);
  Backend backend_;
  Ownership ownership_;
  void* data_;
  size_t bytes_;
  size_t capacity_;  // owned memory: its block's size class (the emulator's: whole pages)
  int device_ = 0;   // owned GPU memory: the device it is on
  std::shared_ptr<void> holder_;
  std::mutex shareMutex_;
  std::string shmName_;
  std::string ipcHandle_;
  std::shared_ptr<ExportCounter> exportCounter_;
};

/** What an op leaves for its backward, opaque to JavaScript (see ops.cc). */
class OpState {
 public:
  enum class Kind { CrossEntropy };
  explicit OpState(Kind kind) : kind(kind) {}
  virtual ~OpState() = default;
  const Kind kind;
};

/**
 * The process-wide table of ids, so an id stays valid on every thread. An id names either a
 * buffer or an op state; ids are never reused, so a stale id can only miss, never alias.
 * Each id belongs to the JS environment that received it: a worker thread that ends never runs
 * its tensors' finalizers, so its environment's cleanup hook releases the ids it still holds
 * (call add on that environment's thread).
 */
namespace handles {
double add(napi_env env, std::shared_ptr<DeviceBuffer> buffer);
double add(napi_env env, std::shared_ptr<OpState> state);
/** Null when the id is unknown, was released, or names the other kind. */
std::shared_ptr<DeviceBuffer> findBuffer(double id);
std::shared_ptr<OpState> findState(double id);
bool release(double id);
size_t count();
}  // namespace handles

/**
 * deviceCacheStats(backend) and trimDeviceCache(backend): the caching allocator's figures and
 * its release; isStickyCudaError(code) and noteCudaError(code, name, message), the sticky-error
 * table and a hook that records one (for tests, in a process of their own).
 */
void registerDeviceMemory(Napi::Env env, Napi::Object exports);

/** An id argument that names a live buffer; E_DISPOSED otherwise. */
std::shared_ptr<DeviceBuffer> readBuffer(const Napi::Value& v, const char* name);

}  // namespace cutloss
