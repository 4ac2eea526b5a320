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

// The CPU kernels' parameters and what they read instead of logits: the sigmoid of every logit,
// computed once (P.probabilities is set together with the buffer it describes).
template <typename T>
struct CpuConsistency {
  ConsistencyParams<T> params;
  std::vector<T> probs;
};

template <typename T>
CpuConsistency<T> cpu_consistency(const ConsistencyInputs& in, at::ArrayRef<double> channel_scale, double alpha,
                                  bool soft_target) {
  CpuConsistency<T> out;
  out.params = consistency_params<T>(in.logits, in.images, in.flows_backward.defined(), channel_scale, alpha,
                                     in.residual, soft_target);
  out.params.probabilities = true;
  const T* logits = in.logits.const_data_ptr<T>();
  const int64_t n = in.logits.numel();
  out.probs.resize(n);
  at::parallel_for(0, n, 16384, [&](int64_t begin, int64_t end) {
    sigmoid_into(logits + begin, end - begin, out.probs.data() + begin);
  });
  return out;
}

// ---- One image row of pair (b, t): the confidence M and the target P~ of every pixel of row y.
// The per-pixel work is a handful of bilinear gathers, so it is done row by row: the generic version
// calls the shared per-pixel math; the float32 one evaluates the same formulas in passes over the row
// (taps, warped target, residual channel by channel, exp) whose arithmetic the compiler vectorises
// (the bilinear reads stay scalar loads: GCC's generic tuning emits no gather instructions).
struct RowScratch {
  explicit RowScratch(int64_t w) : i00(w), step_x(w), step_y(w), wx(w), wy(w), finite(w), acc(w) {}
  std::vector<int32_t> i00, step_x, step_y;  // top-left tap, and the offsets to its right / lower neighbour
  std::vector<float> wx, wy, finite, acc;
};

template <typename T>
void evaluate_row(const ConsistencyParams<T>& P, const T* probs, const T* images, const T* flows, const T* flows_bw,
                  int64_t b, int64_t t, int64_t y, RowScratch&, T* conf, T* target) {
  for (int64_t x = 0; x < P.W; ++x) {
    const auto px = math::consistency_pixel<T>(P, probs, images, flows, flows_bw, b, t, y, x);
    conf[x] = px.conf;
    target[x] = px.target;
  }
}

// Border-padded taps of (sx, sy) in int32 indices (the caller guarantees H * W < 2^31). The clamps and
// weights are those of math::bilinear_taps; a tap beyond the last column or row gets weight 0 and is
// read from the pixel itself, where the shared math reads 0. A non-finite point gets finite = 0.
inline void border_taps(float sx, float sy, int64_t w, int64_t h, int32_t* i00, int32_t* step_x, int32_t* step_y,
                        float* wx, float* wy, float* finite) {
  const bool ok = (sx - sx == 0.0f) & (sy - sy == 0.0f);
  sx = simd::select(ok, sx, 0.0f);
  sy = simd::select(ok, sy, 0.0f);
  const float last_x = float(w - 1), last_y = float(h - 1);
  sx = simd::select(sx > 0.0f, simd::select(sx < last_x, sx, last_x), 0.0f);
  sy = simd::select(sy > 0.0f, simd::select(sy < last_y, sy, last_y), 0.0f);
  const int32_t x0 = int32_t(sx), y0 = int32_t(sy);  // sx, sy >= 0: truncation is floor
  *wx = sx - float(x0);
  *wy = sy - float(y0);
  *step_x = x0 < int32_t(w - 1) ? 1 : 0;
  *step_y = y0 < int32_t(h - 1) ? int32_t(w) : 0;
  *i00 = y0 * int32_t(w) + x0;
  *finite = simd::select(ok, 1.0f, 0.0f);
}

inline float bilinear(const float* plane, int32_t i00, int32_t step_x, int32_t step_y, float wx, float wy) {
  const float wx0 = 1.0f - wx, wy0 = 1.0f - wy;
  return wy0 * (wx0 * plane[i00] + wx * plane[i00 + step_x]) +
         wy * (wx0 * plane[i00 + step_y] + wx * plane[i00 + step_y + step_x]);
}

