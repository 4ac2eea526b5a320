// Per-frame SUN-SEG metrics on the CPU, single-threaded: S-measure, E-measure (adaptive + 256-threshold
// curve), weighted F-measure, F-measure (adaptive + curve), MAE, and the Dice/sensitivity/specificity/IoU
// curves over thresholds linspace(1, 0, 256).
//
// Mirrors python/dtc/metrics/reference.py operation by operation, in double precision, so the two agree
// to rounding (the tests compare them). Layout: pred (H, W) float64 in [0, 1], row-major contiguous;
// gt (H, W) uint8/bool, nonzero = object. Curve entry i belongs to threshold (255 - i) / 255.
#include "metrics/metrics_bindings.h"

#include <algorithm>
#include <cfenv>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace {

constexpr int kBins = 256;
// MATLAB's eps (np.spacing(1)), the guard the original evaluation code uses.
constexpr double kEps = 2.220446049250313e-16;

struct Frame {
  const double* p;
  const uint8_t* g;
  int64_t h, w, n;
};

// ------------------------------------------------------------------------------------------ S-measure
double object_similarity(double sum, double sumsq_dev, int64_t count) {
  const double mean = sum / count;
  const double sd = count > 1 ? std::sqrt(sumsq_dev / (count - 1)) : std::numeric_limits<double>::quiet_NaN();
  return 2.0 * mean / (mean * mean + 1.0 + sd + kEps);
}

double ssim_block(const Frame& f, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
  const int64_t n = (r1 - r0) * (c1 - c0);
  double sp = 0, sg = 0;
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t c = c0; c < c1; ++c) {
      sp += f.p[r * f.w + c];
      sg += f.g[r * f.w + c] ? 1.0 : 0.0;
    }
  const double x = sp / n, y = sg / n;
  double vx = 0, vy = 0, cxy = 0;
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t c = c0; c < c1; ++c) {
      const double dp = f.p[r * f.w + c] - x;
      const double dg = (f.g[r * f.w + c] ? 1.0 : 0.0) - y;
      vx += dp * dp;
      vy += dg * dg;
      cxy += dp * dg;
    }
  const double denom = n > 1 ? double(n - 1) : std::numeric_limits<double>::quiet_NaN();
  vx /= denom;
  vy /= denom;
  cxy /= denom;
  const double a = 4.0 * x * y * cxy;
  const double b = (x * x + y * y) * (vx + vy);
  if (a != 0) return a / (b + kEps);
  if (b == 0) return 1.0;
  return 0.0;
}

double s_measure(const Frame& f, int64_t n_fg, double pred_sum) {
  if (n_fg == 0) return 1.0 - pred_sum / f.n;
  if (n_fg == f.n) return pred_sum / f.n;
  // Object term: foreground values p, background values 1 - p.
  double s_fg = 0, s_bg = 0;
  double col_moment = 0, row_moment = 0;
  for (int64_t r = 0; r < f.h; ++r)
    for (int64_t c = 0; c < f.w; ++c) {
      const int64_t i = r * f.w + c;
      if (f.g[i]) {
        s_fg += f.p[i];
        col_moment += double(c);
        row_moment += double(r);
      } else {
        s_bg += 1.0 - f.p[i];
      }
    }
  const int64_t n_bg = f.n - n_fg;
  const double m_fg = s_fg / n_fg, m_bg = s_bg / n_bg;
  double d_fg = 0, d_bg = 0;
  for (int64_t i = 0; i < f.n; ++i) {
    if (f.g[i]) {
      const double d = f.p[i] - m_fg;
      d_fg += d * d;
    } else {
      const double d = (1.0 - f.p[i]) - m_bg;
      d_bg += d * d;
    }
  }
  const double u = double(n_fg) / f.n;
  const double object = u * object_similarity(s_fg, d_fg, n_fg) + (1.0 - u) * object_similarity(s_bg, d_bg, n_bg);

  // Region term: split at the rounded centroid (half-to-even, as numpy), + 1 = size of the top-left block.
  std::fesetround(FE_TONEAREST);
  const int64_t x = int64_t(std::nearbyint(col_moment / n_fg)) + 1;
  const int64_t y = int64_t(std::nearbyint(row_moment / n_fg)) + 1;
  const double area = double(f.h * f.w);
  const double w1 = double(x * y) / area;
  const double w2 = double(y * (f.w - x)) / area;
  const double w3 = double((f.h - y) * x) / area;
  const double w4 = 1.0 - w1 - w2 - w3;
  double region = 0;
  if (x * y > 0) region += w1 * ssim_block(f, 0, y, 0, x);
  if (y * (f.w - x) > 0) region += w2 * ssim_block(f, 0, y, x, f.w);
  if ((f.h - y) * x > 0) region += w3 * ssim_block(f, y, f.h, 0, x);
  if ((f.h - y) * (f.w - x) > 0) region += w4 * ssim_block(f, y, f.h, x, f.w);
  return std::max(0.0, 0.5 * object + 0.5 * region);
}

