// PyTorch binding of the RWKV-5.2/6/7 CUDA kernels in wkv_cuda.cu (head size WKV_N, set at build time).
// The Python wrapper (docstream/kernels/dispatch.py) casts w/u to fp32, gives r/k/v/a/b one dtype
// (fp32, bf16 or fp16) and a contiguous last dimension, and the state as contiguous fp32.

#include <torch/extension.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <vector>

#include "wkv_binding.h"

int docstream_wkv_head_size();
const char* docstream_wkv6_cuda(int dtype, int64_t B, int64_t T, int64_t H, const void* r, const int64_t* sr,
                                const void* k, const int64_t* sk, const void* v, const int64_t* sv,
                                const float* w, const int64_t* sw, const float* u, const float* s_in,
                                float* s_out, void* y, void* stream);
const char* docstream_wkv7_cuda(int dtype, int64_t B, int64_t T, int64_t H, const void* r, const int64_t* sr,
                                const float* w, const int64_t* sw, const void* k, const int64_t* sk,
                                const void* v, const int64_t* sv, const void* a, const int64_t* sa,
                                const void* b, const int64_t* sb, const float* s_in, float* s_out, void* y,
                                void* stream);

namespace {

using namespace wkv;

torch::Tensor checked_state(const torch::Tensor& r, torch::Tensor state) {
  const int64_t N = r.size(3);
  TORCH_CHECK(state.is_cuda() && state.device() == r.device(), "state must be on ", r.device());
  TORCH_CHECK(state.scalar_type() == torch::kFloat32, "state must be float32");
  TORCH_CHECK(state.dim() == 4 && state.size(0) == r.size(0) && state.size(1) == r.size(2) && state.size(2) == N &&
                  state.size(3) == N,
              "state must be [B, H, N, N]");
  return state.contiguous();
}

void check_head_size(const torch::Tensor& r) {
  TORCH_CHECK(r.dim() == 4, "inputs must be [B, T, H, N]");
  TORCH_CHECK(r.size(3) == docstream_wkv_head_size(), "this extension was built for head size ",
              docstream_wkv_head_size(), ", got N=", r.size(3));
}

std::vector<torch::Tensor> wkv6_forward(torch::Tensor r, torch::Tensor k, torch::Tensor v, torch::Tensor w,
                                        torch::Tensor u, torch::Tensor state) {
  check_head_size(r);
  check_input(r, "r", r, false);
  check_input(k, "k", r, false);
  check_input(v, "v", r, false);
  check_input(w, "w", r, true);
  const int64_t B = r.size(0), T = r.size(1), H = r.size(2), N = r.size(3);
  u = u.contiguous();
  TORCH_CHECK(u.is_cuda() && u.scalar_type() == torch::kFloat32 && u.numel() == H * N, "u must be float32 [H, N]");
  state = checked_state(r, state);
  const c10::cuda::CUDAGuard guard(r.device());
  auto y = torch::empty({B, T, H, N}, r.options().memory_format(c10::MemoryFormat::Contiguous));
  auto s_new = torch::empty_like(state, c10::MemoryFormat::Contiguous);
  const auto sr = strides_of(r), sk = strides_of(k), sv = strides_of(v), sw = strides_of(w);
  const char* err = docstream_wkv6_cuda(dtype_code(r), B, T, H, r.data_ptr(), sr.data(), k.data_ptr(), sk.data(),
                                        v.data_ptr(), sv.data(), w.data_ptr<float>(), sw.data(),
                                        u.data_ptr<float>(), state.data_ptr<float>(), s_new.data_ptr<float>(),
                                        y.data_ptr(), c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == nullptr, "wkv6 CUDA kernel launch failed: ", err ? err : "");
  return {y, s_new};
}

std::vector<torch::Tensor> wkv7_forward(torch::Tensor r, torch::Tensor w, torch::Tensor k, torch::Tensor v,
                                        torch::Tensor a, torch::Tensor b, torch::Tensor state) {
  check_head_size(r);
  check_wkv7_inputs(r, w, k, v, a, b);
  const int64_t B = r.size(0), T = r.size(1), H = r.size(2), N = r.size(3);
  state = checked_state(r, state);
  const c10::cuda::CUDAGuard guard(r.device());
  auto y = torch::empty({B, T, H, N}, r.options().memory_format(c10::MemoryFormat::Contiguous));
  auto s_new = torch::empty_like(state, c10::MemoryFormat::Contiguous);
  const auto sr = strides_of(r), sw = strides_of(w), sk = strides_of(k), sv = strides_of(v), sa = strides_of(a),
             sb = strides_of(b);
  const char* err = docstream_wkv7_cuda(dtype_code(r), B, T, H, r.data_ptr(), sr.data(), w.data_ptr<float>(),
                                        sw.data(), k.data_ptr(), sk.data(), v.data_ptr(), sv.data(), a.data_ptr(),
                                        sa.data(), b.data_ptr(), sb.data(), state.data_ptr<float>(),
                                        s_new.data_ptr<float>(), y.data_ptr(),
                                        c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == nullptr, "wkv7 CUDA kernel launch failed: ", err ? err : "");
  return {y, s_new};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "docstream CUDA WKV kernels for RWKV-5.2/6/7 (head size fixed at build time)";
  m.def("wkv6", &wkv6_forward, "RWKV-5.2/6 WKV (r, k, v, w, u, state) -> (y, new_state)");
  m.def("wkv7", &wkv7_forward, "RWKV-7 WKV (r, w, k, v, a, b, state) -> (y, new_state)");
  m.def("head_size", &docstream_wkv_head_size);
}
