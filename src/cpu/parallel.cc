#include "parallel.h"

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <sched.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

#include "gemm.h"

namespace cutloss::cpu {

// ---------------------------------------------------------------- denormals

namespace {

#if defined(__x86_64__) || defined(__i386__)
constexpr uint32_t kFlushBits = 0x8040;  // MXCSR FTZ (bit 15) and DAZ (bit 6)
uint32_t readControl() { return _mm_getcsr(); }
void writeControl(uint32_t v) { _mm_setcsr(v); }
#elif defined(__aarch64__)
constexpr uint32_t kFlushBits = 1u << 24;  // FPCR.FZ
uint32_t readControl() {
  uint64_t v;
  __asm__ __volatile__("mrs %0, fpcr" : "=r"(v));
  return static_cast<uint32_t>(v);
}
void writeControl(uint32_t v) {
  uint64_t w = v;
  __asm__ __volatile__("msr fpcr, %0" : : "r"(w));
}
#else
constexpr uint32_t kFlushBits = 0;
uint32_t readControl() { return 0; }
void writeControl(uint32_t) {}
#endif

}  // namespace

bool flushesDenormals() { return kFlushBits != 0; }

// ---------------------------------------------------------------- the pool

namespace {

class Pool {
 public:
  ~Pool() { stop(); }

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  void resize(int threads) {
    stop();
    stopping_ = false;
    for (int i = 1; i < threads; i++) workers_.emplace_back([this, i] { work(i); });
  }

  void run(int64_t count, int64_t grain, const std::function<void(int64_t, int64_t, int)>& body) {
    if (grain < 1) grain = 1;
    if (workers_.empty() || count <= grain) {
      body(0, count, 0);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      body_ = &body;
      count_ = count;
      grain_ = grain;
      next_.store(0);
      busy_ = static_cast<int>(workers_.size());
      error_ = nullptr;
      generation_++;
    }
    wake_.notify_all();
    runPieces(0);
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return busy_ == 0; });
    body_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void stop() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  void runPieces(int worker) {
    for (;;) {
      const int64_t begin = next_.fetch_add(grain_);
      if (begin >= count_) return;
      const int64_t end = begin + grain_ < count_ ? begin + grain_ : count_;
      try {
        (*body_)(begin, end, worker);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!error_) error_ = std::current_exception();
      }
    }
  }

  void work(int worker) {
    writeControl(readControl() | kFlushBits);  // this thread only ever runs cutloss's kernels
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stopping_ || generation_ != seen; });
        if (stopping_) return;
        seen = generation_;
      }
      runPieces(worker);
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (--busy_ == 0) done_.notify_one();
      }
    }
  }

  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  bool stopping_ = false;
  uint64_t generation_ = 0;
  int busy_ = 0;
  const std::function<void(int64_t, int64_t, int)>* body_ = nullptr;
  int64_t count_ = 0;
  int64_t grain_ = 1;
  std::atomic<int64_t> next_{0};
  std::exception_ptr error_;
};

// One op at a time owns the pool (and the BLAS threads).
std::mutex gSessionMutex;
std::once_flag gPoolOnce;
Pool* gPool = nullptr;  // never destroyed: its workers must not be joined from static destructors
std::atomic<int> gThreads{0};

Pool& pool() {
  std::call_once(gPoolOnce, [] {
    gPool = new Pool();
    const int n = defaultThreadCount();
    gPool->resize(n);
    setGemmThreads(n);
    gThreads.store(n);
  });
  return *gPool;
}

}  // namespace

int defaultThreadCount() {
  if (const char* env = std::getenv("CUTLOSS_THREADS")) {
    char* end = nullptr;
    long n = std::strtol(env, &end, 10);
    if (end != env && *end == '\0' && n >= 1 && n <= kMaxThreads) return static_cast<int>(n);
  }
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n >= 1) return n < kMaxThreads ? n : kMaxThreads;
  }
#endif
  unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : (n < kMaxThreads ? static_cast<int>(n) : kMaxThreads);
}

int threadCount() {
  pool();
  return gThreads.load();
}

void setThreadCount(int n) {
  std::lock_guard<std::mutex> lock(gSessionMutex);
  Pool& p = pool();
  if (n == gThreads.load()) return;
  p.resize(n);
  setGemmThreads(n);
  gThreads.store(n);
}

void parallelFor(int64_t count, int64_t grain, const std::function<void(int64_t, int64_t, int)>& body) {
  if (count <= 0) return;
  pool().run(count, grain, body);  // the caller holds gSessionMutex through its CpuSession
}

CpuSession::CpuSession() {
  gSessionMutex.lock();
  pool();
  savedControl_ = readControl();
  writeControl(savedControl_ | kFlushBits);
}

CpuSession::~CpuSession() {
  writeControl(savedControl_);
  gSessionMutex.unlock();
}

}  // namespace cutloss::cpu
