// Tests of the SIMT emulator itself (cuda/simt/): each case launches small kernels and
// checks results against plain loops, or checks that a misbehaving kernel is reported.
// Prints "ok <case>" or "FAIL <case>: why" per case; exits 1 if any failed.
#include "runtime.h"
#include "warp_ops.cuh"

#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace {

int failures = 0;

void check(const char* name, const std::function<std::string()>& body) {
  std::string why;
  try {
    why = body();
  } catch (const std::exception& e) {
    why = std::string("unexpected exception: ") + e.what();
  }
  if (why.empty()) {
    std::printf("ok %s\n", name);
  } else {
    std::printf("FAIL %s: %s\n", name, why.c_str());
    ++failures;
  }
}

/** Runs `launch`, expecting a simt::Error whose message contains `needle`. */
std::string expectError(const std::function<void()>& launch, const std::string& needle) {
  try {
    launch();
  } catch (const simt::Error& e) {
    if (std::string(e.what()).find(needle) == std::string::npos) return std::string("wrong error: ") + e.what();
    std::printf("  reported: %s\n", e.what());
    return "";
  }
  return "no error was reported";
}

const simt::Order kOrders[] = {simt::Order::Forward, simt::Order::Reverse, simt::Order::Shuffled};
const char* orderName(simt::Order o) {
  return o == simt::Order::Forward ? "forward" : o == simt::Order::Reverse ? "reverse" : "shuffled";
}

// ---------------------------------------------------------------- kernels

/** Block sum through shared memory: the barrier between write and read is what makes it right. */
__global__ void blockSum(const float* x, float* out, int n) {
  __shared__ float partial[256];
  const int t = threadIdx.x;
  const int i = blockIdx.x * blockDim.x + t;
  partial[t] = i < n ? x[i] : 0.0f;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (t < stride) partial[t] += partial[t + stride];
    __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = partial[0];
}

/** The same with the barriers forgotten: a race that only some run orders expose. */
__global__ void blockSumMissingBarrier(const float* x, float* out, int n) {
  __shared__ float partial[256];
  const int t = threadIdx.x;
  const int i = blockIdx.x * blockDim.x + t;
  partial[t] = i < n ? x[i] : 0.0f;
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (t < stride) partial[t] += partial[t + stride];
  }
  if (t == 0) out[blockIdx.x] = partial[0];
}

__global__ void barrierInBranch(int* out) {
  if (threadIdx.x < 16) __syncthreads();
  out[threadIdx.x] = 1;
}

