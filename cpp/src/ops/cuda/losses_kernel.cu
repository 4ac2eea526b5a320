// CUDA kernels of the DTC loss ops. Forward reductions write one partial sum per thread block and
// finish with an ATen sum over the partials (deterministic, no float atomics, no host sync). The
// backward kernels that scatter through the bilinear warp use atomics, as warp_backward does, and
// report it through alertNotDeterministic. Accumulation is in float for float32 (at::acc_type).
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/native/cuda/KernelUtils.cuh>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "dtc/ops.h"
#include "ops/common/loss_math.h"
#include "ops/losses.h"

namespace dtc::ops {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr double kMapEps = 1e-6;

// Grid x holds up to 2^31 - 1 blocks; y and z only 65535.
constexpr int64_t kMaxGridX = (int64_t(1) << 31) - 1;
constexpr int64_t kMaxGridYZ = 65535;

int blocks_for(int64_t n, int64_t cap = 1 << 16) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, cap)));
}

// Sums K values over the block; thread 0 gets the totals in v.
template <int K, typename T>
__device__ void block_sum(T (&v)[K]) {
  __shared__ T shared[K][kWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    for (int offset = 16; offset > 0; offset /= 2) v[k] += __shfl_down_sync(0xffffffff, v[k], offset);
    if (lane == 0) shared[k][warp] = v[k];
  }
  __syncthreads();
  if (threadIdx.x == 0) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      T s = 0;
      for (int w = 0; w < kWarps; ++w) s += shared[k][w];
      v[k] = s;
    }
  }
  __syncthreads();
}

// ---------------------------------------------------------------- temporal consistency
template <typename scalar_t, typename acc_t>
__global__ void consistency_forward_kernel(math::ConsistencyParams<scalar_t> P, const scalar_t* __restrict__ logits,
                                           const scalar_t* __restrict__ images, const scalar_t* __restrict__ flows,
                                           const scalar_t* __restrict__ flows_bw, acc_t* __restrict__ partial,
                                           scalar_t* __restrict__ conf_map, scalar_t* __restrict__ target_map) {
  // The unbounded index (pair) runs on grid x (up to 2^31 - 1 blocks), the capped chunk index on y (<= 65535).
  const int64_t HW = P.H * P.W, pair = blockIdx.x;
  const int64_t b = pair / (P.T_ - 1), t = pair % (P.T_ - 1) + 1;
  acc_t v[2] = {0, 0};
  for (int64_t yx = blockIdx.y * int64_t(blockDim.x) + threadIdx.x; yx < HW; yx += int64_t(gridDim.y) * blockDim.x) {
    const auto px = math::consistency_pixel<scalar_t>(P, logits, images, flows, flows_bw, b, t, yx / P.W, yx % P.W);
    v[0] += acc_t(px.conf * (scalar_t(1) - DTC_FABS(px.p_cur - px.target)));
    v[1] += acc_t(px.conf);
    if (conf_map != nullptr) {
      conf_map[pair * HW + yx] = px.conf;
      target_map[pair * HW + yx] = px.target;
    }
  }
  block_sum<2>(v);
  if (threadIdx.x == 0) {
    acc_t* out = partial + (pair * gridDim.y + blockIdx.y) * 2;
    out[0] = v[0];
    out[1] = v[1];
  }
}

