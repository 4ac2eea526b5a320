// CUDA kernels of dtc::corr_distill_loss (see ops/xdim/corr_distill.cpp for the formula). One block
// per (slice i, point a) row; F is recomputed from the teacher points, never stored. Row results are
// written per block and summed by at::sum, so there are no atomics and the result is deterministic.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

#include "ops/xdim/corr_distill.h"

namespace dtc::ops {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t, typename acc_t>
__device__ inline acc_t dot(const scalar_t* x, const scalar_t* y, int64_t c) {
  acc_t acc = 0;
  for (int64_t k = 0; k < c; ++k) acc += static_cast<acc_t>(x[k]) * static_cast<acc_t>(y[k]);
  return acc;
}

template <typename acc_t>
__device__ inline acc_t block_sum(acc_t v, acc_t* shared) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) shared[threadIdx.x] += shared[threadIdx.x + stride];
    __syncthreads();
  }
  return shared[0];
}

// rowsum[i, a] = sum_b F(a, b)
template <typename scalar_t, typename acc_t>
__global__ void row_sum_kernel(const scalar_t* t, const int64_t* pair, int64_t n, int64_t ct, acc_t* rowsum) {
  __shared__ acc_t shared[kThreads];
  const int64_t a = blockIdx.x, i = blockIdx.y, j = pair[i];
  acc_t acc = 0;
  for (int64_t b = threadIdx.x; b < n; b += blockDim.x)
    acc += dot<scalar_t, acc_t>(t + (i * n + a) * ct, t + (j * n + b) * ct, ct);
  const acc_t total = block_sum(acc, shared);
  if (threadIdx.x == 0) rowsum[i * n + a] = total;
}

// rowloss[i, a] = sum_b -clamp(C, 0, cm) (F - rowmean + mean - b0)
template <typename scalar_t, typename acc_t>
__global__ void row_loss_kernel(const scalar_t* s, const scalar_t* t, const int64_t* pair, const acc_t* rowsum,
                                const acc_t* mean_f, int64_t n, int64_t cs, int64_t ct, acc_t b0, acc_t cm,
                                acc_t* rowloss) {
  __shared__ acc_t shared[kThreads];
  const int64_t a = blockIdx.x, i = blockIdx.y, j = pair[i];
  const acc_t shift = *mean_f - rowsum[i * n + a] / acc_t(n) - b0;
  acc_t acc = 0;
  for (int64_t b = threadIdx.x; b < n; b += blockDim.x) {
    acc_t c = dot<scalar_t, acc_t>(s + (i * n + a) * cs, s + (j * n + b) * cs, cs);
    c = c < acc_t(0) ? acc_t(0) : (c > cm ? cm : c);
    acc -= c * (dot<scalar_t, acc_t>(t + (i * n + a) * ct, t + (j * n + b) * ct, ct) + shift);
  }
  const acc_t total = block_sum(acc, shared);
  if (threadIdx.x == 0) rowloss[i * n + a] = total;
}

// The gradient of one row. by_first: block (a, i) fills g(a, .) and writes d/dS_i(a) = sum_b g S_j(b);
// otherwise block (b, i) fills g(., b) and writes d/dS_j(b) = sum_a g S_i(a).
template <typename scalar_t, typename acc_t, bool by_first>
__global__ void grad_kernel(const scalar_t* s, const scalar_t* t, const int64_t* pair, const acc_t* rowsum,
                            const acc_t* mean_f, const scalar_t* grad_loss, int64_t M, int64_t n, int64_t cs,
                            int64_t ct, acc_t b0, acc_t cm, acc_t* grad) {
  extern __shared__ unsigned char raw[];
  acc_t* g = reinterpret_cast<acc_t*>(raw);
  const int64_t fixed = blockIdx.x, i = blockIdx.y, j = pair[i];
  const acc_t scale = static_cast<acc_t>(*grad_loss) / (acc_t(M) * acc_t(n) * acc_t(n));
  for (int64_t other = threadIdx.x; other < n; other += blockDim.x) {
    const int64_t a = by_first ? fixed : other, b = by_first ? other : fixed;
    const acc_t c = dot<scalar_t, acc_t>(s + (i * n + a) * cs, s + (j * n + b) * cs, cs);
    acc_t v = 0;
    if (c >= acc_t(0) && c <= cm) {  // torch.clamp passes the gradient on the closed interval
      const acc_t f = dot<scalar_t, acc_t>(t + (i * n + a) * ct, t + (j * n + b) * ct, ct);
      v = -scale * (f - rowsum[i * n + a] / acc_t(n) + *mean_f - b0);
    }
    g[other] = v;
  }
  __syncthreads();
  const scalar_t* partner = by_first ? s + j * n * cs : s + i * n * cs;
  acc_t* out = by_first ? grad + (i * n + fixed) * cs : grad + (j * n + fixed) * cs;
  for (int64_t k = threadIdx.x; k < cs; k += blockDim.x) {
    acc_t acc = 0;
    for (int64_t other = 0; other < n; ++other) acc += g[other] * static_cast<acc_t>(partner[other * cs + k]);
    out[k] = acc;
  }
}

