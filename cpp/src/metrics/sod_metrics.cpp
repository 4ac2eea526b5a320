// Per-frame SUN-SEG metrics on the CPU, single-threaded: S-measure, E-measure (adaptive + 256-threshold
// curve), weighted F-measure, F-measure (adaptive + curve), MAE, and the Dice/sensitivity/specificity/IoU
// curves over thresholds linspace(1, 0, 256).
//
// Computes the same quantities as python/dtc/metrics/reference.py in double precision, in a few fused
// row-major passes, so the two agree to rounding (the tests compare them at 1e-12). Layout: pred (H, W) float64 in [0, 1], row-major contiguous;
// gt (H, W) uint8/bool, nonzero = object. Curve entry i belongs to threshold (255 - i) / 255.
#include "metrics/metrics_bindings.h"
#include "ops/common/edt_math.h"

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

// Scratch memory reused across calls on the same thread: per-frame vectors of ~1 MB would otherwise be
// fresh mmap'd pages (page faults + zeroing) on every call, a large share of the frame's cost.
struct Scratch {
  std::vector<double> err, dep, tmp;
  std::vector<int64_t> col_d2, line_d2, z_num, z_den;
  std::vector<int32_t> col_row, arg, v, last;
  // Memo of the background weight per squared distance; an entry is valid when its stamp equals the
  // current call's generation, so nothing needs clearing between calls.
  std::vector<double> weight_of_d2;
  std::vector<uint32_t> weight_stamp;
  uint32_t generation = 0;
};

Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

// ------------------------------------------------------------------------------------------ S-measure
double object_similarity(double sum, double sumsq_dev, int64_t count) {
  const double mean = sum / count;
  const double sd = count > 1 ? std::sqrt(sumsq_dev / (count - 1)) : std::numeric_limits<double>::quiet_NaN();
  return 2.0 * mean / (mean * mean + 1.0 + sd + kEps);
}

// SSIM of one quadrant from its pixel count, GT count, prediction sum, centred sum of squares of the
// prediction and centred prediction sum over its GT pixels. The GT terms are closed forms of a 0/1 map.
double ssim_from_moments(int64_t n, int64_t n_g, double sum_p, double css_p, double cs_p_on_g) {
  const double x = sum_p / n, y = double(n_g) / n;
  const double denom = n > 1 ? double(n - 1) : std::numeric_limits<double>::quiet_NaN();
  const double vx = css_p / denom;
  // sum (g - y)^2 = n_g (1 - y)^2 + (n - n_g) y^2
  const double vy = (double(n_g) * (1.0 - y) * (1.0 - y) + double(n - n_g) * y * y) / denom;
  // sum (p - x)(g - y) = sum_{g} (p - x) - y * sum (p - x), and the last sum is 0
  const double cxy = cs_p_on_g / denom;
  const double a = 4.0 * x * y * cxy;
  const double b = (x * x + y * y) * (vx + vy);
  if (a != 0) return a / (b + kEps);
  if (b == 0) return 1.0;
  return 0.0;
}

// Everything the first pass over the frame gathers.
struct FirstPass {
  int64_t n_fg = 0;
  double pred_sum = 0, abs_err = 0;
  double s_fg = 0, s_bg = 0;          // sum of p over object, sum of 1 - p over background
  double col_moment = 0, row_moment = 0;
  int64_t r_min = 0, r_max = -1, c_min = 0, c_max = -1;  // object bounding box
};

// Counts of object (tp) and background (fp) pixels with p >= threshold.
void count_at_threshold(const Frame& f, double threshold, int64_t& tp, int64_t& fp) {
  int64_t hits = 0, hits_on_object = 0;
  for (int64_t i = 0; i < f.n; ++i) {
    const int64_t hit = f.p[i] >= threshold;
    hits += hit;
    hits_on_object += hit & int64_t(f.g[i] != 0);
  }
  tp = hits_on_object;
  fp = hits - hits_on_object;
}

