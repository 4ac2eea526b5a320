// dtc::corr_distill_loss (docs/xdim.md, "Correlation distillation"): schema-level checks, the CPU
// kernels and the autograd function. For each slice i with partner j = pair[i] and points a, b:
//   F(a,b) = T_i(a).T_j(b) (teacher correlation),  C(a,b) = S_i(a).S_j(b) (student correlation),
//   Ft = F - rowmean_b F + mean F  (the last mean over all slices and points),
//   loss = mean_{i,a,b} -clamp(C, 0, clamp_max) (Ft - b0).
// F is recomputed rather than stored (M n^2 values), so memory stays O(M n). The teacher gets no
// gradient (it is a stop-gradient target).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <vector>

#include "ops/xdim/corr_distill.h"

namespace dtc::ops {
namespace {

template <typename scalar_t>
inline double dot(const scalar_t* x, const scalar_t* y, int64_t c) {
  double acc = 0;
  for (int64_t k = 0; k < c; ++k) acc += double(x[k]) * double(y[k]);
  return acc;
}

// rowmean [M, n] of F and the global mean of F
template <typename scalar_t>
double teacher_row_means(const scalar_t* t, const int64_t* pair, int64_t M, int64_t n, int64_t ct, double* rowmean) {
  std::vector<double> slice_sum(M, 0.0);
  at::parallel_for(0, M, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const scalar_t* ti = t + i * n * ct;
      const scalar_t* tj = t + pair[i] * n * ct;
      double total = 0;
      for (int64_t a = 0; a < n; ++a) {
        double row = 0;
        for (int64_t b = 0; b < n; ++b) row += dot(ti + a * ct, tj + b * ct, ct);
        rowmean[i * n + a] = row / double(n);
        total += row;
      }
      slice_sum[i] = total;
    }
  });
  double total = 0;
  for (double v : slice_sum) total += v;  // fixed order: deterministic across thread counts
  return total / (double(M) * double(n) * double(n));
}

at::Tensor corr_distill_cpu(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& pair, double b0,
                            double clamp_max) {
  corr_distill_check(student, teacher, pair, clamp_max);
  const at::Tensor s = student.contiguous(), t = teacher.contiguous(), p = pair.contiguous();
  const int64_t M = s.size(0), n = s.size(1), cs = s.size(2), ct = t.size(2);
  std::vector<double> rowmean(M * n), slice_loss(M, 0.0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "corr_distill_cpu", [&] {
    const scalar_t* sp = s.data_ptr<scalar_t>();
    const scalar_t* tp = t.data_ptr<scalar_t>();
    const int64_t* pp = p.data_ptr<int64_t>();
    const double mean_f = teacher_row_means(tp, pp, M, n, ct, rowmean.data());
    at::parallel_for(0, M, 1, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t j = pp[i];
        double acc = 0;
        for (int64_t a = 0; a < n; ++a) {
          const double shift = mean_f - rowmean[i * n + a] - b0;
          for (int64_t b = 0; b < n; ++b) {
            const double c = std::min(std::max(dot(sp + (i * n + a) * cs, sp + (j * n + b) * cs, cs), 0.0), clamp_max);
            acc -= c * (dot(tp + (i * n + a) * ct, tp + (j * n + b) * ct, ct) + shift);
          }
        }
        slice_loss[i] = acc;
      }
    });
  });
  double total = 0;
  for (double v : slice_loss) total += v;
  return at::scalar_tensor(total / (double(M) * double(n) * double(n)), s.options());
}

