#include "ops/warp.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>

#include "dtc/ops.h"

namespace dtc {
namespace ops {

math::Padding check_warp_args(const at::Tensor& x, const at::Tensor& flow, std::string_view padding) {
  math::Padding mode;
  if (padding == "border") {
    mode = math::Padding::Border;
  } else if (padding == "zeros") {
    mode = math::Padding::Zeros;
  } else {
    TORCH_CHECK_VALUE(false, "warp: padding must be 'border' or 'zeros', got '", padding, "'");
  }
  TORCH_CHECK_VALUE(x.dim() == 4, "warp: x must be a 4-D tensor [N, C, H, W], got shape ", x.sizes());
  TORCH_CHECK_VALUE(flow.dim() == 4 && flow.size(1) == 2,
                    "warp: flow must have shape [N, 2, H, W] (channel 0 = dx, 1 = dy, in pixels), got shape ",
                    flow.sizes());
  TORCH_CHECK_VALUE(flow.size(0) == x.size(0), "warp: flow's batch size ", flow.size(0), " must match x's ",
                    x.size(0), " (x ", x.sizes(), ", flow ", flow.sizes(), ")");
  TORCH_CHECK_VALUE(flow.size(2) == x.size(2) && flow.size(3) == x.size(3), "warp: flow's spatial size [",
                    flow.size(2), ", ", flow.size(3), "] must match x's [", x.size(2), ", ", x.size(3),
                    "] (dtc.ops.warp resizes a smaller flow; torch.ops.dtc.warp does not)");
  TORCH_CHECK_VALUE(x.size(2) > 0 && x.size(3) > 0, "warp: x must have non-zero height and width, got shape ",
                    x.sizes());
  TORCH_CHECK_VALUE(x.device() == flow.device(), "warp: x and flow must be on the same device, got x on ",
                    x.device(), " and flow on ", flow.device());
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), "warp: x must be a floating-point tensor, got ",
                   x.scalar_type());
  TORCH_CHECK_TYPE(x.scalar_type() == flow.scalar_type(), "warp: x and flow must have the same dtype, got x ",
                   x.scalar_type(), " and flow ", flow.scalar_type());
  if (x.device().is_cpu()) {
    TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
                     "warp: on the CPU x and flow must be float32 or float64, got ", x.scalar_type(),
                     " (float16/bfloat16 are supported on CUDA)");
  } else {
    TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble ||
                         x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16,
                     "warp: x and flow must be float32, float64, float16 or bfloat16, got ", x.scalar_type());
  }
  return mode;
}

void check_warp_grad(const at::Tensor& grad_out, const at::Tensor& x) {
  TORCH_CHECK_VALUE(grad_out.sizes() == x.sizes(), "warp_backward: grad_out must have shape ", x.sizes(),
                    " like the forward output, got ", grad_out.sizes());
  TORCH_CHECK_TYPE(grad_out.scalar_type() == x.scalar_type() && grad_out.device() == x.device(),
                   "warp_backward: grad_out must have x's dtype and device (", x.scalar_type(), ", ", x.device(),
                   "), got ", grad_out.scalar_type(), ", ", grad_out.device());
}

}  // namespace ops

at::Tensor warp(const at::Tensor& x, const at::Tensor& flow, std::string_view padding) {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("dtc::warp", "").typed<at::Tensor(
      const at::Tensor&, const at::Tensor&, c10::string_view)>();
  return op.call(x, flow, c10::string_view(padding.data(), padding.size()));
}

std::tuple<at::Tensor, at::Tensor> warp_backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& flow,
                                                 std::string_view padding, std::array<bool, 2> output_mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("dtc::warp_backward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                 const at::Tensor&, c10::string_view,
                                                                 std::array<bool, 2>)>();
  return op.call(grad_out, x, flow, c10::string_view(padding.data(), padding.size()), output_mask);
}

at::Tensor resize_flow(const at::Tensor& flow, at::IntArrayRef size, bool align_corners, bool rescale) {
  TORCH_CHECK_VALUE(flow.dim() == 4 && flow.size(1) == 2, "resize_flow: flow must have shape [N, 2, h, w], got ",
                    flow.sizes());
  TORCH_CHECK_VALUE(size.size() == 2 && size[0] > 0 && size[1] > 0,
                    "resize_flow: size must be two positive integers [H, W], got ", size);
  const int64_t h = flow.size(2), w = flow.size(3);
  TORCH_CHECK_VALUE(h > 0 && w > 0, "resize_flow: flow must have non-zero height and width, got ", flow.sizes());
  if (h == size[0] && w == size[1]) {
    return flow;
  }
  at::Tensor resized = at::upsample_bilinear2d(flow, size, align_corners);
  if (!rescale) {
    return resized;
  }
  // A displacement of d pixels on the old grid spans d * ratio pixels on the new one.
  auto ratio = [&](int64_t to, int64_t from) -> double {
    if (align_corners) {
      return from > 1 ? double(to - 1) / double(from - 1) : 1.0;
    }
    return double(to) / double(from);
  };
  // Scalars multiply on the device without a host-to-device copy of a scale tensor.
  return at::cat({resized.narrow(1, 0, 1) * ratio(size[1], w), resized.narrow(1, 1, 1) * ratio(size[0], h)}, 1);
}

}  // namespace dtc
