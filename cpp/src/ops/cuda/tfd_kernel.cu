// CUDA kernels of dtc::tfd_loss: one thread per (sample, pixel) runs the shared per-pixel math
// (ops/common/tfd_math.h); neighbouring threads read neighbouring pixels of one channel, so the loads
// coalesce. No atomics: every output element has one writer, and the sums over pixels are ATen
// reductions in ops/v2i/tfd_loss.cpp, so the result is deterministic.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <type_traits>

#include "ops/common/tfd_math.h"
#include "ops/v2i/tfd_loss.h"

namespace dtc::ops {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t, typename acc_t>
__global__ void errors_kernel(const scalar_t* s, const scalar_t* t, int64_t n, int64_t C, int64_t P, bool normalise,
                              acc_t* e, acc_t* t_abs) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int64_t b = i / P, p = i % P, offset = b * C * P + p;
  e[i] = math::tfd::pixel_error<scalar_t, acc_t>(s + offset, t + offset, C, P, normalise,
                                                  t_abs != nullptr ? t_abs + i : nullptr);
}

template <typename scalar_t, typename acc_t>
__global__ void grad_kernel(const scalar_t* s, const scalar_t* t, int64_t n, int64_t C, int64_t P, bool normalise,
                            const acc_t* k, scalar_t* ds) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int64_t b = i / P, p = i % P, offset = b * C * P + p;
  math::tfd::pixel_grad<scalar_t, acc_t>(s + offset, t + offset, C, P, normalise, k[i], ds + offset);
}

unsigned blocks_for(int64_t n) { return unsigned((n + kThreads - 1) / kThreads); }

void errors_cuda(const at::Tensor& s, const at::Tensor& t, bool normalise, at::Tensor& e, at::Tensor& t_abs) {
  const c10::cuda::CUDAGuard guard(s.device());
  const int64_t B = s.size(0), C = s.size(1), P = s.size(2), n = B * P;
  if (n == 0) return;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "tfd_loss_cuda", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    errors_kernel<scalar_t, acc_t><<<blocks_for(n), kThreads, 0, stream>>>(
        s.data_ptr<scalar_t>(), t.data_ptr<scalar_t>(), n, C, P, normalise, e.data_ptr<acc_t>(),
        t_abs.defined() ? t_abs.data_ptr<acc_t>() : nullptr);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void grad_cuda(const at::Tensor& s, const at::Tensor& t, bool normalise, const at::Tensor& k, at::Tensor& ds) {
  const c10::cuda::CUDAGuard guard(s.device());
  const int64_t B = s.size(0), C = s.size(1), P = s.size(2), n = B * P;
  if (n == 0) return;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "tfd_loss_backward_cuda", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    grad_kernel<scalar_t, acc_t><<<blocks_for(n), kThreads, 0, stream>>>(
        s.data_ptr<scalar_t>(), t.data_ptr<scalar_t>(), n, C, P, normalise, k.data_ptr<acc_t>(),
        ds.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor tfd_cuda(const at::Tensor& s, const at::Tensor& t, const at::Tensor& m, double a_fg, double a_bg,
                    c10::string_view norm, bool attn) {
  return tfd::forward(s, t, m, a_fg, a_bg, std::string_view(norm.data(), norm.size()), attn, &errors_cuda);
}

at::Tensor tfd_backward_cuda(const at::Tensor& g, const at::Tensor& s, const at::Tensor& t, const at::Tensor& m,
                             double a_fg, double a_bg, c10::string_view norm, bool attn) {
  return tfd::backward(g, s, t, m, a_fg, a_bg, std::string_view(norm.data(), norm.size()), attn, &errors_cuda,
                       &grad_cuda);
}

}  // namespace

TORCH_LIBRARY_IMPL(dtc, CUDA, m) {
  m.impl("tfd_loss", &tfd_cuda);
  m.impl("tfd_loss_backward", &tfd_backward_cuda);
}

}  // namespace dtc::ops
