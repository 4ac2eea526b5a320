#include "ops/losses.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>

#include "dtc/ops.h"

namespace dtc {
namespace ops {
namespace {

void check_float(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": ", name,
                   " must be float32 or float64, got ", t.scalar_type(),
                   " (cast half-precision network outputs to float32 for the loss)");
}

void check_window(const char* op, const char* name, const at::Tensor& t, int64_t channels, bool temporal) {
  TORCH_CHECK_VALUE(t.dim() == 5, op, ": ", name, " must be a window batch [B, T, C, H, W], got shape ", t.sizes());
  check_float(op, name, t);
  if (temporal) {
    TORCH_CHECK_VALUE(t.size(1) >= 2, op, ": ", name, " must hold T >= 2 frames per window for the temporal terms, got T = ",
                      t.size(1), " (shape ", t.sizes(), ")");
  }
  if (channels > 0) {
    TORCH_CHECK_VALUE(t.size(2) == channels, op, ": ", name, " must have ", channels, " channel(s) [B, T, ", channels,
                      ", H, W], got shape ", t.sizes());
  }
  TORCH_CHECK_VALUE(t.size(3) > 0 && t.size(4) > 0, op, ": ", name, " must have non-zero height and width, got shape ",
                    t.sizes());
}

void check_same(const char* op, const char* name, const at::Tensor& t, const char* ref_name, const at::Tensor& ref,
                bool spatial) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": ", name, " must be on ", ref_name, "'s device ", ref.device(),
                    ", got ", t.device());
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), op, ": ", name, " must have ", ref_name, "'s dtype ",
                   ref.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.size(0) == ref.size(0) && t.size(1) == ref.size(1), op, ": ", name, " must have ", ref_name,
                    "'s [B, T] = [", ref.size(0), ", ", ref.size(1), "], got shape ", t.sizes());
  if (spatial) {
    TORCH_CHECK_VALUE(t.size(3) == ref.size(3) && t.size(4) == ref.size(4), op, ": ", name, " must have ", ref_name,
                      "'s spatial size [", ref.size(3), ", ", ref.size(4), "], got shape ", t.sizes());
  }
}

// On the CPU the range check is one cheap pass; on CUDA it would cost a host sync every step, so
// there the Python API checks (dtc.losses, check=True) and the raw op trusts its caller.
void check_probabilities(const char* op, const char* name, const at::Tensor& t) {
  if (!t.device().is_cpu() || t.numel() == 0) return;
  const auto [lo, hi] = at::aminmax(t);
  const double lo_v = lo.item<double>(), hi_v = hi.item<double>();
  TORCH_CHECK_VALUE(lo_v >= 0.0 && hi_v <= 1.0, op, ": ", name, " must hold probabilities in [0, 1], got values in [",
                    lo_v, ", ", hi_v, "]");
}

}  // namespace

math::Residual check_consistency_args(const at::Tensor& logits, const at::Tensor& images, const at::Tensor& flows,
                                      const std::optional<at::Tensor>& flows_backward,
                                      at::ArrayRef<double> channel_scale, double alpha, std::string_view confidence) {
  const char* op = "temporal_consistency";
  math::Residual residual;
  if (confidence == "abs_sum") {
    residual = math::Residual::AbsSum;
  } else if (confidence == "mean_abs") {
    residual = math::Residual::MeanAbs;
  } else {
    TORCH_CHECK_VALUE(false, op, ": confidence must be 'abs_sum' or 'mean_abs', got '", confidence, "'");
  }
  check_window(op, "logits", logits, 1, true);
  check_window(op, "images", images, -1, true);
  check_window(op, "flows", flows, 2, true);
  check_same(op, "images", images, "logits", logits, true);
  check_same(op, "flows", flows, "logits", logits, true);
  if (flows_backward.has_value() && flows_backward->defined()) {
    check_window(op, "flows_backward", *flows_backward, 2, true);
    check_same(op, "flows_backward", *flows_backward, "logits", logits, true);
  }
  TORCH_CHECK_VALUE(images.size(2) >= 1 && images.size(2) <= math::kMaxImageChannels, op,
                    ": images must have 1 to ", math::kMaxImageChannels, " channels, got ", images.size(2));
  TORCH_CHECK_VALUE(channel_scale.empty() || static_cast<int64_t>(channel_scale.size()) == images.size(2), op,
                    ": channel_scale must be empty or have one entry per image channel (", images.size(2), "), got ",
                    channel_scale.size());
  TORCH_CHECK_VALUE(alpha >= 0, op, ": alpha must be >= 0, got ", alpha);
  return residual;
}

