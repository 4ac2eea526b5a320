// CPU kernel of dtc::farneback, written as row passes rather than per-pixel calls (docs/design.md,
// "Farnebäck on the CPU"):
//  - every stage walks whole rows with the taps in the outer loop and the pixels in the inner one, so
//    the compiler vectorises it (DTC_SIMD_CLONES builds AVX-512, AVX2 and baseline copies);
//  - the box window sums are running sums in double (add the row entering the window, subtract the
//    one leaving), O(1) per pixel instead of 2·winsize taps, as OpenCV does;
//  - the pyramid's full-resolution pre-smoothing is computed only on the source rows the level's
//    bilinear resize reads (a quarter of them at scale 1/8);
//  - one pair is split into bands of kBandRows rows, the unit of parallel work, so two threads help
//    at batch 1; the M planes of the next iteration are built right after a band's flow is solved,
//    while its rows are still in cache.
// Per-pixel formulas are those of ops/common/farneback_math.h (the CUDA twin calls them pixel by
// pixel), evaluated in the same order, except the box window: its double running sums round
// differently from the CUDA kernel's float tap sums. The file is compiled with -ffp-contract=off
// (CMakeLists.txt): every instruction-set copy rounds alike, and no fused multiply-add perturbs the
// nearly singular normal equations next to the border (FMA rounding there moved a few flows of
// identical frames past OpenCV's by more than 1e-4 px). Agreement between the two is held to the
// tolerance docs/design.md states (tests/flow/test_farneback.py). Each output element has one
// writer and band boundaries do not depend on the thread count, so results are deterministic and
// independent of it.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "ops/cpu/x86_gather.h"

#include "ops/common/farneback_math.h"
#include "ops/cpu/simd_math.h"
#include "ops/farneback.h"

namespace dtc::ops {
namespace {

namespace fb = math::farneback;

// Rows per unit of parallel work. A constant, not a function of the thread count: the box window's
// running sums restart at each band, so the band edges must not move when the thread count does.
constexpr int kBandRows = 32;

// Calls f(plane, y_begin, y_end) for bands of rows of `planes` planes of h rows, across threads.
template <typename F>
void for_each_band(int64_t planes, int h, const F& f) {
  const int64_t bands = (h + kBandRows - 1) / kBandRows;
  at::parallel_for(0, planes * bands, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int y0 = int(i % bands) * kBandRows;
      f(i / bands, y0, std::min(h, y0 + kBandRows));
    }
  });
}

// ---- Pyramid: pre-smoothing and resize -------------------------------------------------------------

// Rows past the plane's edge: reflected without repeating the edge row (the pyramid smoothing,
// fb::smooth_at) or replicated (the Gaussian window, fb::window_at).
enum class RowEdge { reflect101, replicate };

// One row of a vertical pass of a symmetric kernel: taps[0] on row y, taps[r] on rows y - r and y + r,
// summed in fb::smooth_at's and fb::window_at's order.
DTC_SIMD_CLONES void vertical_taps_row(const float* plane, int H, int W, int y, const float* taps, int radius,
                                       RowEdge edge, float* __restrict out) {
  const float* c = plane + int64_t(y) * W;
  for (int x = 0; x < W; ++x) out[x] = taps[0] * c[x];
  for (int r = 1; r <= radius; ++r) {
    const int above = edge == RowEdge::reflect101 ? fb::reflect101_index(y - r, H) : fb::clamp_index(y - r, H);
    const int below = edge == RowEdge::reflect101 ? fb::reflect101_index(y + r, H) : fb::clamp_index(y + r, H);
    const float* __restrict a = plane + int64_t(above) * W;
    const float* __restrict b = plane + int64_t(below) * W;
    const float t = taps[r];
    for (int x = 0; x < W; ++x) out[x] += t * (a[x] + b[x]);
  }
}

// One row of a horizontal pass of a symmetric kernel over a row padded by `radius` columns on each
// side (reflect-101 for the pyramid smoothing, replicated for the Gaussian window): the sums of
// fb::smooth_at and fb::window_at in their order.
DTC_SIMD_CLONES void horizontal_taps_row(const float* padded, int W, const float* taps, int radius,
                                           float* __restrict out) {
  const float* c = padded + radius;
  for (int x = 0; x < W; ++x) out[x] = taps[0] * c[x];
  for (int r = 1; r <= radius; ++r) {
    const float* __restrict a = c - r;
    const float* __restrict b = c + r;
    const float t = taps[r];
    for (int x = 0; x < W; ++x) out[x] += t * (a[x] + b[x]);
  }
}

