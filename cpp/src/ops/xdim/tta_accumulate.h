// dtc::tta_accumulate (docs/xdim.md, "Pseudo-labels"): the argument checks and the per-pixel math shared
// by the CPU and CUDA kernels, so both backends evaluate the same taps in the same order.
//
// Geometry. A TTA draw n of slice b is a rotation by angle a about the image centre c followed by a
// translation t, in native pixel coordinates (pixel (x, y) at integer position, align_corners=True):
//   T(q) = R(a) (q - c) + c + t,   c = ((W-1)/2, (H-1)/2).
// The augmented slice is A x (u) = x(T^-1 u) (dtc.volume.tta_warp); the network's prediction P_n lives on
// an h x w grid covering the same field of view (align_corners=True). Its inverse warp back to the native
// grid is p_n(q) = P_n(T(q)), sampled bilinearly with zero padding; v_n(q) is the same sample of an image
// of ones (the valid fraction). Up-sampling to the native size and the inverse warp are one interpolation.
//
// Accumulation. x_n = p_n / v_n wherever v_n > 0 is accumulated with weight v_n by a weighted Welford
// update (one pass, numerically stable), giving
//   mean = sum p / (sum v + eps),   var = sum v (x - m)^2 / (sum v + eps),  m = sum p / sum v,
// and coverage = sum v. Where v_n is 0 or 1 (all but the one-pixel band at the edge of a warped field of
// view) this is exactly the original code's sum p^2 / sum v - mean^2.
#pragma once
#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>

#include "ops/common/warp_math.h"

namespace dtc::ops {

// preds [B, N, h, w] floating, params [B, N, 3] floating (angle in radians, tx, ty in native pixels),
// size = (H, W). Throws ValueError/TypeError naming the argument.
inline void tta_accumulate_check(const at::Tensor& preds, const at::Tensor& params, at::IntArrayRef size, double eps) {
  TORCH_CHECK_VALUE(preds.dim() == 4, "tta_accumulate: preds must be [B, N, h, w] (N TTA predictions per slice), got shape ",
                    preds.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(preds.scalar_type()), "tta_accumulate: preds must be floating point, got ",
                   preds.scalar_type());
  TORCH_CHECK_VALUE(preds.size(0) > 0 && preds.size(1) > 0,
                    "tta_accumulate: preds must hold at least one slice and one TTA draw, got shape ", preds.sizes());
  TORCH_CHECK_VALUE(preds.size(2) >= 2 && preds.size(3) >= 2,
                    "tta_accumulate: preds must be at least 2x2 pixels (align_corners=True grid), got ", preds.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(params.scalar_type()), "tta_accumulate: params must be floating point, got ",
                   params.scalar_type());
  TORCH_CHECK_VALUE(params.dim() == 3 && params.size(0) == preds.size(0) && params.size(1) == preds.size(1) &&
                        params.size(2) == 3,
                    "tta_accumulate: params must be [B, N, 3] = [", preds.size(0), ", ", preds.size(1),
                    ", 3] (angle in radians, tx, ty in pixels), got ", params.sizes());
  TORCH_CHECK_VALUE(preds.device() == params.device(), "tta_accumulate: preds and params must be on one device, got ",
                    preds.device(), " and ", params.device());
  TORCH_CHECK_VALUE(size.size() == 2 && size[0] >= 2 && size[1] >= 2,
                    "tta_accumulate: size must be the native (H, W), each >= 2, got ", size);
  TORCH_CHECK_VALUE(eps >= 0 && std::isfinite(eps), "tta_accumulate: eps must be finite and >= 0, got ", eps);
  TORCH_CHECK_VALUE(at::isfinite(params).all().item<bool>(), "tta_accumulate: params must be finite");
}

// [B, N, 4] (cos a, sin a, tx, ty) in double: computed once instead of per pixel.
inline at::Tensor tta_transform_table(const at::Tensor& params) {
  const at::Tensor p = params.to(at::kDouble);
  const at::Tensor a = p.select(2, 0);
  return at::stack({a.cos(), a.sin(), p.select(2, 1), p.select(2, 2)}, 2).contiguous();
}

namespace math {

// Accumulates the N draws of one native pixel (qx, qy) of one slice. pred: the slice's [N, h, w];
// table: its [N, 4]. Writes mean, std, coverage.
template <typename scalar_t, typename acc_t>
DTC_HOST_DEVICE void tta_pixel(const scalar_t* pred, const double* table, int64_t N, int64_t h, int64_t w, int64_t H,
                               int64_t W, int64_t qx, int64_t qy, acc_t eps, acc_t* mean_out, acc_t* std_out,
                               acc_t* coverage_out) {
  const acc_t cx = acc_t(W - 1) / 2, cy = acc_t(H - 1) / 2;
  const acc_t sx = acc_t(w - 1) / acc_t(W - 1), sy = acc_t(h - 1) / acc_t(H - 1);
  const acc_t dx = acc_t(qx) - cx, dy = acc_t(qy) - cy;
  acc_t total = 0, mean = 0, m2 = 0;
  for (int64_t n = 0; n < N; ++n) {
    const acc_t c = acc_t(table[n * 4]), s = acc_t(table[n * 4 + 1]);
    const acc_t px = (c * dx - s * dy + cx + acc_t(table[n * 4 + 2])) * sx;
    const acc_t py = (s * dx + c * dy + cy + acc_t(table[n * 4 + 3])) * sy;
    const acc_t fx0 = DTC_FLOOR(px), fy0 = DTC_FLOOR(py);
    // far outside: skip before converting to an integer (which could overflow)
    if (!(fx0 >= acc_t(-1) && fx0 <= acc_t(w - 1) && fy0 >= acc_t(-1) && fy0 <= acc_t(h - 1))) continue;
    const int64_t x0 = int64_t(fx0), y0 = int64_t(fy0);
    const acc_t wx1 = px - fx0, wy1 = py - fy0;
    const scalar_t* plane = pred + n * h * w;
    acc_t v = 0, p = 0;
    for (int k = 0; k < 4; ++k) {
      const int64_t xi = x0 + (k & 1), yi = y0 + (k >> 1);
      if (xi < 0 || xi >= w || yi < 0 || yi >= h) continue;
      const acc_t weight = ((k & 1) ? wx1 : acc_t(1) - wx1) * ((k >> 1) ? wy1 : acc_t(1) - wy1);
      v += weight;
      p += weight * acc_t(plane[yi * w + xi]);
    }
    if (!(v > 0)) continue;
    const acc_t x = p / v;
    total += v;
    const acc_t delta = x - mean;
    mean += delta * (v / total);
    m2 += v * delta * (x - mean);
  }
  const acc_t denom = total + eps;
  *mean_out = denom > 0 ? mean * total / denom : acc_t(0);
  const acc_t var = denom > 0 ? m2 / denom : acc_t(0);
  #if defined(__CUDA_ARCH__)
  *std_out = var > 0 ? sqrt(var) : acc_t(0);
#else
  *std_out = var > 0 ? std::sqrt(var) : acc_t(0);
#endif
  *coverage_out = total;
}

}  // namespace math
}  // namespace dtc::ops
