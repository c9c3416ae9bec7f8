// The RWKV-7 token step shared by the CPU inference kernel (wkv_cpu.cpp) and the CPU training
// kernels (wkv7_train_cpu.cpp). Maths (docstream/kernels/reference.py, wkv7_ref) on the key-major
// state ST[j][i] = S[i][j] (value i, key j), so that every inner loop runs over the contiguous value
// index i without horizontal sums:
//   sa_i = sum_j a_j ST_ji ;  ST_ji <- w_j ST_ji + b_j sa_i + k_j v_i ;  y_i = sum_j r_j ST_ji
// Columns i are independent: they are processed in blocks whose sa and y stay in registers (vector
// blocks of 32 and 8 for fp32 on GCC/Clang, then scalar blocks). The per-token arithmetic is the same
// whatever T, so splitting a sequence (carrying the state) gives bitwise the same result.
//
// Chains: how many interleaved partial sums make up sa. The inference kernel uses 2 (twice the
// independent FMA chains: decoding latency), the training kernels 1. Each path keeps the order it
// always had, so that its results, and the checkpoints the training backward recomputes, stay
// bitwise as before.
#pragma once

#include <cstdint>
#include <type_traits>
#include <vector>

#include "wkv_simd.h"

namespace wkv {

// One token's input rows of one (batch, head) slice.
template <typename T>
struct Token {
  const T *r, *w, *k, *v, *a, *b;
};

// Scalar columns [i0, i0 + BW): reads `in`, writes `out` (the same buffer or not: every element is
// read before it is written, at the same index); sa_out [N] (optional) receives sa, y [N] (optional)
// receives S_t r_t.
template <typename T, int BW, int Chains>
WKV_INLINE void wkv7_cols(int64_t N, int64_t i0, const T* in, T* out, const Token<T>& x, T* sa_out, T* y) {
  static_assert(Chains == 1 || Chains == 2, "one or two partial sums");
  T sa[BW], sa2[BW], acc[BW], vv[BW];
  WKV_SIMD
  for (int i = 0; i < BW; ++i) {
    sa[i] = T(0);
    sa2[i] = T(0);
    acc[i] = T(0);
    vv[i] = x.v[i0 + i];
  }
  int64_t j = 0;
  if constexpr (Chains == 2) {
    for (; j + 2 <= N; j += 2) {
      const T a0 = x.a[j], a1 = x.a[j + 1];
      const T* row0 = in + j * N + i0;
      const T* row1 = row0 + N;
      WKV_SIMD
      for (int i = 0; i < BW; ++i) {
        sa[i] += a0 * row0[i];
        sa2[i] += a1 * row1[i];
      }
    }
  }
  for (; j < N; ++j) {
    const T a0 = x.a[j];
    const T* row0 = in + j * N + i0;
    WKV_SIMD
    for (int i = 0; i < BW; ++i) sa[i] += a0 * row0[i];
  }
  if constexpr (Chains == 2) {
    WKV_SIMD
    for (int i = 0; i < BW; ++i) sa[i] += sa2[i];
  }
  for (j = 0; j < N; ++j) {
    const T wj = x.w[j], bj = x.b[j], kj = x.k[j], rj = x.r[j];
    const T* row = in + j * N + i0;
    T* dst = out + j * N + i0;
    WKV_SIMD
    for (int i = 0; i < BW; ++i) {
      const T s = row[i] * wj + sa[i] * bj + vv[i] * kj;
      dst[i] = s;
      acc[i] += s * rj;
    }
  }
  if (sa_out != nullptr) {
    WKV_SIMD
    for (int i = 0; i < BW; ++i) sa_out[i0 + i] = sa[i];
  }
  if (y != nullptr) {
    WKV_SIMD
    for (int i = 0; i < BW; ++i) y[i0 + i] = acc[i];
  }
}

#ifdef WKV_VEC
// The same for BV * 8 fp32 columns held in vector registers.
template <int BV, int Chains>
WKV_INLINE void wkv7_vcols(int64_t N, int64_t i0, const float* in, float* out, const Token<float>& x,
                           float* sa_out, float* y) {
  vfloat sa[BV], sa2[BV], acc[BV], vv[BV];
  for (int q = 0; q < BV; ++q) {
    sa[q] = vset1(0.0f);
    sa2[q] = vset1(0.0f);
    acc[q] = vset1(0.0f);
    vv[q] = vload(x.v + i0 + q * kVec);
  }
  int64_t j = 0;
  if constexpr (Chains == 2) {
    for (; j + 2 <= N; j += 2) {
      const vfloat a0 = vset1(x.a[j]), a1 = vset1(x.a[j + 1]);
      const float* row0 = in + j * N + i0;
      const float* row1 = row0 + N;
      for (int q = 0; q < BV; ++q) {
        sa[q] += a0 * vload(row0 + q * kVec);
        sa2[q] += a1 * vload(row1 + q * kVec);
      }
    }
  }
  for (; j < N; ++j) {
    const vfloat a0 = vset1(x.a[j]);
    const float* row0 = in + j * N + i0;
    for (int q = 0; q < BV; ++q) sa[q] += a0 * vload(row0 + q * kVec);
  }
  if constexpr (Chains == 2) {
    for (int q = 0; q < BV; ++q) sa[q] += sa2[q];
  }
  for (j = 0; j < N; ++j) {
    const vfloat wj = vset1(x.w[j]), bj = vset1(x.b[j]), kj = vset1(x.k[j]), rj = vset1(x.r[j]);
    const float* row = in + j * N + i0;
    float* dst = out + j * N + i0;
    for (int q = 0; q < BV; ++q) {
      const vfloat s = vload(row + q * kVec) * wj + sa[q] * bj + vv[q] * kj;
      vstore(dst + q * kVec, s);
      acc[q] += s * rj;
    }
  }
  for (int q = 0; q < BV; ++q) {
    if (sa_out != nullptr) vstore(sa_out + i0 + q * kVec, sa[q]);
    if (y != nullptr) vstore(y + i0 + q * kVec, acc[q]);
  }
}
#endif

// All N columns in one pass per row, one partial sum for sa (needs sa_out): the training kernels'
// form for fp64 and for head sizes that are not a multiple of 8. Per column the same sums as
// wkv7_cols<T, BW, 1>, but the compiler contracts this loop shape into FMAs its own way, so it is kept
// as it was: the training kernels' results stay bitwise what they were.
template <typename T>
WKV_INLINE void wkv7_rows(int64_t N, const T* in, T* out, const Token<T>& x, T* sa, T* y) {
  WKV_SIMD
  for (int64_t i = 0; i < N; ++i) sa[i] = T(0);
  for (int64_t j = 0; j < N; ++j) {
    const T aj = x.a[j];
    const T* row = in + j * N;
    WKV_SIMD
    for (int64_t i = 0; i < N; ++i) sa[i] += aj * row[i];
  }
  if (y != nullptr) {
    WKV_SIMD
    for (int64_t i = 0; i < N; ++i) y[i] = T(0);
  }
  for (int64_t j = 0; j < N; ++j) {
    const T wj = x.w[j], bj = x.b[j], kj = x.k[j];
    const T* row = in + j * N;
    T* dst = out + j * N;
    if (y != nullptr) {
      const T rj = x.r[j];
      WKV_SIMD
      for (int64_t i = 0; i < N; ++i) {
        const T s = row[i] * wj + sa[i] * bj + x.v[i] * kj;
        dst[i] = s;
        y[i] += s * rj;
      }
    } else {
      WKV_SIMD
      for (int64_t i = 0; i < N; ++i) dst[i] = row[i] * wj + sa[i] * bj + x.v[i] * kj;
    }
  }
}

// One token on a key-major N x N state, in -> out (may be the same buffer). NC > 0: N known at
// compile time. Chains = 2 (inference): vector blocks of 32 and 8 columns, then (all columns on
// compilers without vector types) scalar blocks of 32, 8 and 1. Chains = 1 (training): vector blocks
// when N is a multiple of 8 (fp32), else wkv7_rows.
template <typename T, int NC, int Chains>
WKV_INLINE void wkv7_step(int64_t N_, const T* in, T* out, const Token<T>& x, T* sa_out, T* y) {
  const int64_t N = NC > 0 ? NC : N_;
  int64_t i0 = 0;
#ifdef WKV_VEC
  if constexpr (std::is_same_v<T, float>) {
    if (Chains == 2 || N % kVec == 0) {
      for (; i0 + 4 * kVec <= N; i0 += 4 * kVec) wkv7_vcols<4, Chains>(N, i0, in, out, x, sa_out, y);
      for (; i0 + kVec <= N; i0 += kVec) wkv7_vcols<1, Chains>(N, i0, in, out, x, sa_out, y);
    }
  }
#endif
  if constexpr (Chains == 1) {
    if (i0 < N) wkv7_rows<T>(N, in, out, x, sa_out, y);  // i0 is 0 here
  } else {
    for (; i0 + 32 <= N; i0 += 32) wkv7_cols<T, 32, Chains>(N, i0, in, out, x, sa_out, y);
    for (; i0 + 8 <= N; i0 += 8) wkv7_cols<T, 8, Chains>(N, i0, in, out, x, sa_out, y);
    for (; i0 < N; ++i0) wkv7_cols<T, 1, Chains>(N, i0, in, out, x, sa_out, y);
  }
}

#if defined(WKV_VEC) && defined(__has_builtin)
#if __has_builtin(__builtin_shufflevector)
#define WKV_SHUFFLE 1
#endif
#endif

#ifdef WKV_SHUFFLE
#define WKV_SHUF(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
// dst[c][r] = src[r][c] for one 8 x 8 tile (row strides ss, ds), in registers: 24 shuffles.
WKV_INLINE void transpose8x8(const float* src, int64_t ss, float* dst, int64_t ds) {
  const vfloat r0 = vload(src), r1 = vload(src + ss), r2 = vload(src + 2 * ss), r3 = vload(src + 3 * ss);
  const vfloat r4 = vload(src + 4 * ss), r5 = vload(src + 5 * ss), r6 = vload(src + 6 * ss), r7 = vload(src + 7 * ss);
  const vfloat t0 = WKV_SHUF(r0, r1, 0, 8, 1, 9, 4, 12, 5, 13), t1 = WKV_SHUF(r0, r1, 2, 10, 3, 11, 6, 14, 7, 15);
  const vfloat t2 = WKV_SHUF(r2, r3, 0, 8, 1, 9, 4, 12, 5, 13), t3 = WKV_SHUF(r2, r3, 2, 10, 3, 11, 6, 14, 7, 15);
  const vfloat t4 = WKV_SHUF(r4, r5, 0, 8, 1, 9, 4, 12, 5, 13), t5 = WKV_SHUF(r4, r5, 2, 10, 3, 11, 6, 14, 7, 15);
  const vfloat t6 = WKV_SHUF(r6, r7, 0, 8, 1, 9, 4, 12, 5, 13), t7 = WKV_SHUF(r6, r7, 2, 10, 3, 11, 6, 14, 7, 15);
  const vfloat u0 = WKV_SHUF(t0, t2, 0, 1, 8, 9, 4, 5, 12, 13), u1 = WKV_SHUF(t0, t2, 2, 3, 10, 11, 6, 7, 14, 15);
  const vfloat u2 = WKV_SHUF(t1, t3, 0, 1, 8, 9, 4, 5, 12, 13), u3 = WKV_SHUF(t1, t3, 2, 3, 10, 11, 6, 7, 14, 15);
  const vfloat u4 = WKV_SHUF(t4, t6, 0, 1, 8, 9, 4, 5, 12, 13), u5 = WKV_SHUF(t4, t6, 2, 3, 10, 11, 6, 7, 14, 15);
  const vfloat u6 = WKV_SHUF(t5, t7, 0, 1, 8, 9, 4, 5, 12, 13), u7 = WKV_SHUF(t5, t7, 2, 3, 10, 11, 6, 7, 14, 15);
  vstore(dst, WKV_SHUF(u0, u4, 0, 1, 2, 3, 8, 9, 10, 11));
  vstore(dst + ds, WKV_SHUF(u1, u5, 0, 1, 2, 3, 8, 9, 10, 11));
  vstore(dst + 2 * ds, WKV_SHUF(u2, u6, 0, 1, 2, 3, 8, 9, 10, 11));
  vstore(dst + 3 * ds, WKV_SHUF(u3, u7, 0, 1, 2, 3, 8, 9, 10, 11));
  vstore(dst + 4 * ds, WKV_SHUF(u0, u4, 4, 5, 6, 7, 12, 13, 14, 15));
  vstore(dst + 5 * ds, WKV_SHUF(u1, u5, 4, 5, 6, 7, 12, 13, 14, 15));
  vstore(dst + 6 * ds, WKV_SHUF(u2, u6, 4, 5, 6, 7, 12, 13, 14, 15));
  vstore(dst + 7 * ds, WKV_SHUF(u3, u7, 4, 5, 6, 7, 12, 13, 14, 15));
}
#undef WKV_SHUF
#endif

// dst = src^T for N x N matrices (exact: values are only moved).
template <typename T>
void transpose_copy(const T* WKV_RESTRICT src, T* WKV_RESTRICT dst, int64_t N) {
#ifdef WKV_SHUFFLE
  if constexpr (std::is_same_v<T, float>) {
    if (N % 8 == 0) {
      for (int64_t i = 0; i < N; i += 8)
        for (int64_t j = 0; j < N; j += 8) transpose8x8(src + i * N + j, N, dst + j * N + i, N);
      return;
    }
  }
#endif
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = 0; j < N; ++j) dst[j * N + i] = src[i * N + j];
}

// A 64-byte aligned scratch array.
template <typename T>
struct Aligned {
  std::vector<T> store;
  T* p;
  explicit Aligned(int64_t n) : store(static_cast<size_t>(n) + 64 / sizeof(T)) {
    p = store.data();
    p += (64 - reinterpret_cast<uintptr_t>(p) % 64) % 64 / sizeof(T);
  }
};

}  // namespace wkv