template <typename scalar_t>
__global__ void consistency_backward_kernel(math::ConsistencyParams<scalar_t> P, const scalar_t* __restrict__ logits,
                                            const scalar_t* __restrict__ images, const scalar_t* __restrict__ flows,
                                            const scalar_t* __restrict__ flows_bw, const scalar_t* __restrict__ coef,
                                            scalar_t* __restrict__ grad, int64_t numel) {
  const int64_t HW = P.H * P.W, pairs = P.B * (P.T_ - 1);
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= pairs * HW) return;
  const int64_t pair = i / HW, yx = i % HW;
  const int64_t b = pair / (P.T_ - 1), t = pair % (P.T_ - 1) + 1;
  const auto px = math::consistency_pixel<scalar_t>(P, logits, images, flows, flows_bw, b, t, yx / P.W, yx % P.W);
  // L = 1 - sum(M (1 - |P_t - P~|)) / D: dL/dP_t = M sign(P_t - P~) / D = -dL/dP~.
  const scalar_t d = coef[t - 1] * px.conf * math::sign(px.p_cur - px.target);
  if (d == scalar_t(0)) return;
  at::native::fastAtomicAdd(grad, (b * P.T_ + t) * HW + yx, numel, d * px.p_cur * (scalar_t(1) - px.p_cur), true);
  if (!P.soft_target || !px.taps.finite) return;
  const auto& tp = px.taps;
  const int64_t base = (b * P.T_ + t - 1) * HW;
  const scalar_t wx0 = scalar_t(1) - tp.wx1, wy0 = scalar_t(1) - tp.wy1;
  const int64_t i00 = tp.y0 * P.W + tp.x0;
  auto add = [&](int64_t k, scalar_t w) {
    const scalar_t p = math::sigmoid(logits[base + k]);
    at::native::fastAtomicAdd(grad, base + k, numel, -d * w * p * (scalar_t(1) - p), true);
  };
  if (tp.in_y0 && tp.in_x0) add(i00, wy0 * wx0);
  if (tp.in_y0 && tp.in_x1) add(i00 + 1, wy0 * tp.wx1);
  if (tp.in_y1 && tp.in_x0) add(i00 + P.W, tp.wy1 * wx0);
  if (tp.in_y1 && tp.in_x1) add(i00 + P.W + 1, tp.wy1 * tp.wx1);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> consistency_cuda(
    const at::Tensor& logits_in, const at::Tensor& images_in, const at::Tensor& flows_in,
    const std::optional<at::Tensor>& flows_bw_in, at::ArrayRef<double> channel_scale, double alpha,
    c10::string_view confidence, bool soft_target, bool normalise, bool return_maps) {
  const auto in = consistency_inputs(logits_in, images_in, flows_in, flows_bw_in, channel_scale, alpha,
                                     std::string_view(confidence.data(), confidence.size()));
  const at::Tensor &logits = in.logits, &images = in.images, &flows = in.flows, &flows_bw = in.flows_backward;
  const auto residual = in.residual;
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const int64_t B = logits.size(0), T = logits.size(1), H = logits.size(3), W = logits.size(4);
  at::Tensor conf = return_maps ? at::empty({B, T - 1, 1, H, W}, logits.options()) : at::empty({0}, logits.options());
  at::Tensor target = return_maps ? at::empty({B, T - 1, 1, H, W}, logits.options()) : at::empty({0}, logits.options());
  if (B == 0) {
    return {at::ones({T - 1}, logits.options()), at::zeros({T - 1}, logits.options()), conf, target};
  }
  const int nbx = blocks_for(H * W, 128);
  at::Tensor loss, mass;
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "dtc::temporal_consistency (CUDA)", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    const auto P = consistency_params<scalar_t>(logits, images, flows_bw.defined(), channel_scale, alpha, residual,
                                                soft_target);
    at::Tensor partial = at::empty({B * (T - 1) * nbx * 2}, logits.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    const dim3 grid(B * (T - 1), nbx);
    consistency_forward_kernel<scalar_t, acc_t><<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        P, logits.const_data_ptr<scalar_t>(), images.const_data_ptr<scalar_t>(), flows.const_data_ptr<scalar_t>(),
        flows_bw.defined() ? flows_bw.const_data_ptr<scalar_t>() : nullptr, partial.mutable_data_ptr<acc_t>(),
        return_maps ? conf.mutable_data_ptr<scalar_t>() : nullptr,
        return_maps ? target.mutable_data_ptr<scalar_t>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const at::Tensor sums = partial.view({B, T - 1, nbx, 2}).sum(at::IntArrayRef{0, 2});
    const at::Tensor agree = sums.select(1, 0), m = sums.select(1, 1);
    const at::Tensor denom = normalise ? m.clamp_min(1e-6) : at::full_like(m, double(B * H * W));
    loss = (1 - agree / denom).to(logits.scalar_type());
    mass = m.to(logits.scalar_type());
  });
  return {loss, mass, conf, target};
}

