// Few-row matrix product for decoding (linear_rows): part of the CPU extension built from wkv_cpu.cpp,
// which binds it. Kept apart from the WKV recurrences because it shares nothing with them but the
// vector helpers of wkv_simd.h.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "linear_tile.h"

namespace {

using namespace wkv;


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
  float sum[MR][OR];
  dot_tile<MR, OR>(K, x, sx, w, sw, sum);
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

torch::Tensor linear_rows_impl(const torch::Tensor& x_in, const torch::Tensor& w_in) {
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

namespace wkv {

torch::Tensor linear_rows(const torch::Tensor& x_in, const torch::Tensor& w_in) { return linear_rows_impl(x_in, w_in); }

}  // namespace wkv
