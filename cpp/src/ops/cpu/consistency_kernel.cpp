// CPU kernels of dtc::temporal_consistency. The forward is parallel over image rows with one partial
// sum per row, reduced in a fixed order; the backward is parallel over output frames, each frame
// gathering its direct term and (soft target) the scatter of the next pair into it, so results are
// deterministic without atomics. Sums accumulate in double. Both start with one vectorised sigmoid
// pass over the logits, so the per-pixel work gathers probabilities.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <type_traits>
#include <vector>

#include "ops/cpu/x86_gather.h"

#include "ops/common/loss_math.h"
#include "ops/cpu/simd_math.h"
#include "ops/losses.h"

namespace dtc::ops {
namespace {

using math::ConsistencyParams;

template <typename T>
void sigmoid_into(const T* z, int64_t n, T* p) {
  for (int64_t k = 0; k < n; ++k) p[k] = math::sigmoid(z[k]);
}

DTC_SIMD_CLONES void sigmoid_into(const float* z, int64_t n, float* p) {
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) p[k] = simd::sigmoid(z[k]);
}

// The CPU kernels' parameters and what they read instead of logits: the sigmoid of every logit,
// computed once (P.probabilities is set together with the buffer it describes).
template <typename T>
struct CpuConsistency {
  ConsistencyParams<T> params;
  std::vector<T> probs;
};

template <typename T>
CpuConsistency<T> cpu_consistency(const ConsistencyInputs& in, at::ArrayRef<double> channel_scale, double alpha,
                                  bool soft_target) {
  CpuConsistency<T> out;
  out.params = consistency_params<T>(in.logits, in.images, in.flows_backward.defined(), channel_scale, alpha,
                                     in.residual, soft_target);
  out.params.probabilities = true;
  const T* logits = in.logits.const_data_ptr<T>();
  const int64_t n = in.logits.numel();
  out.probs.resize(n);
  at::parallel_for(0, n, 16384, [&](int64_t begin, int64_t end) {
    sigmoid_into(logits + begin, end - begin, out.probs.data() + begin);
  });
  return out;
}

// ---- One image row of pair (b, t): the confidence M and the target P~ of every pixel of row y.
// The per-pixel work is a handful of bilinear gathers, so it is done row by row: the generic version
// calls the shared per-pixel math; the float32 one evaluates the same formulas in passes over the row
// (taps, warped target, residual channel by channel, exp) whose arithmetic the compiler vectorises
// (the bilinear reads stay scalar loads: GCC's generic tuning emits no gather instructions).
struct RowScratch {
  explicit RowScratch(int64_t w) : i00(w), step_x(w), step_y(w), wx(w), wy(w), finite(w), acc(w) {}
  std::vector<int32_t> i00, step_x, step_y;  // top-left tap, and the offsets to its right / lower neighbour
  std::vector<float> wx, wy, finite, acc;
};

template <typename T>
void evaluate_row(const ConsistencyParams<T>& P, const T* probs, const T* images, const T* flows, const T* flows_bw,
                  int64_t b, int64_t t, int64_t y, RowScratch&, T* conf, T* target) {
  for (int64_t x = 0; x < P.W; ++x) {
    const auto px = math::consistency_pixel<T>(P, probs, images, flows, flows_bw, b, t, y, x);
    conf[x] = px.conf;
    target[x] = px.target;
  }
}

// Border-padded taps of (sx, sy) in int32 indices (the caller guarantees H * W < 2^31). The clamps and
// weights are those of math::bilinear_taps; a tap beyond the last column or row gets weight 0 and is
// read from the pixel itself, where the shared math reads 0. A non-finite point gets finite = 0.
inline void border_taps(float sx, float sy, int64_t w, int64_t h, int32_t* i00, int32_t* step_x, int32_t* step_y,
                        float* wx, float* wy, float* finite) {
  const bool ok = (sx - sx == 0.0f) & (sy - sy == 0.0f);
  sx = simd::select(ok, sx, 0.0f);
  sy = simd::select(ok, sy, 0.0f);
  const float last_x = float(w - 1), last_y = float(h - 1);
  sx = simd::select(sx > 0.0f, simd::select(sx < last_x, sx, last_x), 0.0f);
  sy = simd::select(sy > 0.0f, simd::select(sy < last_y, sy, last_y), 0.0f);
  const int32_t x0 = int32_t(sx), y0 = int32_t(sy);  // sx, sy >= 0: truncation is floor
  *wx = sx - float(x0);
  *wy = sy - float(y0);
  *step_x = x0 < int32_t(w - 1) ? 1 : 0;
  *step_y = y0 < int32_t(h - 1) ? int32_t(w) : 0;
  *i00 = y0 * int32_t(w) + x0;
  *finite = simd::select(ok, 1.0f, 0.0f);
}

inline float bilinear(const float* plane, int32_t i00, int32_t step_x, int32_t step_y, float wx, float wy) {
  const float wx0 = 1.0f - wx, wy0 = 1.0f - wy;
  return wy0 * (wx0 * plane[i00] + wx * plane[i00 + step_x]) +
         wy * (wx0 * plane[i00 + step_y] + wx * plane[i00 + step_y + step_x]);
}

#if DTC_X86_GATHER
// border_taps for eight points: the same clamps (min/max return their second operand for equal
// zeros, so -0 clamps to +0 as select does), truncation and steps.
struct Taps8 {
  __m256i i00, step_x, step_y;
  __m256 wx, wy, ok;
  bool paired;  // every step_x is 1: a point's left and right taps are one 64-bit read
};

__attribute__((target("avx2,fma"))) inline Taps8 border_taps_avx2(__m256 sx, __m256 sy, int64_t w, int64_t h) {
  Taps8 t;
  const __m256 zero = _mm256_setzero_ps();
  t.ok = _mm256_and_ps(_mm256_cmp_ps(_mm256_sub_ps(sx, sx), zero, _CMP_EQ_OQ),
                       _mm256_cmp_ps(_mm256_sub_ps(sy, sy), zero, _CMP_EQ_OQ));
  sx = _mm256_and_ps(sx, t.ok);
  sy = _mm256_and_ps(sy, t.ok);
  sx = _mm256_max_ps(_mm256_min_ps(sx, _mm256_set1_ps(float(w - 1))), zero);
  sy = _mm256_max_ps(_mm256_min_ps(sy, _mm256_set1_ps(float(h - 1))), zero);
  const __m256i x0 = _mm256_cvttps_epi32(sx), y0 = _mm256_cvttps_epi32(sy);
  t.wx = _mm256_sub_ps(sx, _mm256_cvtepi32_ps(x0));
  t.wy = _mm256_sub_ps(sy, _mm256_cvtepi32_ps(y0));
  const __m256i not_last_x = _mm256_cmpgt_epi32(_mm256_set1_epi32(int32_t(w - 1)), x0);
  const __m256i not_last_y = _mm256_cmpgt_epi32(_mm256_set1_epi32(int32_t(h - 1)), y0);
  t.step_x = _mm256_and_si256(not_last_x, _mm256_set1_epi32(1));
  t.step_y = _mm256_and_si256(not_last_y, _mm256_set1_epi32(int32_t(w)));
  t.i00 = _mm256_add_epi32(_mm256_mullo_epi32(y0, _mm256_set1_epi32(int32_t(w))), x0);
  t.paired = _mm256_movemask_ps(_mm256_castsi256_ps(not_last_x)) == 0xff;
  return t;
}

// Four (left, right) tap pairs as 64-bit lanes. (A lambda would not inherit the target attribute.)
__attribute__((target("avx2,fma"))) inline __m256 pairs(const float* plane, __m128i index) {
  return _mm256_castsi256_ps(_mm256_i32gather_epi64(reinterpret_cast<const long long*>(plane), index, 4));
}

// bilinear() of eight points; every tap lies inside the plane (border padding), so nothing is masked.
__attribute__((target("avx2,fma"))) inline __m256 bilinear_avx2(const float* plane, const Taps8& t) {
  __m256 v00, v01, v10, v11;
  const __m256i i10 = _mm256_add_epi32(t.i00, t.step_y);
  if (t.paired) {
    // Pixels 0,1,4,5 then 2,3,6,7, so that the even / odd halves of the pairs shuffle into order.
    const __m256i order = _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7);
    const __m256i top = _mm256_permutevar8x32_epi32(t.i00, order), bottom = _mm256_permutevar8x32_epi32(i10, order);
    const __m256 ta = pairs(plane, _mm256_castsi256_si128(top)), tb = pairs(plane, _mm256_extracti128_si256(top, 1));
    const __m256 ba = pairs(plane, _mm256_castsi256_si128(bottom));
    const __m256 bb = pairs(plane, _mm256_extracti128_si256(bottom, 1));
    v00 = _mm256_shuffle_ps(ta, tb, _MM_SHUFFLE(2, 0, 2, 0));
    v01 = _mm256_shuffle_ps(ta, tb, _MM_SHUFFLE(3, 1, 3, 1));
    v10 = _mm256_shuffle_ps(ba, bb, _MM_SHUFFLE(2, 0, 2, 0));
    v11 = _mm256_shuffle_ps(ba, bb, _MM_SHUFFLE(3, 1, 3, 1));
  } else {
    v00 = _mm256_i32gather_ps(plane, t.i00, 4);
    v01 = _mm256_i32gather_ps(plane, _mm256_add_epi32(t.i00, t.step_x), 4);
    v10 = _mm256_i32gather_ps(plane, i10, 4);
    v11 = _mm256_i32gather_ps(plane, _mm256_add_epi32(i10, t.step_x), 4);
  }
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 wx0 = _mm256_sub_ps(one, t.wx), wy0 = _mm256_sub_ps(one, t.wy);
  const __m256 top = _mm256_add_ps(_mm256_mul_ps(wx0, v00), _mm256_mul_ps(t.wx, v01));
  const __m256 bottom = _mm256_add_ps(_mm256_mul_ps(wx0, v10), _mm256_mul_ps(t.wx, v11));
  return _mm256_add_ps(_mm256_mul_ps(wy0, top), _mm256_mul_ps(t.wy, bottom));
}

