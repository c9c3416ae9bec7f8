// PyTorch binding of the RWKV-7 CUDA training kernels in wkv7_train_cuda.cu (head size WKV_N and
// checkpoint interval WKV_CHUNK set at build time). The Python wrapper (docstream/kernels/autograd.py)
// gives r, k, v, a, b, dy one dtype (fp32, bf16 or fp16) with a contiguous last dimension, w as fp32,
// and states as contiguous fp32.

#include <torch/extension.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <vector>

#include "wkv_binding.h"

int docstream_wkv7_train_head_size();
int docstream_wkv7_train_chunk();
const char* docstream_wkv7_forward_train_cuda(int dtype, int64_t B, int64_t T, int64_t H, const void* r,
                                              const int64_t* sr, const float* w, const int64_t* sw, const void* k,
                                              const int64_t* sk, const void* v, const int64_t* sv, const void* a,
                                              const int64_t* sa, const void* b, const int64_t* sb,
                                              const float* s_in, float* s_out, float* ckpt, void* y, void* stream);
const char* docstream_wkv7_backward_cuda(int dtype, int64_t B, int64_t T, int64_t H, const void* r,
                                         const int64_t* sr, const float* w, const int64_t* sw, const void* k,
                                         const int64_t* sk, const void* v, const int64_t* sv, const void* a,
                                         const int64_t* sa, const void* b, const int64_t* sb, const void* dy,
                                         const int64_t* sdy, const float* ds, const float* ckpt, float* scratch,
                                         void* const* grads, float* ds0, void* stream);