// Column half of fb::resize_at, tabulated once per level.
struct ResizeColumns {
  std::vector<int> x0, x1;
  std::vector<float> fx;
  ResizeColumns(int dst_w, int src_w) : x0(dst_w), x1(dst_w), fx(dst_w) {
    for (int x = 0; x < dst_w; ++x) fb::resize_coordinate(x, dst_w, src_w, &x0[x], &x1[x], &fx[x]);
  }
};

// One destination row of fb::resize_at from its two source rows, times `multiplier` (the flow's
// rescaling between levels; 1 for images).
void resize_row(const float* top_row, const float* bottom_row, float fy, const ResizeColumns& cols, int w,
                float multiplier, float* __restrict out) {
  for (int x = 0; x < w; ++x) {
    const int x0 = cols.x0[x], x1 = cols.x1[x];
    const float fx = cols.fx[x];
    const float top = top_row[x0] * (1.f - fx) + top_row[x1] * fx;
    const float bottom = bottom_row[x0] * (1.f - fx) + bottom_row[x1] * fx;
    out[x] = (top * (1.f - fy) + bottom * fy) * multiplier;
  }
}

// The level's images: full-resolution pre-smoothing, then bilinear resize. Only the source rows a
// destination row samples are smoothed (both passes, all columns), so a coarse level costs a
// fraction of the full-resolution blur the per-pixel formulation computes.
void build_level_images(const float* images, int64_t planes, int H, int W, const FarnebackLevel& level,
                        float* level_images) {
  const int h = level.height, w = level.width;
  const int radius = level.smooth.radius;
  const float* taps = level.smooth.taps;
  const bool resized = h != H || w != W;
  const ResizeColumns cols(w, W);
  for_each_band(planes, h, [&](int64_t p, int y_begin, int y_end) {
    const float* src = images + p * int64_t(H) * W;
    float* dst = level_images + p * int64_t(h) * w;
    std::vector<float> vertical(W), padded(W + 2 * radius), rows(2 * int64_t(W));
    auto smooth_row = [&](int y, float* out) {
      vertical_taps_row(src, H, W, y, taps, radius, RowEdge::reflect101, vertical.data());
      std::copy(vertical.begin(), vertical.end(), padded.begin() + radius);
      for (int j = 1; j <= radius; ++j) {
        padded[radius - j] = vertical[fb::reflect101_index(-j, W)];
        padded[radius + W - 1 + j] = vertical[fb::reflect101_index(W - 1 + j, W)];
      }
      horizontal_taps_row(padded.data(), W, taps, radius, out);
    };
    for (int y = y_begin; y < y_end; ++y) {
      if (!resized) {
        smooth_row(y, dst + int64_t(y) * w);
        continue;
      }
      int y0, y1;
      float fy;
      fb::resize_coordinate(y, h, H, &y0, &y1, &fy);
      smooth_row(y0, rows.data());
      if (y1 != y0) smooth_row(y1, rows.data() + W);
      resize_row(rows.data(), y1 != y0 ? rows.data() + W : rows.data(), fy, cols, w, 1.f, dst + int64_t(y) * w);
    }
  });
}

// ---- Polynomial expansion ---------------------------------------------------------------------------

// Vertical moments of row y (fb::poly_vertical_at's sums), written after n replicated columns on each
// side of three padded rows, ready for the horizontal pass.
DTC_SIMD_CLONES void poly_vertical_row(const float* img, int h, int w, int y, const fb::PolyBasis& b,
                                       float* __restrict m0, float* __restrict m1, float* __restrict m2) {
  const float* c = img + int64_t(y) * w;
  const float g0 = b.g[0];
  for (int x = 0; x < w; ++x) {
    m0[x] = g0 * c[x];
    m1[x] = 0.f;
    m2[x] = 0.f;
  }
  for (int k = 1; k <= b.n; ++k) {
    const float* __restrict up = img + int64_t(fb::clamp_index(y - k, h)) * w;
    const float* __restrict down = img + int64_t(fb::clamp_index(y + k, h)) * w;
    const float g = b.g[k], xg = b.xg[k], xxg = b.xxg[k];
    for (int x = 0; x < w; ++x) {
      const float sum = up[x] + down[x];
      m0[x] += g * sum;
      m1[x] += xg * (down[x] - up[x]);
      m2[x] += xxg * sum;
    }
  }
}

