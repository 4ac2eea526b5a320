// CPU kernels of dtc::bce_dice and dtc::kd_loss: one pass over the logits per direction, per-sample
// sums in double, parallel over samples (forward) or elements (backward).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "ops/common/loss_math.h"
#include "ops/losses.h"

namespace dtc::ops {
namespace {

int64_t sample_size(const at::Tensor& t) { return t.size(-1) * t.size(-2) * t.size(-3); }

std::tuple<at::Tensor, at::Tensor> bce_dice_cpu(const at::Tensor& logits_in, const at::Tensor& target_in,
                                                double smooth) {
  check_pointwise_loss_args("bce_dice", "logits", logits_in, "target", target_in, /*b_is_prob=*/true);
  const at::Tensor z = logits_in.contiguous(), y = target_in.contiguous();
  const int64_t S = sample_size(z), N = S > 0 ? z.numel() / S : 0;
  TORCH_CHECK_VALUE(N > 0 && S > 0, "bce_dice: logits must not be empty, got shape ", z.sizes());
  at::Tensor loss = at::empty({}, z.options());
  at::Tensor stats = at::empty({N, 2}, z.options());
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "dtc::bce_dice (CPU)", [&] {
    const scalar_t* zp = z.const_data_ptr<scalar_t>();
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    std::vector<double> bce(N), inter(N), total(N);
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        double b = 0, i = 0, t = 0;
        for (int64_t k = n * S; k < (n + 1) * S; ++k) {
          const double zz = zp[k], yy = yp[k];
          const double p = math::sigmoid(zz);
          b += math::bce_with_logits(zz, yy);
          i += p * yy;
          t += p + yy;
        }
        bce[n] = b, inter[n] = i, total[n] = t;
      }
    });
    double bce_sum = 0, dice_sum = 0;
    scalar_t* st = stats.mutable_data_ptr<scalar_t>();
    for (int64_t n = 0; n < N; ++n) {
      bce_sum += bce[n];
      dice_sum += (2 * inter[n] + smooth) / (total[n] + smooth);
      st[2 * n] = scalar_t(inter[n]);
      st[2 * n + 1] = scalar_t(total[n]);
    }
    loss.fill_(0.5 * bce_sum / double(N * S) + 1.0 - dice_sum / double(N));
  });
  return {loss, stats};
}

at::Tensor bce_dice_backward_cpu(const at::Tensor& grad_in, const at::Tensor& stats_in, const at::Tensor& logits_in,
                                 const at::Tensor& target_in, double smooth) {
  check_pointwise_loss_args("bce_dice_backward", "logits", logits_in, "target", target_in, /*b_is_prob=*/false);
  const at::Tensor z = logits_in.contiguous(), y = target_in.contiguous(), stats = stats_in.contiguous();
  const int64_t S = sample_size(z), N = S > 0 ? z.numel() / S : 0;
  check_saved("bce_dice_backward", "grad_loss", grad_in, {}, z);
  check_saved("bce_dice_backward", "stats", stats, {N, 2}, z);
  at::Tensor grad = at::empty(z.sizes(), z.options());
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "dtc::bce_dice_backward (CPU)", [&] {
    const scalar_t* zp = z.const_data_ptr<scalar_t>();
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    const scalar_t* st = stats.const_data_ptr<scalar_t>();
    scalar_t* gp = grad.mutable_data_ptr<scalar_t>();
    const double g = grad_in.item<double>();
    const double bce_scale = 0.5 * g / double(N * S);
    at::parallel_for(0, N * S, 16384, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        const int64_t n = k / S;
        const double zz = zp[k], yy = yp[k], p = math::sigmoid(zz);
        const double num = 2 * double(st[2 * n]) + smooth, den = double(st[2 * n + 1]) + smooth;
        // d Dice_n / d p_k = (2 y_k den - num) / den^2; the loss carries -Dice_n / N.
        const double d_dice = (2 * yy * den - num) / (den * den);
        gp[k] = scalar_t(bce_scale * (p - yy) - g / double(N) * d_dice * p * (1 - p));
      }
    });
  });
  return grad;
}

at::Tensor kd_loss_cpu(const at::Tensor& s_in, const at::Tensor& t_in, double tau) {
  check_pointwise_loss_args("kd_loss", "student", s_in, "teacher", t_in, /*b_is_prob=*/false);
  TORCH_CHECK_VALUE(tau > 0, "kd_loss: tau must be > 0, got ", tau);
  const at::Tensor s = s_in.contiguous(), t = t_in.contiguous();
  const int64_t n = s.numel();
  at::Tensor loss = at::empty({}, s.options());
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "dtc::kd_loss (CPU)", [&] {
    const scalar_t* sp = s.const_data_ptr<scalar_t>();
    const scalar_t* tp = t.const_data_ptr<scalar_t>();
    // Per element in the input's precision (the float exp is several times cheaper than the double
    // one), sums in double: the float64-oracle tests hold at 1e-5 relative in fp32.
    const scalar_t inv_tau = scalar_t(1.0 / tau);
    const int64_t chunk = 65536, chunks = (n + chunk - 1) / chunk;
    std::vector<double> partial(chunks, 0.0);
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        double acc = 0;
        for (int64_t k = c * chunk; k < std::min(n, (c + 1) * chunk); ++k) {
          const scalar_t d = math::sigmoid(sp[k] * inv_tau) - math::sigmoid(tp[k] * inv_tau);
          acc += double(d) * double(d);
        }
        partial[c] = acc;
      }
    });
    double sum = 0;
    for (double v : partial) sum += v;
    loss.fill_(n > 0 ? tau * tau * sum / double(n) : 0.0);
  });
  return loss;
}

at::Tensor kd_loss_backward_cpu(const at::Tensor& grad_in, const at::Tensor& s_in, const at::Tensor& t_in, double tau) {
  check_pointwise_loss_args("kd_loss_backward", "student", s_in, "teacher", t_in, /*b_is_prob=*/false);
  check_saved("kd_loss_backward", "grad_loss", grad_in, {}, s_in);
  const at::Tensor s = s_in.contiguous(), t = t_in.contiguous();
  const int64_t n = s.numel();
  at::Tensor grad = at::empty(s.sizes(), s.options());
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "dtc::kd_loss_backward (CPU)", [&] {
    const scalar_t* sp = s.const_data_ptr<scalar_t>();
    const scalar_t* tp = t.const_data_ptr<scalar_t>();
    scalar_t* gp = grad.mutable_data_ptr<scalar_t>();
    // d/ds tau^2 (a - b)^2 / n with a = sigmoid(s / tau): 2 tau (a - b) a (1 - a) / n.
    const scalar_t scale = scalar_t(n > 0 ? grad_in.item<double>() * 2.0 * tau / double(n) : 0.0);
    const scalar_t inv_tau = scalar_t(1.0 / tau);
    at::parallel_for(0, n, 16384, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        const scalar_t a = math::sigmoid(sp[k] * inv_tau), b = math::sigmoid(tp[k] * inv_tau);
        gp[k] = scale * (a - b) * a * (scalar_t(1) - a);
      }
    });
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(dtc, CPU, m) {
  m.impl("bce_dice", TORCH_FN(bce_dice_cpu));
  m.impl("bce_dice_backward", TORCH_FN(bce_dice_backward_cpu));
  m.impl("kd_loss", TORCH_FN(kd_loss_cpu));
  m.impl("kd_loss_backward", TORCH_FN(kd_loss_backward_cpu));
}

}  // namespace dtc::ops