// The gathering passes of evaluate_row (taps, warped target, residual summed over the channels) for
// the blocks of eight pixels of the row, with the taps computed once and kept in registers; returns
// where the portable loops must take over (the row's tail).
__attribute__((target("avx2,fma"))) int64_t gather_row_avx2(const ConsistencyParams<float>& P, const float* p_prev,
                                                            const float* cur, const float* prev, const float* fx,
                                                            const float* fy, int64_t y, float* target, float* acc,
                                                            float* finite) {
  const int64_t W = P.W, H = P.H, HW = H * W;
  const __m256 lanes = _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const bool abs_sum = P.residual == math::Residual::AbsSum;
  int64_t x = 0;
  for (; x + 8 <= W; x += 8) {
    const __m256 sx = _mm256_sub_ps(_mm256_add_ps(_mm256_set1_ps(float(x)), lanes), _mm256_loadu_ps(fx + x));
    const __m256 sy = _mm256_sub_ps(_mm256_set1_ps(float(y)), _mm256_loadu_ps(fy + x));
    const Taps8 t = border_taps_avx2(sx, sy, W, H);
    _mm256_storeu_ps(finite + x, _mm256_and_ps(t.ok, one));
    __m256 warped = bilinear_avx2(p_prev, t);
    if (!P.soft_target) warped = _mm256_and_ps(_mm256_cmp_ps(warped, half, _CMP_GT_OQ), one);
    _mm256_storeu_ps(target + x, warped);
    __m256 sum = _mm256_setzero_ps();
    for (int64_t c = 0; c < P.C; ++c) {
      const __m256 d = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(cur + c * HW + x), bilinear_avx2(prev + c * HW, t)),
                                     _mm256_set1_ps(P.scale[c]));
      sum = _mm256_add_ps(sum, abs_sum ? d : _mm256_and_ps(d, abs_mask));
    }
    _mm256_storeu_ps(acc + x, sum);
  }
  return x;
}

