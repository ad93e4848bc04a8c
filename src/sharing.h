#pragma once

#include <napi.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

namespace cutloss {

/**
 * Exports the entry points that share device memory beyond one handle: exportBuffer and
 * importBuffer (CUDA IPC on cuda, POSIX shared memory on cuda-emu), wrapPointer (memory the
 * caller owns) and address (where a buffer is, for other native code).
 */
void registerSharing(Napi::Env env, Napi::Object exports);

/**
 * How many other processes hold an export open: one word in a small POSIX shared memory
 * object beside the export, raised by a process when it imports the memory and lowered when
 * its import closes. Freeing memory that another process still has open through CUDA IPC is
 * undefined behaviour, so the owner's buffer, once freed, revokes the counter (new imports are
 * refused, E_DISPOSED) and its memory stays allocated, "parked", until the count is 0. A process
 * that dies holding an import never lowers it: that memory then lives as long as the owner's
 * process.
 */
class ExportCounter {
 public:
  /** The exporter's counter, created with the export. Throws ArgError. */
  static std::shared_ptr<ExportCounter> create(const std::string& name);
  /** An importer's share: raises the count; E_DISPOSED when the export was freed or is gone. */
  static std::shared_ptr<ExportCounter> join(const std::string& name);
  /** The counter's name for an export: from the exporting process's tag and the handle bytes. */
  static std::string nameFor(const std::string& process, const std::string& handle);
  ~ExportCounter();
  ExportCounter(const ExportCounter&) = delete;
  ExportCounter& operator=(const ExportCounter&) = delete;

  /** Exporter: refuses imports from now on (and unlinks the name); returns the imports still open. */
  uint64_t revoke();
  /** Imports open now. */
  uint64_t opens() const;

 private:
  ExportCounter(std::atomic<uint64_t>* word, std::string name, bool owner);
  std::atomic<uint64_t>* word_;
  std::string name_;
  bool owner_;
  bool revoked_ = false;
};

}  // namespace cutloss
