// Compiled CPU training kernels for RWKV-7: a forward that saves state checkpoints, and its backward.
//
// Maths (docstream/kernels/reference.py, wkv7_ref), per (batch, head), S indexed [value i][key j]:
//   sa_t = S_{t-1} a_t ;  S_t = S_{t-1} diag(w_t) + sa_t b_t + v_t^T k_t ;  y_t = S_t r_t
// Backward, with G the gradient of the loss wrt S_t (gradients of later tokens already folded in):
//   G     += dy_t^T r_t                       (y_t reads S_t)
//   dr_j   = sum_i S_t[i][j] dy_i             dv_i = sum_j G[i][j] k_j      dk_j = sum_i G[i][j] v_i
//   dw_j   = sum_i G[i][j] S_{t-1}[i][j]      db_j = sum_i G[i][j] sa_i     dsa_i = sum_j G[i][j] b_j
//   da_j   = sum_i dsa_i S_{t-1}[i][j]
//   G_{t-1} = G diag(w_t) + dsa^T a_t         (the gradient wrt S_{t-1}; after token 0: the initial state's)
//
// Checkpointing: the forward stores the state before every K-th token (K = `chunk`) in fp32 (fp64 for
// fp64 inputs), ckpt [B, H, ceil(T/K), N, N] in the key-major layout ST[j][i] = S[i][j]. The backward
// walks the blocks of K tokens in reverse: it recomputes the block's states from its checkpoint into a
// scratch buffer (K states), then walks the block's tokens in reverse. The last block may be shorter.
//
// Layout: every state-sized buffer (state copy, checkpoints, scratch, G) is key-major, so that the
// inner loops run over the contiguous value index i: accumulations over j are vector adds and the
// sums over i are vectorized reductions. The forward step is the inference kernel's (wkv7_cpu.h) with
// one partial sum for sa. The CUDA kernels (wkv7_train_cuda.cu)
// compute the same quantities in the same order, thread i holding row i and column i of G.
//
// Types: the scalar type T is float (fp32 inputs; the Python wrapper casts bf16/fp16) or double (fp64
// inputs, so that torch.autograd.gradcheck can check the backward). Inputs are [B, T, H, N] with a
// contiguous last dimension and arbitrary other strides; outputs are contiguous.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "wkv7_cpu.h"
#include "wkv_simd.h"

