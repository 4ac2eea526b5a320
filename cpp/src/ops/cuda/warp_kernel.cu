// CUDA kernels of dtc::warp. One thread per output pixel computes the bilinear taps once and
// loops over channels, so the flow is read once per pixel and channel planes are written
// coalesced. Half and bfloat16 are computed in float (at::opmath_type).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/native/cuda/KernelUtils.cuh>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

#include "ops/common/warp_math.h"
#include "ops/warp.h"

namespace dtc::ops {
namespace {

constexpr int kThreads = 256;

inline int64_t blocks_for(int64_t n) { return (n + kThreads - 1) / kThreads; }

// The thread's output pixel (sample n, offset yx within a plane) and its bilinear taps, sampled at
// p - F(p); false for threads past the last pixel.
template <typename opmath_t, typename scalar_t, typename index_t>
__device__ __forceinline__ bool thread_pixel_taps(const scalar_t* __restrict__ flow, index_t N, index_t H, index_t W,
                                                  math::Padding padding, index_t* n, index_t* yx,
                                                  math::BilinearTaps<opmath_t>* t) {
  const index_t HW = H * W;
  const index_t pixel = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x;
  if (pixel >= N * HW) return false;
  *n = pixel / HW;
  *yx = pixel % HW;
  const index_t y = *yx / W, xi = *yx % W;
  const scalar_t* f = flow + *n * 2 * HW + *yx;
  *t = math::bilinear_taps<opmath_t>(opmath_t(xi) - opmath_t(f[0]), opmath_t(y) - opmath_t(f[HW]), W, H, padding);
  return true;
}

template <typename scalar_t, typename index_t>
__global__ void warp_forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ flow,
                                    scalar_t* __restrict__ out, index_t N, index_t C, index_t H, index_t W,
                                    math::Padding padding) {
  using opmath_t = at::opmath_type<scalar_t>;
  const index_t HW = H * W;
  index_t n, yx;
  math::BilinearTaps<opmath_t> t;
  if (!thread_pixel_taps(flow, N, H, W, padding, &n, &yx, &t)) return;
  for (index_t c = 0; c < C; ++c) {
    const scalar_t* plane = x + (n * C + c) * HW;
    opmath_t value;
    if (t.finite) {
      opmath_t v00, v01, v10, v11;
      math::load_taps(t, static_cast<int64_t>(W), [plane](int64_t i) { return opmath_t(plane[i]); }, &v00, &v01, &v10,
                      &v11);
      value = math::interpolate(t, v00, v01, v10, v11);
    } else {
      value = std::numeric_limits<opmath_t>::quiet_NaN();
    }
    out[(n * C + c) * HW + yx] = static_cast<scalar_t>(value);
  }
}

template <typename scalar_t, typename index_t>
__global__ void warp_backward_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ x,
                                     const scalar_t* __restrict__ flow, at::opmath_type<scalar_t>* __restrict__ grad_x,
                                     scalar_t* __restrict__ grad_flow, index_t N, index_t C, index_t H, index_t W,
                                     math::Padding padding) {
  using opmath_t = at::opmath_type<scalar_t>;
  const index_t HW = H * W;
  index_t n, yx;
  math::BilinearTaps<opmath_t> t;
  if (!thread_pixel_taps(flow, N, H, W, padding, &n, &yx, &t)) return;
  opmath_t acc_x = 0, acc_y = 0;
  if (t.finite) {
    const index_t numel = N * C * HW;
    for (index_t c = 0; c < C; ++c) {
      const index_t plane_offset = (n * C + c) * HW;
      const opmath_t go = opmath_t(grad_out[plane_offset + yx]);
      if (grad_x != nullptr) {
        // Several output pixels may sample the same source pixel: atomics make this backward
        // non-deterministic (flagged through alertNotDeterministic on the host side).
        math::scatter_taps(t, static_cast<int64_t>(W), go, [=](int64_t i, opmath_t v) {
          at::native::fastAtomicAdd(grad_x, static_cast<index_t>(plane_offset + i), numel, v, true);
        });
      }
      if (grad_flow != nullptr) {
        const scalar_t* plane = x + plane_offset;
        opmath_t v00, v01, v10, v11, d_sx, d_sy;
        math::load_taps(t, static_cast<int64_t>(W), [plane](int64_t i) { return opmath_t(plane[i]); }, &v00, &v01,
                        &v10, &v11);
        math::interpolate_grad_coords(t, v00, v01, v10, v11, &d_sx, &d_sy);
        acc_x += go * d_sx;
        acc_y += go * d_sy;
      }
    }
  }
  if (grad_flow != nullptr) {
    // The sample point is p - F(p), so the flow gradient is the negated coordinate gradient.
    grad_flow[n * 2 * HW + yx] = static_cast<scalar_t>(-acc_x);
    grad_flow[n * 2 * HW + HW + yx] = static_cast<scalar_t>(-acc_y);
  }
}

