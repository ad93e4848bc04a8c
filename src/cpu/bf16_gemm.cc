#include "cpu_math.h"
// after cpu_math.h, which must come first
#include <dlfcn.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <unordered_map>
#include <vector>

#include "../../cuda/math/bf16.cuh"
#include "bf16_gemm.h"
#include "bf16_gemm_avx512.h"
#include "clones.h"
#include "gemm.h"

// oneDNN's C API, declared by Debian's libdnnl-dev; without it the build has the portable path only.
#if defined(__linux__) && __has_include(<oneapi/dnnl/dnnl.h>)
#include <oneapi/dnnl/dnnl.h>
#define CUTLOSS_WITH_ONEDNN 1
#else
#define CUTLOSS_WITH_ONEDNN 0
#endif

namespace cutloss::cpu {

CUTLOSS_CPU_CLONES void roundToBf16(const float* src, int64_t ldSrc, int64_t rows, int64_t cols, uint16_t* hi,
                                    uint16_t* lo) {
  for (int64_t i = 0; i < rows; i++) {
    const float* s = src + i * ldSrc;
    uint16_t* h = hi + i * cols;
    if (lo == nullptr) {
#pragma omp simd
      for (int64_t j = 0; j < cols; j++) h[j] = f32ToBf16(s[j]);
      continue;
    }
    uint16_t* l = lo + i * cols;
#pragma omp simd
    for (int64_t j = 0; j < cols; j++) {
      const uint16_t b = f32ToBf16(s[j]);
      const float rest = s[j] - bf16ToF32(b);  // exact; NaN where s[j] is ±inf or NaN
      h[j] = b;
      l[j] = rest == rest ? f32ToBf16(rest) : 0;
    }
  }
}

namespace {

/** Which bf16 GEMM runs: the best this machine has (Auto), oneDNN's (OneDnn), or none (Off: widened). */
enum class Bf16Choice { Auto, OneDnn, Off };

Bf16Choice choiceNamed(const char* v) {
  if (v != nullptr && std::strcmp(v, "off") == 0) return Bf16Choice::Off;
  if (v != nullptr && std::strcmp(v, "onednn") == 0) return Bf16Choice::OneDnn;
  return Bf16Choice::Auto;
}

std::atomic<Bf16Choice> gChoice{choiceNamed(std::getenv("CUTLOSS_CPU_BF16"))};
std::atomic<bool> gGradientSplit{[] {
  const char* v = std::getenv("CUTLOSS_CPU_BF16");
  return v != nullptr && std::strcmp(v, "split") == 0;
}()};

/** The portable path for one product: A and B widened on this thread, the fp32 GEMM. */
void widenedGemm(bool transA, bool transB, int64_t M, int64_t N, int64_t K, const uint16_t* A, int64_t lda,
                 const uint16_t* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  thread_local std::vector<float> a, b;
  const int64_t aRows = transA ? K : M, aCols = transA ? M : K;
  const int64_t bRows = transB ? N : K, bCols = transB ? K : N;
  a.resize(static_cast<size_t>(aRows * aCols));
  b.resize(static_cast<size_t>(bRows * bCols));
  for (int64_t i = 0; i < aRows; i++) {
    for (int64_t j = 0; j < aCols; j++) a[i * aCols + j] = bf16ToF32(A[i * lda + j]);
  }
  for (int64_t i = 0; i < bRows; i++) {
    for (int64_t j = 0; j < bCols; j++) b[i * bCols + j] = bf16ToF32(B[i * ldb + j]);
  }
  sgemmSerial(transA, transB, M, N, K, 1.0f, a.data(), aCols, b.data(), bCols, beta, C, ldc);
}

#if CUTLOSS_WITH_ONEDNN

// The oneDNN entry points used, one list for the members and their dlsym.
#define CUTLOSS_DNNL_FNS(X) \
  X(dnnl_engine_create) \
  X(dnnl_stream_create) \
  X(dnnl_stream_wait) \
  X(dnnl_memory_desc_init_by_strides) \
  X(dnnl_matmul_desc_init) \
  X(dnnl_primitive_attr_create) \
  X(dnnl_primitive_attr_destroy) \
  X(dnnl_primitive_attr_set_post_ops) \
  X(dnnl_post_ops_create) \
  X(dnnl_post_ops_append_sum) \
  X(dnnl_post_ops_destroy) \
  X(dnnl_primitive_desc_create) \
  X(dnnl_primitive_desc_destroy) \
  X(dnnl_primitive_desc_query) \
  X(dnnl_primitive_create) \
  X(dnnl_primitive_destroy) \
  X(dnnl_primitive_execute) \
  X(dnnl_memory_create) \
  X(dnnl_memory_destroy) \
  X(dnnl_memory_set_data_handle) \
  X(dnnl_get_effective_cpu_isa) \
  X(dnnl_version)

struct OneDnn {
  bool loaded = false;
  std::string why;  // when not loaded, or loaded without a bf16 ISA
  std::string version;
  std::string isa;
  bool bf16Isa = false;
  void* handle = nullptr;
  dnnl_engine_t engine = nullptr;
#define CUTLOSS_DNNL_FN(name) decltype(&::name) name = nullptr;
  CUTLOSS_DNNL_FNS(CUTLOSS_DNNL_FN)
#undef CUTLOSS_DNNL_FN
  void (*ompSetNumThreads)(int) = nullptr;
};

const char* isaName(dnnl_cpu_isa_t isa) {
  switch (isa) {
    case dnnl_cpu_isa_avx512_core_amx: return "avx512_core_amx";
    case dnnl_cpu_isa_avx512_core_bf16: return "avx512_core_bf16";
    case dnnl_cpu_isa_avx512_core_vnni: return "avx512_core_vnni";
    case dnnl_cpu_isa_avx512_core: return "avx512_core";
    case dnnl_cpu_isa_avx2_vnni: return "avx2_vnni";
    case dnnl_cpu_isa_avx2: return "avx2";
    default: return "older than avx2";
  }
}

OneDnn& oneDnn() {
  static OneDnn d = [] {
    OneDnn o;
    o.handle = dlopen("libdnnl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (o.handle == nullptr) {
      o.why = "libdnnl.so.2 not found (install libdnnl2)";
      return o;
    }
    bool all = true;
#define CUTLOSS_DNNL_FN(name) \
  o.name = reinterpret_cast<decltype(o.name)>(dlsym(o.handle, #name)); \
  all = all && o.name != nullptr;
    CUTLOSS_DNNL_FNS(CUTLOSS_DNNL_FN)
#undef CUTLOSS_DNNL_FN
    // Debian's build threads with OpenMP: each product runs on its caller alone (see bf16GemmSerial)
    o.ompSetNumThreads = reinterpret_cast<void (*)(int)>(dlsym(o.handle, "omp_set_num_threads"));
    if (!all || o.ompSetNumThreads == nullptr) {
      o.why = "libdnnl.so.2 lacks the oneDNN 2.x C API this build was compiled against";
      return o;
    }
    const dnnl_version_t* v = o.dnnl_version();
    o.version = std::to_string(v->major) + "." + std::to_string(v->minor) + "." + std::to_string(v->patch);
    if (v->major != DNNL_VERSION_MAJOR) {
      o.why = "oneDNN " + o.version + " is not the major version this build was compiled against (" +
              std::to_string(DNNL_VERSION_MAJOR) + ")";
      return o;
    }
    if (o.dnnl_engine_create(&o.engine, dnnl_cpu, 0) != dnnl_success) {
      o.why = "oneDNN could not create a CPU engine";
      return o;
    }
    const dnnl_cpu_isa_t isa = o.dnnl_get_effective_cpu_isa();
    o.isa = isaName(isa);
    o.bf16Isa = (isa & dnnl_cpu_isa_avx512_core_bf16) == dnnl_cpu_isa_avx512_core_bf16;
    o.loaded = true;
    if (!o.bf16Isa) o.why = "oneDNN " + o.version + " finds no bf16 instructions (ISA " + o.isa + ", ONEDNN_MAX_CPU_ISA caps it)";
    return o;
  }();
  return d;
}

/** One product shape's primitive and its memory objects (their data handles set per call). */
struct Product {
  dnnl_primitive_t primitive = nullptr;
  dnnl_memory_t a = nullptr, b = nullptr, c = nullptr;
  bool usable = false;  // false: oneDNN offers only its reference kernel (or nothing) for it
};

struct ProductKey {
  int64_t v[9];
  bool operator==(const ProductKey& o) const { return std::memcmp(v, o.v, sizeof v) == 0; }
};
struct ProductKeyHash {
  size_t operator()(const ProductKey& k) const {
    size_t h = 1469598103934665603ull;
    for (int64_t x : k.v) h = (h ^ static_cast<size_t>(x)) * 1099511628211ull;
    return h;
  }
};

/** Per thread: its stream and the primitives of the shapes it has run (a call's slices share a few). */
struct ThreadState {
  dnnl_stream_t stream = nullptr;
  bool singleThreaded = false;
  std::unordered_map<ProductKey, Product, ProductKeyHash> products;

  void clear() {
    OneDnn& d = oneDnn();
    for (auto& [k, p] : products) {
      if (p.a != nullptr) d.dnnl_memory_destroy(p.a);
      if (p.b != nullptr) d.dnnl_memory_destroy(p.b);
      if (p.c != nullptr) d.dnnl_memory_destroy(p.c);
      if (p.primitive != nullptr) d.dnnl_primitive_destroy(p.primitive);
    }
    products.clear();
  }
};

constexpr size_t kMaxCachedProducts = 64;

Product makeProduct(OneDnn& d, bool transA, bool transB, int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb,
                    int64_t ldc, bool accumulate) {
  Product p;
  dnnl_memory_desc_t a, b, c;
  const dnnl_dims_t aDims = {M, K}, aStrides = {transA ? 1 : lda, transA ? lda : 1};
  const dnnl_dims_t bDims = {K, N}, bStrides = {transB ? 1 : ldb, transB ? ldb : 1};
  const dnnl_dims_t cDims = {M, N}, cStrides = {ldc, 1};
  if (d.dnnl_memory_desc_init_by_strides(&a, 2, aDims, dnnl_bf16, aStrides) != dnnl_success ||
      d.dnnl_memory_desc_init_by_strides(&b, 2, bDims, dnnl_bf16, bStrides) != dnnl_success ||
      d.dnnl_memory_desc_init_by_strides(&c, 2, cDims, dnnl_f32, cStrides) != dnnl_success) {
    return p;
  }
  dnnl_matmul_desc_t desc;
  if (d.dnnl_matmul_desc_init(&desc, &a, &b, nullptr, &c) != dnnl_success) return p;
  dnnl_primitive_attr_t attr = nullptr;
  if (d.dnnl_primitive_attr_create(&attr) != dnnl_success) return p;
  if (accumulate) {  // C += A·B: the sum post-op
    dnnl_post_ops_t ops = nullptr;
    if (d.dnnl_post_ops_create(&ops) == dnnl_success) {
      d.dnnl_post_ops_append_sum(ops, 1.0f);
      d.dnnl_primitive_attr_set_post_ops(attr, ops);
      d.dnnl_post_ops_destroy(ops);
    }
  }
  dnnl_primitive_desc_t pd = nullptr;
  const dnnl_status_t made = d.dnnl_primitive_desc_create(&pd, &desc, attr, d.engine, nullptr);
  d.dnnl_primitive_attr_destroy(attr);
  if (made != dnnl_success) return p;
  const char* impl = nullptr;
  d.dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl);
  const bool reference = impl == nullptr || std::strncmp(impl, "ref", 3) == 0;
  if (!reference && d.dnnl_primitive_create(&p.primitive, pd) == dnnl_success &&
      d.dnnl_memory_create(&p.a, &a, d.engine, DNNL_MEMORY_NONE) == dnnl_success &&
      d.dnnl_memory_create(&p.b, &b, d.engine, DNNL_MEMORY_NONE) == dnnl_success &&
      d.dnnl_memory_create(&p.c, &c, d.engine, DNNL_MEMORY_NONE) == dnnl_success) {
    p.usable = true;
  }
  d.dnnl_primitive_desc_destroy(pd);
  return p;
}

/** The product on oneDNN; false where it has no bf16 kernel for it (the caller widens). */
bool oneDnnGemm(bool transA, bool transB, int64_t M, int64_t N, int64_t K, const uint16_t* A, int64_t lda,
                const uint16_t* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  OneDnn& d = oneDnn();
  thread_local ThreadState t;
  if (!t.singleThreaded) {
    d.ompSetNumThreads(1);  // this thread's OpenMP team: itself (our pool splits the work)
    t.singleThreaded = true;
  }
  if (t.stream == nullptr && d.dnnl_stream_create(&t.stream, d.engine, dnnl_stream_default_flags) != dnnl_success) {
    t.stream = nullptr;
    return false;
  }
  const ProductKey key{{transA, transB, M, N, K, lda, ldb, ldc, beta != 0.0f}};
  auto it = t.products.find(key);
  if (it == t.products.end()) {
    if (t.products.size() >= kMaxCachedProducts) t.clear();
    it = t.products.emplace(key, makeProduct(d, transA, transB, M, N, K, lda, ldb, ldc, beta != 0.0f)).first;
  }
  Product& p = it->second;
  if (!p.usable) return false;
  d.dnnl_memory_set_data_handle(p.a, const_cast<uint16_t*>(A));
  d.dnnl_memory_set_data_handle(p.b, const_cast<uint16_t*>(B));
  d.dnnl_memory_set_data_handle(p.c, C);
  const dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, p.a}, {DNNL_ARG_WEIGHTS, p.b}, {DNNL_ARG_DST, p.c}};
  if (d.dnnl_primitive_execute(p.primitive, t.stream, 3, args) != dnnl_success ||
      d.dnnl_stream_wait(t.stream) != dnnl_success) {
    throw std::runtime_error("oneDNN's bf16 matmul failed");
  }
  return true;
}

#endif  // CUTLOSS_WITH_ONEDNN

}  // namespace

