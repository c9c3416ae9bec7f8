// Compiled CPU kernels: the WKV recurrences of RWKV-4, RWKV-5.2/6 and RWKV-7, and the few-row matrix
// product used by single-token decoding (linear_rows, at the end of this file).
//
// The maths and the state contract are those of docstream/kernels/reference.py. The Python wrapper
// (docstream/kernels/dispatch.py) hands over fp32 tensors whose last dimension has stride 1 (other
// strides are arbitrary, e.g. the stride-0 expanded decay of RWKV-5.2) and an fp32 state whose rows
// are contiguous (any batch stride: one layer's slice of a stacked state). The ops never write to
// their inputs; the new state goes to a fresh tensor, or into ``out`` when one is given (which may be
// the input state itself: every task reads its part of the state before writing it).
//
// Parallelism: at::parallel_for over independent (batch, head) pairs (RWKV-5/6/7) or (batch,
// channel block) pairs (RWKV-4). Inside a task the time loop is sequential and the inner loops run
// over a contiguous dimension of compile-time width so that the compiler vectorizes them.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__GNUC__) || defined(__clang__)
#define WKV_RESTRICT __restrict__
#define WKV_INLINE inline __attribute__((always_inline))
#else
#define WKV_RESTRICT
#define WKV_INLINE inline
#endif

#if defined(_OPENMP) || defined(__clang__) || defined(__GNUC__)
#define WKV_SIMD _Pragma("omp simd")
#else
#define WKV_SIMD
#endif

