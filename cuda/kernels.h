// Host-side entry points of the CUDA kernels. Every function exists twice with the same
// signature: cutloss::gpu (nvcc, real device memory) and cutloss::emu (the SIMT emulation,
// host memory). Pointers are device pointers of the respective backend; matrices are
// row-major with int64 sizes (N×V may exceed 2^31). Inputs are validated by the caller
// (src/); these throw cutloss::KernelError on a launch or runtime failure.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace cutloss {

enum class DType : int32_t { F32 = 0, BF16 = 1 };

struct MatrixRef {
  const void* data;
  DType dtype;
  int64_t rows;
  int64_t cols;
};

struct MutMatrixRef {
  void* data;
  DType dtype;
  int64_t rows;
  int64_t cols;
};

/** cudaStream_t on the GPU; ignored by the emulator. */
using Stream = void*;

class KernelError : public std::runtime_error {
 public:
  KernelError(int code, const std::string& name, const std::string& message)
      : std::runtime_error(message), code(code), name(name) {}
  int code;          // cudaError_t value, or -1 for an emulator error
  std::string name;  // e.g. "cudaErrorInvalidValue", "simt::Error"
};

struct SoftmaxParams {
  float invTemperature = 1.0f;
  /** Device [rows × cols] (or [cols] when maskShared), 0 = masked; null = no mask. */
  const uint8_t* mask = nullptr;
  bool maskShared = false;
};

/** Resolved loss options (lib/options.ts ResolvedLossOptions); see cuda/math/loss.cuh. */
struct LossParams {
  int32_t vocab = 0;
  int32_t normalizer = 0;  // 0 softmax, 1 stablemax, 2 sparsemax
  float smoothing = 0.0f;
  float focalGamma = 0.0f;
  float polyEpsilon = 0.0f;
  float zLoss = 0.0f;
  float squentropy = 0.0f;  // 1 or 0
  float softcap = 0.0f;     // 0 = off
  float invTemperature = 1.0f;
  int32_t ignoreIndex = -100;
  const float* classWeights = nullptr;  // device [V], or null
  float sumWeights = 0.0f;              // Σ_j w_j (V when unweighted)
};

/** Per-row statistics the loss forward leaves for its backward (kRowStatFloats floats a row). */
constexpr int kRowStatFloats = 16;

struct CrossEntropyForwardOut {
  float* lse;         // [N]
  float* weighted;    // [N] F·C (0 for ignored rows)
  float* unweighted;  // [N] U
  float* rowStats;    // [N × kRowStatFloats]
};

// ---------------------------------------------------------------- fused linear + cross-entropy
// cuda/linear_cross_entropy.cu: the loss of E·Wᵀ + b and its gradients without the N×V logits.
// The host plans the launch once (tiles, vocabulary splits, workspace layout) with
// linearCrossEntropyPlan, so the binding allocates and reports the very workspace the launcher
// carves. Everything in it is O(N + V) (plus fp32 gradient accumulators for bf16 outputs).

/** Which tile product the fused kernels use (cuda/tile_gemm.cuh). */
enum class TileGemm : int32_t {
  Auto = 0,  // tensor cores for bf16 E and W, and for f32 ones when tf32 is set; FMA otherwise
  Fma = 1,   // fp32 FMAs: exact fp32 products
  Wmma = 2,  // nvcuda::wmma with fp32 accumulation: bf16 operands when E and W are bf16, else tf32
};

struct LinearCeConfig {
  /** Backward tiles whose every |∂loss_i/∂z| / max(|s_W|, |s_U|) is below it are skipped; 0 = exact. */
  float filterEps = 0.0f;
  /** Gradients by a fixed-order reduction (each output tile has one owner) instead of atomics. */
  bool deterministic = false;
  /** With TileGemm::Auto: f32 inputs through tf32 tensor cores. */
  bool tf32 = false;
  TileGemm gemm = TileGemm::Auto;
  /** How many blocks share a row tile's vocabulary; 0 = chosen from the shape. */
  int32_t vocabSplits = 0;
};