// S-measure with the passes it still needs after FirstPass: one for the object-term deviations and the
// quadrant sums (both need results of the first pass), one for the quadrant deviations. The first of
// them also counts the pixels at or above the adaptive threshold (tp/fp), which needs the mean too.
double s_measure_and_adaptive_counts(const Frame& f, const FirstPass& fp, double adaptive, int64_t& atp,
                                     int64_t& afp) {
  const int64_t n_fg = fp.n_fg;
  if (n_fg == 0 || n_fg == f.n) {
    count_at_threshold(f, adaptive, atp, afp);
    return n_fg == 0 ? 1.0 - fp.pred_sum / f.n : fp.pred_sum / f.n;
  }
  const int64_t h = f.h, w = f.w, n_bg = f.n - n_fg;
  const double m_fg = fp.s_fg / n_fg, m_bg = fp.s_bg / n_bg;

  // Split at the rounded centroid (half-to-even, as numpy), + 1 = size of the top-left block.
  std::fesetround(FE_TONEAREST);
  const int64_t x = int64_t(std::nearbyint(fp.col_moment / n_fg)) + 1;
  const int64_t y = int64_t(std::nearbyint(fp.row_moment / n_fg)) + 1;
  const int64_t xs = x, ys = y;  // 1 <= x <= w, 1 <= y <= h

  // Quadrants: 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right.
  double q_sum[4] = {0, 0, 0, 0};
  int64_t q_g[4] = {0, 0, 0, 0};
  double d_fg = 0, d_bg = 0;
  int64_t hits = 0, hits_on_object = 0;
  for (int64_t r = 0; r < h; ++r) {
    const double* p = f.p + r * w;
    const uint8_t* g = f.g + r * w;
    const int q0 = r < ys ? 0 : 2;
    double sums[2] = {0, 0};
    int64_t gs[2] = {0, 0};
    for (int half = 0; half < 2; ++half) {
      const int64_t c0 = half ? xs : 0, c1 = half ? w : xs;
      double s = 0, dfg = 0, dbg = 0;
      int64_t ng = 0;
      for (int64_t c = c0; c < c1; ++c) {
        const double pv = p[c];
        const int64_t hit = pv >= adaptive;
        hits += hit;
        s += pv;
        if (g[c]) {
          const double d = pv - m_fg;
          dfg += d * d;
          ++ng;
          hits_on_object += hit;
        } else {
          const double d = (1.0 - pv) - m_bg;
          dbg += d * d;
        }
      }
      sums[half] = s;
      gs[half] = ng;
      d_fg += dfg;
      d_bg += dbg;
    }
    q_sum[q0] += sums[0];
    q_sum[q0 + 1] += sums[1];
    q_g[q0] += gs[0];
    q_g[q0 + 1] += gs[1];
  }
  atp = hits_on_object;
  afp = hits - hits_on_object;
  const double u = double(n_fg) / f.n;
  const double object = u * object_similarity(fp.s_fg, d_fg, n_fg) + (1.0 - u) * object_similarity(fp.s_bg, d_bg, n_bg);

  const int64_t q_n[4] = {ys * xs, ys * (w - xs), (h - ys) * xs, (h - ys) * (w - xs)};
  double q_mean[4];
  for (int k = 0; k < 4; ++k) q_mean[k] = q_n[k] > 0 ? q_sum[k] / q_n[k] : 0.0;
  double q_css[4] = {0, 0, 0, 0}, q_cs_g[4] = {0, 0, 0, 0};
  for (int64_t r = 0; r < h; ++r) {
    const double* p = f.p + r * w;
    const uint8_t* g = f.g + r * w;
    const int q0 = r < ys ? 0 : 2;
    for (int half = 0; half < 2; ++half) {
      const int64_t c0 = half ? xs : 0, c1 = half ? w : xs;
      const double mean = q_mean[q0 + half];
      double css = 0, csg = 0;
      for (int64_t c = c0; c < c1; ++c) {
        const double d = p[c] - mean;
        css += d * d;
        csg += g[c] ? d : 0.0;
      }
      q_css[q0 + half] += css;
      q_cs_g[q0 + half] += csg;
    }
  }
  const double area = double(h * w);
  const double w1 = double(x * y) / area;
  const double w2 = double(y * (w - x)) / area;
  const double w3 = double((h - y) * x) / area;
  const double wq[4] = {w1, w2, w3, 1.0 - w1 - w2 - w3};
  double region = 0;
  for (int k = 0; k < 4; ++k)
    if (q_n[k] > 0) region += wq[k] * ssim_from_moments(q_n[k], q_g[k], q_sum[k], q_css[k], q_cs_g[k]);
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
// 1-D squared distance transform with the argmin, in exact integer arithmetic (the shared lower
// envelope of ops/common/edt_math.h with unit spacing): f holds integer squared distances, or -1 where
// there is no site. Needs (f + q^2) * 2n < 2^63: checked by the caller.
void dt1d(const int64_t* f, int64_t n, int64_t* d, int32_t* arg, int32_t* v, int64_t* z_num, int64_t* z_den) {
  dtc::ops::edt::lower_envelope<int64_t>(f, n, 1, d, arg, v, z_num, z_den);
}

// Exact Euclidean distance transform to the object fused with what weighted F needs from it: the
// pixel-dependency map `dep` (each background pixel takes the error of its nearest object pixel; object
// pixels keep their own) and the sum of background errors weighted by 2 - exp(ln(0.5)/5 * distance).
// Row-major throughout: the column pass is two sweeps over rows carrying, per column, the last object
// row seen; the row pass runs the 1-D lower-envelope transform on each contiguous row.
double edt_dependency(const Frame& f, Scratch& s) {
  const int64_t h = f.h, w = f.w, n = f.n;
  s.err.resize(n);
  s.dep.resize(n);
  s.col_d2.resize(n);
  s.col_row.resize(n);
  s.last.resize(w);
  s.line_d2.resize(w);
  s.arg.resize(w);
  s.v.resize(w);
  s.z_num.resize(w);
  s.z_den.resize(w);
  double* err = s.err.data();
  double* dep = s.dep.data();
  int64_t* col_d2 = s.col_d2.data();
  int32_t* col_row = s.col_row.data();  // nearest object row at or above; then the chosen row of the column
  int32_t* last = s.last.data();
  int64_t* line_d2 = s.line_d2.data();
  int32_t* arg = s.arg.data();

  std::fill(last, last + w, -1);
  for (int64_t r = 0; r < h; ++r) {
    const double* p = f.p + r * w;
    const uint8_t* g = f.g + r * w;
    int32_t* u = col_row + r * w;
    double* e = err + r * w;
    for (int64_t c = 0; c < w; ++c) {
      e[c] = g[c] ? 1.0 - p[c] : p[c];  // |p - g|
      if (g[c]) last[c] = int32_t(r);
      u[c] = last[c];
    }
  }
  std::fill(last, last + w, -1);
  for (int64_t r = h - 1; r >= 0; --r) {
    const uint8_t* g = f.g + r * w;
    int32_t* u = col_row + r * w;
    int64_t* d = col_d2 + r * w;
    for (int64_t c = 0; c < w; ++c) {
      if (g[c]) last[c] = int32_t(r);
      const int32_t above = u[c], below = last[c];
      // The nearer object pixel of the column; a tie goes to the upper one (the envelope's first site).
      int32_t pick;
      if (above < 0) pick = below;
      else if (below < 0) pick = above;
      else pick = (r - above <= below - r) ? above : below;
      u[c] = pick;
      d[c] = pick < 0 ? -1 : (r - pick) * (r - pick);
    }
  }

  // Squared distances are integers and repeat a lot: memoise the weight per squared distance (same
  // sqrt-then-exp as the reference, so identical values).
  const double decay = std::log(0.5) / 5.0;
  const size_t n_d2 = size_t(h - 1) * size_t(h - 1) + size_t(w - 1) * size_t(w - 1) + 1;
  if (s.weight_stamp.size() < n_d2) {
    s.weight_of_d2.resize(n_d2);
    s.weight_stamp.resize(n_d2, 0);
  }
  if (++s.generation == 0) {  // wrapped: old stamps could look current
    std::fill(s.weight_stamp.begin(), s.weight_stamp.end(), 0u);
    s.generation = 1;
  }
  const uint32_t gen = s.generation;
  double* weight_of_d2 = s.weight_of_d2.data();
  uint32_t* weight_stamp = s.weight_stamp.data();

  double err_w_bg = 0;
  for (int64_t r = 0; r < h; ++r) {
    dt1d(col_d2 + r * w, w, line_d2, arg, s.v.data(), s.z_num.data(), s.z_den.data());
    const uint8_t* g = f.g + r * w;
    const int32_t* rows = col_row + r * w;
    const double* e = err + r * w;
    double* dp = dep + r * w;
    for (int64_t c = 0; c < w; ++c) {
      if (g[c]) {
        dp[c] = e[c];
        continue;
      }
      const int32_t cc = arg[c];
      dp[c] = err[int64_t(rows[cc]) * w + cc];
      if (e[c] == 0.0) continue;  // a zero error adds nothing whatever its weight
      const auto d2 = size_t(line_d2[c]);
      if (weight_stamp[d2] != gen) {
        weight_of_d2[d2] = 2.0 - std::exp(decay * std::sqrt(double(line_d2[c])));
        weight_stamp[d2] = gen;
      }
      err_w_bg += e[c] * weight_of_d2[d2];
    }
  }
  return err_w_bg;
}

double weighted_f_measure(const Frame& f, const FirstPass& fp) {
  const int64_t n_fg = fp.n_fg;
  if (n_fg == 0) return 0.0;
  const int64_t h = f.h, w = f.w;
  Scratch& s = scratch();
  const double err_w_bg = edt_dependency(f, s);

  // 7x7 Gaussian, sigma 5, normalised (MATLAB fspecial), zero padding. The 2-D kernel is the outer
  // product of this 1-D one (up to rounding), so two 1-D passes. The blur is only compared with the
  // error on object pixels, so it is computed on the object's bounding box only.
  double k[7], ks = 0;
  for (int j = 0; j < 7; ++j) {
    const double x = j - 3;
    k[j] = std::exp(-(x * x) / 50.0);
    ks += k[j];
  }
  for (double& kj : k) kj /= ks;
  const int64_t r0 = fp.r_min, r1 = fp.r_max + 1, c0 = fp.c_min, c1 = fp.c_max + 1;
  const int64_t tr0 = std::max<int64_t>(0, r0 - 3), tr1 = std::min<int64_t>(h, r1 + 3);
  const int64_t bw = c1 - c0;
  s.tmp.resize((tr1 - tr0) * bw);
  double* tmp = s.tmp.data();
  const double* dep = s.dep.data();
  const double* err = s.err.data();
  for (int64_t r = tr0; r < tr1; ++r) {
    const double* row = dep + r * w;
    double* t = tmp + (r - tr0) * bw;
    // Columns within 3 of the image edge see zero padding; the interior loop has no tests (vectorises).
    const int64_t in0 = std::min(std::max<int64_t>(c0, 3), c1), in1 = std::max(std::min<int64_t>(c1, w - 3), in0);
    auto edge = [&](int64_t c) {
      double acc = 0;
      for (int j = -3; j <= 3; ++j) {
        const int64_t cc = c + j;
        if (cc >= 0 && cc < w) acc += k[j + 3] * row[cc];
      }
      t[c - c0] = acc;
    };
    for (int64_t c = c0; c < in0; ++c) edge(c);
    for (int64_t c = in0; c < in1; ++c)
      t[c - c0] = k[0] * row[c - 3] + k[1] * row[c - 2] + k[2] * row[c - 1] + k[3] * row[c] + k[4] * row[c + 1] +
                  k[5] * row[c + 2] + k[6] * row[c + 3];
    for (int64_t c = in1; c < c1; ++c) edge(c);
  }
  double err_w_fg = 0;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* g = f.g + r * w;
    const int64_t j0 = std::max<int64_t>(-3, tr0 - r), j1 = std::min<int64_t>(3, tr1 - 1 - r);
    for (int64_t c = c0; c < c1; ++c) {
      if (!g[c]) continue;
      const double* t = tmp + (r - tr0) * bw + (c - c0);
      double acc = 0;
      for (int64_t j = j0; j <= j1; ++j) acc += k[j + 3] * t[j * bw];
      const double e = err[r * w + c];
      err_w_fg += acc < e ? acc : e;
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
  // Exact integer distance transform: (h^2 + w^2) * 2w must stay far below 2^63.
  TORCH_CHECK(pred_in.size(0) < (int64_t(1) << 18) && pred_in.size(1) < (int64_t(1) << 18),
              "sunseg_frame: frame too large, got ", pred_in.sizes());
  const at::Tensor pred = pred_in.to(at::kDouble).contiguous();
  const at::Tensor gt = gt_in.to(at::kByte).contiguous();
  Frame f{pred.data_ptr<double>(), gt.data_ptr<uint8_t>(), pred.size(0), pred.size(1), pred.numel()};

  // The medical thresholds exactly as numpy.linspace(1, 0, 256) builds them.
  double thr[kBins];
  const double step = (0.0 - 1.0) / double(kBins - 1);
  for (int i = 0; i < kBins; ++i) thr[i] = double(i) * step + 1.0;
  thr[kBins - 1] = 0.0;

  // One pass: counts, sums, moments, bounding box, and the four histograms every curve is a cumulative
  // sum of. Histograms are indexed [level][g] so one increment serves both classes.
  int64_t lvl[kBins][2] = {}, med[kBins][2] = {};
  FirstPass fp;
  bool in_range = true;
  for (int64_t r = 0; r < f.h; ++r) {
    const double* prow = f.p + r * f.w;
    const uint8_t* grow = f.g + r * f.w;
    int64_t row_fg = 0;
    double col_moment = 0;
    int64_t c_first = -1, c_last = -1;
    for (int64_t c = 0; c < f.w; ++c) {
      const double p = prow[c];
      const bool p_ok = (p >= 0.0) & (p <= 1.0);  // also false for NaN
      in_range &= p_ok;
      const int g = grow[c] != 0;
      fp.pred_sum += p;
      // Truncation, as uint8(255 * pred). A value off [0, 1] is rejected after the loop, but it must not
      // reach the conversion before that: NaN, Inf or a huge value converted to int is undefined
      // behaviour (UBSan's float-cast-overflow), and the bins it indexes must stay in range.
      const int level = int((p_ok ? p : 0.0) * 255.0);
      // First index i0 with thr[i0] <= p (the thresholds descend). thr[255 - level] is level / 255 up to
      // rounding, so start there and settle exactly.
      // The two differ by rounding only (the thresholds are 1/255 apart), so one step at most each way.
      int i0 = kBins - 1 - level;
      i0 -= (i0 > 0) && (thr[i0 - 1] <= p);
      i0 += (i0 < kBins - 1) && (thr[i0] > p);
      ++lvl[level][g];
      ++med[i0][g];
      if (g) {
        fp.abs_err += 1.0 - p;
        fp.s_fg += p;
        col_moment += double(c);
        ++row_fg;
        if (c_first < 0) c_first = c;
        c_last = c;
      } else {
        fp.abs_err += p;
        fp.s_bg += 1.0 - p;
      }
    }
    if (row_fg) {
      fp.n_fg += row_fg;
      fp.col_moment += col_moment;
      fp.row_moment += double(r) * double(row_fg);
      if (fp.r_max < 0) {
        fp.r_min = r;
        fp.c_min = c_first;
        fp.c_max = c_last;
      }
      fp.r_max = r;
      fp.c_min = std::min(fp.c_min, c_first);
      fp.c_max = std::max(fp.c_max, c_last);
    }
  }
  if (!in_range) {
    for (int64_t i = 0; i < f.n; ++i)
      TORCH_CHECK(f.p[i] >= 0.0 && f.p[i] <= 1.0, "sunseg_frame: pred must hold probabilities in [0, 1], got ",
                  f.p[i]);
  }
  const int64_t n_fg = fp.n_fg;
  const double n = double(f.n), nf = double(n_fg);

  at::Tensor curves = at::zeros({6, kBins}, at::kDouble);
  double* em = curves.data_ptr<double>();
  double* fm = em + kBins;
  double* sen = fm + kBins;
  double* spe = sen + kBins;
  double* dice = spe + kBins;
  double* iou = dice + kBins;
  double tp = 0, fpos = 0, mtp = 0, mfp = 0;
  for (int i = 0; i < kBins; ++i) {
    tp += double(lvl[kBins - 1 - i][1]);
    fpos += double(lvl[kBins - 1 - i][0]);
    em[i] = enhanced_sum(tp, fpos, nf, n) / (n - 1 + kEps);
    const double predicted = tp + fpos;
    fm[i] = f_beta(tp / (predicted == 0 ? 1.0 : predicted), tp / std::max(nf, 1.0), 0.3);
    mtp += double(med[i][1]);
    mfp += double(med[i][0]);
    if (mtp > 0) {
      const double n_pred = mtp + mfp, fn = nf - mtp, tn = n - n_pred - fn;
      sen[i] = mtp / nf;
      spe[i] = tn / (tn + mfp);
      dice[i] = 2.0 * mtp / (nf + n_pred);
      iou[i] = mtp / (fn + n_pred);
    }
  }

  // Adaptive threshold 2 * mean, capped at 1.
  const double adaptive = std::min(2.0 * fp.pred_sum / n, 1.0);
  int64_t atp = 0, afp = 0;
  const double s_measure = s_measure_and_adaptive_counts(f, fp, adaptive, atp, afp);
  const double adp_em = enhanced_sum(double(atp), double(afp), nf, n) / (n - 1 + kEps);
  const double adp_fm = atp == 0 ? 0.0 : f_beta(double(atp) / double(atp + afp), double(atp) / nf, 0.3);

  at::Tensor scalars = at::empty({5}, at::kDouble);
  double* s = scalars.data_ptr<double>();
  s[0] = s_measure;
  s[1] = weighted_f_measure(f, fp);
  s[2] = fp.abs_err / n;
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
