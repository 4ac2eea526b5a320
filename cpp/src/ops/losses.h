#pragma once
// Shared by the DTC loss ops' kernels: argument validation with messages that name the argument and
// the expectation (the raw torch.ops.dtc.* entry points get the same checks as the Python API).
#include <ATen/core/Tensor.h>

#include <optional>
#include <string_view>

#include "ops/common/loss_math.h"

namespace dtc::ops {

// logits [B, T, 1, H, W], images [B, T, C, H, W], flows (and flows_backward) [B, T, 2, H, W].
math::Residual check_consistency_args(const at::Tensor& logits, const at::Tensor& images, const at::Tensor& flows,
                                      const std::optional<at::Tensor>& flows_backward,
                                      at::ArrayRef<double> channel_scale, double alpha, std::string_view confidence);

// The consistency op's tensors after check_consistency_args, contiguous; flows_backward is undefined
// when the caller passed none. Both backends' entry points start with this.
struct ConsistencyInputs {
  at::Tensor logits, images, flows, flows_backward;
  math::Residual residual;
};
ConsistencyInputs consistency_inputs(const at::Tensor& logits, const at::Tensor& images, const at::Tensor& flows,
                                     const std::optional<at::Tensor>& flows_backward,
                                     at::ArrayRef<double> channel_scale, double alpha, std::string_view confidence);

// probs [B, T, 1, H, W] in [0, 1], features [B, T, C, h, w], threshold [T-1]; flows [B, T, 2, H, W]
// when given (local prototypes).
void check_prototype_args(const char* op, const at::Tensor& probs, const at::Tensor& features,
                          const at::Tensor* flows, const at::Tensor& threshold);

// a [..., C, H, W] and b of the same shape, dtype and device; b holds probabilities when `b_is_prob`.
void check_pointwise_loss_args(const char* op, const char* a_name, const at::Tensor& a, const char* b_name,
                               const at::Tensor& b, bool b_is_prob);

// The backward ops of the prototypes: the forward's checks plus the incoming gradients [B, T-1, C]
// and the saved masses [B, T-1].
void check_local_prototypes_backward_args(const at::Tensor& grad_prev, const at::Tensor& grad_cur,
                                          const at::Tensor& mass, const at::Tensor& probs,
                                          const at::Tensor& features, const at::Tensor& flows,
                                          const at::Tensor& threshold);
void check_global_prototypes_backward_args(const at::Tensor& grad_prev, const at::Tensor& grad_cur,
                                           const at::Tensor& mass_prev, const at::Tensor& mass_cur,
                                           const at::Tensor& probs, const at::Tensor& features,
                                           const at::Tensor& threshold);

// Flow of pair (b, t) at the local features' resolution, shared by the CPU and CUDA prototype kernels:
// the input flows themselves when the sizes agree, else a bilinear resize of the T-1 used frames
// (small: 2 channels).
struct FeatureFlow {
  at::Tensor storage;
  int64_t frames_per_window, frame_offset;  // flow of pair t lives at frame t - frame_offset
};
FeatureFlow feature_flow(const at::Tensor& flows, int64_t h, int64_t w, bool rescale);

// Kernel parameters of the consistency op from its (checked) arguments, the same on both backends.
template <typename T>
math::ConsistencyParams<T> consistency_params(const at::Tensor& logits, const at::Tensor& images, bool occlusion,
                                              at::ArrayRef<double> channel_scale, double alpha,
                                              math::Residual residual, bool soft_target) {
  math::ConsistencyParams<T> p;
  p.B = logits.size(0);
  p.T_ = logits.size(1);
  p.C = images.size(2);
  p.H = logits.size(3);
  p.W = logits.size(4);
  p.alpha = T(alpha);
  p.residual = residual;
  p.soft_target = soft_target;
  p.occlusion = occlusion;
  for (int c = 0; c < math::kMaxImageChannels; ++c) {
    p.scale[c] = c < static_cast<int>(channel_scale.size()) ? T(channel_scale[c]) : T(1);
  }
  return p;
}

// A gradient or saved tensor that must match `expected` in shape, dtype and device.
void check_saved(const char* op, const char* name, const at::Tensor& t, at::IntArrayRef shape, const at::Tensor& like);

}  // namespace dtc::ops
