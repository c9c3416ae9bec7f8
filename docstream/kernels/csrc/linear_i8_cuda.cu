// CUDA products with int8 weights. Maths: docstream/kernels/reference.py (linear_i8_ref),
//
//     y[m, o] = scale[o] * sum_k x[m, k] * q[o, k]        x [M, K] (fp32/bf16/fp16), q [O, K] int8, scale [O] fp32
//
// Two kernels, chosen by linear_i8_cuda.cpp:
// * few rows (decoding): one warp per row of q reads it once (four int8 per load where K allows),
//   keeps one fp32 sum per row of x, and reduces across the warp. Weights cross the memory bus as int8.
// * dequantize: a block of rows of q, scaled, into a scratch matrix in x's dtype, which the binding then
//   multiplies with cuBLAS (ingestion: many rows, where tensor cores do the work).

#include <cstdint>

#include "wkv_cuda_common.cuh"

namespace {

using namespace wkv;

constexpr int kWarps = 8;  // warps (rows of q) per block of the few-row kernel

template <typename F, int MR>
__global__ void __launch_bounds__(kWarps * 32) linear_i8_few(int64_t K, int64_t O, const F* __restrict__ x,
                                                             int64_t sx, const int8_t* __restrict__ q,
                                                             const float* __restrict__ scale, F* __restrict__ y) {
  const int lane = threadIdx.x & 31;
  const int64_t o = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (o >= O) return;
  const int8_t* row = q + o * K;
  float acc[MR];
#pragma unroll
  for (int m = 0; m < MR; ++m) acc[m] = 0.f;
  int64_t k0 = 0;
  if ((K & 3) == 0) {  // rows start on 4-byte boundaries: four weights per load
    const char4* row4 = reinterpret_cast<const char4*>(row);
    for (int64_t i = lane; i < K / 4; i += 32) {
      const char4 w = row4[i];
      const float w0 = w.x, w1 = w.y, w2 = w.z, w3 = w.w;
#pragma unroll
      for (int m = 0; m < MR; ++m) {
        const F* xm = x + m * sx + 4 * i;
        acc[m] += w0 * to_f(xm[0]) + w1 * to_f(xm[1]) + w2 * to_f(xm[2]) + w3 * to_f(xm[3]);
      }
    }
    k0 = K;
  }
  for (int64_t k = k0 + lane; k < K; k += 32) {
    const float w = row[k];
#pragma unroll
    for (int m = 0; m < MR; ++m) acc[m] += w * to_f(x[m * sx + k]);
  }
#pragma unroll
  for (int m = 0; m < MR; ++m) {
    float s = acc[m];
#pragma unroll
    for (int d = 16; d > 0; d >>= 1) s += __shfl_down_sync(0xffffffffu, s, d);
    if (lane == 0) y[m * O + o] = from_f<F>(s * scale[o]);
  }
}

template <typename F>
__global__ void dequantize_i8(int64_t rows, int64_t K, const int8_t* __restrict__ q, const float* __restrict__ scale,
                              F* __restrict__ out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * K) return;
  out[i] = from_f<F>(static_cast<float>(q[i]) * scale[i / K]);
}

template <typename F, int MR>
cudaError_t launch_few(int64_t K, int64_t O, const void* x, int64_t sx, const int8_t* q, const float* scale, void* y,
                       cudaStream_t stream) {
  const unsigned blocks = static_cast<unsigned>((O + kWarps - 1) / kWarps);
  linear_i8_few<F, MR><<<blocks, kWarps * 32, 0, stream>>>(K, O, static_cast<const F*>(x), sx, q, scale,
                                                          static_cast<F*>(y));
  return cudaGetLastError();
}

template <typename F>
cudaError_t few(int64_t M, int64_t K, int64_t O, const void* x, int64_t sx, const int8_t* q, const float* scale,
                void* y, cudaStream_t st) {
  switch (M) {
    case 1: return launch_few<F, 1>(K, O, x, sx, q, scale, y, st);
    case 2: return launch_few<F, 2>(K, O, x, sx, q, scale, y, st);
    case 3: return launch_few<F, 3>(K, O, x, sx, q, scale, y, st);
    case 4: return launch_few<F, 4>(K, O, x, sx, q, scale, y, st);
    case 5: return launch_few<F, 5>(K, O, x, sx, q, scale, y, st);
    case 6: return launch_few<F, 6>(K, O, x, sx, q, scale, y, st);
    case 7: return launch_few<F, 7>(K, O, x, sx, q, scale, y, st);
    case 8: return launch_few<F, 8>(K, O, x, sx, q, scale, y, st);
    default: return cudaErrorInvalidValue;
  }
}

template <typename F>
cudaError_t dequantize(int64_t rows, int64_t K, const int8_t* q, const float* scale, void* out, cudaStream_t st) {
  const int64_t n = rows * K;
  if (n == 0) return cudaSuccess;
  dequantize_i8<F><<<static_cast<unsigned>((n + 255) / 256), 256, 0, st>>>(rows, K, q, scale, static_cast<F*>(out));
  return cudaGetLastError();
}

const char* result(cudaError_t err) { return err == cudaSuccess ? nullptr : cudaGetErrorString(err); }

}  // namespace

// Entry points for linear_i8_cuda.cpp. dtype: 0 = fp32, 1 = bf16, 2 = fp16 (of x and y). q is [O, K]
// contiguous; x has a contiguous last dimension and row stride sx; y is contiguous [M, O]; 1 <= M <= 8.
// Each returns a CUDA error string, or nullptr on success.
const char* docstream_linear_i8_few_cuda(int dtype, int64_t M, int64_t K, int64_t O, const void* x, int64_t sx,
                                         const int8_t* q, const float* scale, void* y, void* stream) {
  const auto st = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case 0: return result(few<float>(M, K, O, x, sx, q, scale, y, st));
    case 1: return result(few<__nv_bfloat16>(M, K, O, x, sx, q, scale, y, st));
    case 2: return result(few<__half>(M, K, O, x, sx, q, scale, y, st));
    default: return "unsupported dtype";
  }
}

// rows x K int8 weights (contiguous), scaled per row, into out [rows, K] in dtype.
const char* docstream_dequantize_i8_cuda(int dtype, int64_t rows, int64_t K, const int8_t* q, const float* scale,
                                         void* out, void* stream) {
  const auto st = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case 0: return result(dequantize<float>(rows, K, q, scale, out, st));
    case 1: return result(dequantize<__nv_bfloat16>(rows, K, q, scale, out, st));
    case 2: return result(dequantize<__half>(rows, K, q, scale, out, st));
    default: return "unsupported dtype";
  }
}
