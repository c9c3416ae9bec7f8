// CUDA training kernels for RWKV-7: a forward that saves state checkpoints, and its backward.
// Head size N = WKV_N and checkpoint interval K = WKV_CHUNK are fixed at compile time.
//
// Maths: see wkv7_train_cpu.cpp, whose structure these kernels mirror (same quantities, same order),
// with S indexed [value i][key j]:
//   forward   sa = S a ;  S <- S diag(w) + sa b + v^T k ;  y = S r
//   backward  G += dy^T r ; dr_j = sum_i S[i][j] dy_i ; dv_i = sum_j G[i][j] k_j ; dk_j = sum_i G[i][j] v_i ;
//             dw_j = sum_i G[i][j] Sprev[i][j] ; db_j = sum_i G[i][j] sa_i ; dsa_i = sum_j G[i][j] b_j ;
//             da_j = sum_i dsa_i Sprev[i][j] ;  G <- G diag(w) + dsa^T a
//
// One thread block per (batch, head), N threads. Inputs r, k, v, a, b, dy are fp32, bf16 or fp16 (one
// dtype F), the decay w fp32; everything accumulates in fp32 and the gradients are written in the
// dtype of their input (F, and fp32 for dw). Inputs are [B, T, H, N] with a contiguous last dimension
// and arbitrary other strides (in elements); outputs are contiguous.
//
// Memory layout shared with the CPU kernels: checkpoints ckpt [B, H, ceil(T/K), N, N] hold the state
// before tokens 0, K, 2K, ... key-major (ckpt[..][j][i] = S[i][j]), so that thread i, which owns row i
// of S in the forward, writes them coalesced. The backward needs the states of a block again: it
// recomputes them from the block's checkpoint into a global scratch buffer [B, H, K, N, N] (also
// key-major; written coalesced, read as contiguous rows by the thread that owns key j), keeps the
// block's sa vectors in shared memory, then walks the block's tokens in reverse.
//
// In the backward thread i holds the gradient G twice, in registers: row i (Grow[j] = G[i][j], for the
// sums over j: dv_i, dsa_i) and column i (Gcol[m] = G[m][i], for the sums over the value index: dr_i,
// dk_i, dw_i, db_i, da_i). Both copies get the same updates, so they stay equal.

#include <cstdint>

#include "wkv7_forward.cuh"
#include "wkv_cuda_common.cuh"

#ifndef WKV_N
#error "compile with -DWKV_N=<head size>"
#endif
#ifndef WKV_CHUNK
#error "compile with -DWKV_CHUNK=<tokens between state checkpoints>"
#endif