ConsistencyInputs consistency_inputs(const at::Tensor& logits, const at::Tensor& images, const at::Tensor& flows,
                                     const std::optional<at::Tensor>& flows_backward,
                                     at::ArrayRef<double> channel_scale, double alpha, std::string_view confidence) {
  ConsistencyInputs in;
  in.residual = check_consistency_args(logits, images, flows, flows_backward, channel_scale, alpha, confidence);
  in.logits = logits.contiguous();
  in.images = images.contiguous();
  in.flows = flows.contiguous();
  if (flows_backward.has_value() && flows_backward->defined()) in.flows_backward = flows_backward->contiguous();
  return in;
}

void check_prototype_args(const char* op, const at::Tensor& probs, const at::Tensor& features, const at::Tensor* flows,
                          const at::Tensor& threshold) {
  check_window(op, "probs", probs, 1, true);
  check_window(op, "features", features, -1, true);
  check_same(op, "features", features, "probs", probs, false);
  if (flows != nullptr) {
    check_window(op, "flows", *flows, 2, true);
    check_same(op, "flows", *flows, "probs", probs, true);
  }
  TORCH_CHECK_VALUE(threshold.dim() == 1 && threshold.size(0) == probs.size(1) - 1, op,
                    ": threshold must have shape [T-1] = [", probs.size(1) - 1, "] (one per pair), got ",
                    threshold.sizes());
  TORCH_CHECK_VALUE(threshold.device() == probs.device(), op, ": threshold must be on probs' device ", probs.device(),
                    ", got ", threshold.device());
  TORCH_CHECK_TYPE(threshold.scalar_type() == probs.scalar_type(), op, ": threshold must have probs' dtype ",
                   probs.scalar_type(), ", got ", threshold.scalar_type());
  check_probabilities(op, "probs", probs);
}

void check_pointwise_loss_args(const char* op, const char* a_name, const at::Tensor& a, const char* b_name,
                               const at::Tensor& b, bool b_is_prob) {
  TORCH_CHECK_VALUE(a.dim() >= 3, op, ": ", a_name, " must be [..., C, H, W], got shape ", a.sizes());
  check_float(op, a_name, a);
  TORCH_CHECK_VALUE(b.sizes() == a.sizes(), op, ": ", b_name, " must have ", a_name, "'s shape ", a.sizes(), ", got ",
                    b.sizes());
  TORCH_CHECK_VALUE(b.device() == a.device(), op, ": ", b_name, " must be on ", a_name, "'s device ", a.device(),
                    ", got ", b.device());
  TORCH_CHECK_TYPE(b.scalar_type() == a.scalar_type(), op, ": ", b_name, " must have ", a_name, "'s dtype ",
                   a.scalar_type(), ", got ", b.scalar_type());
  if (b_is_prob) check_probabilities(op, b_name, b);
}

void check_saved(const char* op, const char* name, const at::Tensor& t, at::IntArrayRef shape, const at::Tensor& like) {
  TORCH_CHECK_VALUE(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == like.scalar_type() && t.device() == like.device(), op, ": ", name,
                   " must have dtype ", like.scalar_type(), " on ", like.device(), ", got ", t.scalar_type(), " on ",
                   t.device());
}