namespace {

#if defined(__GNUC__) || defined(__clang__)
// Eight floats as a GCC/Clang generic vector: the compiler maps it onto AVX (one register), SSE/NEON
// (two) or scalars. Unlike local float arrays, these stay in registers across the j loops below.
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
template <int Locality = 3>
WKV_INLINE void prefetch_row(const float* p, int64_t n) {
#if defined(__GNUC__) || defined(__clang__)
  const char* c = reinterpret_cast<const char*>(p);
  for (int64_t o = 0; o < n * static_cast<int64_t>(sizeof(float)); o += 64) __builtin_prefetch(c + o, 0, Locality);
#else
  (void)p;
  (void)n;
#endif
}

// A [B, T, H, N] (or [B, T, C]) fp32 tensor whose last dimension is contiguous.
struct View {
  const float* p;
  int64_t sb, st, sh;
  WKV_INLINE const float* at(int64_t b, int64_t t, int64_t h) const { return p + b * sb + t * st + h * sh; }
};

View view4(const torch::Tensor& x) {
  return View{x.data_ptr<float>(), x.stride(0), x.stride(1), x.stride(2)};
}

View view3(const torch::Tensor& x) {
  return View{x.data_ptr<float>(), x.stride(0), x.stride(1), 0};
}

void check_f32_rows(const torch::Tensor& x, const char* name, int64_t dim) {
  TORCH_CHECK(x.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(x.scalar_type() == torch::kFloat32, name, " must be float32 (the Python wrapper casts)");
  TORCH_CHECK(x.dim() == dim, name, " must have ", dim, " dimensions, got ", x.dim());
  TORCH_CHECK(x.size(dim - 1) <= 1 || x.stride(dim - 1) == 1, name, " must have a contiguous last dimension");
}

// A state tensor [B, ...] fp32 whose rows (everything after the batch dimension) are contiguous: the
// batch stride may be anything, so a layer's slice of a stacked [B, L, ...] state is used in place.
torch::Tensor state_rows(torch::Tensor s) {
  int64_t expect = 1;
  for (int64_t d = s.dim() - 1; d >= 1; --d) {
    if (s.size(d) != 1 && s.stride(d) != expect) return s.contiguous();
    expect *= s.size(d);
  }
  return s;
}

// The new state: written into ``out`` when one is given (same shape, fp32, CPU, rows contiguous, not
// overlapping ``state`` unless it is ``state``'s own storage position), else a fresh tensor.
torch::Tensor state_out(const c10::optional<torch::Tensor>& out, const torch::Tensor& state) {
  if (!out.has_value()) return torch::empty(state.sizes(), state.options().memory_format(c10::MemoryFormat::Contiguous));
  const torch::Tensor& o = *out;
  TORCH_CHECK(o.device().is_cpu() && o.scalar_type() == torch::kFloat32 && o.sizes() == state.sizes(),
              "out must be a float32 CPU tensor shaped like the state");
  TORCH_CHECK(state_rows(o).data_ptr() == o.data_ptr(), "out must have contiguous rows (any batch stride)");
  return o;
}

// ---------------------------------------------------------------------------------------------
// exp() written so that a loop over it vectorizes (no libm call): Cephes' expf polynomial with a
// two-constant ln2 range reduction, ~1 ulp. Inputs below -87.3 give 0, above 88.7 are clamped.
WKV_INLINE float fast_exp(float x) {
  const float xc = std::min(std::max(x, -87.3f), 88.7f);
  const float t = xc * 1.44269504088896341f;
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to the nearest integer
  const float fn = (t + magic) - magic;
  const float r = (xc - fn * 0.693359375f) - fn * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(fn) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return x < -87.3f ? 0.0f : p * scale;
}

// ---------------------------------------------------------------------------------------------
// RWKV-4. One task = one batch row and a block of CB channels; the state (a, b, p) of the block
// lives in local arrays for the whole sequence.
constexpr int64_t kCB4 = 64;

template <int CB>
WKV_INLINE void wkv4_block(int64_t T, const float* WKV_RESTRICT w, const float* WKV_RESTRICT u,
                           View k, View v, float* WKV_RESTRICT y, int64_t y_sb, int64_t y_st,
                           const float* WKV_RESTRICT s_in, float* WKV_RESTRICT s_out, int64_t C,
                           int64_t b, int64_t c0) {
  float aa[CB], bb[CB], pp[CB], ww[CB], uu[CB];
  for (int c = 0; c < CB; ++c) {
    aa[c] = s_in[c0 + c];
    bb[c] = s_in[C + c0 + c];
    pp[c] = s_in[2 * C + c0 + c];
    ww[c] = w[c0 + c];
    uu[c] = u[c0 + c];
  }
  for (int64_t t = 0; t < T; ++t) {
    const float* WKV_RESTRICT kt = k.at(b, t, 0) + c0;
    const float* WKV_RESTRICT vt = v.at(b, t, 0) + c0;
    float* WKV_RESTRICT yt = y + b * y_sb + t * y_st + c0;
    if (t + kPrefetch < T) {
      prefetch_row(k.at(b, t + kPrefetch, 0) + c0, CB);
      prefetch_row(v.at(b, t + kPrefetch, 0) + c0, CB);
    }
    WKV_SIMD
    for (int c = 0; c < CB; ++c) {
      const float kk = kt[c], vv = vt[c], a = aa[c], bden = bb[c], p = pp[c];
      // output: q = max(p, u + k); one of the two exponentials is exp(0) = 1
      const float o = uu[c] + kk;
      const float d1 = p - o;
      const float e = fast_exp(-std::fabs(d1));
      const float e1 = d1 >= 0.0f ? 1.0f : e;
      const float e2 = d1 >= 0.0f ? e : 1.0f;
      yt[c] = (e1 * a + e2 * vv) / (e1 * bden + e2);
      // state: q = max(w + p, k)
      const float wp = ww[c] + p;
      const float d2 = wp - kk;
      const float f = fast_exp(-std::fabs(d2));
      const float f1 = d2 >= 0.0f ? 1.0f : f;
      const float f2 = d2 >= 0.0f ? f : 1.0f;
      aa[c] = f1 * a + f2 * vv;
      bb[c] = f1 * bden + f2;
      pp[c] = d2 >= 0.0f ? wp : kk;
    }
  }
  for (int c = 0; c < CB; ++c) {
    s_out[c0 + c] = aa[c];
    s_out[C + c0 + c] = bb[c];
    s_out[2 * C + c0 + c] = pp[c];
  }
}

std::vector<torch::Tensor> wkv4_forward(torch::Tensor w, torch::Tensor u, torch::Tensor k, torch::Tensor v,
                                        torch::Tensor state, c10::optional<torch::Tensor> out) {
  check_f32_rows(k, "k", 3);
  check_f32_rows(v, "v", 3);
  TORCH_CHECK(k.sizes() == v.sizes(), "k and v must have the same shape");
  const int64_t B = k.size(0), T = k.size(1), C = k.size(2);
  w = w.contiguous();
  u = u.contiguous();
  state = state_rows(state);
  TORCH_CHECK(w.scalar_type() == torch::kFloat32 && w.numel() == C, "w must be float32 [C]");
  TORCH_CHECK(u.scalar_type() == torch::kFloat32 && u.numel() == C, "u must be float32 [C]");
  TORCH_CHECK(state.scalar_type() == torch::kFloat32 && state.dim() == 3 && state.size(0) == B &&
                  state.size(1) == 3 && state.size(2) == C,
              "state must be float32 [B, 3, C]");
  auto y = torch::empty({B, T, C}, k.options());
  auto s_new = state_out(out, state);
  const int64_t sb_in = state.stride(0), sb_out = s_new.stride(0);
  const float* wp = w.data_ptr<float>();
  const float* up = u.data_ptr<float>();
  const float* sp = state.data_ptr<float>();
  float* op = s_new.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const View kv = view3(k), vv = view3(v);
  const int64_t nblk = (C + kCB4 - 1) / kCB4;
  at::parallel_for(0, B * nblk, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / nblk, c0 = (task % nblk) * kCB4;
      const float* s_in = sp + b * sb_in;
      float* s_out = op + b * sb_out;
      int64_t c = c0;
      const int64_t c_end = std::min(C, c0 + kCB4);
      if (c_end - c == kCB4) {
        wkv4_block<kCB4>(T, wp, up, kv, vv, yp, T * C, C, s_in, s_out, C, b, c);
        continue;
      }
      for (; c + 16 <= c_end; c += 16) wkv4_block<16>(T, wp, up, kv, vv, yp, T * C, C, s_in, s_out, C, b, c);
      for (; c + 4 <= c_end; c += 4) wkv4_block<4>(T, wp, up, kv, vv, yp, T * C, C, s_in, s_out, C, b, c);
      for (; c < c_end; ++c) wkv4_block<1>(T, wp, up, kv, vv, yp, T * C, C, s_in, s_out, C, b, c);
    }
  });
  return {y, s_new};
}

