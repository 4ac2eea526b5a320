// CUDA kernels of dtc::msda_st. One thread per output element (b, q, h, d) walks the M K sampling points
// of its query and head; neighbouring threads read neighbouring channels of one cell, so loads coalesce.
// The backward scatters into grad_value and sums grad_attention / grad_location over d with atomics, so
// it is not bitwise deterministic (the CPU kernel is).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/Atomic.cuh>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "ops/common/msda_math.h"
#include "ops/v2i/msda_st.h"

namespace dtc::ops {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxMaps = 64;  // T * L; the maps' shapes and offsets travel in the launch arguments

struct MapTable {
  int64_t h[kMaxMaps], w[kMaxMaps], start[kMaxMaps];
};

MapTable table_of(const msda::Geometry& g) {
  TORCH_CHECK_VALUE(g.M <= kMaxMaps, "msda_st: at most ", kMaxMaps, " maps (frames x levels) on CUDA, got ", g.M);
  MapTable t{};
  for (int64_t m = 0; m < g.M; ++m) {
    t.h[m] = g.shapes[2 * m];
    t.w[m] = g.shapes[2 * m + 1];
    t.start[m] = g.starts[m];
  }
  return t;
}

template <typename scalar_t>
__global__ void forward_kernel(const scalar_t* value, const scalar_t* loc, const scalar_t* attn, scalar_t* out,
                               int64_t n, int64_t S, int64_t Q, int64_t heads, int64_t D, int64_t M, int64_t K,
                               MapTable maps) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int64_t d = i % D, h = (i / D) % heads, q = (i / (D * heads)) % Q, b = i / (D * heads * Q);
  const int64_t pos_stride = heads * D;
  const scalar_t* vbh = value + b * S * pos_stride + h * D + d;
  const int64_t row = ((b * Q + q) * heads + h) * M;
  scalar_t acc = 0;
  for (int64_t m = 0; m < M; ++m) {
    const scalar_t* vm = vbh + maps.start[m] * pos_stride;
    for (int64_t k = 0; k < K; ++k) {
      const int64_t pk = (row + m) * K + k;
      const auto taps = math::msda::bilinear_taps<scalar_t>(loc[2 * pk], loc[2 * pk + 1], maps.h[m], maps.w[m]);
      const scalar_t a = attn[pk];
      for (int c = 0; c < 4; ++c) {
        if (taps.index[c] >= 0) acc += a * taps.weight[c] * vm[taps.index[c] * pos_stride];
      }
    }
  }
  out[i] = acc;
}

template <typename scalar_t>
__global__ void backward_kernel(const scalar_t* grad_out, const scalar_t* value, const scalar_t* loc,
                                const scalar_t* attn, scalar_t* g_value, scalar_t* g_loc, scalar_t* g_attn, int64_t n,
                                int64_t S, int64_t Q, int64_t heads, int64_t D, int64_t M, int64_t K, MapTable maps) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int64_t d = i % D, h = (i / D) % heads, q = (i / (D * heads)) % Q, b = i / (D * heads * Q);
  const int64_t pos_stride = heads * D;
  const int64_t base = b * S * pos_stride + h * D + d;
  const int64_t row = ((b * Q + q) * heads + h) * M;
  const scalar_t go = grad_out[i];
  for (int64_t m = 0; m < M; ++m) {
    const int64_t map_base = base + maps.start[m] * pos_stride;
    for (int64_t k = 0; k < K; ++k) {
      const int64_t pk = (row + m) * K + k;
      const auto taps = math::msda::bilinear_taps<scalar_t>(loc[2 * pk], loc[2 * pk + 1], maps.h[m], maps.w[m]);
      const scalar_t a = attn[pk];
      scalar_t d_attn = 0, d_x = 0, d_y = 0;
      for (int c = 0; c < 4; ++c) {
        if (taps.index[c] < 0) continue;
        const int64_t at = map_base + taps.index[c] * pos_stride;
        const scalar_t prod = go * value[at];
        d_attn += taps.weight[c] * prod;
        d_x += taps.dx[c] * prod;
        d_y += taps.dy[c] * prod;
        gpuAtomicAdd(g_value + at, a * taps.weight[c] * go);
      }
      gpuAtomicAdd(g_attn + pk, d_attn);
      gpuAtomicAdd(g_loc + 2 * pk, a * d_x * scalar_t(maps.w[m]));
      gpuAtomicAdd(g_loc + 2 * pk + 1, a * d_y * scalar_t(maps.h[m]));
    }
  }
}

unsigned blocks_for(int64_t n) { return unsigned((n + kThreads - 1) / kThreads); }

at::Tensor msda_st_cuda(const at::Tensor& value_in, at::IntArrayRef spatial_shapes, const at::Tensor& loc_in,
                        const at::Tensor& attn_in) {
  const auto g = msda::check(value_in, spatial_shapes, loc_in, attn_in);
  const c10::cuda::CUDAGuard guard(value_in.device());
  const auto maps = table_of(g);
  const at::Tensor value = value_in.contiguous(), loc = loc_in.contiguous(), attn = attn_in.contiguous();
  at::Tensor out = at::empty({g.B, g.Q, g.heads * g.D}, value.options());
  const int64_t n = out.numel();
  if (n == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "msda_st_cuda", [&] {
    forward_kernel<scalar_t><<<blocks_for(n), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        value.data_ptr<scalar_t>(), loc.data_ptr<scalar_t>(), attn.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), n,
        g.S, g.Q, g.heads, g.D, g.M, g.K, maps);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> msda_st_backward_cuda(const at::Tensor& grad_out_in,
                                                                     const at::Tensor& value_in,
                                                                     at::IntArrayRef spatial_shapes,
                                                                     const at::Tensor& loc_in,
                                                                     const at::Tensor& attn_in) {
  const auto g = msda::check(value_in, spatial_shapes, loc_in, attn_in);
  TORCH_CHECK_VALUE(grad_out_in.dim() == 3 && grad_out_in.size(0) == g.B && grad_out_in.size(1) == g.Q &&
                        grad_out_in.size(2) == g.heads * g.D,
                    "msda_st_backward: grad_out must be [B, Q, heads * D] = [", g.B, ", ", g.Q, ", ", g.heads * g.D,
                    "], got ", grad_out_in.sizes());
  const c10::cuda::CUDAGuard guard(value_in.device());
  const auto maps = table_of(g);
  const at::Tensor value = value_in.contiguous(), loc = loc_in.contiguous(), attn = attn_in.contiguous();
  const at::Tensor grad_out = grad_out_in.to(value.scalar_type()).contiguous();
  at::Tensor g_value = at::zeros_like(value), g_loc = at::zeros_like(loc), g_attn = at::zeros_like(attn);
  const int64_t n = grad_out.numel();
  if (n == 0) return {g_value, g_loc, g_attn};
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "msda_st_backward_cuda", [&] {
    backward_kernel<scalar_t><<<blocks_for(n), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        grad_out.data_ptr<scalar_t>(), value.data_ptr<scalar_t>(), loc.data_ptr<scalar_t>(), attn.data_ptr<scalar_t>(),
        g_value.data_ptr<scalar_t>(), g_loc.data_ptr<scalar_t>(), g_attn.data_ptr<scalar_t>(), n, g.S, g.Q, g.heads,
        g.D, g.M, g.K, maps);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {g_value, g_loc, g_attn};
}

}  // namespace

TORCH_LIBRARY_IMPL(dtc, CUDA, m) {
  m.impl("msda_st", &msda_st_cuda);
  m.impl("msda_st_backward", &msda_st_backward_cuda);
}

}  // namespace dtc::ops