at::Tensor consistency_backward_cuda(const at::Tensor& grad_loss, const at::Tensor& mass, const at::Tensor& logits_in,
                                     const at::Tensor& images_in, const at::Tensor& flows_in,
                                     const std::optional<at::Tensor>& flows_bw_in, at::ArrayRef<double> channel_scale,
                                     double alpha, c10::string_view confidence, bool soft_target, bool normalise) {
  const auto in = consistency_inputs(logits_in, images_in, flows_in, flows_bw_in, channel_scale, alpha,
                                     std::string_view(confidence.data(), confidence.size()));
  const at::Tensor &logits = in.logits, &images = in.images, &flows = in.flows, &flows_bw = in.flows_backward;
  const auto residual = in.residual;
  const int64_t B = logits.size(0), T = logits.size(1), H = logits.size(3), W = logits.size(4);
  check_saved("temporal_consistency_backward", "grad_loss", grad_loss, {T - 1}, logits_in);
  check_saved("temporal_consistency_backward", "mass", mass, {T - 1}, logits_in);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  if (soft_target) at::globalContext().alertNotDeterministic("dtc::temporal_consistency_backward (CUDA, soft target)");
  at::Tensor grad = at::zeros(logits.sizes(), logits.options());
  if (B == 0) return grad;
  const at::Tensor denom = normalise ? mass.clamp_min(1e-6) : at::full_like(mass, double(B * H * W));
  const at::Tensor coef = (grad_loss / denom).contiguous();
  const int64_t n = B * (T - 1) * H * W;
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "dtc::temporal_consistency_backward (CUDA)", [&] {
    const auto P = consistency_params<scalar_t>(logits, images, flows_bw.defined(), channel_scale, alpha, residual,
                                                soft_target);
    // The soft-target scatter below applies the sigmoid to the previous frame's logits itself.
    TORCH_INTERNAL_ASSERT(!P.probabilities, "the CUDA consistency kernels take logits");
    consistency_backward_kernel<scalar_t><<<blocks_for(n, kMaxGridX), kThreads, 0,
                                            at::cuda::getCurrentCUDAStream()>>>(
        P, logits.const_data_ptr<scalar_t>(), images.const_data_ptr<scalar_t>(), flows.const_data_ptr<scalar_t>(),
        flows_bw.defined() ? flows_bw.const_data_ptr<scalar_t>() : nullptr, coef.const_data_ptr<scalar_t>(),
        grad.mutable_data_ptr<scalar_t>(), grad.numel());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad;
}

// ---------------------------------------------------------------- prototypes
template <typename scalar_t>
__global__ void local_mask_kernel(const scalar_t* __restrict__ probs, const scalar_t* __restrict__ flows,
                                  const scalar_t* __restrict__ thr, bool hard_target, uint8_t* __restrict__ mask,
                                  int64_t B, int64_t Tn, int64_t H, int64_t W, int64_t h, int64_t w) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t hw = h * w, HW = H * W;
  if (i >= B * (Tn - 1) * hw) return;
  const int64_t pair = i / hw, q = i % hw;
  const int64_t b = pair / (Tn - 1), t = pair % (Tn - 1) + 1;
  const int64_t sy = math::nearest_source(q / w, H, h), sx = math::nearest_source(q % w, W, w);
  const int64_t src = sy * W + sx;
  const scalar_t threshold = thr[t - 1];
  uint8_t m = 0;
  if (probs[(b * Tn + t) * HW + src] > threshold) {
    const scalar_t* flow = flows + (b * Tn + t) * 2 * HW;
    const auto taps = math::bilinear_taps<scalar_t>(scalar_t(sx) - flow[src], scalar_t(sy) - flow[HW + src], W, H,
                                                    math::Padding::Border);
    m = taps.finite &&
        math::warped_target(math::sample_plane(taps, probs + (b * Tn + t - 1) * HW, W), hard_target) > threshold;
  }
  mask[i] = m;
}

template <typename scalar_t, typename acc_t>
__global__ void local_pool_kernel(const scalar_t* __restrict__ features, const scalar_t* __restrict__ flow_base,
                                  int64_t frames_per_window, int64_t frame_offset, const uint8_t* __restrict__ mask,
                                  const scalar_t* __restrict__ mass, scalar_t* __restrict__ v_prev,
                                  scalar_t* __restrict__ v_cur, int64_t Tn, int64_t C, int64_t h, int64_t w) {
  const int64_t c = blockIdx.y, pair = blockIdx.x, hw = h * w;
  const int64_t b = pair / (Tn - 1), t = pair % (Tn - 1) + 1;
  const scalar_t* flow = flow_base + (b * frames_per_window + t - frame_offset) * 2 * hw;
  const scalar_t* f_cur = features + ((b * Tn + t) * C + c) * hw;
  const scalar_t* f_prev = features + ((b * Tn + t - 1) * C + c) * hw;
  const uint8_t* m = mask + pair * hw;
  acc_t v[2] = {0, 0};
  for (int64_t q = threadIdx.x; q < hw; q += blockDim.x) {
    if (!m[q]) continue;
    v[1] += acc_t(f_cur[q]);
    const auto taps = math::bilinear_taps<scalar_t>(scalar_t(q % w) - flow[q], scalar_t(q / w) - flow[hw + q], w, h,
                                                    math::Padding::Border);
    if (taps.finite) v[0] += acc_t(math::sample_plane(taps, f_prev, w));
  }
  block_sum<2>(v);
  if (threadIdx.x == 0) {
    const acc_t denom = max(acc_t(mass[pair]), acc_t(kMapEps));
    v_prev[pair * C + c] = scalar_t(v[0] / denom);
    v_cur[pair * C + c] = scalar_t(v[1] / denom);
  }
}

