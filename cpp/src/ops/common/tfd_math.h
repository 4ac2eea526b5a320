#pragma once
// Torch-free per-pixel math of dtc::tfd_loss (docs/v2i.md, target-guided feature distillation), shared by
// the CPU and CUDA kernels so both evaluate the same expressions in the same order.
//
// Convention: a feature map is [B, C, P] contiguous (P = H * W); the C values of pixel p of sample b start
// at x + b * C * P + p and are `P` apart. "pixel_ln" standardises them over C (biased variance + 1e-5, no
// affine, as LayerNorm); "none" leaves them as they are.

#include <cmath>
#include <cstdint>

#include "ops/common/warp_math.h"  // DTC_HOST_DEVICE

#if defined(__CUDA_ARCH__)
#define DTC_TFD_SQRT(v) sqrt(v)
#define DTC_TFD_FABS(v) fabs(v)
#else
#define DTC_TFD_SQRT(v) std::sqrt(v)
#define DTC_TFD_FABS(v) std::fabs(v)
#endif

namespace dtc::math::tfd {

constexpr double kLayerNormEps = 1e-5;

// Mean and 1/sqrt(var + eps) of the C values of one pixel (two passes: no cancellation).
template <typename scalar_t, typename acc_t>
DTC_HOST_DEVICE void pixel_moments(const scalar_t* x, int64_t channels, int64_t step, acc_t& mean, acc_t& rstd) {
  acc_t sum = 0;
  for (int64_t c = 0; c < channels; ++c) sum += static_cast<acc_t>(x[c * step]);
  mean = sum / acc_t(channels);
  acc_t sq = 0;
  for (int64_t c = 0; c < channels; ++c) {
    const acc_t d = static_cast<acc_t>(x[c * step]) - mean;
    sq += d * d;
  }
  rstd = acc_t(1) / DTC_TFD_SQRT(sq / acc_t(channels) + acc_t(kLayerNormEps));
}

// e(p) = mean_c (N(s) - N(t))^2 and, when t_abs is not null, *t_abs = mean_c |t| (the raw teacher's
// activation, which the optional spatial attention is a softmax of).
template <typename scalar_t, typename acc_t>
DTC_HOST_DEVICE acc_t pixel_error(const scalar_t* s, const scalar_t* t, int64_t channels, int64_t step, bool normalise,
                                  acc_t* t_abs) {
  acc_t ms = 0, rs = 1, mt = 0, rt = 1;
  if (normalise) {
    pixel_moments<scalar_t, acc_t>(s, channels, step, ms, rs);
    pixel_moments<scalar_t, acc_t>(t, channels, step, mt, rt);
  }
  acc_t err = 0, act = 0;
  for (int64_t c = 0; c < channels; ++c) {
    const acc_t tc = static_cast<acc_t>(t[c * step]);
    const acc_t d = (static_cast<acc_t>(s[c * step]) - ms) * rs - (tc - mt) * rt;
    err += d * d;
    act += DTC_TFD_FABS(tc);
  }
  if (t_abs != nullptr) *t_abs = act / acc_t(channels);
  return err / acc_t(channels);
}

// Gradient of k * sum_c (N(s) - N(t))^2 / 2 with respect to s, i.e. with dn_c = k (N(s)_c - N(t)_c)
// pulled back through N: ds = rstd (dn - mean_c dn - N(s) mean_c(dn N(s))) for pixel_ln, dn for none.
// The caller folds 2 / C and every loss weight into k.
template <typename scalar_t, typename acc_t>
DTC_HOST_DEVICE void pixel_grad(const scalar_t* s, const scalar_t* t, int64_t channels, int64_t step, bool normalise,
                                acc_t k, scalar_t* ds) {
  if (!normalise) {
    for (int64_t c = 0; c < channels; ++c) {
      ds[c * step] = static_cast<scalar_t>(k * (static_cast<acc_t>(s[c * step]) - static_cast<acc_t>(t[c * step])));
    }
    return;
  }
  acc_t ms, rs, mt, rt;
  pixel_moments<scalar_t, acc_t>(s, channels, step, ms, rs);
  pixel_moments<scalar_t, acc_t>(t, channels, step, mt, rt);
  acc_t mean_dn = 0, mean_dn_ns = 0;
  for (int64_t c = 0; c < channels; ++c) {
    const acc_t ns = (static_cast<acc_t>(s[c * step]) - ms) * rs;
    const acc_t dn = k * (ns - (static_cast<acc_t>(t[c * step]) - mt) * rt);
    mean_dn += dn;
    mean_dn_ns += dn * ns;
  }
  mean_dn /= acc_t(channels);
  mean_dn_ns /= acc_t(channels);
  for (int64_t c = 0; c < channels; ++c) {
    const acc_t ns = (static_cast<acc_t>(s[c * step]) - ms) * rs;
    const acc_t dn = k * (ns - (static_cast<acc_t>(t[c * step]) - mt) * rt);
    ds[c * step] = static_cast<scalar_t>(rs * (dn - mean_dn - ns * mean_dn_ns));
  }
}

}  // namespace dtc::math::tfd