/** Logit tiles are kLinearCeTile rows × kLinearCeTile classes. */
constexpr int kLinearCeTile = 64;
/** The forward's split count aims at this many blocks (a few waves on 132 SMs) ... */
constexpr int64_t kLinearCeTargetBlocks = 1024;
/** ... and never exceeds this, so per-split partials stay O(N). */
constexpr int32_t kLinearCeMaxSplits = 64;
/** Sparsemax candidates (logits within 1 of the running max) kept per row and split. */
constexpr int32_t kLinearCeCandidates = 64;
/** Floats per row and split of the forward's partial reduction. */
constexpr int32_t kLinearCePartialFloats = 8;
/** Words of counters at the start of the workspace: tiles visited, tiles skipped, rows left to Michelot, passes,
 *  blocks of the tensor-core (mma) forward, blocks of the mma backward. */
constexpr int32_t kLinearCeCounters = 6;

/** Byte offsets into the workspace (kLinearCeAbsent where a part is not needed). */
struct LinearCePlan {
  int64_t rowTiles = 0;
  int64_t vocabTiles = 0;
  int32_t splits = 1;
  int32_t tilesPerSplit = 1;
  size_t counters = 0;    // uint32 [kLinearCeCounters]
  size_t rowStats = 0;    // float [N × kRowStatFloats]
  size_t partials = 0;    // float [splits × N × kLinearCePartialFloats]
  size_t candidates = 0;  // float [splits × N × kLinearCeCandidates], sparsemax only
  size_t michelot = 0;    // float [splits × N × 4], sparsemax only
  size_t dEAccum = 0;     // float [N × D], when dE is bf16
  size_t dWAccum = 0;     // float [V × D], when dW is bf16
  size_t bytes = 0;
};
constexpr size_t kLinearCeAbsent = ~size_t{0};

/**
 * The launch plan and workspace layout of linearCrossEntropy for E [N × D], W [V × D]. The
 * split count is a function of the shape alone (not of the device), so results do not depend
 * on which GPU runs them.
 */
inline LinearCePlan linearCrossEntropyPlan(int64_t N, int64_t D, int64_t V, int32_t normalizer, const LinearCeConfig& c,
                                           bool withGrad, DType dEType, DType dWType) {
  LinearCePlan p;
  p.rowTiles = (N + kLinearCeTile - 1) / kLinearCeTile;
  p.vocabTiles = (V + kLinearCeTile - 1) / kLinearCeTile;
  int64_t splits = c.vocabSplits > 0 ? c.vocabSplits
                                     : (kLinearCeTargetBlocks + (p.rowTiles > 0 ? p.rowTiles : 1) - 1) /
                                           (p.rowTiles > 0 ? p.rowTiles : 1);
  if (splits > kLinearCeMaxSplits) splits = kLinearCeMaxSplits;
  if (splits > p.vocabTiles) splits = p.vocabTiles;
  if (splits < 1) splits = 1;
  const int64_t perSplit = p.vocabTiles > 0 ? (p.vocabTiles + splits - 1) / splits : 1;
  p.tilesPerSplit = static_cast<int32_t>(perSplit);
  p.splits = static_cast<int32_t>(p.vocabTiles > 0 ? (p.vocabTiles + perSplit - 1) / perSplit : 1);  // none empty
  const auto n = static_cast<size_t>(N);
  const auto s = static_cast<size_t>(p.splits);
  size_t at = 0;
  const auto take = [&at](size_t bytes) {
    const size_t offset = at;
    at += (bytes + 255) & ~size_t{255};  // 256-byte aligned parts
    return offset;
  };
  p.counters = take(kLinearCeCounters * sizeof(uint32_t));
  p.rowStats = take(n * kRowStatFloats * sizeof(float));
  p.partials = take(s * n * kLinearCePartialFloats * sizeof(float));
  const bool sparse = normalizer == 2;
  p.candidates = sparse ? take(s * n * kLinearCeCandidates * sizeof(float)) : kLinearCeAbsent;
  p.michelot = sparse ? take(s * n * 4 * sizeof(float)) : kLinearCeAbsent;
  p.dEAccum = withGrad && dEType == DType::BF16 ? take(n * static_cast<size_t>(D) * sizeof(float)) : kLinearCeAbsent;
  p.dWAccum = withGrad && dWType == DType::BF16 ? take(static_cast<size_t>(V) * static_cast<size_t>(D) * sizeof(float))
                                                : kLinearCeAbsent;
  p.bytes = at;
  return p;
}