template <typename scalar_t>
__global__ void local_backward_kernel(const scalar_t* __restrict__ g_prev, const scalar_t* __restrict__ g_cur,
                                      const scalar_t* __restrict__ mass, const scalar_t* __restrict__ flow_base,
                                      int64_t frames_per_window, int64_t frame_offset, const uint8_t* __restrict__ mask,
                                      scalar_t* __restrict__ grad, int64_t B, int64_t Tn, int64_t C, int64_t h,
                                      int64_t w, int64_t numel) {
  const int64_t hw = h * w;
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= B * (Tn - 1) * hw || !mask[i]) return;
  const int64_t pair = i / hw, q = i % hw;
  const int64_t b = pair / (Tn - 1), t = pair % (Tn - 1) + 1;
  const scalar_t inv = scalar_t(1) / max(mass[pair], scalar_t(kMapEps));
  const scalar_t* flow = flow_base + (b * frames_per_window + t - frame_offset) * 2 * hw;
  const auto tp = math::bilinear_taps<scalar_t>(scalar_t(q % w) - flow[q], scalar_t(q / w) - flow[hw + q], w, h,
                                                math::Padding::Border);
  const scalar_t wx0 = scalar_t(1) - tp.wx1, wy0 = scalar_t(1) - tp.wy1;
  const int64_t i00 = tp.y0 * w + tp.x0;
  for (int64_t c = 0; c < C; ++c) {
    // Each current-frame element is written by exactly one thread; the scatter into the previous
    // frame may collide (atomics), and frames in the middle of a window receive both.
    at::native::fastAtomicAdd(grad, ((b * Tn + t) * C + c) * hw + q, numel, g_cur[pair * C + c] * inv, true);
    if (!tp.finite) continue;
    const scalar_t go = g_prev[pair * C + c] * inv;
    const int64_t base = ((b * Tn + t - 1) * C + c) * hw;
    if (tp.in_y0 && tp.in_x0) at::native::fastAtomicAdd(grad, base + i00, numel, go * wy0 * wx0, true);
    if (tp.in_y0 && tp.in_x1) at::native::fastAtomicAdd(grad, base + i00 + 1, numel, go * wy0 * tp.wx1, true);
    if (tp.in_y1 && tp.in_x0) at::native::fastAtomicAdd(grad, base + i00 + w, numel, go * tp.wy1 * wx0, true);
    if (tp.in_y1 && tp.in_x1) at::native::fastAtomicAdd(grad, base + i00 + w + 1, numel, go * tp.wy1 * tp.wx1, true);
  }
}

