// dtc::edt: the exact Euclidean distance transform to the object (nonzero elements) over the last 1-3
// dimensions of a mask, with a physical spacing per dimension. Separable: one pass of the shared 1-D
// lower envelope (ops/common/edt_math.h, the weighted F-measure's transform) per axis, the axis' squared
// spacing as the parabola weight. Not differentiable: masks are targets.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

#include "ops/common/edt_math.h"

namespace dtc::ops {
namespace {

at::Tensor edt_cpu(const at::Tensor& mask, at::ArrayRef<double> spacing) {
  const int64_t k = int64_t(spacing.size());
  TORCH_CHECK_VALUE(k >= 1 && k <= 3, "edt: spacing must give 1, 2 or 3 values (one per spatial dimension, the last ",
                    "dimensions of mask), got ", k);
  for (int64_t a = 0; a < k; ++a) {
    TORCH_CHECK_VALUE(std::isfinite(spacing[a]) && spacing[a] > 0, "edt: spacing[", a,
                      "] must be a positive finite number, got ", spacing[a]);
  }
  TORCH_CHECK_VALUE(mask.dim() >= k, "edt: mask must have at least ", k, " dimensions (the spatial ones last), got shape ",
                    mask.sizes());
  TORCH_CHECK_TYPE(mask.scalar_type() != at::kComplexFloat && mask.scalar_type() != at::kComplexDouble,
                   "edt: mask must be boolean, integer or floating point, got ", mask.scalar_type());
  std::vector<int64_t> spatial(mask.sizes().end() - k, mask.sizes().end());
  for (int64_t a = 0; a < k; ++a) {
    TORCH_CHECK_VALUE(spatial[a] < (int64_t(1) << 31), "edt: spatial dimension ", a, " is too long (", spatial[a], ")");
  }
  at::Tensor out = at::empty(mask.sizes(), mask.options().dtype(at::kDouble));
  if (mask.numel() == 0) return out;
  const at::Tensor object = mask.ne(0).contiguous();
  const bool* m = object.data_ptr<bool>();
  double* g = out.data_ptr<double>();
  const int64_t total = out.numel();
  at::parallel_for(0, total, 4096, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) g[i] = m[i] ? 0.0 : -1.0;
  });
  int64_t stride = 1;  // elements between neighbours along the axis
  for (int64_t a = k - 1; a >= 0; --a) {
    const int64_t n = spatial[a], lines = total / n;
    const double weight = spacing[a] * spacing[a];
    at::parallel_for(0, lines, std::max<int64_t>(1, 4096 / n), [&](int64_t l0, int64_t l1) {
      std::vector<double> f(n), d(n), z_num(n), z_den(n);
      std::vector<int32_t> arg(n), v(n);
      for (int64_t line = l0; line < l1; ++line) {
        const int64_t base = (line / stride) * n * stride + line % stride;
        for (int64_t q = 0; q < n; ++q) f[q] = g[base + q * stride];
        edt::lower_envelope<double>(f.data(), n, weight, d.data(), arg.data(), v.data(), z_num.data(), z_den.data());
        for (int64_t q = 0; q < n; ++q) g[base + q * stride] = d[q];
      }
    });
    stride *= n;
  }
  const double inf = std::numeric_limits<double>::infinity();
  at::parallel_for(0, total, 4096, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) g[i] = g[i] < 0 ? inf : std::sqrt(g[i]);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dtc, CPU, m) { m.impl("edt", &edt_cpu); }

}  // namespace dtc::ops