// acc[x] += t·(r[x] + l[x]) and acc[x] += t·(r[x] − l[x]) over one row: the building blocks of the
// expansion's horizontal pass. (Kept as separate simple loops: GCC did not vectorise the six
// accumulations written as one loop body.)
DTC_SIMD_CLONES void accumulate_sum(const float* __restrict l, const float* __restrict r, float t, int w,
                                    float* __restrict acc) {
  for (int x = 0; x < w; ++x) acc[x] += t * (r[x] + l[x]);
}

DTC_SIMD_CLONES void accumulate_difference(const float* __restrict l, const float* __restrict r, float t, int w,
                                           float* __restrict acc) {
  for (int x = 0; x < w; ++x) acc[x] += t * (r[x] - l[x]);
}

DTC_SIMD_CLONES void scale_row(const float* __restrict v, float t, int w, float* __restrict out) {
  for (int x = 0; x < w; ++x) out[x] = v[x] * t;
}

DTC_SIMD_CLONES void quadratic_row(const float* __restrict s1, const float* __restrict s2, float ig03, float ig33,
                                   int w, float* __restrict out) {
  for (int x = 0; x < w; ++x) out[x] = s1[x] * ig03 + s2[x] * ig33;
}

// Horizontal pass (fb::poly_horizontal_at's sums, in its order) over three moment rows padded by n
// replicated columns, writing the five coefficient rows. `acc` is scratch for six rows of w.
void poly_horizontal_row(const float* v0, const float* v1, const float* v2, int w, const fb::PolyBasis& b,
                         float* acc, float* const* R) {
  float* s1 = acc;
  float* sx = acc + w;
  float* sy = acc + 2 * w;
  float* sxx = acc + 3 * w;
  float* syy = acc + 4 * w;
  float* sxy = acc + 5 * w;
  scale_row(v0, b.g[0], w, s1);
  std::fill(sx, sx + w, 0.f);
  scale_row(v1, b.g[0], w, sy);
  std::fill(sxx, sxx + w, 0.f);
  scale_row(v2, b.g[0], w, syy);
  std::fill(sxy, sxy + w, 0.f);
  for (int k = 1; k <= b.n; ++k) {
    accumulate_sum(v0 - k, v0 + k, b.g[k], w, s1);
    accumulate_sum(v0 - k, v0 + k, b.xxg[k], w, sxx);
    accumulate_difference(v0 - k, v0 + k, b.xg[k], w, sx);
    accumulate_sum(v1 - k, v1 + k, b.g[k], w, sy);
    accumulate_difference(v1 - k, v1 + k, b.xg[k], w, sxy);
    accumulate_sum(v2 - k, v2 + k, b.g[k], w, syy);
  }
  scale_row(sy, b.ig11, w, R[0]);
  scale_row(sx, b.ig11, w, R[1]);
  quadratic_row(s1, syy, b.ig03, b.ig33, w, R[2]);
  quadratic_row(s1, sxx, b.ig03, b.ig33, w, R[3]);
  scale_row(sxy, b.ig55, w, R[4]);
}

// R [planes, 5, h, w] of the level images [planes, h, w].
void polynomial_expansion(const float* level_images, int64_t planes, int h, int w, const fb::PolyBasis& basis,
                          float* R) {
  const int64_t hw = int64_t(h) * w;
  const int n = basis.n;
  for_each_band(planes, h, [&](int64_t p, int y_begin, int y_end) {
    const int64_t padded_w = w + 2 * n;
    std::vector<float> moments(3 * padded_w), acc(6 * int64_t(w));
    float* m[3] = {moments.data(), moments.data() + padded_w, moments.data() + 2 * padded_w};
    for (int y = y_begin; y < y_end; ++y) {
      poly_vertical_row(level_images + p * hw, h, w, y, basis, m[0] + n, m[1] + n, m[2] + n);
      for (int c = 0; c < 3; ++c) {
        // The expansion replicates the edge columns (fb::poly_horizontal_at clamps its index).
        std::fill(m[c], m[c] + n, m[c][n]);
        std::fill(m[c] + n + w, m[c] + padded_w, m[c][n + w - 1]);
      }
      float* rows[5];
      for (int c = 0; c < 5; ++c) rows[c] = R + (p * 5 + c) * hw + int64_t(y) * w;
      poly_horizontal_row(m[0] + n, m[1] + n, m[2] + n, w, basis, acc.data(), rows);
    }
  });
}

// ---- Normal equations and window sums ----------------------------------------------------------------