// ---------------------------------------------------------------------------------------------
// RWKV-5.2 / 6. Per (batch, head) the state S[j][i] (key j, value i) is updated in the output
// buffer itself. Columns i are processed in blocks of compile-time width BW:
//   y_i = v_i * sum_j r_j u_j k_j + sum_j r_j S_ji ;  S_ji <- w_j S_ji + k_j v_i
template <int BW>
WKV_INLINE void wkv6_cols(int64_t N, int64_t i0, const float* WKV_RESTRICT rt, const float* WKV_RESTRICT kt,
                          const float* WKV_RESTRICT vt, const float* WKV_RESTRICT wt, float ruk,
                          float* WKV_RESTRICT S, float* WKV_RESTRICT yt) {
  float acc[BW], vv[BW];
  WKV_SIMD
  for (int i = 0; i < BW; ++i) {
    acc[i] = 0.0f;
    vv[i] = vt[i0 + i];
  }
  for (int64_t j = 0; j < N; ++j) {
    const float rj = rt[j], kj = kt[j], wj = wt[j];
    float* WKV_RESTRICT row = S + j * N + i0;
    WKV_SIMD
    for (int i = 0; i < BW; ++i) {
      const float s = row[i];
      acc[i] += rj * s;
      row[i] = wj * s + kj * vv[i];
    }
  }
  WKV_SIMD
  for (int i = 0; i < BW; ++i) yt[i0 + i] = acc[i] + vv[i] * ruk;
}

#ifdef WKV_VEC
// The same for BV * 8 columns held in vector registers.
template <int BV>
WKV_INLINE void wkv6_vcols(int64_t N, int64_t i0, const float* WKV_RESTRICT rt, const float* WKV_RESTRICT kt,
                           const float* WKV_RESTRICT vt, const float* WKV_RESTRICT wt, float ruk,
                           float* WKV_RESTRICT S, float* WKV_RESTRICT yt) {
  vfloat acc[BV], vv[BV];
  for (int q = 0; q < BV; ++q) {
    acc[q] = vset1(0.0f);
    vv[q] = vload(vt + i0 + q * kVec);
  }
  for (int64_t j = 0; j < N; ++j) {
    const vfloat rj = vset1(rt[j]), kj = vset1(kt[j]), wj = vset1(wt[j]);
    float* row = S + j * N + i0;
    for (int q = 0; q < BV; ++q) {
      const vfloat s = vload(row + q * kVec);
      acc[q] += rj * s;
      vstore(row + q * kVec, wj * s + kj * vv[q]);
    }
  }
  const vfloat rk = vset1(ruk);
  for (int q = 0; q < BV; ++q) vstore(yt + i0 + q * kVec, acc[q] + vv[q] * rk);
}
#endif

template <int NC>
void wkv6_head(int64_t N_, int64_t T, int64_t b, int64_t h, const View& r, const View& k, const View& v,
               const View& w, const float* WKV_RESTRICT u, float* WKV_RESTRICT S, float* y, int64_t H) {
  const int64_t N = NC > 0 ? NC : N_;
  for (int64_t t = 0; t < T; ++t) {
    const float* WKV_RESTRICT rt = r.at(b, t, h);
    const float* WKV_RESTRICT kt = k.at(b, t, h);
    const float* WKV_RESTRICT vt = v.at(b, t, h);
    const float* WKV_RESTRICT wt = w.at(b, t, h);
    float* WKV_RESTRICT yt = y + ((b * T + t) * H + h) * N;
    if (t + kPrefetch < T) {
      prefetch_row(r.at(b, t + kPrefetch, h), N);
      prefetch_row(k.at(b, t + kPrefetch, h), N);
      prefetch_row(v.at(b, t + kPrefetch, h), N);
      prefetch_row(w.at(b, t + kPrefetch, h), N);
    }
    float ruk = 0.0f;
    int64_t j = 0;
#ifdef WKV_VEC
    if (N >= kVec) {
      vfloat part = vset1(0.0f);
      for (; j + kVec <= N; j += kVec) part += vload(rt + j) * vload(u + j) * vload(kt + j);
      ruk = vsum(part);
    }
#endif
    for (; j < N; ++j) ruk += rt[j] * u[j] * kt[j];
    int64_t i0 = 0;
#ifdef WKV_VEC
    for (; i0 + 4 * kVec <= N; i0 += 4 * kVec) wkv6_vcols<4>(N, i0, rt, kt, vt, wt, ruk, S, yt);
    for (; i0 + kVec <= N; i0 += kVec) wkv6_vcols<1>(N, i0, rt, kt, vt, wt, ruk, S, yt);
#else
    for (; i0 + 32 <= N; i0 += 32) wkv6_cols<32>(N, i0, rt, kt, vt, wt, ruk, S, yt);
    for (; i0 + 8 <= N; i0 += 8) wkv6_cols<8>(N, i0, rt, kt, vt, wt, ruk, S, yt);
#endif
    for (; i0 < N; ++i0) wkv6_cols<1>(N, i0, rt, kt, vt, wt, ruk, S, yt);
  }
}

