// dtc::msda_st (docs/v2i.md, the clip teacher's global branch): checks, the autograd function and the
// C++ API. For each (sample b, query q, head h) and channel d:
//   out[b, q, h D + d] = sum_{m, k} A[b, q, h, m, k] * bilinear(value_m[b, :, h, d], loc[b, q, h, m, k])
// over the M = T L maps (every frame at every level), zero padding, align_corners=False placement.
#include "ops/v2i/msda_st.h"

#include <torch/autograd.h>
#include <torch/library.h>

#include "dtc/ops.h"

namespace dtc::ops::msda {

Geometry check(const at::Tensor& value, at::IntArrayRef spatial_shapes, const at::Tensor& loc, const at::Tensor& attn) {
  TORCH_CHECK_VALUE(value.dim() == 4, "msda_st: value must be [B, S, heads, D], got shape ", value.sizes());
  Geometry g;
  g.B = value.size(0);
  g.S = value.size(1);
  g.heads = value.size(2);
  g.D = value.size(3);
  TORCH_CHECK_VALUE(!spatial_shapes.empty() && spatial_shapes.size() % 2 == 0,
                    "msda_st: spatial_shapes must list (h, w) of each map, [h_0, w_0, h_1, w_1, ...], got ",
                    spatial_shapes);
  g.M = int64_t(spatial_shapes.size()) / 2;
  int64_t total = 0;
  for (int64_t m = 0; m < g.M; ++m) {
    const int64_t h = spatial_shapes[2 * m], w = spatial_shapes[2 * m + 1];
    TORCH_CHECK_VALUE(h > 0 && w > 0, "msda_st: spatial_shapes of map ", m, " must be positive, got (", h, ", ", w, ")");
    g.shapes.push_back(h);
    g.shapes.push_back(w);
    g.starts.push_back(total);
    total += h * w;
  }
  TORCH_CHECK_VALUE(total == g.S, "msda_st: value holds S = ", g.S, " positions but spatial_shapes sum to ", total,
                    " (S must be sum_m h_m w_m)");
  TORCH_CHECK_VALUE(loc.dim() == 6 && loc.size(0) == g.B && loc.size(2) == g.heads && loc.size(3) == g.M &&
                        loc.size(5) == 2,
                    "msda_st: sampling_locations must be [B, Q, heads, M, K, 2] = [", g.B, ", Q, ", g.heads, ", ", g.M,
                    ", K, 2], got ", loc.sizes());
  g.Q = loc.size(1);
  g.K = loc.size(4);
  TORCH_CHECK_VALUE(attn.dim() == 5 && attn.sizes() == loc.sizes().slice(0, 5),
                    "msda_st: attention_weights must be [B, Q, heads, M, K] = ", loc.sizes().slice(0, 5), ", got ",
                    attn.sizes());
  const auto dtype = value.scalar_type();
  TORCH_CHECK_TYPE((dtype == at::kFloat || dtype == at::kDouble) && loc.scalar_type() == dtype &&
                       attn.scalar_type() == dtype,
                   "msda_st: value, sampling_locations and attention_weights must all be float32 or all float64, got ",
                   dtype, ", ", loc.scalar_type(), ", ", attn.scalar_type());
  TORCH_CHECK_VALUE(value.device() == loc.device() && value.device() == attn.device(),
                    "msda_st: value, sampling_locations and attention_weights must be on one device, got ",
                    value.device(), ", ", loc.device(), ", ", attn.device());
  return g;
}

}  // namespace dtc::ops::msda

namespace dtc {

at::Tensor msda_st(const at::Tensor& value, at::IntArrayRef spatial_shapes, const at::Tensor& sampling_locations,
                   const at::Tensor& attention_weights) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("dtc::msda_st", "")
                       .typed<at::Tensor(const at::Tensor&, at::IntArrayRef, const at::Tensor&, const at::Tensor&)>();
  return op.call(value, spatial_shapes, sampling_locations, attention_weights);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> msda_st_backward(const at::Tensor& grad_out, const at::Tensor& value,
                                                                at::IntArrayRef spatial_shapes,
                                                                const at::Tensor& sampling_locations,
                                                                const at::Tensor& attention_weights) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("dtc::msda_st_backward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, at::IntArrayRef, const at::Tensor&, const at::Tensor&)>();
  return op.call(grad_out, value, spatial_shapes, sampling_locations, attention_weights);
}

}  // namespace dtc

namespace dtc::ops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class MsdaFunction : public torch::autograd::Function<MsdaFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& value, c10::IntArrayRef spatial_shapes,
                            const at::Tensor& loc, const at::Tensor& attn) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({value, loc, attn});
    ctx->saved_data["spatial_shapes"] = spatial_shapes.vec();
    return dtc::msda_st(value, spatial_shapes, loc, attn);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto v = ctx->get_saved_variables();
    if (!grads[0].defined()) return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    const std::vector<int64_t> shapes = ctx->saved_data["spatial_shapes"].toIntVector();
    auto [g_value, g_loc, g_attn] = dtc::msda_st_backward(grads[0], v[0], shapes, v[1], v[2]);
    // needs_input_grad counts tensor inputs only (value, locations, weights); the list returned has one
    // entry per argument, spatial_shapes included.
    return {ctx->needs_input_grad(0) ? g_value : at::Tensor(), at::Tensor(),
            ctx->needs_input_grad(1) ? g_loc : at::Tensor(), ctx->needs_input_grad(2) ? g_attn : at::Tensor()};
  }
};

at::Tensor msda_autograd(const at::Tensor& value, c10::IntArrayRef spatial_shapes, const at::Tensor& loc,
                         const at::Tensor& attn) {
  return MsdaFunction::apply(value, spatial_shapes, loc, attn);
}

}  // namespace

TORCH_LIBRARY_IMPL(dtc, Autograd, m) { m.impl("msda_st", TORCH_FN(msda_autograd)); }

}  // namespace dtc::ops
