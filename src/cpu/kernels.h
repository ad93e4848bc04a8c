// The CPU backend's kernels: every op of the API on host memory, row by row on the backend's
// threads (parallel.h), with the per-element and per-row math of cuda/math/ (cpu_math.h).
// Inputs are f32 or bf16 (widened to f32 a row at a time), accumulation is fp32, outputs are
// f32. Callers (binding.cc) validate shapes and hold a CpuSession.
#pragma once

#include <cstddef>
#include <cstdint>

#include "../../cuda/kernels.h"

namespace cutloss::cpu {

/** A row-major host matrix, f32 or bf16 bits. */
struct HostMatrix {
  const void* data;
  DType dtype;
  int64_t rows;
  int64_t cols;
};

// Row-wise ops: dy is f32 with x's shape; outputs are f32 [rows, cols] (lse: [rows]).
// SoftmaxParams::mask is host memory here.
void logSumExp(const HostMatrix& x, const SoftmaxParams& p, float* lse);
void softmax(const HostMatrix& x, const SoftmaxParams& p, bool log, float* y);
void softmaxBackward(const HostMatrix& x, const float* dy, const SoftmaxParams& p, bool log, float* dx);
void stablemax(const HostMatrix& x, bool log, float* y);
void stablemaxBackward(const HostMatrix& x, const float* dy, bool log, float* dx);
void sparsemax(const HostMatrix& x, float* y);
void sparsemaxBackward(const HostMatrix& x, const float* dy, float* dx);
void entmax15(const HostMatrix& x, float* y);
void entmax15Backward(const HostMatrix& x, const float* dy, float* dx);
void gumbelSoftmax(const HostMatrix& x, float tau, bool hard, uint64_t seed, float* y);
void gumbelSoftmaxBackward(const HostMatrix& x, const float* dy, float tau, uint64_t seed, float* dx);

/** Per-row results of a loss: lse of every row; the F·C and U terms (0 for ignored rows). */
struct LossRowsOut {
  float* lse;
  float* weighted;
  float* unweighted;
};

/**
 * Cross-entropy from logits, forward and backward in one pass over the data: each row is
 * reduced (it stays in cache), its loss finished, and, when dLogits is not null, its gradient
 * written with the row's reduction scales s_W, s_U (known from the labels alone, README
 * "Losses"). LossParams::classWeights is host memory.
 */
void crossEntropy(const HostMatrix& logits, const int32_t* labels, const LossParams& p, const float* scaleWeighted,
                  const float* scaleUnweighted, const LossRowsOut& out, float* dLogits);

struct LinearCrossEntropyOut {
  LossRowsOut rows;
  float* dE;     // [N, D] or null (forward only); any contents: every element is written
  float* dW;     // [V, D] or null; any contents: every element is written
  float* dBias;  // [V], zero-filled, or null
};

/** What the fused linear loss did, for tests and benchmarks. */
struct LinearCrossEntropyStats {
  int64_t chunkRows = 0;
  int64_t tileCols = 0;  // vocabulary columns per tile of a chunk's rows; 0: whole rows
  int64_t chunks = 0;
  int64_t workspaceBytes = 0;  // the logits' workspace actually allocated (with the tiles' row sums)
  int64_t blocks = 0;          // vocabulary blocks visited by the backward (all chunks)
  int64_t skippedBlocks = 0;   // of those, skipped by filterEps
  int64_t sparseBlocks = 0;    // of those, done as per-entry products of the entries filterEps left
  int64_t gradEntries = 0;     // entries of the gradient N×V the backward formed
  int64_t gradEntriesUsed = 0;  // of those, the ones its products spent work on (dense slices whole)
  int64_t deferredEntries = 0;  // of the sparse slices' entries, those whose products waited for the call's end
};

/**
 * Cross-entropy of E·Wᵀ + b in chunks of rows with the whole vocabulary: per chunk the
 * logits come from one GEMM into a workspace of at most workspaceBytes (at least one row),
 * each row is reduced and turned into its gradient in place, and two more GEMMs give
 * dE_chunk = G·W and dW += Gᵀ·E_chunk. Where the budget holds few whole rows, blocks of rows go
 * by tiles of vocabulary slices instead: a forward over the tiles merges each row's sums, a
 * backward forms the tiles' logits again (a fourth GEMM). Nothing of size N×V exists.
 */
LinearCrossEntropyStats linearCrossEntropy(const HostMatrix& E, const HostMatrix& W, const float* bias,
                                           const int32_t* labels, const LossParams& p, const float* scaleWeighted,
                                           const float* scaleUnweighted, float filterEps, size_t workspaceBytes,
                                           const LinearCrossEntropyOut& out);

/** Vocabulary columns per slice of the linear loss's GEMMs (and per filterEps block). */
constexpr int64_t kFilterBlockCols = 512;

}  // namespace cutloss::cpu
