// CPU kernels of dtc::warp: parallel over image rows (forward, flow gradient) and over (n, c)
// planes (x gradient), so every output element has exactly one writer and results are
// deterministic without atomics.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <type_traits>
#include <vector>

#include "ops/cpu/x86_gather.h"

#include "ops/common/warp_math.h"
#include "ops/warp.h"

namespace dtc::ops {
namespace {

using math::BilinearTaps;

template <typename T>
void taps_for_row(const T* flow_x, const T* flow_y, int64_t y, int64_t W, int64_t H, math::Padding padding,
                  BilinearTaps<T>* taps) {
  for (int64_t x = 0; x < W; ++x) {
    taps[x] = math::bilinear_taps<T>(T(x) - flow_x[x], T(y) - flow_y[x], W, H, padding);
  }
}

template <typename T, typename Load>
inline void accumulate_coord_grad(const BilinearTaps<T>& t, int64_t W, Load load, T go, T* acc_x, T* acc_y) {
  T v00, v01, v10, v11, d_sx, d_sy;
  math::load_taps(t, W, load, &v00, &v01, &v10, &v11);
  math::interpolate_grad_coords(t, v00, v01, v10, v11, &d_sx, &d_sy);
  *acc_x += go * d_sx;
  *acc_y += go * d_sy;
}

// The forward's taps of one image row in structure-of-arrays form, so that the channel loop is a
// branch-free gather-and-blend the CPU can run eight pixels at a time. Out-of-image taps keep a valid
// index (0) and a zero mask: they read 0 through the mask rather than through a zero weight, so a
// non-finite value in x next to the border cannot leak in as 0 * inf. A non-finite sample point gets
// NaN weights, which make the output NaN whatever the taps read.
template <typename T>
struct RowTaps {
  explicit RowTaps(int64_t w)
      : index(4 * w), mask(4 * w), wx1(w), wy1(w), dx_dsx(w), dy_dsy(w), pair_index(w), pair_mask(2 * w), paired((w + 7) / 8), width(w) {}
  std::vector<int32_t> index;  // [tap][x], taps in the order 00, 01, 10, 11
  std::vector<int32_t> mask;   // all ones where the tap lies inside the image, else 0
  std::vector<T> wx1, wy1;
  std::vector<T> dx_dsx, dy_dsy;  // as in BilinearTaps (the backward's coordinate gradient); 0 where not finite
  // The AVX2 path's second form of the same taps. Where, in a block of 8 pixels, each row of taps is
  // either wholly inside the image or wholly outside it, a pixel's left and right taps are one 64-bit
  // read: half the gathered elements. pair_index holds the top-left tap of each pixel in the order
  // 0,1,4,5,2,3,6,7 (two gathers of four pairs whose even/odd halves shuffle back into pixel order),
  // pair_mask the 64-bit masks of the top pairs then the bottom pairs, in that order; paired[block]
  // says whether the block qualifies (blocks at the image border that straddle it do not).
  std::vector<int32_t> pair_index;
  std::vector<int64_t> pair_mask;  // [block][top 8, bottom 8]
  std::vector<uint8_t> paired;
  int64_t width;
  // The image rows the AVX2 fill saw taps in (from the eight-pixel blocks; a hint for prefetching, so
  // the row's tail may lie outside); empty (lowest > highest) after the portable fill.
  int64_t lowest_row = 0, highest_row = -1;

  const int32_t* tap_index(int k) const { return index.data() + k * width; }
  const int32_t* tap_mask(int k) const { return mask.data() + k * width; }

  void fill_pixel(const T* flow_x, const T* flow_y, int64_t y, int64_t H, math::Padding padding, int64_t x) {
    const int64_t W = width;
    const auto t = math::bilinear_taps<T>(T(x) - flow_x[x], T(y) - flow_y[x], W, H, padding);
    const bool inside[4] = {t.in_y0 && t.in_x0, t.in_y0 && t.in_x1, t.in_y1 && t.in_x0, t.in_y1 && t.in_x1};
    const int64_t i00 = t.y0 * W + t.x0;
    const int64_t offsets[4] = {0, 1, W, W + 1};
    for (int k = 0; k < 4; ++k) {
      index[k * W + x] = inside[k] ? int32_t(i00 + offsets[k]) : 0;
      mask[k * W + x] = inside[k] ? -1 : 0;
    }
    wx1[x] = t.finite ? t.wx1 : std::numeric_limits<T>::quiet_NaN();
    wy1[x] = t.finite ? t.wy1 : std::numeric_limits<T>::quiet_NaN();
    dx_dsx[x] = t.dx_dsx;
    dy_dsy[x] = t.dy_dsy;
  }