at::Tensor local_masks_cuda(const at::Tensor& probs, const at::Tensor& flows, const at::Tensor& threshold,
                            bool hard_target, int64_t h, int64_t w) {
  const int64_t B = probs.size(0), Tn = probs.size(1), H = probs.size(3), W = probs.size(4);
  at::Tensor mask = at::empty({B, Tn - 1, h, w}, probs.options().dtype(at::kByte));
  const int64_t n = mask.numel();
  if (n == 0) return mask;
  AT_DISPATCH_FLOATING_TYPES(probs.scalar_type(), "dtc::local_prototypes mask (CUDA)", [&] {
    local_mask_kernel<scalar_t><<<blocks_for(n, kMaxGridX), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        probs.const_data_ptr<scalar_t>(), flows.const_data_ptr<scalar_t>(), threshold.const_data_ptr<scalar_t>(),
        hard_target, mask.mutable_data_ptr<uint8_t>(), B, Tn, H, W, h, w);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return mask;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> local_prototypes_cuda(const at::Tensor& probs_in,
                                                                     const at::Tensor& features_in,
                                                                     const at::Tensor& flows_in,
                                                                     const at::Tensor& threshold_in,
                                                                     bool rescale_flow, bool hard_target) {
  check_prototype_args("local_prototypes", probs_in, features_in, &flows_in, threshold_in);
  const c10::cuda::CUDAGuard guard(probs_in.device());
  const at::Tensor probs = probs_in.contiguous(), features = features_in.contiguous(), flows = flows_in.contiguous();
  const at::Tensor threshold = threshold_in.contiguous();
  const int64_t B = probs.size(0), Tn = probs.size(1);
  const int64_t C = features.size(2), h = features.size(3), w = features.size(4);
  at::Tensor v_prev = at::zeros({B, Tn - 1, C}, features.options());
  at::Tensor v_cur = at::zeros({B, Tn - 1, C}, features.options());
  const at::Tensor mask = local_masks_cuda(probs, flows, threshold, hard_target, h, w);
  // An integer count: exact and deterministic.
  const at::Tensor mass = mask.view({B, Tn - 1, h * w}).sum(2, /*keepdim=*/false, at::kLong).to(features.scalar_type());
  if (B == 0 || C == 0) return {v_prev, v_cur, mass};
  const FeatureFlow ff = feature_flow(flows, h, w, rescale_flow);
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "dtc::local_prototypes (CUDA)", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    TORCH_CHECK_VALUE(C <= kMaxGridYZ, "local_prototypes: at most ", kMaxGridYZ, " feature channels on CUDA, got ", C);
    const dim3 grid(B * (Tn - 1), C);
    local_pool_kernel<scalar_t, acc_t><<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        features.const_data_ptr<scalar_t>(), ff.storage.const_data_ptr<scalar_t>(), ff.frames_per_window,
        ff.frame_offset, mask.const_data_ptr<uint8_t>(), mass.const_data_ptr<scalar_t>(),
        v_prev.mutable_data_ptr<scalar_t>(), v_cur.mutable_data_ptr<scalar_t>(), Tn, C, h, w);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {v_prev, v_cur, mass};
}

at::Tensor local_prototypes_backward_cuda(const at::Tensor& grad_prev_in, const at::Tensor& grad_cur_in,
                                          const at::Tensor& mass_in, const at::Tensor& probs_in,
                                          const at::Tensor& features_in, const at::Tensor& flows_in,
                                          const at::Tensor& threshold_in, bool rescale_flow, bool hard_target) {
  check_local_prototypes_backward_args(grad_prev_in, grad_cur_in, mass_in, probs_in, features_in, flows_in,
                                       threshold_in);
  const int64_t B = probs_in.size(0), Tn = probs_in.size(1);
  const int64_t C = features_in.size(2), h = features_in.size(3), w = features_in.size(4);
  const c10::cuda::CUDAGuard guard(probs_in.device());
  at::globalContext().alertNotDeterministic("dtc::local_prototypes_backward (CUDA)");
  const at::Tensor probs = probs_in.contiguous(), flows = flows_in.contiguous(), threshold = threshold_in.contiguous();
  const at::Tensor g_prev = grad_prev_in.contiguous(), g_cur = grad_cur_in.contiguous(), mass = mass_in.contiguous();
  at::Tensor grad = at::zeros(features_in.sizes(), features_in.options().memory_format(at::MemoryFormat::Contiguous));
  if (grad.numel() == 0) return grad;
  const at::Tensor mask = local_masks_cuda(probs, flows, threshold, hard_target, h, w);
  const FeatureFlow ff = feature_flow(flows, h, w, rescale_flow);
  const int64_t n = mask.numel();
  AT_DISPATCH_FLOATING_TYPES(features_in.scalar_type(), "dtc::local_prototypes_backward (CUDA)", [&] {
    local_backward_kernel<scalar_t><<<blocks_for(n, kMaxGridX), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        g_prev.const_data_ptr<scalar_t>(), g_cur.const_data_ptr<scalar_t>(), mass.const_data_ptr<scalar_t>(),
        ff.storage.const_data_ptr<scalar_t>(), ff.frames_per_window, ff.frame_offset, mask.const_data_ptr<uint8_t>(),
        grad.mutable_data_ptr<scalar_t>(), B, Tn, C, h, w, grad.numel());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad;
}

// Row r = (pair, which): which 0 pools frame t-1, 1 pools frame t, both under pair t's threshold.
// Channel slot C of each row counts the background pixels.
template <typename scalar_t, typename acc_t>
__global__ void global_pool_kernel(const scalar_t* __restrict__ probs, const scalar_t* __restrict__ features,
                                   const scalar_t* __restrict__ thr, acc_t* __restrict__ sums, int64_t Tn, int64_t H,
                                   int64_t W, int64_t C, int64_t h, int64_t w) {
  const int64_t c = blockIdx.y, r = blockIdx.x, hw = h * w, HW = H * W;
  const int64_t pair = r / 2, which = r % 2;
  const int64_t b = pair / (Tn - 1), t = pair % (Tn - 1) + 1, frame = t - 1 + which;
  const scalar_t* p = probs + (b * Tn + frame) * HW;
  const scalar_t threshold = thr[t - 1];
  const scalar_t* f = features + ((b * Tn + frame) * C + (c < C ? c : 0)) * hw;
  acc_t v[1] = {0};
  for (int64_t q = threadIdx.x; q < hw; q += blockDim.x) {
    const int64_t src = math::nearest_source(q / w, H, h) * W + math::nearest_source(q % w, W, w);
    if (p[src] > threshold) continue;
    v[0] += c < C ? acc_t(f[q]) : acc_t(1);
  }
  block_sum<1>(v);
  if (threadIdx.x == 0) sums[r * (C + 1) + c] = v[0];
}

template <typename scalar_t>
__global__ void global_backward_kernel(const scalar_t* __restrict__ probs, const scalar_t* __restrict__ thr,
                                       const scalar_t* __restrict__ g_prev, const scalar_t* __restrict__ g_cur,
                                       const scalar_t* __restrict__ m_prev, const scalar_t* __restrict__ m_cur,
                                       scalar_t* __restrict__ grad, int64_t B, int64_t Tn, int64_t H, int64_t W,
                                       int64_t C, int64_t h, int64_t w) {
  const int64_t hw = h * w;
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= B * Tn * C * hw) return;
  const int64_t q = i % hw, c = (i / hw) % C, frame = i / (hw * C);
  const int64_t b = frame / Tn, s = frame % Tn;
  const scalar_t p = probs[frame * H * W + math::nearest_source(q / w, H, h) * W + math::nearest_source(q % w, W, w)];
  scalar_t g = 0;
  if (s >= 1 && !(p > thr[s - 1])) {  // current frame of pair s
    const int64_t pair = b * (Tn - 1) + s - 1;
    g += g_cur[pair * C + c] / max(m_cur[pair], scalar_t(kMapEps));
  }
  if (s + 1 < Tn && !(p > thr[s])) {  // previous frame of pair s + 1
    const int64_t pair = b * (Tn - 1) + s;
    g += g_prev[pair * C + c] / max(m_prev[pair], scalar_t(kMapEps));
  }
  grad[i] = g;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> global_prototypes_cuda(const at::Tensor& probs_in,
                                                                                  const at::Tensor& features_in,
                                                                                  const at::Tensor& threshold_in) {
  check_prototype_args("global_prototypes", probs_in, features_in, nullptr, threshold_in);
  const c10::cuda::CUDAGuard guard(probs_in.device());
  const at::Tensor probs = probs_in.contiguous(), features = features_in.contiguous(), threshold = threshold_in.contiguous();
  const int64_t B = probs.size(0), Tn = probs.size(1), H = probs.size(3), W = probs.size(4);
  const int64_t C = features.size(2), h = features.size(3), w = features.size(4);
  if (B == 0) {
    auto e = at::empty({0, Tn - 1, C}, features.options());
    auto m = at::empty({0, Tn - 1}, features.options());
    return {e, e.clone(), m, m.clone()};
  }
  at::Tensor out_prev, out_cur, mass_prev, mass_cur;
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "dtc::global_prototypes (CUDA)", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    at::Tensor sums = at::empty({B * (Tn - 1) * 2, C + 1}, features.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    TORCH_CHECK_VALUE(C + 1 <= kMaxGridYZ, "global_prototypes: at most ", kMaxGridYZ - 1,
                      " feature channels on CUDA, got ", C);
    const dim3 grid(B * (Tn - 1) * 2, C + 1);
    global_pool_kernel<scalar_t, acc_t><<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        probs.const_data_ptr<scalar_t>(), features.const_data_ptr<scalar_t>(), threshold.const_data_ptr<scalar_t>(),
        sums.mutable_data_ptr<acc_t>(), Tn, H, W, C, h, w);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const at::Tensor s = sums.view({B, Tn - 1, 2, C + 1});
    const at::Tensor count = s.narrow(3, C, 1);
    const at::Tensor pooled = (s.narrow(3, 0, C) / count.clamp_min(kMapEps)).to(features.scalar_type());
    out_prev = pooled.select(2, 0).contiguous();
    out_cur = pooled.select(2, 1).contiguous();
    mass_prev = count.select(2, 0).squeeze(-1).to(features.scalar_type()).contiguous();
    mass_cur = count.select(2, 1).squeeze(-1).to(features.scalar_type()).contiguous();
  });
  return {out_prev, out_cur, mass_prev, mass_cur};
}