// Row y of the five M planes for the current flow: fb::update_matrices_at split into three passes over
// the row, so that the arithmetic vectorises and only the bilinear gathers from next's expansion at
// p + d(p) stay scalar or use AVX2 gathers. The formulas and their order are update_matrices_at's, and
// the branches become selects (both sides are computed; the unused one is discarded).
struct UpdateScratch {
  std::vector<int32_t> offset;  // floor(y + dy)·w + floor(x + dx) into next's planes; 0 outside next
  std::vector<uint32_t> inside;  // all ones where the bilinear footprint lies inside next
  std::vector<float> weights;    // four rows: a00, a01, a10, a11
  std::vector<float> samples;    // five rows: next's coefficients at p + d(p)
  std::vector<float> column_scale;  // the border down-weighting of each column
  explicit UpdateScratch(int w)
      : offset(w), inside(w), weights(4 * int64_t(w)), samples(5 * int64_t(w)), column_scale(w) {
    for (int x = 0; x < w; ++x) {
      float scale = 1.f;
      if (x < 5) scale *= fb::border_weight(x);
      if (x >= w - 5) scale *= fb::border_weight(w - x - 1);
      column_scale[x] = scale;
    }
  }
};

DTC_SIMD_CLONES void sample_positions_row(const float* __restrict dx, const float* __restrict dy, int h,
                                                        int w, int y, int32_t* __restrict offset,
                                                        uint32_t* __restrict inside, float* __restrict weights) {
  float* __restrict a00 = weights;
  float* __restrict a01 = weights + w;
  float* __restrict a10 = weights + 2 * w;
  float* __restrict a11 = weights + 3 * w;
  for (int x = 0; x < w; ++x) {
    const float fx = float(x) + dx[x], fy = float(y) + dy[x];
    // Non-finite flows compare false below: outside.
    const float flx = simd::floor(fx), fly = simd::floor(fy);
    const bool in = (flx >= 0.f) & (fly >= 0.f) & (flx < float(w - 1)) & (fly < float(h - 1));
    const float wx = fx - flx, wy = fy - fly;
    a00[x] = (1.f - wx) * (1.f - wy);
    a01[x] = wx * (1.f - wy);
    a10[x] = (1.f - wx) * wy;
    a11[x] = wx * wy;
    offset[x] = int32_t(simd::select(in, fly, 0.f)) * w + int32_t(simd::select(in, flx, 0.f));
    inside[x] = in ? ~0u : 0u;
  }
}

// Next's five coefficient planes at p + d(p) for pixels [begin, w) of the row: the bilinear sum of
// update_matrices_at, in its order.
void bilinear_samples_portable(const float* R1, int64_t hw, int w, const int32_t* __restrict offset,
                                             const float* weights, int begin, float* samples) {
  const float *a00 = weights, *a01 = weights + w, *a10 = weights + 2 * w, *a11 = weights + 3 * w;
  for (int c = 0; c < 5; ++c) {
    const float* plane = R1 + c * hw;
    float* __restrict out = samples + c * int64_t(w);
    for (int x = begin; x < w; ++x) {
      const float* p = plane + offset[x];
      out[x] = a00[x] * p[0] + a01[x] * p[1] + a10[x] * p[w] + a11[x] * p[w + 1];
    }
  }
}

#if DTC_X86_GATHER
// The same sums eight pixels at a time with AVX2 gathers, chosen at run time (GCC's generic tuning
// never emits gather instructions from the plain loop). Separate multiplies and adds in the portable
// loop's order (the target has no FMA), so both give the same bits.
__attribute__((target("avx2"))) void bilinear_samples_avx2(const float* R1, int64_t hw, int w, const int32_t* offset,
                                                           const float* weights, float* samples) {
  const float *a00 = weights, *a01 = weights + w, *a10 = weights + 2 * w, *a11 = weights + 3 * w;
  const int vector_end = w - w % 8;
  for (int c = 0; c < 5; ++c) {
    const float* plane = R1 + c * hw;
    float* out = samples + c * int64_t(w);
    for (int x = 0; x < vector_end; x += 8) {
      const __m256i j = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(offset + x));
      __m256 sum = _mm256_mul_ps(_mm256_loadu_ps(a00 + x), _mm256_i32gather_ps(plane, j, 4));
      sum = _mm256_add_ps(sum, _mm256_mul_ps(_mm256_loadu_ps(a01 + x), _mm256_i32gather_ps(plane + 1, j, 4)));
      sum = _mm256_add_ps(sum, _mm256_mul_ps(_mm256_loadu_ps(a10 + x), _mm256_i32gather_ps(plane + w, j, 4)));
      sum = _mm256_add_ps(sum, _mm256_mul_ps(_mm256_loadu_ps(a11 + x), _mm256_i32gather_ps(plane + w + 1, j, 4)));
      _mm256_storeu_ps(out + x, sum);
    }
  }
  bilinear_samples_portable(R1, hw, w, offset, weights, vector_end, samples);
}
#endif

