// Device memory that JavaScript refers to by id. On the GPU it is cudaMalloc'd memory; under
// the emulator it is host memory owned by the addon. JavaScript never sees a pointer: it
// holds ids, and every id is looked up (and refused when unknown) before use.
#pragma once

#include <napi.h>

#include <cstddef>
#include <cstdint>
#include <memory>

namespace cutloss {

enum class Backend : int32_t { Emu = 0, Gpu = 1 };

const char* backendName(Backend b);
Backend readBackend(const Napi::Value& v, const char* name);

class DeviceBuffer {
 public:
  /** Zero-filled, so no stale memory ever reaches JavaScript. Throws ArgError (E_OOM, E_BACKEND). */
  static std::shared_ptr<DeviceBuffer> allocate(Backend backend, size_t bytes);
  static std::shared_ptr<DeviceBuffer> fromHost(Backend backend, const void* data, size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  Backend backend() const { return backend_; }
  size_t bytes() const { return bytes_; }
  void* data() const { return data_; }
  void copyToHost(void* dst, size_t bytes) const;

  /** Buffers alive anywhere: referenced from JavaScript or held by a running job. */
  static size_t liveCount();
  static size_t liveBytes();

 private:
  DeviceBuffer(Backend backend, void* data, size_t bytes);
  Backend backend_;
  void* data_;
  size_t bytes_;
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
 */
namespace handles {
double add(std::shared_ptr<DeviceBuffer> buffer);
double add(std::shared_ptr<OpState> state);
/** Null when the id is unknown, was released, or names the other kind. */
std::shared_ptr<DeviceBuffer> findBuffer(double id);
std::shared_ptr<OpState> findState(double id);
bool release(double id);
size_t count();
}  // namespace handles

/** An id argument that names a live buffer; E_DISPOSED otherwise. */
std::shared_ptr<DeviceBuffer> readBuffer(const Napi::Value& v, const char* name);

}  // namespace cutloss