namespace {

enum class Bf16Engine { Portable, Avx512Bf16, OneDnn };

bool oneDnnServes() {
#if CUTLOSS_WITH_ONEDNN
  const OneDnn& d = oneDnn();
  return d.loaded && d.bf16Isa;
#else
  return false;
#endif
}

bool oneDnnHasAmx() {
#if CUTLOSS_WITH_ONEDNN
  return oneDnnServes() && oneDnn().isa == isaName(dnnl_cpu_isa_avx512_core_amx);
#else
  return false;
#endif
}

/**
 * AMX through oneDNN; else AVX512-BF16 through cutloss's kernel (oneDNN 2.6's reaches about half
 * its speed there); oneDNN alone when asked for; widened to fp32 where neither serves.
 */
Bf16Engine engine() {
  switch (gChoice.load()) {
    case Bf16Choice::Off: return Bf16Engine::Portable;
    case Bf16Choice::OneDnn: return oneDnnServes() ? Bf16Engine::OneDnn : Bf16Engine::Portable;
    case Bf16Choice::Auto: break;
  }
  if (oneDnnHasAmx()) return Bf16Engine::OneDnn;
  if (cpuHasAvx512Bf16()) return Bf16Engine::Avx512Bf16;
  return oneDnnServes() ? Bf16Engine::OneDnn : Bf16Engine::Portable;
}

}  // namespace

