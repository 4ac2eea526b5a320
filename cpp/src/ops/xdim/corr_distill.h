// dtc::corr_distill_loss: shared argument checks of the CPU and CUDA kernels (docs/xdim.md).
#pragma once
#include <ATen/ATen.h>

namespace dtc::ops {

// student [M, n, Cs], teacher [M, n, Ct] (L2-normalised point features), pair [M] int64, a permutation
// of 0..M-1 (identity for the self pairs). Throws ValueError/TypeError naming the argument.
inline void corr_distill_check(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& pair,
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
  // a permutation: each slice is the partner of exactly one slice, which the backward relies on
  const at::Tensor sorted = std::get<0>(pair.sort());
  TORCH_CHECK_VALUE(sorted.equal(at::arange(pair.size(0), pair.options())),
                    "corr_distill_loss: pair must be a permutation of 0..", pair.size(0) - 1,
                    " (the partner slice of each slice)");
}

}  // namespace dtc::ops
