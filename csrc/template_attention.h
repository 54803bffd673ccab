// Argument checks of reidkern::template_attention_fwd / _bwd, shared by the CPU and CUDA kernels
// (csrc/cpu/template_attention.cpp, csrc/cuda/template_attention.cu).
#pragma once

#include "common.h"

namespace reidkern {

// q [B or 1, H, Nq, D], k and v [B, H, L, D] of one floating dtype, unit stride on D; an optional
// key_padding_mask: contiguous bool [B, L].
inline void check_template_attention_inputs(const Tensor& q, const Tensor& k, const Tensor& v,
                                            const std::optional<Tensor>& mask) {
  check_dim(q, 4, "q");
  check_dim(k, 4, "k");
  check_dim(v, 4, "v");
  check_floating(q, "q");
  STD_TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
                  "q, k and v must have the same dtype");
  const int64_t B = k.size(0), H = k.size(1), L = k.size(2), D = k.size(3);
  STD_TORCH_CHECK(q.size(0) == B || q.size(0) == 1, "q must have batch 1 or B");
  STD_TORCH_CHECK(q.size(1) == H && q.size(3) == D, "q must be [B or 1, H, Nq, D]");
  STD_TORCH_CHECK(v.size(0) == B && v.size(1) == H && v.size(2) == L && v.size(3) == D,
                  "v must have k's shape [B, H, L, D]");
  STD_TORCH_CHECK(q.stride(3) == 1 && k.stride(3) == 1 && v.stride(3) == 1,
                  "q, k, v must have unit stride on the head dimension");
  if (mask.has_value()) {
    check_dim(*mask, 2, "key_padding_mask");
    check_dtype(*mask, ScalarType::Bool, "key_padding_mask");
    STD_TORCH_CHECK(mask->size(0) == B && mask->size(1) == L && mask->is_contiguous(),
                    "key_padding_mask must be a contiguous [B, L] bool tensor");
  }
}

// The backward's extra arguments, for q, k, v already checked above (B, H, L, D from k; Nq from
// q): grad_out contiguous [B, H, Nq, D], lse contiguous [B, H, Nq], the optional grad_weights
// contiguous [B, H, Nq, L] and grad_mean_logit contiguous [B, H, Nq], all of q's dtype.
inline void check_template_attention_grads(const Tensor& grad_out,
                                           const std::optional<Tensor>& grad_weights,
                                           const std::optional<Tensor>& grad_mean,
                                           const Tensor& q, const Tensor& k, const Tensor& lse) {
  const auto st = q.scalar_type();
  const int64_t B = k.size(0), H = k.size(1), L = k.size(2), D = k.size(3), Nq = q.size(2);
  STD_TORCH_CHECK(grad_out.is_contiguous() && grad_out.scalar_type() == st && grad_out.dim() == 4 &&
                      grad_out.size(0) == B && grad_out.size(1) == H && grad_out.size(2) == Nq &&
                      grad_out.size(3) == D,
                  "grad_out must be a contiguous [B, H, Nq, D] tensor of q's dtype");
  STD_TORCH_CHECK(lse.is_contiguous() && lse.scalar_type() == st && lse.numel() == B * H * Nq,
                  "lse must be a contiguous [B, H, Nq] tensor");
  if (grad_weights.has_value())
    STD_TORCH_CHECK(grad_weights->is_contiguous() && grad_weights->scalar_type() == st &&
                        grad_weights->numel() == B * H * Nq * L,
                    "grad_weights must be a contiguous [B, H, Nq, L] tensor");
  if (grad_mean.has_value())
    STD_TORCH_CHECK(grad_mean->is_contiguous() && grad_mean->scalar_type() == st &&
                        grad_mean->numel() == B * H * Nq,
                    "grad_mean_logit must be a contiguous [B, H, Nq] tensor");
}

}  // namespace reidkern
