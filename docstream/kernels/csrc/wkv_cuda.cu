// CUDA WKV kernels for RWKV-5.2/6 (wkv6) and RWKV-7 (wkv7), head size N = WKV_N fixed at compile time.
//
// Maths and state contract: docstream/kernels/reference.py. One thread block per (batch, head) with
// N threads; thread i keeps one row of the head's N x N fp32 state in registers for the whole
// sequence (the RWKV-7 kernel is the one of wkv7_forward.cuh, shared with the training forward).
// Each token's per-head vectors are staged in shared memory (fp32) between two __syncthreads; the
// next token's values are loaded into registers while the current one is being computed. Inputs are fp32, bf16 or fp16 (the decay w and bonus u are always fp32); everything
// accumulates in fp32. Any T: the time loop has no compile-time bound. The state is read from
// s_in and written to s_out (separate buffers, so the caller's state is never modified).
//
// Inputs are [B, T, H, N] tensors with a contiguous last dimension and arbitrary other strides
// (in elements), e.g. the stride-0 decay of RWKV-5.2. The output y is contiguous [B, T, H, N].

#include <cstdint>

#include "wkv7_forward.cuh"
#include "wkv_cuda_common.cuh"

#ifndef WKV_N
#error "compile with -DWKV_N=<head size>"
#endif

namespace {

using namespace wkv;

constexpr int kN = WKV_N;
static_assert(kN >= 1 && kN <= WKV_MAX_N, "WKV_N must be in 1..WKV_MAX_N (one thread per state row)");

// y_t = r_t (diag(u) k_t^T v_t + S) ;  S <- diag(w_t) S + k_t^T v_t,  S indexed [key j][value i].
// Thread i owns column i (value i) of S: S[j] = state[j][i].
template <typename F, int N>
__global__ void __launch_bounds__(N) wkv6_kernel(int64_t T, int64_t H,
                                                 const F* __restrict__ r, WkvStrides sr,
                                                 const F* __restrict__ k, WkvStrides sk,
                                                 const F* __restrict__ v, WkvStrides sv,
                                                 const float* __restrict__ w, WkvStrides sw,
                                                 const float* __restrict__ u,
                                                 const float* __restrict__ s_in, float* __restrict__ s_out,
                                                 F* __restrict__ y) {
  const int64_t bh = blockIdx.x;
  const int64_t b = bh / H, h = bh % H;
  const int i = threadIdx.x;

  __shared__ float rs[N], ks[N], ws[N], us[N];
  us[i] = u[h * N + i];

  float S[N];
  const float* sp = s_in + bh * N * N + i;
#pragma unroll
  for (int j = 0; j < N; ++j) S[j] = sp[j * N];  // coalesced over i

  float nr = 0.f, nk = 0.f, nv = 0.f, nw = 0.f;
  if (T > 0) {
    nr = to_f(r[offset(sr, b, 0, h) + i]);
    nk = to_f(k[offset(sk, b, 0, h) + i]);
    nv = to_f(v[offset(sv, b, 0, h) + i]);
    nw = w[offset(sw, b, 0, h) + i];
  }
  F* yp = y + (b * T * H + h) * N + i;
  for (int64_t t = 0; t < T; ++t) {
    __syncthreads();  // the previous token's shared vectors are no longer read
    rs[i] = nr;
    ks[i] = nk;
    ws[i] = nw;
    const float vi = nv;
    __syncthreads();
    if (t + 1 < T) {  // issue the next token's loads now; they complete during the maths below
      nr = to_f(r[offset(sr, b, t + 1, h) + i]);
      nk = to_f(k[offset(sk, b, t + 1, h) + i]);
      nv = to_f(v[offset(sv, b, t + 1, h) + i]);
      nw = w[offset(sw, b, t + 1, h) + i];
    }
    float acc[kChains] = {};
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const float kv = ks[j] * vi;
      acc[j % kChains] += rs[j] * (us[j] * kv + S[j]);
      S[j] = S[j] * ws[j] + kv;
    }
    yp[t * H * N] = from_f<F>(chain_sum(acc));
  }
  float* op = s_out + bh * N * N + i;
#pragma unroll
  for (int j = 0; j < N; ++j) op[j * N] = S[j];
}

