// dtc::tta_accumulate, CPU kernel (the math and the conventions are in ops/xdim/tta_accumulate.h).
// Not differentiable: pseudo-labels are computed without gradient.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <tuple>

#include "ops/xdim/tta_accumulate.h"

namespace dtc::ops {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> tta_accumulate_cpu(const at::Tensor& preds, const at::Tensor& params,
                                                                   at::IntArrayRef size, double eps) {
  tta_accumulate_check(preds, params, size, eps);
  const at::Tensor p = preds.contiguous();
  const at::Tensor table = tta_transform_table(params);
  const int64_t B = p.size(0), N = p.size(1), h = p.size(2), w = p.size(3), H = size[0], W = size[1];
  // double accumulators whatever the input dtype; cast once at the end
  at::Tensor mean = at::empty({B, H, W}, p.options().dtype(at::kDouble));
  at::Tensor stdev = at::empty_like(mean), coverage = at::empty_like(mean);
  double* mp = mean.data_ptr<double>();
  double* sp = stdev.data_ptr<double>();
  double* cp = coverage.data_ptr<double>();
  const double* tp = table.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "tta_accumulate_cpu", [&] {
    const scalar_t* pp = p.data_ptr<scalar_t>();
    at::parallel_for(0, B * H, 1, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t b = r / H, y = r % H;
        for (int64_t x = 0; x < W; ++x) {
          const int64_t o = r * W + x;
          math::tta_pixel<scalar_t, double>(pp + b * N * h * w, tp + b * N * 4, N, h, w, H, W, x, y, eps, mp + o,
                                            sp + o, cp + o);
        }
      }
    });
  });
  const auto dtype = p.scalar_type();
  return {mean.to(dtype), stdev.to(dtype), coverage.to(dtype)};
}

}  // namespace

TORCH_LIBRARY_IMPL(dtc, CPU, m) { m.impl("tta_accumulate", &tta_accumulate_cpu); }

}  // namespace dtc::ops