// The soft target's scatter (backward_pair_row) for the blocks of eight pixels of row y: taps and
// weights as border_taps (which equal bilinear_taps' with border padding), the adds scalar (taps
// collide) in the portable order, pixel by pixel, taps 00, 01, 10, 11. A tap clamped onto the last
// column or row has weight 0 there and is skipped, as scatter_taps skips it. Returns where the
// portable loop takes over.
__attribute__((target("avx2,fma"))) int64_t scatter_row_avx2(const ConsistencyParams<float>& P, const float* conf,
                                                             const float* target, const float* p_row, float coef,
                                                             const float* fx, const float* fy, int64_t y, float* g,
                                                             const float* p) {
  const int64_t W = P.W, H = P.H;
  const __m256 lanes = _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
  const __m256 sign_bit = _mm256_set1_ps(-0.0f);
  alignas(32) float go[8], weight[4][8];
  alignas(32) int32_t i00[8], step_x[8], step_y[8];
  int64_t x = 0;
  for (; x + 8 <= W; x += 8) {
    // go = -coef * conf * sign(p - target), sign(0) = 0.
    const __m256 diff = _mm256_sub_ps(_mm256_loadu_ps(p_row + x), _mm256_loadu_ps(target + x));
    const __m256 sign = _mm256_and_ps(_mm256_or_ps(_mm256_and_ps(diff, sign_bit), one),
                                      _mm256_cmp_ps(diff, zero, _CMP_NEQ_OQ));
    const __m256 g8 = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(-coef), _mm256_loadu_ps(conf + x)), sign);
    if (_mm256_movemask_ps(_mm256_cmp_ps(g8, zero, _CMP_NEQ_UQ)) == 0) continue;
    const __m256 sx = _mm256_sub_ps(_mm256_add_ps(_mm256_set1_ps(float(x)), lanes), _mm256_loadu_ps(fx + x));
    const __m256 sy = _mm256_sub_ps(_mm256_set1_ps(float(y)), _mm256_loadu_ps(fy + x));
    const Taps8 t = border_taps_avx2(sx, sy, W, H);
    const __m256 wx0 = _mm256_sub_ps(one, t.wx), wy0 = _mm256_sub_ps(one, t.wy);
    _mm256_store_ps(go, g8);
    _mm256_store_ps(weight[0], _mm256_mul_ps(_mm256_mul_ps(wy0, wx0), g8));
    _mm256_store_ps(weight[1], _mm256_mul_ps(_mm256_mul_ps(wy0, t.wx), g8));
    _mm256_store_ps(weight[2], _mm256_mul_ps(_mm256_mul_ps(t.wy, wx0), g8));
    _mm256_store_ps(weight[3], _mm256_mul_ps(_mm256_mul_ps(t.wy, t.wx), g8));
    _mm256_store_si256(reinterpret_cast<__m256i*>(i00), t.i00);
    _mm256_store_si256(reinterpret_cast<__m256i*>(step_x), t.step_x);
    _mm256_store_si256(reinterpret_cast<__m256i*>(step_y), t.step_y);
    for (int lane = 0; lane < 8; ++lane) {
      if (go[lane] == 0.0f) continue;  // also every pixel without a finite flow (M = 0)
      const int32_t taps[4] = {i00[lane], i00[lane] + step_x[lane], i00[lane] + step_y[lane],
                               i00[lane] + step_y[lane] + step_x[lane]};
      const bool inside[4] = {true, step_x[lane] != 0, step_y[lane] != 0, step_x[lane] != 0 && step_y[lane] != 0};
      for (int k = 0; k < 4; ++k) {
        if (inside[k]) g[taps[k]] += weight[k][lane] * p[taps[k]] * (1.0f - p[taps[k]]);
      }
    }
  }
  return x;
}
#endif