// ------------------------------------------------------------------------------------------ E-measure
// Sum of the enhanced-alignment matrix of a binary prediction with tp/fp foreground counts: the matrix
// takes one value per TP/FP/FN/TN cell, so the sum is four count-weighted closed-form terms.
double enhanced_sum(double tp, double fp, double n_fg_gt, double n_total) {
  const double n_fg_pred = tp + fp;
  const double n_bg_pred = n_total - n_fg_pred;
  if (n_fg_gt == 0) return n_bg_pred;
  if (n_fg_gt == n_total) return n_fg_pred;
  const double fn = n_fg_gt - tp;
  const double tn = n_bg_pred - fn;
  const double mp = n_fg_pred / n_total, mg = n_fg_gt / n_total;
  const double counts[4] = {tp, fp, fn, tn};
  const double dps[4] = {1.0 - mp, 1.0 - mp, -mp, -mp};
  const double dgs[4] = {1.0 - mg, -mg, 1.0 - mg, -mg};
  double total = 0;
  for (int k = 0; k < 4; ++k) {
    const double align = 2.0 * dps[k] * dgs[k] / (dps[k] * dps[k] + dgs[k] * dgs[k] + kEps);
    total = total + counts[k] * ((align + 1.0) * (align + 1.0)) / 4.0;
  }
  return total;
}

double f_beta(double precision, double recall, double beta2) {
  const double num = (1.0 + beta2) * precision * recall;
  return num == 0 ? 0.0 : num / (beta2 * precision + recall);
}

// ------------------------------------------------------------------------------------------ weighted F
// 1-D squared distance transform of f (Felzenszwalb & Huttenlocher 2012) with the argmin position.
// `inf` entries are sites that do not exist; a line without sites keeps d = inf, arg = -1.
void dt1d(const double* f, int64_t n, double* d, int64_t* arg, int64_t* v, double* z) {
  const double inf = std::numeric_limits<double>::infinity();
  int64_t k = -1;
  for (int64_t q = 0; q < n; ++q) {
    if (f[q] == inf) continue;
    if (k < 0) {
      k = 0;
      v[0] = q;
      z[0] = -inf;
      z[1] = inf;
      continue;
    }
    double s;
    while (true) {
      const int64_t p = v[k];
      s = ((f[q] + double(q) * q) - (f[p] + double(p) * p)) / (2.0 * double(q - p));
      if (s > z[k]) break;
      --k;  // z[0] = -inf stops this before k < 0
    }
    ++k;
    v[k] = q;
    z[k] = k == 0 ? -inf : s;
    z[k + 1] = inf;
  }
  if (k < 0) {
    for (int64_t q = 0; q < n; ++q) {
      d[q] = inf;
      arg[q] = -1;
    }
    return;
  }
  int64_t j = 0;
  for (int64_t q = 0; q < n; ++q) {
    while (z[j + 1] < q) ++j;
    const double dq = double(q - v[j]);
    d[q] = dq * dq + f[v[j]];
    arg[q] = v[j];
  }
}

// Exact squared Euclidean distance of every pixel to the nearest object pixel, and that pixel's flat index.
void edt_to_object(const Frame& f, std::vector<double>& dist2, std::vector<int64_t>& nearest) {
  const double inf = std::numeric_limits<double>::infinity();
  const int64_t h = f.h, w = f.w, m = std::max(h, w);
  std::vector<double> col_d(h * w), line(m), out(m), z(m + 1);
  std::vector<int64_t> col_arg(h * w), arg(m), v(m);
  // Pass 1, along each column: distance to the nearest object pixel of that column.
  for (int64_t c = 0; c < w; ++c) {
    for (int64_t r = 0; r < h; ++r) line[r] = f.g[r * w + c] ? 0.0 : inf;
    dt1d(line.data(), h, out.data(), arg.data(), v.data(), z.data());
    for (int64_t r = 0; r < h; ++r) {
      col_d[r * w + c] = out[r];
      col_arg[r * w + c] = arg[r];
    }
  }
  // Pass 2, along each row over the column results.
  dist2.resize(h * w);
  nearest.resize(h * w);
  for (int64_t r = 0; r < h; ++r) {
    dt1d(&col_d[r * w], w, out.data(), arg.data(), v.data(), z.data());
    for (int64_t c = 0; c < w; ++c) {
      const int64_t cc = arg[c];
      dist2[r * w + c] = out[c];
      nearest[r * w + c] = col_arg[r * w + cc] * w + cc;
    }
  }
}