template <typename F>
cudaError_t launch6(int64_t B, int64_t T, int64_t H, const void* r, WkvStrides sr, const void* k,
                    WkvStrides sk, const void* v, WkvStrides sv, const float* w, WkvStrides sw,
                    const float* u, const float* s_in, float* s_out, void* y, cudaStream_t stream) {
  if (B * H == 0) return cudaSuccess;
  wkv6_kernel<F, kN><<<static_cast<unsigned>(B * H), kN, 0, stream>>>(
      T, H, static_cast<const F*>(r), sr, static_cast<const F*>(k), sk, static_cast<const F*>(v), sv, w, sw, u,
      s_in, s_out, static_cast<F*>(y));
  return cudaGetLastError();
}

template <typename F>
cudaError_t launch7(int64_t B, int64_t T, int64_t H, const void* r, WkvStrides sr, const float* w,
                    WkvStrides sw, const void* k, WkvStrides sk, const void* v, WkvStrides sv, const void* a,
                    WkvStrides sa, const void* b, WkvStrides sb, const float* s_in, float* s_out, void* y,
                    cudaStream_t stream) {
  if (B * H == 0) return cudaSuccess;
  const Inputs<F> x{static_cast<const F*>(r), w, static_cast<const F*>(k), static_cast<const F*>(v),
                    static_cast<const F*>(a), static_cast<const F*>(b), sr, sw, sk, sv, sa, sb};
  wkv7_forward_kernel<F, kN, 0><<<static_cast<unsigned>(B * H), kN, 0, stream>>>(T, H, x, s_in, s_out, nullptr,
                                                                                  static_cast<F*>(y));
  return cudaGetLastError();
}

}  // namespace

// Entry points for wkv_cuda.cpp. dtype: 0 = fp32, 1 = bf16, 2 = fp16 (of r, k, v, a, b and y).
// Return a CUDA error string, or nullptr on success.
int docstream_wkv_head_size() { return kN; }

const char* docstream_wkv6_cuda(int dtype, int64_t B, int64_t T, int64_t H, const void* r, const int64_t* sr,
                                const void* k, const int64_t* sk, const void* v, const int64_t* sv,
                                const float* w, const int64_t* sw, const float* u, const float* s_in,
                                float* s_out, void* y, void* stream) {
  const WkvStrides Sr{sr[0], sr[1], sr[2]}, Sk{sk[0], sk[1], sk[2]}, Sv{sv[0], sv[1], sv[2]}, Sw{sw[0], sw[1], sw[2]};
  const auto st = static_cast<cudaStream_t>(stream);
  cudaError_t err;
  switch (dtype) {
    case 0: err = launch6<float>(B, T, H, r, Sr, k, Sk, v, Sv, w, Sw, u, s_in, s_out, y, st); break;
    case 1: err = launch6<__nv_bfloat16>(B, T, H, r, Sr, k, Sk, v, Sv, w, Sw, u, s_in, s_out, y, st); break;
    case 2: err = launch6<__half>(B, T, H, r, Sr, k, Sk, v, Sv, w, Sw, u, s_in, s_out, y, st); break;
    default: return "unsupported dtype";
  }
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

const char* docstream_wkv7_cuda(int dtype, int64_t B, int64_t T, int64_t H, const void* r, const int64_t* sr,
                                const float* w, const int64_t* sw, const void* k, const int64_t* sk,
                                const void* v, const int64_t* sv, const void* a, const int64_t* sa,
                                const void* b, const int64_t* sb, const float* s_in, float* s_out, void* y,
                                void* stream) {
  const WkvStrides Sr{sr[0], sr[1], sr[2]}, Sw{sw[0], sw[1], sw[2]}, Sk{sk[0], sk[1], sk[2]},
      Sv{sv[0], sv[1], sv[2]}, Sa{sa[0], sa[1], sa[2]}, Sb{sb[0], sb[1], sb[2]};
  const auto st = static_cast<cudaStream_t>(stream);
  cudaError_t err;
  switch (dtype) {
    case 0: err = launch7<float>(B, T, H, r, Sr, w, Sw, k, Sk, v, Sv, a, Sa, b, Sb, s_in, s_out, y, st); break;
    case 1: err = launch7<__nv_bfloat16>(B, T, H, r, Sr, w, Sw, k, Sk, v, Sv, a, Sa, b, Sb, s_in, s_out, y, st); break;
    case 2: err = launch7<__half>(B, T, H, r, Sr, w, Sw, k, Sk, v, Sv, a, Sa, b, Sb, s_in, s_out, y, st); break;
    default: return "unsupported dtype";
  }
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}