DTC_SIMD_CLONES void evaluate_row(const ConsistencyParams<float>& P, const float* probs, const float* images,
                                  const float* flows, const float* flows_bw, int64_t b, int64_t t, int64_t y,
                                  RowScratch& s, float* conf, float* target) {
  const int64_t W = P.W, H = P.H, HW = H * W;
  const float* fx = flows + (b * P.T_ + t) * 2 * HW + y * W;
  const float* fy = fx + HW;
  int32_t* i00 = s.i00.data();
  int32_t* step_x = s.step_x.data();
  int32_t* step_y = s.step_y.data();
  float* wx = s.wx.data();
  float* wy = s.wy.data();
  float* finite = s.finite.data();
  float* acc = s.acc.data();
  const float* p_prev = probs + (b * P.T_ + t - 1) * HW;
  const float* cur = images + (b * P.T_ + t) * P.C * HW + y * W;
  const float* prev = images + (b * P.T_ + t - 1) * P.C * HW;
  int64_t begin = 0;
#if DTC_X86_GATHER
  if (simd::cpu_has_avx2_fma()) begin = gather_row_avx2(P, p_prev, cur, prev, fx, fy, y, target, acc, finite);
#endif
  for (int64_t x = begin; x < W; ++x) {
    border_taps(float(x) - fx[x], float(y) - fy[x], W, H, &i00[x], &step_x[x], &step_y[x], &wx[x], &wy[x], &finite[x]);
  }
  if (P.soft_target) {
    for (int64_t x = begin; x < W; ++x) target[x] = bilinear(p_prev, i00[x], step_x[x], step_y[x], wx[x], wy[x]);
  } else {
    for (int64_t x = begin; x < W; ++x) {
      target[x] = simd::select(bilinear(p_prev, i00[x], step_x[x], step_y[x], wx[x], wy[x]) > 0.5f, 1.0f, 0.0f);
    }
  }
  for (int64_t x = begin; x < W; ++x) acc[x] = 0.0f;
  for (int64_t c = 0; c < P.C; ++c) {
    const float scale = P.scale[c];
    const float* cur_c = cur + c * HW;
    const float* prev_c = prev + c * HW;
    if (P.residual == math::Residual::AbsSum) {
      for (int64_t x = begin; x < W; ++x) {
        acc[x] += (cur_c[x] - bilinear(prev_c, i00[x], step_x[x], step_y[x], wx[x], wy[x])) * scale;
      }
    } else {
      for (int64_t x = begin; x < W; ++x) {
        acc[x] += simd::abs((cur_c[x] - bilinear(prev_c, i00[x], step_x[x], step_y[x], wx[x], wy[x])) * scale);
      }
    }
  }
  const float alpha = P.alpha, inv_c = 1.0f / float(P.C);
  const bool abs_sum = P.residual == math::Residual::AbsSum;
  for (int64_t x = 0; x < W; ++x) {
    const float residual = abs_sum ? simd::abs(acc[x]) : acc[x] * inv_c;
    // No correspondence (a non-finite flow vector): zero confidence and target, as the shared math.
    conf[x] = simd::select(finite[x] != 0.0f, simd::exp(-alpha * residual), 0.0f);
    target[x] = simd::select(finite[x] != 0.0f, target[x], 0.0f);
  }
  if (P.occlusion) {
    // Forward-backward test: F_bw sampled (border padding) at p - F(p), p's point in frame t-1 (loss_math.h).
    const float* bx = flows_bw + (b * P.T_ + t) * 2 * HW;
    const float* by = bx + HW;
    for (int64_t x = 0; x < W; ++x) {
      border_taps(float(x) - fx[x], float(y) - fy[x], W, H, &i00[x], &step_x[x], &step_y[x], &wx[x], &wy[x],
                  &finite[x]);
    }
    for (int64_t x = 0; x < W; ++x) {
      const float back_x = bilinear(bx, i00[x], step_x[x], step_y[x], wx[x], wy[x]);
      const float back_y = bilinear(by, i00[x], step_x[x], step_y[x], wx[x], wy[x]);
      const float ex = fx[x] + back_x, ey = fy[x] + back_y;
      const float norms = fx[x] * fx[x] + fy[x] * fy[x] + back_x * back_x + back_y * back_y;
      const bool pass = ex * ex + ey * ey < 0.01f * norms + 0.5f;
      conf[x] = simd::select(pass & (finite[x] != 0.0f), conf[x], 0.0f);
    }
  }
}

