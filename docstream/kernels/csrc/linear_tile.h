// The register tile shared by the few-row products (linear_rows.cpp: fp32 weights, linear_i8.cpp: int8
// weights): MR rows of x against OR rows of a weight matrix, each output one sum over k in order.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "wkv_simd.h"

namespace wkv {

#ifdef WKV_VEC
WKV_INLINE vfloat vload_w(const float* p) { return vload(p); }

// Eight int8 weights widened to eight floats: one sign-extension and one conversion on AVX2 (the
// compiler's generic vector conversion made the int8 products 3-7x slower there), the compiler's own
// sequence elsewhere.
WKV_INLINE vfloat vload_w(const int8_t* p) {
#if defined(__AVX2__)
  __m128i bytes;
  std::memcpy(&bytes, p, 8);
  return reinterpret_cast<vfloat>(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes)));
#else
  typedef int8_t vint8 __attribute__((vector_size(8)));
  vint8 q;
  std::memcpy(&q, p, sizeof(q));
  return __builtin_convertvector(q, vfloat);
#endif
}
#endif

// sum[m][o] = sum over k of x[m * sx + k] * w[o * sw + k], for W = float or int8_t.
template <int MR, int OR, typename W>
WKV_INLINE void dot_tile(int64_t K, const float* WKV_RESTRICT x, int64_t sx, const W* WKV_RESTRICT w, int64_t sw,
                         float (&sum)[MR][OR]) {
  int64_t k = 0;
#ifdef WKV_VEC
  vfloat acc[MR][OR];
  for (int m = 0; m < MR; ++m)
    for (int o = 0; o < OR; ++o) acc[m][o] = vset1(0.0f);
  for (; k + kVec <= K; k += kVec) {
    vfloat wv[OR];
    for (int o = 0; o < OR; ++o) wv[o] = vload_w(w + o * sw + k);
    for (int m = 0; m < MR; ++m) {
      const vfloat xv = vload(x + m * sx + k);
      for (int o = 0; o < OR; ++o) acc[m][o] += xv * wv[o];
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int o = 0; o < OR; ++o) sum[m][o] = vsum(acc[m][o]);
#else
  for (int m = 0; m < MR; ++m)
    for (int o = 0; o < OR; ++o) sum[m][o] = 0.0f;
#endif
  for (; k < K; ++k)
    for (int m = 0; m < MR; ++m)
      for (int o = 0; o < OR; ++o) sum[m][o] += x[m * sx + k] * static_cast<float>(w[o * sw + k]);
}

}  // namespace wkv
