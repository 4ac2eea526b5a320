#pragma once
// Torch-free bilinear sampling math shared by the CPU and CUDA warp kernels, so both backends
// evaluate the same taps and weights in the same order (nvcc contracts multiply-adds into FMAs by
// default, so results may still differ in the last bits; hard thresholds in the tests keep a margin).
//
// Convention: coordinates are pixel indices; pixel (x, y) sits at integer position (x, y), which is
// grid_sample's align_corners=True placement. The warp samples the source at p - F(p).

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define DTC_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define DTC_HOST_DEVICE inline
#endif

// The device pass needs CUDA's global overloads, the host pass the std ones.
#if defined(__CUDA_ARCH__)
#define DTC_ISFINITE(v) isfinite(v)
#define DTC_FLOOR(v) floor(v)
#else
#define DTC_ISFINITE(v) std::isfinite(v)
#define DTC_FLOOR(v) std::floor(v)
#endif

namespace dtc::math {

enum class Padding : int32_t {
  Zeros = 0,   // taps outside the image read 0
  Border = 1,  // the sample point is clamped into [0, W-1] x [0, H-1]
};

// Everything a kernel needs to read one bilinear sample and to differentiate it.
template <typename T>
struct BilinearTaps {
  int64_t x0, y0;   // top-left tap; the others are x0+1 / y0+1
  T wx1, wy1;       // weights of the right / bottom taps (left / top get 1 - w)
  bool in_x0, in_x1, in_y0, in_y1;  // tap column / row lies inside the image
  // d(clamped coordinate) / d(raw coordinate): 0 where border clamping is active, matching
  // grid_sample's clip_coordinates gradient (which is 0 at and beyond the clip limits).
  T dx_dsx, dy_dsy;
  bool finite;  // false when the sample point is NaN/Inf: the output is NaN and no gradient flows
};

template <typename T>
DTC_HOST_DEVICE int64_t floor_to_int(T v) {
  const int64_t i = static_cast<int64_t>(v);  // truncates towards zero
  return (static_cast<T>(i) > v) ? i - 1 : i;
}

template <typename T>
DTC_HOST_DEVICE T clamp_with_grad(T v, T hi, T* grad) {
  if (v <= T(0)) {
    *grad = T(0);
    return T(0);
  }
  if (v >= hi) {
    *grad = T(0);
    return hi;
  }
  *grad = T(1);
  return v;
}

template <typename T>
DTC_HOST_DEVICE BilinearTaps<T> bilinear_taps(T sx, T sy, int64_t width, int64_t height, Padding padding) {
  BilinearTaps<T> t;
  t.finite = DTC_ISFINITE(sx) && DTC_ISFINITE(sy);
  if (!t.finite) {
    t.x0 = t.y0 = 0;
    t.wx1 = t.wy1 = T(0);
    t.in_x0 = t.in_x1 = t.in_y0 = t.in_y1 = false;
    t.dx_dsx = t.dy_dsy = T(0);
    return t;
  }
  if (padding == Padding::Border) {
    sx = clamp_with_grad(sx, T(width - 1), &t.dx_dsx);
    sy = clamp_with_grad(sy, T(height - 1), &t.dy_dsy);
  } else {
    t.dx_dsx = t.dy_dsy = T(1);
    // Beyond one pixel outside, every tap reads 0 and the gradient is 0 either way; clamping there
    // keeps floor() of huge finite values from overflowing the integer index.
    sx = sx < T(-2) ? T(-2) : (sx > T(width + 1) ? T(width + 1) : sx);
    sy = sy < T(-2) ? T(-2) : (sy > T(height + 1) ? T(height + 1) : sy);
  }
  // floor by truncation: sx and sy are finite and clamped above, and on the host this avoids a libm
  // call per pixel (the portable x86-64 baseline has no rounding instruction).
  t.x0 = floor_to_int(sx);
  t.y0 = floor_to_int(sy);
  t.wx1 = sx - static_cast<T>(t.x0);
  t.wy1 = sy - static_cast<T>(t.y0);
  t.in_x0 = t.x0 >= 0 && t.x0 < width;
  t.in_x1 = t.x0 + 1 >= 0 && t.x0 + 1 < width;
  t.in_y0 = t.y0 >= 0 && t.y0 < height;
  t.in_y1 = t.y0 + 1 >= 0 && t.y0 + 1 < height;
  return t;
}

// Reads the four taps of one plane (row-major, `width` columns); out-of-image taps read 0.
template <typename T, typename Load>
DTC_HOST_DEVICE void load_taps(const BilinearTaps<T>& t, int64_t width, Load load, T* v00, T* v01, T* v10, T* v11) {
  const int64_t i00 = t.y0 * width + t.x0;
  *v00 = (t.in_y0 && t.in_x0) ? load(i00) : T(0);
  *v01 = (t.in_y0 && t.in_x1) ? load(i00 + 1) : T(0);
  *v10 = (t.in_y1 && t.in_x0) ? load(i00 + width) : T(0);
  *v11 = (t.in_y1 && t.in_x1) ? load(i00 + width + 1) : T(0);
}

template <typename T>
DTC_HOST_DEVICE T interpolate(const BilinearTaps<T>& t, T v00, T v01, T v10, T v11) {
  const T wx0 = T(1) - t.wx1, wy0 = T(1) - t.wy1;
  return wy0 * (wx0 * v00 + t.wx1 * v01) + t.wy1 * (wx0 * v10 + t.wx1 * v11);
}

// The adjoint of interpolate: spreads `go` over the in-image taps; `add(index, value)` accumulates
// (a plain += on the CPU, an atomic on the GPU).
template <typename T, typename Add>
DTC_HOST_DEVICE void scatter_taps(const BilinearTaps<T>& t, int64_t width, T go, Add add) {
  const T wx0 = T(1) - t.wx1, wy0 = T(1) - t.wy1;
  const int64_t i00 = t.y0 * width + t.x0;
  if (t.in_y0 && t.in_x0) add(i00, wy0 * wx0 * go);
  if (t.in_y0 && t.in_x1) add(i00 + 1, wy0 * t.wx1 * go);
  if (t.in_y1 && t.in_x0) add(i00 + width, t.wy1 * wx0 * go);
  if (t.in_y1 && t.in_x1) add(i00 + width + 1, t.wy1 * t.wx1 * go);
}

// Gradient of one interpolated value with respect to the raw sample coordinates (sx, sy).
template <typename T>
DTC_HOST_DEVICE void interpolate_grad_coords(const BilinearTaps<T>& t, T v00, T v01, T v10, T v11, T* d_sx, T* d_sy) {
  const T wx0 = T(1) - t.wx1, wy0 = T(1) - t.wy1;
  *d_sx = (wy0 * (v01 - v00) + t.wy1 * (v11 - v10)) * t.dx_dsx;
  *d_sy = (wx0 * (v10 - v00) + t.wx1 * (v11 - v01)) * t.dy_dsy;
}

}  // namespace dtc::math