template <typename T>
void forward_impl(const ConsistencyParams<T>& P, const T* probs, const T* images, const T* flows, const T* flows_bw,
                  bool normalise, T* loss, T* mass_out, T* conf_map, T* target_map) {
  const int64_t pairs = P.B * (P.T_ - 1), rows = pairs * P.H;
  std::vector<double> agree_rows(rows), mass_rows(rows);
  at::parallel_for(0, rows, std::max<int64_t>(1, 4096 / P.W), [&](int64_t begin, int64_t end) {
    RowScratch scratch(P.W);
    std::vector<T> conf_row(P.W), target_row(P.W);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t pair = row / P.H, y = row % P.H;
      const int64_t b = pair / (P.T_ - 1), t = pair % (P.T_ - 1) + 1;
      T* conf = conf_map != nullptr ? conf_map + row * P.W : conf_row.data();
      T* target = target_map != nullptr ? target_map + row * P.W : target_row.data();
      evaluate_row(P, probs, images, flows, flows_bw, b, t, y, scratch, conf, target);
      const T* p_cur = probs + (b * P.T_ + t) * P.H * P.W + y * P.W;
      double agree = 0, mass = 0;
      for (int64_t x = 0; x < P.W; ++x) {
        agree += double(conf[x] * (T(1) - std::abs(p_cur[x] - target[x])));
        mass += double(conf[x]);
      }
      agree_rows[row] = agree;
      mass_rows[row] = mass;
    }
  });
  for (int64_t t = 1; t < P.T_; ++t) {
    double agree = 0, mass = 0;
    for (int64_t b = 0; b < P.B; ++b) {
      const int64_t first = (b * (P.T_ - 1) + t - 1) * P.H;
      for (int64_t y = 0; y < P.H; ++y) {
        agree += agree_rows[first + y];
        mass += mass_rows[first + y];
      }
    }
    const double denom = normalise ? std::max(mass, 1e-6) : double(P.B * P.H * P.W);
    loss[t - 1] = T(1.0 - agree / denom);
    mass_out[t - 1] = T(mass);
  }
}

