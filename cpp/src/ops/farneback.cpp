#include "ops/farneback.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>

#include <Eigen/Dense>
#include <cfloat>
#include <cmath>
#include <utility>

#include "dtc/ops.h"

namespace dtc {
namespace ops {
namespace {

namespace fb = math::farneback;

// Largest accepted |pixel value|: far above any grey-level scale (16-bit images included), far below
// where the float32 products of the normal equations overflow.
constexpr double kMaxAbsPixel = 1e6;

// OpenCV's rounding of level sizes and kernel sizes (cvRound: to nearest, ties to even).
int cv_round(double v) { return static_cast<int>(std::nearbyint(v)); }

// OpenCV's getGaussianKernel: fixed binomial-like tables for small sizes without a sigma.
fb::SmoothKernel gaussian_smooth_kernel(int size, double sigma) {
  fb::SmoothKernel k{};
  k.radius = size / 2;
  TORCH_CHECK_VALUE(k.radius <= fb::kMaxSmoothRadius, "farneback: the pyramid needs a smoothing kernel of ", size,
                    " taps, more than the supported ", 2 * fb::kMaxSmoothRadius + 1, "; use fewer levels");
  if (sigma <= 0 && size <= 7 && size % 2 == 1) {
    static const float tables[4][4] = {
        {1.f}, {0.5f, 0.25f}, {0.375f, 0.25f, 0.0625f}, {0.28125f, 0.21875f, 0.109375f, 0.03125f}};
    for (int r = 0; r <= k.radius; ++r) k.taps[r] = tables[k.radius][r];
    return k;
  }
  if (sigma <= 0) sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8;
  double taps[fb::kMaxSmoothRadius + 1];
  double sum = 0;
  for (int r = 0; r <= k.radius; ++r) {
    taps[r] = std::exp(-double(r) * r / (2 * sigma * sigma));
    sum += r == 0 ? taps[r] : 2 * taps[r];
  }
  for (int r = 0; r <= k.radius; ++r) k.taps[r] = float(taps[r] / sum);
  return k;
}

fb::PolyBasis poly_basis(int n, double sigma) {
  fb::PolyBasis b{};
  b.n = n;
  if (sigma < FLT_EPSILON) sigma = n * 0.3;
  double g[fb::kMaxPolyN + 1];
  double sum = 0;
  for (int x = 0; x <= n; ++x) {
    g[x] = std::exp(-double(x) * x / (2 * sigma * sigma));
    sum += x == 0 ? g[x] : 2 * g[x];
  }
  for (int x = 0; x <= n; ++x) {
    b.g[x] = float(g[x] / sum);
    b.xg[x] = float(x * b.g[x]);
    b.xxg[x] = float(double(x) * x * b.g[x]);
  }
  // Gram matrix of the basis [1, x, y, x², y², xy] under the separable applicability: a 6×6
  // symmetric positive-definite system, inverted once per call.
  Eigen::Matrix<double, 6, 6> G = Eigen::Matrix<double, 6, 6>::Zero();
  for (int y = -n; y <= n; ++y) {
    for (int x = -n; x <= n; ++x) {
      const double w = double(b.g[std::abs(y)]) * b.g[std::abs(x)];
      G(0, 0) += w;
      G(1, 1) += w * x * x;
      G(3, 3) += w * x * x * x * x;
      G(5, 5) += w * x * x * y * y;
    }
  }
  G(2, 2) = G(1, 1);
  G(0, 3) = G(0, 4) = G(3, 0) = G(4, 0) = G(1, 1);
  G(4, 4) = G(3, 3);
  G(3, 4) = G(4, 3) = G(5, 5);
  const Eigen::Matrix<double, 6, 6> inv = G.llt().solve(Eigen::Matrix<double, 6, 6>::Identity());
  b.ig11 = float(inv(1, 1));
  b.ig03 = float(inv(0, 3));
  b.ig33 = float(inv(3, 3));
  b.ig55 = float(inv(5, 5));
  return b;
}

fb::WindowKernel window_kernel(int winsize, bool gaussian, float* scale) {
  fb::WindowKernel k{};
  k.radius = winsize / 2;
  if (!gaussian) {
    for (int r = 0; r <= k.radius; ++r) k.taps[r] = 1.f;
    *scale = float(1.0 / (double(winsize) * winsize));
    return k;
  }
  const double sigma = k.radius * 0.3;
  double taps[fb::kMaxWindowRadius + 1];
  double sum = 1;
  taps[0] = 1;
  for (int r = 1; r <= k.radius; ++r) {
    taps[r] = std::exp(-double(r) * r / (2 * sigma * sigma));
    sum += 2 * taps[r];
  }
  for (int r = 0; r <= k.radius; ++r) k.taps[r] = float(taps[r] / sum);
  *scale = 1.f;
  return k;
}

void check_image(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 4 && t.size(1) == 1, "farneback: ", name,
                    " must be a greyscale batch [N, 1, H, W] (dtc.flow.farneback converts RGB), got shape ",
                    t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble || t.scalar_type() == at::kByte,
                   "farneback: ", name, " must be float32, float64 or uint8, got ", t.scalar_type());
}

}  // namespace

FarnebackPlan check_and_plan_farneback(const at::Tensor& prev, const at::Tensor& next, double pyr_scale, int64_t levels,
                                       int64_t winsize, int64_t iterations, int64_t poly_n, double poly_sigma,
                                       bool gaussian_window, int64_t median) {
  check_image(prev, "prev");
  check_image(next, "next");
  TORCH_CHECK_VALUE(prev.sizes() == next.sizes(), "farneback: prev and next must have the same shape, got prev ",
                    prev.sizes(), " and next ", next.sizes());
  TORCH_CHECK_VALUE(prev.device() == next.device(), "farneback: prev and next must be on the same device, got ",
                    prev.device(), " and ", next.device());
  TORCH_CHECK_VALUE(std::isfinite(pyr_scale) && pyr_scale > 0 && pyr_scale < 1,
                    "farneback: pyr_scale must be in (0, 1), got ", pyr_scale);
  TORCH_CHECK_VALUE(levels >= 0 && levels <= 32, "farneback: levels must be in [0, 32], got ", levels);
  TORCH_CHECK_VALUE(winsize >= 1 && winsize / 2 <= fb::kMaxWindowRadius, "farneback: winsize must be in [1, ",
                    2 * fb::kMaxWindowRadius + 1, "], got ", winsize);
  TORCH_CHECK_VALUE(iterations >= 1 && iterations <= 1000, "farneback: iterations must be in [1, 1000], got ",
                    iterations);
  TORCH_CHECK_VALUE(poly_n >= 1 && poly_n <= fb::kMaxPolyN, "farneback: poly_n must be in [1, ", fb::kMaxPolyN,
                    "] (OpenCV recommends 5 or 7), got ", poly_n);
  TORCH_CHECK_VALUE(std::isfinite(poly_sigma) && poly_sigma >= 0,
                    "farneback: poly_sigma must be a finite number >= 0 (0 picks 0.3 * poly_n), got ", poly_sigma);
  TORCH_CHECK_VALUE(median == 0 || median == 1 || median == 3 || median == 5,
                    "farneback: median must be 0 or 1 (off), 3 or 5 (kernel size), got ", median);
  const int64_t H = prev.size(2), W = prev.size(3);
  TORCH_CHECK_VALUE(H >= fb::kMinLevelSize && W >= fb::kMinLevelSize, "farneback: images must be at least ",
                    fb::kMinLevelSize, "x", fb::kMinLevelSize,
                    " pixels (the smallest pyramid level OpenCV's Farneback builds), got H=", H, ", W=", W);
  TORCH_CHECK_VALUE(H * W < (int64_t(1) << 31), "farneback: images must have fewer than 2^31 pixels, got H=", H,
                    ", W=", W);
  if (prev.numel() > 0 && at::isFloatingType(prev.scalar_type())) {
    // A NaN would silently spread through every window it touches; reject it up front. So would the
    // overflow of finite values far off the 0-255 scale: the normal equations take products of three
    // coefficients in float32, which overflow (to NaN flow everywhere) near 1e12.
    for (const auto& [image, name] : {std::pair<const at::Tensor&, const char*>{prev, "prev"}, {next, "next"}}) {
      const double peak = image.abs().max().item<double>();  // NaN propagates through max
      TORCH_CHECK_VALUE(std::isfinite(peak), "farneback: ", name, " contains NaN or Inf values");
      TORCH_CHECK_VALUE(peak <= kMaxAbsPixel, "farneback: ", name, " has values up to ", peak,
                        "; expected grey levels on the 0-255 scale (|value| <= ", kMaxAbsPixel,
                        "); larger values overflow the float32 normal equations");
    }
  }

  FarnebackPlan plan;
  plan.pyr_scale = pyr_scale;
  plan.iterations = int(iterations);
  plan.median_radius = median >= 3 ? int(median / 2) : 0;
  plan.basis = poly_basis(int(poly_n), poly_sigma);
  plan.window = window_kernel(int(winsize), gaussian_window, &plan.window_scale);
  plan.gaussian_window = gaussian_window;

  // OpenCV's rule: add levels while both sides stay >= kMinLevelSize pixels.
  int used = 0;
  double scale = 1;
  for (; used < levels; ++used) {
    scale *= pyr_scale;
    if (W * scale < fb::kMinLevelSize || H * scale < fb::kMinLevelSize) break;
  }
  for (int k = used; k >= 0; --k) {
    double s = 1;
    for (int i = 0; i < k; ++i) s *= pyr_scale;
    const double sigma = (1. / s - 1) * 0.5;
    const int smooth_size = std::max(cv_round(sigma * 5) | 1, 3);
    FarnebackLevel level;
    level.width = cv_round(W * s);
    level.height = cv_round(H * s);
    level.smooth = gaussian_smooth_kernel(smooth_size, sigma);
    plan.levels.push_back(level);
  }
  return plan;
}

}  // namespace ops

at::Tensor farneback(const at::Tensor& prev, const at::Tensor& next, double pyr_scale, int64_t levels, int64_t winsize,
                     int64_t iterations, int64_t poly_n, double poly_sigma, bool gaussian_window, int64_t median) {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("dtc::farneback", "").typed<at::Tensor(
      const at::Tensor&, const at::Tensor&, double, int64_t, int64_t, int64_t, int64_t, double, bool, int64_t)>();
  return op.call(prev, next, pyr_scale, levels, winsize, iterations, poly_n, poly_sigma, gaussian_window, median);
}

}  // namespace dtc