std::vector<torch::Tensor> wkv6_forward(torch::Tensor r, torch::Tensor k, torch::Tensor v, torch::Tensor w,
                                        torch::Tensor u, torch::Tensor state, c10::optional<torch::Tensor> out) {
  for (auto* p : {&r, &k, &v, &w}) check_f32_rows(*p, "r/k/v/w", 4);
  TORCH_CHECK(k.sizes() == r.sizes() && v.sizes() == r.sizes() && w.sizes() == r.sizes(),
              "r, k, v, w must have the same shape [B, T, H, N]");
  const int64_t B = r.size(0), T = r.size(1), H = r.size(2), N = r.size(3);
  u = u.contiguous();
  state = state_rows(state);
  TORCH_CHECK(u.scalar_type() == torch::kFloat32 && u.numel() == H * N, "u must be float32 [H, N]");
  TORCH_CHECK(state.scalar_type() == torch::kFloat32 && state.dim() == 4 && state.size(0) == B &&
                  state.size(1) == H && state.size(2) == N && state.size(3) == N,
              "state must be float32 [B, H, N, N]");
  auto y = torch::empty({B, T, H, N}, r.options().memory_format(c10::MemoryFormat::Contiguous));
  auto s_new = state_out(out, state);  // updated in place, starting from a copy of the state
  if (!s_new.is_same(state)) s_new.copy_(state);
  const int64_t sb = s_new.stride(0);
  const View rv = view4(r), kv = view4(k), vv = view4(v), wv = view4(w);
  const float* up = u.data_ptr<float>();
  float* sp = s_new.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      float* S = sp + b * sb + h * N * N;
      const float* uh = up + h * N;
      switch (N) {
        case 64: wkv6_head<64>(N, T, b, h, rv, kv, vv, wv, uh, S, yp, H); break;
        case 32: wkv6_head<32>(N, T, b, h, rv, kv, vv, wv, uh, S, yp, H); break;
        case 128: wkv6_head<128>(N, T, b, h, rv, kv, vv, wv, uh, S, yp, H); break;
        default: wkv6_head<0>(N, T, b, h, rv, kv, vv, wv, uh, S, yp, H); break;
      }
    }
  });
  return {y, s_new};
}

// ---------------------------------------------------------------------------------------------
// RWKV-7. The state arrives indexed [value i][key j]; a task transposes it into a scratch buffer as
// ST[j][i] (key-major) so that every inner loop runs over the contiguous value index i without
// horizontal sums, and transposes it back into the output at the end. The per-token arithmetic is
// the same whatever T, so splitting a sequence (carrying the state) gives bitwise the same result:
//   sa_i = sum_j a_j ST_ji ;  ST_ji <- w_j ST_ji + b_j sa_i + k_j v_i ;  y_i = sum_j r_j ST_ji
template <int BW>
WKV_INLINE void wkv7_cols(int64_t N, int64_t i0, const float* WKV_RESTRICT rt, const float* WKV_RESTRICT wt,
                          const float* WKV_RESTRICT kt, const float* WKV_RESTRICT vt,
                          const float* WKV_RESTRICT at_, const float* WKV_RESTRICT bt,
                          float* WKV_RESTRICT ST, float* WKV_RESTRICT yt) {
  float sa[BW], sa2[BW], acc[BW], vv[BW];
  WKV_SIMD
  for (int i = 0; i < BW; ++i) {
    sa[i] = 0.0f;
    sa2[i] = 0.0f;
    acc[i] = 0.0f;
    vv[i] = vt[i0 + i];
  }
  int64_t j = 0;
  for (; j + 2 <= N; j += 2) {  // two partial sums: twice the independent FMA chains
    const float a0 = at_[j], a1 = at_[j + 1];
    const float* WKV_RESTRICT row0 = ST + j * N + i0;
    const float* WKV_RESTRICT row1 = row0 + N;
    WKV_SIMD
    for (int i = 0; i < BW; ++i) {
      sa[i] += a0 * row0[i];
      sa2[i] += a1 * row1[i];
    }
  }
  if (j < N) {
    const float a0 = at_[j];
    const float* WKV_RESTRICT row0 = ST + j * N + i0;
    WKV_SIMD
    for (int i = 0; i < BW; ++i) sa[i] += a0 * row0[i];
  }
  WKV_SIMD
  for (int i = 0; i < BW; ++i) sa[i] += sa2[i];
  for (j = 0; j < N; ++j) {
    const float wj = wt[j], bj = bt[j], kj = kt[j], rj = rt[j];
    float* WKV_RESTRICT row = ST + j * N + i0;
    WKV_SIMD
    for (int i = 0; i < BW; ++i) {
      const float s = row[i] * wj + sa[i] * bj + vv[i] * kj;
      row[i] = s;
      acc[i] += s * rj;
    }
  }
  WKV_SIMD
  for (int i = 0; i < BW; ++i) yt[i0 + i] = acc[i];
}

