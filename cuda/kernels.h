// Host-side entry points of the CUDA kernels. Every function exists twice with the same
// signature: cutloss::gpu (nvcc, real device memory) and cutloss::emu (the SIMT emulation,
// host memory). Pointers are device pointers of the respective backend; matrices are
// row-major with int64 sizes (N×V may exceed 2^31). Inputs are validated by the caller
// (src/); these throw cutloss::KernelError on a launch or runtime failure.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#include "math/margin.cuh"

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
  int32_t normalizer = 0;  // 0 softmax, 1 stablemax, 2 sparsemax, 3 gumbel (kNormalizer* of cuda/math/loss.cuh)
  float smoothing = 0.0f;
  float focalGamma = 0.0f;
  float polyEpsilon = 0.0f;
  float zLoss = 0.0f;
  float squentropy = 0.0f;  // 1 or 0
  float generalizedCE = 0.0f;  // q in (0, 1]; 0 = off
  float softcap = 0.0f;     // 0 = off
  float invTemperature = 1.0f;
  int32_t ignoreIndex = -100;
  const float* classWeights = nullptr;  // device [V], or null
  float sumWeights = 0.0f;              // Σ_j w_j (V when unweighted)
  LabelMargin labelMargin;              // margin softmax at the label (linear loss only); off by default
  float harmonicExponent = 0.0f;        // > 0: harmonic logits −(n/2)·log ‖e − w‖² (linear loss only); 0 = dot
};

/** Per-row statistics the loss forward leaves for its backward (kRowStatFloats floats a row). */
constexpr int kRowStatFloats = 17;

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
// carves. Everything in it is O(N + V) (plus fp32 gradient accumulators for bf16 outputs, and in
// deterministic mode partial dE sums of fewer than kLinearCeOwnerTargetTiles·64 rows).

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
  /** How many blocks share a row tile's vocabulary (the forward's, and deterministic dE's); 0 = chosen from the shape. */
  int32_t vocabSplits = 0;
};

/** Logit tiles are kLinearCeTile rows × kLinearCeTile classes. */
constexpr int kLinearCeTile = 64;
/** The forward's split count aims at this many blocks (a few waves on 132 SMs) ... */
constexpr int64_t kLinearCeTargetBlocks = 1024;
/** ... and never exceeds this, so per-split partials stay O(N). */
constexpr int32_t kLinearCeMaxSplits = 64;
/** Deterministic mode: the dE owner kernels split the vocabulary so that about this many 64-row tiles'
 *  worth of blocks run (half as many 128-row blocks on tensor cores) ... */
constexpr int64_t kLinearCeOwnerTargetTiles = 512;
/** ... in at most this many splits, whose partial dE sums meet in split order. */
constexpr int32_t kLinearCeMaxOwnerSplits = 16;
/** Sparsemax candidates (logits within 1 of the running max) kept per row and split. */
constexpr int32_t kLinearCeCandidates = 64;
/** Floats per row and split of the forward's partial reduction. */
constexpr int32_t kLinearCePartialFloats = 9;
/** Words of counters at the start of the workspace: tiles visited, tiles skipped, rows left to Michelot, passes,
 *  blocks of the tensor-core (mma) forward, blocks of the mma backward. */
constexpr int32_t kLinearCeCounters = 6;
/** Row chunks summed apart for the mean row of E that orders the vocabulary when filtering. */
constexpr int32_t kLinearCeMeanRowChunks = 32;