at::Tensor global_prototypes_backward_cuda(const at::Tensor& grad_prev_in, const at::Tensor& grad_cur_in,
                                           const at::Tensor& mass_prev_in, const at::Tensor& mass_cur_in,
                                           const at::Tensor& probs_in, const at::Tensor& features_in,
                                           const at::Tensor& threshold_in) {
  check_global_prototypes_backward_args(grad_prev_in, grad_cur_in, mass_prev_in, mass_cur_in, probs_in, features_in,
                                        threshold_in);
  const int64_t B = probs_in.size(0), Tn = probs_in.size(1), H = probs_in.size(3), W = probs_in.size(4);
  const int64_t C = features_in.size(2), h = features_in.size(3), w = features_in.size(4);
  const c10::cuda::CUDAGuard guard(probs_in.device());
  const at::Tensor probs = probs_in.contiguous(), threshold = threshold_in.contiguous();
  const at::Tensor g_prev = grad_prev_in.contiguous(), g_cur = grad_cur_in.contiguous();
  const at::Tensor m_prev = mass_prev_in.contiguous(), m_cur = mass_cur_in.contiguous();
  at::Tensor grad = at::empty(features_in.sizes(), features_in.options().memory_format(at::MemoryFormat::Contiguous));
  const int64_t n = grad.numel();
  if (n == 0) return grad;
  AT_DISPATCH_FLOATING_TYPES(features_in.scalar_type(), "dtc::global_prototypes_backward (CUDA)", [&] {
    global_backward_kernel<scalar_t><<<blocks_for(n, kMaxGridX), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        probs.const_data_ptr<scalar_t>(), threshold.const_data_ptr<scalar_t>(), g_prev.const_data_ptr<scalar_t>(),
        g_cur.const_data_ptr<scalar_t>(), m_prev.const_data_ptr<scalar_t>(), m_cur.const_data_ptr<scalar_t>(),
        grad.mutable_data_ptr<scalar_t>(), B, Tn, H, W, C, h, w);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad;
}

// ---------------------------------------------------------------- BCE-Dice and KD
template <typename scalar_t, typename acc_t>
__global__ void bce_dice_forward_kernel(const scalar_t* __restrict__ z, const scalar_t* __restrict__ y,
                                        acc_t* __restrict__ partial, int64_t S) {
  const int64_t n = blockIdx.x;  // samples on grid x (unbounded), chunks of a sample on y (<= 64)
  acc_t v[3] = {0, 0, 0};
  for (int64_t k = blockIdx.y * int64_t(blockDim.x) + threadIdx.x; k < S; k += int64_t(gridDim.y) * blockDim.x) {
    const acc_t zz = acc_t(z[n * S + k]), yy = acc_t(y[n * S + k]);
    const acc_t p = math::sigmoid(zz);
    v[0] += math::bce_with_logits(zz, yy);
    v[1] += p * yy;
    v[2] += p + yy;
  }
  block_sum<3>(v);
  if (threadIdx.x == 0) {
    acc_t* out = partial + (n * gridDim.y + blockIdx.y) * 3;
    out[0] = v[0], out[1] = v[1], out[2] = v[2];
  }
}

template <typename scalar_t>
__global__ void bce_dice_backward_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ stats,
                                         const scalar_t* __restrict__ z, const scalar_t* __restrict__ y,
                                         scalar_t* __restrict__ grad, int64_t N, int64_t S, double smooth) {
  const int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (k >= N * S) return;
  const int64_t n = k / S;
  const scalar_t p = math::sigmoid(z[k]), yy = y[k];
  const scalar_t num = scalar_t(2) * stats[2 * n] + scalar_t(smooth), den = stats[2 * n + 1] + scalar_t(smooth);
  const scalar_t d_dice = (scalar_t(2) * yy * den - num) / (den * den);
  grad[k] = g[0] * (scalar_t(0.5) * (p - yy) / scalar_t(N * S) - d_dice * p * (scalar_t(1) - p) / scalar_t(N));
}

