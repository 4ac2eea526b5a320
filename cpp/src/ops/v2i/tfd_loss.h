// dtc::tfd_loss: argument checks and the device-independent part (normalisation choice, the per-sample
// foreground/background sums, the per-pixel gradient weights), shared by the CPU and CUDA kernels,
// which supply only the per-pixel passes (docs/v2i.md, target-guided feature distillation).
#pragma once
#include <ATen/ATen.h>

#include <string_view>

namespace dtc::ops::tfd {

enum class Norm { PixelLN, Pearson, None };

Norm parse_norm(std::string_view norm);

// student, teacher [B, C, H, W] of one floating dtype on one device; mask [B, 1, H, W] (or [B, H, W])
// in [0, 1]. Throws ValueError/TypeError naming the argument.
void check(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& mask, double alpha_fg,
           double alpha_bg);

// The per-pixel passes of one backend. `errors` fills e [B, P] (and t_abs [B, P] when defined) in the
// accumulation dtype; `grad` writes ds [B, C, P] (student's dtype) from k [B, P]. Inputs are contiguous
// [B, C, P]; `normalise` selects pixel_ln (true) or none (false).
using ErrorsFn = void (*)(const at::Tensor& s, const at::Tensor& t, bool normalise, at::Tensor& e, at::Tensor& t_abs);
using GradFn = void (*)(const at::Tensor& s, const at::Tensor& t, bool normalise, const at::Tensor& k, at::Tensor& ds);

at::Tensor forward(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& mask, double alpha_fg,
                   double alpha_bg, std::string_view norm, bool attn_weight, ErrorsFn errors);
at::Tensor backward(const at::Tensor& grad_loss, const at::Tensor& student, const at::Tensor& teacher,
                    const at::Tensor& mask, double alpha_fg, double alpha_bg, std::string_view norm, bool attn_weight,
                    ErrorsFn errors, GradFn grad);

}  // namespace dtc::ops::tfd
