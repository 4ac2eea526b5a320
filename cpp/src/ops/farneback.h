#pragma once
// Shared by the Farnebäck kernels: argument validation and the host-side plan (pyramid sizes,
// smoothing kernels, polynomial basis, window), computed once per call and passed to the
// per-pixel math of ops/common/farneback_math.h.
#include <ATen/core/Tensor.h>

#include <vector>

#include "ops/common/farneback_math.h"

namespace dtc::ops {

struct FarnebackLevel {
  int height, width;                        // size of this pyramid level
  math::farneback::SmoothKernel smooth;     // pre-smoothing of the full-resolution image
};

struct FarnebackPlan {
  std::vector<FarnebackLevel> levels;       // coarsest first; the last one is full resolution
  math::farneback::PolyBasis basis;
  math::farneback::WindowKernel window;     // unit taps for the box window
  float window_scale;                       // 1/winsize² (box) or 1 (Gaussian, taps normalised)
  bool gaussian_window;                     // false: box window (unit taps)
  double pyr_scale;
  int iterations;
  int median_radius;                        // 0: no median filter
};

// Validates the inputs (naming the argument and the expectation) and returns the plan.
// Also rejects non-finite pixels, which costs one device-to-host sync on CUDA.
FarnebackPlan check_and_plan_farneback(const at::Tensor& prev, const at::Tensor& next, double pyr_scale, int64_t levels,
                                       int64_t winsize, int64_t iterations, int64_t poly_n, double poly_sigma,
                                       bool gaussian_window, int64_t median);

}  // namespace dtc::ops