DTC_SIMD_CLONES void evaluate_row(const ConsistencyParams<float>& P, const float* probs, const float* images,
                                  const float* flows, const float* flows_bw, int64_t b, int64_t t, int64_t y,
                                  RowScratch& s, float* conf, float* target) {
  const int64_t W = P.W, H = P.H, HW = H * W;
  const float* fx = flows + (b * P.T_ + t) * 2 * HW + y * W;
  const float* fy = fx + HW;
  int32_t* i00 = s.i00.data();
  int32_t* step_x = s.step_x.data();
  int32_t* step_y = s.step_y.data();
  float* wx = s.wx.data();
  float* wy = s.wy.data();
  float* finite = s.finite.data();
  float* acc = s.acc.data();
  for (int64_t x = 0; x < W; ++x) {
    border_taps(float(x) - fx[x], float(y) - fy[x], W, H, &i00[x], &step_x[x], &step_y[x], &wx[x], &wy[x], &finite[x]);
  }
  const float* p_prev = probs + (b * P.T_ + t - 1) * HW;
  if (P.soft_target) {
    for (int64_t x = 0; x < W; ++x) target[x] = bilinear(p_prev, i00[x], step_x[x], step_y[x], wx[x], wy[x]);
  } else {
    for (int64_t x = 0; x < W; ++x) {
      target[x] = simd::select(bilinear(p_prev, i00[x], step_x[x], step_y[x], wx[x], wy[x]) > 0.5f, 1.0f, 0.0f);
    }
  }
  const float* cur = images + (b * P.T_ + t) * P.C * HW + y * W;
  const float* prev = images + (b * P.T_ + t - 1) * P.C * HW;
  for (int64_t x = 0; x < W; ++x) acc[x] = 0.0f;
  for (int64_t c = 0; c < P.C; ++c) {
    const float scale = P.scale[c];
    const float* cur_c = cur + c * HW;
    const float* prev_c = prev + c * HW;
    if (P.residual == math::Residual::AbsSum) {
      for (int64_t x = 0; x < W; ++x) {
        acc[x] += (cur_c[x] - bilinear(prev_c, i00[x], step_x[x], step_y[x], wx[x], wy[x])) * scale;
      }
    } else {
      for (int64_t x = 0; x < W; ++x) {
        acc[x] += simd::abs((cur_c[x] - bilinear(prev_c, i00[x], step_x[x], step_y[x], wx[x], wy[x])) * scale);
      }
    }
  }
  const float alpha = P.alpha, inv_c = 1.0f / float(P.C);
  const bool abs_sum = P.residual == math::Residual::AbsSum;
  for (int64_t x = 0; x < W; ++x) {
    const float residual = abs_sum ? simd::abs(acc[x]) : acc[x] * inv_c;
    // No correspondence (a non-finite flow vector): zero confidence and target, as the shared math.
    conf[x] = simd::select(finite[x] != 0.0f, simd::exp(-alpha * residual), 0.0f);
    target[x] = simd::select(finite[x] != 0.0f, target[x], 0.0f);
  }
  if (P.occlusion) {
    // Forward-backward test: F_bw sampled (border padding) at p - F(p), p's point in frame t-1 (loss_math.h).
    const float* bx = flows_bw + (b * P.T_ + t) * 2 * HW;
    const float* by = bx + HW;
    for (int64_t x = 0; x < W; ++x) {
      border_taps(float(x) - fx[x], float(y) - fy[x], W, H, &i00[x], &step_x[x], &step_y[x], &wx[x], &wy[x],
                  &finite[x]);
    }
    for (int64_t x = 0; x < W; ++x) {
      const float back_x = bilinear(bx, i00[x], step_x[x], step_y[x], wx[x], wy[x]);
      const float back_y = bilinear(by, i00[x], step_x[x], step_y[x], wx[x], wy[x]);
      const float ex = fx[x] + back_x, ey = fy[x] + back_y;
      const float norms = fx[x] * fx[x] + fy[x] * fy[x] + back_x * back_x + back_y * back_y;
      const bool pass = ex * ex + ey * ey < 0.01f * norms + 0.5f;
      conf[x] = simd::select(pass & (finite[x] != 0.0f), conf[x], 0.0f);
    }
  }
}

