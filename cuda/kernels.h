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
                            const MutMatrixRef& dLogits, Stream s);

namespace gpu {
CUTLOSS_DECLARE_KERNELS
}  // namespace gpu

namespace emu {
CUTLOSS_DECLARE_KERNELS
}  // namespace emu

}  // namespace cutloss