#ifdef WKV_VEC
template <int BV>
WKV_INLINE void wkv7_vcols(int64_t N, int64_t i0, const float* WKV_RESTRICT rt, const float* WKV_RESTRICT wt,
                           const float* WKV_RESTRICT kt, const float* WKV_RESTRICT vt,
                           const float* WKV_RESTRICT at_, const float* WKV_RESTRICT bt,
                           float* WKV_RESTRICT ST, float* WKV_RESTRICT yt) {
  vfloat sa[BV], sa2[BV], acc[BV], vv[BV];
  for (int q = 0; q < BV; ++q) {
    sa[q] = vset1(0.0f);
    sa2[q] = vset1(0.0f);
    acc[q] = vset1(0.0f);
    vv[q] = vload(vt + i0 + q * kVec);
  }
  int64_t j = 0;
  for (; j + 2 <= N; j += 2) {  // two partial sums: twice the independent FMA chains
    const vfloat a0 = vset1(at_[j]), a1 = vset1(at_[j + 1]);
    const float* row0 = ST + j * N + i0;
    const float* row1 = row0 + N;
    for (int q = 0; q < BV; ++q) {
      sa[q] += a0 * vload(row0 + q * kVec);
      sa2[q] += a1 * vload(row1 + q * kVec);
    }
  }
  if (j < N) {
    const vfloat a0 = vset1(at_[j]);
    const float* row0 = ST + j * N + i0;
    for (int q = 0; q < BV; ++q) sa[q] += a0 * vload(row0 + q * kVec);
  }
  for (int q = 0; q < BV; ++q) sa[q] += sa2[q];
  for (j = 0; j < N; ++j) {
    const vfloat wj = vset1(wt[j]), bj = vset1(bt[j]), kj = vset1(kt[j]), rj = vset1(rt[j]);
    float* row = ST + j * N + i0;
    for (int q = 0; q < BV; ++q) {
      const vfloat s = vload(row + q * kVec) * wj + sa[q] * bj + vv[q] * kj;
      vstore(row + q * kVec, s);
      acc[q] += s * rj;
    }
  }
  for (int q = 0; q < BV; ++q) vstore(yt + i0 + q * kVec, acc[q]);
}
#endif

