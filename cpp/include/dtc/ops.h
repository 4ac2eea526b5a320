#pragma once
// The C++ API of dtc's tensor ops. Every function goes through the PyTorch dispatcher, so C++
// callers (the networks, tests) get the same CPU/CUDA kernels, autograd and autocast as Python's
// torch.ops.dtc.* and dtc.ops.*.

#include <ATen/core/Tensor.h>

#include <array>
#include <string_view>
#include <tuple>

namespace dtc {

// Backward warp W(A)(p) = A(p - F(p)): bilinear sampling of `x` at each pixel minus its flow.
//   x     [N, C, H, W]  float32/float64 (also float16/bfloat16 on CUDA)
//   flow  [N, 2, H, W]  same dtype and device; channel 0 = dx, channel 1 = dy, in pixels
//   padding "border" (clamp the sample point into the image) or "zeros"
//   returns [N, C, H, W]
// Pixel centres sit at align_corners=True positions. A non-finite flow vector gives NaN in every
// channel of that output pixel and no gradient. Differentiable in x and flow.
at::Tensor warp(const at::Tensor& x, const at::Tensor& flow, std::string_view padding = "border");

// Gradients of warp: (grad_x, grad_flow); an entry is an undefined tensor where output_mask is false.
std::tuple<at::Tensor, at::Tensor> warp_backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& flow,
                                                 std::string_view padding, std::array<bool, 2> output_mask);

// Bilinear resize of a flow field [N, 2, h, w] to `size` = {H, W}. With `rescale`, the components are
// multiplied by the size ratio ((W-1)/(w-1) with align_corners, W/w without) so displacements stay in
// pixels of the new grid; the authors' released code does not rescale (preset "reference").
at::Tensor resize_flow(const at::Tensor& flow, at::IntArrayRef size, bool align_corners = true, bool rescale = true);

}  // namespace dtc
