#pragma once
// Torch-free per-pixel math of the DTC loss ops (docs/method.md §2), shared by the CPU and CUDA kernels so
// both backends evaluate the same expressions in the same order.
//
// Convention: window tensors are (B, T, C, H, W) contiguous; a pair is (t-1, t) for t = 1..T-1 and
// its index is `pair = t - 1`. Flows follow warp_math.h: the sample point of pixel p is p - F(p).

#include <cmath>
#include <cstdint>

#include "ops/common/warp_math.h"

#if defined(__CUDA_ARCH__)
#define DTC_EXP(v) exp(v)
#define DTC_LOG1P(v) log1p(v)
#define DTC_FABS(v) fabs(v)
#else
#define DTC_EXP(v) std::exp(v)
#define DTC_LOG1P(v) std::log1p(v)
#define DTC_FABS(v) std::fabs(v)
#endif

namespace dtc::math {

// How the image residual dI = I_t - W(I_{t-1}) becomes one number per pixel.
enum class Residual : int32_t {
  AbsSum = 0,   // |sum_c s_c dI_c|   (the released code, on normalised images: s_c = 1/std_c)
  MeanAbs = 1,  // mean_c |s_c dI_c| (preset "dtc", s_c = 1)
};

template <typename T>
DTC_HOST_DEVICE T sigmoid(T z) {
  // Written so that neither branch overflows exp for large |z|.
  if (z >= T(0)) {
    return T(1) / (T(1) + DTC_EXP(-z));
  }
  const T e = DTC_EXP(z);
  return e / (T(1) + e);
}

// Binary cross-entropy of a logit against a soft label, max(z, 0) - z y + log(1 + exp(-|z|)).
template <typename T>
DTC_HOST_DEVICE T bce_with_logits(T z, T y) {
  return (z > T(0) ? z : T(0)) - z * y + DTC_LOG1P(DTC_EXP(-DTC_FABS(z)));
}

// d|a - b| / da with torch's convention sign(0) = 0.
template <typename T>
DTC_HOST_DEVICE T sign(T v) {
  return v > T(0) ? T(1) : (v < T(0) ? T(-1) : T(0));
}

// Bilinear value of one plane at the taps; out-of-image taps read 0 (never the case with border padding).
template <typename T, typename S>
DTC_HOST_DEVICE T sample_plane(const BilinearTaps<T>& t, const S* plane, int64_t width) {
  T v00, v01, v10, v11;
  load_taps(t, width, [plane](int64_t i) { return T(plane[i]); }, &v00, &v01, &v10, &v11);
  return interpolate(t, v00, v01, v10, v11);
}

// The warped previous prediction as the temporal terms use it: W(P_{t-1}) itself (soft target), or the
// reference's hard target 1[W(P_{t-1}) > 0.5]. The consistency term and the local prototypes' mask must
// read the same target, so both call this.
template <typename T>
DTC_HOST_DEVICE T warped_target(T warped, bool hard) {
  return hard ? (warped > T(0.5) ? T(1) : T(0)) : warped;
}

// Sigmoid applied per tap before interpolating: W(sigmoid(z)), the warped probability of docs/method.md.
template <typename T, typename S>
DTC_HOST_DEVICE T sample_sigmoid_plane(const BilinearTaps<T>& t, const S* plane, int64_t width) {
  T v00, v01, v10, v11;
  load_taps(t, width, [plane](int64_t i) { return sigmoid(T(plane[i])); }, &v00, &v01, &v10, &v11);
  return interpolate(t, v00, v01, v10, v11);
}

// Forward-backward occlusion test of docs/method.md §2.5 at one pixel of frame t:
// |F(p) + F_bw(p - F(p))|^2 < 0.01 (|F(p)|^2 + |F_bw(p - F(p))|^2) + 0.5, F_bw bilinear with border padding.
// F carries frame t-1 into t by W(A)(p) = A(p - F(p)), so p's point in frame t-1 is p - F(p), where the
// reversed pair's flow F_bw lives (sampling at p + F(p) flagged most pixels of an exact rotation).
template <typename T, typename S>
DTC_HOST_DEVICE bool passes_occlusion_test(T fx, T fy, const S* back_x, const S* back_y, int64_t x, int64_t y,
                                           int64_t width, int64_t height) {
  const auto t = bilinear_taps<T>(T(x) - fx, T(y) - fy, width, height, Padding::Border);
  if (!t.finite) return false;
  const T bx = sample_plane(t, back_x, width);
  const T by = sample_plane(t, back_y, width);
  const T ex = fx + bx, ey = fy + by;
  return ex * ex + ey * ey < T(0.01) * (fx * fx + fy * fy + bx * bx + by * by) + T(0.5);
}

// Source index of nearest-neighbour resampling from `in` to `out` samples, bit-identical to
// torch.nn.functional.interpolate(mode="nearest") (a float scale, floor, clamp).
DTC_HOST_DEVICE int64_t nearest_source(int64_t dst, int64_t in, int64_t out) {
  if (in == out) return dst;
  const float scale = static_cast<float>(in) / static_cast<float>(out);
  const int64_t src = static_cast<int64_t>(DTC_FLOOR(static_cast<float>(dst) * scale));
  return src < in - 1 ? src : in - 1;
}

constexpr int kMaxImageChannels = 16;

// Everything the consistency kernels need besides the tensors; passed by value to CUDA kernels.
template <typename T>
struct ConsistencyParams {
  int64_t B, T_, C, H, W;        // window batch (B, T, ., H, W); images have C channels
  T alpha;                        // M = exp(-alpha * residual)
  Residual residual;
  bool soft_target;               // false: the warped prediction is binarised at 0.5 (no gradient)
  bool occlusion;                 // multiply M by the forward-backward test (flows_bw given)
  T scale[kMaxImageChannels];     // per-channel factor of the residual (1/std for normalised images)
  // The CPU kernels pass sigmoid(logits) computed once per element (a vectorised pass) instead of
  // logits, saving the four per-tap sigmoids of the warped target; the CUDA kernels pass logits.
  bool probabilities = false;
};

// The quantities of one pixel p of pair (b, t): the taps of p - F(p), the confidence M(p), the target
// P~(p) and P_t(p).
template <typename T>
struct ConsistencyPixel {
  BilinearTaps<T> taps;
  T conf, target, p_cur;
};

// `logits` holds probabilities instead when P.probabilities is set.
template <typename T, typename S>
DTC_HOST_DEVICE ConsistencyPixel<T> consistency_pixel(const ConsistencyParams<T>& P, const S* logits, const S* images,
                                                      const S* flows, const S* flows_bw, int64_t b, int64_t t,
                                                      int64_t y, int64_t x) {
  const int64_t HW = P.H * P.W, yx = y * P.W + x;
  const S* flow = flows + (b * P.T_ + t) * 2 * HW;
  const T fx = T(flow[yx]), fy = T(flow[HW + yx]);
  ConsistencyPixel<T> out;
  out.taps = bilinear_taps<T>(T(x) - fx, T(y) - fy, P.W, P.H, Padding::Border);
  const T z_cur = T(logits[(b * P.T_ + t) * HW + yx]);
  out.p_cur = P.probabilities ? z_cur : sigmoid(z_cur);
  if (!out.taps.finite) {
    // A non-finite flow vector: no reliable correspondence, so the pixel gets zero confidence.
    out.conf = T(0);
    out.target = T(0);
    return out;
  }
  const S* prev = logits + (b * P.T_ + t - 1) * HW;
  const T warped = P.probabilities ? sample_plane(out.taps, prev, P.W) : sample_sigmoid_plane(out.taps, prev, P.W);
  out.target = warped_target(warped, !P.soft_target);
  const S* img_cur = images + (b * P.T_ + t) * P.C * HW;
  const S* img_prev = images + (b * P.T_ + t - 1) * P.C * HW;
  T acc = T(0);
  for (int64_t c = 0; c < P.C; ++c) {
    const T d = (T(img_cur[c * HW + yx]) - sample_plane(out.taps, img_prev + c * HW, P.W)) * P.scale[c];
    acc += P.residual == Residual::AbsSum ? d : DTC_FABS(d);
  }
  const T residual = P.residual == Residual::AbsSum ? DTC_FABS(acc) : acc / T(P.C);
  out.conf = DTC_EXP(-P.alpha * residual);
  if (P.occlusion) {
    const S* back = flows_bw + (b * P.T_ + t) * 2 * HW;
    if (!passes_occlusion_test<T>(fx, fy, back, back + HW, x, y, P.W, P.H)) out.conf = T(0);
  }
  return out;
}

}  // namespace dtc::math
