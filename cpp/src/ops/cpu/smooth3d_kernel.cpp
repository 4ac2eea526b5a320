// CPU kernel of dtc::smooth3d_pcg: the 3-D pseudo-label smoother as one sparse SPD solve.
//
// Minimising (lambda_d/N) sum w (p - target)^2 + lambda_tv sum_a (1/N_a) |D_a p|^2 (forward differences
// D_a along z, y, x; N voxels; N_a differences along a) is the linear system
//     (W + sum_a kappa_a (N / N_a) L_a) p = W target,   L_a = D_a^T D_a (Neumann Laplacian),
// with kappa = lambda_tv / lambda_d. W >= 0.5 keeps it SPD and well conditioned (about 5), so Eigen's
// conjugate gradient with a Jacobi (diagonal) preconditioner converges in a few tens of iterations.
// Not differentiable: the pseudo-labels are targets, never optimised through.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <Eigen/IterativeLinearSolvers>
#include <Eigen/SparseCore>

#include <array>
#include <vector>

namespace dtc::ops {
namespace {

std::tuple<at::Tensor, at::Tensor> smooth3d_pcg_cpu(const at::Tensor& target, const at::Tensor& weight,
                                                    double kappa_z, double kappa_xy, double tol, int64_t max_iter) {
  TORCH_CHECK_VALUE(target.dim() == 3, "smooth3d_pcg: target must be a 3-D volume [D, H, W], got shape ",
                    target.sizes());
  TORCH_CHECK_VALUE(weight.sizes() == target.sizes(), "smooth3d_pcg: weight must have the target's shape ",
                    target.sizes(), ", got ", weight.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(target.scalar_type()) && target.scalar_type() == weight.scalar_type(),
                   "smooth3d_pcg: target and weight must be floating point of the same dtype, got ",
                   target.scalar_type(), " and ", weight.scalar_type());
  TORCH_CHECK_VALUE(target.numel() > 0, "smooth3d_pcg: target must not be empty");
  TORCH_CHECK_VALUE(kappa_z >= 0 && kappa_xy >= 0, "smooth3d_pcg: kappa_z and kappa_xy must be >= 0, got ", kappa_z,
                    " and ", kappa_xy);
  TORCH_CHECK_VALUE(tol > 0 && max_iter >= 1, "smooth3d_pcg: tol must be > 0 and max_iter >= 1, got ", tol, " and ",
                    max_iter);
  const at::Tensor t64 = target.to(at::kDouble).contiguous();
  const at::Tensor w64 = weight.to(at::kDouble).contiguous();
  TORCH_CHECK_VALUE(at::isfinite(t64).all().item<bool>(), "smooth3d_pcg: target has non-finite values");
  TORCH_CHECK_VALUE((w64 > 0).all().item<bool>() && at::isfinite(w64).all().item<bool>(),
                    "smooth3d_pcg: weight must be finite and > 0 (clip(1 - sigma, 0, 1) with sigma <= 0.5 keeps "
                    "it >= 0.5), got min ", w64.min().item<double>());

  const int64_t D = target.size(0), H = target.size(1), W = target.size(2), N = D * H * W;
  const std::array<int64_t, 3> dims{D, H, W}, strides{H * W, W, 1};
  // N / N_a per axis; an axis of length 1 has no differences and no term
  std::array<double, 3> coef{};
  for (int a = 0; a < 3; ++a) {
    const int64_t n_a = (dims[a] - 1) * (N / dims[a]);
    coef[a] = n_a > 0 ? (a == 0 ? kappa_z : kappa_xy) * double(N) / double(n_a) : 0.0;
  }
  const double* w = w64.data_ptr<double>();
  const double* tg = t64.data_ptr<double>();
  std::vector<Eigen::Triplet<double>> entries;
  entries.reserve(size_t(N) * 7);
  Eigen::VectorXd rhs(N), guess(N);
  for (int64_t z = 0; z < D; ++z)
    for (int64_t y = 0; y < H; ++y)
      for (int64_t x = 0; x < W; ++x) {
        const int64_t i = z * strides[0] + y * strides[1] + x;
        const std::array<int64_t, 3> pos{z, y, x};
        double diag = w[i];
        for (int a = 0; a < 3; ++a) {
          if (coef[a] == 0) continue;
          if (pos[a] > 0) {
            entries.emplace_back(i, i - strides[a], -coef[a]);
            diag += coef[a];
          }
          if (pos[a] + 1 < dims[a]) {
            entries.emplace_back(i, i + strides[a], -coef[a]);
            diag += coef[a];
          }
        }
        entries.emplace_back(i, i, diag);
        rhs[i] = w[i] * tg[i];
        guess[i] = tg[i];  // start from the unsmoothed target
      }
  Eigen::SparseMatrix<double, Eigen::RowMajor> A(N, N);
  A.setFromTriplets(entries.begin(), entries.end());
  entries = {};
  Eigen::ConjugateGradient<Eigen::SparseMatrix<double, Eigen::RowMajor>, Eigen::Lower | Eigen::Upper,
                           Eigen::DiagonalPreconditioner<double>>
      cg;
  cg.setTolerance(tol);
  cg.setMaxIterations(max_iter);
  cg.compute(A);
  const Eigen::VectorXd solution = cg.solveWithGuess(rhs, guess);
  // the relative residual, measured rather than taken from the solver's own estimate
  const double rhs_norm = rhs.norm();
  const double residual = rhs_norm > 0 ? (rhs - A * solution).norm() / rhs_norm : (A * solution).norm();
  at::Tensor out = at::empty({D, H, W}, target.options().dtype(at::kDouble));
  std::copy(solution.data(), solution.data() + N, out.data_ptr<double>());
  at::Tensor info = at::empty({2}, target.options().dtype(at::kDouble));
  info[0] = double(cg.iterations());
  info[1] = residual;
  return {out.to(target.scalar_type()), info};
}

}  // namespace

TORCH_LIBRARY_IMPL(dtc, CPU, m) { m.impl("smooth3d_pcg", &smooth3d_pcg_cpu); }

}  // namespace dtc::ops
