// CPU kernels of dtc::tfd_loss: the per-pixel passes (ops/common/tfd_math.h) over (sample, pixel),
// parallel over pixels; the rest is shared with CUDA in ops/v2i/tfd_loss.cpp.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "ops/common/tfd_math.h"
#include "ops/v2i/tfd_loss.h"

namespace dtc::ops {
namespace {

void errors_cpu(const at::Tensor& s, const at::Tensor& t, bool normalise, at::Tensor& e, at::Tensor& t_abs) {
  const int64_t B = s.size(0), C = s.size(1), P = s.size(2);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "tfd_loss_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const scalar_t* sp = s.data_ptr<scalar_t>();
    const scalar_t* tp = t.data_ptr<scalar_t>();
    acc_t* ep = e.data_ptr<acc_t>();
    acc_t* ap = t_abs.defined() ? t_abs.data_ptr<acc_t>() : nullptr;
    at::parallel_for(0, B * P, std::max<int64_t>(1, 32768 / C), [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t b = i / P, p = i % P, offset = b * C * P + p;
        ep[i] = math::tfd::pixel_error<scalar_t, acc_t>(sp + offset, tp + offset, C, P, normalise,
                                                         ap ? ap + i : nullptr);
      }
    });
  });
}

void grad_cpu(const at::Tensor& s, const at::Tensor& t, bool normalise, const at::Tensor& k, at::Tensor& ds) {
  const int64_t B = s.size(0), C = s.size(1), P = s.size(2);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "tfd_loss_backward_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const scalar_t* sp = s.data_ptr<scalar_t>();
    const scalar_t* tp = t.data_ptr<scalar_t>();
    const acc_t* kp = k.data_ptr<acc_t>();
    scalar_t* dp = ds.data_ptr<scalar_t>();
    at::parallel_for(0, B * P, std::max<int64_t>(1, 32768 / C), [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t b = i / P, p = i % P, offset = b * C * P + p;
        math::tfd::pixel_grad<scalar_t, acc_t>(sp + offset, tp + offset, C, P, normalise, kp[i], dp + offset);
      }
    });
  });
}

at::Tensor tfd_cpu(const at::Tensor& s, const at::Tensor& t, const at::Tensor& m, double a_fg, double a_bg,
                   c10::string_view norm, bool attn) {
  return tfd::forward(s, t, m, a_fg, a_bg, std::string_view(norm.data(), norm.size()), attn, &errors_cpu);
}

at::Tensor tfd_backward_cpu(const at::Tensor& g, const at::Tensor& s, const at::Tensor& t, const at::Tensor& m,
                            double a_fg, double a_bg, c10::string_view norm, bool attn) {
  return tfd::backward(g, s, t, m, a_fg, a_bg, std::string_view(norm.data(), norm.size()), attn, &errors_cpu,
                       &grad_cpu);
}

}  // namespace

TORCH_LIBRARY_IMPL(dtc, CPU, m) {
  m.impl("tfd_loss", &tfd_cpu);
  m.impl("tfd_loss_backward", &tfd_backward_cpu);
}

}  // namespace dtc::ops