double weighted_f_measure(const Frame& f, int64_t n_fg) {
  if (n_fg == 0) return 0.0;
  const int64_t h = f.h, w = f.w, n = f.n;
  std::vector<double> dist2;
  std::vector<int64_t> nearest;
  edt_to_object(f, dist2, nearest);
  std::vector<double> err(n), dep(n), tmp(n), blur(n);
  for (int64_t i = 0; i < n; ++i) err[i] = std::fabs(f.p[i] - (f.g[i] ? 1.0 : 0.0));
  for (int64_t i = 0; i < n; ++i) dep[i] = f.g[i] ? err[i] : err[nearest[i]];
  // 7x7 Gaussian, sigma 5, normalised (MATLAB fspecial), zero padding; separable in two passes.
  double k[7], ks = 0;
  for (int j = 0; j < 7; ++j) {
    const double x = j - 3;
    k[j] = std::exp(-(x * x) / 50.0);
    ks += k[j];
  }
  for (double& kj : k) kj /= ks;
  for (int64_t r = 0; r < h; ++r)
    for (int64_t c = 0; c < w; ++c) {
      double s = 0;
      for (int j = -3; j <= 3; ++j) {
        const int64_t cc = c + j;
        if (cc >= 0 && cc < w) s += k[j + 3] * dep[r * w + cc];
      }
      tmp[r * w + c] = s;
    }
  for (int64_t r = 0; r < h; ++r)
    for (int64_t c = 0; c < w; ++c) {
      double s = 0;
      for (int j = -3; j <= 3; ++j) {
        const int64_t rr = r + j;
        if (rr >= 0 && rr < h) s += k[j + 3] * tmp[rr * w + c];
      }
      blur[r * w + c] = s;
    }
  const double decay = std::log(0.5) / 5.0;
  // Squared distances are integers and few distinct ones occur: memoise the importance weight
  // (same sqrt-then-exp operations as the reference, so values are identical).
  std::vector<double> weight_of_d2;
  double err_w_fg = 0, err_w_bg = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (f.g[i]) {
      err_w_fg += (blur[i] < err[i]) ? blur[i] : err[i];
    } else {
      const auto d2 = static_cast<size_t>(dist2[i]);
      if (d2 >= weight_of_d2.size()) weight_of_d2.resize(d2 + 1, -1.0);
      double& wgt = weight_of_d2[d2];
      if (wgt < 0) wgt = 2.0 - std::exp(decay * std::sqrt(dist2[i]));
      err_w_bg += err[i] * wgt;
    }
  }
  const double tp_w = double(n_fg) - err_w_fg;
  const double recall = 1.0 - err_w_fg / n_fg;
  const double precision = tp_w / (tp_w + err_w_bg + kEps);
  return 2.0 * recall * precision / (recall + precision + kEps);
}