/** Byte offsets into the workspace (kLinearCeAbsent where a part is not needed). */
struct LinearCePlan {
  int64_t rowTiles = 0;
  int64_t vocabTiles = 0;
  int32_t splits = 1;
  int32_t tilesPerSplit = 1;
  int32_t ownerSplits = 1;         // deterministic backward: vocabulary splits of the dE owner kernels
  int32_t ownerTilesPerSplit = 1;  // ... and their 64-class tiles each
  size_t counters = 0;    // uint32 [kLinearCeCounters]
  size_t rowStats = 0;    // float [N × kRowStatFloats]
  size_t partials = 0;    // float [splits × N × kLinearCePartialFloats]
  size_t candidates = 0;  // float [splits × N × kLinearCeCandidates], sparsemax only
  size_t michelot = 0;    // float [splits × N × 4], sparsemax only
  size_t dEAccum = 0;     // float [N × D], when dE is bf16
  size_t dWAccum = 0;     // float [V × D], when dW is bf16
  size_t dEPartials = 0;  // float [(ownerSplits − 1) × N × D]: the deterministic dE of splits 1.., when there are 2 or more
  size_t meanRow = 0;     // float [kLinearCeMeanRowChunks × (D + 1)]: E's labelled rows' mean, when filtering gradients
  size_t orderKeys = 0;   // uint64 [V rounded up to a power of 2]: (mean logit, class) sort keys, likewise
  size_t order = 0;       // int32 [V]: classes by mean logit, descending: the backward's vocabulary order, likewise
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
  /** Splits of the vocabulary tiles: `requested`, or enough for about `target` tiles' worth of blocks; at most `most`, none empty. */
  const auto split = [&p, &c](int64_t target, int64_t most, int32_t& splits, int32_t& perSplit) {
    const int64_t rowTiles = p.rowTiles > 0 ? p.rowTiles : 1;
    int64_t n = c.vocabSplits > 0 ? c.vocabSplits : (target + rowTiles - 1) / rowTiles;
    if (n > most) n = most;
    if (n > p.vocabTiles) n = p.vocabTiles;
    if (n < 1) n = 1;
    const int64_t per = p.vocabTiles > 0 ? (p.vocabTiles + n - 1) / n : 1;
    perSplit = static_cast<int32_t>(per);
    splits = static_cast<int32_t>(p.vocabTiles > 0 ? (p.vocabTiles + per - 1) / per : 1);
  };
  split(kLinearCeTargetBlocks, kLinearCeMaxSplits, p.splits, p.tilesPerSplit);
  // Deterministic dE: a few row tiles alone would leave most SMs idle, so the vocabulary is split
  // and each split's dE goes to its own buffer, summed in split order. (splits − 1)·N stays
  // below kLinearCeOwnerTargetTiles·64 rows: the partials are bounded whatever N is.
  if (c.deterministic && withGrad) split(kLinearCeOwnerTargetTiles, kLinearCeMaxOwnerSplits, p.ownerSplits, p.ownerTilesPerSplit);
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
  p.dEPartials = p.ownerSplits > 1
                     ? take(static_cast<size_t>(p.ownerSplits - 1) * n * static_cast<size_t>(D) * sizeof(float))
                     : kLinearCeAbsent;
  // Filtering skips whole tiles only where a tile's classes are unlikely for every row: the
  // backward walks the classes sorted by mean logit (O(V) keys), as Cut Cross-Entropy does.
  const bool sorted = withGrad && c.filterEps > 0.0f;
  size_t keys = 1;
  while (keys < static_cast<size_t>(V)) keys *= 2;
  p.meanRow = sorted ? take(kLinearCeMeanRowChunks * (static_cast<size_t>(D) + 1) * sizeof(float)) : kLinearCeAbsent;
  p.orderKeys = sorted ? take(keys * sizeof(uint64_t)) : kLinearCeAbsent;
  p.order = sorted ? take(static_cast<size_t>(V) * sizeof(int32_t)) : kLinearCeAbsent;
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

// ---------------------------------------------------------------- pairwise sigmoid loss (SigLIP)
// cuda/sigmoid_pair.cu: −Σ_ij log σ(z_ij·(t·x_i·y_j + b)) over x [N × D] and y [M × D], y holding
// the global rows [yStart, yStart + M) (z = +1 where the global row of y is i). Tiles of
// kPairTile × kPairTile pairs; nothing of size N×M exists.

constexpr int kPairTile = 32;

struct SigmoidPairParams {
  float temperature = 1.0f;
  float bias = 0.0f;
  /** Each pair's dloss/du is multiplied by it (gradScale / N). */
  float gradScale = 1.0f;
  int64_t yStart = 0;
};

/** Outputs: per row tile of x the sums { Σ softplus, dTemperature, dBias }; the gradients when set. */
struct SigmoidPairOut {
  float* partials = nullptr;  // [ceil(N / kPairTile) × 3]
  MutMatrixRef dX{};          // [N × D], data null: the forward only
  MutMatrixRef dY{};          // [M × D]
  float* dXAccum = nullptr;   // [N × D] f32, when dX is bf16
  float* dYAccum = nullptr;   // [M × D] f32, when dY is bf16
};

// ---------------------------------------------------------------- spherical Z-loss
// cuda/zscore.cu: normalizer 'zscore' of linearCrossEntropy from the classifier's centred moments
// (lib/js/zscore.ts has the formulas); O(V·D²) per call, O(D²) per token, nothing N×V.

struct ZscoreParams {
  float a = 1.0f;
  float b = 0.0f;
  int32_t ignoreIndex = -100;
  /** [N] dL/dloss_i (reduction scale × class weight of the target); null: the forward only. */
  const float* rowScale = nullptr;
};

struct ZscoreKernelOut {
  float* rowLoss = nullptr;   // [N] before class weights (0 for ignored rows)
  float* zt = nullptr;        // [N] z̃ of the label
  MutMatrixRef dE{};          // [N × D], data null: the forward only
  MutMatrixRef dW{};          // [V × D]
  float* dWAccum = nullptr;   // [V × D] f32, when dW is bf16
  float* dBias = nullptr;     // [V], or null (no bias)
};

/** f32 scratch of zscoreLinear; sizes from zscoreWorkFloats. */
struct ZscoreWork {
  float* partials = nullptr;  // [zscorePartialFloats]: per-chunk moments
  float* mean = nullptr;      // [D + 1]
  float* moments = nullptr;   // [(D + 1)²] C'
  float* M = nullptr;         // [(D + 1)²] M'
  float* rA = nullptr;        // [D + 1]
  float* CE = nullptr;        // [N × D]
  float* aRow = nullptr;      // [N]
  float* pRow = nullptr;      // [N]
};

/** Row chunks of a moment over `rows` rows of width (D + 1) (1 for column sums): partials stay ≤ 16 MiB. */
inline int zscoreChunks(int64_t rows, int64_t width) {
  int64_t c = (rows + 511) / 512;
  if (c > 64) c = 64;
  const int64_t cap = (int64_t{1} << 22) / (width * width);
  if (c > cap) c = cap;
  return static_cast<int>(c < 1 ? 1 : c);
}

inline int64_t zscorePartialFloats(int64_t N, int64_t D, int64_t V) {
  const int64_t Da = D + 1;
  int64_t n = zscoreChunks(V, 1) * Da;
  const int64_t sizes[3] = {zscoreChunks(N, 1) * Da, zscoreChunks(V, Da) * Da * Da, zscoreChunks(N, Da) * Da * Da};
  for (int64_t v : sizes) n = v > n ? v : n;
  return n;
}

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
                          Stream s);                                                                     \
  void sigmoidPairLoss(const MatrixRef& x, const MatrixRef& y, const SigmoidPairParams& p,                  \
                       const SigmoidPairOut& out, Stream s);                                                \
  void zscoreLinear(const MatrixRef& E, const MatrixRef& W, const float* bias, const int32_t* labels,       \
                    const ZscoreParams& p, const ZscoreKernelOut& out, const ZscoreWork& w, Stream s);           \
  /* cuda/normalize.cu: y = scale·x/max(‖x‖, 1e-12) per row with norms [R]; and dx from dL/dy. */         \
  void unitRows(const MatrixRef& x, float scale, const MutMatrixRef& y, float* norms, Stream s);           \
  void unitRowsBackward(const MatrixRef& x, const float* norms, float scale, const MatrixRef& g,            \
                        const MutMatrixRef& dx, Stream s);

namespace gpu {
CUTLOSS_DECLARE_KERNELS
}  // namespace gpu

namespace emu {
CUTLOSS_DECLARE_KERNELS
}  // namespace emu

}  // namespace cutloss
