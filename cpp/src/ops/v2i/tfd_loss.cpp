// dtc::tfd_loss (docs/v2i.md): for one encoder level, per sample
//   e(p)  = mean_c (N(S) - N(T))^2                         [x a(p) = P softmax_p(mean_c |T| / 0.5) with attn_weight]
//   L_fg  = sum_p M e / max(sum M, eps)   (0 when sum M < eps),   L_bg = sum_p (1 - M) e / max(sum (1 - M), eps)
//   loss  = mean_b (alpha_fg L_fg + alpha_bg L_bg)
// The backends compute e (and mean_c |T|) pixel by pixel and pull the per-pixel weight
//   w(p) = alpha_fg M / max(sum M, eps) [sum M >= eps] + alpha_bg (1 - M) / max(sum (1 - M), eps)
// back through N; the sums over pixels are ATen reductions here, the same on every device. Pearson
// normalisation (each channel over the pixels) standardises with ATen and reuses the "none" passes.
// The teacher is a stop-gradient target: no gradient.
#include "ops/v2i/tfd_loss.h"

#include <ATen/OpMathType.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "ops/common/tfd_math.h"

namespace dtc::ops::tfd {

namespace {
constexpr double kEps = 1e-6;
constexpr double kAttnTemperature = 0.5;

at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

at::Tensor flat(const at::Tensor& x) { return x.reshape({x.size(0), x.size(1), -1}).contiguous(); }

// Each channel of each sample standardised over its pixels (biased variance + 1e-5); returns (N(x), rstd).
std::pair<at::Tensor, at::Tensor> pearson(const at::Tensor& x) {
  const auto [var, mean] = at::var_mean(x, {2}, /*correction=*/0, /*keepdim=*/true);
  const at::Tensor rstd = at::rsqrt(var + math::tfd::kLayerNormEps);
  return {(x - mean) * rstd, rstd};
}

struct Pieces {
  at::Tensor s, t, m;          // [B, C, P] (acc dtype for pearson), [B, C, P], [B, P] acc dtype
  at::Tensor e, attn;          // [B, P]; attn undefined without attn_weight
  at::Tensor s_rstd;           // pearson only: [B, C, 1]
  bool normalise_pixels;
};

Pieces pixel_errors(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& mask, Norm norm,
                    bool attn_weight, ErrorsFn errors) {
  const auto acc = acc_type(student.scalar_type());
  Pieces p;
  p.s = flat(student);
  p.t = flat(teacher);
  p.m = mask.reshape({mask.size(0), -1}).to(acc).contiguous();
  at::Tensor raw_t = p.t;
  if (norm == Norm::Pearson) {
    at::Tensor ns;
    std::tie(ns, p.s_rstd) = pearson(p.s.to(acc));
    p.s = ns.contiguous();
    p.t = pearson(p.t.to(acc)).first.contiguous();
  }
  p.normalise_pixels = norm == Norm::PixelLN;
  const int64_t B = p.s.size(0), P = p.s.size(2);
  p.e = at::empty({B, P}, p.s.options().dtype(acc));
  at::Tensor t_abs;
  if (attn_weight) t_abs = at::empty({B, P}, p.s.options().dtype(acc));
  errors(p.s, p.t, p.normalise_pixels, p.e, t_abs);
  if (attn_weight) {
    if (norm == Norm::Pearson) t_abs = raw_t.to(acc).abs().mean(1);  // the raw teacher, not its standardisation
    p.attn = at::softmax(t_abs / kAttnTemperature, 1) * double(P);
  }
  return p;
}

// (w_fg, w_bg) [B, 1] so that w(p) = w_fg M + w_bg (1 - M), and the per-sample loss.
std::tuple<at::Tensor, at::Tensor> weights(const at::Tensor& m, double alpha_fg, double alpha_bg) {
  const at::Tensor fg = m.sum(1, true), bg = (1 - m).sum(1, true);
  const at::Tensor w_fg = at::where(fg >= kEps, alpha_fg / fg.clamp_min(kEps), at::zeros_like(fg));
  const at::Tensor w_bg = alpha_bg / bg.clamp_min(kEps);
  return {w_fg, w_bg};
}

}  // namespace

Norm parse_norm(std::string_view norm) {
  if (norm == "pixel_ln") return Norm::PixelLN;
  if (norm == "pearson") return Norm::Pearson;
  if (norm == "none") return Norm::None;
  TORCH_CHECK_VALUE(false, "tfd_loss: norm must be 'pixel_ln', 'pearson' or 'none', got '", std::string(norm), "'");
}

void check(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& mask, double alpha_fg,
           double alpha_bg) {
  TORCH_CHECK_VALUE(student.dim() == 4, "tfd_loss: student must be [B, C, H, W] features, got shape ", student.sizes());
  TORCH_CHECK_VALUE(teacher.sizes() == student.sizes(), "tfd_loss: teacher must have the student's shape ",
                    student.sizes(), " (adapt the student's channels first), got ", teacher.sizes());
  TORCH_CHECK_VALUE(student.size(0) > 0 && student.size(1) > 0 && student.size(2) > 0 && student.size(3) > 0,
                    "tfd_loss: student must not be empty, got shape ", student.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(student.scalar_type()) && student.scalar_type() == teacher.scalar_type(),
                   "tfd_loss: student and teacher must be floating point of one dtype, got ", student.scalar_type(),
                   " and ", teacher.scalar_type());
  const bool mask_ok = (mask.dim() == 4 && mask.size(1) == 1 && mask.size(0) == student.size(0) &&
                        mask.size(2) == student.size(2) && mask.size(3) == student.size(3)) ||
                       (mask.dim() == 3 && mask.size(0) == student.size(0) && mask.size(1) == student.size(2) &&
                        mask.size(2) == student.size(3));
  TORCH_CHECK_VALUE(mask_ok, "tfd_loss: mask must be [B, 1, H, W] = [", student.size(0), ", 1, ", student.size(2), ", ",
                    student.size(3), "] (the level's size), got ", mask.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(mask.scalar_type()), "tfd_loss: mask must be floating point in [0, 1], got ",
                   mask.scalar_type());
  TORCH_CHECK_VALUE(student.device() == teacher.device() && student.device() == mask.device(),
                    "tfd_loss: student, teacher and mask must be on one device, got ", student.device(), ", ",
                    teacher.device(), ", ", mask.device());
  TORCH_CHECK_VALUE(alpha_fg >= 0 && alpha_bg >= 0, "tfd_loss: alpha_fg and alpha_bg must be >= 0, got ", alpha_fg,
                    " and ", alpha_bg);
  // One host sync: a 0..255 or NaN mask would otherwise give a finite, meaningless loss.
  const auto [lo, hi] = at::aminmax(mask);
  const double lo_v = lo.item<double>(), hi_v = hi.item<double>();
  TORCH_CHECK_VALUE(lo_v >= 0 && hi_v <= 1, "tfd_loss: mask values must lie in [0, 1] (a soft foreground mask), got ",
                    "range [", lo_v, ", ", hi_v, "]");
}

at::Tensor forward(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& mask, double alpha_fg,
                   double alpha_bg, std::string_view norm_name, bool attn_weight, ErrorsFn errors) {
  check(student, teacher, mask, alpha_fg, alpha_bg);
  const Norm norm = parse_norm(norm_name);
  Pieces p = pixel_errors(student, teacher, mask, norm, attn_weight, errors);
  const at::Tensor e = attn_weight ? p.e * p.attn : p.e;
  const auto [w_fg, w_bg] = weights(p.m, alpha_fg, alpha_bg);
  const at::Tensor per_sample = (w_fg * (p.m * e).sum(1, true) + w_bg * ((1 - p.m) * e).sum(1, true));
  return per_sample.mean();
}

at::Tensor backward(const at::Tensor& grad_loss, const at::Tensor& student, const at::Tensor& teacher,
                    const at::Tensor& mask, double alpha_fg, double alpha_bg, std::string_view norm_name,
                    bool attn_weight, ErrorsFn errors, GradFn grad) {
  check(student, teacher, mask, alpha_fg, alpha_bg);
  const Norm norm = parse_norm(norm_name);
  Pieces p = pixel_errors(student, teacher, mask, norm, attn_weight, errors);
  const int64_t B = p.s.size(0), C = p.s.size(1);
  const auto [w_fg, w_bg] = weights(p.m, alpha_fg, alpha_bg);
  at::Tensor k = (w_fg * p.m + w_bg * (1 - p.m)) * (grad_loss.to(p.m.scalar_type()) * (2.0 / double(C * B)));
  if (attn_weight) k = k * p.attn;  // the attention is the teacher's: a constant weight for the student
  k = k.contiguous();
  at::Tensor ds = at::empty(p.s.sizes(), p.s.options());
  grad(p.s, p.t, p.normalise_pixels, k, ds);
  if (norm == Norm::Pearson) {
    // back through the per-channel standardisation: rstd (dn - mean_p dn - N(s) mean_p(dn N(s)))
    ds = p.s_rstd * (ds - ds.mean(2, true) - p.s * (ds * p.s).mean(2, true));
  }
  return ds.to(student.scalar_type()).reshape(student.sizes());
}

}  // namespace dtc::ops::tfd