namespace {

using namespace wkv;

constexpr int kN = WKV_N;
constexpr int kK = WKV_CHUNK;
static_assert(kN >= 1 && kN <= WKV_MAX_N, "WKV_N must be in 1..WKV_MAX_N (one thread per state row)");
static_assert(kK >= 1 && kK <= 256, "WKV_CHUNK must be in 1..256");

template <typename F>
struct Grads {
  F* __restrict__ dr;
  float* __restrict__ dw;
  F* __restrict__ dk;
  F* __restrict__ dv;
  F* __restrict__ da;
  F* __restrict__ db;
};

// Backward. Thread i: row i and column i of G (see the file comment). `scratch` is written and read
// by the block itself, so it is neither const nor __restrict__ (no read-only cache path for it).
template <typename F, int N>
__global__ void __launch_bounds__(N) wkv7_backward_kernel(int64_t T, int64_t H, Inputs<F> x,
                                                          const F* __restrict__ dy, WkvStrides sdy,
                                                          const float* __restrict__ ds,
                                                          const float* __restrict__ ckpt, float* scratch,
                                                          Grads<F> g, float* __restrict__ ds0) {
  const int64_t bh = blockIdx.x;
  const int64_t b = bh / H, h = bh % H;
  const int i = threadIdx.x;
  const int64_t nblk = (T + kK - 1) / kK;
  constexpr int64_t NN = static_cast<int64_t>(N) * N;

  __shared__ float rs[N], ws[N], ks[N], vs[N], as[N], bs[N], dys[N], dsas[N];
  __shared__ float sab[kK][N];  // sa of every token of the block being processed

  // the gradient wrt the final state: row i (strided once) and column i (coalesced)
  float Grow[N], Gcol[N];
  {
    const float* dp = ds + bh * NN;
#pragma unroll
    for (int j = 0; j < N; ++j) Grow[j] = dp[static_cast<int64_t>(i) * N + j];
#pragma unroll
    for (int m = 0; m < N; ++m) Gcol[m] = dp[static_cast<int64_t>(m) * N + i];
  }
  float* work = scratch + bh * kK * NN;  // work[tau] = the state after token t0 + tau, key-major

  for (int64_t c = nblk - 1; c >= 0; --c) {
    const int64_t t0 = c * kK;
    const int L = static_cast<int>(T - t0 < kK ? T - t0 : kK);
    const float* ck = ckpt + (bh * nblk + c) * NN;

    // recompute the block's states from its checkpoint; thread i owns row i: S[j] = state[i][j]
    {
      float S[N];
#pragma unroll
      for (int j = 0; j < N; ++j) S[j] = ck[static_cast<int64_t>(j) * N + i];  // coalesced
      for (int tau = 0; tau < L; ++tau) {
        const Tok tk = load_tok(x, b, t0 + tau, h, i);
        __syncthreads();
        ws[i] = tk.w;
        ks[i] = tk.k;
        as[i] = tk.a;
        bs[i] = tk.b;
        __syncthreads();
        float part[kChains] = {};
#pragma unroll
        for (int j = 0; j < N; ++j) part[j % kChains] += as[j] * S[j];
        const float sa = chain_sum(part);
        sab[tau][i] = sa;
        float* dst = work + tau * NN + i;
#pragma unroll
        for (int j = 0; j < N; ++j) {
          S[j] = S[j] * ws[j] + sa * bs[j] + tk.v * ks[j];
          dst[j * N] = S[j];  // key-major: coalesced over i
        }
      }
    }

    // walk the block's tokens in reverse
    for (int tau = L - 1; tau >= 0; --tau) {
      const int64_t t = t0 + tau;
      const Tok tk = load_tok(x, b, t, h, i);
      const float dyi = to_f(dy[offset(sdy, b, t, h) + i]);
      __syncthreads();  // also orders this block's scratch writes before the reads below
      rs[i] = tk.r;
      ws[i] = tk.w;
      ks[i] = tk.k;
      vs[i] = tk.v;
      as[i] = tk.a;
      bs[i] = tk.b;
      dys[i] = dyi;
      __syncthreads();

      // row i: G[i][j] += dy_i r_j ; dv_i, dsa_i
      float pv[kChains] = {}, ps[kChains] = {};
#pragma unroll
      for (int j = 0; j < N; ++j) {
        Grow[j] += dyi * rs[j];
        pv[j % kChains] += Grow[j] * ks[j];
        ps[j % kChains] += Grow[j] * bs[j];
      }
      const float dv = chain_sum(pv), dsa = chain_sum(ps);
      dsas[i] = dsa;
      __syncthreads();

      // column i (key i): cur[m] = S_t[m][i], prev[m] = S_{t-1}[m][i]
      const float* cur = work + tau * NN + static_cast<int64_t>(i) * N;
      const float* prev = (tau == 0 ? ck : work + (tau - 1) * NN) + static_cast<int64_t>(i) * N;
      float pr[kChains] = {}, pk[kChains] = {}, pb[kChains] = {}, pw[kChains] = {}, pa[kChains] = {};
#pragma unroll
      for (int m = 0; m < N; ++m) {
        const float gm = Gcol[m] + dys[m] * tk.r;
        const float pm = prev[m];
        pr[m % kChains] += cur[m] * dys[m];
        pk[m % kChains] += gm * vs[m];
        pb[m % kChains] += gm * sab[tau][m];
        pw[m % kChains] += gm * pm;
        pa[m % kChains] += dsas[m] * pm;
        Gcol[m] = gm * tk.w + dsas[m] * tk.a;
      }
#pragma unroll
      for (int j = 0; j < N; ++j) Grow[j] = Grow[j] * ws[j] + dsa * as[j];

      const int64_t o = ((b * T + t) * H + h) * N + i;
      g.dr[o] = from_f<F>(chain_sum(pr));
      g.dw[o] = chain_sum(pw);
      g.dk[o] = from_f<F>(chain_sum(pk));
      g.dv[o] = from_f<F>(dv);
      g.da[o] = from_f<F>(chain_sum(pa));
      g.db[o] = from_f<F>(chain_sum(pb));
    }
  }
  float* op = ds0 + bh * NN + i;
#pragma unroll
  for (int m = 0; m < N; ++m) op[static_cast<int64_t>(m) * N] = Gcol[m];  // G[m][i]: coalesced over i
}

template <typename F>
cudaError_t launch_forward(int64_t B, int64_t T, int64_t H, const Inputs<F>& x, const float* s_in, float* s_out,
                           float* ckpt, void* y, cudaStream_t stream) {
  if (B * H == 0) return cudaSuccess;
  wkv7_forward_kernel<F, kN, kK><<<static_cast<unsigned>(B * H), kN, 0, stream>>>(T, H, x, s_in, s_out, ckpt,
                                                                                     static_cast<F*>(y));
  return cudaGetLastError();
}

template <typename F>
cudaError_t launch_backward(int64_t B, int64_t T, int64_t H, const Inputs<F>& x, const void* dy,
                            const int64_t* sdy, const float* ds, const float* ckpt, float* scratch,
                            void* const* grads, float* ds0, cudaStream_t stream) {
  if (B * H == 0) return cudaSuccess;
  const Grads<F> g{static_cast<F*>(grads[0]), static_cast<float*>(grads[1]), static_cast<F*>(grads[2]),
                   static_cast<F*>(grads[3]), static_cast<F*>(grads[4]), static_cast<F*>(grads[5])};
  wkv7_backward_kernel<F, kN><<<static_cast<unsigned>(B * H), kN, 0, stream>>>(
      T, H, x, static_cast<const F*>(dy), WkvStrides{sdy[0], sdy[1], sdy[2]}, ds, ckpt, scratch, g, ds0);
  return cudaGetLastError();
}

}  // namespace

