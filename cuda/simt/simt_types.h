// Emulated CUDA value types: half, __nv_bfloat16 (round-to-nearest-even conversions, as the
// cuda_fp16.h / cuda_bf16.h *_rn functions) and the nvcuda::wmma fragment API. Fragments are
// opaque on a GPU, so here every lane holds the whole tile and computes the whole product;
// mma_sync is a warp collective, so a divergent wmma call is reported like a divergent shuffle.
// (The documented per-lane layouts of mma.sync and ldmatrix are emulated in warp_ops.h.)
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

// ---------------------------------------------------------------- vector types

struct alignas(16) uint4 {
  unsigned x, y, z, w;
};

// ---------------------------------------------------------------- bfloat16

struct __nv_bfloat16 {
  uint16_t x;
  __nv_bfloat16() = default;
  __nv_bfloat16(float f);  // NOLINT: implicit, as in cuda_bf16.h
  operator float() const;  // NOLINT
};

inline float __bfloat162float(__nv_bfloat16 h) {
  uint32_t u = static_cast<uint32_t>(h.x) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  __nv_bfloat16 h;
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu) != 0) {
    h.x = static_cast<uint16_t>((u >> 16) | 0x0040u);  // stays a NaN
  } else {
    h.x = static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  }
  return h;
}
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
inline __nv_bfloat16::__nv_bfloat16(float f) : x(__float2bfloat16_rn(f).x) {}
inline __nv_bfloat16::operator float() const { return __bfloat162float(*this); }
using nv_bfloat16 = __nv_bfloat16;

// ---------------------------------------------------------------- half (IEEE binary16)

struct __half {
  uint16_t x;
  __half() = default;
  __half(float f);  // NOLINT
  operator float() const;  // NOLINT
};
using half = __half;

inline float __half2float(__half h) {
  const uint32_t sign = static_cast<uint32_t>(h.x & 0x8000u) << 16;
  const uint32_t exp = (h.x >> 10) & 0x1fu;
  uint32_t mant = h.x & 0x3ffu;
  uint32_t u;
  if (exp == 0) {
    if (mant == 0) {
      u = sign;
    } else {  // subnormal half: normalize into an f32
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while ((mant & 0x400u) == 0);
      u = sign | (static_cast<uint32_t>(127 - 15 - e) << 23) | ((mant & 0x3ffu) << 13);
    }
  } else if (exp == 0x1f) {
    u = sign | 0x7f800000u | (mant << 13);
  } else {
    u = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline __half __float2half_rn(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t absu = u & 0x7fffffffu;
  __half h;
  if (absu >= 0x7f800000u) {  // inf or NaN
    h.x = static_cast<uint16_t>(sign | 0x7c00u | (absu > 0x7f800000u ? 0x200u : 0u));
    return h;
  }
  if (absu >= 0x477ff000u) {  // rounds to >= 65520: overflow to inf
    h.x = static_cast<uint16_t>(sign | 0x7c00u);
    return h;
  }
  if (absu < 0x38800000u) {  // below the smallest normal half: subnormal or zero
    const float a = std::fabs(f) * 16777216.0f;  // in units of 2^-24, exact scaling
    const uint32_t q = static_cast<uint32_t>(std::nearbyint(a));  // current rounding mode: nearest-even
    h.x = static_cast<uint16_t>(sign | q);
    return h;
  }
  const uint32_t exp = (absu >> 23) - 127 + 15;
  const uint32_t mant = absu & 0x7fffffu;
  uint32_t r = (exp << 10) | (mant >> 13);
  const uint32_t rest = mant & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (r & 1u))) ++r;  // nearest, ties to even
  h.x = static_cast<uint16_t>(sign | r);
  return h;
}
inline __half __float2half(float f) { return __float2half_rn(f); }
inline __half::__half(float f) : x(__float2half_rn(f).x) {}
inline __half::operator float() const { return __half2float(*this); }

// ---------------------------------------------------------------- wmma

namespace nvcuda::wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
namespace precision {
struct tf32 {};
}  // namespace precision

