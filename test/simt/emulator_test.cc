// Tests of the SIMT emulator itself (cuda/simt/): each case launches small kernels and
// checks results against plain loops, or checks that a misbehaving kernel is reported.
// Prints "ok <case>" or "FAIL <case>: why" per case; exits 1 if any failed.
#include "runtime.h"

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

  // ---- the same kernel without barriers is caught: some order gives a wrong sum
  check("missing __syncthreads changes the result in some order", [&]() -> std::string {
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

  std::printf("%d failed\n", failures);
  return failures == 0 ? 0 : 1;
}