void bilinear_samples_row(const float* R1, int64_t hw, int w, const int32_t* offset, const float* weights,
                          float* samples) {
#if DTC_X86_GATHER
  if (simd::cpu_has_avx2()) return bilinear_samples_avx2(R1, hw, w, offset, weights, samples);
#endif
  bilinear_samples_portable(R1, hw, w, offset, weights, 0, samples);
}

// prev_row: row y of prev's first coefficient plane (planes hw apart); g11..h2: row y of the M planes.
// (GCC vectorises the stores only through restrict parameters, not through restrict locals.)
DTC_SIMD_CLONES void normal_equations_row(const float* prev_row, int64_t hw, const float* samples,
                                                        const uint32_t* __restrict inside, const float* __restrict dx,
                                                        const float* __restrict dy,
                                                        const float* __restrict column_scale, float top, float bottom,
                                                        int w, float* __restrict g11, float* __restrict g12,
                                                        float* __restrict g22, float* __restrict h1,
                                                        float* __restrict h2) {
  const float *__restrict q0 = prev_row, *__restrict q1 = prev_row + hw, *__restrict q2 = prev_row + 2 * hw;
  const float *__restrict q3 = prev_row + 3 * hw, *__restrict q4 = prev_row + 4 * hw;
  const float *__restrict s0 = samples, *__restrict s1 = samples + w, *__restrict s2 = samples + 2 * w;
  const float *__restrict s3 = samples + 3 * w, *__restrict s4 = samples + 4 * w;
  for (int x = 0; x < w; ++x) {
    const bool in = inside[x] != 0;
    // Outside next there is no linear term to compare with and prev's quadratic term is kept.
    const float r0 = simd::select(in, s0[x], 0.f), r1 = simd::select(in, s1[x], 0.f);
    float a_yy = simd::select(in, (q2[x] + s2[x]) * 0.5f, q2[x]);
    float a_xx = simd::select(in, (q3[x] + s3[x]) * 0.5f, q3[x]);
    float a_xy = simd::select(in, (q4[x] + s4[x]) * 0.25f, q4[x] * 0.5f);
    float db_y = (q0[x] - r0) * 0.5f + a_yy * dy[x] + a_xy * dx[x];
    float db_x = (q1[x] - r1) * 0.5f + a_xy * dy[x] + a_xx * dx[x];
    // update_matrices_at's product in its order (factors of 1 are exact, so scaling the interior
    // by 1 changes nothing).
    const float scale = (column_scale[x] * top) * bottom;
    db_y *= scale;
    db_x *= scale;
    a_yy *= scale;
    a_xx *= scale;
    a_xy *= scale;
    g11[x] = a_yy * a_yy + a_xy * a_xy;
    g12[x] = (a_yy + a_xx) * a_xy;
    g22[x] = a_xx * a_xx + a_xy * a_xy;
    h1[x] = a_yy * db_y + a_xy * db_x;
    h2[x] = a_xy * db_y + a_xx * db_x;
  }
}

void update_matrices_row(const float* R0, const float* R1, const float* flow, int h, int w, int y, float* M,
                         UpdateScratch& scratch) {
  const int64_t hw = int64_t(h) * w;
  const int64_t row = int64_t(y) * w;
  const float* dx = flow + row;
  const float* dy = flow + hw + row;
  sample_positions_row(dx, dy, h, w, y, scratch.offset.data(), scratch.inside.data(), scratch.weights.data());
  bilinear_samples_row(R1, hw, w, scratch.offset.data(), scratch.weights.data(), scratch.samples.data());
  const float top = y < 5 ? fb::border_weight(y) : 1.f;
  const float bottom = y >= h - 5 ? fb::border_weight(h - y - 1) : 1.f;
  normal_equations_row(R0 + row, hw, scratch.samples.data(), scratch.inside.data(), dx, dy,
                       scratch.column_scale.data(), top, bottom, w, M + row, M + hw + row, M + 2 * hw + row,
                       M + 3 * hw + row, M + 4 * hw + row);
}