__global__ void barriersAtTwoSites(int* out) {
  if (threadIdx.x % 2 == 0) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

__global__ void earlyExitBeforeBarrier(int* out, int n) {
  if (static_cast<int>(threadIdx.x) >= n) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

__global__ void halfWarpShuffle(int* out) {
  int v = threadIdx.x;
  if (threadIdx.x < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
  out[threadIdx.x] = v;
}

__global__ void shuffleVsBarrier(int* out) {
  int v = threadIdx.x;
  if (threadIdx.x < 32) v = __shfl_down_sync(0xffffffffu, v, 1);
  else __syncthreads();
  out[threadIdx.x] = v;
}

__global__ void warpOps(const float* x, float* sums, int* down, int* up, int* idx, int* seg, unsigned* ballots,
                        int* anyAll) {
  const int t = threadIdx.x;
  float v = x[t];
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  sums[t] = v;
  down[t] = __shfl_down_sync(0xffffffffu, t * 10, 3);
  up[t] = __shfl_up_sync(0xffffffffu, t * 10, 2);
  idx[t] = __shfl_sync(0xffffffffu, t * 10, 7);
  seg[t] = __shfl_xor_sync(0xffffffffu, t, 8, 16) + 1000 * __shfl_sync(0xffffffffu, t, 3, 16);
  ballots[t] = __ballot_sync(0xffffffffu, t % 3 == 0);
  anyAll[t] = __any_sync(0xffffffffu, t == 5) + 2 * __all_sync(0xffffffffu, t < 100) + 4 * __all_sync(0xffffffffu, t < 10);
}

__global__ void atomics(int* counter, int* maxv, int* cas, float* fsum) {
  atomicAdd(counter, 1);
  atomicMax(maxv, static_cast<int>(threadIdx.x * 7 % 50));
  atomicCAS(cas, 0, static_cast<int>(threadIdx.x) + 1);  // only the first arrival wins
  atomicAdd(fsum, 0.5f);
}

__global__ void dynamicShared(float* out, int n) {
  CUTLOSS_DYNAMIC_SHARED(float, buf);
  const int t = threadIdx.x;
  if (t < n) buf[t] = static_cast<float>(t) * 2.0f;
  __syncthreads();
  out[t] = buf[(t + 1) % blockDim.x];  // the last thread reads an element nobody wrote when n < blockDim
}

__global__ void indices(int* out) {
  const int linear = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const int block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const int threads = blockDim.x * blockDim.y * blockDim.z;
  out[block * threads + linear] = block * 1000 + linear;
}

__global__ void barrierVotes(int* out) {
  const int t = threadIdx.x;
  const int count = __syncthreads_count(t % 4 == 0);
  const int any = __syncthreads_or(t == 63);
  const int all = __syncthreads_and(t < 1000);
  const int none = __syncthreads_and(t < 5);
  if (t == 0) {
    out[0] = count;
    out[1] = any;
    out[2] = all;
    out[3] = none;
  }
}

__global__ void arrivalOrder(int* counter, int* order) { order[threadIdx.x] = atomicAdd(counter, 1); }

__global__ void wmmaTile(const __nv_bfloat16* a, const __nv_bfloat16* b, float* c) {
  using namespace nvcuda;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
  wmma::fill_fragment(fc, 1.0f);
  wmma::load_matrix_sync(fa, a, 16);
  wmma::load_matrix_sync(fb, b, 16);
  wmma::mma_sync(fc, fa, fb, fc);
  wmma::store_matrix_sync(c, fc, 16, wmma::mem_row_major);
}

__global__ void wmmaTf32(const float* a, const float* b, float* c) {
  using namespace nvcuda;
  wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 8, float> fc;
  wmma::fill_fragment(fc, 0.0f);
  wmma::load_matrix_sync(fa, a, 8);
  wmma::load_matrix_sync(fb, b, 16);
  for (int i = 0; i < fa.num_elements; ++i) fa.x[i] = wmma::__float_to_tf32(fa.x[i]);
  for (int i = 0; i < fb.num_elements; ++i) fb.x[i] = wmma::__float_to_tf32(fb.x[i]);
  wmma::mma_sync(fc, fa, fb, fc);
  wmma::store_matrix_sync(c, fc, 16, wmma::mem_row_major);
}

__global__ void wmmaDivergent(const __nv_bfloat16* a, const __nv_bfloat16* b, float* c) {
  if (threadIdx.x < 8) return;
  wmmaTile(a, b, c);
}

// ---------------------------------------------------------------- warp matrix operations

using namespace cutloss::emu;

/** ldmatrix rows must be 16-byte aligned. */
template <class T, int N>
struct alignas(16) Aligned {
  T v[N];
};

/** Four 8×8 b16 matrices (m[j][r][c] at j·64 + r·8 + c) through ldmatrix: out[lane·4 + j] = register j. */
__global__ void ldmatrixProbe(const uint16_t* m, uint32_t* out, int count, bool trans) {
  __shared__ Aligned<uint16_t, 256> t16;
  uint16_t* tile = t16.v;
  const int lane = threadIdx.x;
  for (int i = lane; i < 256; i += 32) tile[i] = m[i];
  __syncthreads();
  const uint16_t* row = tile + lane * 8;  // lane i: row i % 8 of matrix i / 8
  uint32_t r[4] = {0, 0, 0, 0};
  if (count == 4) {
    uint32_t x[4];
    trans ? ldmatrixX4Trans(x, row) : ldmatrixX4(x, row);
    for (int j = 0; j < 4; ++j) r[j] = x[j];
  } else if (count == 2) {
    uint32_t x[2];
    trans ? ldmatrixX2Trans(x, row) : ldmatrixX2(x, row);
    r[0] = x[0];
    r[1] = x[1];
  } else {
    uint32_t x[1];
    trans ? ldmatrixX1Trans(x, row) : ldmatrixX1(x, row);
    r[0] = x[0];
  }
  for (int j = 0; j < 4; ++j) out[lane * 4 + j] = r[j];
}

/**
 * C = A·B + C for A [16 × 16] row-major and Bt = Bᵀ [8 × 16] row-major (k contiguous, as W
 * rows are), bf16, through ldmatrix (.x4 for A, .x2 for B; `transB` loads B transposed, which
 * is wrong for this layout) and mma.sync m16n8k16. C [16 × 8] row-major in and out.
 */
__global__ void mmaBf16Probe(const __nv_bfloat16* a, const __nv_bfloat16* bt, float* c, bool transB) {
  __shared__ Aligned<__nv_bfloat16, 256> sa16;
  __shared__ Aligned<__nv_bfloat16, 128> sb16;
  __nv_bfloat16* sa = sa16.v;
  __nv_bfloat16* sb = sb16.v;
  const int lane = threadIdx.x;
  for (int i = lane; i < 256; i += 32) sa[i] = a[i];
  for (int i = lane; i < 128; i += 32) sb[i] = bt[i];
  __syncthreads();
  uint32_t fa[4], fb[2];
  ldmatrixX4(fa, sa + ((lane % 8) + 8 * ((lane / 8) % 2)) * 16 + 8 * (lane / 16));
  const __nv_bfloat16* rowB = sb + (lane % 8) * 16 + 8 * ((lane / 8) % 2);
  transB ? ldmatrixX2Trans(fb, rowB) : ldmatrixX2(fb, rowB);
  const int g = lane / 4, t = lane % 4;
  float d[4];
  for (int i = 0; i < 4; ++i) d[i] = c[(g + 8 * (i / 2)) * 8 + 2 * t + i % 2];
  mmaBf16(d, fa, fb);
  for (int i = 0; i < 4; ++i) c[(g + 8 * (i / 2)) * 8 + 2 * t + i % 2] = d[i];
}

uint32_t pack2(uint16_t lo, uint16_t hi) { return static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16); }

/** fp16 m16n8k16 with the fragments filled straight from global memory by the documented layout. */
__global__ void mmaF16Probe(const __half* a, const __half* bt, float* c) {
  const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
  uint32_t fa[4], fb[2];
  for (int i = 0; i < 4; ++i) {
    const int r = g + 8 * (i % 2), k = 2 * t + 8 * (i / 2);
    fa[i] = pack2(a[r * 16 + k].x, a[r * 16 + k + 1].x);
  }
  for (int i = 0; i < 2; ++i) fb[i] = pack2(bt[g * 16 + 2 * t + 8 * i].x, bt[g * 16 + 2 * t + 8 * i + 1].x);
  float d[4] = {0, 0, 0, 0};
  mmaF16(d, fa, fb);
  for (int i = 0; i < 4; ++i) c[(g + 8 * (i / 2)) * 8 + 2 * t + i % 2] = d[i];
}

/** tf32 m16n8k8: A [16 × 8], Bt [8 × 8] (n rows, k contiguous), fragments by the documented layout. */
__global__ void mmaTf32Probe(const float* a, const float* bt, float* c) {
  const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
  uint32_t fa[4], fb[2];
  for (int i = 0; i < 4; ++i) fa[i] = toTf32(a[(g + 8 * (i % 2)) * 8 + t + 4 * (i / 2)]);
  for (int i = 0; i < 2; ++i) fb[i] = toTf32(bt[g * 8 + t + 4 * i]);
  float d[4] = {0, 0, 0, 0};
  mmaTf32(d, fa, fb);
  for (int i = 0; i < 4; ++i) c[(g + 8 * (i / 2)) * 8 + 2 * t + i % 2] = d[i];
}

__global__ void mmaDivergent(float* c, int split) {
  uint32_t fa[4] = {0, 0, 0, 0}, fb[2] = {0, 0};
  float d[4] = {0, 0, 0, 0};
  if (static_cast<int>(threadIdx.x) < split) {
    mmaBf16(d, fa, fb);
  } else {
    mmaBf16(d, fa, fb);  // another call site: lanes must not be split across the two
  }
  c[threadIdx.x] = d[0];
}

enum PipelineBug { kPipelineCorrect = 0, kMissingWait = 1, kStageOverwrittenEarly = 2 };

/**
 * Streams `chunks` chunks of 256 floats through a 2-stage cp.async ring (each of the 64
 * threads copies 16 bytes a chunk) and has every thread sum 4 floats of each chunk that other
 * threads copied: out[t] = Σ_c Σ_k x[c·256 + (4t + 37 + k) % 256].
 */
__global__ void pipelinedSum(const float* x, int chunks, float* out, int bug) {
  CUTLOSS_DYNAMIC_SHARED(float, stage);  // [2][256]
  const int t = threadIdx.x;
  const auto issue = [&](int c) {
    if (c < chunks) cpAsync16(stage + (c % 2) * 256 + 4 * t, x + c * 256 + 4 * t, 16);
    cpAsyncCommit();  // an empty group past the end keeps wait<1> uniform
  };
  float acc = 0.0f;
  issue(0);
  for (int c = 0; c < chunks; ++c) {
    issue(c + 1);
    if (bug != kMissingWait) cpAsyncWait<1>();  // chunk c has landed (c + 1 may be in flight)
    __syncthreads();                            // ... for every thread's copies
    const float* s = stage + (c % 2) * 256;
    for (int k = 0; k < 4; ++k) acc += s[(4 * t + 37 + k) % 256];
    if (bug != kStageOverwrittenEarly) __syncthreads();  // everyone is done with stage c % 2 before it is refilled
  }
  cpAsyncWait<0>();
  out[t] = acc;
}

/** Block sum in two levels: warp shuffles, then warp 0 over the warps' partials in shared memory. */
__global__ void twoLevelSum(const float* x, float* out, bool barrier) {
  __shared__ float warpSums[8];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  float v = x[blockIdx.x * blockDim.x + threadIdx.x];
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (lane == 0) warpSums[warp] = v;
  if (barrier) __syncthreads();  // the second level reads other warps' partials
  if (warp == 0) {
    v = lane < static_cast<int>(blockDim.x / 32) ? warpSums[lane] : 0.0f;
    for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) out[blockIdx.x] = v;
  }
}

/** Lanes hand values around through shared memory, ordered by a warp collective, and count with shared atomics. */
__global__ void warpOrderedExchange(int* out) {
  __shared__ int slot[32];
  __shared__ int counter;
  const int lane = threadIdx.x % 32;
  if (threadIdx.x == 0) counter = 0;
  if (threadIdx.x < 32) slot[lane] = lane * 3;
  __syncthreads();
  if (threadIdx.x < 32) {
    (void)__shfl_sync(0xffffffffu, 0, 0);        // the warp meets: earlier writes are visible
    out[lane] = slot[(lane + 1) % 32];
    __shfl_sync(0xffffffffu, 0, 0);
    slot[lane] = -1;  // after everyone's read
  }
  atomicAdd(&counter, 1);
  __syncthreads();
  if (threadIdx.x == 0) out[32] = counter;
}

__global__ void sharedOverrun(float* out, int n) {
  CUTLOSS_DYNAMIC_SHARED(float, buf);
  buf[threadIdx.x] = 1.0f;  // thread n and past write beyond the window
  __syncthreads();
  out[threadIdx.x] = static_cast<float>(n);
}

__global__ void ldmatrixFromGlobal(const uint16_t* m, uint32_t* out) {
  uint32_t r[1];
  ldmatrixX1(r, m + (threadIdx.x % 8) * 8);
  out[threadIdx.x] = r[0];
}

}  // namespace

