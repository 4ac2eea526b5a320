// CPU kernels of dtc::bce_dice and dtc::kd_loss: one pass over the logits per direction, per-sample
// sums in double, parallel over samples (forward) or elements (backward). float32 runs the
// vectorised loops below (simd_math.h); float64 evaluates libm per element for the 1e-10 parity.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "ops/common/loss_math.h"
#include "ops/cpu/simd_math.h"
#include "ops/losses.h"

namespace dtc::ops {
namespace {

struct BceDiceSums {
  double bce = 0, inter = 0, total = 0;
};

// Generic (float64) versions: libm per element. The float overloads below win overload resolution.
template <typename T>
BceDiceSums bce_dice_sums(const T* z, const T* y, int64_t n) {
  BceDiceSums sums;
  for (int64_t k = 0; k < n; ++k) {
    const double zz = z[k], yy = y[k], p = math::sigmoid(zz);
    sums.bce += math::bce_with_logits(zz, yy);
    sums.inter += p * yy;
    sums.total += p + yy;
  }
  return sums;
}

template <typename T>
void bce_dice_grad(const T* z, const T* y, int64_t n, double bce_scale, double dice_scale, double num, double den,
                   T* g) {
  for (int64_t k = 0; k < n; ++k) {
    const double zz = z[k], yy = y[k], p = math::sigmoid(zz);
    g[k] = T(bce_scale * (p - yy) - dice_scale * (2 * yy * den - num) * p * (1 - p));
  }
}

template <typename T>
double kd_sum(const T* s, const T* t, int64_t n, T inv_tau) {
  double acc = 0;
  for (int64_t k = 0; k < n; ++k) {
    const T d = math::sigmoid(s[k] * inv_tau) - math::sigmoid(t[k] * inv_tau);
    acc += double(d) * double(d);
  }
  return acc;
}

template <typename T>
void kd_grad(const T* s, const T* t, int64_t n, T inv_tau, T scale, T* g) {
  for (int64_t k = 0; k < n; ++k) {
    const T a = math::sigmoid(s[k] * inv_tau), b = math::sigmoid(t[k] * inv_tau);
    g[k] = scale * (a - b) * a * (T(1) - a);
  }
}

DTC_SIMD_CLONES BceDiceSums bce_dice_sums(const float* z, const float* y, int64_t n) {
  double bce = 0, inter = 0, total = 0;
#pragma omp simd reduction(+ : bce, inter, total)
  for (int64_t k = 0; k < n; ++k) {
    const float e = simd::exp(-simd::abs(z[k]));
    const float inv = 1.0f / (1.0f + e);
    const float p = simd::select(z[k] >= 0.0f, inv, e * inv);
    bce += double(simd::select(z[k] > 0.0f, z[k], 0.0f) - z[k] * y[k] + simd::log1p_unit(e));
    inter += double(p * y[k]);
    total += double(p + y[k]);
  }
  return {bce, inter, total};
}

// grad_k = bce_scale (p - y) - dice_scale (2 y den - num) p (1 - p), one sample's constants.
DTC_SIMD_CLONES void bce_dice_grad(const float* z, const float* y, int64_t n, double bce_scale_d, double dice_scale_d,
                                   double num_d, double den_d, float* g) {
  const float bce_scale = float(bce_scale_d), dice_scale = float(dice_scale_d), num = float(num_d), den = float(den_d);
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) {
    const float p = simd::sigmoid(z[k]);
    g[k] = bce_scale * (p - y[k]) - dice_scale * (2.0f * y[k] * den - num) * p * (1.0f - p);
  }
}

DTC_SIMD_CLONES double kd_sum(const float* s, const float* t, int64_t n, float inv_tau) {
  double acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t k = 0; k < n; ++k) {
    const float d = simd::sigmoid(s[k] * inv_tau) - simd::sigmoid(t[k] * inv_tau);
    acc += double(d * d);
  }
  return acc;
}

DTC_SIMD_CLONES void kd_grad(const float* s, const float* t, int64_t n, float inv_tau, float scale, float* g) {
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) {
    const float a = simd::sigmoid(s[k] * inv_tau), b = simd::sigmoid(t[k] * inv_tau);
    g[k] = scale * (a - b) * a * (1.0f - a);
  }
}

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
        const BceDiceSums sums = bce_dice_sums(zp + n * S, yp + n * S, S);
        bce[n] = sums.bce, inter[n] = sums.inter, total[n] = sums.total;
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
      // Runs of elements inside one sample share its Dice constants.
      for (int64_t k = begin; k < end;) {
        const int64_t n = k / S, stop = std::min(end, (n + 1) * S);
        const double num = 2 * double(st[2 * n]) + smooth, den = double(st[2 * n + 1]) + smooth;
        // d Dice_n / d p_k = (2 y_k den - num) / den^2; the loss carries -Dice_n / N.
        const double dice_scale = g / double(N) / (den * den);
        bce_dice_grad(zp + k, yp + k, stop - k, bce_scale, dice_scale, num, den, gp + k);
        k = stop;
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
    // Per element in the input's precision, sums in double: the float64-oracle tests hold at 1e-5
    // relative in fp32. Fixed chunks keep the sum independent of the thread count.
    const scalar_t inv_tau = scalar_t(1.0 / tau);
    const int64_t chunk = 65536, chunks = (n + chunk - 1) / chunk;
    std::vector<double> partial(chunks, 0.0);
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        const int64_t first = c * chunk, count = std::min(n, first + chunk) - first;
        partial[c] = kd_sum(sp + first, tp + first, count, inv_tau);
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
      kd_grad(sp + begin, tp + begin, end - begin, inv_tau, scale, gp + begin);
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