// The backward's two contributions of pair t (frames t-1 -> t) of sample b at row y, from one
// evaluation of that row. L = 1 - sum(M (1 - |P_t - P~|)) / D, so dL/dP_t = M sign(P_t - P~) / D =
// -dL/dP~: the direct term goes to frame t (when `direct`), and with a soft target the scatter of the
// warped previous frame goes to frame t-1 (when `scatter`).
template <typename T>
void backward_pair_row(const ConsistencyParams<T>& P, const T* probs, const T* images, const T* flows,
                       const T* flows_bw, const std::vector<T>& coef, T* grad, int64_t b, int64_t t, int64_t y,
                       bool direct, bool scatter, RowScratch& scratch, T* conf, T* target) {
  const int64_t HW = P.H * P.W;
  const int64_t frame = b * P.T_ + t;
  evaluate_row(P, probs, images, flows, flows_bw, b, t, y, scratch, conf, target);
  const T* p_row = probs + frame * HW + y * P.W;
  if (direct) {
    T* g_row = grad + frame * HW + y * P.W;
    for (int64_t x = 0; x < P.W; ++x) {
      g_row[x] += coef[t - 1] * conf[x] * math::sign(p_row[x] - target[x]) * p_row[x] * (T(1) - p_row[x]);
    }
  }
  if (scatter) {
    T* g = grad + (frame - 1) * HW;
    const T* p = probs + (frame - 1) * HW;
    const T* flow = flows + frame * 2 * HW;
    int64_t begin = 0;
#if DTC_X86_GATHER
    if constexpr (std::is_same_v<T, float>) {
      if (simd::cpu_has_avx2_fma()) {
        begin = scatter_row_avx2(P, conf, target, p_row, coef[t - 1], flow + y * P.W, flow + HW + y * P.W, y, g, p);
      }
    }
#endif
    for (int64_t x = begin; x < P.W; ++x) {
      const T go = -coef[t - 1] * conf[x] * math::sign(p_row[x] - target[x]);
      if (go == T(0)) continue;  // also every pixel without a finite flow (M = 0)
      const auto taps = math::bilinear_taps<T>(T(x) - flow[y * P.W + x], T(y) - flow[HW + y * P.W + x], P.W, P.H,
                                               math::Padding::Border);
      math::scatter_taps(taps, P.W, go, [g, p](int64_t i, T v) { g[i] += v * p[i] * (T(1) - p[i]); });
    }
  }
}

