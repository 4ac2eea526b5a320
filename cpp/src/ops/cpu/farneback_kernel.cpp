// CPU kernel of dtc::farneback. Every stage is a pass over pixels that calls the shared per-pixel
// math of ops/common/farneback_math.h (the CUDA kernel calls the same functions), parallel over
// image rows of the whole batch with at::parallel_for. Each output element has one writer, so the
// result is deterministic and independent of the thread count.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "ops/common/farneback_math.h"
#include "ops/cpu/simd_math.h"
#include "ops/farneback.h"

namespace dtc::ops {
namespace {

namespace fb = math::farneback;

// Calls f(plane, y, x) for every pixel of `planes` planes of h×w, split by rows across threads.
template <typename F>
void for_each_pixel(int64_t planes, int h, int w, const F& f) {
  const int64_t grain = std::max<int64_t>(1, 8192 / std::max(1, w));
  at::parallel_for(0, planes * h, grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t p = row / h;
      const int y = int(row % h);
      for (int x = 0; x < w; ++x) f(p, y, x);
    }
  });
}

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

  // Channel 0 of each pair is prev, channel 1 next; uint8 keeps its 0..255 values.
  const at::Tensor images = at::cat({prev, next}, 1).to(at::kFloat).contiguous();
  at::Tensor smooth_tmp = at::empty_like(images), smoothed = at::empty_like(images);
  const int64_t image_planes = 2 * N;
  const float* img = images.const_data_ptr<float>();
  at::Tensor flow, prev_flow;
  int prev_h = 0, prev_w = 0;

  for (const FarnebackLevel& level : plan.levels) {
    const int h = level.height, w = level.width;
    const int64_t HW = int64_t(H) * W, hw = int64_t(h) * w;

    // 1. Pre-smoothing of the full-resolution images (OpenCV blurs before resizing each level).
    {
      float* tmp = smooth_tmp.mutable_data_ptr<float>();
      float* dst = smoothed.mutable_data_ptr<float>();
      const auto& k = level.smooth;
      for_each_pixel(image_planes, H, W, [&](int64_t p, int y, int x) {
        tmp[p * HW + int64_t(y) * W + x] = fb::smooth_at(img + p * HW, H, W, y, x, k, /*vertical=*/true);
      });
      for_each_pixel(image_planes, H, W, [&](int64_t p, int y, int x) {
        dst[p * HW + int64_t(y) * W + x] = fb::smooth_at(tmp + p * HW, H, W, y, x, k, /*vertical=*/false);
      });
    }
    // 2. Resize to the level.
    at::Tensor level_images = smoothed;
    if (h != H || w != W) {
      level_images = at::empty({N, 2, h, w}, f32);
      const float* src = smoothed.const_data_ptr<float>();
      float* dst = level_images.mutable_data_ptr<float>();
      for_each_pixel(image_planes, h, w, [&](int64_t p, int y, int x) {
        dst[p * hw + int64_t(y) * w + x] = fb::resize_at(src + p * HW, H, W, y, x, h, w);
      });
    }
    // 3. Polynomial expansion of both images: moments [N, 2, 3, h, w] -> R [N, 2, 5, h, w].
    at::Tensor moments = at::empty({N, 2, 3, h, w}, f32);
    at::Tensor R = at::empty({N, 2, 5, h, w}, f32);
    {
      const float* src = level_images.const_data_ptr<float>();
      float* mom = moments.mutable_data_ptr<float>();
      float* r = R.mutable_data_ptr<float>();
      for_each_pixel(image_planes, h, w, [&](int64_t p, int y, int x) {
        float v[3];
        fb::poly_vertical_at(src + p * hw, h, w, y, x, plan.basis, v);
        for (int c = 0; c < 3; ++c) mom[(p * 3 + c) * hw + int64_t(y) * w + x] = v[c];
      });
      for_each_pixel(image_planes, h, w, [&](int64_t p, int y, int x) {
        float v[5];
        fb::poly_horizontal_at(mom + p * 3 * hw, h, w, y, x, plan.basis, v);
        for (int c = 0; c < 5; ++c) r[(p * 5 + c) * hw + int64_t(y) * w + x] = v[c];
      });
    }
    // 4. Initial flow: zero at the coarsest level, else the coarser estimate upsampled.
    flow = at::empty({N, 2, h, w}, f32);
    {
      float* fl = flow.mutable_data_ptr<float>();
      if (!prev_flow.defined()) {
        flow.zero_();
      } else {
        const float* src = prev_flow.const_data_ptr<float>();
        const float up = float(1. / plan.pyr_scale);
        const int64_t phw = int64_t(prev_h) * prev_w;
        for_each_pixel(image_planes, h, w, [&](int64_t p, int y, int x) {
          fl[p * hw + int64_t(y) * w + x] = fb::resize_at(src + p * phw, prev_h, prev_w, y, x, h, w) * up;
        });
      }
    }
    // 5. Iterations: windowed normal equations -> solve -> re-linearise around the new flow.
    at::Tensor M = at::empty({N, 5, h, w}, f32);
    at::Tensor Mv = at::empty({N, 5, h, w}, f32);
    const float* r = R.const_data_ptr<float>();
    float* m = M.mutable_data_ptr<float>();
    float* mv = Mv.mutable_data_ptr<float>();
    float* fl = flow.mutable_data_ptr<float>();
    auto update_matrices = [&] {
      for_each_pixel(N, h, w, [&](int64_t n, int y, int x) {
        float v[5];
        fb::update_matrices_at(r + n * 10 * hw, r + (n * 10 + 5) * hw, fl + n * 2 * hw, h, w, y, x, v);
        for (int c = 0; c < 5; ++c) m[(n * 5 + c) * hw + int64_t(y) * w + x] = v[c];
      });
    };
    update_matrices();
    for (int it = 0; it < plan.iterations; ++it) {
      for_each_pixel(N, h, w, [&](int64_t n, int y, int x) {
        float v[5];
        fb::window_at(m + n * 5 * hw, h, w, y, x, plan.window, /*vertical=*/true, v);
        for (int c = 0; c < 5; ++c) mv[(n * 5 + c) * hw + int64_t(y) * w + x] = v[c];
      });
      for_each_pixel(N, h, w, [&](int64_t n, int y, int x) {
        float v[5];
        fb::window_at(mv + n * 5 * hw, h, w, y, x, plan.window, /*vertical=*/false, v);
        const int64_t i = n * 2 * hw + int64_t(y) * w + x;
        fb::solve_flow(v, plan.window_scale, &fl[i], &fl[i + hw]);
      });
      if (it + 1 < plan.iterations) update_matrices();
    }
    prev_flow = flow;
    prev_h = h;
    prev_w = w;
  }

  // 6. Optional median filter of each component (the authors' 3x3 post-filter).
  const int64_t HW = int64_t(H) * W;
  if (plan.median_radius == 0) {
    out.copy_(flow);
  } else {
    const float* src = flow.const_data_ptr<float>();
    float* dst = out.mutable_data_ptr<float>();
    const int radius = plan.median_radius;
    if (radius == 1 && W >= 3) {
      at::parallel_for(0, 2 * N * H, std::max<int64_t>(1, 8192 / W), [&](int64_t begin, int64_t end) {
        for (int64_t row = begin; row < end; ++row) {
          const int64_t p = row / H;
          const int y = int(row % H);
          const float* plane = src + p * HW;
          float* out_row = dst + p * HW + int64_t(y) * W;
          median3_row(plane + int64_t(fb::clamp_index(y - 1, H)) * W, plane + int64_t(y) * W,
                      plane + int64_t(fb::clamp_index(y + 1, H)) * W, W, out_row);
          out_row[0] = fb::median_at(plane, H, W, y, 0, 1);
          out_row[W - 1] = fb::median_at(plane, H, W, y, W - 1, 1);
        }
      });
    } else {
      for_each_pixel(2 * N, H, W, [&](int64_t p, int y, int x) {
        dst[p * HW + int64_t(y) * W + x] = fb::median_at(src + p * HW, H, W, y, x, radius);
      });
    }
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dtc, CPU, m) { m.impl("farneback", TORCH_FN(farneback_cpu)); }

}  // namespace dtc::ops
