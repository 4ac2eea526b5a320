// dtc::msda_st: argument checks and shape bookkeeping shared by the CPU and CUDA kernels.
#pragma once
#include <ATen/ATen.h>

#include <vector>

namespace dtc::ops::msda {

struct Geometry {
  int64_t B, S, heads, D, Q, M, K;
  std::vector<int64_t> shapes;  // h_0, w_0, ...
  std::vector<int64_t> starts;  // offset of map m in S
};

// value [B, S, H_a, D], spatial_shapes [h_0, w_0, ...] (M maps), sampling_locations [B, Q, H_a, M, K, 2],
// attention_weights [B, Q, H_a, M, K]: one floating dtype (float32/float64) on one device.
Geometry check(const at::Tensor& value, at::IntArrayRef spatial_shapes, const at::Tensor& sampling_locations,
               const at::Tensor& attention_weights);

}  // namespace dtc::ops::msda