// Every frame receives, in this order, its direct term (as the current frame of its pair) and then
// the scatter of the next pair (as that pair's warped previous frame), rows in order: the result does
// not depend on the driver. When the batch covers the threads, a thread owns whole samples and
// evaluates each pair's rows once for both contributions; otherwise it is parallel over frames and
// a frame evaluates its own pair and the next one (twice the evaluations, but B x T units of work).
template <typename T>
void backward_impl(const ConsistencyParams<T>& P, const T* probs, const T* images, const T* flows, const T* flows_bw,
                   const std::vector<T>& coef, T* grad) {
  if (P.B >= at::get_num_threads()) {
    at::parallel_for(0, P.B, 1, [&](int64_t begin, int64_t end) {
      RowScratch scratch(P.W);
      std::vector<T> conf(P.W), target(P.W);
      for (int64_t b = begin; b < end; ++b) {
        for (int64_t t = 1; t < P.T_; ++t) {
          for (int64_t y = 0; y < P.H; ++y) {
            backward_pair_row(P, probs, images, flows, flows_bw, coef, grad, b, t, y, true, P.soft_target, scratch,
                              conf.data(), target.data());
          }
        }
      }
    });
    return;
  }
  at::parallel_for(0, P.B * P.T_, 1, [&](int64_t begin, int64_t end) {
    RowScratch scratch(P.W);
    std::vector<T> conf(P.W), target(P.W);
    for (int64_t frame = begin; frame < end; ++frame) {
      const int64_t b = frame / P.T_, s = frame % P.T_;
      if (s >= 1) {  // frame s is the current frame of pair s
        for (int64_t y = 0; y < P.H; ++y) {
          backward_pair_row(P, probs, images, flows, flows_bw, coef, grad, b, s, y, true, false, scratch, conf.data(),
                            target.data());
        }
      }
      if (P.soft_target && s + 1 < P.T_) {  // frame s is the warped previous frame of pair s + 1
        for (int64_t y = 0; y < P.H; ++y) {
          backward_pair_row(P, probs, images, flows, flows_bw, coef, grad, b, s + 1, y, false, true, scratch,
                            conf.data(), target.data());
        }
      }
    }
  });
}

