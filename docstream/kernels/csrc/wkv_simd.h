// Shared helpers of the compiled CPU kernels (wkv_cpu.cpp, linear_rows.cpp, wkv7_train_cpu.cpp):
// compiler hints, eight-float vectors, prefetching, and strided views of [B, T, H, N] inputs.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__GNUC__) || defined(__clang__)
#define WKV_RESTRICT __restrict__
#define WKV_INLINE inline __attribute__((always_inline))
#define WKV_PRAGMA(x) _Pragma(#x)
#define WKV_SIMD WKV_PRAGMA(omp simd)
#define WKV_SIMD_SUM(...) WKV_PRAGMA(omp simd reduction(+ : __VA_ARGS__))
#else
#define WKV_RESTRICT
#define WKV_INLINE inline
#define WKV_SIMD
#define WKV_SIMD_SUM(...)
#endif

namespace wkv {

#if (defined(__GNUC__) || defined(__clang__)) && !defined(WKV_SCALAR)
// Eight floats as a GCC/Clang generic vector: the compiler maps it onto AVX (one register), SSE/NEON
// (two) or scalars. Unlike local float arrays, these stay in registers across the j loops. Without
// them (other compilers, or -DWKV_SCALAR, which the tests build to check that path) the kernels use
// their scalar loops.
#define WKV_VEC 1
typedef float vfloat __attribute__((vector_size(32)));
constexpr int kVec = 8;
WKV_INLINE vfloat vload(const float* p) {
  vfloat x;
  std::memcpy(&x, p, sizeof(x));
  return x;
}
WKV_INLINE void vstore(float* p, vfloat x) { std::memcpy(p, &x, sizeof(x)); }
WKV_INLINE vfloat vset1(float s) { return vfloat{s, s, s, s, s, s, s, s}; }
WKV_INLINE float vsum(vfloat x) { return ((x[0] + x[4]) + (x[1] + x[5])) + ((x[2] + x[6]) + (x[3] + x[7])); }
#endif

// The time loops walk one (batch, head) slice with a stride of H * N floats per token: fetch the
// rows a few tokens ahead so that the loads of the next tokens overlap with the current maths.
constexpr int64_t kPrefetch = 4;

// Locality 3 fetches into every cache level (L1 included), 2 into L2 and the levels below it.
template <int Locality = 3, typename T>
WKV_INLINE void prefetch_row(const T* p, int64_t n) {
#if defined(__GNUC__) || defined(__clang__)
  const char* c = reinterpret_cast<const char*>(p);
  for (int64_t o = 0; o < n * static_cast<int64_t>(sizeof(T)); o += 64) __builtin_prefetch(c + o, 0, Locality);
#else
  (void)p;
  (void)n;
#endif
}

// A [B, T, H, N] (or [B, T, C], sh = 0) tensor whose last dimension is contiguous.
template <typename T>
struct View {
  const T* p;
  int64_t sb, st, sh;
  WKV_INLINE const T* at(int64_t b, int64_t t, int64_t h) const { return p + b * sb + t * st + h * sh; }
};

}  // namespace wkv
