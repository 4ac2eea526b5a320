// CUDA kernel of dtc::farneback. The same stages as the CPU kernel, each one launch over all pixels
// of the batch with one thread per output element, calling the shared per-pixel math of
// ops/common/farneback_math.h. Every stage reads only buffers the previous stage finished, so
// launches on one stream need no further synchronisation and the result is deterministic.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "ops/common/farneback_math.h"
#include "ops/farneback.h"

namespace dtc::ops {
namespace {

namespace fb = math::farneback;

constexpr int kThreads = 256;

// Stage functors: operator()(plane, y, x) computes and stores one output element. Functors rather
// than device lambdas keep the build free of --extended-lambda.
struct SmoothStage {
  const float* src;
  float* dst;
  int h, w;
  fb::SmoothKernel k;
  bool vertical;
  __device__ void operator()(int64_t p, int y, int x) const {
    const int64_t hw = int64_t(h) * w;
    dst[p * hw + int64_t(y) * w + x] = fb::smooth_at(src + p * hw, h, w, y, x, k, vertical);
  }
};

struct ResizeStage {
  const float* src;
  float* dst;
  int sh, sw, h, w;
  float multiplier;
  __device__ void operator()(int64_t p, int y, int x) const {
    dst[p * int64_t(h) * w + int64_t(y) * w + x] =
        fb::resize_at(src + p * int64_t(sh) * sw, sh, sw, y, x, h, w) * multiplier;
  }
};

struct PolyVerticalStage {
  const float* src;
  float* moments;
  int h, w;
  fb::PolyBasis basis;
  __device__ void operator()(int64_t p, int y, int x) const {
    const int64_t hw = int64_t(h) * w;
    float v[3];
    fb::poly_vertical_at(src + p * hw, h, w, y, x, basis, v);
    for (int c = 0; c < 3; ++c) moments[(p * 3 + c) * hw + int64_t(y) * w + x] = v[c];
  }
};

struct PolyHorizontalStage {
  const float* moments;
  float* R;
  int h, w;
  fb::PolyBasis basis;
  __device__ void operator()(int64_t p, int y, int x) const {
    const int64_t hw = int64_t(h) * w;
    float v[5];
    fb::poly_horizontal_at(moments + p * 3 * hw, h, w, y, x, basis, v);
    for (int c = 0; c < 5; ++c) R[(p * 5 + c) * hw + int64_t(y) * w + x] = v[c];
  }
};

struct UpdateMatricesStage {
  const float* R;
  const float* flow;
  float* M;
  int h, w;
  __device__ void operator()(int64_t n, int y, int x) const {
    const int64_t hw = int64_t(h) * w;
    float v[5];
    fb::update_matrices_at(R + n * 10 * hw, R + (n * 10 + 5) * hw, flow + n * 2 * hw, h, w, y, x, v);
    for (int c = 0; c < 5; ++c) M[(n * 5 + c) * hw + int64_t(y) * w + x] = v[c];
  }
};

struct WindowVerticalStage {
  const float* M;
  float* Mv;
  int h, w;
  fb::WindowKernel k;
  __device__ void operator()(int64_t n, int y, int x) const {
    const int64_t hw = int64_t(h) * w;
    float v[5];
    fb::window_at(M + n * 5 * hw, h, w, y, x, k, /*vertical=*/true, v);
    for (int c = 0; c < 5; ++c) Mv[(n * 5 + c) * hw + int64_t(y) * w + x] = v[c];
  }
};

struct WindowSolveStage {
  const float* Mv;
  float* flow;
  int h, w;
  fb::WindowKernel k;
  float scale;
  __device__ void operator()(int64_t n, int y, int x) const {
    const int64_t hw = int64_t(h) * w;
    float v[5];
    fb::window_at(Mv + n * 5 * hw, h, w, y, x, k, /*vertical=*/false, v);
    const int64_t i = n * 2 * hw + int64_t(y) * w + x;
    fb::solve_flow(v, scale, &flow[i], &flow[i + hw]);
  }
};

struct MedianStage {
  const float* src;
  float* dst;
  int h, w, radius;
  __device__ void operator()(int64_t p, int y, int x) const {
    const int64_t hw = int64_t(h) * w;
    dst[p * hw + int64_t(y) * w + x] = fb::median_at(src + p * hw, h, w, y, x, radius);
  }
};

template <typename Stage>
__global__ void pixel_kernel(int64_t total, int h, int w, Stage stage) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= total) return;
  const int64_t hw = int64_t(h) * w;
  const int64_t p = i / hw;
  const int64_t yx = i - p * hw;
  stage(p, int(yx / w), int(yx % w));
}

