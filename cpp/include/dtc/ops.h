#pragma once
// The C++ API of dtc's tensor ops. Every function goes through the PyTorch dispatcher, so C++
// callers (the networks, tests) get the same CPU/CUDA kernels, autograd and autocast as Python's
// torch.ops.dtc.* and dtc.ops.*.

#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <string_view>
#include <tuple>

namespace dtc {

// Backward warp W(A)(p) = A(p - F(p)): bilinear sampling of `x` at each pixel minus its flow.
//   x     [N, C, H, W]  float32/float64 (also float16/bfloat16 on CUDA)
//   flow  [N, 2, H, W]  same dtype and device; channel 0 = dx, channel 1 = dy, in pixels
//   padding "border" (clamp the sample point into the image) or "zeros"
//   returns [N, C, H, W]
// Pixel centres sit at align_corners=True positions. A non-finite flow vector gives NaN in every
// channel of that output pixel and no gradient. Differentiable in x and flow.
at::Tensor warp(const at::Tensor& x, const at::Tensor& flow, std::string_view padding = "border");

// Gradients of warp: (grad_x, grad_flow); an entry is an undefined tensor where output_mask is false.
std::tuple<at::Tensor, at::Tensor> warp_backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& flow,
                                                 std::string_view padding, std::array<bool, 2> output_mask);

// Bilinear resize of a flow field [N, 2, h, w] to `size` = {H, W}. With `rescale`, the components are
// multiplied by the size ratio ((W-1)/(w-1) with align_corners, W/w without) so displacements stay in
// pixels of the new grid; the authors' released code does not rescale (preset "reference").
at::Tensor resize_flow(const at::Tensor& flow, at::IntArrayRef size, bool align_corners = true, bool rescale = true);

// ---- The DTC training signals (docs/method.md §2). Window tensors are [B, T, C, H, W]; pairs are
// (t-1, t) for t = 1..T-1 (T >= 2); flows[:, t] is the flow from frame t-1 to t (warp's convention,
// flows[:, 0] unused). Flows, images, probabilities and thresholds receive no gradient.

// Confidence-weighted temporal consistency, per pair t: 1 - sum(M (1 - |P_t - P~|)) / D with
// P = sigmoid(logits), P~ = W(P_{t-1}) (binarised at 0.5 unless soft_target), M = exp(-alpha r),
// r = |sum_c s_c dI_c| ("abs_sum") or mean_c |s_c dI_c| ("mean_abs"), dI = I_t - W(I_{t-1}),
// times the forward-backward occlusion test when flows_backward is defined; D = B*H*W, or sum(M)
// (clamped to 1e-6) with `normalise`.
//   logits [B, T, 1, H, W]; images [B, T, C, H, W] (C <= 16); flows, flows_backward [B, T, 2, H, W]
//   channel_scale: C factors s_c, or empty for ones
//   returns loss [T-1], mass = sum(M) [T-1], and when return_maps confidence and target
//   [B, T-1, 1, H, W] (else empty tensors). Differentiable in logits.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> temporal_consistency(
    const at::Tensor& logits, const at::Tensor& images, const at::Tensor& flows,
    const std::optional<at::Tensor>& flows_backward, at::ArrayRef<double> channel_scale, double alpha,
    std::string_view confidence, bool soft_target, bool normalise, bool return_maps);

// Gradient of temporal_consistency's loss with respect to logits, given its [T-1] incoming gradient.
at::Tensor temporal_consistency_backward(const at::Tensor& grad_loss, const at::Tensor& mass, const at::Tensor& logits,
                                         const at::Tensor& images, const at::Tensor& flows,
                                         const std::optional<at::Tensor>& flows_backward,
                                         at::ArrayRef<double> channel_scale, double alpha, std::string_view confidence,
                                         bool soft_target, bool normalise);

// Local (decoder) prototypes of each pair: m = 1[P_t > thr_t] * 1[P~ > thr_t] at full resolution,
// nearest-resampled to the features' size, where P~ is the warped previous prediction as the
// consistency term uses it: W(P_{t-1}) itself, or its binarisation 1[W(P_{t-1}) > 0.5] when hard_target
// (the reference's hard warped target); v_prev = MAP(W(F_{t-1}), m), v_cur = MAP(F_t, m)
// with MAP(F, m) = sum F m / max(sum m, 1e-6). The flow is resized to the features' size (bilinear,
// align_corners, components scaled by the size ratio when rescale_flow).
//   probs [B, T, 1, H, W] in [0, 1]; features [B, T, C, h, w]; flows [B, T, 2, H, W]; threshold [T-1]
//   returns v_prev, v_cur [B, T-1, C] and mass = sum m [B, T-1]. Differentiable in features.
std::tuple<at::Tensor, at::Tensor, at::Tensor> local_prototypes(const at::Tensor& probs, const at::Tensor& features,
                                                                const at::Tensor& flows, const at::Tensor& threshold,
                                                                bool rescale_flow, bool hard_target = false);
at::Tensor local_prototypes_backward(const at::Tensor& grad_prev, const at::Tensor& grad_cur, const at::Tensor& mass,
                                     const at::Tensor& probs, const at::Tensor& features, const at::Tensor& flows,
                                     const at::Tensor& threshold, bool rescale_flow, bool hard_target = false);

// Global (bottleneck) prototypes of each pair: u_prev = MAP(G_{t-1}, bg_{t-1}), u_cur = MAP(G_t, bg_t)
// with bg_x = 1 - 1[P_x > thr_t] nearest-resampled to the features' size.
//   probs [B, T, 1, H, W]; features [B, T, C, h, w]; threshold [T-1]
//   returns u_prev, u_cur [B, T-1, C], mass_prev, mass_cur [B, T-1]. Differentiable in features.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> global_prototypes(const at::Tensor& probs,
                                                                             const at::Tensor& features,
                                                                             const at::Tensor& threshold);