bool fits_int32(const at::Tensor& t) { return t.numel() < std::numeric_limits<int32_t>::max(); }

at::Tensor warp_cuda(const at::Tensor& x_in, const at::Tensor& flow_in, c10::string_view padding) {
  const auto mode = check_warp_args(x_in, flow_in, std::string_view(padding.data(), padding.size()));
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor flow = flow_in.contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  if (out.numel() == 0) return out;
  const int64_t pixels = N * H * W;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dtc::warp (CUDA)", [&] {
    if (fits_int32(x) && fits_int32(flow)) {
      warp_forward_kernel<scalar_t, int32_t><<<blocks_for(pixels), kThreads, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), flow.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), N, C, H, W,
          mode);
    } else {
      warp_forward_kernel<scalar_t, int64_t><<<blocks_for(pixels), kThreads, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), flow.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), N, C, H, W,
          mode);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> warp_backward_cuda(const at::Tensor& grad_out_in, const at::Tensor& x_in,
                                                      const at::Tensor& flow_in, c10::string_view padding,
                                                      std::array<bool, 2> output_mask) {
  const auto mode = check_warp_args(x_in, flow_in, std::string_view(padding.data(), padding.size()));
  check_warp_grad(grad_out_in, x_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor grad_out = grad_out_in.contiguous();
  const at::Tensor x = x_in.contiguous();
  const at::Tensor flow = flow_in.contiguous();
  at::Tensor grad_x, grad_flow;
  if (output_mask[0]) {
    at::globalContext().alertNotDeterministic("dtc::warp_backward (CUDA) with respect to x");
    // Half and bfloat16 gradients accumulate in float and are rounded once at the end: with border
    // clamping many output pixels add into one edge pixel, and a half running sum stalls at 2048.
    grad_x = at::zeros(x.sizes(), x.options()
                                      .dtype(at::toOpMathType(x.scalar_type()))
                                      .memory_format(at::MemoryFormat::Contiguous));
  }
  if (output_mask[1]) {
    grad_flow = at::zeros(flow.sizes(), flow.options().memory_format(at::MemoryFormat::Contiguous));
  }
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t pixels = N * H * W;
  auto in_input_dtype = [&x](const at::Tensor& g) { return g.defined() ? g.to(x.scalar_type()) : g; };
  if (pixels == 0 || (!output_mask[0] && !output_mask[1])) return {in_input_dtype(grad_x), grad_flow};
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dtc::warp_backward (CUDA)", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    opmath_t* gx = output_mask[0] ? grad_x.mutable_data_ptr<opmath_t>() : nullptr;
    scalar_t* gf = output_mask[1] ? grad_flow.mutable_data_ptr<scalar_t>() : nullptr;
    if (fits_int32(x) && fits_int32(flow)) {
      warp_backward_kernel<scalar_t, int32_t><<<blocks_for(pixels), kThreads, 0, stream>>>(
          grad_out.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), flow.const_data_ptr<scalar_t>(), gx, gf,
          N, C, H, W, mode);
    } else {
      warp_backward_kernel<scalar_t, int64_t><<<blocks_for(pixels), kThreads, 0, stream>>>(
          grad_out.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), flow.const_data_ptr<scalar_t>(), gx, gf,
          N, C, H, W, mode);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {in_input_dtype(grad_x), grad_flow};
}

}  // namespace

TORCH_LIBRARY_IMPL(dtc, CUDA, m) {
  m.impl("warp", TORCH_FN(warp_cuda));
  m.impl("warp_backward", TORCH_FN(warp_backward_cuda));
}

}  // namespace dtc::ops