// fb::solve_flow on one row of windowed sums (five rows of w doubles), vectorised across the row.
DTC_SIMD_CLONES void solve_row(const double* sums, int w, double scale, float* __restrict dx, float* __restrict dy) {
  const double* __restrict s11 = sums;
  const double* __restrict s12 = sums + w;
  const double* __restrict s22 = sums + 2 * w;
  const double* __restrict sh1 = sums + 3 * w;
  const double* __restrict sh2 = sums + 4 * w;
  for (int x = 0; x < w; ++x) {
    const double g11 = s11[x] * scale, g12 = s12[x] * scale, g22 = s22[x] * scale;
    const double h1 = sh1[x] * scale, h2 = sh2[x] * scale;
    const double idet = 1.0 / (g11 * g22 - g12 * g12 + 1e-3);
    dx[x] = float((g11 * h2 - g12 * h1) * idet);
    dy[x] = float((g22 * h1 - g12 * h2) * idet);
  }
}

// Box window, vertical running sum: column sums over rows [y - m, y + m] (edge rows replicated)
// move from row y - 1 to row y by adding the entering row and subtracting the leaving one.
DTC_SIMD_CLONES void add_row(const float* __restrict add, const float* __restrict sub, int w,
                             double* __restrict sums) {
  for (int x = 0; x < w; ++x) sums[x] += double(add[x]) - double(sub[x]);
}

DTC_SIMD_CLONES void init_row(const float* __restrict add, int w, double* __restrict sums) {
  for (int x = 0; x < w; ++x) sums[x] += double(add[x]);
}

// Box window, horizontal running sums of the five padded rows of column sums (m replicated columns
// on each side, rows padded_w apart) into five rows of w window sums. The five channels advance
// together: five independent dependency chains instead of one at a time.
void box_horizontal_rows(const double* padded, int64_t padded_w, int w, int m, double* __restrict out) {
  double acc[5] = {0, 0, 0, 0, 0};
  for (int c = 0; c < 5; ++c) {
    for (int j = 0; j <= 2 * m; ++j) acc[c] += padded[c * padded_w + j];
    out[c * w] = acc[c];
  }
  for (int x = 1; x < w; ++x) {
    for (int c = 0; c < 5; ++c) {
      const double* p = padded + c * padded_w;
      acc[c] += p[x + 2 * m] - p[x - 1];
      out[c * w + x] = acc[c];
    }
  }
}

// Solves every row of one band: windowed sums of the M planes -> flow; then, unless this is the last
// iteration, rebuilds the band's rows of the next iteration's M planes from the new flow.
void window_solve_band(const FarnebackPlan& plan, const float* M, const float* R0, const float* R1, float* flow,
                       float* next_M, int h, int w, int y_begin, int y_end) {
  const int64_t hw = int64_t(h) * w;
  const int m = plan.window.radius;
  const int64_t padded_w = w + 2 * int64_t(m);
  std::vector<double> sums(5 * int64_t(w));
  UpdateScratch scratch(w);
  if (!plan.gaussian_window) {
    // Column sums per channel, padded by m on each side for the horizontal running sum.
    std::vector<double> columns(5 * padded_w, 0.0);
    auto column = [&](int c) { return columns.data() + c * padded_w; };
    for (int c = 0; c < 5; ++c) {
      const float* plane = M + c * hw;
      for (int r = -m; r <= m; ++r) init_row(plane + int64_t(fb::clamp_index(y_begin + r, h)) * w, w, column(c) + m);
    }
    for (int y = y_begin; y < y_end; ++y) {
      for (int c = 0; c < 5; ++c) {
        double* col = column(c);
        if (y > y_begin) {
          const float* plane = M + c * hw;
          add_row(plane + int64_t(fb::clamp_index(y + m, h)) * w, plane + int64_t(fb::clamp_index(y - m - 1, h)) * w,
                  w, col + m);
        }
        std::fill(col, col + m, col[m]);
        std::fill(col + m + w, col + padded_w, col[m + w - 1]);
      }
      box_horizontal_rows(columns.data(), padded_w, w, m, sums.data());
      solve_row(sums.data(), w, double(plan.window_scale), flow + int64_t(y) * w, flow + hw + int64_t(y) * w);
      if (next_M) update_matrices_row(R0, R1, flow, h, w, y, next_M, scratch);
    }
    return;
  }
  const float* taps = plan.window.taps;
  std::vector<float> vertical(padded_w), horizontal(w);
  for (int y = y_begin; y < y_end; ++y) {
    for (int c = 0; c < 5; ++c) {
      vertical_taps_row(M + c * hw, h, w, y, taps, m, RowEdge::replicate, vertical.data() + m);
      std::fill(vertical.begin(), vertical.begin() + m, vertical[m]);
      std::fill(vertical.begin() + m + w, vertical.end(), vertical[m + w - 1]);
      horizontal_taps_row(vertical.data(), w, taps, m, horizontal.data());
      double* s = sums.data() + c * w;
      for (int x = 0; x < w; ++x) s[x] = double(horizontal[x]);
    }
    solve_row(sums.data(), w, double(plan.window_scale), flow + int64_t(y) * w, flow + hw + int64_t(y) * w);
    if (next_M) update_matrices_row(R0, R1, flow, h, w, y, next_M, scratch);
  }
}

