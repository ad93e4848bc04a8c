// A job is one native call split in two: run() does the device work and touches no JavaScript
// value, so it may run on a worker thread; result() turns the outputs into JavaScript values
// on the JS thread. Entry points validate and copy their arguments into a job first, so a job
// owns everything it reads and nothing JavaScript does meanwhile can reach its memory.
#pragma once

#include <napi.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "device_buffer.h"
#include "launch.h"

namespace cutloss {

class Job {
 public:
  virtual ~Job() = default;
  virtual void run() = 0;
  virtual Napi::Value result(Napi::Env env) = 0;
};

/** Runs the job on the calling (JS) thread and returns its result. */
Napi::Value runNow(Napi::Env env, std::unique_ptr<Job> job);
/** Queues the job on the libuv pool; returns a Promise of its result. */
Napi::Value runLater(Napi::Env env, std::unique_ptr<Job> job);

/**
 * Kernel launches over buffers it keeps alive; its outputs get ids only when it succeeded.
 * A single unnamed output is returned as its id, named outputs as { name: id }, none as undefined.
 */
class KernelJob : public Job {
 public:
  explicit KernelJob(Backend backend) : backend_(backend) {}

  Backend backend() const { return backend_; }
  void keep(std::shared_ptr<DeviceBuffer> input) { inputs_.push_back(std::move(input)); }
  /** A zero-filled output of `bytes`; returns its device pointer. */
  void* output(size_t bytes, const char* name = nullptr);
  /**
   * A caller's buffer as an output (options.out): written in place and kept alive until the job
   * ends; result() returns no id for it, the caller holds one already. Not zero-filled.
   */
  void* outputInto(std::shared_ptr<DeviceBuffer> buffer) {
    void* data = buffer->data();
    inputs_.push_back(std::move(buffer));
    return data;
  }
  void addState(const char* name, std::shared_ptr<OpState> state) { states_.emplace_back(name, std::move(state)); }
  /** No launch when there is nothing to compute (zero rows): grids of size 0 are invalid. */
  void setLaunch(KernelLaunch launch) { launch_ = std::move(launch); }

  void run() override;
  Napi::Value result(Napi::Env env) override;

 private:
  Backend backend_;
  KernelLaunch launch_;
  std::vector<std::shared_ptr<DeviceBuffer>> inputs_;
  std::vector<std::pair<const char*, std::shared_ptr<DeviceBuffer>>> outputs_;
  std::vector<std::pair<const char*, std::shared_ptr<OpState>>> states_;
};

}  // namespace cutloss