template <int NC>
void wkv7_head(int64_t N_, int64_t T, int64_t b, int64_t h, const View& r, const View& w, const View& k,
               const View& v, const View& a, const View& bb, float* WKV_RESTRICT ST, float* y, int64_t H) {
  const int64_t N = NC > 0 ? NC : N_;
  for (int64_t t = 0; t < T; ++t) {
    const float* rt = r.at(b, t, h);
    const float* wt = w.at(b, t, h);
    const float* kt = k.at(b, t, h);
    const float* vt = v.at(b, t, h);
    const float* at_ = a.at(b, t, h);
    const float* bt = bb.at(b, t, h);
    float* yt = y + ((b * T + t) * H + h) * N;
    if (t + kPrefetch < T) {
      for (const View* x : {&r, &w, &k, &v, &a, &bb}) prefetch_row(x->at(b, t + kPrefetch, h), N);
    }
    int64_t i0 = 0;
#ifdef WKV_VEC
    for (; i0 + 4 * kVec <= N; i0 += 4 * kVec) wkv7_vcols<4>(N, i0, rt, wt, kt, vt, at_, bt, ST, yt);
    for (; i0 + kVec <= N; i0 += kVec) wkv7_vcols<1>(N, i0, rt, wt, kt, vt, at_, bt, ST, yt);
#else
    for (; i0 + 32 <= N; i0 += 32) wkv7_cols<32>(N, i0, rt, wt, kt, vt, at_, bt, ST, yt);
    for (; i0 + 8 <= N; i0 += 8) wkv7_cols<8>(N, i0, rt, wt, kt, vt, at_, bt, ST, yt);
#endif
    for (; i0 < N; ++i0) wkv7_cols<1>(N, i0, rt, wt, kt, vt, at_, bt, ST, yt);
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
void transpose_copy(const float* WKV_RESTRICT src, float* WKV_RESTRICT dst, int64_t N) {
#ifdef WKV_SHUFFLE
  if (N % 8 == 0) {
    for (int64_t i = 0; i < N; i += 8)
      for (int64_t j = 0; j < N; j += 8) transpose8x8(src + i * N + j, N, dst + j * N + i, N);
    return;
  }
#endif
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = 0; j < N; ++j) dst[j * N + i] = src[i * N + j];
}

std::vector<torch::Tensor> wkv7_forward(torch::Tensor r, torch::Tensor w, torch::Tensor k, torch::Tensor v,
                                        torch::Tensor a, torch::Tensor b, torch::Tensor state,
                                        c10::optional<torch::Tensor> out) {
  for (auto* p : {&r, &w, &k, &v, &a, &b}) check_f32_rows(*p, "r/w/k/v/a/b", 4);
  for (auto* p : {&w, &k, &v, &a, &b})
    TORCH_CHECK(p->sizes() == r.sizes(), "r, w, k, v, a, b must have the same shape [B, T, H, N]");
  const int64_t B = r.size(0), T = r.size(1), H = r.size(2), N = r.size(3);
  state = state_rows(state);
  TORCH_CHECK(state.scalar_type() == torch::kFloat32 && state.dim() == 4 && state.size(0) == B &&
                  state.size(1) == H && state.size(2) == N && state.size(3) == N,
              "state must be float32 [B, H, N, N]");
  auto y = torch::empty({B, T, H, N}, r.options().memory_format(c10::MemoryFormat::Contiguous));
  auto s_new = state_out(out, state);  // the input is read into scratch first, so out may alias it
  const int64_t sb_in = state.stride(0), sb_out = s_new.stride(0);
  const View rv = view4(r), wv = view4(w), kv = view4(k), vv = view4(v), av = view4(a), bv = view4(b);
  const float* sp = state.data_ptr<float>();
  float* op = s_new.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    // the transposed (key-major) state of the head being processed, 64-byte aligned
    std::vector<float> scratch(static_cast<size_t>(N * N) + 16);
    float* ST = scratch.data();
    ST += (64 - reinterpret_cast<uintptr_t>(ST) % 64) % 64 / sizeof(float);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t bi = bh / H, h = bh % H;
      transpose_copy(sp + bi * sb_in + h * N * N, ST, N);
      switch (N) {
        case 64: wkv7_head<64>(N, T, bi, h, rv, wv, kv, vv, av, bv, ST, yp, H); break;
        case 32: wkv7_head<32>(N, T, bi, h, rv, wv, kv, vv, av, bv, ST, yp, H); break;
        case 128: wkv7_head<128>(N, T, bi, h, rv, wv, kv, vv, av, bv, ST, yp, H); break;
        default: wkv7_head<0>(N, T, bi, h, rv, wv, kv, vv, av, bv, ST, yp, H); break;
      }
      transpose_copy(ST, op + bi * sb_out + h * N * N, N);
    }
  });
  return {y, s_new};
}