  void fill(const T* flow_x, const T* flow_y, int64_t y, int64_t H, math::Padding padding) {
    lowest_row = 0;
    highest_row = -1;
    for (int64_t x = 0; x < width; ++x) fill_pixel(flow_x, flow_y, y, H, padding, x);
  }
};

// Rows per band: the band's tables (bytes_per_pixel each) within ~384 KiB, so they and the source rows
// they read stay in L2; at most 32 rows.
int64_t band_rows(int64_t W, int64_t bytes_per_pixel) {
  return std::clamp<int64_t>((int64_t(384) << 10) / (bytes_per_pixel * W), 1, 32);
}

// A band's span of source rows as whole cache lines, prefetched into L2 in slices. Empty where the
// taps span more than the band plus 48 rows (large flows): then it would mostly evict useful lines.
struct NextPlaneRows {
  int64_t first_line = 0, lines = 0;
  // for_write: a plane about to be scattered into (read and written).
  template <bool for_write = false>
  void prefetch_slice(const char* plane, int64_t slice, int64_t slices) const {
    const int64_t per_slice = (lines + slices - 1) / slices;
    const int64_t end = std::min(lines, (slice + 1) * per_slice);
    for (int64_t line = slice * per_slice; line < end; ++line) {
      __builtin_prefetch(plane + 64 * (first_line + line), for_write ? 1 : 0, 2);
    }
  }
};

template <typename T>
NextPlaneRows next_plane_rows(const RowTaps<T>* taps, int64_t rows, int64_t H, int64_t row_bytes) {
  int64_t lowest = H, highest = -1;
  for (int64_t r = 0; r < rows; ++r) {
    lowest = std::min(lowest, taps[r].lowest_row);
    highest = std::max(highest, taps[r].highest_row);
  }
  NextPlaneRows next;
  if (lowest > highest || highest - lowest + 1 > rows + 48) return next;
  next.first_line = lowest * row_bytes / 64;
  next.lines = ((highest + 1) * row_bytes + 63) / 64 - next.first_line;
  return next;
}

// Same formula and order as math::interpolate.
template <typename T>
void interpolate_row_portable(const T* plane, const RowTaps<T>& taps, int64_t begin, int64_t end, T* out) {
  const int32_t *i00 = taps.tap_index(0), *i01 = taps.tap_index(1), *i10 = taps.tap_index(2), *i11 = taps.tap_index(3);
  const int32_t *m00 = taps.tap_mask(0), *m01 = taps.tap_mask(1), *m10 = taps.tap_mask(2), *m11 = taps.tap_mask(3);
  for (int64_t x = begin; x < end; ++x) {
    const T v00 = m00[x] ? plane[i00[x]] : T(0), v01 = m01[x] ? plane[i01[x]] : T(0);
    const T v10 = m10[x] ? plane[i10[x]] : T(0), v11 = m11[x] ? plane[i11[x]] : T(0);
    const T wx1 = taps.wx1[x], wy1 = taps.wy1[x], wx0 = T(1) - wx1, wy0 = T(1) - wy1;
    out[x] = wy0 * (wx0 * v00 + wx1 * v01) + wy1 * (wx0 * v10 + wx1 * v11);
  }
}

#if DTC_X86_GATHER
// ATen's grid_sampler gathers with AVX2; the portable build has no -march, so these loops are compiled
// for AVX2+FMA alone and chosen at run time (GCC's generic tuning never emits gather instructions from
// the plain loop, so they are written out). Masked lanes are not read at all.

// All ones in the lanes where lo <= v < hi. (A lambda would not inherit the target attribute.)
__attribute__((target("avx2,fma"))) inline __m256i within_avx2(__m256i v, int64_t lo, int64_t hi) {
  return _mm256_and_si256(_mm256_cmpgt_epi32(v, _mm256_set1_epi32(int32_t(lo - 1))),
                          _mm256_cmpgt_epi32(_mm256_set1_epi32(int32_t(hi)), v));
}

// The taps of eight pixels x..x+7 of row y, vectorised: the same clamps, floor, weights and inside
// tests as math::bilinear_taps (min/max return their second operand on NaN or equal zeros, so
// each clamp gives bilinear_taps' value for every finite input; non-finite lanes are masked out).
__attribute__((target("avx2,fma"))) __m256i fill_block_avx2(RowTaps<float>& taps, const float* flow_x,
                                                         const float* flow_y, int64_t y, int64_t H,
                                                         math::Padding padding, int64_t x) {
  const int64_t W = taps.width;
  const __m256 zero = _mm256_setzero_ps();
  const __m256 lanes = _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7);
  __m256 sx = _mm256_sub_ps(_mm256_add_ps(_mm256_set1_ps(float(x)), lanes), _mm256_loadu_ps(flow_x + x));
  __m256 sy = _mm256_sub_ps(_mm256_set1_ps(float(y)), _mm256_loadu_ps(flow_y + x));
  // v - v is 0 exactly for finite v and NaN for NaN / Inf.
  const __m256 finite = _mm256_and_ps(_mm256_cmp_ps(_mm256_sub_ps(sx, sx), zero, _CMP_EQ_OQ),
                                      _mm256_cmp_ps(_mm256_sub_ps(sy, sy), zero, _CMP_EQ_OQ));
  const __m256 one = _mm256_set1_ps(1.0f);
  if (padding == math::Padding::Border) {
    // clamp_with_grad: the gradient is 0 at and beyond the clip limits.
    const __m256 dx_dsx = _mm256_and_ps(_mm256_and_ps(_mm256_cmp_ps(sx, zero, _CMP_GT_OQ),
                                                      _mm256_cmp_ps(sx, _mm256_set1_ps(float(W - 1)), _CMP_LT_OQ)),
                                        _mm256_and_ps(finite, one));
    const __m256 dy_dsy = _mm256_and_ps(_mm256_and_ps(_mm256_cmp_ps(sy, zero, _CMP_GT_OQ),
                                                      _mm256_cmp_ps(sy, _mm256_set1_ps(float(H - 1)), _CMP_LT_OQ)),
                                        _mm256_and_ps(finite, one));
    _mm256_storeu_ps(taps.dx_dsx.data() + x, dx_dsx);
    _mm256_storeu_ps(taps.dy_dsy.data() + x, dy_dsy);
    sx = _mm256_min_ps(_mm256_max_ps(sx, zero), _mm256_set1_ps(float(W - 1)));
    sy = _mm256_min_ps(_mm256_max_ps(sy, zero), _mm256_set1_ps(float(H - 1)));
  } else {
    _mm256_storeu_ps(taps.dx_dsx.data() + x, _mm256_and_ps(finite, one));
    _mm256_storeu_ps(taps.dy_dsy.data() + x, _mm256_and_ps(finite, one));
    sx = _mm256_max_ps(_mm256_min_ps(sx, _mm256_set1_ps(float(W + 1))), _mm256_set1_ps(-2.0f));
    sy = _mm256_max_ps(_mm256_min_ps(sy, _mm256_set1_ps(float(H + 1))), _mm256_set1_ps(-2.0f));
  }
  const __m256 fx0 = _mm256_floor_ps(sx), fy0 = _mm256_floor_ps(sy);
  const __m256 nan = _mm256_set1_ps(std::numeric_limits<float>::quiet_NaN());
  _mm256_storeu_ps(taps.wx1.data() + x, _mm256_blendv_ps(nan, _mm256_sub_ps(sx, fx0), finite));
  _mm256_storeu_ps(taps.wy1.data() + x, _mm256_blendv_ps(nan, _mm256_sub_ps(sy, fy0), finite));
  const __m256i ok = _mm256_castps_si256(finite);
  const __m256i x0 = _mm256_and_si256(_mm256_cvttps_epi32(fx0), ok);
  const __m256i y0 = _mm256_and_si256(_mm256_cvttps_epi32(fy0), ok);
  const __m256i in_x0 = _mm256_and_si256(within_avx2(x0, 0, W), ok), in_x1 = _mm256_and_si256(within_avx2(x0, -1, W - 1), ok);
  const __m256i in_y0 = within_avx2(y0, 0, H), in_y1 = within_avx2(y0, -1, H - 1);
  // Wraps harmlessly for masked lanes (their index is replaced by 0).
  const __m256i i00 = _mm256_add_epi32(_mm256_mullo_epi32(y0, _mm256_set1_epi32(int32_t(W))), x0);
  const __m256i masks[4] = {_mm256_and_si256(in_y0, in_x0), _mm256_and_si256(in_y0, in_x1),
                            _mm256_and_si256(in_y1, in_x0), _mm256_and_si256(in_y1, in_x1)};
  const int32_t offsets[4] = {0, 1, int32_t(W), int32_t(W + 1)};
  for (int k = 0; k < 4; ++k) {
    const __m256i index = _mm256_and_si256(_mm256_add_epi32(i00, _mm256_set1_epi32(offsets[k])), masks[k]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(taps.index.data() + k * W + x), index);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(taps.mask.data() + k * W + x), masks[k]);
  }
  const int64_t block = x / 8;
  taps.paired[block] = _mm256_testz_si256(_mm256_xor_si256(in_x0, in_x1), _mm256_set1_epi32(-1));
  const __m256i order = _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(taps.pair_index.data() + x),
                      _mm256_permutevar8x32_epi32(_mm256_and_si256(i00, in_x0), order));
  int64_t* pair_mask = taps.pair_mask.data() + 2 * x;
  for (int row = 0; row < 2; ++row) {
    const __m256i m = _mm256_permutevar8x32_epi32(masks[2 * row], order);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(pair_mask + 8 * row),
                        _mm256_cvtepi32_epi64(_mm256_castsi256_si128(m)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(pair_mask + 8 * row + 4),
                        _mm256_cvtepi32_epi64(_mm256_extracti128_si256(m, 1)));
  }
  return y0;
}