template <typename T>
void forward_impl(const ConsistencyParams<T>& P, const T* probs, const T* images, const T* flows, const T* flows_bw,
                  bool normalise, T* loss, T* mass_out, T* conf_map, T* target_map) {
  const int64_t pairs = P.B * (P.T_ - 1), rows = pairs * P.H;
  std::vector<double> agree_rows(rows), mass_rows(rows);
  at::parallel_for(0, rows, std::max<int64_t>(1, 4096 / P.W), [&](int64_t begin, int64_t end) {
    RowScratch scratch(P.W);
    std::vector<T> conf_row(P.W), target_row(P.W);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t pair = row / P.H, y = row % P.H;
      const int64_t b = pair / (P.T_ - 1), t = pair % (P.T_ - 1) + 1;
      T* conf = conf_map != nullptr ? conf_map + row * P.W : conf_row.data();
      T* target = target_map != nullptr ? target_map + row * P.W : target_row.data();
      evaluate_row(P, probs, images, flows, flows_bw, b, t, y, scratch, conf, target);
      const T* p_cur = probs + (b * P.T_ + t) * P.H * P.W + y * P.W;
      double agree = 0, mass = 0;
      for (int64_t x = 0; x < P.W; ++x) {
        agree += double(conf[x] * (T(1) - std::abs(p_cur[x] - target[x])));
        mass += double(conf[x]);
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
    RowScratch scratch(P.W);
    std::vector<T> conf(P.W), target(P.W);
    for (int64_t frame = begin; frame < end; ++frame) {
      const int64_t b = frame / P.T_, s = frame % P.T_;
      T* g = grad + frame * HW;
      const T* p = probs + frame * HW;
      // L = 1 - sum(M (1 - |P_t - P~|)) / D, so dL/dP_t = M sign(P_t - P~) / D = -dL/dP~.
      if (s >= 1) {  // frame s is the current frame of pair s
        for (int64_t y = 0; y < P.H; ++y) {
          evaluate_row(P, probs, images, flows, flows_bw, b, s, y, scratch, conf.data(), target.data());
          const T* p_row = p + y * P.W;
          T* g_row = g + y * P.W;
          for (int64_t x = 0; x < P.W; ++x) {
            g_row[x] += coef[s - 1] * conf[x] * math::sign(p_row[x] - target[x]) * p_row[x] * (T(1) - p_row[x]);
          }
        }
      }
      if (P.soft_target && s + 1 < P.T_) {  // frame s is the warped previous frame of pair s + 1
        const T* p_next = probs + (frame + 1) * HW;
        const T* flow = flows + (frame + 1) * 2 * HW;
        for (int64_t y = 0; y < P.H; ++y) {
          evaluate_row(P, probs, images, flows, flows_bw, b, s + 1, y, scratch, conf.data(), target.data());
          for (int64_t x = 0; x < P.W; ++x) {
            const T go = -coef[s] * conf[x] * math::sign(p_next[y * P.W + x] - target[x]);
            if (go == T(0)) continue;  // also every pixel without a finite flow (M = 0)
            const auto t = math::bilinear_taps<T>(T(x) - flow[y * P.W + x], T(y) - flow[HW + y * P.W + x], P.W, P.H,
                                                  math::Padding::Border);
            math::scatter_taps(t, P.W, go, [g, p](int64_t i, T v) { g[i] += v * p[i] * (T(1) - p[i]); });
          }
        }
      }
    }
  });
}

// The float32 row path indexes a frame with int32.
void check_row_index_range(int64_t H, int64_t W) {
  TORCH_CHECK_VALUE(H * W < (int64_t(1) << 31), "temporal_consistency: frames must have fewer than 2^31 pixels on "
                    "the CPU, got ", H, " x ", W);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> consistency_cpu(
    const at::Tensor& logits_in, const at::Tensor& images_in, const at::Tensor& flows_in,
    const std::optional<at::Tensor>& flows_bw_in, at::ArrayRef<double> channel_scale, double alpha,
    c10::string_view confidence, bool soft_target, bool normalise, bool return_maps) {
  const auto in = consistency_inputs(logits_in, images_in, flows_in, flows_bw_in, channel_scale, alpha,
                                     std::string_view(confidence.data(), confidence.size()));
  const at::Tensor &logits = in.logits, &images = in.images, &flows = in.flows, &flows_bw = in.flows_backward;
  const int64_t B = logits.size(0), T = logits.size(1), H = logits.size(3), W = logits.size(4);
  check_row_index_range(H, W);
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
    const auto cpu = cpu_consistency<scalar_t>(in, channel_scale, alpha, soft_target);
    const auto& P = cpu.params;
    const auto& probs = cpu.probs;
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
  const auto in = consistency_inputs(logits_in, images_in, flows_in, flows_bw_in, channel_scale, alpha,
                                     std::string_view(confidence.data(), confidence.size()));
  const at::Tensor &logits = in.logits, &images = in.images, &flows = in.flows, &flows_bw = in.flows_backward;
  const int64_t B = logits.size(0), T = logits.size(1), H = logits.size(3), W = logits.size(4);
  check_row_index_range(H, W);
  check_saved("temporal_consistency_backward", "grad_loss", grad_loss_in, {T - 1}, logits_in);
  check_saved("temporal_consistency_backward", "mass", mass_in, {T - 1}, logits_in);
  at::Tensor grad = at::zeros(logits.sizes(), logits.options());
  if (B == 0) return grad;
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "dtc::temporal_consistency_backward (CPU)", [&] {
    const auto cpu = cpu_consistency<scalar_t>(in, channel_scale, alpha, soft_target);
    const auto& P = cpu.params;
    const auto& probs = cpu.probs;
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