/** Outputs of linearCrossEntropy; the gradients only when scaleWeighted is set. */
struct LinearCeOut {
  float* lse;         // [N]
  float* weighted;    // [N] F·C (0 for ignored rows)
  float* unweighted;  // [N] U
  const float* scaleWeighted = nullptr;    // [N] s_W, or null: the forward only
  const float* scaleUnweighted = nullptr;  // [N] s_U
  MutMatrixRef dE{};                       // [N × D], in its dtype
  MutMatrixRef dW{};                       // [V × D], in its dtype
  float* dBias = nullptr;                  // [V], or null
};

#define CUTLOSS_DECLARE_KERNELS                                                                              \
  void logSumExp(const MatrixRef& x, const SoftmaxParams& p, float* out, Stream s);                         \
  void softmax(const MatrixRef& x, const SoftmaxParams& p, bool log, const MutMatrixRef& y, Stream s);      \
  void softmaxBackward(const MatrixRef& x, const MatrixRef& dy, const SoftmaxParams& p, bool log,           \
                       const MutMatrixRef& dx, Stream s);                                                   \
  void stablemax(const MatrixRef& x, bool log, const MutMatrixRef& y, Stream s);                            \
  void stablemaxBackward(const MatrixRef& x, const MatrixRef& dy, bool log, const MutMatrixRef& dx, Stream s); \
  void sparsemax(const MatrixRef& x, const MutMatrixRef& y, Stream s);                                      \
  void sparsemaxBackward(const MatrixRef& x, const MatrixRef& dy, const MutMatrixRef& dx, Stream s);        \
  void entmax15(const MatrixRef& x, const MutMatrixRef& y, Stream s);                                       \
  void entmax15Backward(const MatrixRef& x, const MatrixRef& dy, const MutMatrixRef& dx, Stream s);         \
  void gumbelSoftmax(const MatrixRef& x, float tau, bool hard, uint64_t seed, const MutMatrixRef& y, Stream s); \
  void gumbelSoftmaxBackward(const MatrixRef& x, const MatrixRef& dy, float tau, uint64_t seed,             \
                             const MutMatrixRef& dx, Stream s);                                             \
  /* Cross-entropy from logits: the forward reduces each row once (online log-sum-exp); the  */            \
  /* host then forms the reduction scales; the backward writes dLogits in a second pass.     */            \
  void crossEntropyForward(const MatrixRef& logits, const int32_t* labels, const LossParams& p,             \
                           const CrossEntropyForwardOut& out, Stream s);                                    \
  void crossEntropyBackward(const MatrixRef& logits, const int32_t* labels, const LossParams& p,            \
                            const float* rowStats, const float* scaleWeighted, const float* scaleUnweighted, \
                            const MutMatrixRef& dLogits, Stream s);                                        \
  /* Fused linear + cross-entropy: E [N × D], W [V × D], bias [V] or null; workspace of      */            \
  /* linearCrossEntropyPlan(...).bytes. With gradients, forward and backward in one call.    */            \
  void linearCrossEntropy(const MatrixRef& E, const MatrixRef& W, const float* bias, const int32_t* labels,  \
                          const LossParams& p, const LinearCeConfig& c, const LinearCeOut& out, void* workspace, \
                          Stream s);

namespace gpu {
CUTLOSS_DECLARE_KERNELS
}  // namespace gpu

namespace emu {
CUTLOSS_DECLARE_KERNELS
}  // namespace emu

}  // namespace cutloss