// The float32 row path indexes a frame with int32.
void check_row_index_range(int64_t H, int64_t W) {
  TORCH_CHECK_VALUE(H * W < (int64_t(1) << 31), "temporal_consistency: frames must have fewer than 2^31 pixels on "
                    "the CPU, got ", H, " x ", W);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> consistency_cpu(
    const at::Tensor& logits_in, const at::Tensor& images_in, const at::Tensor& flows_in,
    const std::optional<at::Tensor>& flows_bw_in, at::ArrayRef<double> channel_scale, double alpha,
    c10::string_view confidence, bool soft_target, bool normalise, bool return_maps) {
  const auto in = consistency_inputs(logits_in, images_in, flows_in, flows_bw_in, channel_scale, alpha,
                                     std::string_view(confidence.data(), confidence.size()));
  const at::Tensor &logits = in.logits, &images = in.images, &flows = in.flows, &flows_bw = in.flows_backward;
  const int64_t B = logits.size(0), T = logits.size(1), H = logits.size(3), W = logits.size(4);
  check_row_index_range(H, W);
  at::Tensor loss = at::empty({T - 1}, logits.options());
  at::Tensor mass = at::empty({T - 1}, logits.options());
  at::Tensor conf = return_maps ? at::empty({B, T - 1, 1, H, W}, logits.options()) : at::empty({0}, logits.options());
  at::Tensor target = return_maps ? at::empty({B, T - 1, 1, H, W}, logits.options()) : at::empty({0}, logits.options());
  if (B == 0) {
    loss.fill_(1);
    mass.zero_();
    return {loss, mass, conf, target};
  }
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "dtc::temporal_consistency (CPU)", [&] {
    const auto cpu = cpu_consistency<scalar_t>(in, channel_scale, alpha, soft_target);
    const auto& P = cpu.params;
    const auto& probs = cpu.probs;
    forward_impl<scalar_t>(P, probs.data(), images.const_data_ptr<scalar_t>(),
                           flows.const_data_ptr<scalar_t>(),
                           flows_bw.defined() ? flows_bw.const_data_ptr<scalar_t>() : nullptr, normalise,
                           loss.mutable_data_ptr<scalar_t>(), mass.mutable_data_ptr<scalar_t>(),
                           return_maps ? conf.mutable_data_ptr<scalar_t>() : nullptr,
                           return_maps ? target.mutable_data_ptr<scalar_t>() : nullptr);
  });
  return {loss, mass, conf, target};
}

at::Tensor consistency_backward_cpu(const at::Tensor& grad_loss_in, const at::Tensor& mass_in,
                                    const at::Tensor& logits_in, const at::Tensor& images_in,
                                    const at::Tensor& flows_in, const std::optional<at::Tensor>& flows_bw_in,
                                    at::ArrayRef<double> channel_scale, double alpha, c10::string_view confidence,
                                    bool soft_target, bool normalise) {
  const auto in = consistency_inputs(logits_in, images_in, flows_in, flows_bw_in, channel_scale, alpha,
                                     std::string_view(confidence.data(), confidence.size()));
  const at::Tensor &logits = in.logits, &images = in.images, &flows = in.flows, &flows_bw = in.flows_backward;
  const int64_t B = logits.size(0), T = logits.size(1), H = logits.size(3), W = logits.size(4);
  check_row_index_range(H, W);
  check_saved("temporal_consistency_backward", "grad_loss", grad_loss_in, {T - 1}, logits_in);
  check_saved("temporal_consistency_backward", "mass", mass_in, {T - 1}, logits_in);
  at::Tensor grad = at::zeros(logits.sizes(), logits.options());
  if (B == 0) return grad;
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "dtc::temporal_consistency_backward (CPU)", [&] {
    const auto cpu = cpu_consistency<scalar_t>(in, channel_scale, alpha, soft_target);
    const auto& P = cpu.params;
    const auto& probs = cpu.probs;
    const at::Tensor gl = grad_loss_in.contiguous(), ms = mass_in.contiguous();
    std::vector<scalar_t> coef(T - 1);
    for (int64_t t = 0; t < T - 1; ++t) {
      const double denom = normalise ? std::max<double>(ms.const_data_ptr<scalar_t>()[t], 1e-6) : double(B * H * W);
      coef[t] = scalar_t(double(gl.const_data_ptr<scalar_t>()[t]) / denom);
    }
    backward_impl<scalar_t>(P, probs.data(), images.const_data_ptr<scalar_t>(),
                            flows.const_data_ptr<scalar_t>(),
                            flows_bw.defined() ? flows_bw.const_data_ptr<scalar_t>() : nullptr, coef,
                            grad.mutable_data_ptr<scalar_t>());
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(dtc, CPU, m) {
  m.impl("temporal_consistency", TORCH_FN(consistency_cpu));
  m.impl("temporal_consistency_backward", TORCH_FN(consistency_backward_cpu));
}

}  // namespace dtc::ops