at::Tensor global_prototypes_backward(const at::Tensor& grad_prev, const at::Tensor& grad_cur,
                                      const at::Tensor& mass_prev, const at::Tensor& mass_cur, const at::Tensor& probs,
                                      const at::Tensor& features, const at::Tensor& threshold);

// Per pair t: mean_b of sort(probs[b, t].flatten())[floor(q N)] (N = H W, the index clamped to N - 1):
// an order statistic, no interpolation, as the reference code indexes its sorted probabilities. Found
// by batched selection on the device (no sort, no host sync). probs [B, T, 1, H, W] -> [T-1].
at::Tensor foreground_threshold(const at::Tensor& probs, double q);

// 0.5 BCE(z, y) + 1 - mean_n softDice_n(sigmoid(z), y); a sample n is one trailing [C, H, W] block.
//   logits, target [..., C, H, W]; returns the scalar loss and stats [N, 2] = (sum p y, sum p + sum y).
std::tuple<at::Tensor, at::Tensor> bce_dice(const at::Tensor& logits, const at::Tensor& target, double smooth);
at::Tensor bce_dice_backward(const at::Tensor& grad_loss, const at::Tensor& stats, const at::Tensor& logits,
                             const at::Tensor& target, double smooth);

// tau^2 mean((sigmoid(s / tau) - sigmoid(t / tau))^2), differentiable in the student logits only.
at::Tensor kd_loss(const at::Tensor& student, const at::Tensor& teacher, double tau);
at::Tensor kd_loss_backward(const at::Tensor& grad_loss, const at::Tensor& student, const at::Tensor& teacher,
                            double tau);

// Exact Euclidean distance from each element to the nearest nonzero element of `mask`, over its last
// k = spacing.size() (1-3) dimensions; the leading dimensions are a batch. `spacing` is the physical size
// of one step along each spatial dimension (anisotropic voxels). Returns float64 of mask's shape: 0 on the
// object, +inf where a sample has no object. CPU only; not differentiable.
at::Tensor edt(const at::Tensor& mask, at::ArrayRef<double> spacing);

// Target-guided feature distillation on one encoder level (docs/v2i.md). With N the normalisation
// ("pixel_ln": each pixel standardised over channels; "pearson": each channel over H*W; "none"),
// e(p) = mean_c (N(S) - N(T))^2 (times the teacher's spatial attention H*W*softmax_p(mean_c|T| / 0.5)
// when attn_weight), per sample L_fg = sum M e / max(sum M, 1e-6) (0 when sum M < 1e-6) and
// L_bg = sum (1-M) e / max(sum (1-M), 1e-6); returns mean_b (alpha_fg L_fg + alpha_bg L_bg).
//   student, teacher [B, C, H, W] (any float dtype; computed in float32 or float64), mask [B, 1, H, W] in [0, 1]
// Differentiable in the student only.
at::Tensor tfd_loss(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& mask, double alpha_fg,
                    double alpha_bg, std::string_view norm, bool attn_weight);
at::Tensor tfd_loss_backward(const at::Tensor& grad_loss, const at::Tensor& student, const at::Tensor& teacher,
                             const at::Tensor& mask, double alpha_fg, double alpha_bg, std::string_view norm,
                             bool attn_weight);

// Multi-frame multi-scale deformable attention (docs/v2i.md, the clip teacher's global branch): the
// Deformable-DETR sampler over M = T * L value maps (every frame at every level).
//   value [B, S, H_a, D] with S = sum_m h_m w_m, the maps flattened row-major one after the other
//   spatial_shapes [h_0, w_0, ..., h_{M-1}, w_{M-1}]
//   sampling_locations [B, Q, H_a, M, K, 2] normalised (x, y): pixel x = u * w_m - 0.5 (align_corners=False)
//   attention_weights [B, Q, H_a, M, K]
//   returns [B, Q, H_a * D] = sum_{m,k} a * bilinear(value_m, loc) with zero padding.
// Differentiable in value, sampling_locations and attention_weights.
at::Tensor msda_st(const at::Tensor& value, at::IntArrayRef spatial_shapes, const at::Tensor& sampling_locations,
                   const at::Tensor& attention_weights);
std::tuple<at::Tensor, at::Tensor, at::Tensor> msda_st_backward(const at::Tensor& grad_out, const at::Tensor& value,
                                                                at::IntArrayRef spatial_shapes,
                                                                const at::Tensor& sampling_locations,
                                                                const at::Tensor& attention_weights);

// Dense optical flow of Farnebäck (2003) as OpenCV's calcOpticalFlowFarneback computes it
// (polynomial expansion, coarse-to-fine pyramid, box or Gaussian window), then an optional median
// filter of each flow component.
//   prev, next  [N, 1, H, W]  float32/float64/uint8 grey levels on OpenCV's 0..255 scale; H, W >= 32
//   returns     [N, 2, H, W]  float32; channel 0 = dx, channel 1 = dy, in pixels, with
//                             prev(y, x) ≈ next(y + dy, x + dx)
//   median      0/1 (off), 3 or 5: kernel size of the median filter (edge pixels replicated)
// Not differentiable. NaN/Inf pixels are rejected (one device sync on CUDA).
at::Tensor farneback(const at::Tensor& prev, const at::Tensor& next, double pyr_scale = 0.5, int64_t levels = 3,
                     int64_t winsize = 15, int64_t iterations = 3, int64_t poly_n = 5, double poly_sigma = 1.2,
                     bool gaussian_window = false, int64_t median = 3);

}  // namespace dtc