// Entry points for wkv7_train_cuda.cpp. dtype: 0 = fp32, 1 = bf16, 2 = fp16 (of r, k, v, a, b, dy, y and
// their gradients; w and its gradient are fp32). Return a CUDA error string, or nullptr on success.
int docstream_wkv7_train_head_size() { return kN; }
int docstream_wkv7_train_chunk() { return kK; }

const char* docstream_wkv7_forward_train_cuda(int dtype, int64_t B, int64_t T, int64_t H, const void* r,
                                              const int64_t* sr, const float* w, const int64_t* sw, const void* k,
                                              const int64_t* sk, const void* v, const int64_t* sv, const void* a,
                                              const int64_t* sa, const void* b, const int64_t* sb,
                                              const float* s_in, float* s_out, float* ckpt, void* y,
                                              void* stream) {
  const auto st = static_cast<cudaStream_t>(stream);
  cudaError_t err;
  switch (dtype) {
    case 0:
      err = launch_forward<float>(B, T, H, inputs_of<float>(r, sr, w, sw, k, sk, v, sv, a, sa, b, sb), s_in, s_out,
                                  ckpt, y, st);
      break;
    case 1:
      err = launch_forward<__nv_bfloat16>(B, T, H, inputs_of<__nv_bfloat16>(r, sr, w, sw, k, sk, v, sv, a, sa, b, sb),
                                          s_in, s_out, ckpt, y, st);
      break;
    case 2:
      err = launch_forward<__half>(B, T, H, inputs_of<__half>(r, sr, w, sw, k, sk, v, sv, a, sa, b, sb), s_in, s_out,
                                   ckpt, y, st);
      break;
    default: return "unsupported dtype";
  }
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

// grads: dr, dw (fp32), dk, dv, da, db, each contiguous [B, T, H, N].
const char* docstream_wkv7_backward_cuda(int dtype, int64_t B, int64_t T, int64_t H, const void* r,
                                         const int64_t* sr, const float* w, const int64_t* sw, const void* k,
                                         const int64_t* sk, const void* v, const int64_t* sv, const void* a,
                                         const int64_t* sa, const void* b, const int64_t* sb, const void* dy,
                                         const int64_t* sdy, const float* ds, const float* ckpt, float* scratch,
                                         void* const* grads, float* ds0, void* stream) {
  const auto st = static_cast<cudaStream_t>(stream);
  cudaError_t err;
  switch (dtype) {
    case 0:
      err = launch_backward<float>(B, T, H, inputs_of<float>(r, sr, w, sw, k, sk, v, sv, a, sa, b, sb), dy, sdy, ds,
                                   ckpt, scratch, grads, ds0, st);
      break;
    case 1:
      err = launch_backward<__nv_bfloat16>(B, T, H,
                                           inputs_of<__nv_bfloat16>(r, sr, w, sw, k, sk, v, sv, a, sa, b, sb), dy,
                                           sdy, ds, ckpt, scratch, grads, ds0, st);
      break;
    case 2:
      err = launch_backward<__half>(B, T, H, inputs_of<__half>(r, sr, w, sw, k, sk, v, sv, a, sa, b, sb), dy, sdy,
                                    ds, ckpt, scratch, grads, ds0, st);
      break;
    default: return "unsupported dtype";
  }
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}
