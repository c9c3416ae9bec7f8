// PyTorch binding of the RWKV-4 CUDA kernel in wkv4_cuda.cu. The Python wrapper
// (docstream/kernels/dispatch.py) passes w, u and the state as contiguous fp32 and k, v in one
// dtype (fp32, bf16 or fp16) with a contiguous channel dimension.

#include <torch/extension.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <vector>

#include "wkv_binding.h"

const char* docstream_wkv4_cuda(int dtype, int64_t B, int64_t T, int64_t C, const float* w, const float* u,
                                const void* k, int64_t k_sb, int64_t k_st, const void* v, int64_t v_sb,
                                int64_t v_st, const float* s_in, float* s_out, void* y, void* stream);

namespace {

using namespace wkv;

std::vector<torch::Tensor> wkv4_forward(torch::Tensor w, torch::Tensor u, torch::Tensor k, torch::Tensor v,
                                        torch::Tensor state) {
  TORCH_CHECK(k.is_cuda() && v.device() == k.device(), "k and v must be CUDA tensors on one device");
  TORCH_CHECK(k.dim() == 3 && k.sizes() == v.sizes(), "k and v must be [B, T, C]");
  TORCH_CHECK(k.scalar_type() == v.scalar_type(), "k and v must have one dtype");
  TORCH_CHECK(k.size(2) <= 1 || (k.stride(2) == 1 && v.stride(2) == 1), "k and v need a contiguous last dimension");
  const int64_t B = k.size(0), T = k.size(1), C = k.size(2);
  w = w.contiguous();
  u = u.contiguous();
  state = state.contiguous();
  for (const auto* p : {&w, &u, &state}) {
    TORCH_CHECK(p->device() == k.device(), "w, u and state must be on ", k.device());
    TORCH_CHECK(p->scalar_type() == torch::kFloat32, "w, u and state must be float32");
  }
  TORCH_CHECK(w.numel() == C && u.numel() == C, "w and u must have C elements");
  TORCH_CHECK(state.dim() == 3 && state.size(0) == B && state.size(1) == 3 && state.size(2) == C,
              "state must be [B, 3, C]");
  const c10::cuda::CUDAGuard guard(k.device());
  auto y = torch::empty({B, T, C}, k.options().memory_format(c10::MemoryFormat::Contiguous));
  auto s_new = torch::empty_like(state, c10::MemoryFormat::Contiguous);
  const char* err = docstream_wkv4_cuda(dtype_code(k), B, T, C, w.data_ptr<float>(), u.data_ptr<float>(),
                                        k.data_ptr(), k.stride(0), k.stride(1), v.data_ptr(), v.stride(0),
                                        v.stride(1), state.data_ptr<float>(), s_new.data_ptr<float>(), y.data_ptr(),
                                        c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == nullptr, "wkv4 CUDA kernel launch failed: ", err ? err : "");
  return {y, s_new};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "docstream CUDA WKV kernel for RWKV-4";
  m.def("wkv4", &wkv4_forward, "RWKV-4 WKV (w, u, k, v, state) -> (y, new_state)");
}