__attribute__((target("avx2,fma"))) void fill_row_avx2(RowTaps<float>& taps, const float* flow_x, const float* flow_y,
                                                       int64_t y, int64_t H, math::Padding padding) {
  const int64_t W = taps.width;
  int64_t x = 0;
  __m256i lowest = _mm256_set1_epi32(int32_t(H)), highest = _mm256_set1_epi32(-1);
  for (; x + 8 <= W; x += 8) {
    const __m256i y0 = fill_block_avx2(taps, flow_x, flow_y, y, H, padding, x);
    lowest = _mm256_min_epi32(lowest, y0);
    highest = _mm256_max_epi32(highest, y0);
  }
  alignas(32) int32_t low[8], high[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(low), lowest);
  _mm256_store_si256(reinterpret_cast<__m256i*>(high), highest);
  taps.lowest_row = std::max<int64_t>(0, *std::min_element(low, low + 8));
  taps.highest_row = std::min<int64_t>(H - 1, *std::max_element(high, high + 8) + 1);
  for (; x < W; ++x) taps.fill_pixel(flow_x, flow_y, y, H, padding, x);
}

__attribute__((target("avx2,fma"))) inline __m256 gather_tap_avx2(const float* plane, const RowTaps<float>& taps,
                                                                  int k, int64_t x) {
  const __m256i index = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(taps.tap_index(k) + x));
  const __m256 mask = _mm256_castsi256_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(taps.tap_mask(k) + x)));
  return _mm256_mask_i32gather_ps(_mm256_setzero_ps(), plane, index, mask, 4);
}