std::tuple<at::Tensor, at::Tensor> bce_dice_cuda(const at::Tensor& logits_in, const at::Tensor& target_in,
                                                 double smooth) {
  check_pointwise_loss_args("bce_dice", "logits", logits_in, "target", target_in, /*b_is_prob=*/true);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor z = logits_in.contiguous(), y = target_in.contiguous();
  const int64_t S = z.size(-1) * z.size(-2) * z.size(-3), N = S > 0 ? z.numel() / S : 0;
  TORCH_CHECK_VALUE(N > 0 && S > 0, "bce_dice: logits must not be empty, got shape ", z.sizes());
  const int nbx = blocks_for(S, 64);
  at::Tensor loss, stats;
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "dtc::bce_dice (CUDA)", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    at::Tensor partial = at::empty({N * nbx * 3}, z.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    bce_dice_forward_kernel<scalar_t, acc_t><<<dim3(N, nbx), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        z.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(), partial.mutable_data_ptr<acc_t>(), S);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const at::Tensor sums = partial.view({N, nbx, 3}).sum(1);
    const at::Tensor inter = sums.select(1, 1), total = sums.select(1, 2);
    const at::Tensor dice = (2 * inter + smooth) / (total + smooth);
    loss = (0.5 * sums.select(1, 0).sum() / double(N * S) + 1 - dice.mean()).to(z.scalar_type());
    stats = at::stack({inter, total}, 1).to(z.scalar_type());
  });
  return {loss, stats};
}

