// Autograd of the DTC loss ops, registered in C++ like dtc::warp. Each backward is an op of its own
// that recomputes what it needs from the saved inputs in one pass (no per-pixel intermediates are
// kept between forward and backward); flows, images, probabilities, thresholds, targets and the
// teacher are constants and get no gradient.
#include <torch/autograd.h>
#include <torch/library.h>

#include <utility>
#include <vector>

#include "dtc/ops.h"

namespace dtc::ops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor or_zeros(const at::Tensor& grad, const at::Tensor& like) {
  return grad.defined() ? grad : at::zeros_like(like);
}

// The prototype ops' two outputs per frame pair, [B, T-1, C] each; a branch of the loss may use only
// one, and autograd then hands the other over undefined.
std::pair<at::Tensor, at::Tensor> pair_grads(const variable_list& grads, const at::Tensor& features) {
  const at::Tensor zeros = grads[0].defined() && grads[1].defined()
                               ? at::Tensor()
                               : at::zeros({features.size(0), features.size(1) - 1, features.size(2)}, features.options());
  return {grads[0].defined() ? grads[0] : zeros, grads[1].defined() ? grads[1] : zeros};
}

std::string_view to_std(c10::string_view s) { return std::string_view(s.data(), s.size()); }

class ConsistencyFunction : public torch::autograd::Function<ConsistencyFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& images,
                               const at::Tensor& flows, const std::optional<at::Tensor>& flows_backward,
                               std::vector<double> channel_scale, double alpha, c10::string_view confidence,
                               bool soft_target, bool normalise, bool return_maps) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [loss, mass, conf, target] = dtc::temporal_consistency(logits, images, flows, flows_backward, channel_scale,
                                                                alpha, to_std(confidence), soft_target, normalise,
                                                                return_maps);
    const at::Tensor back = flows_backward.has_value() ? *flows_backward : at::Tensor();
    ctx->save_for_backward({logits, images, flows, back, mass});
    ctx->saved_data["channel_scale"] = channel_scale;
    ctx->saved_data["alpha"] = alpha;
    ctx->saved_data["confidence"] = std::string(confidence);
    ctx->saved_data["soft_target"] = soft_target;
    ctx->saved_data["normalise"] = normalise;
    ctx->mark_non_differentiable({mass, conf, target});
    return {loss, mass, conf, target};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& logits = saved[0];
    const std::optional<at::Tensor> back = saved[3].defined() ? std::optional<at::Tensor>(saved[3]) : std::nullopt;
    const auto scale = ctx->saved_data["channel_scale"].toDoubleVector();
    at::Tensor grad_logits;
    if (ctx->needs_input_grad(0)) {
      grad_logits = dtc::temporal_consistency_backward(
          or_zeros(grads[0], saved[4]), saved[4], logits, saved[1], saved[2], back, scale,
          ctx->saved_data["alpha"].toDouble(), ctx->saved_data["confidence"].toStringRef(),
          ctx->saved_data["soft_target"].toBool(), ctx->saved_data["normalise"].toBool());
    }
    return {grad_logits, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> consistency_autograd(
    const at::Tensor& logits, const at::Tensor& images, const at::Tensor& flows,
    const std::optional<at::Tensor>& flows_backward, at::ArrayRef<double> channel_scale, double alpha,
    c10::string_view confidence, bool soft_target, bool normalise, bool return_maps) {
  auto out = ConsistencyFunction::apply(logits, images, flows, flows_backward, channel_scale.vec(), alpha, confidence,
                                        soft_target, normalise, return_maps);
  return {out[0], out[1], out[2], out[3]};
}

class LocalPrototypesFunction : public torch::autograd::Function<LocalPrototypesFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& probs, const at::Tensor& features,
                               const at::Tensor& flows, const at::Tensor& threshold, bool rescale_flow,
                               bool hard_target) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [v_prev, v_cur, mass] = dtc::local_prototypes(probs, features, flows, threshold, rescale_flow, hard_target);
    ctx->save_for_backward({probs, features, flows, threshold, mass});
    ctx->saved_data["rescale_flow"] = rescale_flow;
    ctx->saved_data["hard_target"] = hard_target;
    ctx->mark_non_differentiable({mass});
    return {v_prev, v_cur, mass};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    at::Tensor grad_features;
    if (ctx->needs_input_grad(1)) {
      const auto [grad_prev, grad_cur] = pair_grads(grads, s[1]);
      grad_features = dtc::local_prototypes_backward(grad_prev, grad_cur, s[4], s[0], s[1], s[2], s[3],
                                                     ctx->saved_data["rescale_flow"].toBool(),
                                                     ctx->saved_data["hard_target"].toBool());
    }
    return {at::Tensor(), grad_features, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> local_prototypes_autograd(const at::Tensor& probs,
                                                                         const at::Tensor& features,
                                                                         const at::Tensor& flows,
                                                                         const at::Tensor& threshold,
                                                                         bool rescale_flow, bool hard_target) {
  auto out = LocalPrototypesFunction::apply(probs, features, flows, threshold, rescale_flow, hard_target);
  return {out[0], out[1], out[2]};
}

class GlobalPrototypesFunction : public torch::autograd::Function<GlobalPrototypesFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& probs, const at::Tensor& features,
                               const at::Tensor& threshold) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [u_prev, u_cur, m_prev, m_cur] = dtc::global_prototypes(probs, features, threshold);
    ctx->save_for_backward({probs, features, threshold, m_prev, m_cur});
    ctx->mark_non_differentiable({m_prev, m_cur});
    return {u_prev, u_cur, m_prev, m_cur};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    at::Tensor grad_features;
    if (ctx->needs_input_grad(1)) {
      const auto [grad_prev, grad_cur] = pair_grads(grads, s[1]);
      grad_features = dtc::global_prototypes_backward(grad_prev, grad_cur, s[3], s[4], s[0], s[1], s[2]);
    }
    return {at::Tensor(), grad_features, at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> global_prototypes_autograd(const at::Tensor& probs,
                                                                                      const at::Tensor& features,
                                                                                      const at::Tensor& threshold) {
  auto out = GlobalPrototypesFunction::apply(probs, features, threshold);
  return {out[0], out[1], out[2], out[3]};
}

class BceDiceFunction : public torch::autograd::Function<BceDiceFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& target, double smooth) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [loss, stats] = dtc::bce_dice(logits, target, smooth);
    ctx->save_for_backward({logits, target, stats});
    ctx->saved_data["smooth"] = smooth;
    ctx->mark_non_differentiable({stats});
    return {loss, stats};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    at::Tensor grad_logits;
    if (ctx->needs_input_grad(0)) {
      grad_logits = dtc::bce_dice_backward(or_zeros(grads[0], at::zeros({}, s[0].options())), s[2], s[0], s[1],
                                           ctx->saved_data["smooth"].toDouble());
    }
    return {grad_logits, at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> bce_dice_autograd(const at::Tensor& logits, const at::Tensor& target,
                                                     double smooth) {
  auto out = BceDiceFunction::apply(logits, target, smooth);
  return {out[0], out[1]};
}

class KDFunction : public torch::autograd::Function<KDFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& student, const at::Tensor& teacher, double tau) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({student, teacher});
    ctx->saved_data["tau"] = tau;
    return dtc::kd_loss(student, teacher, tau);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    at::Tensor grad_student;
    if (ctx->needs_input_grad(0)) {
      grad_student = dtc::kd_loss_backward(grads[0], s[0], s[1], ctx->saved_data["tau"].toDouble());
    }
    return {grad_student, at::Tensor(), at::Tensor()};
  }
};

at::Tensor kd_loss_autograd(const at::Tensor& student, const at::Tensor& teacher, double tau) {
  return KDFunction::apply(student, teacher, tau);
}

}  // namespace

TORCH_LIBRARY_IMPL(dtc, Autograd, m) {
  m.impl("temporal_consistency", TORCH_FN(consistency_autograd));
  m.impl("local_prototypes", TORCH_FN(local_prototypes_autograd));
  m.impl("global_prototypes", TORCH_FN(global_prototypes_autograd));
  m.impl("bce_dice", TORCH_FN(bce_dice_autograd));
  m.impl("kd_loss", TORCH_FN(kd_loss_autograd));
}

}  // namespace dtc::ops
