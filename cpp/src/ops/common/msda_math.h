#pragma once
// Torch-free math of dtc::msda_st (multi-frame multi-scale deformable attention, docs/v2i.md), shared by
// the CPU and CUDA kernels: the four bilinear taps of one sampling point with zero padding, and their
// derivatives in the point's pixel coordinates.
//
// Convention: a normalised location (u, v) in [0, 1]^2 on a map of h x w cells sits at pixel
// (x, y) = (u w - 0.5, v h - 0.5): grid_sample's align_corners=False placement, so (0, 0) is the outer
// corner of the first cell. Taps outside the map read 0 (and receive no gradient).

#include <cmath>
#include <cstdint>

#include "ops/common/warp_math.h"  // DTC_HOST_DEVICE, DTC_ISFINITE

namespace dtc::math::msda {

template <typename acc_t>
struct Taps {
  int64_t index[4];  // flat cell index y * w + x, or -1 outside the map
  acc_t weight[4];   // bilinear weights
  acc_t dx[4];       // d weight / d x
  acc_t dy[4];       // d weight / d y
};

template <typename acc_t>
DTC_HOST_DEVICE Taps<acc_t> bilinear_taps(acc_t u, acc_t v, int64_t h, int64_t w) {
  Taps<acc_t> taps;
  for (int i = 0; i < 4; ++i) {
    taps.index[i] = -1;
    taps.weight[i] = taps.dx[i] = taps.dy[i] = acc_t(0);
  }
  const acc_t x = u * acc_t(w) - acc_t(0.5), y = v * acc_t(h) - acc_t(0.5);
  // Also keeps the integer conversion below in range; a point this far out touches no cell.
  if (!(DTC_ISFINITE(x) && DTC_ISFINITE(y)) || x <= acc_t(-1) || y <= acc_t(-1) || x >= acc_t(w) || y >= acc_t(h)) {
    return taps;
  }
  const acc_t fx0 = DTC_FLOOR(x), fy0 = DTC_FLOOR(y);
  const int64_t x0 = int64_t(fx0), y0 = int64_t(fy0);
  const acc_t ax = x - fx0, ay = y - fy0;
  const int64_t xs[4] = {x0, x0 + 1, x0, x0 + 1};
  const int64_t ys[4] = {y0, y0, y0 + 1, y0 + 1};
  const acc_t wx[4] = {acc_t(1) - ax, ax, acc_t(1) - ax, ax};
  const acc_t wy[4] = {acc_t(1) - ay, acc_t(1) - ay, ay, ay};
  const acc_t sx[4] = {acc_t(-1), acc_t(1), acc_t(-1), acc_t(1)};
  const acc_t sy[4] = {acc_t(-1), acc_t(-1), acc_t(1), acc_t(1)};
  for (int i = 0; i < 4; ++i) {
    if (xs[i] < 0 || ys[i] < 0 || xs[i] >= w || ys[i] >= h) continue;
    taps.index[i] = ys[i] * w + xs[i];
    taps.weight[i] = wx[i] * wy[i];
    taps.dx[i] = sx[i] * wy[i];
    taps.dy[i] = sy[i] * wx[i];
  }
  return taps;
}

}  // namespace dtc::math::msda
