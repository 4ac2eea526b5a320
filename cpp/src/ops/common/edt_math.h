// The 1-D squared distance transform of Felzenszwalb & Huttenlocher (2012), shared by the weighted
// F-measure's exact EDT (cpp/src/metrics/sod_metrics.cpp, integer arithmetic, unit spacing) and the N-D
// anisotropic EDT op dtc::edt (cpp/src/ops/cpu/edt_kernel.cpp, double arithmetic, spacing^2 weights).
// Free of torch so that both callers compile it the same way.
#pragma once
#include <cstdint>

namespace dtc::ops::edt {

// d[q] = min_p weight (q - p)^2 + f[p] over sites p (f[p] >= 0; f[p] < 0 marks "no site"), with arg[q]
// the minimising p. A line without sites gets d = -1, arg = -1. The parabola intersections are kept as
// rationals num / den (den > 0) and compared by cross-multiplying, so in integer arithmetic ties are
// decided exactly; among equidistant sites the leftmost wins (scipy's choice). Scratch: v [n] sites of
// the envelope, z_num and z_den [n] its breakpoints. With T = int64_t, (f + weight q^2) * 2n must stay
// below 2^63 (the caller checks).
template <typename T>
void lower_envelope(const T* f, int64_t n, T weight, T* d, int32_t* arg, int32_t* v, T* z_num, T* z_den) {
  // Envelope: sites v[0..k]; site v[j] is the lowest parabola on (z[j], z[j+1]], z[0] = -inf, z[k+1] = +inf.
  int64_t k = -1;
  for (int64_t q = 0; q < n; ++q) {
    if (f[q] < 0) continue;
    const T fq = f[q] + weight * T(q * q);
    T num = 0, den = 1;
    while (k >= 0) {
      const int64_t p = v[k];
      num = fq - (f[p] + weight * T(p * p));
      den = T(2) * weight * T(q - p);
      if (k == 0 || num * z_den[k] > z_num[k] * den) break;  // s > z[k]
      --k;
    }
    ++k;
    v[k] = int32_t(q);
    z_num[k] = num;
    z_den[k] = den;
  }
  if (k < 0) {
    for (int64_t q = 0; q < n; ++q) {
      d[q] = -1;
      arg[q] = -1;
    }
    return;
  }
  int64_t j = 0;
  for (int64_t q = 0; q < n; ++q) {
    while (j < k && z_num[j + 1] < T(q) * z_den[j + 1]) ++j;  // z[j + 1] < q
    const int64_t p = v[j], dq = q - p;
    d[q] = weight * T(dq * dq) + f[p];
    arg[q] = int32_t(p);
  }
}

}  // namespace dtc::ops::edt