FeatureFlow feature_flow(const at::Tensor& flows, int64_t h, int64_t w, bool rescale) {
  const int64_t B = flows.size(0), T = flows.size(1), H = flows.size(3), W = flows.size(4);
  if (h == H && w == W) return {flows.contiguous(), T, 0};
  at::Tensor used = flows.narrow(1, 1, T - 1).reshape({B * (T - 1), 2, H, W});
  at::Tensor resized = dtc::resize_flow(used, {h, w}, /*align_corners=*/true, rescale);
  return {resized.reshape({B, T - 1, 2, h, w}).contiguous(), T - 1, 1};
}

void check_local_prototypes_backward_args(const at::Tensor& grad_prev, const at::Tensor& grad_cur,
                                          const at::Tensor& mass, const at::Tensor& probs,
                                          const at::Tensor& features, const at::Tensor& flows,
                                          const at::Tensor& threshold) {
  const char* op = "local_prototypes_backward";
  check_prototype_args(op, probs, features, &flows, threshold);
  const int64_t B = probs.size(0), Tn = probs.size(1), C = features.size(2);
  check_saved(op, "grad_prev", grad_prev, {B, Tn - 1, C}, features);
  check_saved(op, "grad_cur", grad_cur, {B, Tn - 1, C}, features);
  check_saved(op, "mass", mass, {B, Tn - 1}, features);
}

void check_global_prototypes_backward_args(const at::Tensor& grad_prev, const at::Tensor& grad_cur,
                                           const at::Tensor& mass_prev, const at::Tensor& mass_cur,
                                           const at::Tensor& probs, const at::Tensor& features,
                                           const at::Tensor& threshold) {
  const char* op = "global_prototypes_backward";
  check_prototype_args(op, probs, features, nullptr, threshold);
  const int64_t B = probs.size(0), Tn = probs.size(1), C = features.size(2);
  check_saved(op, "grad_prev", grad_prev, {B, Tn - 1, C}, features);
  check_saved(op, "grad_cur", grad_cur, {B, Tn - 1, C}, features);
  check_saved(op, "mass_prev", mass_prev, {B, Tn - 1}, features);
  check_saved(op, "mass_cur", mass_cur, {B, Tn - 1}, features);
}

}  // namespace ops

namespace {
template <typename Sig>
c10::TypedOperatorHandle<Sig> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}
inline c10::string_view sv(std::string_view s) { return c10::string_view(s.data(), s.size()); }
}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> temporal_consistency(
    const at::Tensor& logits, const at::Tensor& images, const at::Tensor& flows,
    const std::optional<at::Tensor>& flows_backward, at::ArrayRef<double> channel_scale, double alpha,
    std::string_view confidence, bool soft_target, bool normalise, bool return_maps) {
  static auto op = find_op<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, at::ArrayRef<double>,
      double, c10::string_view, bool, bool, bool)>("dtc::temporal_consistency");
  return op.call(logits, images, flows, flows_backward, channel_scale, alpha, sv(confidence), soft_target, normalise,
                 return_maps);
}

at::Tensor temporal_consistency_backward(const at::Tensor& grad_loss, const at::Tensor& mass, const at::Tensor& logits,
                                         const at::Tensor& images, const at::Tensor& flows,
                                         const std::optional<at::Tensor>& flows_backward,
                                         at::ArrayRef<double> channel_scale, double alpha, std::string_view confidence,
                                         bool soft_target, bool normalise) {
  static auto op = find_op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                      const at::Tensor&, const std::optional<at::Tensor>&, at::ArrayRef<double>, double,
                                      c10::string_view, bool, bool)>("dtc::temporal_consistency_backward");
  return op.call(grad_loss, mass, logits, images, flows, flows_backward, channel_scale, alpha, sv(confidence),
                 soft_target, normalise);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> local_prototypes(const at::Tensor& probs, const at::Tensor& features,
                                                                const at::Tensor& flows, const at::Tensor& threshold,
                                                                bool rescale_flow, bool hard_target) {
  static auto op = find_op<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, bool, bool)>("dtc::local_prototypes");
  return op.call(probs, features, flows, threshold, rescale_flow, hard_target);
}