at::Tensor corr_distill_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& student, const at::Tensor& teacher,
                                     const at::Tensor& pair, double b0, double clamp_max) {
  corr_distill_check(student, teacher, pair, clamp_max);
  const at::Tensor s = student.contiguous(), t = teacher.contiguous(), p = pair.contiguous();
  const int64_t M = s.size(0), n = s.size(1), cs = s.size(2), ct = t.size(2);
  const double scale = grad_loss.item<double>() / (double(M) * double(n) * double(n));
  std::vector<double> rowmean(M * n);
  // d/dS_i(a) and d/dS_j(b) accumulate separately: with a permutation each slice is "j" of exactly
  // one i, so parallel slices never write the same rows
  std::vector<double> grad_a(M * n * cs, 0.0), grad_b(M * n * cs, 0.0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "corr_distill_backward_cpu", [&] {
    const scalar_t* sp = s.data_ptr<scalar_t>();
    const scalar_t* tp = t.data_ptr<scalar_t>();
    const int64_t* pp = p.data_ptr<int64_t>();
    const double mean_f = teacher_row_means(tp, pp, M, n, ct, rowmean.data());
    at::parallel_for(0, M, 1, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t j = pp[i];
        for (int64_t a = 0; a < n; ++a) {
          const scalar_t* sa = sp + (i * n + a) * cs;
          const double shift = mean_f - rowmean[i * n + a] - b0;
          for (int64_t b = 0; b < n; ++b) {
            const scalar_t* sb = sp + (j * n + b) * cs;
            const double c = dot(sa, sb, cs);
            if (c < 0 || c > clamp_max) continue;  // clamp passes the gradient on [0, clamp_max], as torch.clamp
            const double g = -scale * (dot(tp + (i * n + a) * ct, tp + (j * n + b) * ct, ct) + shift);
            double* ga = grad_a.data() + (i * n + a) * cs;
            double* gb = grad_b.data() + (j * n + b) * cs;
            for (int64_t k = 0; k < cs; ++k) {
              ga[k] += g * double(sb[k]);
              gb[k] += g * double(sa[k]);
            }
          }
        }
      }
    });
  });
  at::Tensor out = at::empty({M, n, cs}, s.options().dtype(at::kDouble));
  double* o = out.data_ptr<double>();
  for (int64_t k = 0; k < M * n * cs; ++k) o[k] = grad_a[k] + grad_b[k];
  return out.to(s.scalar_type());
}

at::Tensor call_forward(const at::Tensor& s, const at::Tensor& t, const at::Tensor& p, double b0, double cm) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("dtc::corr_distill_loss", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, double, double)>();
  return op.call(s, t, p, b0, cm);
}

at::Tensor call_backward(const at::Tensor& g, const at::Tensor& s, const at::Tensor& t, const at::Tensor& p, double b0,
                         double cm) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("dtc::corr_distill_loss_backward", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         double, double)>();
  return op.call(g, s, t, p, b0, cm);
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class CorrDistillFunction : public torch::autograd::Function<CorrDistillFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& student, const at::Tensor& teacher,
                            const at::Tensor& pair, double b0, double clamp_max) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({student, teacher, pair});
    ctx->saved_data["b0"] = b0;
    ctx->saved_data["clamp_max"] = clamp_max;
    return call_forward(student, teacher, pair, b0, clamp_max);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto v = ctx->get_saved_variables();
    at::Tensor grad_student;
    if (ctx->needs_input_grad(0) && grads[0].defined()) {
      grad_student = call_backward(grads[0], v[0], v[1], v[2], ctx->saved_data["b0"].toDouble(),
                                   ctx->saved_data["clamp_max"].toDouble());
    }
    // the teacher is a stop-gradient target: no gradient by design
    return {grad_student, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor corr_distill_autograd(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& pair,
                                 double b0, double clamp_max) {
  return CorrDistillFunction::apply(student, teacher, pair, b0, clamp_max);
}

}  // namespace

TORCH_LIBRARY_IMPL(dtc, CPU, m) {
  m.impl("corr_distill_loss", &corr_distill_cpu);
  m.impl("corr_distill_loss_backward", &corr_distill_backward_cpu);
}

TORCH_LIBRARY_IMPL(dtc, Autograd, m) { m.impl("corr_distill_loss", TORCH_FN(corr_distill_autograd)); }

}  // namespace dtc::ops