// Four (left, right) tap pairs as 64-bit lanes.
__attribute__((target("avx2,fma"))) inline __m256 gather_pairs_avx2(const float* plane, __m128i index,
                                                                    const int64_t* mask) {
  return _mm256_castsi256_ps(_mm256_mask_i32gather_epi64(
      _mm256_setzero_si256(), reinterpret_cast<const long long*>(plane), index,
      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(mask)), 4));
}

// The four taps v[0..3] (00, 01, 10, 11) of the eight pixels x..x+7 of one plane.
__attribute__((target("avx2,fma"))) inline void gather_block_avx2(const float* plane, const RowTaps<float>& taps,
                                                                  int64_t x, __m256* v) {
  if (taps.paired[x / 8]) {
    const __m128i below = _mm_set1_epi32(int32_t(taps.width));
    const __m128i index_a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(taps.pair_index.data() + x));
    const __m128i index_b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(taps.pair_index.data() + x + 4));
    const int64_t* mask = taps.pair_mask.data() + 2 * x;
    const __m256 top_a = gather_pairs_avx2(plane, index_a, mask), top_b = gather_pairs_avx2(plane, index_b, mask + 4);
    const __m256 bottom_a = gather_pairs_avx2(plane, _mm_add_epi32(index_a, below), mask + 8);
    const __m256 bottom_b = gather_pairs_avx2(plane, _mm_add_epi32(index_b, below), mask + 12);
    v[0] = _mm256_shuffle_ps(top_a, top_b, _MM_SHUFFLE(2, 0, 2, 0));
    v[1] = _mm256_shuffle_ps(top_a, top_b, _MM_SHUFFLE(3, 1, 3, 1));
    v[2] = _mm256_shuffle_ps(bottom_a, bottom_b, _MM_SHUFFLE(2, 0, 2, 0));
    v[3] = _mm256_shuffle_ps(bottom_a, bottom_b, _MM_SHUFFLE(3, 1, 3, 1));
  } else {
    for (int k = 0; k < 4; ++k) v[k] = gather_tap_avx2(plane, taps, k, x);
  }
}

__attribute__((target("avx2,fma"))) void interpolate_row_avx2(const float* plane, const RowTaps<float>& taps,
                                                              float* out) {
  const int64_t W = taps.width;
  const __m256 one = _mm256_set1_ps(1.0f);
  int64_t x = 0;
  for (; x + 8 <= W; x += 8) {
    __m256 v[4];
    gather_block_avx2(plane, taps, x, v);
    const __m256 wx1 = _mm256_loadu_ps(taps.wx1.data() + x), wy1 = _mm256_loadu_ps(taps.wy1.data() + x);
    const __m256 wx0 = _mm256_sub_ps(one, wx1), wy0 = _mm256_sub_ps(one, wy1);
    const __m256 top = _mm256_fmadd_ps(wx1, v[1], _mm256_mul_ps(wx0, v[0]));
    const __m256 bottom = _mm256_fmadd_ps(wx1, v[3], _mm256_mul_ps(wx0, v[2]));
    _mm256_storeu_ps(out + x, _mm256_fmadd_ps(wy1, bottom, _mm256_mul_ps(wy0, top)));
  }
  interpolate_row_portable(plane, taps, x, W, out);
}