namespace {

using namespace wkv;

template <typename T>
View<T> view4(const torch::Tensor& x) {
  return View<T>{x.data_ptr<T>(), x.stride(0), x.stride(1), x.stride(2)};
}

template <typename T>
struct Inputs {
  View<T> r, w, k, v, a, b;
  WKV_INLINE Token<T> at(int64_t bi, int64_t t, int64_t h) const {
    return Token<T>{r.at(bi, t, h), w.at(bi, t, h), k.at(bi, t, h), v.at(bi, t, h), a.at(bi, t, h), b.at(bi, t, h)};
  }
};

// One token forward (wkv7_cpu.h, one partial sum for sa): out = the state after the token, from `in`
// (the same buffer or not); sa [N] receives S_{t-1} a_t, y [N] (optional) S_t r_t.
template <typename T, int NC>
WKV_INLINE void step_forward(int64_t N, const T* in, T* out, const Token<T>& x, T* sa, T* y) {
  wkv7_step<T, NC, 1>(N, in, out, x, sa, y);
}

// Gradient rows of one token, written into the [B, T, H, N] gradient tensors.
template <typename T>
struct Grads {
  T *dr, *dw, *dk, *dv, *da, *db;
};

// One token backward. G [N][N] key-major: on entry the gradient wrt S_t from later tokens (and the
// final state), on exit the gradient wrt S_{t-1}. cur = S_t, prev = S_{t-1} (key-major), sa = S_{t-1} a_t.
// dsa and dv_acc are [N] scratch rows.
template <typename T, int NC>
WKV_INLINE void step_backward(int64_t N_, T* G, const T* cur, const T* prev, const Token<T>& x, const T* sa,
                              const T* dy, T* dsa, T* dv_acc, const Grads<T>& g) {
  const int64_t N = NC > 0 ? NC : N_;
  WKV_SIMD
  for (int64_t i = 0; i < N; ++i) {
    dsa[i] = T(0);
    dv_acc[i] = T(0);
  }
  for (int64_t j = 0; j < N; ++j) {
    const T rj = x.r[j], kj = x.k[j], bj = x.b[j];
    T* row = G + j * N;
    const T* cj = cur + j * N;
    const T* pj = prev + j * N;
    T dr = T(0), dk = T(0), db = T(0), dw = T(0);
    WKV_SIMD_SUM(dr, dk, db, dw)
    for (int64_t i = 0; i < N; ++i) {
      const T gi = row[i] + rj * dy[i];  // stored by the second pass
      dr += cj[i] * dy[i];
      dk += gi * x.v[i];
      db += gi * sa[i];
      dw += gi * pj[i];
      dv_acc[i] += gi * kj;
      dsa[i] += gi * bj;
    }
    g.dr[j] = dr;
    g.dk[j] = dk;
    g.db[j] = db;
    g.dw[j] = dw;
  }
  for (int64_t j = 0; j < N; ++j) {
    const T aj = x.a[j], wj = x.w[j], rj = x.r[j];
    T* row = G + j * N;
    const T* pj = prev + j * N;
    T da = T(0);
    WKV_SIMD_SUM(da)
    for (int64_t i = 0; i < N; ++i) {
      da += dsa[i] * pj[i];
      row[i] = (row[i] + rj * dy[i]) * wj + aj * dsa[i];
    }
    g.da[j] = da;
  }
  WKV_SIMD
  for (int64_t i = 0; i < N; ++i) g.dv[i] = dv_acc[i];
}

// ---------------------------------------------------------------------------------------------
// forward with checkpoints

template <typename T, int NC>
void forward_head(int64_t N_, int64_t T_, int64_t K, int64_t bi, int64_t h, int64_t H, const Inputs<T>& in,
                  T* ST, T* sa, T* ckpt, T* y) {
  const int64_t N = NC > 0 ? NC : N_;
  for (int64_t t = 0; t < T_; ++t) {
    if (t % K == 0) std::copy(ST, ST + N * N, ckpt + (t / K) * N * N);
    step_forward<T, NC>(N, ST, ST, in.at(bi, t, h), sa, y + ((bi * T_ + t) * H + h) * N);
  }
}

template <typename T>
std::vector<torch::Tensor> forward_impl(const Inputs<T>& in, const torch::Tensor& state, int64_t B, int64_t T_,
                                        int64_t H, int64_t N, int64_t K, const torch::TensorOptions& opts) {
  const int64_t nblk = (T_ + K - 1) / K;
  auto y = torch::empty({B, T_, H, N}, opts);
  auto s_out = torch::empty({B, H, N, N}, opts);
  auto ckpt = torch::empty({B, H, nblk, N, N}, opts);
  const T* sp = state.data_ptr<T>();
  T* yp = y.data_ptr<T>();
  T* op = s_out.data_ptr<T>();
  T* cp = ckpt.data_ptr<T>();
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    Aligned<T> st(N * N), sa(N);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t bi = bh / H, h = bh % H;
      transpose_copy(sp + bh * N * N, st.p, N);
      T* ck = cp + bh * nblk * N * N;
      switch (N) {
        case 16: forward_head<T, 16>(N, T_, K, bi, h, H, in, st.p, sa.p, ck, yp); break;
        case 32: forward_head<T, 32>(N, T_, K, bi, h, H, in, st.p, sa.p, ck, yp); break;
        case 64: forward_head<T, 64>(N, T_, K, bi, h, H, in, st.p, sa.p, ck, yp); break;
        case 128: forward_head<T, 128>(N, T_, K, bi, h, H, in, st.p, sa.p, ck, yp); break;
        default: forward_head<T, 0>(N, T_, K, bi, h, H, in, st.p, sa.p, ck, yp); break;
      }
      transpose_copy(st.p, op + bh * N * N, N);
    }
  });
  return {y, s_out, ckpt};
}

// ---------------------------------------------------------------------------------------------
// backward

template <typename T>
struct Work {  // per-task scratch
  Aligned<T> states, sa, G, dsa, dv;
  Work(int64_t N, int64_t K) : states(K * N * N), sa(K * N), G(N * N), dsa(N), dv(N) {}
};

