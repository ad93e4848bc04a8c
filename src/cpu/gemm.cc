#include "gemm.h"

#include <sys/mman.h>
#include <sys/resource.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "clones.h"
#include "parallel.h"

#if CUTLOSS_WITH_OPENBLAS
#include <cblas.h>
#endif

namespace cutloss::cpu {

// ---------------------------------------------------------------- OpenBLAS kernel choice
//
// OpenBLAS (DYNAMIC_ARCH) picks its kernels once, in a constructor that runs when the addon
// is loaded, from CPUID or from OPENBLAS_CORETYPE. Debian's 0.3.21 does not know Zen 4 or
// recent Xeons and falls back to its Haswell or generic kernels, at a half or a fifth of the
// speed of its AVX-512 (SkylakeX) kernels. This copy of OpenBLAS is private to cutloss, so
// cutloss chooses: SkylakeX where the CPU and the OS support AVX-512 F, BW, DQ and VL, else
// OpenBLAS's own choice; CUTLOSS_OPENBLAS_CORETYPE overrides both. The choice is handed over
// through OPENBLAS_CORETYPE by a constructor that runs before OpenBLAS's (priority 101 runs
// before unprioritized constructors), and the variable is put back once the addon is
// initialized, so child processes see the environment they had.

#if CUTLOSS_WITH_OPENBLAS
namespace {

struct BlasChoice {
  bool changedEnvironment = false;
  bool hadOriginal = false;
  std::string original;  // OPENBLAS_CORETYPE as the process had it
  std::string note;
};

BlasChoice& blasChoice() {
  static BlasChoice choice;
  return choice;
}

bool cpuHasAvx512ForOpenblas() {
#if defined(__GNUC__) && defined(__x86_64__)
  __builtin_cpu_init();  // required before __builtin_cpu_supports in a constructor
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
#else
  return false;
#endif
}

__attribute__((constructor(101))) void chooseOpenblasCore() {
  BlasChoice& c = blasChoice();
  const char* original = std::getenv("OPENBLAS_CORETYPE");
  c.hadOriginal = original != nullptr;
  if (original != nullptr) c.original = original;
  const char* own = std::getenv("CUTLOSS_OPENBLAS_CORETYPE");
  std::string pick;
  if (own != nullptr && *own != '\0') {
    pick = own;
    c.note = std::string("CUTLOSS_OPENBLAS_CORETYPE=") + own;
  } else if (cpuHasAvx512ForOpenblas()) {
    pick = "SkylakeX";
    c.note = "chosen by cutloss: the CPU has AVX-512 F/BW/DQ/VL";
    if (c.hadOriginal && c.original != pick) {
      c.note += " (OPENBLAS_CORETYPE=" + c.original + " is for the system's OpenBLAS; set CUTLOSS_OPENBLAS_CORETYPE to choose)";
    }
  } else {
    c.note = c.hadOriginal ? "OPENBLAS_CORETYPE=" + c.original : "OpenBLAS's own CPU detection";
    return;
  }
  setenv("OPENBLAS_CORETYPE", pick.c_str(), 1);
  c.changedEnvironment = true;
}

}  // namespace
#endif

void restoreBlasEnvironment() {
#if CUTLOSS_WITH_OPENBLAS
  BlasChoice& c = blasChoice();
  if (!c.changedEnvironment) return;
  if (c.hadOriginal) {
    setenv("OPENBLAS_CORETYPE", c.original.c_str(), 1);
  } else {
    unsetenv("OPENBLAS_CORETYPE");
  }
  c.changedEnvironment = false;
#endif
}

// ---------------------------------------------------------------- portable packed GEMM
//
// The classic blocking (Goto & van de Geijn): a kc × nc panel of op(B) packed into strips
// of kNR columns, an mc × kc block of op(A) packed into strips of kMR rows, and a kMR × kNR
// register tile accumulated over kc. GCC vector extensions give the tile in whole SIMD
// registers in every clone (16 floats: one zmm, two ymm or four xmm).

namespace {

constexpr int kMR = 8;
constexpr int kNR = 16;
constexpr int64_t kKC = 256;
constexpr int64_t kMC = 128;   // multiple of kMR
constexpr int64_t kNC = 4096;  // multiple of kNR
constexpr int64_t kNSub = 512;  // columns of C per parallel task, multiple of kNR

typedef float Lane16 __attribute__((vector_size(64)));

/** acc[i] += a[k·kMR + i] · b[k·kNR .. +16], then C tile = (beta·C or C) + alpha·acc. */
CUTLOSS_CPU_CLONES void microKernel(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, int mr, int nr,
                                    float alpha, float beta, bool first) {
  Lane16 acc[kMR];
  for (int i = 0; i < kMR; i++) acc[i] = Lane16{};
  for (int64_t k = 0; k < kc; k++) {
    Lane16 bk;
    std::memcpy(&bk, b + k * kNR, sizeof bk);
    const float* ak = a + k * kMR;
    for (int i = 0; i < kMR; i++) acc[i] += ak[i] * bk;
  }
  for (int i = 0; i < mr; i++) {
    float* ci = c + i * ldc;
    float row[kNR];
    std::memcpy(row, &acc[i], sizeof row);
    for (int j = 0; j < nr; j++) {
      const float v = alpha * row[j];
      if (!first) ci[j] += v;
      else ci[j] = beta == 0.0f ? v : beta * ci[j] + v;
    }
  }
}

/** The packed product on this thread: blocks of kNC columns, kKC of the sum, kMC rows. */
void portableSgemmSerial(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                         int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {
    for (int64_t i = 0; i < M; i++) {
      for (int64_t j = 0; j < N; j++) C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
    }
    return;
  }
  thread_local std::vector<float> packedB, packedA;
  packedB.resize(static_cast<size_t>(kKC * kNC));
  packedA.resize(static_cast<size_t>(kKC * kMC));
  for (int64_t j0 = 0; j0 < N; j0 += kNC) {
    const int64_t nc = N - j0 < kNC ? N - j0 : kNC;
    for (int64_t p0 = 0; p0 < K; p0 += kKC) {
      const int64_t kc = K - p0 < kKC ? K - p0 : kKC;
      const bool first = p0 == 0;
      for (int64_t s = 0; s * kNR < nc; s++) {  // op(B)[p0.., j0..] in strips of kNR columns
        float* dst = packedB.data() + s * kc * kNR;
        for (int64_t k = 0; k < kc; k++) {
          for (int j = 0; j < kNR; j++) {
            const int64_t col = j0 + s * kNR + j;
            const int64_t row = p0 + k;
            dst[k * kNR + j] = col < j0 + nc ? (transB ? B[col * ldb + row] : B[row * ldb + col]) : 0.0f;
          }
        }
      }
      for (int64_t i0 = 0; i0 < M; i0 += kMC) {
        const int64_t mc = M - i0 < kMC ? M - i0 : kMC;
        for (int64_t i = 0; i < mc; i += kMR) {  // op(A)[i0.., p0..] in strips of kMR rows
          float* dst = packedA.data() + (i / kMR) * kc * kMR;
          for (int64_t k = 0; k < kc; k++) {
            for (int r = 0; r < kMR; r++) {
              const int64_t row = i0 + i + r;
              const int64_t col = p0 + k;
              dst[k * kMR + r] = row < i0 + mc ? (transA ? A[col * lda + row] : A[row * lda + col]) : 0.0f;
            }
          }
        }
        for (int64_t i = 0; i < mc; i += kMR) {
          for (int64_t j = 0; j < nc; j += kNR) {
            const int mr = static_cast<int>(mc - i < kMR ? mc - i : kMR);
            const int nr = static_cast<int>(nc - j < kNR ? nc - j : kNR);
            microKernel(kc, packedA.data() + (i / kMR) * kc * kMR, packedB.data() + (j / kNR) * kc * kNR,
                        C + (i0 + i) * ldc + j0 + j, ldc, mr, nr, alpha, beta, first);
          }
        }
      }
    }
  }
}

/** On the backend's threads: column slices of C, each a serial product (op(A) is packed once per slice). */
void portableSgemm(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                   const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  const int64_t slice = kNSub;
  parallelFor((N + slice - 1) / slice, 1, [&](int64_t s0, int64_t s1, int) {
    const int64_t j0 = s0 * slice;
    const int64_t j1 = s1 * slice < N ? s1 * slice : N;
    const float* Bj = transB ? B + j0 * ldb : B + j0;
    portableSgemmSerial(transA, transB, M, j1 - j0, K, alpha, A, lda, Bj, ldb, beta, C + j0, ldc);
  });
}

std::atomic<bool> gUsePortable{[] {
#if CUTLOSS_WITH_OPENBLAS
  const char* v = std::getenv("CUTLOSS_CPU_GEMM");
  return v != nullptr && std::strcmp(v, "portable") == 0;
#else
  return true;
#endif
}()};

#if CUTLOSS_WITH_OPENBLAS
// OpenBLAS maps a work buffer of this size for each thread that first runs a product, and when
// the mapping fails it retries forever. A mapping can fail only under an address-space limit
// (`ulimit -v`) or strict overcommit; there each call first maps and unmaps as much as the
// threads could ask for, and where that fails takes the portable kernel: slower, but it returns.
// Elsewhere the products (three per 512-column vocabulary slice of each row chunk: about a
// thousand per S2 call) pay one getrlimit each.
constexpr size_t kOpenblasBufferBytes = size_t{128} << 20;
std::atomic<uint64_t> gBlasBufferFallbacks{0};

bool mappingsCanFail() {
  // Read per call: a limit may be set from outside the process (prlimit) at any time.
  rlimit limit{};
  if (getrlimit(RLIMIT_AS, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY) return true;
  static const bool strictOvercommit = [] {
    FILE* f = std::fopen("/proc/sys/vm/overcommit_memory", "r");
    if (f == nullptr) return false;
    const int mode = std::fgetc(f);
    std::fclose(f);
    return mode == '2';
  }();
  return strictOvercommit;
}

bool openblasBuffersMappable() {
  if (!mappingsCanFail()) return true;
  const size_t bytes = kOpenblasBufferBytes * static_cast<size_t>(threadCount());
  void* probe = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (probe == MAP_FAILED) {
    gBlasBufferFallbacks.fetch_add(1);
    return false;
  }
  munmap(probe, bytes);
  return true;
}

/** OpenBLAS's product, where it may run; false when the caller should take the portable kernel. */
bool openblasSgemm(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                   int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (gUsePortable.load()) return false;
  constexpr int64_t kIntMax = 2147483647;
  if (M > kIntMax || N > kIntMax || K > kIntMax || lda > kIntMax || ldb > kIntMax || ldc > kIntMax) {
    throw std::length_error("sgemm: a dimension exceeds the BLAS's 32-bit integers");
  }
  if (M == 0 || N == 0) return true;
  if (!openblasBuffersMappable()) return false;
  cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
              static_cast<int>(M), static_cast<int>(N), static_cast<int>(K), alpha, A, static_cast<int>(lda), B,
              static_cast<int>(ldb), beta, C, static_cast<int>(ldc));
  return true;
}
#endif

}  // namespace

void sgemm(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
           const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
#if CUTLOSS_WITH_OPENBLAS
  if (openblasSgemm(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)) return;
#endif
  portableSgemm(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void sgemmSerial(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                 const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
#if CUTLOSS_WITH_OPENBLAS
  // one OpenBLAS thread per call here: see SerialGemmScope
  if (openblasSgemm(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)) return;
#endif
  portableSgemmSerial(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

SerialGemmScope::SerialGemmScope() { setGemmThreads(1); }
SerialGemmScope::~SerialGemmScope() { setGemmThreads(threadCount()); }

bool setGemm(const std::string& name) {
  if (name == "portable") {
    gUsePortable.store(true);
    return true;
  }
#if CUTLOSS_WITH_OPENBLAS
  if (name == "blas") {
    gUsePortable.store(false);
    return true;
  }
#endif
  return false;
}

void setGemmThreads(int n) {
#if CUTLOSS_WITH_OPENBLAS
  openblas_set_num_threads(n);
#else
  (void)n;
#endif
}

const char* simdLevel() {
#if CUTLOSS_CPU_HAS_CLONES
  __builtin_cpu_init();
  if (__builtin_cpu_supports("x86-64-v4")) return "avx512 (x86-64-v4)";
  if (__builtin_cpu_supports("x86-64-v3")) return "avx2+fma (x86-64-v3)";
  return "sse2 (x86-64 baseline)";
#elif defined(__aarch64__)
  return "neon (aarch64 baseline)";
#else
  return "compiler default";
#endif
}

GemmInfo gemmInfo() {
  GemmInfo info;
#if CUTLOSS_WITH_OPENBLAS
  info.blasLinked = true;
  if (!gUsePortable.load()) {
    std::string config = openblas_get_config();
    // "OpenBLAS 0.3.21 DYNAMIC_ARCH NO_AFFINITY SkylakeX MAX_THREADS=64": keep name and version
    size_t second = config.find(' ', config.find(' ') + 1);
    info.library = (second == std::string::npos ? config : config.substr(0, second)) + " (linked statically)";
    info.kernel = openblas_get_corename();
    info.kernelNote = blasChoice().note;
    if (const uint64_t fallbacks = gBlasBufferFallbacks.load(); fallbacks > 0) {
      info.kernelNote += "; " + std::to_string(fallbacks) +
                         " products took the portable kernel: OpenBLAS's work buffers could not be mapped "
                         "(an address-space limit?)";
    }
    return info;
  }
  info.kernelNote = "OpenBLAS is linked but the portable kernel was chosen (CUTLOSS_CPU_GEMM=portable or setGemm)";
#else
  info.blasLinked = false;
  info.kernelNote = "OpenBLAS was not found when the addon was built (install libopenblas-dev and rebuild)";
#endif
  info.library = "portable (cutloss's packed kernel)";
  info.kernel = simdLevel();
  return info;
}

}  // namespace cutloss::cpu