at::Tensor local_prototypes_backward(const at::Tensor& grad_prev, const at::Tensor& grad_cur, const at::Tensor& mass,
                                     const at::Tensor& probs, const at::Tensor& features, const at::Tensor& flows,
                                     const at::Tensor& threshold, bool rescale_flow, bool hard_target) {
  static auto op = find_op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                      const at::Tensor&, const at::Tensor&, const at::Tensor&, bool, bool)>(
      "dtc::local_prototypes_backward");
  return op.call(grad_prev, grad_cur, mass, probs, features, flows, threshold, rescale_flow, hard_target);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> global_prototypes(const at::Tensor& probs,
                                                                             const at::Tensor& features,
                                                                             const at::Tensor& threshold) {
  static auto op = find_op<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
      const at::Tensor&, const at::Tensor&, const at::Tensor&)>("dtc::global_prototypes");
  return op.call(probs, features, threshold);
}

at::Tensor global_prototypes_backward(const at::Tensor& grad_prev, const at::Tensor& grad_cur,
                                      const at::Tensor& mass_prev, const at::Tensor& mass_cur, const at::Tensor& probs,
                                      const at::Tensor& features, const at::Tensor& threshold) {
  static auto op = find_op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                      const at::Tensor&, const at::Tensor&, const at::Tensor&)>(
      "dtc::global_prototypes_backward");
  return op.call(grad_prev, grad_cur, mass_prev, mass_cur, probs, features, threshold);
}

at::Tensor foreground_threshold(const at::Tensor& probs, double q) {
  TORCH_CHECK_VALUE(probs.dim() == 5 && probs.size(2) == 1, "foreground_threshold: probs must be [B, T, 1, H, W], got ",
                    probs.sizes());
  TORCH_CHECK_VALUE(probs.size(1) >= 2, "foreground_threshold: probs must hold T >= 2 frames, got T = ", probs.size(1));
  TORCH_CHECK_VALUE(q >= 0 && q <= 1, "foreground_threshold: q must lie in [0, 1], got ", q);
  const int64_t n = probs.size(3) * probs.size(4);
  TORCH_CHECK_VALUE(n > 0 && probs.size(0) > 0, "foreground_threshold: probs must not be empty, got ", probs.sizes());
  // The reference indexes each sample's ascending sort at int(q * N) (0-based; no interpolation, unlike
  // torch.quantile, which would put the threshold between two order statistics). kthvalue selects that
  // order statistic in O(n) per row on the device, without a host round trip. q = 1 would index one
  // past the end: it is clamped to the largest value.
  const at::Tensor cur = probs.detach().narrow(1, 1, probs.size(1) - 1).reshape({probs.size(0), probs.size(1) - 1, n});
  const int64_t index = std::min<int64_t>(static_cast<int64_t>(std::floor(q * static_cast<double>(n))), n - 1);
  return std::get<0>(at::kthvalue(cur, index + 1, 2)).mean(0);
}

std::tuple<at::Tensor, at::Tensor> bce_dice(const at::Tensor& logits, const at::Tensor& target, double smooth) {
  static auto op = find_op<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, double)>("dtc::bce_dice");
  return op.call(logits, target, smooth);
}

at::Tensor bce_dice_backward(const at::Tensor& grad_loss, const at::Tensor& stats, const at::Tensor& logits,
                             const at::Tensor& target, double smooth) {
  static auto op = find_op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, double)>(
      "dtc::bce_dice_backward");
  return op.call(grad_loss, stats, logits, target, smooth);
}

at::Tensor kd_loss(const at::Tensor& student, const at::Tensor& teacher, double tau) {
  static auto op = find_op<at::Tensor(const at::Tensor&, const at::Tensor&, double)>("dtc::kd_loss");
  return op.call(student, teacher, tau);
}

at::Tensor kd_loss_backward(const at::Tensor& grad_loss, const at::Tensor& student, const at::Tensor& teacher,
                            double tau) {
  static auto op = find_op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, double)>(
      "dtc::kd_loss_backward");
  return op.call(grad_loss, student, teacher, tau);
}

}  // namespace dtc