template <typename T, int NC>
void backward_head(int64_t N_, int64_t T_, int64_t K, int64_t bi, int64_t h, int64_t H, const Inputs<T>& in,
                   const View<T>& dy, const T* ckpt, Work<T>& work, const Grads<T>& out) {
  const int64_t N = NC > 0 ? NC : N_;
  const int64_t NN = N * N;
  const int64_t nblk = (T_ + K - 1) / K;
  T* states = work.states.p;
  T* sa = work.sa.p;
  for (int64_t c = nblk - 1; c >= 0; --c) {
    const int64_t t0 = c * K, L = std::min(K, T_ - t0);
    const T* ck = ckpt + c * NN;
    // recompute the block: states[tau] = the state after token t0 + tau
    for (int64_t tau = 0; tau < L; ++tau)
      step_forward<T, NC>(N, tau == 0 ? ck : states + (tau - 1) * NN, states + tau * NN,
                          in.at(bi, t0 + tau, h), sa + tau * N, nullptr);
    for (int64_t tau = L - 1; tau >= 0; --tau) {
      const int64_t t = t0 + tau;
      const int64_t o = ((bi * T_ + t) * H + h) * N;
      const Grads<T> g{out.dr + o, out.dw + o, out.dk + o, out.dv + o, out.da + o, out.db + o};
      step_backward<T, NC>(N, work.G.p, states + tau * NN, tau == 0 ? ck : states + (tau - 1) * NN,
                           in.at(bi, t, h), sa + tau * N, dy.at(bi, t, h), work.dsa.p, work.dv.p, g);
    }
  }
}

template <typename T>
std::vector<torch::Tensor> backward_impl(const Inputs<T>& in, const View<T>& dy, const torch::Tensor& ds,
                                         const torch::Tensor& ckpt, int64_t B, int64_t T_, int64_t H, int64_t N,
                                         int64_t K, const torch::TensorOptions& opts) {
  std::vector<torch::Tensor> grads;
  for (int q = 0; q < 6; ++q) grads.push_back(torch::empty({B, T_, H, N}, opts));
  auto ds0 = torch::empty({B, H, N, N}, opts);
  const Grads<T> out{grads[0].data_ptr<T>(), grads[1].data_ptr<T>(), grads[2].data_ptr<T>(),
                     grads[3].data_ptr<T>(), grads[4].data_ptr<T>(), grads[5].data_ptr<T>()};
  const T* dsp = ds.data_ptr<T>();
  const T* cp = ckpt.data_ptr<T>();
  T* d0 = ds0.data_ptr<T>();
  const int64_t nblk = (T_ + K - 1) / K;
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    Work<T> work(N, K);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t bi = bh / H, h = bh % H;
      transpose_copy(dsp + bh * N * N, work.G.p, N);
      const T* ck = cp + bh * nblk * N * N;
      switch (N) {
        case 16: backward_head<T, 16>(N, T_, K, bi, h, H, in, dy, ck, work, out); break;
        case 32: backward_head<T, 32>(N, T_, K, bi, h, H, in, dy, ck, work, out); break;
        case 64: backward_head<T, 64>(N, T_, K, bi, h, H, in, dy, ck, work, out); break;
        case 128: backward_head<T, 128>(N, T_, K, bi, h, H, in, dy, ck, work, out); break;
        default: backward_head<T, 0>(N, T_, K, bi, h, H, in, dy, ck, work, out); break;
      }
      transpose_copy(work.G.p, d0 + bh * N * N, N);
    }
  });
  grads.push_back(ds0);
  return grads;
}

// ---------------------------------------------------------------------------------------------
// argument checks and entry points

void check_rows(const torch::Tensor& x, const char* name, const torch::Tensor& like) {
  TORCH_CHECK(x.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(x.scalar_type() == like.scalar_type(), name, " must have the dtype of r (", like.scalar_type(),
              "), got ", x.scalar_type());
  TORCH_CHECK(x.sizes() == like.sizes(), name, " must have the shape of r ", like.sizes(), ", got ", x.sizes());
  TORCH_CHECK(x.size(3) <= 1 || x.stride(3) == 1, name, " must have a contiguous last dimension");
}

torch::Tensor check_square(torch::Tensor x, const char* name, const torch::Tensor& r) {
  const int64_t B = r.size(0), H = r.size(2), N = r.size(3);
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == r.scalar_type(), name, " must be a CPU tensor of dtype ",
              r.scalar_type());
  TORCH_CHECK(x.dim() == 4 && x.size(0) == B && x.size(1) == H && x.size(2) == N && x.size(3) == N, name,
              " must be [B, H, N, N]");
  return x.contiguous();
}