at::ScalarType acc_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

std::tuple<at::Tensor, at::Tensor> teacher_rows(const at::Tensor& t, const at::Tensor& p, int64_t M, int64_t n) {
  at::Tensor rowsum = at::empty({M, n}, t.options().dtype(acc_dtype(t.scalar_type())));
  const dim3 grid(static_cast<unsigned>(n), static_cast<unsigned>(M));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), "corr_distill_rows_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    row_sum_kernel<scalar_t, acc_t><<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        t.data_ptr<scalar_t>(), p.data_ptr<int64_t>(), n, t.size(2), rowsum.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  at::Tensor mean_f = rowsum.sum() / (double(M) * double(n) * double(n));
  return {rowsum, mean_f};
}

void check_grid(int64_t M, int64_t n) {
  TORCH_CHECK_VALUE(M <= 65535 && n <= (int64_t(1) << 31) - 1,
                    "corr_distill_loss (CUDA): at most 65535 slices, got M = ", M);
  TORCH_CHECK_VALUE(n * 8 <= 48 * 1024, "corr_distill_loss (CUDA): at most 6144 points per slice, got n = ", n);
}

at::Tensor corr_distill_cuda(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& pair, double b0,
                             double clamp_max) {
  corr_distill_check(student, teacher, pair, clamp_max);
  const c10::cuda::CUDAGuard guard(student.device());
  const at::Tensor s = student.contiguous(), t = teacher.contiguous(), p = pair.contiguous();
  const int64_t M = s.size(0), n = s.size(1);
  check_grid(M, n);
  at::Tensor rowsum, mean_f;
  std::tie(rowsum, mean_f) = teacher_rows(t, p, M, n);  // not a structured binding: lambdas capture it (C++17)
  at::Tensor rowloss = at::empty_like(rowsum);
  const dim3 grid(static_cast<unsigned>(n), static_cast<unsigned>(M));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "corr_distill_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    row_loss_kernel<scalar_t, acc_t><<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        s.data_ptr<scalar_t>(), t.data_ptr<scalar_t>(), p.data_ptr<int64_t>(), rowsum.data_ptr<acc_t>(),
        mean_f.data_ptr<acc_t>(), n, s.size(2), t.size(2), acc_t(b0), acc_t(clamp_max), rowloss.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return (rowloss.sum() / (double(M) * double(n) * double(n))).to(s.scalar_type());
}

at::Tensor corr_distill_backward_cuda(const at::Tensor& grad_loss, const at::Tensor& student, const at::Tensor& teacher,
                                      const at::Tensor& pair, double b0, double clamp_max) {
  corr_distill_check(student, teacher, pair, clamp_max);
  const c10::cuda::CUDAGuard guard(student.device());
  const at::Tensor s = student.contiguous(), t = teacher.contiguous(), p = pair.contiguous();
  const at::Tensor gl = grad_loss.to(s.scalar_type()).contiguous();
  const int64_t M = s.size(0), n = s.size(1), cs = s.size(2);
  check_grid(M, n);
  at::Tensor rowsum, mean_f;
  std::tie(rowsum, mean_f) = teacher_rows(t, p, M, n);  // not a structured binding: lambdas capture it (C++17)
  at::Tensor grad_a = at::empty({M, n, cs}, rowsum.options());
  at::Tensor grad_b = at::empty({M, n, cs}, rowsum.options());
  const dim3 grid(static_cast<unsigned>(n), static_cast<unsigned>(M));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "corr_distill_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const size_t shared = size_t(n) * sizeof(acc_t);
    auto stream = at::cuda::getCurrentCUDAStream();
    grad_kernel<scalar_t, acc_t, true><<<grid, kThreads, shared, stream>>>(
        s.data_ptr<scalar_t>(), t.data_ptr<scalar_t>(), p.data_ptr<int64_t>(), rowsum.data_ptr<acc_t>(),
        mean_f.data_ptr<acc_t>(), gl.data_ptr<scalar_t>(), M, n, cs, t.size(2), acc_t(b0), acc_t(clamp_max),
        grad_a.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    grad_kernel<scalar_t, acc_t, false><<<grid, kThreads, shared, stream>>>(
        s.data_ptr<scalar_t>(), t.data_ptr<scalar_t>(), p.data_ptr<int64_t>(), rowsum.data_ptr<acc_t>(),
        mean_f.data_ptr<acc_t>(), gl.data_ptr<scalar_t>(), M, n, cs, t.size(2), acc_t(b0), acc_t(clamp_max),
        grad_b.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return (grad_a + grad_b).to(s.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(dtc, CUDA, m) {
  m.impl("corr_distill_loss", &corr_distill_cuda);
  m.impl("corr_distill_loss_backward", &corr_distill_backward_cuda);
}

}  // namespace dtc::ops