/**
 * Rounds an f32 to tf32 (10 explicit mantissa bits) as cvt.rna.tf32.f32 does: to nearest,
 * ties away from zero (adding half a tf32 ulp to the magnitude bits; a carry into the
 * exponent is the correct rounding up, to infinity past the largest tf32). NaN and inf stay.
 */
inline float __float_to_tf32(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & 0xffffe000u;
  std::memcpy(&f, &u, 4);
  return f;
}

namespace detail {
template <class Use, int M, int N, int K>
struct Dims;
template <int M, int N, int K>
struct Dims<matrix_a, M, N, K> {
  static constexpr int rows = M, cols = K;
};
template <int M, int N, int K>
struct Dims<matrix_b, M, N, K> {
  static constexpr int rows = K, cols = N;
};
template <int M, int N, int K>
struct Dims<accumulator, M, N, K> {
  static constexpr int rows = M, cols = N;
};
template <class T>
struct Storage {
  using type = T;
};
template <>
struct Storage<precision::tf32> {
  using type = float;
};
/** A warp-wide rendezvous, so every lane of the warp must reach the same wmma call. */
void warpConverge(const char* site);
/** The calling thread's lane in its warp. */
unsigned currentLane();
}  // namespace detail

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  using element_type = typename detail::Storage<T>::type;
  static constexpr int rows = detail::Dims<Use, M, N, K>::rows;
  static constexpr int cols = detail::Dims<Use, M, N, K>::cols;
  static constexpr int num_elements = rows * cols;
  element_type x[num_elements];  // the whole tile, row-major, in every lane
};

template <class Use, int M, int N, int K, class T, class L>
inline void fill_fragment(fragment<Use, M, N, K, T, L>& f, typename fragment<Use, M, N, K, T, L>::element_type v) {
  for (auto& e : f.x) e = v;
}

template <class Use, int M, int N, int K, class T, class L, class P>
inline void load_matrix_sync(fragment<Use, M, N, K, T, L>& f, const P* p, unsigned ldm) {
  using F = fragment<Use, M, N, K, T, L>;
  constexpr bool colMajor = std::is_same_v<L, col_major>;
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c) f.x[r * F::cols + c] = p[colMajor ? c * ldm + r : r * ldm + c];
}

template <int M, int N, int K, class T, class P>
inline void load_matrix_sync(fragment<accumulator, M, N, K, T, void>& f, const P* p, unsigned ldm, layout_t layout) {
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c) f.x[r * N + c] = p[layout == mem_col_major ? c * ldm + r : r * ldm + c];
}

/** Every lane holds the whole tile but stores only its share (element i goes to lane i % 32),
 *  as the hardware's lanes do: 32 lanes writing one word would be a race. */
template <int M, int N, int K, class T, class P>
inline void store_matrix_sync(P* p, const fragment<accumulator, M, N, K, T, void>& f, unsigned ldm, layout_t layout) {
  const int lane = static_cast<int>(detail::currentLane());
  for (int i = lane; i < M * N; i += 32) {
    const int r = i / N, c = i % N;
    p[layout == mem_col_major ? c * ldm + r : r * ldm + c] = f.x[i];
  }
}

template <int M, int N, int K, class TA, class LA, class TB, class LB, class TC>
inline void mma_sync(fragment<accumulator, M, N, K, TC, void>& d, const fragment<matrix_a, M, N, K, TA, LA>& a,
                     const fragment<matrix_b, M, N, K, TB, LB>& b, const fragment<accumulator, M, N, K, TC, void>& c) {
  detail::warpConverge("wmma::mma_sync");
  fragment<accumulator, M, N, K, TC, void> out;
  for (int i = 0; i < M; ++i) {
    for (int j = 0; j < N; ++j) {
      float acc = static_cast<float>(c.x[i * N + j]);
      for (int k = 0; k < K; ++k) acc += static_cast<float>(a.x[i * K + k]) * static_cast<float>(b.x[k * N + j]);
      out.x[i * N + j] = acc;
    }
  }
  d = out;
}

}  // namespace nvcuda::wmma