// The backward of pixels [begin, W) of row y of one plane, as backward_row does it. Not inlined into
// the AVX2 row below: there the compiler would contract the scatter's multiply-adds into FMAs and
// grad_x would differ in the last bits from the portable scatter of the other backward driver.
__attribute__((noinline)) void backward_pixels_portable(const float* plane, const float* grow, const float* fx,
                                                        float* dst, int64_t y, int64_t begin, int64_t W, int64_t H,
                                                        math::Padding padding, float* acc_x, float* acc_y) {
  const int64_t HW = H * W;
  for (int64_t x = begin; x < W; ++x) {
    const auto t = math::bilinear_taps<float>(float(x) - fx[x], float(y) - fx[HW + x], W, H, padding);
    if (!t.finite) continue;
    if (dst != nullptr) math::scatter_taps(t, W, grow[x], [dst](int64_t i, float v) { dst[i] += v; });
    accumulate_coord_grad(t, W, [plane](int64_t i) { return plane[i]; }, grow[x], &acc_x[x], &acc_y[x]);
  }
}

// One row of the backward (see backward_row) with the taps gathered eight pixels at a time. The
// arithmetic is math::interpolate_grad_coords' and math::scatter_taps' in their order (the compiler
// may contract the flow gradient's multiply-adds into FMAs, so it can differ from the portable path in
// the last bits; both backward drivers call this same row, so they still agree exactly). The scatter
// stays scalar (neighbouring pixels' taps collide), in the portable order: pixel by pixel, taps 00,
// 01, 10, 11, with the portable weights, so grad_x equals the portable scatter's bit for bit.
__attribute__((target("avx2,fma"))) void backward_band_avx2(const float* gp, const float* xp, const float* fp,
                                                            float* gxp, float* gfp, int64_t n, int64_t y_first,
                                                            int64_t rows, int64_t C, int64_t H, int64_t W,
                                                            math::Padding padding, RowTaps<float>* band_taps,
                                                            float* band_acc_x, float* band_acc_y) {
  const int64_t HW = H * W;
  for (int64_t r = 0; r < rows; ++r) {
    const float* fx = fp + (n * 2) * HW + (y_first + r) * W;
    fill_row_avx2(band_taps[r], fx, fx + HW, y_first + r, H, padding);
  }
  std::fill(band_acc_x, band_acc_x + rows * W, 0.0f);
  std::fill(band_acc_y, band_acc_y + rows * W, 0.0f);
  const NextPlaneRows next = next_plane_rows(band_taps, rows, H, W * int64_t(sizeof(float)));
  if (C > 1) {  // the first plane's span, all at once (the loop below fetches each next one)
    next.prefetch_slice(reinterpret_cast<const char*>(xp + n * C * HW), 0, 1);
    if (gxp != nullptr) next.prefetch_slice<true>(reinterpret_cast<char*>(gxp + n * C * HW), 0, 1);
  }
  const __m256 one = _mm256_set1_ps(1.0f);
  const int64_t blocks_end = W - W % 8;
  alignas(32) float scattered[4][8];
  for (int64_t c = 0; c < C; ++c) {
    const float* plane = xp + (n * C + c) * HW;
    float* dst = gxp != nullptr ? gxp + (n * C + c) * HW : nullptr;
    const char* next_plane = c + 1 < C ? reinterpret_cast<const char*>(xp + (n * C + c + 1) * HW) : nullptr;
    // The next grad_x plane too: the scatter's read-modify-writes land on the same span of rows.
    char* next_dst = c + 1 < C && gxp != nullptr ? reinterpret_cast<char*>(gxp + (n * C + c + 1) * HW) : nullptr;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t y = y_first + r;
      const RowTaps<float>& taps = band_taps[r];
      float* acc_x = band_acc_x + r * W;
      float* acc_y = band_acc_y + r * W;
      const float* fx = fp + (n * 2) * HW + y * W;
      const float* grow = gp + (n * C + c) * HW + y * W;
      for (int64_t x = 0; x < blocks_end; x += 8) {
        __m256 v[4];
        gather_block_avx2(plane, taps, x, v);
        const __m256 go = _mm256_loadu_ps(grow + x);
        const __m256 wx1 = _mm256_loadu_ps(taps.wx1.data() + x), wy1 = _mm256_loadu_ps(taps.wy1.data() + x);
        const __m256 wx0 = _mm256_sub_ps(one, wx1), wy0 = _mm256_sub_ps(one, wy1);
        const __m256 d_sx = _mm256_mul_ps(_mm256_add_ps(_mm256_mul_ps(wy0, _mm256_sub_ps(v[1], v[0])),
                                                        _mm256_mul_ps(wy1, _mm256_sub_ps(v[3], v[2]))),
                                          _mm256_loadu_ps(taps.dx_dsx.data() + x));
        const __m256 d_sy = _mm256_mul_ps(_mm256_add_ps(_mm256_mul_ps(wx0, _mm256_sub_ps(v[2], v[0])),
                                                        _mm256_mul_ps(wx1, _mm256_sub_ps(v[3], v[1]))),
                                          _mm256_loadu_ps(taps.dy_dsy.data() + x));
        // Non-finite pixels accumulate NaN here; the final pass below writes their -0 instead.
        _mm256_storeu_ps(acc_x + x, _mm256_add_ps(_mm256_loadu_ps(acc_x + x), _mm256_mul_ps(go, d_sx)));
        _mm256_storeu_ps(acc_y + x, _mm256_add_ps(_mm256_loadu_ps(acc_y + x), _mm256_mul_ps(go, d_sy)));
        if (dst == nullptr) continue;
        _mm256_store_ps(scattered[0], _mm256_mul_ps(_mm256_mul_ps(wy0, wx0), go));
        _mm256_store_ps(scattered[1], _mm256_mul_ps(_mm256_mul_ps(wy0, wx1), go));
        _mm256_store_ps(scattered[2], _mm256_mul_ps(_mm256_mul_ps(wy1, wx0), go));
        _mm256_store_ps(scattered[3], _mm256_mul_ps(_mm256_mul_ps(wy1, wx1), go));
        for (int lane = 0; lane < 8; ++lane) {
          for (int k = 0; k < 4; ++k) {
            if (taps.tap_mask(k)[x + lane]) dst[taps.tap_index(k)[x + lane]] += scattered[k][lane];
          }
        }
      }
      backward_pixels_portable(plane, grow, fx, dst, y, blocks_end, W, H, padding, acc_x, acc_y);
      if (next_plane != nullptr) next.prefetch_slice(next_plane, r, rows);
      if (next_dst != nullptr) next.prefetch_slice<true>(next_dst, r, rows);
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    const RowTaps<float>& taps = band_taps[r];
    float* gx = gfp + (n * 2) * HW + (y_first + r) * W;
    float* gy = gx + HW;
    for (int64_t x = 0; x < W; ++x) {
      const bool finite = x >= blocks_end || taps.wx1[x] == taps.wx1[x];
      gx[x] = finite ? -band_acc_x[r * W + x] : -0.0f;
      gy[x] = finite ? -band_acc_y[r * W + x] : -0.0f;
    }
  }
}
#endif

