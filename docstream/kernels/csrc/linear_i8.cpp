// Matrix products with int8 weights (linear_i8): part of the CPU extension built from wkv_cpu.cpp,
// which binds it. The maths is docstream/kernels/reference.py's linear_i8_ref:
//
//     y[m, o] = scale[o] * sum_k x[m, k] * q[o, k]        x [M, K] fp32, q [O, K] int8, scale [O] fp32
//
// The weights stay int8 in memory (a quarter of fp32); no fp32 copy of a matrix is kept. Two forms:
//
// * few rows (decoding, M < kI8BlasRows): each task streams its rows of q once, widening 8 int8 values
//   at a time into a float vector in registers, and reuses each widened vector for every row of x.
//   The products read a quarter of the bytes fp32 weights need, which is what bounds decoding.
// * many rows (ingestion): the work is compute-bound, so blocks of rows of q are widened (and scaled)
//   into a scratch buffer of at most kI8ScratchBytes and multiplied with torch's BLAS, straight into
//   their columns of y. The scratch lives for one call.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

#include "linear_tile.h"

namespace {

using namespace wkv;

constexpr int64_t kI8BlasRows = 16;                   // from this many rows of x on, the BLAS form
constexpr int64_t kI8ScratchBytes = 8 << 20;          // largest widened block of q (BLAS form)

// All M rows of x against OR rows of a weight matrix w (int8, or int8 already widened to float), scaled:
// tiles of MR rows of x, the remainder with smaller tiles.
template <int OR, int MR, typename W>
void scaled_rows(int64_t M, int64_t K, const float* x, int64_t sx, const W* w, int64_t sw, const float* scale,
                 float* y, int64_t sy) {
  int64_t m = 0;
  for (; m + MR <= M; m += MR) {
    float sum[MR][OR];
    dot_tile<MR, OR>(K, x + m * sx, sx, w, sw, sum);
    for (int i = 0; i < MR; ++i)
      for (int o = 0; o < OR; ++o) y[(m + i) * sy + o] = sum[i][o] * scale[o];
  }
  if constexpr (MR > 1) {
    if (m < M) scaled_rows<OR, MR - 1>(M - m, K, x + m * sx, sx, w, sw, scale, y + m * sy, sy);
  }
}

// Rows [o, o1) of q against all M rows of x, OR rows of q at a time. (Widening each group of rows of q
// into an L1 buffer first, so that each weight is converted once rather than once per tile of rows of x,
// was measured slower at 8 rows for every matrix of the 169M shape but the head.)
template <int OR, int MR>
void i8_block(int64_t M, int64_t K, const float* x, int64_t sx, const int8_t* q, int64_t sq, const float* scale,
              float* y, int64_t O, int64_t o, int64_t o1) {
  for (; o + OR <= o1; o += OR) scaled_rows<OR, MR>(M, K, x, sx, q + o * sq, sq, scale + o, y + o, O);
  for (; o < o1; ++o) scaled_rows<1, 8>(M, K, x, sx, q + o * sq, sq, scale + o, y + o, O);
}

void linear_i8_few(int64_t M, int64_t K, int64_t O, const float* x, int64_t sx, const int8_t* q, int64_t sq,
                   const float* scale, float* y) {
  // at most 12 accumulators, as in linear_rows: 8 rows of q for one row of x, 6 x 2 or 4 x 3 beyond
  const int64_t block = 96;  // rows of q per task
  at::parallel_for(0, (O + block - 1) / block, 1, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t o = blk * block, o1 = std::min(O, o + block);
      if (M == 1) i8_block<8, 1>(M, K, x, sx, q, sq, scale, y, O, o, o1);
      else if (M == 2 || M == 4) i8_block<6, 2>(M, K, x, sx, q, sq, scale, y, O, o, o1);
      else i8_block<4, 3>(M, K, x, sx, q, sq, scale, y, O, o, o1);
    }
  });
}

void linear_i8_blas(const torch::Tensor& x, const torch::Tensor& q, const torch::Tensor& scale, torch::Tensor& y) {
  const int64_t K = q.size(1), O = q.size(0);
  const int64_t rows = std::max<int64_t>(1, std::min<int64_t>(O, kI8ScratchBytes / (4 * std::max<int64_t>(K, 1))));
  auto scratch = torch::empty({rows, K}, x.options());
  const int8_t* qp = q.data_ptr<int8_t>();
  const float* sp = scale.data_ptr<float>();
  for (int64_t o0 = 0; o0 < O; o0 += rows) {
    const int64_t n = std::min(rows, O - o0);
    float* wp = scratch.data_ptr<float>();
    at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int8_t* src = qp + (o0 + r) * K;
        const float s = sp[o0 + r];
        float* dst = wp + r * K;
        WKV_SIMD
        for (int64_t k = 0; k < K; ++k) dst[k] = static_cast<float>(src[k]) * s;
      }
    });
    auto out = y.narrow(1, o0, n);  // [M, n] with row stride O: BLAS writes it in place
    at::mm_out(out, x, scratch.narrow(0, 0, n).t());
  }
}

torch::Tensor linear_i8_impl(const torch::Tensor& x_in, const torch::Tensor& q_in, const torch::Tensor& s_in) {
  TORCH_CHECK(x_in.device().is_cpu() && q_in.device().is_cpu() && s_in.device().is_cpu(),
              "linear_i8: x, q and scale must be CPU tensors");
  TORCH_CHECK(x_in.scalar_type() == torch::kFloat32, "linear_i8: x must be float32, got ", x_in.scalar_type());
  TORCH_CHECK(q_in.scalar_type() == torch::kInt8, "linear_i8: q must be int8, got ", q_in.scalar_type());
  TORCH_CHECK(s_in.scalar_type() == torch::kFloat32, "linear_i8: scale must be float32, got ", s_in.scalar_type());
  TORCH_CHECK(x_in.dim() == 2 && q_in.dim() == 2 && x_in.size(1) == q_in.size(1),
              "linear_i8: x must be [M, K] and q [O, K], got ", x_in.sizes(), " and ", q_in.sizes());
  TORCH_CHECK(s_in.numel() == q_in.size(0), "linear_i8: scale must have O=", q_in.size(0), " elements, got ",
              s_in.numel());
  const int64_t M = x_in.size(0), K = x_in.size(1), O = q_in.size(0);
  auto y = torch::empty({M, O}, x_in.options());
  if (M == 0 || O == 0) return y;
  if (K == 0) return y.zero_();
  const auto x = x_in.stride(1) != 1 ? x_in.contiguous() : x_in;
  const auto q = q_in.contiguous();
  const auto s = s_in.contiguous();
  if (M >= kI8BlasRows) {
    linear_i8_blas(x, q, s, y);
  } else {
    linear_i8_few(M, K, O, x.data_ptr<float>(), x.stride(0), q.data_ptr<int8_t>(), K, s.data_ptr<float>(),
                  y.data_ptr<float>());
  }
  return y;
}

}  // namespace

namespace wkv {

torch::Tensor linear_i8(const torch::Tensor& x, const torch::Tensor& q, const torch::Tensor& scale) {
  return linear_i8_impl(x, q, scale);
}

}  // namespace wkv
