// Fused linear cross-entropy on the CPU: CE(E·Wᵀ + b) and its gradients with three GEMMs
// and memory bounded by a workspace, never N×V. The rows of E go in chunks sized to the
// workspace budget, each with the whole vocabulary:
//   1. L = E_chunk·Wᵀ                      (GEMM 1: the chunk's logits, once)
//   2. per row, in parallel: + b, the row's loss (lossRow), and its gradient G in place
//   3. dE_chunk = G·W                      (GEMM 2)
//   4. dW += Gᵀ·E_chunk, dBias += Σ_rows G (GEMM 3)
// A forward and a separate backward would compute the logits twice (four GEMMs). Bigger
// chunks make GEMM 3 cheaper (dW is read and written once per chunk) and cost memory.
//
// The GEMMs go by slices of kFilterBlockCols vocabulary columns, each a single-threaded BLAS
// call, handed to the backend's threads as they come free: no thread waits on another (a BLAS
// splitting each call across threads spins until its slowest thread is done, which on a
// shared machine is most of the time), no operand is read twice, and GEMMs 2 and 3 of a slice
// run back to back on its block of G while it is in cache. dE goes to a per-thread partial
// (chunk rows × D), summed at the end of the chunk.
//
// Denormals: with logits spread like a trained model's, most of G is far below FLT_MIN. Our
// threads flush denormals to zero, but the BLAS's own threads do not, and a product of a tiny
// normal G entry and a weight can still be denormal; so entries below 2^-60 of their row's
// largest are zeroed before the GEMMs (far below what fp32 sums of that row can resolve).
// filterEps > 0 drops, per chunk, the vocabulary slices whose every |dloss/dz| is below
// filterEps (relative to the row's scale, as lib/js/fusedLoss.ts), and the GEMMs skip them.
#include "cpu_math.h"
// after cpu_math.h, which must come first
#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "gemm.h"
#include "host_memory.h"
#include "loss_rows.h"