template <typename T>
void fill_row(RowTaps<T>& taps, const T* flow_x, const T* flow_y, int64_t y, int64_t H, math::Padding padding) {
  taps.fill(flow_x, flow_y, y, H, padding);
}

template <>
void fill_row<float>(RowTaps<float>& taps, const float* flow_x, const float* flow_y, int64_t y, int64_t H,
                     math::Padding padding) {
#if DTC_X86_GATHER
  if (simd::cpu_has_avx2_fma()) return fill_row_avx2(taps, flow_x, flow_y, y, H, padding);
#endif
  taps.fill(flow_x, flow_y, y, H, padding);
}

template <typename T>
void interpolate_row(const T* plane, const RowTaps<T>& taps, T* out) {
  interpolate_row_portable(plane, taps, 0, taps.width, out);
}

template <>
void interpolate_row<float>(const float* plane, const RowTaps<float>& taps, float* out) {
#if DTC_X86_GATHER
  if (simd::cpu_has_avx2_fma()) return interpolate_row_avx2(plane, taps, out);
#endif
  interpolate_row_portable(plane, taps, 0, taps.width, out);
}

template <typename T>
void forward_impl(const at::Tensor& x, const at::Tensor& flow, at::Tensor& out, math::Padding padding) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), HW = H * W;
  const T* xp = x.const_data_ptr<T>();
  const T* fp = flow.const_data_ptr<T>();
  T* op = out.mutable_data_ptr<T>();
  // A band of rows' taps is computed first and then every channel runs over the whole band: the rows
  // of a plane that the band's taps read stay cached across the band, where one output row at a time
  // over all channels cycles through C planes' neighbourhoods (megabytes at C = 64) before it comes
  // back to a plane. The band's tables (~70 bytes a pixel) stay within a few hundred kilobytes.
  const int64_t band = C == 1 ? 1 : band_rows(W, 70);
  at::parallel_for(0, N * H, /*grain_size=*/std::max<int64_t>(1, 16384 / std::max<int64_t>(1, W * C)),
                   [&](int64_t begin, int64_t end) {
                     std::vector<RowTaps<T>> taps(std::min(band, end - begin), RowTaps<T>(W));
                     for (int64_t first = begin; first < end;) {
                       const int64_t n = first / H, y0 = first % H;
                       const int64_t rows = std::min({band, end - first, H - y0});  // within one sample
                       for (int64_t r = 0; r < rows; ++r) {
                         const T* fx = fp + (n * 2) * HW + (y0 + r) * W;
                         fill_row(taps[r], fx, fx + HW, y0 + r, H, padding);
                       }
                       // The rows of the next plane that this band reads, fetched into L2 while this
                       // plane's gathers run, a slice after each row (the gathers' scattered reads
                       // defeat the hardware prefetchers).
                       const NextPlaneRows next = next_plane_rows(taps.data(), rows, H, W * int64_t(sizeof(T)));
                       if (C > 1) next.prefetch_slice(reinterpret_cast<const char*>(xp + n * C * HW), 0, 1);
                       for (int64_t c = 0; c < C; ++c) {
                         const char* next_plane =
                             c + 1 < C ? reinterpret_cast<const char*>(xp + (n * C + c + 1) * HW) : nullptr;
                         for (int64_t r = 0; r < rows; ++r) {
                           interpolate_row(xp + (n * C + c) * HW, taps[r], op + (n * C + c) * HW + (y0 + r) * W);
                           if (next_plane != nullptr) next.prefetch_slice(next_plane, r, rows);
                         }
                       }
                       first += rows;
                     }
                   });
}