// ---------------------------------------------------------------------------------------------
// Few-row matrix products for decoding: y[M, O] = x[M, K] @ W[O, K]^T, with M small (one token per
// sequence) and W in nn.Linear's [out, in] layout or any other strides (a transposed [in, out] LoRA
// matrix). Each W element is read from memory once per call. Two forms:
//
// * dot form (fewer than kPanelRows rows, W rows contiguous): each task streams its rows of W once and
//   reuses each from L1 for every row of x. Register tile: MR rows of x times OR rows of W, as MR * OR
//   vector accumulators over K, reduced horizontally at the end.
// * panel form (kPanelRows rows or more): x is packed once, transposed, into panels of P = 16 rows
//   (xt[k][P]; a remainder of up to 8 rows gets a panel of 8, zero rows pad the last panel). A
//   register tile is R rows of W times one panel: per k, P / 8 vector loads of the panel, R broadcasts
//   of W[o][k] and R * P / 8 FMAs, so every W element loaded feeds P rows (at P = 16, R = 6 the tile
//   holds 12 accumulators, 15 of AVX2's 16 registers with the loads; at P = 8, R = 12).
//   Every output is one FMA chain over k in order, so a row's result depends neither on M nor on
//   where the row sits in x.
template <int MR, int OR>
WKV_INLINE void rows_tile(int64_t K, const float* WKV_RESTRICT x, int64_t sx, const float* WKV_RESTRICT w,
                          int64_t sw, float* WKV_RESTRICT y, int64_t sy) {
  int64_t k = 0;
  float sum[MR][OR];
#ifdef WKV_VEC
  vfloat acc[MR][OR];
  for (int m = 0; m < MR; ++m)
    for (int o = 0; o < OR; ++o) acc[m][o] = vset1(0.0f);
  for (; k + kVec <= K; k += kVec) {
    vfloat wv[OR];
    for (int o = 0; o < OR; ++o) wv[o] = vload(w + o * sw + k);
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
      for (int o = 0; o < OR; ++o) sum[m][o] += x[m * sx + k] * w[o * sw + k];
  for (int m = 0; m < MR; ++m)
    for (int o = 0; o < OR; ++o) y[m * sy + o] = sum[m][o];
}

// All M rows of x against OR rows of W: tiles of MR rows, then the remainder with smaller tiles.
template <int OR, int MR>
void rows_group(int64_t M, int64_t K, const float* x, int64_t sx, const float* w, int64_t sw, float* y,
                int64_t sy) {
  int64_t m = 0;
  for (; m + MR <= M; m += MR) rows_tile<MR, OR>(K, x + m * sx, sx, w, sw, y + m * sy, sy);
  if constexpr (MR > 1) {
    if (m < M) rows_group<OR, MR - 1>(M - m, K, x + m * sx, sx, w, sw, y + m * sy, sy);
  }
}

constexpr int64_t kRowsAhead = 2;  // groups of W rows fetched ahead of the one being computed

void linear_dot(int64_t M, int64_t K, int64_t O, const float* xp, int64_t sx, const float* wp, int64_t sw,
                float* yp) {
  const int OR = M == 1 ? 8 : M == 2 ? 4 : 6;  // at most 12 accumulators: the tile stays in registers
  const int64_t block = 16 * OR;                // rows of W per task
  at::parallel_for(0, (O + block - 1) / block, 1, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t o1 = std::min(O, (blk + 1) * block);
      int64_t o = blk * block;
      for (; o + OR <= o1; o += OR) {
        const float* wo = wp + o * sw;
        // several rows of x share each group of W rows: fetch the groups ahead into L2 (the group being
        // computed and the rows of x keep L1) while this one computes
        if (M > 2 && o + (kRowsAhead + 1) * OR <= O)
          for (int q = 0; q < OR; ++q) prefetch_row<2>(wo + (kRowsAhead * OR + q) * sw, K);
        if (OR == 8) rows_group<8, 1>(M, K, xp, sx, wo, sw, yp + o, O);
        else if (OR == 4) rows_group<4, 3>(M, K, xp, sx, wo, sw, yp + o, O);
        else rows_group<6, 2>(M, K, xp, sx, wo, sw, yp + o, O);
      }
      for (; o < o1; ++o) rows_group<1, 4>(M, K, xp, sx, wp + o * sw, sw, yp + o, O);
    }
  });
}

constexpr int64_t kPanelRows = 6;     // from this many rows of x on, the panel form
constexpr int64_t kPanelBlock = 96;   // rows of W per task in the panel form

#ifdef WKV_VEC
// One panel (V vectors: P = 8 V rows of x, packed as xt[k][P]) against R rows of W, element (o, k) at
// w[o * so + k * sk]; writes y[m, 0:R] for the panel's first ``rows`` rows.
template <int V, int R>
WKV_INLINE void panel_tile(int64_t K, const float* WKV_RESTRICT xt, const float* WKV_RESTRICT w, int64_t so,
                           int64_t sk, float* WKV_RESTRICT y, int64_t sy, int64_t rows) {
  vfloat acc[R][V];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) acc[r][v] = vset1(0.0f);
  for (int64_t k = 0; k < K; ++k) {
    vfloat xv[V];
    for (int v = 0; v < V; ++v) xv[v] = vload(xt + (k * V + v) * kVec);
    for (int r = 0; r < R; ++r) {
      const vfloat wv = vset1(w[r * so + k * sk]);
      for (int v = 0; v < V; ++v) acc[r][v] += wv * xv[v];
    }
  }
  float out[R][kVec * V];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) vstore(out[r] + v * kVec, acc[r][v]);
  for (int64_t m = 0; m < rows; ++m)
    for (int r = 0; r < R; ++r) y[m * sy + r] = out[r][m];
}

struct Panel {
  int64_t row0, width, rows;  // first row of x, 8 or 16 packed rows, how many of them are real
};

// Rows [o0, o1) of W against every panel: tiles of R rows of W (each tile stays in L1 while it meets
// the panels in turn), then the remainder with smaller tiles. R = 6 when there are 16-row panels.
template <int R>
void panel_rows(int64_t o0, int64_t o1, int64_t K, const float* xt, const std::vector<Panel>& panels,
                const float* w, int64_t so, int64_t sk, float* y, int64_t O) {
  int64_t o = o0;
  for (; o + R <= o1; o += R)
    for (size_t p = 0; p < panels.size(); ++p) {
      const Panel& q = panels[p];
      const float* xp = xt + static_cast<int64_t>(p) * K * 2 * kVec;
      float* yp = y + q.row0 * O + o;
      if constexpr (R <= 6) {
        if (q.width == 2 * kVec) {
          panel_tile<2, R>(K, xp, w + o * so, so, sk, yp, O, q.rows);
          continue;
        }
      }
      panel_tile<1, R>(K, xp, w + o * so, so, sk, yp, O, q.rows);
    }
  if constexpr (R > 1) {
    if (o < o1) panel_rows<R - 1>(o, o1, K, xt, panels, w, so, sk, y, O);
  }
}

