// Shared helpers of the CUDA kernels (wkv_cuda.cu, wkv4_cuda.cu, wkv7_train_cuda.cu): dtype
// conversions, input strides, interleaved partial sums, and the head-size bound.
#pragma once

#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#include <cstdint>

// The largest head size, from docstream/kernels/build.py (MAX_HEAD_SIZE) for the builds that bake a
// head size in; the kernels keep one row of the state per thread in registers.
#if defined(WKV_N) && !defined(WKV_MAX_N)
#error "compile with -DWKV_MAX_N=<largest head size> (docstream/kernels/build.py passes MAX_HEAD_SIZE)"
#endif

namespace wkv {

// Strides (in elements) of a [B, T, H, N] input over its first three dimensions.
struct WkvStrides {
  int64_t b, t, h;
};

__device__ __forceinline__ int64_t offset(const WkvStrides& s, int64_t b, int64_t t, int64_t h) {
  return b * s.b + t * s.t + h * s.h;
}

template <typename F> __device__ __forceinline__ float to_f(F x);
template <> __device__ __forceinline__ float to_f<float>(float x) { return x; }
template <> __device__ __forceinline__ float to_f<__half>(__half x) { return __half2float(x); }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename F> __device__ __forceinline__ F from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// The sums over j use kChains interleaved partial sums: shorter dependency chains per token, which
// is what bounds the time loop when there are few (batch, head) blocks.
constexpr int kChains = 4;
__device__ __forceinline__ float chain_sum(const float (&p)[kChains]) { return (p[0] + p[1]) + (p[2] + p[3]); }

}  // namespace wkv
