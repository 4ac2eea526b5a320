// CPU kernels of dtc::local_prototypes and dtc::global_prototypes (masked average pooling of a window
// batch, the local term fused with the warp). The masks are one byte per feature pixel, computed once
// per call; pooling is parallel over (pair, channel block) and the backward over (frame, channel
// block), every output having a single writer: deterministic, sums in double. The local term pools
// through per-pair weight maps of the warp (see pair_weights), not a per-channel gather.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "dtc/ops.h"
#include "ops/common/loss_math.h"
#include "ops/cpu/simd_math.h"
#include "ops/losses.h"

namespace dtc::ops {
namespace {

constexpr int64_t kChannelBlock = 16;
constexpr double kMapEps = 1e-6;

std::vector<int64_t> nearest_sources(int64_t out, int64_t in) {
  std::vector<int64_t> src(out);
  for (int64_t i = 0; i < out; ++i) src[i] = math::nearest_source(i, in, out);
  return src;
}

// m = 1[P_t > thr] * 1[P~ > thr] at each feature pixel's nearest full-resolution source, with P~ the
// warped previous prediction W(P_{t-1}), binarised at 0.5 first when hard_target (math::warped_target).
template <typename T>
void local_masks(const T* probs, const T* flows, const T* thr, bool hard_target, int64_t B, int64_t Tn, int64_t H,
                 int64_t W, int64_t h, int64_t w, std::vector<uint8_t>& mask, std::vector<double>& mass) {
  const int64_t pairs = B * (Tn - 1), HW = H * W;
  const auto sy = nearest_sources(h, H), sx = nearest_sources(w, W);
  mask.assign(pairs * h * w, 0);
  mass.assign(pairs, 0.0);
  at::parallel_for(0, pairs, 1, [&](int64_t begin, int64_t end) {
    for (int64_t pair = begin; pair < end; ++pair) {
      const int64_t b = pair / (Tn - 1), t = pair % (Tn - 1) + 1;
      const T threshold = thr[t - 1];
      const T* p_cur = probs + (b * Tn + t) * HW;
      const T* p_prev = probs + (b * Tn + t - 1) * HW;
      const T* flow = flows + (b * Tn + t) * 2 * HW;
      uint8_t* m = mask.data() + pair * h * w;
      int64_t count = 0;
      for (int64_t i = 0; i < h; ++i) {
        for (int64_t j = 0; j < w; ++j) {
          const int64_t src = sy[i] * W + sx[j];
          if (!(p_cur[src] > threshold)) continue;
          const auto taps = math::bilinear_taps<T>(T(sx[j]) - flow[src], T(sy[i]) - flow[HW + src], W, H,
                                                   math::Padding::Border);
          if (taps.finite && math::warped_target(math::sample_plane(taps, p_prev, W), hard_target) > threshold) {
            m[i * w + j] = 1;
            ++count;
          }
        }
      }
      mass[pair] = double(count);
    }
  });
}

// The local prototypes are linear in the features: v_cur[c] = sum_q m(q) F_t[c](q) / |m| and
// v_prev[c] = sum_p m(p) W(F_{t-1}[c])(p) / |m| = sum_q A(q) F_{t-1}[c](q) / |m|, where the splat
// A(q) = sum_p m(p) w_bilinear(p - F(p) -> q) depends on the pair only. So each pair's weight maps
// (m and A, in the features' dtype) are built once, and every channel becomes two streaming dot
// products; the backward writes g_cur m / |m| + g_prev A / |m| plane by plane. Zero weights select 0
// instead of multiplying, so NaN/Inf features or gradients outside the masks stay outside, as with a
// masked gather.
template <typename T>
struct PairWeights {
  std::vector<T> cur, prev;  // [pairs, h, w]: the mask m and the splat A of each pair
  std::vector<T> zeros;      // [h, w], for frames that are not the current / previous frame of a pair
};

template <typename T>
PairWeights<T> pair_weights(const FeatureFlow& ff, const std::vector<uint8_t>& mask, int64_t B, int64_t Tn, int64_t h,
                            int64_t w) {
  const int64_t pairs = B * (Tn - 1), hw = h * w;
  PairWeights<T> out;
  out.cur.resize(pairs * hw);
  out.prev.resize(pairs * hw);
  out.zeros.assign(hw, T(0));
  const T* flow_base = ff.storage.const_data_ptr<T>();
  at::parallel_for(0, pairs, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> splat(hw);  // many pixels can land on one tap (border clamping): sum in double
    for (int64_t pair = begin; pair < end; ++pair) {
      const int64_t b = pair / (Tn - 1), t = pair % (Tn - 1) + 1;
      const T* flow = flow_base + (b * ff.frames_per_window + t - ff.frame_offset) * 2 * hw;
      const uint8_t* m = mask.data() + pair * hw;
      std::fill(splat.begin(), splat.end(), 0.0);
      for (int64_t i = 0; i < h; ++i) {
        for (int64_t j = 0; j < w; ++j) {
          if (!m[i * w + j]) continue;
          const auto taps = math::bilinear_taps<double>(double(j) - double(flow[i * w + j]),
                                                        double(i) - double(flow[hw + i * w + j]), w, h,
                                                        math::Padding::Border);
          if (!taps.finite) continue;  // no correspondence: the pixel counts in the current frame only
          math::scatter_taps(taps, w, 1.0, [&splat](int64_t q, double v) { splat[q] += v; });
        }
      }
      for (int64_t q = 0; q < hw; ++q) {
        out.cur[pair * hw + q] = m[q] ? T(1) : T(0);
        out.prev[pair * hw + q] = T(splat[q]);
      }
    }
  });
  return out;
}

// sum_q (wgt(q) != 0 ? wgt(q) f(q) : 0), accumulated in double; the float overload is vectorised.
template <typename T>
double weighted_sum(const T* f, const T* wgt, int64_t n) {
  double acc = 0;
  for (int64_t q = 0; q < n; ++q) acc += wgt[q] != T(0) ? double(wgt[q]) * double(f[q]) : 0.0;
  return acc;
}

// Written as 16 independent float lanes so that compilers vectorise it without -ffast-math (a single
// accumulator is a serial dependency they may not reorder); each block of 1024 products is added to the
// double total, which bounds the float rounding to ~64 additions per lane.
DTC_SIMD_CLONES double weighted_sum(const float* f, const float* wgt, int64_t n) {
  constexpr int kLanes = 16;
  constexpr int64_t kBlock = 1024;
  double total = 0;
  int64_t q = 0;
  for (; q + kBlock <= n; q += kBlock) {
    float lanes[kLanes] = {};
    for (int64_t k = 0; k < kBlock; k += kLanes) {
      for (int l = 0; l < kLanes; ++l) {
        lanes[l] += simd::where_nonzero(wgt[q + k + l], wgt[q + k + l] * f[q + k + l]);
      }
    }
    double block = 0;
    for (int l = 0; l < kLanes; ++l) block += double(lanes[l]);
    total += block;
  }
  for (; q < n; ++q) total += wgt[q] != 0.0f ? double(wgt[q]) * double(f[q]) : 0.0;
  return total;
}

// g(q) = (wc(q) != 0 ? gc wc(q) : 0) + (wp(q) != 0 ? gp wp(q) : 0).
template <typename T>
void write_gradient(T* g, const T* wc, T gc, const T* wp, T gp, int64_t n) {
  for (int64_t q = 0; q < n; ++q) g[q] = (wc[q] != T(0) ? gc * wc[q] : T(0)) + (wp[q] != T(0) ? gp * wp[q] : T(0));
}

DTC_SIMD_CLONES void write_gradient(float* g, const float* wc, float gc, const float* wp, float gp, int64_t n) {
#pragma omp simd
  for (int64_t q = 0; q < n; ++q) {
    g[q] = simd::where_nonzero(wc[q], gc * wc[q]) + simd::where_nonzero(wp[q], gp * wp[q]);
  }
}

template <typename T>
void local_forward_impl(const T* features, const PairWeights<T>& weights, const std::vector<double>& mass, int64_t B,
                        int64_t Tn, int64_t C, int64_t h, int64_t w, T* v_prev, T* v_cur) {
  const int64_t pairs = B * (Tn - 1), hw = h * w, blocks = (C + kChannelBlock - 1) / kChannelBlock;
  at::parallel_for(0, pairs * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t pair = task / blocks, c0 = (task % blocks) * kChannelBlock, c1 = std::min(C, c0 + kChannelBlock);
      const int64_t b = pair / (Tn - 1), t = pair % (Tn - 1) + 1;
      const T* f_cur = features + (b * Tn + t) * C * hw;
      const T* f_prev = features + (b * Tn + t - 1) * C * hw;
      const double denom = std::max(mass[pair], kMapEps);
      for (int64_t c = c0; c < c1; ++c) {
        v_prev[pair * C + c] = T(weighted_sum(f_prev + c * hw, weights.prev.data() + pair * hw, hw) / denom);
        v_cur[pair * C + c] = T(weighted_sum(f_cur + c * hw, weights.cur.data() + pair * hw, hw) / denom);
      }
    }
  });
}

