// CPU kernels of dtc::temporal_consistency. The forward is parallel over image rows with one partial
// sum per row, reduced in a fixed order; the backward is parallel over output frames, each frame
// gathering its direct term and (soft target) the scatter of the next pair into it, so results are
// deterministic without atomics. Sums accumulate in double. Both start with one vectorised sigmoid
// pass over the logits, so the per-pixel work gathers probabilities.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "ops/common/loss_math.h"
#include "ops/cpu/simd_math.h"
#include "ops/losses.h"

namespace dtc::ops {
namespace {

using math::ConsistencyParams;

template <typename T>
void sigmoid_into(const T* z, int64_t n, T* p) {
  for (int64_t k = 0; k < n; ++k) p[k] = math::sigmoid(z[k]);
}

DTC_SIMD_CLONES void sigmoid_into(const float* z, int64_t n, float* p) {
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) p[k] = simd::sigmoid(z[k]);
}

// sigmoid of every logit, once: the kernels then gather probabilities (P.probabilities).
template <typename T>
std::vector<T> probabilities_of(const T* logits, int64_t n) {
  std::vector<T> probs(n);
  at::parallel_for(0, n, 16384, [&](int64_t begin, int64_t end) {
    sigmoid_into(logits + begin, end - begin, probs.data() + begin);
  });
  return probs;
}

template <typename T>
void forward_impl(const ConsistencyParams<T>& P, const T* probs, const T* images, const T* flows, const T* flows_bw,
                  bool normalise, T* loss, T* mass_out, T* conf_map, T* target_map) {
  const int64_t pairs = P.B * (P.T_ - 1), rows = pairs * P.H;
  std::vector<double> agree_rows(rows), mass_rows(rows);
  at::parallel_for(0, rows, std::max<int64_t>(1, 4096 / P.W), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t pair = row / P.H, y = row % P.H;
      const int64_t b = pair / (P.T_ - 1), t = pair % (P.T_ - 1) + 1;
      double agree = 0, mass = 0;
      for (int64_t x = 0; x < P.W; ++x) {
        const auto px = math::consistency_pixel<T>(P, probs, images, flows, flows_bw, b, t, y, x);
        agree += double(px.conf * (T(1) - std::abs(px.p_cur - px.target)));
        mass += double(px.conf);
        if (conf_map != nullptr) {
          conf_map[row * P.W + x] = px.conf;
          target_map[row * P.W + x] = px.target;
        }
      }
      agree_rows[row] = agree;
      mass_rows[row] = mass;
    }
  });
  for (int64_t t = 1; t < P.T_; ++t) {
    double agree = 0, mass = 0;
    for (int64_t b = 0; b < P.B; ++b) {
      const int64_t first = (b * (P.T_ - 1) + t - 1) * P.H;
      for (int64_t y = 0; y < P.H; ++y) {
        agree += agree_rows[first + y];
        mass += mass_rows[first + y];
      }
    }
    const double denom = normalise ? std::max(mass, 1e-6) : double(P.B * P.H * P.W);
    loss[t - 1] = T(1.0 - agree / denom);
    mass_out[t - 1] = T(mass);
  }
}

template <typename T>
void backward_impl(const ConsistencyParams<T>& P, const T* probs, const T* images, const T* flows, const T* flows_bw,
                   const std::vector<T>& coef, T* grad) {
  const int64_t HW = P.H * P.W;
  at::parallel_for(0, P.B * P.T_, 1, [&](int64_t begin, int64_t end) {
    for (int64_t frame = begin; frame < end; ++frame) {
      const int64_t b = frame / P.T_, s = frame % P.T_;
      T* g = grad + frame * HW;
      // L = 1 - sum(M (1 - |P_t - P~|)) / D, so dL/dP_t = M sign(P_t - P~) / D = -dL/dP~.
      if (s >= 1) {  // frame s is the current frame of pair s
        for (int64_t y = 0; y < P.H; ++y) {
          for (int64_t x = 0; x < P.W; ++x) {
            const auto px = math::consistency_pixel<T>(P, probs, images, flows, flows_bw, b, s, y, x);
            g[y * P.W + x] += coef[s - 1] * px.conf * math::sign(px.p_cur - px.target) * px.p_cur * (T(1) - px.p_cur);
          }
        }
      }
      if (P.soft_target && s + 1 < P.T_) {  // frame s is the warped previous frame of pair s + 1
        const T* p = probs + frame * HW;
        for (int64_t y = 0; y < P.H; ++y) {
          for (int64_t x = 0; x < P.W; ++x) {
            const auto px = math::consistency_pixel<T>(P, probs, images, flows, flows_bw, b, s + 1, y, x);
            const auto& t = px.taps;
            if (!t.finite) continue;
            const T go = -coef[s] * px.conf * math::sign(px.p_cur - px.target);
            if (go == T(0)) continue;
            const T wx0 = T(1) - t.wx1, wy0 = T(1) - t.wy1;
            const int64_t i00 = t.y0 * P.W + t.x0;
            auto add = [&](int64_t i, T w) { g[i] += go * w * p[i] * (T(1) - p[i]); };
            if (t.in_y0 && t.in_x0) add(i00, wy0 * wx0);
            if (t.in_y0 && t.in_x1) add(i00 + 1, wy0 * t.wx1);
            if (t.in_y1 && t.in_x0) add(i00 + P.W, t.wy1 * wx0);
            if (t.in_y1 && t.in_x1) add(i00 + P.W + 1, t.wy1 * t.wx1);
          }
        }
      }
    }
  });
}