namespace {

using namespace wkv;

torch::Tensor checked_square(const torch::Tensor& r, torch::Tensor x, const char* name) {
  const int64_t N = r.size(3);
  TORCH_CHECK(x.is_cuda() && x.device() == r.device(), name, " must be on ", r.device());
  TORCH_CHECK(x.scalar_type() == torch::kFloat32, name, " must be float32");
  TORCH_CHECK(x.dim() == 4 && x.size(0) == r.size(0) && x.size(1) == r.size(2) && x.size(2) == N && x.size(3) == N,
              name, " must be [B, H, N, N]");
  return x.contiguous();
}

void check_inputs(const torch::Tensor& r, const torch::Tensor& w, const torch::Tensor& k, const torch::Tensor& v,
                  const torch::Tensor& a, const torch::Tensor& b, int64_t chunk) {
  TORCH_CHECK(r.dim() == 4, "inputs must be [B, T, H, N]");
  TORCH_CHECK(r.size(3) == docstream_wkv7_train_head_size(), "this extension was built for head size ",
              docstream_wkv7_train_head_size(), ", got N=", r.size(3));
  TORCH_CHECK(chunk == docstream_wkv7_train_chunk(), "this extension was built for checkpoints every ",
              docstream_wkv7_train_chunk(), " tokens, got chunk=", chunk);
  check_wkv7_inputs(r, w, k, v, a, b);
}

// (r, w, k, v, a, b, state, chunk) -> (y, final_state, checkpoints)
std::vector<torch::Tensor> wkv7_forward_train(torch::Tensor r, torch::Tensor w, torch::Tensor k, torch::Tensor v,
                                              torch::Tensor a, torch::Tensor b, torch::Tensor state,
                                              int64_t chunk) {
  check_inputs(r, w, k, v, a, b, chunk);
  state = checked_square(r, state, "state");
  const int64_t B = r.size(0), T = r.size(1), H = r.size(2), N = r.size(3);
  const int64_t nblk = (T + chunk - 1) / chunk;
  const c10::cuda::CUDAGuard guard(r.device());
  auto y = torch::empty({B, T, H, N}, r.options().memory_format(c10::MemoryFormat::Contiguous));
  auto s_out = torch::empty_like(state, c10::MemoryFormat::Contiguous);
  auto ckpt = torch::empty({B, H, nblk, N, N}, state.options().memory_format(c10::MemoryFormat::Contiguous));
  const auto sr = strides_of(r), sw = strides_of(w), sk = strides_of(k), sv = strides_of(v), sa = strides_of(a),
             sb = strides_of(b);
  const char* err = docstream_wkv7_forward_train_cuda(
      dtype_code(r), B, T, H, r.data_ptr(), sr.data(), w.data_ptr<float>(), sw.data(), k.data_ptr(), sk.data(),
      v.data_ptr(), sv.data(), a.data_ptr(), sa.data(), b.data_ptr(), sb.data(), state.data_ptr<float>(),
      s_out.data_ptr<float>(), ckpt.data_ptr<float>(), y.data_ptr(), c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == nullptr, "wkv7 training forward CUDA kernel launch failed: ", err ? err : "");
  return {y, s_out, ckpt};
}

// (r, w, k, v, a, b, dy, d_final_state, checkpoints, chunk) -> (dr, dw, dk, dv, da, db, d_state)
std::vector<torch::Tensor> wkv7_backward(torch::Tensor r, torch::Tensor w, torch::Tensor k, torch::Tensor v,
                                         torch::Tensor a, torch::Tensor b, torch::Tensor dy, torch::Tensor ds,
                                         torch::Tensor ckpt, int64_t chunk) {
  check_inputs(r, w, k, v, a, b, chunk);
  check_input(dy, "dy", r, false);
  ds = checked_square(r, ds, "d_state");
  const int64_t B = r.size(0), T = r.size(1), H = r.size(2), N = r.size(3);
  const int64_t nblk = (T + chunk - 1) / chunk;
  TORCH_CHECK(ckpt.is_cuda() && ckpt.device() == r.device() && ckpt.scalar_type() == torch::kFloat32 &&
                  ckpt.is_contiguous() && ckpt.dim() == 5 && ckpt.size(0) == B && ckpt.size(1) == H &&
                  ckpt.size(2) == nblk && ckpt.size(3) == N && ckpt.size(4) == N,
              "checkpoints must be the contiguous [B, H, ceil(T/chunk), N, N] tensor of wkv7_forward_train");
  const c10::cuda::CUDAGuard guard(r.device());
  const auto like = r.options().memory_format(c10::MemoryFormat::Contiguous);
  const auto f32 = ds.options().memory_format(c10::MemoryFormat::Contiguous);
  std::vector<torch::Tensor> grads{torch::empty({B, T, H, N}, like), torch::empty({B, T, H, N}, f32),
                                   torch::empty({B, T, H, N}, like), torch::empty({B, T, H, N}, like),
                                   torch::empty({B, T, H, N}, like), torch::empty({B, T, H, N}, like)};
  auto ds0 = torch::empty({B, H, N, N}, f32);
  auto scratch = torch::empty({B, H, chunk, N, N}, f32);  // the recomputed states of one block per head
  void* gp[6];
  for (int q = 0; q < 6; ++q) gp[q] = grads[q].data_ptr();
  const auto sr = strides_of(r), sw = strides_of(w), sk = strides_of(k), sv = strides_of(v), sa = strides_of(a),
             sb = strides_of(b), sdy = strides_of(dy);
  const char* err = docstream_wkv7_backward_cuda(
      dtype_code(r), B, T, H, r.data_ptr(), sr.data(), w.data_ptr<float>(), sw.data(), k.data_ptr(), sk.data(),
      v.data_ptr(), sv.data(), a.data_ptr(), sa.data(), b.data_ptr(), sb.data(), dy.data_ptr(), sdy.data(),
      ds.data_ptr<float>(), ckpt.data_ptr<float>(), scratch.data_ptr<float>(), gp, ds0.data_ptr<float>(),
      c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == nullptr, "wkv7 backward CUDA kernel launch failed: ", err ? err : "");
  grads.push_back(ds0);
  return grads;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "docstream CUDA RWKV-7 training kernels (head size and checkpoint interval fixed at build time)";
  m.def("wkv7_forward_train", &wkv7_forward_train,
        "RWKV-7 WKV forward saving checkpoints (r, w, k, v, a, b, state, chunk) -> (y, new_state, checkpoints)");
  m.def("wkv7_backward", &wkv7_backward,
        "RWKV-7 WKV backward (r, w, k, v, a, b, dy, d_new_state, checkpoints, chunk) -> "
        "(dr, dw, dk, dv, da, db, d_state)");
  m.def("head_size", &docstream_wkv7_train_head_size);
  m.def("chunk", &docstream_wkv7_train_chunk);
}
