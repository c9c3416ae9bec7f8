// Shared argument handling of the PyTorch bindings of the CUDA kernels (wkv_cuda.cpp, wkv4_cuda.cpp,
// wkv7_train_cuda.cpp).
#pragma once

#include <torch/extension.h>

#include <array>
#include <cstdint>

namespace wkv {

// The dtype code the .cu entry points take: 0 = fp32, 1 = bf16, 2 = fp16.
inline int dtype_code(const torch::Tensor& x) {
  switch (x.scalar_type()) {
    case torch::kFloat32: return 0;
    case torch::kBFloat16: return 1;
    case torch::kFloat16: return 2;
    default: TORCH_CHECK(false, "WKV CUDA kernels take float32, bfloat16 or float16 inputs, got ", x.scalar_type());
  }
  return -1;
}

// Strides (in elements) of a [B, T, H, N] tensor over its first three dimensions.
inline std::array<int64_t, 3> strides_of(const torch::Tensor& x) { return {x.stride(0), x.stride(1), x.stride(2)}; }

// A [B, T, H, N] input: on r's CUDA device, r's shape, a contiguous last dimension, and fp32 (the
// decay w) or r's dtype.
inline void check_input(const torch::Tensor& x, const char* name, const torch::Tensor& like, bool fp32) {
  TORCH_CHECK(x.is_cuda(), name, " must be a CUDA tensor");
  TORCH_CHECK(x.device() == like.device(), name, " must be on ", like.device());
  TORCH_CHECK(x.sizes() == like.sizes(), name, " must have the shape of r ", like.sizes(), ", got ", x.sizes());
  TORCH_CHECK(x.size(3) <= 1 || x.stride(3) == 1, name, " must have a contiguous last dimension");
  if (fp32) {
    TORCH_CHECK(x.scalar_type() == torch::kFloat32, name, " must be float32");
  } else {
    TORCH_CHECK(x.scalar_type() == like.scalar_type(), name, " must have the dtype of r");
  }
}

// The RWKV-7 inputs: all shaped like r, w (the decay) in fp32, the others in r's dtype.
inline void check_wkv7_inputs(const torch::Tensor& r, const torch::Tensor& w, const torch::Tensor& k,
                              const torch::Tensor& v, const torch::Tensor& a, const torch::Tensor& b) {
  check_input(r, "r", r, false);
  check_input(w, "w", r, true);
  check_input(k, "k", r, false);
  check_input(v, "v", r, false);
  check_input(a, "a", r, false);
  check_input(b, "b", r, false);
}

}  // namespace wkv