// ------------------------------------------------------------------------------------------ the frame
std::tuple<at::Tensor, at::Tensor> sunseg_frame(const at::Tensor& pred_in, const at::Tensor& gt_in) {
  TORCH_CHECK(pred_in.device().is_cpu() && gt_in.device().is_cpu(), "sunseg_frame: pred and gt must be CPU tensors");
  TORCH_CHECK(pred_in.dim() == 2, "sunseg_frame: pred must be (H, W), got ", pred_in.sizes());
  TORCH_CHECK(gt_in.sizes() == pred_in.sizes(), "sunseg_frame: gt must have pred's shape ", pred_in.sizes(),
              ", got ", gt_in.sizes());
  TORCH_CHECK(pred_in.numel() > 0, "sunseg_frame: pred must not be empty");
  TORCH_CHECK(pred_in.is_floating_point(), "sunseg_frame: pred must be a floating-point tensor, got ",
              pred_in.scalar_type());
  const at::Tensor pred = pred_in.to(at::kDouble).contiguous();
  const at::Tensor gt = gt_in.to(at::kByte).contiguous();
  Frame f{pred.data_ptr<double>(), gt.data_ptr<uint8_t>(), pred.size(0), pred.size(1), pred.numel()};

  // The medical thresholds exactly as numpy.linspace(1, 0, 256) builds them.
  double thr[kBins];
  const double step = (0.0 - 1.0) / double(kBins - 1);
  for (int i = 0; i < kBins; ++i) thr[i] = double(i) * step + 1.0;
  thr[kBins - 1] = 0.0;

  // One pass: counts, sums, and the four histograms every curve is a cumulative sum of.
  int64_t lvl_fg[kBins] = {0}, lvl_bg[kBins] = {0}, med_fg[kBins] = {0}, med_bg[kBins] = {0};
  int64_t n_fg = 0;
  double pred_sum = 0, abs_err = 0;
  for (int64_t i = 0; i < f.n; ++i) {
    const double p = f.p[i];
    TORCH_CHECK(p >= 0.0 && p <= 1.0, "sunseg_frame: pred must hold probabilities in [0, 1], got ", p);
    const bool g = f.g[i] != 0;
    n_fg += g;
    pred_sum += p;
    abs_err += std::fabs(p - (g ? 1.0 : 0.0));
    const int level = int(p * 255.0);  // truncation, as uint8(255 * pred)
    // first index i0 with thr[i0] <= p (the thresholds descend): guess, then settle exactly
    int i0 = std::min(kBins - 1, std::max(0, int(std::ceil((1.0 - p) * (kBins - 1)))));
    while (i0 > 0 && thr[i0 - 1] <= p) --i0;
    while (i0 < kBins - 1 && thr[i0] > p) ++i0;
    if (g) {
      ++lvl_fg[level];
      ++med_fg[i0];
    } else {
      ++lvl_bg[level];
      ++med_bg[i0];
    }
  }
  const double n = double(f.n), nf = double(n_fg);

  at::Tensor curves = at::zeros({6, kBins}, at::kDouble);
  double* em = curves.data_ptr<double>();
  double* fm = em + kBins;
  double* sen = fm + kBins;
  double* spe = sen + kBins;
  double* dice = spe + kBins;
  double* iou = dice + kBins;
  double tp = 0, fp = 0, mtp = 0, mfp = 0;
  for (int i = 0; i < kBins; ++i) {
    tp += double(lvl_fg[kBins - 1 - i]);
    fp += double(lvl_bg[kBins - 1 - i]);
    em[i] = enhanced_sum(tp, fp, nf, n) / (n - 1 + kEps);
    const double predicted = tp + fp;
    fm[i] = f_beta(tp / (predicted == 0 ? 1.0 : predicted), tp / std::max(nf, 1.0), 0.3);
    mtp += double(med_fg[i]);
    mfp += double(med_bg[i]);
    if (mtp > 0) {
      const double n_pred = mtp + mfp, fn = nf - mtp, tn = n - n_pred - fn;
      sen[i] = mtp / nf;
      spe[i] = tn / (tn + mfp);
      dice[i] = 2.0 * mtp / (nf + n_pred);
      iou[i] = mtp / (fn + n_pred);
    }
  }

  // Adaptive threshold 2 * mean, capped at 1.
  const double adaptive = std::min(2.0 * pred_sum / n, 1.0);
  double atp = 0, afp = 0;
  for (int64_t i = 0; i < f.n; ++i)
    if (f.p[i] >= adaptive) (f.g[i] ? atp : afp) += 1.0;
  const double adp_em = enhanced_sum(atp, afp, nf, n) / (n - 1 + kEps);
  const double adp_fm = atp == 0 ? 0.0 : f_beta(atp / (atp + afp), atp / nf, 0.3);

  at::Tensor scalars = at::empty({5}, at::kDouble);
  double* s = scalars.data_ptr<double>();
  s[0] = s_measure(f, n_fg, pred_sum);
  s[1] = weighted_f_measure(f, n_fg);
  s[2] = abs_err / n;
  s[3] = adp_em;
  s[4] = adp_fm;
  return {scalars, curves};
}

}  // namespace

void dtc_bind_metrics(pybind11::module_& m) {
  m.def("sunseg_frame", &sunseg_frame, pybind11::arg("pred"), pybind11::arg("gt"),
        "SUN-SEG metrics of one frame. pred: (H, W) float CPU tensor in [0, 1]; gt: (H, W) uint8/bool mask.\n"
        "Returns (scalars[5] = Smeasure, wFmeasure, MAE, adpEm, adpFm; curves[6, 256] = Em, Fm, Sen, Spe, "
        "Dice, IoU), float64, curve entry i at threshold (255 - i) / 255.");
}