namespace dtc::ops {
namespace {

at::Tensor call_forward(const at::Tensor& s, const at::Tensor& t, const at::Tensor& m, double a_fg, double a_bg,
                        c10::string_view norm, bool attn) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("dtc::tfd_loss", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, double, double,
                                         c10::string_view, bool)>();
  return op.call(s, t, m, a_fg, a_bg, norm, attn);
}

at::Tensor call_backward(const at::Tensor& g, const at::Tensor& s, const at::Tensor& t, const at::Tensor& m,
                         double a_fg, double a_bg, c10::string_view norm, bool attn) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("dtc::tfd_loss_backward", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         double, double, c10::string_view, bool)>();
  return op.call(g, s, t, m, a_fg, a_bg, norm, attn);
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class TfdFunction : public torch::autograd::Function<TfdFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& student, const at::Tensor& teacher,
                            const at::Tensor& mask, double alpha_fg, double alpha_bg, c10::string_view norm,
                            bool attn_weight) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({student, teacher, mask});
    ctx->saved_data["alpha_fg"] = alpha_fg;
    ctx->saved_data["alpha_bg"] = alpha_bg;
    ctx->saved_data["norm"] = std::string(norm);
    ctx->saved_data["attn_weight"] = attn_weight;
    return call_forward(student, teacher, mask, alpha_fg, alpha_bg, norm, attn_weight);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto v = ctx->get_saved_variables();
    at::Tensor grad_student;
    if (ctx->needs_input_grad(0) && grads[0].defined()) {
      const std::string norm = ctx->saved_data["norm"].toStringRef();
      grad_student = call_backward(grads[0], v[0], v[1], v[2], ctx->saved_data["alpha_fg"].toDouble(),
                                   ctx->saved_data["alpha_bg"].toDouble(), norm,
                                   ctx->saved_data["attn_weight"].toBool());
    }
    // teacher and mask are targets: no gradient by design
    return {grad_student, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor tfd_autograd(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& mask, double alpha_fg,
                        double alpha_bg, c10::string_view norm, bool attn_weight) {
  return TfdFunction::apply(student, teacher, mask, alpha_fg, alpha_bg, norm, attn_weight);
}

}  // namespace

TORCH_LIBRARY_IMPL(dtc, Autograd, m) { m.impl("tfd_loss", TORCH_FN(tfd_autograd)); }

}  // namespace dtc::ops

namespace dtc {

at::Tensor tfd_loss(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& mask, double alpha_fg,
                    double alpha_bg, std::string_view norm, bool attn_weight) {
  return ops::call_forward(student, teacher, mask, alpha_fg, alpha_bg, c10::string_view(norm.data(), norm.size()),
                           attn_weight);
}

at::Tensor tfd_loss_backward(const at::Tensor& grad_loss, const at::Tensor& student, const at::Tensor& teacher,
                             const at::Tensor& mask, double alpha_fg, double alpha_bg, std::string_view norm,
                             bool attn_weight) {
  return ops::call_backward(grad_loss, student, teacher, mask, alpha_fg, alpha_bg,
                            c10::string_view(norm.data(), norm.size()), attn_weight);
}

}  // namespace dtc