const at::Tensor* optional_ptr(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? &*t : nullptr;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> consistency_cpu(
    const at::Tensor& logits_in, const at::Tensor& images_in, const at::Tensor& flows_in,
    const std::optional<at::Tensor>& flows_bw_in, at::ArrayRef<double> channel_scale, double alpha,
    c10::string_view confidence, bool soft_target, bool normalise, bool return_maps) {
  const auto residual = check_consistency_args(logits_in, images_in, flows_in, flows_bw_in, channel_scale, alpha,
                                               std::string_view(confidence.data(), confidence.size()));
  const at::Tensor logits = logits_in.contiguous(), images = images_in.contiguous(), flows = flows_in.contiguous();
  const at::Tensor* bw_in = optional_ptr(flows_bw_in);
  const at::Tensor flows_bw = bw_in != nullptr ? bw_in->contiguous() : at::Tensor();
  const int64_t B = logits.size(0), T = logits.size(1), H = logits.size(3), W = logits.size(4);
  at::Tensor loss = at::empty({T - 1}, logits.options());
  at::Tensor mass = at::empty({T - 1}, logits.options());
  at::Tensor conf = return_maps ? at::empty({B, T - 1, 1, H, W}, logits.options()) : at::empty({0}, logits.options());
  at::Tensor target = return_maps ? at::empty({B, T - 1, 1, H, W}, logits.options()) : at::empty({0}, logits.options());
  if (B == 0) {
    loss.fill_(1);
    mass.zero_();
    return {loss, mass, conf, target};
  }
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "dtc::temporal_consistency (CPU)", [&] {
    auto P = consistency_params<scalar_t>(logits, images, flows_bw.defined(), channel_scale, alpha, residual,
                                         soft_target);
    P.probabilities = true;
    const auto probs = probabilities_of(logits.const_data_ptr<scalar_t>(), logits.numel());
    forward_impl<scalar_t>(P, probs.data(), images.const_data_ptr<scalar_t>(),
                           flows.const_data_ptr<scalar_t>(),
                           flows_bw.defined() ? flows_bw.const_data_ptr<scalar_t>() : nullptr, normalise,
                           loss.mutable_data_ptr<scalar_t>(), mass.mutable_data_ptr<scalar_t>(),
                           return_maps ? conf.mutable_data_ptr<scalar_t>() : nullptr,
                           return_maps ? target.mutable_data_ptr<scalar_t>() : nullptr);
  });
  return {loss, mass, conf, target};
}

at::Tensor consistency_backward_cpu(const at::Tensor& grad_loss_in, const at::Tensor& mass_in,
                                    const at::Tensor& logits_in, const at::Tensor& images_in,
                                    const at::Tensor& flows_in, const std::optional<at::Tensor>& flows_bw_in,
                                    at::ArrayRef<double> channel_scale, double alpha, c10::string_view confidence,
                                    bool soft_target, bool normalise) {
  const auto residual = check_consistency_args(logits_in, images_in, flows_in, flows_bw_in, channel_scale, alpha,
                                               std::string_view(confidence.data(), confidence.size()));
  const int64_t B = logits_in.size(0), T = logits_in.size(1), H = logits_in.size(3), W = logits_in.size(4);
  check_saved("temporal_consistency_backward", "grad_loss", grad_loss_in, {T - 1}, logits_in);
  check_saved("temporal_consistency_backward", "mass", mass_in, {T - 1}, logits_in);
  const at::Tensor logits = logits_in.contiguous(), images = images_in.contiguous(), flows = flows_in.contiguous();
  const at::Tensor* bw_in = optional_ptr(flows_bw_in);
  const at::Tensor flows_bw = bw_in != nullptr ? bw_in->contiguous() : at::Tensor();
  at::Tensor grad = at::zeros(logits.sizes(), logits.options());
  if (B == 0) return grad;
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "dtc::temporal_consistency_backward (CPU)", [&] {
    auto P = consistency_params<scalar_t>(logits, images, flows_bw.defined(), channel_scale, alpha, residual,
                                         soft_target);
    P.probabilities = true;
    const auto probs = probabilities_of(logits.const_data_ptr<scalar_t>(), logits.numel());
    const at::Tensor gl = grad_loss_in.contiguous(), ms = mass_in.contiguous();
    std::vector<scalar_t> coef(T - 1);
    for (int64_t t = 0; t < T - 1; ++t) {
      const double denom = normalise ? std::max<double>(ms.const_data_ptr<scalar_t>()[t], 1e-6) : double(B * H * W);
      coef[t] = scalar_t(double(gl.const_data_ptr<scalar_t>()[t]) / denom);
    }
    backward_impl<scalar_t>(P, probs.data(), images.const_data_ptr<scalar_t>(),
                            flows.const_data_ptr<scalar_t>(),
                            flows_bw.defined() ? flows_bw.const_data_ptr<scalar_t>() : nullptr, coef,
                            grad.mutable_data_ptr<scalar_t>());
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(dtc, CPU, m) {
  m.impl("temporal_consistency", TORCH_FN(consistency_cpu));
  m.impl("temporal_consistency_backward", TORCH_FN(consistency_backward_cpu));
}

}  // namespace dtc::ops
