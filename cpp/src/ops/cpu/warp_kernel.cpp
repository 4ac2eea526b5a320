// CPU kernels of dtc::warp: parallel over image rows (forward, flow gradient) and over (n, c)
// planes (x gradient), so every output element has exactly one writer and results are
// deterministic without atomics.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <limits>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__)
#include <immintrin.h>
#define DTC_X86_GATHER 1
#else
#define DTC_X86_GATHER 0
#endif

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
  explicit RowTaps(int64_t w) : index(4 * w), mask(4 * w), wx1(w), wy1(w), width(w) {}
  std::vector<int32_t> index;  // [tap][x], taps in the order 00, 01, 10, 11
  std::vector<int32_t> mask;   // all ones where the tap lies inside the image, else 0
  std::vector<T> wx1, wy1;
  int64_t width;

  const int32_t* tap_index(int k) const { return index.data() + k * width; }
  const int32_t* tap_mask(int k) const { return mask.data() + k * width; }

  void fill(const T* flow_x, const T* flow_y, int64_t y, int64_t H, math::Padding padding) {
    const int64_t W = width;
    for (int64_t x = 0; x < W; ++x) {
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
    }
  }
};

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
// ATen's grid_sampler gathers with AVX2; the portable build has no -march, so this loop is compiled
// for AVX2+FMA alone and chosen at run time (GCC's generic tuning never emits gather instructions from
// the plain loop, so they are written out). Masked lanes are not read at all.
// (A lambda would not inherit the target attribute.)
__attribute__((target("avx2,fma"))) inline __m256 gather_tap_avx2(const float* plane, const RowTaps<float>& taps,
                                                                  int k, int64_t x) {
  const __m256i index = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(taps.tap_index(k) + x));
  const __m256 mask = _mm256_castsi256_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(taps.tap_mask(k) + x)));
  return _mm256_mask_i32gather_ps(_mm256_setzero_ps(), plane, index, mask, 4);
}

__attribute__((target("avx2,fma"))) void interpolate_row_avx2(const float* plane, const RowTaps<float>& taps,
                                                              float* out) {
  const int64_t W = taps.width;
  const __m256 one = _mm256_set1_ps(1.0f);
  auto tap = [&](int k, int64_t x) { return gather_tap_avx2(plane, taps, k, x); };
  int64_t x = 0;
  for (; x + 8 <= W; x += 8) {
    const __m256 wx1 = _mm256_loadu_ps(taps.wx1.data() + x), wy1 = _mm256_loadu_ps(taps.wy1.data() + x);
    const __m256 wx0 = _mm256_sub_ps(one, wx1), wy0 = _mm256_sub_ps(one, wy1);
    const __m256 top = _mm256_fmadd_ps(wx1, tap(1, x), _mm256_mul_ps(wx0, tap(0, x)));
    const __m256 bottom = _mm256_fmadd_ps(wx1, tap(3, x), _mm256_mul_ps(wx0, tap(2, x)));
    _mm256_storeu_ps(out + x, _mm256_fmadd_ps(wy1, bottom, _mm256_mul_ps(wy0, top)));
  }
  interpolate_row_portable(plane, taps, x, W, out);
}

bool cpu_has_avx2_fma() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}
#endif

template <typename T>
void interpolate_row(const T* plane, const RowTaps<T>& taps, T* out) {
  interpolate_row_portable(plane, taps, 0, taps.width, out);
}

template <>
void interpolate_row<float>(const float* plane, const RowTaps<float>& taps, float* out) {
#if DTC_X86_GATHER
  if (cpu_has_avx2_fma()) return interpolate_row_avx2(plane, taps, out);
#endif
  interpolate_row_portable(plane, taps, 0, taps.width, out);
}

template <typename T>
void forward_impl(const at::Tensor& x, const at::Tensor& flow, at::Tensor& out, math::Padding padding) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), HW = H * W;
  const T* xp = x.const_data_ptr<T>();
  const T* fp = flow.const_data_ptr<T>();
  T* op = out.mutable_data_ptr<T>();
  at::parallel_for(0, N * H, /*grain_size=*/std::max<int64_t>(1, 16384 / std::max<int64_t>(1, W * C)),
                   [&](int64_t begin, int64_t end) {
                     RowTaps<T> taps(W);
                     for (int64_t row = begin; row < end; ++row) {
                       const int64_t n = row / H, y = row % H;
                       const T* fx = fp + (n * 2) * HW + y * W;
                       taps.fill(fx, fx + HW, y, H, padding);
                       for (int64_t c = 0; c < C; ++c) {
                         interpolate_row(xp + (n * C + c) * HW, taps, op + (n * C + c) * HW + y * W);
                       }
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

at::Tensor warp_cpu(const at::Tensor& x_in, const at::Tensor& flow_in, c10::string_view padding) {
  const auto mode = check_warp_args(x_in, flow_in, std::string_view(padding.data(), padding.size()));
  // The row taps index a plane with int32, which also halves the gathers' index width.
  TORCH_CHECK_VALUE(x_in.size(2) * x_in.size(3) < (int64_t(1) << 31), "warp: x must have fewer than 2^31 pixels "
                    "per channel on the CPU, got ", x_in.size(2), " x ", x_in.size(3));
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
  const auto mode = check_warp_args(x_in, flow_in, std::string_view(padding.data(), padding.size()));
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
