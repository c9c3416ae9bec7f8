// The RWKV-7 forward kernel shared by the inference extension (wkv_cuda.cu, no checkpoints) and the
// training extension (wkv7_train_cuda.cu, a checkpoint every K tokens): one template, so both compute
// y and the state with the same arithmetic. Each token's per-head vectors are staged in shared memory
// (fp32) between two __syncthreads; the next token's values are loaded into registers while the
// current one is being computed. Inputs r, k, v, a, b are fp32, bf16 or fp16 (one dtype F), the decay
// w fp32; everything accumulates in fp32 (kChains partial sums).
#pragma once

#include "wkv_cuda_common.cuh"

namespace wkv {

template <typename F>
struct Inputs {
  const F* __restrict__ r;
  const float* __restrict__ w;
  const F* __restrict__ k;
  const F* __restrict__ v;
  const F* __restrict__ a;
  const F* __restrict__ b;
  WkvStrides sr, sw, sk, sv, sa, sb;
};

// One token's per-head vectors, element i (the calling thread's), in fp32.
struct Tok {
  float r, w, k, v, a, b;
};

template <typename F>
__device__ __forceinline__ Tok load_tok(const Inputs<F>& x, int64_t b, int64_t t, int64_t h, int i) {
  return Tok{to_f(x.r[offset(x.sr, b, t, h) + i]), x.w[offset(x.sw, b, t, h) + i],
             to_f(x.k[offset(x.sk, b, t, h) + i]), to_f(x.v[offset(x.sv, b, t, h) + i]),
             to_f(x.a[offset(x.sa, b, t, h) + i]), to_f(x.b[offset(x.sb, b, t, h) + i])};
}

template <typename F>
Inputs<F> inputs_of(const void* r, const int64_t* sr, const float* w, const int64_t* sw, const void* k,
                    const int64_t* sk, const void* v, const int64_t* sv, const void* a, const int64_t* sa,
                    const void* b, const int64_t* sb) {
  return Inputs<F>{static_cast<const F*>(r), w, static_cast<const F*>(k), static_cast<const F*>(v),
                   static_cast<const F*>(a), static_cast<const F*>(b),
                   WkvStrides{sr[0], sr[1], sr[2]}, WkvStrides{sw[0], sw[1], sw[2]},
                   WkvStrides{sk[0], sk[1], sk[2]}, WkvStrides{sv[0], sv[1], sv[2]},
                   WkvStrides{sa[0], sa[1], sa[2]}, WkvStrides{sb[0], sb[1], sb[2]}};
}

// S <- S diag(w_t) + (S a_t^T) b_t + v_t^T k_t ;  y_t = S r_t,  S indexed [value i][key j]. One thread
// block per (batch, head), N threads; thread i owns row i (value i): S[j] = state[i][j]. K > 0 (the
// training forward): the state before every K-th token is also stored, key-major, into ckpt
// [B, H, ceil(T/K), N, N]; K = 0 (inference): no checkpoints, ckpt unused.
template <typename F, int N, int K>
__global__ void __launch_bounds__(N) wkv7_forward_kernel(int64_t T, int64_t H, Inputs<F> x,
                                                         const float* __restrict__ s_in, float* __restrict__ s_out,
                                                         float* __restrict__ ckpt, F* __restrict__ y) {
  const int64_t bh = blockIdx.x;
  const int64_t b = bh / H, h = bh % H;
  const int i = threadIdx.x;

  __shared__ float rs[N], ws[N], ks[N], as[N], bs[N];

  float S[N];
  const float* sp = s_in + bh * N * N + static_cast<int64_t>(i) * N;
#pragma unroll
  for (int j = 0; j < N; ++j) S[j] = sp[j];

  Tok nx{};
  if (T > 0) nx = load_tok(x, b, 0, h, i);
  F* yp = y + (b * T * H + h) * N + i;
  for (int64_t t = 0; t < T; ++t) {
    if (K > 0 && t % K == 0) {
      const int64_t nblk = (T + K - 1) / K;
      float* cp = ckpt + (bh * nblk + t / K) * N * N + i;
#pragma unroll
      for (int j = 0; j < N; ++j) cp[j * N] = S[j];  // key-major: coalesced over i
    }
    __syncthreads();
    rs[i] = nx.r;
    ws[i] = nx.w;
    ks[i] = nx.k;
    as[i] = nx.a;
    bs[i] = nx.b;
    const float vi = nx.v;
    __syncthreads();
    if (t + 1 < T) nx = load_tok(x, b, t + 1, h, i);  // completes during the maths below
    float part[kChains] = {};
#pragma unroll
    for (int j = 0; j < N; ++j) part[j % kChains] += as[j] * S[j];
    const float sa = chain_sum(part);
    float acc[kChains] = {};
#pragma unroll
    for (int j = 0; j < N; ++j) {
      S[j] = S[j] * ws[j] + sa * bs[j] + vi * ks[j];
      acc[j % kChains] += S[j] * rs[j];
    }
    yp[t * H * N] = from_f<F>(chain_sum(acc));
  }
  float* op = s_out + bh * N * N + static_cast<int64_t>(i) * N;
#pragma unroll
  for (int j = 0; j < N; ++j) op[j] = S[j];
}

}  // namespace wkv