void check_inputs(const torch::Tensor& r, const torch::Tensor& w, const torch::Tensor& k, const torch::Tensor& v,
                  const torch::Tensor& a, const torch::Tensor& b, int64_t chunk) {
  TORCH_CHECK(r.dim() == 4, "r must be [B, T, H, N]");
  TORCH_CHECK(r.scalar_type() == torch::kFloat32 || r.scalar_type() == torch::kFloat64,
              "the CPU training kernels take float32 or float64 (the Python wrapper casts)");
  check_rows(r, "r", r);
  check_rows(w, "w", r);
  check_rows(k, "k", r);
  check_rows(v, "v", r);
  check_rows(a, "a", r);
  check_rows(b, "b", r);
  TORCH_CHECK(chunk >= 1, "chunk must be >= 1, got ", chunk);
}

template <typename T>
Inputs<T> inputs_of(const torch::Tensor& r, const torch::Tensor& w, const torch::Tensor& k, const torch::Tensor& v,
                    const torch::Tensor& a, const torch::Tensor& b) {
  return Inputs<T>{view4<T>(r), view4<T>(w), view4<T>(k), view4<T>(v), view4<T>(a), view4<T>(b)};
}

// (r, w, k, v, a, b, state, chunk) -> (y, final_state, checkpoints)
std::vector<torch::Tensor> wkv7_forward_train(torch::Tensor r, torch::Tensor w, torch::Tensor k, torch::Tensor v,
                                              torch::Tensor a, torch::Tensor b, torch::Tensor state,
                                              int64_t chunk) {
  check_inputs(r, w, k, v, a, b, chunk);
  state = check_square(state, "state", r);
  const int64_t B = r.size(0), T_ = r.size(1), H = r.size(2), N = r.size(3);
  const auto opts = state.options().memory_format(c10::MemoryFormat::Contiguous);
  if (r.scalar_type() == torch::kFloat64)
    return forward_impl<double>(inputs_of<double>(r, w, k, v, a, b), state, B, T_, H, N, chunk, opts);
  return forward_impl<float>(inputs_of<float>(r, w, k, v, a, b), state, B, T_, H, N, chunk, opts);
}

// (r, w, k, v, a, b, dy, d_final_state, checkpoints, chunk) -> (dr, dw, dk, dv, da, db, d_state)
std::vector<torch::Tensor> wkv7_backward(torch::Tensor r, torch::Tensor w, torch::Tensor k, torch::Tensor v,
                                         torch::Tensor a, torch::Tensor b, torch::Tensor dy, torch::Tensor ds,
                                         torch::Tensor ckpt, int64_t chunk) {
  check_inputs(r, w, k, v, a, b, chunk);
  check_rows(dy, "dy", r);
  ds = check_square(ds, "d_state", r);
  const int64_t B = r.size(0), T_ = r.size(1), H = r.size(2), N = r.size(3);
  const int64_t nblk = (T_ + chunk - 1) / chunk;
  TORCH_CHECK(ckpt.scalar_type() == r.scalar_type() && ckpt.is_contiguous() && ckpt.dim() == 5 &&
                  ckpt.size(0) == B && ckpt.size(1) == H && ckpt.size(2) == nblk && ckpt.size(3) == N &&
                  ckpt.size(4) == N,
              "checkpoints must be the contiguous [B, H, ceil(T/chunk), N, N] tensor of wkv7_forward_train");
  const auto opts = ds.options().memory_format(c10::MemoryFormat::Contiguous);
  if (r.scalar_type() == torch::kFloat64)
    return backward_impl<double>(inputs_of<double>(r, w, k, v, a, b), view4<double>(dy), ds, ckpt, B, T_, H, N,
                                 chunk, opts);
  return backward_impl<float>(inputs_of<float>(r, w, k, v, a, b), view4<float>(dy), ds, ckpt, B, T_, H, N, chunk,
                              opts);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "docstream compiled CPU RWKV-7 training kernels (fp32 / fp64; the Python wrapper handles dtypes)";
  m.def("wkv7_forward_train", &wkv7_forward_train,
        "RWKV-7 WKV forward saving checkpoints (r, w, k, v, a, b, state, chunk) -> (y, new_state, checkpoints)",
        py::call_guard<py::gil_scoped_release>());
  m.def("wkv7_backward", &wkv7_backward,
        "RWKV-7 WKV backward (r, w, k, v, a, b, dy, d_new_state, checkpoints, chunk) -> "
        "(dr, dw, dk, dv, da, db, d_state)",
        py::call_guard<py::gil_scoped_release>());
  m.def("num_threads", []() { return at::get_num_threads(); });
}
