// Compiled CPU kernels: the WKV recurrences of RWKV-4, RWKV-5.2/6 and RWKV-7. The same extension
// binds the few-row matrix product used by single-token decoding (linear_rows.cpp) and the products
// with int8 weights (linear_i8.cpp).
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

#include "wkv7_cpu.h"
#include "wkv_simd.h"

namespace wkv {
// linear_rows.cpp
torch::Tensor linear_rows(const torch::Tensor& x, const torch::Tensor& w);
// linear_i8.cpp
torch::Tensor linear_i8(const torch::Tensor& x, const torch::Tensor& q, const torch::Tensor& scale);
}  // namespace wkv

namespace {

using namespace wkv;

// A [B, T, H, N] (or [B, T, C]) fp32 tensor whose last dimension is contiguous.
View<float> view4(const torch::Tensor& x) {
  return View<float>{x.data_ptr<float>(), x.stride(0), x.stride(1), x.stride(2)};
}

View<float> view3(const torch::Tensor& x) {
  return View<float>{x.data_ptr<float>(), x.stride(0), x.stride(1), 0};
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
                           View<float> k, View<float> v, float* WKV_RESTRICT y, int64_t y_sb, int64_t y_st,
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
  const View<float> kv = view3(k), vv = view3(v);
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
void wkv6_head(int64_t N_, int64_t T, int64_t b, int64_t h, const View<float>& r, const View<float>& k,
               const View<float>& v, const View<float>& w, const float* WKV_RESTRICT u, float* WKV_RESTRICT S, float* y, int64_t H) {
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
  const View<float> rv = view4(r), kv = view4(k), vv = view4(v), wv = view4(w);
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
// ST[j][i] (key-major), runs the token steps of wkv7_cpu.h on it in place (two partial sums for sa),
// and transposes it back into the output at the end.
template <int NC>
void wkv7_head(int64_t N_, int64_t T, int64_t b, int64_t h, const View<float>& r, const View<float>& w,
               const View<float>& k, const View<float>& v, const View<float>& a, const View<float>& bb,
               float* WKV_RESTRICT ST, float* y, int64_t H) {
  const int64_t N = NC > 0 ? NC : N_;
  for (int64_t t = 0; t < T; ++t) {
    const Token<float> x{r.at(b, t, h), w.at(b, t, h), k.at(b, t, h), v.at(b, t, h), a.at(b, t, h), bb.at(b, t, h)};
    if (t + kPrefetch < T) {
      for (const View<float>* p : {&r, &w, &k, &v, &a, &bb}) prefetch_row(p->at(b, t + kPrefetch, h), N);
    }
    wkv7_step<float, NC, 2>(N, ST, ST, x, nullptr, y + ((b * T + t) * H + h) * N);
  }
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
  const View<float> rv = view4(r), wv = view4(w), kv = view4(k), vv = view4(v), av = view4(a), bv = view4(b);
  const float* sp = state.data_ptr<float>();
  float* op = s_new.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    Aligned<float> scratch(N * N);  // the transposed (key-major) state of the head being processed
    float* ST = scratch.p;
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
  m.def("linear_i8", &linear_i8, "x [M, K] @ (q [O, K] int8 * scale [O])^T -> [M, O], fp32",
        py::arg("x"), py::arg("q"), py::arg("scale"), py::call_guard<py::gil_scoped_release>());
  m.def("num_threads", []() { return at::get_num_threads(); });
#ifdef WKV_VEC
  m.attr("vector_types") = true;  // false: the scalar loops (other compilers, or -DWKV_SCALAR)
#else
  m.attr("vector_types") = false;
#endif
#ifdef _OPENMP
  m.attr("openmp") = true;
#else
  m.attr("openmp") = false;
#endif
}