// ---- Median post-filter -------------------------------------------------------------------------------

inline void sort_pair(float& a, float& b) {
  const bool swap = b < a;
  const float lo = simd::select(swap, b, a), hi = simd::select(swap, a, b);
  a = lo;
  b = hi;
}

// 3×3 median of the interior pixels of one output row from the rows above, at and below it: Paeth's
// 19-exchange selection network, branch-free so that it vectorises across the row. It returns the same
// value as the shared median_at (the median of the nine values is unique), which sorts per pixel and
// cost ~17 ms of a 69 ms 256×448 flow on one core.
DTC_SIMD_CLONES void median3_row(const float* up, const float* mid, const float* down, int w, float* out) {
  for (int x = 1; x < w - 1; ++x) {
    float p0 = up[x - 1], p1 = up[x], p2 = up[x + 1];
    float p3 = mid[x - 1], p4 = mid[x], p5 = mid[x + 1];
    float p6 = down[x - 1], p7 = down[x], p8 = down[x + 1];
    sort_pair(p1, p2), sort_pair(p4, p5), sort_pair(p7, p8), sort_pair(p0, p1), sort_pair(p3, p4);
    sort_pair(p6, p7), sort_pair(p1, p2), sort_pair(p4, p5), sort_pair(p7, p8), sort_pair(p0, p3);
    sort_pair(p5, p8), sort_pair(p4, p7), sort_pair(p3, p6), sort_pair(p1, p4), sort_pair(p2, p5);
    sort_pair(p4, p7), sort_pair(p4, p2), sort_pair(p6, p4), sort_pair(p4, p2);
    out[x] = p4;
  }
}

void median_filter(const float* src, int64_t planes, int H, int W, int radius, float* dst) {
  const int64_t HW = int64_t(H) * W;
  for_each_band(planes, H, [&](int64_t p, int y_begin, int y_end) {
    const float* plane = src + p * HW;
    for (int y = y_begin; y < y_end; ++y) {
      float* out_row = dst + p * HW + int64_t(y) * W;
      if (radius == 1 && W >= 3) {
        median3_row(plane + int64_t(fb::clamp_index(y - 1, H)) * W, plane + int64_t(y) * W,
                    plane + int64_t(fb::clamp_index(y + 1, H)) * W, W, out_row);
        out_row[0] = fb::median_at(plane, H, W, y, 0, 1);
        out_row[W - 1] = fb::median_at(plane, H, W, y, W - 1, 1);
      } else {
        for (int x = 0; x < W; ++x) out_row[x] = fb::median_at(plane, H, W, y, x, radius);
      }
    }
  });
}

// ---- The op -------------------------------------------------------------------------------------------

