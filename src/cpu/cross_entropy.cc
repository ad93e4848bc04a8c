// Cross-entropy from logits on the CPU, forward and backward fused: the reduction scales of
// every row are known from the labels before any logit is read, so each row is read from
// memory once, reduced, and its gradient formed while it is still in cache (lossRow), then
// streamed out past the cache while the next row's exponentials are computed (on AVX-512
// CPUs; after the row elsewhere). That is one read and one write of the logits, where a
// forward and a separate backward pass would read them twice.
#include "cpu_math.h"
// after cpu_math.h, which must come first
#include "loss_rows.h"

namespace cutloss::cpu {

namespace {

/**
 * Rows [r0, r1); each row's gradient is formed in half of `gradRows` (2 rows, in cache) and
 * streamed to dLogits while the next row is computed (PendingRowStore), or after it.
 */
CUTLOSS_CPU_CLONES void crossEntropyRows(const LossCall& c, const HostMatrix& logits, const int32_t* labels,
                                         const float* scaleWeighted, const float* scaleUnweighted,
                                         const LossRowsOut& out, float* dLogits, float* widened, float* z,
                                         float* candidates, float* gradRows, int64_t r0, int64_t r1) {
  const int n = static_cast<int>(logits.cols);
  PendingRowStore previous;
  for (int64_t r = r0; r < r1; r++) {
    float* gradRow = gradRows + (r & 1) * n;
    LossRowIO io;
    io.label = labels[r];
    io.scaleWeighted = scaleWeighted != nullptr ? scaleWeighted[r] : 0.0f;
    io.scaleUnweighted = scaleUnweighted != nullptr ? scaleUnweighted[r] : 0.0f;
    io.z = z;
    io.candidates = candidates;
    io.grad = dLogits != nullptr ? gradRow : nullptr;
    io.blockFlags = nullptr;
    io.nextBytes = n * static_cast<int64_t>(logits.dtype == DType::BF16 ? 2 : 4);
    io.next = r + 1 < r1 ? static_cast<const char*>(logits.data) + (r + 1) * io.nextBytes : nullptr;
    io.store = &previous;
    const LossRowResult res = lossRowAny(c, rowF32(logits, r, widened), n, io);
    out.lse[r] = res.lse;
    out.weighted[r] = res.weighted;
    out.unweighted[r] = res.unweighted;
    flushRowStore(previous);  // rows that keep no exponentials leave it to us
    if (dLogits != nullptr) previous = PendingRowStore{dLogits + r * n, gradRow, n};
  }
  flushRowStore(previous);
  finishStreamingStores();
}

}  // namespace

void crossEntropy(const HostMatrix& logits, const int32_t* labels, const LossParams& p, const float* scaleWeighted,
                  const float* scaleUnweighted, const LossRowsOut& out, float* dLogits) {
  if (logits.rows == 0) return;  // an empty matrix may claim any cols: allocate no scratch for it
  const int n = static_cast<int>(logits.cols);
  std::vector<float> ones;
  if (p.classWeights == nullptr) ones.assign(static_cast<size_t>(n), 1.0f);
  const LossCall c = makeLossCall(p, ones.data(), 0.0f);
  Scratch widened(logits.dtype == DType::BF16 ? n : 0);
  Scratch z(c.plain ? 0 : n);
  Scratch candidates(p.normalizer == kNormalizerSparsemax ? n : 0);
  Scratch gradRows(dLogits != nullptr ? 2 * static_cast<int64_t>(n) : 0);
  parallelFor(logits.rows, rowGrain(n), [&](int64_t r0, int64_t r1, int w) {
    crossEntropyRows(c, logits, labels, scaleWeighted, scaleUnweighted, out, dLogits, widened[w], z[w], candidates[w],
                     gradRows[w], r0, r1);
  });
}

}  // namespace cutloss::cpu
