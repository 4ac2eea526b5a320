// dtc::tta_accumulate, CUDA kernel: one thread per native output pixel looping over the N draws, with the
// per-pixel math shared with the CPU kernel (ops/xdim/tta_accumulate.h). No atomics: deterministic.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

#include "ops/xdim/tta_accumulate.h"

namespace dtc::ops {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t, typename acc_t>
__global__ void tta_accumulate_kernel(const scalar_t* preds, const double* table, int64_t B, int64_t N, int64_t h,
                                      int64_t w, int64_t H, int64_t W, acc_t eps, scalar_t* mean, scalar_t* stdev,
                                      scalar_t* coverage) {
  const int64_t total = B * H * W;
  for (int64_t o = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; o < total; o += int64_t(gridDim.x) * blockDim.x) {
    const int64_t x = o % W, y = (o / W) % H, b = o / (H * W);
    acc_t m, s, c;
    math::tta_pixel<scalar_t, acc_t>(preds + b * N * h * w, table + b * N * 4, N, h, w, H, W, x, y, eps, &m, &s, &c);
    mean[o] = static_cast<scalar_t>(m);
    stdev[o] = static_cast<scalar_t>(s);
    coverage[o] = static_cast<scalar_t>(c);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> tta_accumulate_cuda(const at::Tensor& preds, const at::Tensor& params,
                                                                    at::IntArrayRef size, double eps) {
  tta_accumulate_check(preds, params, size, eps);
  const c10::cuda::CUDAGuard guard(preds.device());
  const at::Tensor p = preds.contiguous();
  const at::Tensor table = tta_transform_table(params);
  const int64_t B = p.size(0), N = p.size(1), h = p.size(2), w = p.size(3), H = size[0], W = size[1];
  at::Tensor mean = at::empty({B, H, W}, p.options());
  at::Tensor stdev = at::empty_like(mean), coverage = at::empty_like(mean);
  const int64_t total = B * H * W;
  // grid-stride loop: the grid stays within launch limits for any volume
  const int blocks = static_cast<int>(std::min<int64_t>((total + kThreads - 1) / kThreads, 65535));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "tta_accumulate_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    tta_accumulate_kernel<scalar_t, acc_t><<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        p.data_ptr<scalar_t>(), table.data_ptr<double>(), B, N, h, w, H, W, static_cast<acc_t>(eps),
        mean.data_ptr<scalar_t>(), stdev.data_ptr<scalar_t>(), coverage.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {mean, stdev, coverage};
}

}  // namespace

TORCH_LIBRARY_IMPL(dtc, CUDA, m) { m.impl("tta_accumulate", &tta_accumulate_cuda); }

}  // namespace dtc::ops
