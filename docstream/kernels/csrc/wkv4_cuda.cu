// CUDA WKV kernel for RWKV-4. Maths and state contract: docstream/kernels/reference.py (wkv4_ref).
//
// One thread per (batch, channel) walks the sequence keeping (a, b, p) in registers, with the
// running-maximum trick that keeps exp() finite. k and v are [B, T, C] with a contiguous channel
// dimension and arbitrary batch/time strides (fp32, bf16 or fp16); w, u and the state are fp32;
// y is contiguous [B, T, C] in the dtype of k. The state is read from s_in and written to s_out.

#include <cstdint>

#include "wkv_cuda_common.cuh"

namespace {

using namespace wkv;

constexpr int kThreads = 128;

template <typename F>
__global__ void __launch_bounds__(kThreads) wkv4_kernel(int64_t B, int64_t T, int64_t C,
                                                        const float* __restrict__ w, const float* __restrict__ u,
                                                        const F* __restrict__ k, int64_t k_sb, int64_t k_st,
                                                        const F* __restrict__ v, int64_t v_sb, int64_t v_st,
                                                        const float* __restrict__ s_in, float* __restrict__ s_out,
                                                        F* __restrict__ y) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= B * C) return;
  const int64_t b = idx / C, c = idx % C;
  const float* s = s_in + b * 3 * C + c;
  float aa = s[0], bb = s[C], pp = s[2 * C];
  const float ww = w[c], uu = u[c];
  const F* kp = k + b * k_sb + c;
  const F* vp = v + b * v_sb + c;
  F* yp = y + b * T * C + c;
  float kn = 0.f, vn = 0.f;
  if (T > 0) {
    kn = to_f(kp[0]);
    vn = to_f(vp[0]);
  }
  for (int64_t t = 0; t < T; ++t) {
    const float kk = kn, vv = vn;
    if (t + 1 < T) {  // the next token's loads overlap with this token's maths
      kn = to_f(kp[(t + 1) * k_st]);
      vn = to_f(vp[(t + 1) * v_st]);
    }
    const float o = uu + kk;
    float q = fmaxf(pp, o);
    float e1 = expf(pp - q), e2 = expf(o - q);
    yp[t * C] = from_f<F>((e1 * aa + e2 * vv) / (e1 * bb + e2));
    const float wp = ww + pp;
    q = fmaxf(wp, kk);
    e1 = expf(wp - q);
    e2 = expf(kk - q);
    aa = e1 * aa + e2 * vv;
    bb = e1 * bb + e2;
    pp = q;
  }
  float* o = s_out + b * 3 * C + c;
  o[0] = aa;
  o[C] = bb;
  o[2 * C] = pp;
}

template <typename F>
cudaError_t launch(int64_t B, int64_t T, int64_t C, const float* w, const float* u, const void* k, int64_t k_sb,
                   int64_t k_st, const void* v, int64_t v_sb, int64_t v_st, const float* s_in, float* s_out, void* y,
                   cudaStream_t stream) {
  const int64_t n = B * C;
  if (n == 0) return cudaSuccess;
  const unsigned blocks = static_cast<unsigned>((n + kThreads - 1) / kThreads);
  wkv4_kernel<F><<<blocks, kThreads, 0, stream>>>(B, T, C, w, u, static_cast<const F*>(k), k_sb, k_st,
                                                  static_cast<const F*>(v), v_sb, v_st, s_in, s_out,
                                                  static_cast<F*>(y));
  return cudaGetLastError();
}

}  // namespace

// Entry point for wkv4_cuda.cpp. dtype: 0 = fp32, 1 = bf16, 2 = fp16 (of k, v and y).
// Returns a CUDA error string, or nullptr on success.
const char* docstream_wkv4_cuda(int dtype, int64_t B, int64_t T, int64_t C, const float* w, const float* u,
                                const void* k, int64_t k_sb, int64_t k_st, const void* v, int64_t v_sb,
                                int64_t v_st, const float* s_in, float* s_out, void* y, void* stream) {
  const auto st = static_cast<cudaStream_t>(stream);
  cudaError_t err;
  switch (dtype) {
    case 0: err = launch<float>(B, T, C, w, u, k, k_sb, k_st, v, v_sb, v_st, s_in, s_out, y, st); break;
    case 1: err = launch<__nv_bfloat16>(B, T, C, w, u, k, k_sb, k_st, v, v_sb, v_st, s_in, s_out, y, st); break;
    case 2: err = launch<__half>(B, T, C, w, u, k, k_sb, k_st, v, v_sb, v_st, s_in, s_out, y, st); break;
    default: return "unsupported dtype";
  }
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}