int main() {
  // ---- a correct block reduction gives the right sums in every order
  const int n = 1000;
  std::vector<float> x(n);
  for (int i = 0; i < n; ++i) x[i] = static_cast<float>((i * 37) % 101) - 50.0f;
  std::vector<float> expected(4, 0.0f);
  for (int i = 0; i < n; ++i) expected[i / 256] += x[i];
  for (simt::Order o : kOrders) {
    const std::string name = std::string("block reduction, ") + orderName(o);
    check(name.c_str(), [&]() -> std::string {
      simt::setOrder(o, 42);
      std::vector<float> out(4, -1.0f);
      CUTLOSS_LAUNCH(blockSum, dim3(4), dim3(256), 0, nullptr, x.data(), out.data(), n);
      for (int b = 0; b < 4; ++b) {
        if (out[b] != expected[b]) return "block " + std::to_string(b) + ": " + std::to_string(out[b]);
      }
      return "";
    });
  }

  // ---- the same kernel without barriers is caught: the race checker reports the race, and
  // with the checker off some order gives a wrong sum
  check("missing __syncthreads is reported as a shared-memory race", [&] {
    return expectError(
        [&] {
          std::vector<float> out(4);
          CUTLOSS_LAUNCH(blockSumMissingBarrier, dim3(4), dim3(256), 0, nullptr, x.data(), out.data(), n);
        },
        "shared-memory race in kernel blockSumMissingBarrier, block (0,0,0): thread");
  });
  check("missing __syncthreads changes the result in some order", [&]() -> std::string {
    simt::setRaceCheck(false);
    struct On {
      ~On() { simt::setRaceCheck(true); }
    } restore;
    int wrongOrders = 0;
    for (simt::Order o : kOrders) {
      simt::setOrder(o, 7);
      std::vector<float> out(4, -1.0f);
      CUTLOSS_LAUNCH(blockSumMissingBarrier, dim3(4), dim3(256), 0, nullptr, x.data(), out.data(), n);
      bool wrong = false;
      for (int b = 0; b < 4; ++b) wrong = wrong || out[b] != expected[b];
      if (wrong) {
        std::printf("  wrong sums under the %s order\n", orderName(o));
        ++wrongOrders;
      }
    }
    return wrongOrders > 0 ? "" : "the race went unnoticed in every order";
  });

  // ---- misbehaving barriers and collectives are reported, never hang
  std::vector<int> ibuf(1024, 0);
  check("barrier skipped by some threads", [&] {
    return expectError([&] { CUTLOSS_LAUNCH(barrierInBranch, dim3(1), dim3(64), 0, nullptr, ibuf.data()); },
                       "can never complete");
  });
  check("barriers at two different sites", [&] {
    return expectError([&] { CUTLOSS_LAUNCH(barriersAtTwoSites, dim3(1), dim3(64), 0, nullptr, ibuf.data()); },
                       "divergent __syncthreads");
  });
  check("early exit past a barrier", [&] {
    return expectError(
        [&] { CUTLOSS_LAUNCH(earlyExitBeforeBarrier, dim3(1), dim3(64), 0, nullptr, ibuf.data(), 40); },
        "has exited");
  });
  check("early exit is fine when no thread exits", [&]() -> std::string {
    CUTLOSS_LAUNCH(earlyExitBeforeBarrier, dim3(1), dim3(64), 0, nullptr, ibuf.data(), 64);
    return "";
  });
  check("shuffle by half a warp", [&] {
    return expectError([&] { CUTLOSS_LAUNCH(halfWarpShuffle, dim3(1), dim3(32), 0, nullptr, ibuf.data()); },
                       "divergent warp collective");
  });
  check("one warp shuffles and exits while the other waits at a barrier", [&] {
    return expectError([&] { CUTLOSS_LAUNCH(shuffleVsBarrier, dim3(1), dim3(64), 0, nullptr, ibuf.data()); },
                       "can never complete");
  });
  check("invalid launch configuration", [&] {
    return expectError([&] { CUTLOSS_LAUNCH(barrierInBranch, dim3(1), dim3(2048), 0, nullptr, ibuf.data()); },
                       "invalid block");
  });
  check("the emulator works again after an error", [&]() -> std::string {
    std::vector<float> out(4, -1.0f);
    CUTLOSS_LAUNCH(blockSum, dim3(4), dim3(256), 0, nullptr, x.data(), out.data(), n);
    return out[0] == expected[0] ? "" : "wrong sum after a failed launch";
  });

  // ---- warp collectives
  for (simt::Order o : kOrders) {
    const std::string name = std::string("warp shuffles, ballot, any, all, ") + orderName(o);
    check(name.c_str(), [&]() -> std::string {
      simt::setOrder(o, 3);
      std::vector<float> xs(64), sums(64);
      std::vector<int> down(64), up(64), idx(64), seg(64), anyAll(64);
      std::vector<unsigned> ballots(64);
      for (int i = 0; i < 64; ++i) xs[i] = static_cast<float>(i);
      CUTLOSS_LAUNCH(warpOps, dim3(1), dim3(64), 0, nullptr, xs.data(), sums.data(), down.data(), up.data(),
                     idx.data(), seg.data(), ballots.data(), anyAll.data());
      unsigned ballot = 0;
      for (int l = 0; l < 32; ++l) ballot |= (l % 3 == 0 ? 1u : 0u) << l;
      for (int t = 0; t < 64; ++t) {
        const int w = t / 32, l = t % 32;
        const float sum = static_cast<float>(w * 32 * 32 + 31 * 32 / 2);
        if (sums[t] != sum) return "xor-reduction at " + std::to_string(t);
        if (down[t] != (l + 3 < 32 ? (t + 3) * 10 : t * 10)) return "shfl_down at " + std::to_string(t);
        if (up[t] != (l >= 2 ? (t - 2) * 10 : t * 10)) return "shfl_up at " + std::to_string(t);
        if (idx[t] != (w * 32 + 7) * 10) return "shfl at " + std::to_string(t);
        const int segBase = w * 32 + (l / 16) * 16;
        if (seg[t] != (t ^ 8) + 1000 * (segBase + 3)) return "width-16 shuffles at " + std::to_string(t);
        const unsigned wantBallot = w == 0 ? ballot : [&] {
          unsigned b = 0;
          for (int k = 0; k < 32; ++k) b |= ((32 + k) % 3 == 0 ? 1u : 0u) << k;
          return b;
        }();
        if (ballots[t] != wantBallot) return "ballot at " + std::to_string(t);
        const int wantAnyAll = (w == 0 ? 1 : 0) + 2 * 1 + 4 * 0;
        if (anyAll[t] != wantAnyAll) return "any/all at " + std::to_string(t);
      }
      return "";
    });
  }

  check("atomics", [&]() -> std::string {
    int counter = 0, maxv = -1, cas = 0;
    float fsum = 0.0f;
    CUTLOSS_LAUNCH(atomics, dim3(3), dim3(128), 0, nullptr, &counter, &maxv, &cas, &fsum);
    if (counter != 384) return "atomicAdd count " + std::to_string(counter);
    if (maxv != 49) return "atomicMax " + std::to_string(maxv);
    if (cas < 1 || cas > 128) return "atomicCAS " + std::to_string(cas);
    if (fsum != 192.0f) return "atomicAdd(float) " + std::to_string(fsum);
    return "";
  });

  check("dynamic shared memory, unwritten words read as NaN", [&]() -> std::string {
    std::vector<float> out(64);
    CUTLOSS_LAUNCH(dynamicShared, dim3(1), dim3(64), 64 * sizeof(float), nullptr, out.data(), 64);
    for (int t = 0; t < 64; ++t) {
      if (out[t] != static_cast<float>((t + 1) % 64) * 2.0f) return "value at " + std::to_string(t);
    }
    CUTLOSS_LAUNCH(dynamicShared, dim3(1), dim3(64), 64 * sizeof(float), nullptr, out.data(), 63);
    return std::isnan(out[62]) ? "" : "an unwritten shared word did not read as NaN";
  });

  check("multi-dimensional grids and blocks", [&]() -> std::string {
    std::vector<int> out(2 * 3 * 2 * 4 * 2 * 3, -1);
    CUTLOSS_LAUNCH(indices, dim3(2, 3, 2), dim3(4, 2, 3), 0, nullptr, out.data());
    for (size_t i = 0; i < out.size(); ++i) {
      const int block = static_cast<int>(i) / 24, linear = static_cast<int>(i) % 24;
      if (out[i] != block * 1000 + linear) return "index " + std::to_string(i);
    }
    return "";
  });

  check("__syncthreads_count / _or / _and", [&]() -> std::string {
    std::vector<int> out(4, -1);
    CUTLOSS_LAUNCH(barrierVotes, dim3(1), dim3(64), 0, nullptr, out.data());
    return out == std::vector<int>{16, 1, 1, 0} ? "" : "votes " + std::to_string(out[0]) + "," + std::to_string(out[1]);
  });

  check("run orders: forward, reverse, and shuffled by seed", [&]() -> std::string {
    auto arrivals = [&](simt::Order o, uint64_t seed) {
      simt::setOrder(o, seed);
      int counter = 0;
      std::vector<int> order(64);
      CUTLOSS_LAUNCH(arrivalOrder, dim3(1), dim3(64), 0, nullptr, &counter, order.data());
      return order;
    };
    const auto fwd = arrivals(simt::Order::Forward, 0);
    const auto rev = arrivals(simt::Order::Reverse, 0);
    const auto s1 = arrivals(simt::Order::Shuffled, 1);
    const auto s1again = arrivals(simt::Order::Shuffled, 1);
    const auto s2 = arrivals(simt::Order::Shuffled, 2);
    simt::setOrder(simt::Order::Forward, 0);
    if (fwd[0] != 0 || fwd[63] != 63) return "forward order";
    if (rev[0] != 63 || rev[63] != 0) return "reverse order";
    if (s1 != s1again) return "a seed must give the same shuffle";
    if (s1 == s2 || s1 == fwd) return "different seeds must shuffle differently";
    return "";
  });

  check("bf16 and half conversions round to nearest even", [&]() -> std::string {
    if (__float2bfloat16(1.0f).x != 0x3f80) return "bf16(1)";
    if (__float2bfloat16(1.00390625f).x != 0x3f80) return "bf16 tie to even, down";
    if (__float2bfloat16(1.01171875f).x != 0x3f82) return "bf16 tie to even, up";
    if (__bfloat162float(__float2bfloat16(-3.140625f)) != -3.140625f) return "bf16 exact value";
    if (!std::isnan(__bfloat162float(__float2bfloat16(NAN)))) return "bf16 NaN";
    if (__float2half(1.0f).x != 0x3c00 || __float2half(65504.0f).x != 0x7bff) return "half normal values";
    if (__float2half(1e6f).x != 0x7c00) return "half overflow";
    if (__float2half(5.9604645e-8f).x != 0x0001 || __half2float(__float2half(5.9604645e-8f)) != 5.9604645e-8f) {
      return "half subnormal";
    }
    if (__float2half(1.0f + 1.0f / 2048).x != 0x3c00 || __float2half(1.0f + 3.0f / 2048).x != 0x3c02) {
      return "half tie to even";
    }
    return "";
  });

  check("wmma bf16 16x16x16 and tf32 16x16x8 match plain loops", [&]() -> std::string {
    std::vector<__nv_bfloat16> a(256), b(256);
    std::vector<float> af(256), bf(256), c(256);
    for (int i = 0; i < 256; ++i) {
      a[i] = __float2bfloat16(static_cast<float>((i * 7) % 13) / 8 - 0.75f);
      b[i] = __float2bfloat16(static_cast<float>((i * 5) % 11) / 4 - 1.25f);
    }
    CUTLOSS_LAUNCH(wmmaTile, dim3(1), dim3(32), 0, nullptr, a.data(), b.data(), c.data());
    for (int i = 0; i < 16; ++i) {
      for (int j = 0; j < 16; ++j) {
        float want = 1.0f;
        for (int k = 0; k < 16; ++k) want += __bfloat162float(a[i * 16 + k]) * __bfloat162float(b[j * 16 + k]);
        if (std::fabs(c[i * 16 + j] - want) > 1e-5f) return "bf16 tile at " + std::to_string(i * 16 + j);
      }
    }
    std::vector<float> ta(16 * 8), tb(8 * 16), tc(256);
    for (int i = 0; i < 128; ++i) {
      ta[i] = 1.0f + static_cast<float>(i) / 4096;
      tb[i] = static_cast<float>(i % 9) - 4.0f;
    }
    CUTLOSS_LAUNCH(wmmaTf32, dim3(1), dim3(32), 0, nullptr, ta.data(), tb.data(), tc.data());
    for (int i = 0; i < 16; ++i) {
      for (int j = 0; j < 16; ++j) {
        float want = 0.0f;
        for (int k = 0; k < 8; ++k) want += nvcuda::wmma::__float_to_tf32(ta[i * 8 + k]) * tb[k * 16 + j];
        if (std::fabs(tc[i * 16 + j] - want) > 1e-4f) return "tf32 tile at " + std::to_string(i * 16 + j);
      }
    }
    return nvcuda::wmma::__float_to_tf32(1.0f + 1.0f / 4096) == 1.0f ? "" : "tf32 rounding";
  });
  check("wmma in divergent code", [&] {
    std::vector<__nv_bfloat16> a(256, __float2bfloat16(1.0f));
    std::vector<float> c(256);
    return expectError(
        [&] { CUTLOSS_LAUNCH(wmmaDivergent, dim3(1), dim3(32), 0, nullptr, a.data(), a.data(), c.data()); },
        "divergent warp collective");
  });

  // ---- warp matrix and copy operations, lane by lane
  check("ldmatrix x1, x2, x4, with and without .trans, give the documented fragments", [&]() -> std::string {
    std::vector<uint16_t> m(256);
    for (int i = 0; i < 256; ++i) m[i] = static_cast<uint16_t>(1000 + i);  // matrix j, row r, col c = 1000 + 64j + 8r + c
    for (int count : {1, 2, 4}) {
      for (bool trans : {false, true}) {
        std::vector<uint32_t> out(128, 0xdeadbeefu);
        CUTLOSS_LAUNCH(ldmatrixProbe, dim3(1), dim3(32), 0, nullptr, m.data(), out.data(), count, trans);
        for (int l = 0; l < 32; ++l) {
          for (int j = 0; j < count; ++j) {
            const int row = l / 4, col = 2 * (l % 4);  // PTX ISA: lane l holds row l/4, columns 2(l%4), +1
            const auto at = [&](int r, int c) { return 1000u + 64u * j + 8u * (trans ? c : r) + (trans ? r : c); };
            const uint32_t want = at(row, col) | (at(row, col + 1) << 16);
            if (out[l * 4 + j] != want) {
              return "x" + std::to_string(count) + (trans ? ".trans" : "") + " lane " + std::to_string(l) + " reg " +
                     std::to_string(j);
            }
          }
        }
      }
    }
    return "";
  });

  std::vector<__nv_bfloat16> ma(256), mbt(128);
  std::vector<float> mc0(128);
  for (int i = 0; i < 256; ++i) ma[i] = __float2bfloat16(static_cast<float>((i * 7) % 19) / 8 - 1.0f);
  for (int i = 0; i < 128; ++i) mbt[i] = __float2bfloat16(static_cast<float>((i * 5) % 23) / 4 - 2.5f);
  for (int i = 0; i < 128; ++i) mc0[i] = static_cast<float>(i % 7) - 3.0f;
  const auto plainBf16 = [&](int r, int n) {
    double acc = mc0[r * 8 + n];
    for (int k = 0; k < 16; ++k) acc += static_cast<double>(__bfloat162float(ma[r * 16 + k])) * __bfloat162float(mbt[n * 16 + k]);
    return acc;
  };
  check("mma.sync m16n8k16 bf16 from ldmatrix matches a plain loop", [&]() -> std::string {
    std::vector<float> c = mc0;
    CUTLOSS_LAUNCH(mmaBf16Probe, dim3(1), dim3(32), 0, nullptr, ma.data(), mbt.data(), c.data(), false);
    for (int r = 0; r < 16; ++r)
      for (int n = 0; n < 8; ++n)
        if (std::fabs(c[r * 8 + n] - plainBf16(r, n)) > 1e-5) return "C(" + std::to_string(r) + "," + std::to_string(n) + ")";
    return "";
  });
  check("planted bug: B through ldmatrix .trans gives a visibly wrong product", [&]() -> std::string {
    std::vector<float> c = mc0;
    CUTLOSS_LAUNCH(mmaBf16Probe, dim3(1), dim3(32), 0, nullptr, ma.data(), mbt.data(), c.data(), true);
    int wrong = 0;
    for (int r = 0; r < 16; ++r)
      for (int n = 0; n < 8; ++n) wrong += std::fabs(c[r * 8 + n] - plainBf16(r, n)) > 1e-3;
    std::printf("  %d of 128 outputs wrong\n", wrong);
    return wrong > 64 ? "" : "the wrong .trans went unnoticed";
  });
  check("mma.sync m16n8k16 fp16 and m16n8k8 tf32 with documented fragments match plain loops", [&]() -> std::string {
    std::vector<__half> ha(256), hbt(128);
    for (int i = 0; i < 256; ++i) ha[i] = __float2half(static_cast<float>((i * 11) % 17) / 16 - 0.5f);
    for (int i = 0; i < 128; ++i) hbt[i] = __float2half(static_cast<float>((i * 3) % 13) / 8 - 0.75f);
    std::vector<float> c(128);
    CUTLOSS_LAUNCH(mmaF16Probe, dim3(1), dim3(32), 0, nullptr, ha.data(), hbt.data(), c.data());
    for (int r = 0; r < 16; ++r)
      for (int n = 0; n < 8; ++n) {
        double want = 0;
        for (int k = 0; k < 16; ++k) want += static_cast<double>(__half2float(ha[r * 16 + k])) * __half2float(hbt[n * 16 + k]);
        if (std::fabs(c[r * 8 + n] - want) > 1e-5) return "fp16 C(" + std::to_string(r) + "," + std::to_string(n) + ")";
      }
    std::vector<float> ta(128), tbt(64), tc(128);
    for (int i = 0; i < 128; ++i) ta[i] = 1.0f + static_cast<float>(i) / 3000.0f;
    for (int i = 0; i < 64; ++i) tbt[i] = static_cast<float>(i % 9) / 7.0f - 0.5f;
    CUTLOSS_LAUNCH(mmaTf32Probe, dim3(1), dim3(32), 0, nullptr, ta.data(), tbt.data(), tc.data());
    for (int r = 0; r < 16; ++r)
      for (int n = 0; n < 8; ++n) {
        double want = 0;
        for (int k = 0; k < 8; ++k) {
          want += static_cast<double>(nvcuda::wmma::__float_to_tf32(ta[r * 8 + k])) * nvcuda::wmma::__float_to_tf32(tbt[n * 8 + k]);
        }
        if (std::fabs(tc[r * 8 + n] - want) > 1e-5 * std::fabs(want) + 1e-6) {
          return "tf32 C(" + std::to_string(r) + "," + std::to_string(n) + ")";
        }
      }
    return "";
  });
  check("tf32 conversion rounds to nearest, ties away from zero (cvt.rna)", [&]() -> std::string {
    const float tie = 1.0f + 1.0f / 2048;  // exactly half a tf32 ulp above 1: nearest-even would give 1
    if (simt::bitCast<float>(toTf32(tie)) != 1.0f + 1.0f / 1024) return "tie above 1";
    if (simt::bitCast<float>(toTf32(-tie)) != -(1.0f + 1.0f / 1024)) return "tie below -1";
    if (simt::bitCast<float>(toTf32(1.0f + 1.0f / 4096)) != 1.0f) return "below the tie";
    if (nvcuda::wmma::__float_to_tf32(tie) != 1.0f + 1.0f / 1024) return "wmma::__float_to_tf32 tie";
    if (!std::isinf(simt::bitCast<float>(toTf32(3.4028235e38f)))) return "rounding past the largest tf32";
    return std::isnan(simt::bitCast<float>(toTf32(NAN))) ? "" : "NaN";
  });
  check("mma.sync in divergent code and at two call sites is reported", [&]() -> std::string {
    std::vector<float> c(32);
    std::string why = expectError([&] { CUTLOSS_LAUNCH(mmaDivergent, dim3(1), dim3(32), 0, nullptr, c.data(), 16); },
                                  "divergent warp collective");
    if (!why.empty()) return why;
    why = expectError([&] { CUTLOSS_LAUNCH(mmaDivergent, dim3(1), dim3(48), 0, nullptr, c.data(), 48); }, "partial warp");
    if (!why.empty()) return why;
    CUTLOSS_LAUNCH(mmaDivergent, dim3(1), dim3(32), 0, nullptr, c.data(), 32);  // converged: fine
    return "";
  });

  const int chunks = 5;
  std::vector<float> stream(chunks * 256);
  for (int i = 0; i < chunks * 256; ++i) stream[i] = static_cast<float>((i * 13) % 29) - 14.0f;
  std::vector<float> streamSums(64, 0.0f);
  for (int t = 0; t < 64; ++t)
    for (int c = 0; c < chunks; ++c)
      for (int k = 0; k < 4; ++k) streamSums[t] += stream[c * 256 + (4 * t + 37 + k) % 256];
  const size_t ring = 2 * 256 * sizeof(float);
  for (simt::Order o : kOrders) {
    const std::string name = std::string("cp.async ring with wait_group and barriers, ") + orderName(o);
    check(name.c_str(), [&]() -> std::string {
      simt::setOrder(o, 3);
      std::vector<float> out(64);
      CUTLOSS_LAUNCH(pipelinedSum, dim3(1), dim3(64), ring, nullptr, stream.data(), chunks, out.data(), 0);
      for (int t = 0; t < 64; ++t)
        if (out[t] != streamSums[t]) return "thread " + std::to_string(t) + ": " + std::to_string(out[t]);
      return "";
    });
  }
  check("planted bug: missing wait_group is reported (the copies are still in flight)", [&] {
    std::vector<float> out(64);
    return expectError(
        [&] { CUTLOSS_LAUNCH(pipelinedSum, dim3(1), dim3(64), ring, nullptr, stream.data(), chunks, out.data(), 1); },
        "(cp.async in flight)");
  });
  check("planted bug: missing wait_group reads a stage before its copies land (checker off)", [&]() -> std::string {
    simt::setRaceCheck(false);
    std::vector<float> out(64);
    CUTLOSS_LAUNCH(pipelinedSum, dim3(1), dim3(64), ring, nullptr, stream.data(), chunks, out.data(), 1);
    simt::setRaceCheck(true);
    int wrong = 0;
    for (int t = 0; t < 64; ++t) wrong += !(out[t] == streamSums[t]);
    return wrong == 64 ? "" : std::to_string(64 - wrong) + " threads got the right sum without waiting";
  });
  check("planted bug: a stage overwritten before every thread is done with it is reported", [&] {
    std::vector<float> out(64);
    return expectError(
        [&] { CUTLOSS_LAUNCH(pipelinedSum, dim3(1), dim3(64), ring, nullptr, stream.data(), chunks, out.data(), 2); },
        "(cp.async) the word at dynamic shared memory byte");
  });
  check("two-level reduction: right with its barrier, a reported race without", [&]() -> std::string {
    std::vector<float> out(4);
    CUTLOSS_LAUNCH(twoLevelSum, dim3(4), dim3(256), 0, nullptr, x.data(), out.data(), true);
    for (int b = 0; b < 3; ++b)  // the first 768 values: x has 1000
      if (out[b] != expected[b]) return "block " + std::to_string(b) + ": " + std::to_string(out[b]);
    return expectError([&] { CUTLOSS_LAUNCH(twoLevelSum, dim3(4), dim3(256), 0, nullptr, x.data(), out.data(), false); },
                       "shared-memory race in kernel twoLevelSum, block (0,0,0)");
  });
  check("a warp collective orders its lanes' shared accesses; shared atomics are no race", [&]() -> std::string {
    std::vector<int> out(33, -7);
    CUTLOSS_LAUNCH(warpOrderedExchange, dim3(1), dim3(64), 0, nullptr, out.data());
    for (int l = 0; l < 32; ++l)
      if (out[l] != ((l + 1) % 32) * 3) return "lane " + std::to_string(l);
    return out[32] == 64 ? "" : "counter " + std::to_string(out[32]);
  });
  check("shared-memory bounds: writes past the dynamic window and ldmatrix from global memory", [&]() -> std::string {
    std::vector<float> out(64);
    CUTLOSS_LAUNCH(sharedOverrun, dim3(1), dim3(64), 64 * sizeof(float), nullptr, out.data(), 64);
    std::string why = expectError(
        [&] { CUTLOSS_LAUNCH(sharedOverrun, dim3(1), dim3(64), 60 * sizeof(float), nullptr, out.data(), 60); },
        "out of bounds in kernel sharedOverrun, block (0,0,0): thread (60,0,0) wrote 4 bytes at dynamic shared memory byte 240");
    if (!why.empty()) return why;
    std::vector<uint16_t> m(64, 1);
    std::vector<uint32_t> r(32);
    return expectError([&] { CUTLOSS_LAUNCH(ldmatrixFromGlobal, dim3(1), dim3(32), 0, nullptr, m.data(), r.data()); },
                       "ldmatrix in kernel ldmatrixFromGlobal gave an address that is not shared memory");
  });

  std::printf("%d failed\n", failures);
  return failures == 0 ? 0 : 1;
}