template <typename T>
void local_backward_impl(const T* g_prev, const T* g_cur, const T* mass, const PairWeights<T>& weights, int64_t B,
                         int64_t Tn, int64_t C, int64_t h, int64_t w, T* grad) {
  const int64_t hw = h * w, blocks = (C + kChannelBlock - 1) / kChannelBlock;
  at::parallel_for(0, B * Tn * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t frame = task / blocks, c0 = (task % blocks) * kChannelBlock, c1 = std::min(C, c0 + kChannelBlock);
      const int64_t b = frame / Tn, s = frame % Tn;
      // Frame s is the current frame of pair s (s >= 1) and the warped previous frame of pair s + 1.
      const bool is_cur = s >= 1, is_prev = s + 1 < Tn;
      const int64_t pair_cur = b * (Tn - 1) + s - 1, pair_prev = b * (Tn - 1) + s;
      const T* wc = is_cur ? weights.cur.data() + pair_cur * hw : weights.zeros.data();
      const T* wp = is_prev ? weights.prev.data() + pair_prev * hw : weights.zeros.data();
      const double inv_cur = is_cur ? 1.0 / std::max<double>(mass[pair_cur], kMapEps) : 0.0;
      const double inv_prev = is_prev ? 1.0 / std::max<double>(mass[pair_prev], kMapEps) : 0.0;
      for (int64_t c = c0; c < c1; ++c) {
        const T gc = is_cur ? T(double(g_cur[pair_cur * C + c]) * inv_cur) : T(0);
        const T gp = is_prev ? T(double(g_prev[pair_prev * C + c]) * inv_prev) : T(0);
        write_gradient(grad + (frame * C + c) * hw, wc, gc, wp, gp, hw);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> local_prototypes_cpu(const at::Tensor& probs_in,
                                                                    const at::Tensor& features_in,
                                                                    const at::Tensor& flows_in,
                                                                    const at::Tensor& threshold_in, bool rescale_flow,
                                                                    bool hard_target) {
  check_prototype_args("local_prototypes", probs_in, features_in, &flows_in, threshold_in);
  const at::Tensor probs = probs_in.contiguous(), features = features_in.contiguous(), flows = flows_in.contiguous();
  const at::Tensor threshold = threshold_in.contiguous();
  const int64_t B = probs.size(0), Tn = probs.size(1), H = probs.size(3), W = probs.size(4);
  const int64_t C = features.size(2), h = features.size(3), w = features.size(4);
  at::Tensor v_prev = at::zeros({B, Tn - 1, C}, features.options());
  at::Tensor v_cur = at::zeros({B, Tn - 1, C}, features.options());
  at::Tensor mass = at::zeros({B, Tn - 1}, features.options());
  if (B == 0) return {v_prev, v_cur, mass};
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "dtc::local_prototypes (CPU)", [&] {
    std::vector<uint8_t> mask;
    std::vector<double> mass_d;
    local_masks<scalar_t>(probs.const_data_ptr<scalar_t>(), flows.const_data_ptr<scalar_t>(),
                          threshold.const_data_ptr<scalar_t>(), hard_target, B, Tn, H, W, h, w, mask, mass_d);
    if (C > 0) {
      const auto weights = pair_weights<scalar_t>(feature_flow(flows, h, w, rescale_flow), mask, B, Tn, h, w);
      local_forward_impl<scalar_t>(features.const_data_ptr<scalar_t>(), weights, mass_d, B, Tn, C, h, w,
                                   v_prev.mutable_data_ptr<scalar_t>(), v_cur.mutable_data_ptr<scalar_t>());
    }
    for (int64_t i = 0; i < B * (Tn - 1); ++i) mass.mutable_data_ptr<scalar_t>()[i] = scalar_t(mass_d[i]);
  });
  return {v_prev, v_cur, mass};
}

at::Tensor local_prototypes_backward_cpu(const at::Tensor& grad_prev_in, const at::Tensor& grad_cur_in,
                                         const at::Tensor& mass_in, const at::Tensor& probs_in,
                                         const at::Tensor& features_in, const at::Tensor& flows_in,
                                         const at::Tensor& threshold_in, bool rescale_flow, bool hard_target) {
  check_local_prototypes_backward_args(grad_prev_in, grad_cur_in, mass_in, probs_in, features_in, flows_in,
                                       threshold_in);
  const int64_t B = probs_in.size(0), Tn = probs_in.size(1), H = probs_in.size(3), W = probs_in.size(4);
  const int64_t C = features_in.size(2), h = features_in.size(3), w = features_in.size(4);
  const at::Tensor probs = probs_in.contiguous(), flows = flows_in.contiguous(), threshold = threshold_in.contiguous();
  const at::Tensor g_prev = grad_prev_in.contiguous(), g_cur = grad_cur_in.contiguous(), mass = mass_in.contiguous();
  // Every element is written below (frames with T >= 2 always belong to a pair).
  at::Tensor grad = at::empty(features_in.sizes(), features_in.options().memory_format(at::MemoryFormat::Contiguous));
  if (grad.numel() == 0) return grad;
  AT_DISPATCH_FLOATING_TYPES(features_in.scalar_type(), "dtc::local_prototypes_backward (CPU)", [&] {
    std::vector<uint8_t> mask;
    std::vector<double> mass_d;
    local_masks<scalar_t>(probs.const_data_ptr<scalar_t>(), flows.const_data_ptr<scalar_t>(),
                          threshold.const_data_ptr<scalar_t>(), hard_target, B, Tn, H, W, h, w, mask, mass_d);
    const auto weights = pair_weights<scalar_t>(feature_flow(flows, h, w, rescale_flow), mask, B, Tn, h, w);
    local_backward_impl<scalar_t>(g_prev.const_data_ptr<scalar_t>(), g_cur.const_data_ptr<scalar_t>(),
                                  mass.const_data_ptr<scalar_t>(), weights, B, Tn, C, h, w,
                                  grad.mutable_data_ptr<scalar_t>());
  });
  return grad;
}

// ---- global prototypes: bg_x = 1[P_x <= thr_t] at the nearest source of each feature pixel.
template <typename T>
bool background(const T* p_frame, const int64_t* sy, const int64_t* sx, int64_t W, int64_t i, int64_t j, T thr) {
  return !(p_frame[sy[i] * W + sx[j]] > thr);
}

template <typename T>
void global_forward_impl(const T* probs, const T* features, const T* thr, int64_t B, int64_t Tn, int64_t H, int64_t W,
                         int64_t C, int64_t h, int64_t w, T* u_prev, T* u_cur, T* m_prev, T* m_cur) {
  const int64_t pairs = B * (Tn - 1), hw = h * w, HW = H * W;
  const auto sy = nearest_sources(h, H), sx = nearest_sources(w, W);
  // Row r = (pair, which): which 0 pools frame t-1, 1 pools frame t, both under pair t's threshold.
  at::parallel_for(0, pairs * 2, 1, [&](int64_t begin, int64_t end) {
    std::vector<uint8_t> bg(hw);
    std::vector<double> acc(C);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t pair = r / 2, which = r % 2;
      const int64_t b = pair / (Tn - 1), t = pair % (Tn - 1) + 1, frame = t - 1 + which;
      const T* p = probs + (b * Tn + frame) * HW;
      int64_t count = 0;
      for (int64_t i = 0; i < h; ++i) {
        for (int64_t j = 0; j < w; ++j) {
          bg[i * w + j] = background(p, sy.data(), sx.data(), W, i, j, thr[t - 1]);
          count += bg[i * w + j];
        }
      }
      const T* f = features + (b * Tn + frame) * C * hw;
      const double denom = std::max(double(count), kMapEps);
      T* out = (which == 0 ? u_prev : u_cur) + pair * C;
      for (int64_t c = 0; c < C; ++c) {
        double a = 0;
        for (int64_t q = 0; q < hw; ++q) {
          if (bg[q]) a += double(f[c * hw + q]);
        }
        out[c] = T(a / denom);
      }
      (which == 0 ? m_prev : m_cur)[pair] = T(count);
    }
  });
}

template <typename T>
void global_backward_impl(const T* probs, const T* thr, const T* g_prev, const T* g_cur, const T* m_prev,
                          const T* m_cur, int64_t B, int64_t Tn, int64_t H, int64_t W, int64_t C, int64_t h, int64_t w,
                          T* grad) {
  const int64_t hw = h * w, HW = H * W;
  const auto sy = nearest_sources(h, H), sx = nearest_sources(w, W);
  at::parallel_for(0, B * Tn, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> as_cur(hw), as_prev(hw);
    for (int64_t frame = begin; frame < end; ++frame) {
      const int64_t b = frame / Tn, s = frame % Tn;
      const T* p = probs + frame * HW;
      // Frame s is the current frame of pair s (threshold thr[s-1]) and the previous frame of pair
      // s + 1 (threshold thr[s]); its mask may differ between the two.
      const int64_t pair_cur = b * (Tn - 1) + s - 1, pair_prev = b * (Tn - 1) + s;
      const double inv_cur = s >= 1 ? 1.0 / std::max<double>(m_cur[pair_cur], kMapEps) : 0.0;
      const double inv_prev = s + 1 < Tn ? 1.0 / std::max<double>(m_prev[pair_prev], kMapEps) : 0.0;
      for (int64_t i = 0; i < h; ++i) {
        for (int64_t j = 0; j < w; ++j) {
          as_cur[i * w + j] = s >= 1 && background(p, sy.data(), sx.data(), W, i, j, thr[s - 1]) ? T(inv_cur) : T(0);
          as_prev[i * w + j] = s + 1 < Tn && background(p, sy.data(), sx.data(), W, i, j, thr[s]) ? T(inv_prev) : T(0);
        }
      }
      T* g = grad + frame * C * hw;
      for (int64_t c = 0; c < C; ++c) {
        const T gc = s >= 1 ? g_cur[pair_cur * C + c] : T(0);
        const T gp = s + 1 < Tn ? g_prev[pair_prev * C + c] : T(0);
        for (int64_t q = 0; q < hw; ++q) g[c * hw + q] = gc * as_cur[q] + gp * as_prev[q];
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> global_prototypes_cpu(const at::Tensor& probs_in,
                                                                                 const at::Tensor& features_in,
                                                                                 const at::Tensor& threshold_in) {
  check_prototype_args("global_prototypes", probs_in, features_in, nullptr, threshold_in);
  const at::Tensor probs = probs_in.contiguous(), features = features_in.contiguous(), threshold = threshold_in.contiguous();
  const int64_t B = probs.size(0), Tn = probs.size(1), H = probs.size(3), W = probs.size(4);
  const int64_t C = features.size(2), h = features.size(3), w = features.size(4);
  at::Tensor u_prev = at::empty({B, Tn - 1, C}, features.options());
  at::Tensor u_cur = at::empty({B, Tn - 1, C}, features.options());
  at::Tensor m_prev = at::empty({B, Tn - 1}, features.options());
  at::Tensor m_cur = at::empty({B, Tn - 1}, features.options());
  if (B == 0) return {u_prev, u_cur, m_prev, m_cur};
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "dtc::global_prototypes (CPU)", [&] {
    global_forward_impl<scalar_t>(probs.const_data_ptr<scalar_t>(), features.const_data_ptr<scalar_t>(),
                                  threshold.const_data_ptr<scalar_t>(), B, Tn, H, W, C, h, w,
                                  u_prev.mutable_data_ptr<scalar_t>(), u_cur.mutable_data_ptr<scalar_t>(),
                                  m_prev.mutable_data_ptr<scalar_t>(), m_cur.mutable_data_ptr<scalar_t>());
  });
  return {u_prev, u_cur, m_prev, m_cur};
}

at::Tensor global_prototypes_backward_cpu(const at::Tensor& grad_prev_in, const at::Tensor& grad_cur_in,
                                          const at::Tensor& mass_prev_in, const at::Tensor& mass_cur_in,
                                          const at::Tensor& probs_in, const at::Tensor& features_in,
                                          const at::Tensor& threshold_in) {
  check_global_prototypes_backward_args(grad_prev_in, grad_cur_in, mass_prev_in, mass_cur_in, probs_in, features_in,
                                        threshold_in);
  const int64_t B = probs_in.size(0), Tn = probs_in.size(1), H = probs_in.size(3), W = probs_in.size(4);
  const int64_t C = features_in.size(2), h = features_in.size(3), w = features_in.size(4);
  const at::Tensor probs = probs_in.contiguous(), threshold = threshold_in.contiguous();
  const at::Tensor g_prev = grad_prev_in.contiguous(), g_cur = grad_cur_in.contiguous();
  const at::Tensor m_prev = mass_prev_in.contiguous(), m_cur = mass_cur_in.contiguous();
  at::Tensor grad = at::empty(features_in.sizes(), features_in.options().memory_format(at::MemoryFormat::Contiguous));
  if (grad.numel() == 0) return grad;
  AT_DISPATCH_FLOATING_TYPES(features_in.scalar_type(), "dtc::global_prototypes_backward (CPU)", [&] {
    global_backward_impl<scalar_t>(probs.const_data_ptr<scalar_t>(), threshold.const_data_ptr<scalar_t>(),
                                   g_prev.const_data_ptr<scalar_t>(), g_cur.const_data_ptr<scalar_t>(),
                                   m_prev.const_data_ptr<scalar_t>(), m_cur.const_data_ptr<scalar_t>(), B, Tn, H, W, C,
                                   h, w, grad.mutable_data_ptr<scalar_t>());
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(dtc, CPU, m) {
  m.impl("local_prototypes", TORCH_FN(local_prototypes_cpu));
  m.impl("local_prototypes_backward", TORCH_FN(local_prototypes_backward_cpu));
  m.impl("global_prototypes", TORCH_FN(global_prototypes_cpu));
  m.impl("global_prototypes_backward", TORCH_FN(global_prototypes_backward_cpu));
}

}  // namespace dtc::ops