bool bf16GemmActive() { return engine() != Bf16Engine::Portable; }

void bf16GemmSerial(bool transA, bool transB, int64_t M, int64_t N, int64_t K, const uint16_t* A, int64_t lda,
                    const uint16_t* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  switch (engine()) {
    case Bf16Engine::Avx512Bf16:
      bf16GemmAvx512(transA, transB, M, N, K, A, lda, B, ldb, beta, C, ldc);
      return;
    case Bf16Engine::OneDnn:
#if CUTLOSS_WITH_ONEDNN
      if (K > 0 && oneDnnGemm(transA, transB, M, N, K, A, lda, B, ldb, beta, C, ldc)) return;
#endif
      break;
    case Bf16Engine::Portable: break;
  }
  widenedGemm(transA, transB, M, N, K, A, lda, B, ldb, beta, C, ldc);
}

int bf16GradientTerms() { return gGradientSplit.load() ? 2 : 1; }

bool setBf16Gemm(const std::string& name) {
  if (name != "auto" && name != "split" && name != "onednn" && name != "off") return false;
  gChoice.store(choiceNamed(name.c_str()));
  gGradientSplit.store(name == "split");
  return bf16GemmActive();
}

Bf16GemmInfo bf16GemmInfo() {
  Bf16GemmInfo info;
  const std::string gradient = gGradientSplit.load() ? "the logits' gradient as two bf16 terms (split)"
                                                     : "the logits' gradient rounded to bf16";
  switch (engine()) {
    case Bf16Engine::Avx512Bf16:
      info.path = "cutloss AVX512-BF16 kernel";
      info.isa = "avx512_bf16";
      info.note = "bf16 products on avx512_bf16 (vdpbf16ps), summed in fp32; " + gradient;
      return info;
    case Bf16Engine::OneDnn:
#if CUTLOSS_WITH_ONEDNN
      info.path = "oneDNN " + oneDnn().version + " (loaded at run time)";
      info.isa = oneDnn().isa;
      info.note = "bf16 products on " + info.isa + ", summed in fp32; " + gradient;
#endif
      return info;
    case Bf16Engine::Portable: break;
  }
  info.path = "portable (bf16 widened to fp32, the fp32 GEMM)";
  if (gChoice.load() == Bf16Choice::Off) {
    info.note = "CUTLOSS_CPU_BF16=off or setBf16Gemm('off')";
  } else {
#if CUTLOSS_WITH_ONEDNN
    info.note = gChoice.load() == Bf16Choice::OneDnn ? oneDnn().why : "no AVX512-BF16 here, and " + oneDnn().why;
#else
    info.note = "no AVX512-BF16 here, and built without oneDNN's headers (install libdnnl-dev and rebuild)";
#endif
  }
  return info;
}

}  // namespace cutloss::cpu