namespace cutloss::cpu {

namespace {

/** x_j += b_j: the bias joins the logits before anything reads them. */
CUTLOSS_CPU_INLINE void addBias(float* x, const float* bias, int n) {
#pragma omp simd
  for (int j = 0; j < n; j++) x[j] += bias[j];
}

/**
 * After a row's gradient: fold it into the thread's dBias partial (if any) and zero the
 * entries below 2^-60 of the row's largest, so the BLAS never meets denormal products.
 */
CUTLOSS_CPU_INLINE void finishGradRow(float* g, int n, float* biasPartial) {
  float maxAbs = 0.0f;
  float minAbs = positiveInfinity();  // smallest nonzero
  if (biasPartial != nullptr) {
#pragma omp simd reduction(max : maxAbs) reduction(min : minAbs)
    for (int j = 0; j < n; j++) {
      const float a = fabsf(g[j]);
      maxAbs = a > maxAbs ? a : maxAbs;
      minAbs = a != 0.0f && a < minAbs ? a : minAbs;
      biasPartial[j] += g[j];
    }
  } else {
#pragma omp simd reduction(max : maxAbs) reduction(min : minAbs)
    for (int j = 0; j < n; j++) {
      const float a = fabsf(g[j]);
      maxAbs = a > maxAbs ? a : maxAbs;
      minAbs = a != 0.0f && a < minAbs ? a : minAbs;
    }
  }
  if (maxAbs == positiveInfinity()) return;  // an infinite entry: the others keep their values
  const float floor = maxAbs * 8.67361738e-19f;  // 2^-60
  if (!(minAbs < floor)) return;
#pragma omp simd
  for (int j = 0; j < n; j++) g[j] = fabsf(g[j]) < floor ? 0.0f : g[j];
}

struct ChunkRowsArgs {
  const LossCall* call;
  float* logits;  // [nr, V]
  int64_t row0;   // first row of the chunk in the batch
  int64_t V;
  const float* bias;
  const int32_t* labels;
  const float* scaleWeighted;
  const float* scaleUnweighted;
  bool grad;
  const LossRowsOut* out;
};

CUTLOSS_CPU_CLONES void linearChunkRows(const ChunkRowsArgs& a, float* z, float* candidates, float* biasPartial,
                                        uint8_t* blockFlags, int64_t i0, int64_t i1) {
  const int V = static_cast<int>(a.V);  // a row's columns fit an int (the binding checks V < 2^31)
  for (int64_t i = i0; i < i1; i++) {
    const int64_t r = a.row0 + i;
    float* x = a.logits + i * a.V;
    if (a.bias != nullptr) addBias(x, a.bias, V);
    LossRowIO io;
    io.label = a.labels[r];
    io.scaleWeighted = a.grad ? a.scaleWeighted[r] : 0.0f;
    io.scaleUnweighted = a.grad ? a.scaleUnweighted[r] : 0.0f;
    io.z = z;
    io.candidates = candidates;
    io.grad = a.grad ? x : nullptr;
    io.blockFlags = blockFlags;
    io.nextBytes = a.V * static_cast<int64_t>(sizeof(float));
    io.next = i + 1 < i1 ? x + a.V : nullptr;
    io.store = nullptr;
    const LossRowResult res = lossRowAny(*a.call, x, V, io);
    a.out->lse[r] = res.lse;
    a.out->weighted[r] = res.weighted;
    a.out->unweighted[r] = res.unweighted;
    if (a.grad) finishGradRow(x, V, biasPartial);
  }
}

CUTLOSS_CPU_CLONES void widenRows(const uint16_t* src, float* dst, int64_t n) { widenBf16(src, dst, n); }

}  // namespace

LinearCrossEntropyStats linearCrossEntropy(const HostMatrix& E, const HostMatrix& W, const float* bias,
                                           const int32_t* labels, const LossParams& p, const float* scaleWeighted,
                                           const float* scaleUnweighted, float filterEps, size_t workspaceBytes,
                                           const LinearCrossEntropyOut& out) {
  const int64_t N = E.rows, D = E.cols, V = W.rows;
  const bool grad = out.dE != nullptr;
  LinearCrossEntropyStats stats;
  if (N == 0) return stats;
  const int threads = threadCount();

  // The workspace holds whole rows of logits: at least one, at most N. The fewest chunks the
  // budget allows, of equal size (a short last chunk would cost a full pass over W and dW).
  const size_t rowBytes = static_cast<size_t>(V) * sizeof(float);
  const int64_t budgetRows = std::max<int64_t>(1, std::min<int64_t>(N, static_cast<int64_t>(workspaceBytes / rowBytes)));
  const int64_t chunkCount = (N + budgetRows - 1) / budgetRows;
  const int64_t chunkRows = (N + chunkCount - 1) / chunkCount;
  HostBuffer logits(static_cast<size_t>(chunkRows) * rowBytes);
  stats.chunkRows = chunkRows;
  stats.workspaceBytes = static_cast<int64_t>(logits.bytes());

  // bf16 inputs: W widened once (the GEMMs take f32), E a chunk at a time.
  std::unique_ptr<HostBuffer> wide;
  const float* W32 = static_cast<const float*>(W.data);
  if (W.dtype == DType::BF16) {
    wide = std::make_unique<HostBuffer>(static_cast<size_t>(V * D) * sizeof(float));
    float* dst = wide->as<float>();
    const auto* src = static_cast<const uint16_t*>(W.data);
    parallelFor(V, rowGrain(D), [&](int64_t v0, int64_t v1, int) { widenRows(src + v0 * D, dst + v0 * D, (v1 - v0) * D); });
    W32 = dst;
  }
  std::unique_ptr<HostBuffer> eChunk;
  if (E.dtype == DType::BF16) eChunk = std::make_unique<HostBuffer>(static_cast<size_t>(chunkRows * D) * sizeof(float));

  std::vector<float> ones;
  if (p.classWeights == nullptr) ones.assign(static_cast<size_t>(V), 1.0f);
  const LossCall call = makeLossCall(p, ones.data(), grad ? filterEps : 0.0f);
  Scratch z(call.plain ? 0 : V);
  Scratch candidates(p.normalizer == kNormalizerSparsemax ? V : 0);
  Scratch biasPartial(grad && bias != nullptr && out.dBias != nullptr ? V : 0);
  Scratch dEPartial(grad ? chunkRows * D : 0);  // each thread's share of G·W for the chunk
  const int64_t slices = (V + kFilterBlockCols - 1) / kFilterBlockCols;
  const bool filtering = call.filterEps > 0.0f;
  std::vector<std::vector<uint8_t>> flags(filtering ? threads : 0, std::vector<uint8_t>(static_cast<size_t>(slices)));
  std::vector<uint8_t> kept(static_cast<size_t>(slices), 1);
  std::vector<uint8_t> dEStarted(static_cast<size_t>(threads));
  const auto sliceCols = [&](int64_t s) { return std::pair<int64_t, int64_t>{s * kFilterBlockCols, std::min(V, (s + 1) * kFilterBlockCols)}; };

  SerialGemmScope serialGemm;  // every thread runs its own products on slices of the vocabulary
  for (int64_t r0 = 0; r0 < N; r0 += chunkRows) {
    const int64_t nr = std::min(chunkRows, N - r0);
    stats.chunks++;
    const float* Ec = static_cast<const float*>(E.data) + r0 * D;
    if (E.dtype == DType::BF16) {
      const auto* src = static_cast<const uint16_t*>(E.data) + r0 * D;
      float* dst = eChunk->as<float>();
      parallelFor(nr, rowGrain(D), [&](int64_t i0, int64_t i1, int) { widenRows(src + i0 * D, dst + i0 * D, (i1 - i0) * D); });
      Ec = dst;
    }
    float* L = logits.as<float>();

    // 1. L[:, slice] = E_chunk·W[slice]ᵀ, slice by slice as threads come free
    parallelFor(slices, 1, [&](int64_t s0, int64_t s1, int) {
      for (int64_t s = s0; s < s1; s++) {
        const auto [c0, c1] = sliceCols(s);
        sgemmSerial(false, true, nr, c1 - c0, D, 1.0f, Ec, D, W32 + c0 * D, D, 0.0f, L + c0, V);
      }
    });

    // 2. each row: + b, its loss, its gradient G in place
    ChunkRowsArgs args{&call, L, r0, V, bias, labels, scaleWeighted, scaleUnweighted, grad, &out.rows};
    parallelFor(nr, rowGrain(V), [&](int64_t i0, int64_t i1, int w) {
      linearChunkRows(args, z[w], candidates[w], biasPartial[w], filtering ? flags[w].data() : nullptr, i0, i1);
    });
    if (!grad) continue;

    // Which vocabulary slices the backward visits.
    if (filtering) {
      for (int64_t s = 0; s < slices; s++) {
        uint8_t any = 0;
        for (auto& f : flags) {
          any |= f[s];
          f[s] = 0;
        }
        kept[s] = any;
      }
    }
    stats.blocks += slices;
    for (int64_t s = 0; s < slices; s++) stats.skippedBlocks += kept[s] ? 0 : 1;

    // 3. per kept slice: dE_chunk += G[:, slice]·W[slice] (into the thread's partial),
    //    dW[slice] += G[:, slice]ᵀ·E_chunk (dW starts zero-filled: the first chunk need not read it),
    //    dBias[slice] += the threads' column sums of G
    std::fill(dEStarted.begin(), dEStarted.end(), 0);
    parallelFor(slices, 1, [&](int64_t s0, int64_t s1, int w) {
      for (int64_t s = s0; s < s1; s++) {
        const auto [c0, c1] = sliceCols(s);
        if (kept[s]) {
          sgemmSerial(false, false, nr, D, c1 - c0, 1.0f, L + c0, V, W32 + c0 * D, D, dEStarted[w] ? 1.0f : 0.0f,
                      dEPartial[w], D);
          dEStarted[w] = 1;
          if (out.dW != nullptr) {
            sgemmSerial(true, false, c1 - c0, D, nr, 1.0f, L + c0, V, Ec, D, r0 == 0 ? 0.0f : 1.0f, out.dW + c0 * D, D);
          }
        }
        if (out.dBias != nullptr && bias != nullptr) {
          for (int t = 0; t < threads; t++) {
            float* part = biasPartial[t];
            if (kept[s]) {
              for (int64_t j = c0; j < c1; j++) out.dBias[j] += part[j];
            }
            std::memset(part + c0, 0, static_cast<size_t>(c1 - c0) * sizeof(float));
          }
        }
      }
    });
    // dE rows of the chunk = the sum of the threads' partials
    float* dEc = out.dE + r0 * D;
    parallelFor(nr, rowGrain(D), [&](int64_t i0, int64_t i1, int) {
      for (int64_t i = i0; i < i1; i++) {
        float* dst = dEc + i * D;
        std::memset(dst, 0, static_cast<size_t>(D) * sizeof(float));
        for (int t = 0; t < threads; t++) {
          if (!dEStarted[t]) continue;
          const float* src = dEPartial[t] + i * D;
          for (int64_t k = 0; k < D; k++) dst[k] += src[k];
        }
      }
    });
  }
  return stats;
}

}  // namespace cutloss::cpu