template <typename T>
void grad_x_impl(const at::Tensor& grad_out, const at::Tensor& flow, at::Tensor& grad_x, math::Padding padding) {
  const int64_t N = grad_x.size(0), C = grad_x.size(1), H = grad_x.size(2), W = grad_x.size(3), HW = H * W;
  const T* gp = grad_out.const_data_ptr<T>();
  const T* fp = flow.const_data_ptr<T>();
  T* gxp = grad_x.mutable_data_ptr<T>();
  at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
    std::vector<BilinearTaps<T>> taps(W);
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t n = plane / C;
      const T* g = gp + plane * HW;
      T* dst = gxp + plane * HW;
      for (int64_t y = 0; y < H; ++y) {
        const T* fx = fp + (n * 2) * HW + y * W;
        taps_for_row(fx, fx + HW, y, W, H, padding, taps.data());
        for (int64_t xi = 0; xi < W; ++xi) {
          const auto& t = taps[xi];
          if (!t.finite) continue;
          math::scatter_taps(t, W, g[y * W + xi], [dst](int64_t i, T v) { dst[i] += v; });
        }
      }
    }
  });
}

// Both backward passes share this row: the flow gradient of row y of sample n and, when grad_x is
// given, the scatter of that row's incoming gradient into grad_x. Deterministic: contributions
// arrive in the same (row, channel, column) order whichever driver below calls it.
template <typename T>
void backward_row(const T* gp, const T* xp, const T* fp, T* gxp, T* gfp, int64_t n, int64_t y, int64_t C, int64_t H,
                  int64_t W, math::Padding padding, BilinearTaps<T>* taps, T* acc_x, T* acc_y) {
  const int64_t HW = H * W;
  const T* fx = fp + (n * 2) * HW + y * W;
  taps_for_row(fx, fx + HW, y, W, H, padding, taps);
  std::fill(acc_x, acc_x + W, T(0));
  std::fill(acc_y, acc_y + W, T(0));
  for (int64_t c = 0; c < C; ++c) {
    const T* plane = xp + (n * C + c) * HW;
    const T* grow = gp + (n * C + c) * HW + y * W;
    T* dst = gxp != nullptr ? gxp + (n * C + c) * HW : nullptr;
    auto load = [plane](int64_t i) { return plane[i]; };
    for (int64_t xi = 0; xi < W; ++xi) {
      const auto& t = taps[xi];
      if (!t.finite) continue;
      if (dst != nullptr) math::scatter_taps(t, W, grow[xi], [dst](int64_t i, T v) { dst[i] += v; });
      accumulate_coord_grad(t, W, load, grow[xi], &acc_x[xi], &acc_y[xi]);
    }
  }
  // The sample point is p - F(p), so the flow gradient is the negated coordinate gradient.
  T* gx = gfp + (n * 2) * HW + y * W;
  T* gy = gx + HW;
  for (int64_t xi = 0; xi < W; ++xi) {
    gx[xi] = -acc_x[xi];
    gy[xi] = -acc_y[xi];
  }
}