at::Tensor bce_dice_backward_cuda(const at::Tensor& grad_in, const at::Tensor& stats_in, const at::Tensor& logits_in,
                                  const at::Tensor& target_in, double smooth) {
  check_pointwise_loss_args("bce_dice_backward", "logits", logits_in, "target", target_in, /*b_is_prob=*/false);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor z = logits_in.contiguous(), y = target_in.contiguous(), stats = stats_in.contiguous();
  const int64_t S = z.size(-1) * z.size(-2) * z.size(-3), N = S > 0 ? z.numel() / S : 0;
  check_saved("bce_dice_backward", "grad_loss", grad_in, {}, z);
  check_saved("bce_dice_backward", "stats", stats, {N, 2}, z);
  at::Tensor grad = at::empty(z.sizes(), z.options());
  if (grad.numel() == 0) return grad;
  const at::Tensor g = grad_in.contiguous();
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "dtc::bce_dice_backward (CUDA)", [&] {
    bce_dice_backward_kernel<scalar_t><<<blocks_for(N * S, kMaxGridX), kThreads, 0,
                                         at::cuda::getCurrentCUDAStream()>>>(
        g.const_data_ptr<scalar_t>(), stats.const_data_ptr<scalar_t>(), z.const_data_ptr<scalar_t>(),
        y.const_data_ptr<scalar_t>(), grad.mutable_data_ptr<scalar_t>(), N, S, smooth);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad;
}

template <typename scalar_t, typename acc_t>
__global__ void kd_forward_kernel(const scalar_t* __restrict__ s, const scalar_t* __restrict__ t,
                                  acc_t* __restrict__ partial, int64_t n, acc_t inv_tau) {
  acc_t v[1] = {0};
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < n; k += int64_t(gridDim.x) * blockDim.x) {
    const acc_t d = math::sigmoid(acc_t(s[k]) * inv_tau) - math::sigmoid(acc_t(t[k]) * inv_tau);
    v[0] += d * d;
  }
  block_sum<1>(v);
  if (threadIdx.x == 0) partial[blockIdx.x] = v[0];
}

template <typename scalar_t>
__global__ void kd_backward_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ s,
                                   const scalar_t* __restrict__ t, scalar_t* __restrict__ grad, int64_t n, double tau) {
  const int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (k >= n) return;
  const scalar_t a = math::sigmoid(s[k] / scalar_t(tau)), b = math::sigmoid(t[k] / scalar_t(tau));
  grad[k] = g[0] * scalar_t(2 * tau) / scalar_t(n) * (a - b) * a * (scalar_t(1) - a);
}

at::Tensor kd_loss_cuda(const at::Tensor& s_in, const at::Tensor& t_in, double tau) {
  check_pointwise_loss_args("kd_loss", "student", s_in, "teacher", t_in, /*b_is_prob=*/false);
  TORCH_CHECK_VALUE(tau > 0, "kd_loss: tau must be > 0, got ", tau);
  const c10::cuda::CUDAGuard guard(s_in.device());
  const at::Tensor s = s_in.contiguous(), t = t_in.contiguous();
  const int64_t n = s.numel();
  if (n == 0) return at::zeros({}, s.options());
  const int nbx = blocks_for(n, 1024);
  at::Tensor loss;
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "dtc::kd_loss (CUDA)", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    at::Tensor partial = at::empty({nbx}, s.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    kd_forward_kernel<scalar_t, acc_t><<<nbx, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        s.const_data_ptr<scalar_t>(), t.const_data_ptr<scalar_t>(), partial.mutable_data_ptr<acc_t>(), n,
        acc_t(1.0 / tau));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    loss = (partial.sum() * (tau * tau / double(n))).to(s.scalar_type());
  });
  return loss;
}

at::Tensor kd_loss_backward_cuda(const at::Tensor& grad_in, const at::Tensor& s_in, const at::Tensor& t_in, double tau) {
  check_pointwise_loss_args("kd_loss_backward", "student", s_in, "teacher", t_in, /*b_is_prob=*/false);
  check_saved("kd_loss_backward", "grad_loss", grad_in, {}, s_in);
  const c10::cuda::CUDAGuard guard(s_in.device());
  const at::Tensor s = s_in.contiguous(), t = t_in.contiguous(), g = grad_in.contiguous();
  at::Tensor grad = at::empty(s.sizes(), s.options());
  const int64_t n = s.numel();
  if (n == 0) return grad;
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "dtc::kd_loss_backward (CUDA)", [&] {
    kd_backward_kernel<scalar_t><<<blocks_for(n, kMaxGridX), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        g.const_data_ptr<scalar_t>(), s.const_data_ptr<scalar_t>(), t.const_data_ptr<scalar_t>(),
        grad.mutable_data_ptr<scalar_t>(), n, tau);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(dtc, CUDA, m) {
  m.impl("temporal_consistency", TORCH_FN(consistency_cuda));
  m.impl("temporal_consistency_backward", TORCH_FN(consistency_backward_cuda));
  m.impl("local_prototypes", TORCH_FN(local_prototypes_cuda));
  m.impl("local_prototypes_backward", TORCH_FN(local_prototypes_backward_cuda));
  m.impl("global_prototypes", TORCH_FN(global_prototypes_cuda));
  m.impl("global_prototypes_backward", TORCH_FN(global_prototypes_backward_cuda));
  m.impl("bce_dice", TORCH_FN(bce_dice_cuda));
  m.impl("bce_dice_backward", TORCH_FN(bce_dice_backward_cuda));
  m.impl("kd_loss", TORCH_FN(kd_loss_cuda));
  m.impl("kd_loss_backward", TORCH_FN(kd_loss_backward_cuda));
}

}  // namespace dtc::ops
