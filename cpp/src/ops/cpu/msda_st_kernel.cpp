// CPU kernels of dtc::msda_st. Work is split over (sample, head) pairs: each owns the value slice
// value[b, :, h, :] and the query rows of that head, so the backward's scatter into grad_value needs
// no atomics and the result does not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "ops/common/msda_math.h"
#include "ops/v2i/msda_st.h"

namespace dtc::ops {
namespace {

// (sample, head) pairs per task: small problems stay on one thread, where a parallel region's
// start-up would cost more than the work.
int64_t grain_of(const msda::Geometry& g) {
  return std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(1, g.Q * g.M * g.K * g.D));
}

at::Tensor msda_st_cpu(const at::Tensor& value_in, at::IntArrayRef spatial_shapes, const at::Tensor& loc_in,
                       const at::Tensor& attn_in) {
  const auto g = msda::check(value_in, spatial_shapes, loc_in, attn_in);
  const at::Tensor value = value_in.contiguous(), loc = loc_in.contiguous(), attn = attn_in.contiguous();
  at::Tensor out = at::zeros({g.B, g.Q, g.heads * g.D}, value.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "msda_st_cpu", [&] {
    const scalar_t* vp = value.data_ptr<scalar_t>();
    const scalar_t* lp = loc.data_ptr<scalar_t>();
    const scalar_t* ap = attn.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const int64_t pos_stride = g.heads * g.D;
    at::parallel_for(0, g.B * g.heads, grain_of(g), [&](int64_t i0, int64_t i1) {
      std::vector<double> acc(g.D);
      for (int64_t bh = i0; bh < i1; ++bh) {
        const int64_t b = bh / g.heads, h = bh % g.heads;
        const scalar_t* vbh = vp + b * g.S * pos_stride + h * g.D;
        for (int64_t q = 0; q < g.Q; ++q) {
          std::fill(acc.begin(), acc.end(), 0.0);
          const int64_t row = ((b * g.Q + q) * g.heads + h) * g.M;  // into attn [.., M, K]
          for (int64_t m = 0; m < g.M; ++m) {
            const scalar_t* vm = vbh + g.starts[m] * pos_stride;
            for (int64_t k = 0; k < g.K; ++k) {
              const int64_t pk = (row + m) * g.K + k;
              const auto taps = math::msda::bilinear_taps<double>(lp[2 * pk], lp[2 * pk + 1], g.shapes[2 * m],
                                                                  g.shapes[2 * m + 1]);
              const double a = ap[pk];
              for (int c = 0; c < 4; ++c) {
                if (taps.index[c] < 0) continue;
                const double wgt = a * taps.weight[c];
                const scalar_t* cell = vm + taps.index[c] * pos_stride;
                for (int64_t d = 0; d < g.D; ++d) acc[d] += wgt * double(cell[d]);
              }
            }
          }
          scalar_t* o = op + (b * g.Q + q) * pos_stride + h * g.D;
          for (int64_t d = 0; d < g.D; ++d) o[d] = scalar_t(acc[d]);
        }
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> msda_st_backward_cpu(const at::Tensor& grad_out_in,
                                                                    const at::Tensor& value_in,
                                                                    at::IntArrayRef spatial_shapes,
                                                                    const at::Tensor& loc_in, const at::Tensor& attn_in) {
  const auto g = msda::check(value_in, spatial_shapes, loc_in, attn_in);
  TORCH_CHECK_VALUE(grad_out_in.dim() == 3 && grad_out_in.size(0) == g.B && grad_out_in.size(1) == g.Q &&
                        grad_out_in.size(2) == g.heads * g.D,
                    "msda_st_backward: grad_out must be [B, Q, heads * D] = [", g.B, ", ", g.Q, ", ", g.heads * g.D,
                    "], got ", grad_out_in.sizes());
  const at::Tensor value = value_in.contiguous(), loc = loc_in.contiguous(), attn = attn_in.contiguous();
  const at::Tensor grad_out = grad_out_in.to(value.scalar_type()).contiguous();
  at::Tensor g_value = at::zeros_like(value), g_loc = at::zeros_like(loc), g_attn = at::zeros_like(attn);
  if (grad_out.numel() == 0) return {g_value, g_loc, g_attn};
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "msda_st_backward_cpu", [&] {
    const scalar_t* vp = value.data_ptr<scalar_t>();
    const scalar_t* lp = loc.data_ptr<scalar_t>();
    const scalar_t* ap = attn.data_ptr<scalar_t>();
    const scalar_t* gp = grad_out.data_ptr<scalar_t>();
    scalar_t* gvp = g_value.data_ptr<scalar_t>();
    scalar_t* glp = g_loc.data_ptr<scalar_t>();
    scalar_t* gap = g_attn.data_ptr<scalar_t>();
    const int64_t pos_stride = g.heads * g.D;
    at::parallel_for(0, g.B * g.heads, grain_of(g), [&](int64_t i0, int64_t i1) {
      for (int64_t bh = i0; bh < i1; ++bh) {
        const int64_t b = bh / g.heads, h = bh % g.heads;
        const int64_t base = b * g.S * pos_stride + h * g.D;
        for (int64_t q = 0; q < g.Q; ++q) {
          const scalar_t* go = gp + (b * g.Q + q) * pos_stride + h * g.D;
          const int64_t row = ((b * g.Q + q) * g.heads + h) * g.M;
          for (int64_t m = 0; m < g.M; ++m) {
            const int64_t hm = g.shapes[2 * m], wm = g.shapes[2 * m + 1];
            const int64_t map_base = base + g.starts[m] * pos_stride;
            for (int64_t k = 0; k < g.K; ++k) {
              const int64_t pk = (row + m) * g.K + k;
              const auto taps = math::msda::bilinear_taps<double>(lp[2 * pk], lp[2 * pk + 1], hm, wm);
              const double a = ap[pk];
              double d_attn = 0, d_x = 0, d_y = 0;
              for (int c = 0; c < 4; ++c) {
                if (taps.index[c] < 0) continue;
                const scalar_t* cell = vp + map_base + taps.index[c] * pos_stride;
                scalar_t* g_cell = gvp + map_base + taps.index[c] * pos_stride;
                double dot = 0;
                for (int64_t d = 0; d < g.D; ++d) {
                  dot += double(go[d]) * double(cell[d]);
                  g_cell[d] += scalar_t(a * taps.weight[c] * double(go[d]));
                }
                d_attn += taps.weight[c] * dot;
                d_x += taps.dx[c] * dot;
                d_y += taps.dy[c] * dot;
              }
              gap[pk] = scalar_t(d_attn);
              // x = u w - 0.5: d/du = w d/dx
              glp[2 * pk] = scalar_t(a * d_x * double(wm));
              glp[2 * pk + 1] = scalar_t(a * d_y * double(hm));
            }
          }
        }
      }
    });
  });
  return {g_value, g_loc, g_attn};
}

}  // namespace

TORCH_LIBRARY_IMPL(dtc, CPU, m) {
  m.impl("msda_st", &msda_st_cpu);
  m.impl("msda_st_backward", &msda_st_backward_cpu);
}

}  // namespace dtc::ops
