// Autograd and autocast for dtc::warp, registered in C++ so the C++ networks get gradients
// without Python. The backward is an op of its own (dtc::warp_backward) so it dispatches to
// the CPU or CUDA kernel like the forward.
#include <ATen/autocast_mode.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "dtc/ops.h"

namespace dtc::ops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class WarpFunction : public torch::autograd::Function<WarpFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& flow, c10::string_view padding) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({x, flow});
    ctx->saved_data["padding"] = std::string(padding);
    return dtc::warp(x, flow, std::string_view(padding.data(), padding.size()));
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const std::string padding = ctx->saved_data["padding"].toStringRef();
    // An undefined incoming gradient means the output did not influence the loss.
    at::Tensor grad_out = grads[0].defined() ? grads[0] : at::zeros_like(saved[0]);
    auto [grad_x, grad_flow] = dtc::warp_backward(grad_out, saved[0], saved[1], padding,
                                                  {ctx->needs_input_grad(0), ctx->needs_input_grad(1)});
    return {grad_x, grad_flow, at::Tensor()};
  }
};

at::Tensor warp_autograd(const at::Tensor& x, const at::Tensor& flow, c10::string_view padding) {
  return WarpFunction::apply(x, flow, padding);
}

// Under autocast both inputs are brought to their common (widest) floating type, so a half-precision
// prediction can be warped with a float32 flow; sample positions keep the flow's precision.
template <c10::DispatchKey AutocastKey, c10::DeviceType Device>
at::Tensor warp_autocast(const at::Tensor& x, const at::Tensor& flow, c10::string_view padding) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(AutocastKey);
  const auto common = at::promote_types(x.scalar_type(), flow.scalar_type());
  return dtc::warp(x.to(common), flow.to(common), std::string_view(padding.data(), padding.size()));
}

}  // namespace

TORCH_LIBRARY_IMPL(dtc, Autograd, m) { m.impl("warp", TORCH_FN(warp_autograd)); }
TORCH_LIBRARY_IMPL(dtc, AutocastCPU, m) {
  m.impl("warp", TORCH_FN((warp_autocast<c10::DispatchKey::AutocastCPU, c10::kCPU>)));
}
TORCH_LIBRARY_IMPL(dtc, AutocastCUDA, m) {
  m.impl("warp", TORCH_FN((warp_autocast<c10::DispatchKey::AutocastCUDA, c10::kCUDA>)));
}

}  // namespace dtc::ops
