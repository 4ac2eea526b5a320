#pragma once
// Torch-free per-pixel math of Farnebäck dense optical flow (Farnebäck 2003, as OpenCV's
// calcOpticalFlowFarneback computes it), shared by the CPU and CUDA kernels so that both backends
// evaluate the very same formulas; the kernels differ only in how they loop over pixels.
//
// Convention:
//   planes are row-major float32, `h` rows by `w` columns; pixel (x, y) sits at integer
//   coordinates. Flow is (dx, dy) in pixels with prev(y, x) ≈ next(y + dy, x + dx).
//   The polynomial expansion R of an image holds five planes per pixel, in OpenCV's order:
//   [b_y, b_x, a_yy, a_xx, a_xy] of the local model f(x, y) ≈ c + b·(x,y) + (x,y) A (x,y)ᵀ with
//   A = [[a_xx, a_xy/2], [a_xy/2, a_yy]] (a_xy is the full cross coefficient).
//   The per-pixel normal equations M hold five planes [g11, g12, g22, h1, h2] of
//   G = Σ w·AᵀA (2×2, in (y, x) order) and h = Σ w·Aᵀ·Δb.
//
// Borders follow OpenCV exactly where it matters for parity: the pyramid smoothing reflects
// (BORDER_REFLECT_101), the polynomial expansion and the window sums replicate the edge rows and
// columns, resizing clamps the sample coordinate into the image (half-pixel centres).

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define DTC_FB_HD __host__ __device__ __forceinline__
#else
#define DTC_FB_HD inline
#endif

#if defined(__CUDA_ARCH__)
#define DTC_FB_FLOORF(v) floorf(v)
#else
#define DTC_FB_FLOORF(v) std::floor(v)
#endif