void linear_panels(int64_t M, int64_t K, int64_t O, const float* xp, int64_t sxm, int64_t sxk, const float* wp,
                   int64_t so, int64_t sk, float* yp) {
  // panels of 16 rows; a remainder of up to 8 rows gets a panel of 8
  std::vector<Panel> panels;
  for (int64_t m = 0; m < M; m += 2 * kVec) {
    const int64_t rows = std::min<int64_t>(2 * kVec, M - m);
    panels.push_back({m, rows > kVec ? 2 * kVec : kVec, rows});
  }
  std::vector<float> xt(panels.size() * static_cast<size_t>(K * 2 * kVec));
  for (size_t p = 0; p < panels.size(); ++p) {
    const Panel& q = panels[p];
    float* dst = xt.data() + static_cast<int64_t>(p) * K * 2 * kVec;
    const float* src = xp + q.row0 * sxm;
    for (int64_t k = 0; k < K; ++k) {
      int64_t m = 0;
      for (; m < q.rows; ++m) dst[k * q.width + m] = src[m * sxm + k * sxk];
      for (; m < q.width; ++m) dst[k * q.width + m] = 0.0f;
    }
  }
  at::parallel_for(0, (O + kPanelBlock - 1) / kPanelBlock, 1, [&](int64_t begin, int64_t end) {
    const int64_t o0 = begin * kPanelBlock, o1 = std::min(O, end * kPanelBlock);
    if (M <= kVec) panel_rows<12>(o0, o1, K, xt.data(), panels, wp, so, sk, yp, O);
    else panel_rows<6>(o0, o1, K, xt.data(), panels, wp, so, sk, yp, O);
  });
}
#endif

torch::Tensor linear_rows(const torch::Tensor& x_in, const torch::Tensor& w_in) {
  TORCH_CHECK(x_in.device().is_cpu() && w_in.device().is_cpu(), "linear_rows: x and w must be CPU tensors");
  TORCH_CHECK(x_in.scalar_type() == torch::kFloat32 && w_in.scalar_type() == torch::kFloat32,
              "linear_rows: x and w must be float32");
  TORCH_CHECK(x_in.dim() == 2 && w_in.dim() == 2 && x_in.size(1) == w_in.size(1),
              "linear_rows: x must be [M, K] and w [O, K], got ", x_in.sizes(), " and ", w_in.sizes());
  const int64_t M = x_in.size(0), K = x_in.size(1), O = w_in.size(0);
  auto y = torch::empty({M, O}, x_in.options());
  if (M == 0 || O == 0) return y;
  if (K == 0) return y.zero_();
  float* yp = y.data_ptr<float>();
#ifdef WKV_VEC
  if (M >= kPanelRows || w_in.stride(1) != 1) {
    linear_panels(M, K, O, x_in.data_ptr<float>(), x_in.stride(0), x_in.stride(1), w_in.data_ptr<float>(),
                  w_in.stride(0), w_in.stride(1), yp);
    return y;
  }
#endif
  const auto x = K > 1 && x_in.stride(1) != 1 ? x_in.contiguous() : x_in;
  const auto w = K > 1 && w_in.stride(1) != 1 ? w_in.contiguous() : w_in;
  linear_dot(M, K, O, x.data_ptr<float>(), x.stride(0), w.data_ptr<float>(), w.stride(0), yp);
  return y;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "docstream compiled CPU WKV kernels (fp32; the Python wrapper handles dtypes)";
  m.def("wkv4", &wkv4_forward, "RWKV-4 WKV (w, u, k, v, state, out=None) -> (y, new_state)",
        py::arg("w"), py::arg("u"), py::arg("k"), py::arg("v"), py::arg("state"), py::arg("out") = py::none(),
        py::call_guard<py::gil_scoped_release>());
  m.def("wkv6", &wkv6_forward, "RWKV-5.2/6 WKV (r, k, v, w, u, state, out=None) -> (y, new_state)",
        py::arg("r"), py::arg("k"), py::arg("v"), py::arg("w"), py::arg("u"), py::arg("state"),
        py::arg("out") = py::none(), py::call_guard<py::gil_scoped_release>());
  m.def("wkv7", &wkv7_forward, "RWKV-7 WKV (r, w, k, v, a, b, state, out=None) -> (y, new_state)",
        py::arg("r"), py::arg("w"), py::arg("k"), py::arg("v"), py::arg("a"), py::arg("b"), py::arg("state"),
        py::arg("out") = py::none(), py::call_guard<py::gil_scoped_release>());
  m.def("linear_rows", &linear_rows, "x [M, K] @ w [O, K]^T for few rows M (decoding), any strides -> [M, O]",
        py::arg("x"), py::arg("w"), py::call_guard<py::gil_scoped_release>());
  m.def("num_threads", []() { return at::get_num_threads(); });
#ifdef _OPENMP
  m.attr("openmp") = true;
#else
  m.attr("openmp") = false;
#endif
}
