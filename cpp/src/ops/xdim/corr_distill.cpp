// dtc::corr_distill_loss (docs/xdim.md, "Correlation distillation"): the kernels (one ATen implementation
// for the CPU and CUDA) and the autograd function. For each slice i with partner j = pair[i] and points a, b:
//   F(a,b) = T_i(a).T_j(b) (teacher correlation),  C(a,b) = S_i(a).S_j(b) (student correlation),
//   Ft = F - rowmean_b F + mean F  (the last mean over all slices and points),
//   loss = mean_{i,a,b} -clamp(C, 0, clamp_max) (Ft - b0).
// F is recomputed rather than stored (M n^2 values), so memory stays O(M n) plus one chunk's. The
// teacher gets no gradient (it is a stop-gradient target).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <utility>

namespace dtc::ops {
namespace {

// student [M, n, Cs], teacher [M, n, Ct] (L2-normalised point features), pair [M] int64, a permutation
// of 0..M-1 (identity for the self pairs). Throws ValueError/TypeError naming the argument.
void corr_distill_check(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& pair,
                        double clamp_max) {
  TORCH_CHECK_VALUE(student.dim() == 3, "corr_distill_loss: student must be [M, n, C_s] point features, got shape ",
                    student.sizes());
  TORCH_CHECK_VALUE(teacher.dim() == 3 && teacher.size(0) == student.size(0) && teacher.size(1) == student.size(1),
                    "corr_distill_loss: teacher must be [M, n, C_t] with the student's M and n ", student.sizes(),
                    ", got ", teacher.sizes());
  TORCH_CHECK_VALUE(student.size(0) > 0 && student.size(1) > 0 && student.size(2) > 0 && teacher.size(2) > 0,
                    "corr_distill_loss: student and teacher must not be empty, got ", student.sizes(), " and ",
                    teacher.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(student.scalar_type()) && student.scalar_type() == teacher.scalar_type(),
                   "corr_distill_loss: student and teacher must be floating point of the same dtype, got ",
                   student.scalar_type(), " and ", teacher.scalar_type());
  TORCH_CHECK_TYPE(pair.scalar_type() == at::kLong, "corr_distill_loss: pair must be int64, got ", pair.scalar_type());
  TORCH_CHECK_VALUE(pair.dim() == 1 && pair.size(0) == student.size(0),
                    "corr_distill_loss: pair must be [M] = [", student.size(0), "], got ", pair.sizes());
  TORCH_CHECK_VALUE(student.device() == teacher.device() && student.device() == pair.device(),
                    "corr_distill_loss: student, teacher and pair must be on one device");
  TORCH_CHECK_VALUE(clamp_max > 0, "corr_distill_loss: clamp_max must be > 0, got ", clamp_max);
  // a permutation, as documented: each slice is the partner of exactly one slice
  const at::Tensor sorted = std::get<0>(pair.sort());
  TORCH_CHECK_VALUE(sorted.equal(at::arange(pair.size(0), pair.options())),
                    "corr_distill_loss: pair must be a permutation of 0..", pair.size(0) - 1,
                    " (the partner slice of each slice)");
}

// The correlations are batched matrix products over chunks of slices: BLAS (cuBLAS on the GPU) does the
// O(n^2 C) work, and a chunk's [k, n, n] correlations are the only n^2 memory (F is recomputed per pass,
// not kept for all M slices). Products run in the input's precision (float for half/bfloat16), the sums
// in float64, kept on the device (no host read-back between chunks).
// Both devices run this: a hand-written CUDA kernel that recomputed each dot product per (slice, point)
// row ran 19x slower than the plain-PyTorch composition on an H200 (M=64, n=256, C=384: 47 vs 2.5 ms).
// On the CPU 8 slices keep a chunk in cache; the GPU wants few, large launches (up to 2^24 values a chunk).
int64_t slices_per_chunk(const at::Tensor& x) {
  if (!x.is_cuda()) return 8;
  const int64_t n = x.size(1);
  return std::max<int64_t>(8, (int64_t(1) << 24) / std::max<int64_t>(n * n, 1));
}

at::ScalarType compute_type(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// The correlations of slices [i0, i0 + k) with their partners, X_i X_pair[i]^T: [k, n, n] in float64
// (F for the teacher's points, C for the student's).
at::Tensor corr(const at::Tensor& x, const at::Tensor& pair, int64_t i0, int64_t k) {
  const at::Tensor xi = x.narrow(0, i0, k);
  const at::Tensor xj = x.index_select(0, pair.narrow(0, i0, k));
  return at::bmm(xi, xj.transpose(1, 2)).to(at::kDouble);
}

// rowmean [M, n] of F and the global mean of F, a 0-d float64 tensor (summed in a fixed order:
// deterministic).
std::pair<at::Tensor, at::Tensor> teacher_row_means(const at::Tensor& t, const at::Tensor& pair) {
  const int64_t M = t.size(0), n = t.size(1), chunk = slices_per_chunk(t);
  at::Tensor rowmean = at::empty({M, n}, t.options().dtype(at::kDouble));
  at::Tensor total = at::zeros({}, rowmean.options());
  for (int64_t i0 = 0; i0 < M; i0 += chunk) {
    const int64_t k = std::min(chunk, M - i0);
    const at::Tensor f = corr(t, pair, i0, k);
    rowmean.narrow(0, i0, k).copy_(f.mean(2));
    total.add_(f.sum());
  }
  return {rowmean, total.div_(double(M) * double(n) * double(n))};
}

// The centred target Ft - b0 for a chunk: F - rowmean + mean - b0.
at::Tensor target_minus_b0(const at::Tensor& t, const at::Tensor& pair, const at::Tensor& rowmean,
                           const at::Tensor& mean_f, double b0, int64_t i0, int64_t k) {
  return corr(t, pair, i0, k).sub_(rowmean.narrow(0, i0, k).unsqueeze(2)).add_(mean_f - b0);
}

// What the forward and the backward both start from: the checked operands in the compute type and
// the teacher's row means.
struct Operands {
  Operands(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& pair, double clamp_max) {
    corr_distill_check(student, teacher, pair, clamp_max);
    s = student.contiguous().to(compute_type(student));
    t = teacher.contiguous().to(compute_type(teacher));
    p = pair.contiguous();
    std::tie(rowmean, mean_f) = teacher_row_means(t, p);
  }
  // The loss's normaliser: every (slice, a, b) term.
  double terms() const { return double(s.size(0)) * double(s.size(1)) * double(s.size(1)); }
  at::Tensor s, t, p, rowmean, mean_f;
};

at::Tensor corr_distill_forward(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& pair,
                                double b0, double clamp_max) {
  const Operands o(student, teacher, pair, clamp_max);
  const int64_t M = o.s.size(0), chunk = slices_per_chunk(o.s);
  at::Tensor total = at::zeros({}, o.rowmean.options());
  for (int64_t i0 = 0; i0 < M; i0 += chunk) {
    const int64_t k = std::min(chunk, M - i0);
    const at::Tensor c = corr(o.s, o.p, i0, k).clamp_(0, clamp_max);
    total.sub_((c * target_minus_b0(o.t, o.p, o.rowmean, o.mean_f, b0, i0, k)).sum());
  }
  return total.div_(o.terms()).to(student.scalar_type());
}

at::Tensor corr_distill_backward(const at::Tensor& grad_loss, const at::Tensor& student, const at::Tensor& teacher,
                                 const at::Tensor& pair, double b0, double clamp_max) {
  const Operands o(student, teacher, pair, clamp_max);
  const int64_t M = o.s.size(0), chunk = slices_per_chunk(o.s);
  const at::Tensor minus_scale = grad_loss.to(at::kDouble).div(-o.terms());
  const at::Tensor sd = o.s.to(at::kDouble);
  at::Tensor grad = at::zeros(sd.sizes(), sd.options());
  for (int64_t i0 = 0; i0 < M; i0 += chunk) {
    const int64_t k = std::min(chunk, M - i0);
    const at::Tensor pj = o.p.narrow(0, i0, k);
    const at::Tensor c = corr(o.s, o.p, i0, k);
    // clamp passes the gradient on [0, clamp_max], as torch.clamp
    const at::Tensor g = target_minus_b0(o.t, o.p, o.rowmean, o.mean_f, b0, i0, k)
                             .mul_(minus_scale)
                             .mul_(((c >= 0) & (c <= clamp_max)).to(at::kDouble));
    grad.narrow(0, i0, k).add_(at::bmm(g, sd.index_select(0, pj)));
    grad.index_add_(0, pj, at::bmm(g.transpose(1, 2), sd.narrow(0, i0, k)));
  }
  return grad.to(student.scalar_type());
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
  m.impl("corr_distill_loss", &corr_distill_forward);
  m.impl("corr_distill_loss_backward", &corr_distill_backward);
}

#if DTC_WITH_CUDA
TORCH_LIBRARY_IMPL(dtc, CUDA, m) {
  m.impl("corr_distill_loss", &corr_distill_forward);
  m.impl("corr_distill_loss_backward", &corr_distill_backward);
}
#endif

TORCH_LIBRARY_IMPL(dtc, Autograd, m) { m.impl("corr_distill_loss", TORCH_FN(corr_distill_autograd)); }

}  // namespace dtc::ops
