#pragma once
// Shared by the warp op's kernels: argument validation and the parsed padding mode.
#include <ATen/core/Tensor.h>

#include <string_view>

#include "ops/common/warp_math.h"

namespace dtc::ops {

// Validates user input for warp / warp_backward with messages that name the argument and the
// expectation. Returns the parsed padding mode.
math::Padding check_warp_args(const at::Tensor& x, const at::Tensor& flow, std::string_view padding);

// grad_out must match the forward output exactly.
void check_warp_grad(const at::Tensor& grad_out, const at::Tensor& x);

}  // namespace dtc::ops