// grad_x == nullptr: the flow gradient alone, parallel over rows. Otherwise both gradients, parallel
// over samples: a thread owns whole samples, so its scatter into grad_x cannot race, and the taps
// are computed once per pixel instead of once per pass (used when the batch covers the threads).
template <typename T>
void backward_impl(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& flow, at::Tensor* grad_x,
                   at::Tensor& grad_flow, math::Padding padding) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const T* gp = grad_out.const_data_ptr<T>();
  const T* xp = x.const_data_ptr<T>();
  const T* fp = flow.const_data_ptr<T>();
  T* gxp = grad_x != nullptr ? grad_x->mutable_data_ptr<T>() : nullptr;
  T* gfp = grad_flow.mutable_data_ptr<T>();
  const bool by_sample = gxp != nullptr;
  const int64_t units = by_sample ? N : N * H;
  const int64_t grain = by_sample ? 1 : std::max<int64_t>(1, 16384 / std::max<int64_t>(1, W * C));
  at::parallel_for(0, units, grain, [&](int64_t begin, int64_t end) {
#if DTC_X86_GATHER
    if constexpr (std::is_same_v<T, float>) {
      if (simd::cpu_has_avx2_fma()) {
        // Bands of rows as in the forward (the rows of a plane that a band reads stay cached, the next
        // plane's are prefetched); each plane still receives its scatter row by row, pixel by pixel.
        const int64_t band = by_sample && C > 1 ? band_rows(W, 80) : 1;
        std::vector<RowTaps<float>> band_taps(band, RowTaps<float>(W));
        std::vector<float> band_acc_x(band * W), band_acc_y(band * W);
        for (int64_t u = begin; u < end; ++u) {
          const int64_t n = by_sample ? u : u / H;
          const int64_t y_begin = by_sample ? 0 : u % H, y_end = by_sample ? H : y_begin + 1;
          for (int64_t y = y_begin; y < y_end; y += band) {
            backward_band_avx2(gp, xp, fp, gxp, gfp, n, y, std::min(band, y_end - y), C, H, W, padding,
                               band_taps.data(), band_acc_x.data(), band_acc_y.data());
          }
        }
        return;
      }
    }
#endif
    std::vector<BilinearTaps<T>> taps(W);
    std::vector<T> acc_x(W), acc_y(W);
    for (int64_t u = begin; u < end; ++u) {
      const int64_t n = by_sample ? u : u / H;
      const int64_t y_begin = by_sample ? 0 : u % H, y_end = by_sample ? H : y_begin + 1;
      for (int64_t y = y_begin; y < y_end; ++y) {
        backward_row(gp, xp, fp, gxp, gfp, n, y, C, H, W, padding, taps.data(), acc_x.data(), acc_y.data());
      }
    }
  });
}

// The forward's and the backward's row taps index a plane with int32, which also halves the gathers' index width.
math::Padding check_warp_cpu_args(const at::Tensor& x, const at::Tensor& flow, c10::string_view padding) {
  const auto mode = check_warp_args(x, flow, std::string_view(padding.data(), padding.size()));
  TORCH_CHECK_VALUE(x.size(2) * x.size(3) < (int64_t(1) << 31), "warp: x must have fewer than 2^31 pixels "
                    "per channel on the CPU, got ", x.size(2), " x ", x.size(3));
  return mode;
}

at::Tensor warp_cpu(const at::Tensor& x_in, const at::Tensor& flow_in, c10::string_view padding) {
  const auto mode = check_warp_cpu_args(x_in, flow_in, padding);
  const at::Tensor x = x_in.contiguous();
  const at::Tensor flow = flow_in.contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dtc::warp (CPU)", [&] { forward_impl<scalar_t>(x, flow, out, mode); });
  return out;
}

std::tuple<at::Tensor, at::Tensor> warp_backward_cpu(const at::Tensor& grad_out_in, const at::Tensor& x_in,
                                                     const at::Tensor& flow_in, c10::string_view padding,
                                                     std::array<bool, 2> output_mask) {
  const auto mode = check_warp_cpu_args(x_in, flow_in, padding);
  check_warp_grad(grad_out_in, x_in);
  const at::Tensor grad_out = grad_out_in.contiguous();
  const at::Tensor x = x_in.contiguous();
  const at::Tensor flow = flow_in.contiguous();
  at::Tensor grad_x, grad_flow;
  const auto contiguous = x.options().memory_format(at::MemoryFormat::Contiguous);
  if (output_mask[0]) {
    grad_x = at::zeros(x.sizes(), contiguous);  // scattered into
  }
  if (output_mask[1]) {
    grad_flow = at::empty(flow.sizes(), contiguous);  // every element is written
    if (x.numel() == 0) grad_flow.zero_();
  }
  if (x.numel() == 0) {
    return {grad_x, grad_flow};
  }
  if (output_mask[0] && output_mask[1] && x.size(0) >= at::get_num_threads()) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dtc::warp_backward (CPU)",
                               [&] { backward_impl<scalar_t>(grad_out, x, flow, &grad_x, grad_flow, mode); });
    return {grad_x, grad_flow};
  }
  if (output_mask[0]) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dtc::warp_backward x (CPU)",
                               [&] { grad_x_impl<scalar_t>(grad_out, flow, grad_x, mode); });
  }
  if (output_mask[1]) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dtc::warp_backward flow (CPU)",
                               [&] { backward_impl<scalar_t>(grad_out, x, flow, nullptr, grad_flow, mode); });
  }
  return {grad_x, grad_flow};
}

}  // namespace

TORCH_LIBRARY_IMPL(dtc, CPU, m) {
  m.impl("warp", TORCH_FN(warp_cpu));
  m.impl("warp_backward", TORCH_FN(warp_backward_cpu));
}

}  // namespace dtc::ops
