// PyTorch binding of the int8-weight products of linear_i8_cuda.cu: y = x @ (q * scale[:, None])^T.
// Few rows (decoding) run the kernel that reads q as int8; more rows widen blocks of q into a scratch
// matrix of at most kScratchBytes in x's dtype and multiply them with cuBLAS straight into y's columns.

#include <torch/extension.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

#include "wkv_binding.h"

const char* docstream_linear_i8_few_cuda(int dtype, int64_t M, int64_t K, int64_t O, const void* x, int64_t sx,
                                         const int8_t* q, const float* scale, void* y, void* stream);
const char* docstream_dequantize_i8_cuda(int dtype, int64_t rows, int64_t K, const int8_t* q, const float* scale,
                                         void* out, void* stream);

namespace {

using namespace wkv;

constexpr int64_t kFewRows = 8;               // the int8-reading kernel up to this many rows of x
constexpr int64_t kScratchBytes = 64 << 20;   // largest widened block of q

torch::Tensor linear_i8(torch::Tensor x, torch::Tensor q, torch::Tensor scale) {
  TORCH_CHECK(x.is_cuda() && q.device() == x.device() && scale.device() == x.device(),
              "linear_i8: x, q and scale must be CUDA tensors on one device");
  TORCH_CHECK(q.scalar_type() == torch::kInt8, "linear_i8: q must be int8, got ", q.scalar_type());
  TORCH_CHECK(scale.scalar_type() == torch::kFloat32, "linear_i8: scale must be float32");
  TORCH_CHECK(x.dim() == 2 && q.dim() == 2 && x.size(1) == q.size(1),
              "linear_i8: x must be [M, K] and q [O, K], got ", x.sizes(), " and ", q.sizes());
  TORCH_CHECK(scale.numel() == q.size(0), "linear_i8: scale must have O=", q.size(0), " elements");
  const int code = dtype_code(x);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t M = x.size(0), K = x.size(1), O = q.size(0);
  auto y = torch::empty({M, O}, x.options());
  if (M == 0 || O == 0) return y;
  if (K == 0) return y.zero_();
  if (x.stride(1) != 1) x = x.contiguous();
  q = q.contiguous();
  scale = scale.contiguous();
  void* stream = c10::cuda::getCurrentCUDAStream().stream();
  if (M <= kFewRows) {
    const char* err = docstream_linear_i8_few_cuda(code, M, K, O, x.data_ptr(), x.stride(0), q.data_ptr<int8_t>(),
                                                   scale.data_ptr<float>(), y.data_ptr(), stream);
    TORCH_CHECK(err == nullptr, "linear_i8 CUDA kernel launch failed: ", err ? err : "");
    return y;
  }
  const int64_t rows = std::max<int64_t>(1, std::min<int64_t>(O, kScratchBytes / (x.element_size() * K)));
  auto scratch = torch::empty({rows, K}, x.options());
  for (int64_t o0 = 0; o0 < O; o0 += rows) {
    const int64_t n = std::min(rows, O - o0);
    const char* err = docstream_dequantize_i8_cuda(code, n, K, q.data_ptr<int8_t>() + o0 * K,
                                                   scale.data_ptr<float>() + o0, scratch.data_ptr(), stream);
    TORCH_CHECK(err == nullptr, "linear_i8 CUDA dequantize failed: ", err ? err : "");
    auto out = y.narrow(1, o0, n);  // [M, n] with row stride O: cuBLAS writes it in place
    at::mm_out(out, x, scratch.narrow(0, 0, n).t());
  }
  return y;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "docstream CUDA products with int8 weights";
  m.def("linear_i8", &linear_i8, "x [M, K] @ (q [O, K] int8 * scale [O])^T -> [M, O] in x's dtype");
}