// The whole algorithm for N pairs: images [N, 2, H, W] (prev, next) in float, workspace of
// N·26·H·W floats, flow written to out [N, 2, H, W].
void farneback_chunk(const FarnebackPlan& plan, const float* images, int64_t N, int H, int W, float* workspace,
                     float* out) {
  const int64_t HW = int64_t(H) * W;
  float* level_images = workspace;
  float* R = level_images + N * 2 * HW;
  float* M = R + N * 10 * HW;
  float* next_M = M + N * 5 * HW;
  float* flow = next_M + N * 5 * HW;
  float* coarse_flow = flow + N * 2 * HW;
  int coarse_h = 0, coarse_w = 0;

  for (const FarnebackLevel& level : plan.levels) {
    const int h = level.height, w = level.width;
    const int64_t hw = int64_t(h) * w;
    build_level_images(images, 2 * N, H, W, level, level_images);
    polynomial_expansion(level_images, 2 * N, h, w, plan.basis, R);

    // Initial flow (zero at the coarsest level, else the coarser estimate upsampled) and the first M.
    const bool coarsest = coarse_h == 0;
    const ResizeColumns cols(w, std::max(coarse_w, 1));
    const float up = float(1. / plan.pyr_scale);
    for_each_band(N, h, [&](int64_t n, int y_begin, int y_end) {
      float* fl = flow + n * 2 * hw;
      UpdateScratch scratch(w);
      for (int y = y_begin; y < y_end; ++y) {
        for (int c = 0; c < 2; ++c) {
          float* row = fl + c * hw + int64_t(y) * w;
          if (coarsest) {
            std::fill(row, row + w, 0.f);
            continue;
          }
          int y0, y1;
          float fy;
          fb::resize_coordinate(y, h, coarse_h, &y0, &y1, &fy);
          const float* src = coarse_flow + (n * 2 + c) * int64_t(coarse_h) * coarse_w;
          resize_row(src + int64_t(y0) * coarse_w, src + int64_t(y1) * coarse_w, fy, cols, w, up, row);
        }
        update_matrices_row(R + n * 10 * hw, R + (n * 10 + 5) * hw, fl, h, w, y, M + n * 5 * hw, scratch);
      }
    });
    for (int it = 0; it < plan.iterations; ++it) {
      const bool last = it + 1 == plan.iterations;
      for_each_band(N, h, [&](int64_t n, int y_begin, int y_end) {
        window_solve_band(plan, M + n * 5 * hw, R + n * 10 * hw, R + (n * 10 + 5) * hw, flow + n * 2 * hw,
                          last ? nullptr : next_M + n * 5 * hw, h, w, y_begin, y_end);
      });
      std::swap(M, next_M);
    }
    std::swap(flow, coarse_flow);
    coarse_h = h;
    coarse_w = w;
  }

  // Optional median filter of each component (the authors' 3x3 post-filter). The finest level's flow
  // is in coarse_flow after the last swap.
  if (plan.median_radius == 0) {
    std::copy(coarse_flow, coarse_flow + N * 2 * HW, out);
  } else {
    median_filter(coarse_flow, 2 * N, H, W, plan.median_radius, out);
  }
}

at::Tensor farneback_cpu(const at::Tensor& prev, const at::Tensor& next, double pyr_scale, int64_t levels,
                         int64_t winsize, int64_t iterations, int64_t poly_n, double poly_sigma, bool gaussian_window,
                         int64_t median) {
  const FarnebackPlan plan = check_and_plan_farneback(prev, next, pyr_scale, levels, winsize, iterations, poly_n,
                                                      poly_sigma, gaussian_window, median);
  const int64_t N = prev.size(0);
  const int H = int(prev.size(2)), W = int(prev.size(3));
  const auto f32 = prev.options().dtype(at::kFloat).memory_format(at::MemoryFormat::Contiguous);
  at::Tensor out = at::empty({N, 2, H, W}, f32);
  if (N == 0) return out;

  const int64_t HW = int64_t(H) * W;
  // Pairs go through in chunks of as many pairs as threads (enough parallel bands even on the coarse
  // levels), all levels of a chunk before the next: a batch's working set would outgrow the caches,
  // and one workspace reused by every chunk spares the page faults of a fresh batch-sized one. Each
  // pair's flow depends on that pair alone, so the chunking does not change any result.
  const int64_t chunk = std::min<int64_t>(N, std::max(1, at::get_num_threads()));
  // One workspace for every level (each level is at most full resolution): level images [n, 2],
  // expansions R [n, 2, 5], M twice [n, 5] (this iteration's and the next's), flow twice [n, 2]
  // (this level's and the coarser one it starts from).
  at::Tensor workspace = at::empty({chunk * (2 + 10 + 10 + 4) * HW}, f32);
  for (int64_t first = 0; first < N; first += chunk) {
    const int64_t n_pairs = std::min(chunk, N - first);
    // Channel 0 of each pair is prev, channel 1 next; uint8 keeps its 0..255 values.
    const at::Tensor images =
        at::cat({prev.narrow(0, first, n_pairs), next.narrow(0, first, n_pairs)}, 1).to(at::kFloat).contiguous();
    farneback_chunk(plan, images.const_data_ptr<float>(), n_pairs, H, W, workspace.mutable_data_ptr<float>(),
                    out.mutable_data_ptr<float>() + first * 2 * HW);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dtc, CPU, m) { m.impl("farneback", TORCH_FN(farneback_cpu)); }

}  // namespace dtc::ops
