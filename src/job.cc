#include "job.h"

#include "boundary.h"

namespace cutloss {

Napi::Value runNow(Napi::Env env, std::unique_ptr<Job> job) {
  job->run();
  return job->result(env);
}

namespace {

class JobWorker : public Napi::AsyncWorker {
 public:
  JobWorker(Napi::Env env, std::unique_ptr<Job> job)
      : Napi::AsyncWorker(env, "cutloss"), job_(std::move(job)), deferred_(Napi::Promise::Deferred::New(env)) {}

  Napi::Promise promise() const { return deferred_.Promise(); }

 protected:
  void Execute() override {
    try {
      job_->run();
    } catch (...) {  // nothing may escape onto a pool thread
      failure_ = currentFailure();
      SetError(failure_.message);
    }
  }

  void OnOK() override {
    settle([this] {
      try {
        deferred_.Resolve(job_->result(Env()));
      } catch (const Napi::Error& e) {
        deferred_.Reject(e.Value());
      } catch (...) {
        Failure f = currentFailure();
        deferred_.Reject(codedError(Env(), f.code, f.message).Value());
      }
    });
  }

  void OnError(const Napi::Error&) override {
    settle([this] { deferred_.Reject(codedError(Env(), failure_.code, failure_.message).Value()); });
  }

  /**
   * Runs `f` in a handle scope. Once JavaScript can no longer run (the worker thread that made
   * the call was terminated meanwhile) every N-API call throws and the promise cannot be
   * settled: nothing may escape into libuv, where it ends the whole process.
   */
  template <typename F>
  void settle(F f) {
    try {
      Napi::HandleScope scope(Env());
      f();
    } catch (...) {
    }
  }

 private:
  std::unique_ptr<Job> job_;
  Napi::Promise::Deferred deferred_;
  Failure failure_{"E_INTERNAL", ""};
};

}  // namespace

Napi::Value runLater(Napi::Env env, std::unique_ptr<Job> job) {
  auto* worker = new JobWorker(env, std::move(job));  // deletes itself after OnOK/OnError
  Napi::Promise promise = worker->promise();
  worker->Queue();
  return promise;
}

void* KernelJob::output(size_t bytes, const char* name) {
  auto buffer = DeviceBuffer::allocate(backend_, bytes);
  void* data = buffer->data();
  outputs_.emplace_back(name, std::move(buffer));
  return data;
}

void KernelJob::run() {
  if (launch_) runKernels(backend_, launch_);
}

Napi::Value KernelJob::result(Napi::Env env) {
  if (outputs_.empty() && states_.empty()) return env.Undefined();  // written into the caller's buffers
  if (outputs_.size() == 1 && outputs_[0].first == nullptr && states_.empty()) {
    return Napi::Number::New(env, handles::add(env, std::move(outputs_[0].second)));
  }
  Napi::Object out = Napi::Object::New(env);
  for (auto& [name, buffer] : outputs_) out.Set(name, Napi::Number::New(env, handles::add(env, std::move(buffer))));
  for (auto& [name, state] : states_) out.Set(name, Napi::Number::New(env, handles::add(env, std::move(state))));
  return out;
}

}  // namespace cutloss
