// Every schema of the dtc operator library, in one place: this file is the contract that the
// CPU, CUDA, Autograd and Autocast kernels and the Python fake kernels implement.
#include <torch/library.h>

#include "dtc/ops.h"

TORCH_LIBRARY(dtc, m) {
  m.def("warp(Tensor x, Tensor flow, str padding='border') -> Tensor");
  m.def("warp_backward(Tensor grad_out, Tensor x, Tensor flow, str padding, bool[2] output_mask) -> (Tensor, Tensor)");
  // Composite: built from ATen ops, so autograd, fake tensors and every backend come for free.
  m.def("resize_flow(Tensor flow, int[2] size, bool align_corners=True, bool rescale=True) -> Tensor",
        torch::dispatch(c10::DispatchKey::CompositeImplicitAutograd, TORCH_FN(dtc::resize_flow)));
}