namespace dtc::math::farneback {

// Largest supported half-widths. Kernels are passed by value to CUDA launches, so they are
// fixed-size arrays; 4 KB of parameters is the portable launch limit.
constexpr int kMaxPolyN = 15;          // poly_n (OpenCV documents 5 or 7)
constexpr int kMaxSmoothRadius = 255;  // pyramid pre-smoothing (grows as 2.5 / scale)
constexpr int kMaxWindowRadius = 127;  // winsize / 2
// OpenCV stops adding pyramid levels once a side would drop below this many pixels.
constexpr int kMinLevelSize = 32;

// A symmetric 1-D kernel: taps[0] is the centre, taps[k] the weight at offsets ±k.
template <int MaxRadius>
struct SymmetricKernel {
  int radius;
  float taps[MaxRadius + 1];
};
using SmoothKernel = SymmetricKernel<kMaxSmoothRadius>;
using WindowKernel = SymmetricKernel<kMaxWindowRadius>;

// Weights of the polynomial expansion: the Gaussian applicability g and its first and second
// moments, plus the four entries of the inverse Gram matrix OpenCV uses to turn moments into
// coefficients (the basis is [1, x, y, x², y², xy]).
struct PolyBasis {
  int n;
  float g[kMaxPolyN + 1], xg[kMaxPolyN + 1], xxg[kMaxPolyN + 1];
  float ig11, ig03, ig33, ig55;
};

DTC_FB_HD int clamp_index(int i, int n) { return i < 0 ? 0 : (i >= n ? n - 1 : i); }

// OpenCV's BORDER_REFLECT_101 (…c b | a b c … x y z | y x …), valid for any offset.
DTC_FB_HD int reflect101_index(int i, int n) {
  if (n == 1) return 0;
  while (i < 0 || i >= n) {
    i = i < 0 ? -i : 2 * n - 2 - i;
  }
  return i;
}

// Pyramid pre-smoothing, one separable pass (vertical when `vertical`), reflect-101 border.
DTC_FB_HD float smooth_at(const float* plane, int h, int w, int y, int x, const SmoothKernel& k, bool vertical) {
  float acc = k.taps[0] * plane[y * w + x];
  // Interior pixels (almost all of them) skip the border arithmetic.
  if (vertical && y >= k.radius && y + k.radius < h) {
    const float* c = plane + y * w + x;
    for (int r = 1; r <= k.radius; ++r) acc += k.taps[r] * (c[-r * w] + c[r * w]);
    return acc;
  }
  if (!vertical && x >= k.radius && x + k.radius < w) {
    const float* c = plane + y * w + x;
    for (int r = 1; r <= k.radius; ++r) acc += k.taps[r] * (c[-r] + c[r]);
    return acc;
  }
  for (int r = 1; r <= k.radius; ++r) {
    float a, b;
    if (vertical) {
      a = plane[reflect101_index(y - r, h) * w + x];
      b = plane[reflect101_index(y + r, h) * w + x];
    } else {
      a = plane[y * w + reflect101_index(x - r, w)];
      b = plane[y * w + reflect101_index(x + r, w)];
    }
    acc += k.taps[r] * (a + b);
  }
  return acc;
}

// Bilinear resize from (sh, sw) to (dh, dw), OpenCV INTER_LINEAR placement: the destination
// pixel d samples the source at (d + 0.5)·(s/d) − 0.5, clamped into [0, s − 1].
DTC_FB_HD void resize_coordinate(int d, int dst_n, int src_n, int* i0, int* i1, float* frac) {
  const double scale = double(src_n) / double(dst_n);
  float f = float((d + 0.5) * scale - 0.5);
  int i = int(DTC_FB_FLOORF(f));
  f -= float(i);
  if (i < 0) {
    i = 0;
    f = 0.f;
  }
  if (i >= src_n - 1) {
    i = src_n - 1;
    f = 0.f;
  }
  *i0 = i;
  *i1 = i + 1 < src_n ? i + 1 : i;
  *frac = f;
}

DTC_FB_HD float resize_at(const float* src, int sh, int sw, int y, int x, int dh, int dw) {
  int y0, y1, x0, x1;
  float fy, fx;
  resize_coordinate(y, dh, sh, &y0, &y1, &fy);
  resize_coordinate(x, dw, sw, &x0, &x1, &fx);
  const float top = src[y0 * sw + x0] * (1.f - fx) + src[y0 * sw + x1] * fx;
  const float bottom = src[y1 * sw + x0] * (1.f - fx) + src[y1 * sw + x1] * fx;
  return top * (1.f - fy) + bottom * fy;
}

// Polynomial expansion, vertical pass: the 0th, 1st and 2nd moments of the image column around
// row y under the applicability g (edge rows replicated).
DTC_FB_HD void poly_vertical_at(const float* img, int h, int w, int y, int x, const PolyBasis& b, float out[3]) {
  const float c = img[y * w + x];
  float m0 = b.g[0] * c, m1 = 0.f, m2 = 0.f;
  for (int k = 1; k <= b.n; ++k) {
    const float up = img[clamp_index(y - k, h) * w + x];
    const float down = img[clamp_index(y + k, h) * w + x];
    const float sum = up + down;
    m0 += b.g[k] * sum;
    m1 += b.xg[k] * (down - up);
    m2 += b.xxg[k] * sum;
  }
  out[0] = m0;
  out[1] = m1;
  out[2] = m2;
}

// Polynomial expansion, horizontal pass over the three vertical-moment planes (`moments` holds
// three h×w planes), giving the five coefficients [b_y, b_x, a_yy, a_xx, a_xy] at (x, y).
DTC_FB_HD void poly_horizontal_at(const float* moments, int h, int w, int y, int x, const PolyBasis& b,
                                  float out[5]) {
  const int64_t plane = int64_t(h) * w;
  const float* v0 = moments + int64_t(y) * w;
  const float* v1 = v0 + plane;
  const float* v2 = v1 + plane;
  const float g0 = b.g[0];
  // Moments: s_1 = Σ g g f, s_x, s_y, s_xx, s_yy, s_xy.
  float s1 = v0[x] * g0, sx = 0.f, sy = v1[x] * g0, sxx = 0.f, syy = v2[x] * g0, sxy = 0.f;
  for (int k = 1; k <= b.n; ++k) {
    const int l = clamp_index(x - k, w), r = clamp_index(x + k, w);
    const float sum0 = v0[r] + v0[l];
    s1 += b.g[k] * sum0;
    sxx += b.xxg[k] * sum0;
    sx += b.xg[k] * (v0[r] - v0[l]);
    sy += b.g[k] * (v1[r] + v1[l]);
    sxy += b.xg[k] * (v1[r] - v1[l]);
    syy += b.g[k] * (v2[r] + v2[l]);
  }
  out[0] = sy * b.ig11;
  out[1] = sx * b.ig11;
  // OpenCV keeps only the dominant terms of the inverse Gram matrix for the quadratic
  // coefficients (the x²/y² cross term is left out); kept for parity.
  out[2] = s1 * b.ig03 + syy * b.ig33;
  out[3] = s1 * b.ig03 + sxx * b.ig33;
  out[4] = sxy * b.ig55;
}

// Down-weighting of the five outermost rows and columns, where the expansion saw replicated
// pixels (OpenCV's values).
DTC_FB_HD float border_weight(int i) {
  return i < 2 ? 0.14f : 0.4472f;
}

// The normal equations at (x, y) for the current flow estimate: next's expansion is sampled
// bilinearly at p + d(p), averaged with prev's, and turned into AᵀA and Aᵀ·Δb (Farnebäck's
// displacement constraint A d = Δb with Δb = (b_prev − b_next)/2 + A d̃).
DTC_FB_HD void update_matrices_at(const float* R0, const float* R1, const float* flow, int h, int w, int y, int x,
                                  float out[5]) {
  const int64_t plane = int64_t(h) * w;
  const int64_t i = int64_t(y) * w + x;
  const float dx = flow[i], dy = flow[plane + i];
  const float fx = float(x) + dx, fy = float(y) + dy;
  const float flx = DTC_FB_FLOORF(fx), fly = DTC_FB_FLOORF(fy);
  float r0, r1;  // next's linear coefficients at p + d: b_y, b_x
  // Non-finite sample points fall into the "outside" branch: comparisons with NaN are false.
  const bool inside = flx >= 0.f && fly >= 0.f && flx < float(w - 1) && fly < float(h - 1);
  float a_yy, a_xx, a_xy;
  if (inside) {
    const int x1 = int(flx), y1 = int(fly);
    const float wx = fx - flx, wy = fy - fly;
    const float a00 = (1.f - wx) * (1.f - wy), a01 = wx * (1.f - wy), a10 = (1.f - wx) * wy, a11 = wx * wy;
    const int64_t j = int64_t(y1) * w + x1;
    float s[5];
    for (int c = 0; c < 5; ++c) {
      const float* p = R1 + c * plane + j;
      s[c] = a00 * p[0] + a01 * p[1] + a10 * p[w] + a11 * p[w + 1];
    }
    r0 = s[0];
    r1 = s[1];
    a_yy = (R0[2 * plane + i] + s[2]) * 0.5f;
    a_xx = (R0[3 * plane + i] + s[3]) * 0.5f;
    a_xy = (R0[4 * plane + i] + s[4]) * 0.25f;
  } else {
    // Outside next: no linear term to compare with, keep prev's quadratic term.
    r0 = r1 = 0.f;
    a_yy = R0[2 * plane + i];
    a_xx = R0[3 * plane + i];
    a_xy = R0[4 * plane + i] * 0.5f;
  }
  float db_y = (R0[i] - r0) * 0.5f + a_yy * dy + a_xy * dx;
  float db_x = (R0[plane + i] - r1) * 0.5f + a_xy * dy + a_xx * dx;
  constexpr int kBorder = 5;
  if (x < kBorder || y < kBorder || x >= w - kBorder || y >= h - kBorder) {
    float scale = 1.f;
    if (x < kBorder) scale *= border_weight(x);
    if (x >= w - kBorder) scale *= border_weight(w - x - 1);
    if (y < kBorder) scale *= border_weight(y);
    if (y >= h - kBorder) scale *= border_weight(h - y - 1);
    db_y *= scale;
    db_x *= scale;
    a_yy *= scale;
    a_xx *= scale;
    a_xy *= scale;
  }
  out[0] = a_yy * a_yy + a_xy * a_xy;
  out[1] = (a_yy + a_xx) * a_xy;
  out[2] = a_xx * a_xx + a_xy * a_xy;
  out[3] = a_yy * db_y + a_xy * db_x;
  out[4] = a_xy * db_y + a_xx * db_x;
}

// Window sum, one separable pass over the five M planes (edge rows/columns replicated). A box
// window has unit taps (its 1/winsize² normalisation is applied in `solve_flow`).
DTC_FB_HD void window_at(const float* M, int h, int w, int y, int x, const WindowKernel& k, bool vertical,
                         float out[5]) {
  const int64_t plane = int64_t(h) * w;
  const int64_t c = int64_t(y) * w + x;
  for (int ch = 0; ch < 5; ++ch) out[ch] = k.taps[0] * M[ch * plane + c];
  const int64_t stride = vertical ? w : 1;
  if (vertical ? (y >= k.radius && y + k.radius < h) : (x >= k.radius && x + k.radius < w)) {
    for (int ch = 0; ch < 5; ++ch) {
      const float* m = M + ch * plane + c;
      float acc = out[ch];
      for (int r = 1; r <= k.radius; ++r) acc += k.taps[r] * (m[-r * stride] + m[r * stride]);
      out[ch] = acc;
    }
    return;
  }
  for (int r = 1; r <= k.radius; ++r) {
    int64_t a, b;
    if (vertical) {
      a = int64_t(clamp_index(y - r, h)) * w + x;
      b = int64_t(clamp_index(y + r, h)) * w + x;
    } else {
      a = int64_t(y) * w + clamp_index(x - r, w);
      b = int64_t(y) * w + clamp_index(x + r, w);
    }
    for (int ch = 0; ch < 5; ++ch) out[ch] += k.taps[r] * (M[ch * plane + a] + M[ch * plane + b]);
  }
}

// Solves the windowed 2×2 system G d = h; the 1e-3 on the determinant (OpenCV's) keeps
// textureless regions at a small displacement instead of dividing by zero. It is an absolute
// constant, so the result depends on the intensity scale: inputs are on the 0–255 scale.
DTC_FB_HD void solve_flow(const float m[5], float scale, float* dx, float* dy) {
  const double g11 = double(m[0]) * scale, g12 = double(m[1]) * scale, g22 = double(m[2]) * scale;
  const double h1 = double(m[3]) * scale, h2 = double(m[4]) * scale;
  const double idet = 1.0 / (g11 * g22 - g12 * g12 + 1e-3);
  *dx = float((g11 * h2 - g12 * h1) * idet);
  *dy = float((g22 * h1 - g12 * h2) * idet);
}

// Median of a (2r+1)×(2r+1) neighbourhood (r = 1 or 2), edge pixels replicated.
DTC_FB_HD float median_at(const float* plane, int h, int w, int y, int x, int r) {
  float v[25];
  int n = 0;
  for (int dy = -r; dy <= r; ++dy) {
    const int yy = clamp_index(y + dy, h);
    for (int dx = -r; dx <= r; ++dx) v[n++] = plane[yy * w + clamp_index(x + dx, w)];
  }
  // Partial selection sort up to the middle element: n ≤ 25, branch-light enough for both backends.
  const int mid = n / 2;
  for (int i = 0; i <= mid; ++i) {
    int best = i;
    for (int j = i + 1; j < n; ++j) best = v[j] < v[best] ? j : best;
    const float t = v[i];
    v[i] = v[best];
    v[best] = t;
  }
  return v[mid];
}

}  // namespace dtc::math::farneback
