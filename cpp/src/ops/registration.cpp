// Every schema of the dtc operator library, in one place: this file is the contract that the
// CPU, CUDA, Autograd and Autocast kernels and the Python fake kernels implement.
#include <torch/library.h>

#include "dtc/ops.h"

TORCH_LIBRARY(dtc, m) {
  m.def("warp(Tensor x, Tensor flow, str padding='border') -> Tensor");
  m.def("warp_backward(Tensor grad_out, Tensor x, Tensor flow, str padding, bool[2] output_mask) -> (Tensor, Tensor)");
  // Composite: built from ATen ops, so autograd, fake tensors and every backend come for free.
  m.def("resize_flow(Tensor flow, int[2] size, bool align_corners=True, bool rescale=True) -> Tensor",
        torch::dispatch(c10::DispatchKey::CompositeImplicitAutograd, TORCH_FN(dtc::resize_flow)));
  // Not differentiable: flow is an input to the losses, never optimised through.
  m.def("farneback(Tensor prev, Tensor next, float pyr_scale=0.5, int levels=3, int winsize=15, int iterations=3, "
        "int poly_n=5, float poly_sigma=1.2, bool gaussian_window=False, int median=3) -> Tensor");

  // XDim-KD pseudo-label smoother (docs/xdim.md): the SPD solve of the 3-D smoothing energy. Returns the
  // solution and info = [iterations, relative residual]. Not differentiable.
  m.def("smooth3d_pcg(Tensor target, Tensor weight, float kappa_z, float kappa_xy, float tol, int max_iter) -> (Tensor, Tensor)");

  // XDim-KD test-time augmentation (docs/xdim.md): inverse-warps N predictions per slice (up-sampling to
  // `size` in the same interpolation) and returns (mean, std, coverage). Not differentiable.
  m.def("tta_accumulate(Tensor preds, Tensor params, int[2] size, float eps=1e-9) -> (Tensor, Tensor, Tensor)");

  // Exact Euclidean distance transform to the nonzero elements over the last len(spacing) dimensions
  // (docs/v2i.md, soft foreground masks). CPU only, not differentiable.
  m.def("edt(Tensor mask, float[] spacing) -> Tensor");

  // V2I-Seg target-guided feature distillation on one encoder level (docs/v2i.md); differentiable in
  // the student only.
  m.def("tfd_loss(Tensor student, Tensor teacher, Tensor mask, float alpha_fg=1.0, float alpha_bg=0.5, "
        "str norm='pixel_ln', bool attn_weight=False) -> Tensor");
  m.def("tfd_loss_backward(Tensor grad_loss, Tensor student, Tensor teacher, Tensor mask, float alpha_fg, "
        "float alpha_bg, str norm, bool attn_weight) -> Tensor");

  // V2I-Seg multi-frame multi-scale deformable attention (the clip teacher's global branch); see
  // dtc/ops.h for shapes. Differentiable in value, sampling_locations and attention_weights.
  m.def("msda_st(Tensor value, int[] spatial_shapes, Tensor sampling_locations, Tensor attention_weights) -> Tensor");
  m.def("msda_st_backward(Tensor grad_out, Tensor value, int[] spatial_shapes, Tensor sampling_locations, "
        "Tensor attention_weights) -> (Tensor, Tensor, Tensor)");

  // XDim-KD correlation distillation on sampled, L2-normalised point features (docs/xdim.md).
  m.def("corr_distill_loss(Tensor student, Tensor teacher, Tensor pair, float b0=0.1, float clamp_max=0.8) -> Tensor");
  m.def("corr_distill_loss_backward(Tensor grad_loss, Tensor student, Tensor teacher, Tensor pair, float b0, "
        "float clamp_max) -> Tensor");

  // The DTC training signals (docs/method.md §2); see dtc/ops.h for shapes. Auxiliary outputs (mass,
  // stats, maps) carry no gradient.
  m.def("temporal_consistency(Tensor logits, Tensor images, Tensor flows, Tensor? flows_backward, float[] channel_scale, "
        "float alpha, str confidence, bool soft_target, bool normalise, bool return_maps) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("temporal_consistency_backward(Tensor grad_loss, Tensor mass, Tensor logits, Tensor images, Tensor flows, "
        "Tensor? flows_backward, float[] channel_scale, float alpha, str confidence, bool soft_target, bool normalise) -> Tensor");
  m.def("local_prototypes(Tensor probs, Tensor features, Tensor flows, Tensor threshold, bool rescale_flow, "
        "bool hard_target=False) -> (Tensor, Tensor, Tensor)");
  m.def("local_prototypes_backward(Tensor grad_prev, Tensor grad_cur, Tensor mass, Tensor probs, Tensor features, "
        "Tensor flows, Tensor threshold, bool rescale_flow, bool hard_target=False) -> Tensor");
  m.def("global_prototypes(Tensor probs, Tensor features, Tensor threshold) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("global_prototypes_backward(Tensor grad_prev, Tensor grad_cur, Tensor mass_prev, Tensor mass_cur, Tensor probs, "
        "Tensor features, Tensor threshold) -> Tensor");
  m.def("foreground_threshold(Tensor probs, float q) -> Tensor",
        torch::dispatch(c10::DispatchKey::CompositeImplicitAutograd, TORCH_FN(dtc::foreground_threshold)));
  m.def("bce_dice(Tensor logits, Tensor target, float smooth) -> (Tensor, Tensor)");
  m.def("bce_dice_backward(Tensor grad_loss, Tensor stats, Tensor logits, Tensor target, float smooth) -> Tensor");
  m.def("kd_loss(Tensor student, Tensor teacher, float tau) -> Tensor");
  m.def("kd_loss_backward(Tensor grad_loss, Tensor student, Tensor teacher, float tau) -> Tensor");
}