template <typename Stage>
void launch(int64_t planes, int h, int w, const Stage& stage, cudaStream_t stream) {
  const int64_t total = planes * h * w;
  if (total == 0) return;
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  pixel_kernel<Stage><<<static_cast<unsigned int>(blocks), kThreads, 0, stream>>>(total, h, w, stage);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor farneback_cuda(const at::Tensor& prev, const at::Tensor& next, double pyr_scale, int64_t levels,
                          int64_t winsize, int64_t iterations, int64_t poly_n, double poly_sigma, bool gaussian_window,
                          int64_t median) {
  const FarnebackPlan plan = check_and_plan_farneback(prev, next, pyr_scale, levels, winsize, iterations, poly_n,
                                                      poly_sigma, gaussian_window, median);
  const c10::cuda::CUDAGuard guard(prev.device());
  const int64_t N = prev.size(0);
  const int H = int(prev.size(2)), W = int(prev.size(3));
  const auto f32 = prev.options().dtype(at::kFloat).memory_format(at::MemoryFormat::Contiguous);
  at::Tensor out = at::empty({N, 2, H, W}, f32);
  if (N == 0) return out;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  const at::Tensor images = at::cat({prev, next}, 1).to(at::kFloat).contiguous();
  at::Tensor smooth_tmp = at::empty_like(images), smoothed = at::empty_like(images);
  const int64_t image_planes = 2 * N;
  at::Tensor flow, prev_flow;
  int prev_h = 0, prev_w = 0;

  for (const FarnebackLevel& level : plan.levels) {
    const int h = level.height, w = level.width;
    launch(image_planes, H, W,
           SmoothStage{images.const_data_ptr<float>(), smooth_tmp.mutable_data_ptr<float>(), H, W, level.smooth, true},
           stream);
    launch(image_planes, H, W,
           SmoothStage{smooth_tmp.const_data_ptr<float>(), smoothed.mutable_data_ptr<float>(), H, W, level.smooth, false},
           stream);
    at::Tensor level_images = smoothed;
    if (h != H || w != W) {
      level_images = at::empty({N, 2, h, w}, f32);
      launch(image_planes, h, w,
             ResizeStage{smoothed.const_data_ptr<float>(), level_images.mutable_data_ptr<float>(), H, W, h, w, 1.f},
             stream);
    }
    at::Tensor moments = at::empty({N, 2, 3, h, w}, f32);
    at::Tensor R = at::empty({N, 2, 5, h, w}, f32);
    launch(image_planes, h, w,
           PolyVerticalStage{level_images.const_data_ptr<float>(), moments.mutable_data_ptr<float>(), h, w, plan.basis},
           stream);
    launch(image_planes, h, w,
           PolyHorizontalStage{moments.const_data_ptr<float>(), R.mutable_data_ptr<float>(), h, w, plan.basis}, stream);

    if (!prev_flow.defined()) {
      flow = at::zeros({N, 2, h, w}, f32);
    } else {
      flow = at::empty({N, 2, h, w}, f32);
      launch(image_planes, h, w,
             ResizeStage{prev_flow.const_data_ptr<float>(), flow.mutable_data_ptr<float>(), prev_h, prev_w, h, w,
                         float(1. / plan.pyr_scale)},
             stream);
    }
    at::Tensor M = at::empty({N, 5, h, w}, f32);
    at::Tensor Mv = at::empty({N, 5, h, w}, f32);
    const UpdateMatricesStage update{R.const_data_ptr<float>(), flow.const_data_ptr<float>(), M.mutable_data_ptr<float>(),
                                     h, w};
    launch(N, h, w, update, stream);
    for (int it = 0; it < plan.iterations; ++it) {
      launch(N, h, w, WindowVerticalStage{M.const_data_ptr<float>(), Mv.mutable_data_ptr<float>(), h, w, plan.window},
             stream);
      launch(N, h, w,
             WindowSolveStage{Mv.const_data_ptr<float>(), flow.mutable_data_ptr<float>(), h, w, plan.window,
                              plan.window_scale},
             stream);
      if (it + 1 < plan.iterations) launch(N, h, w, update, stream);
    }
    prev_flow = flow;
    prev_h = h;
    prev_w = w;
  }

  if (plan.median_radius == 0) {
    out.copy_(flow);
  } else {
    launch(2 * N, H, W, MedianStage{flow.const_data_ptr<float>(), out.mutable_data_ptr<float>(), H, W, plan.median_radius},
           stream);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dtc, CUDA, m) { m.impl("farneback", TORCH_FN(farneback_cuda)); }

}  // namespace dtc::ops
