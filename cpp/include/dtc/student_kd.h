#pragma once
// The 3-D student of XDim-KD (docs/xdim.md, "The 3-D student"): an anisotropic U-Net whose only z-mixing
// is the bottleneck, plus a knowledge-distillation head on the teacher's stride-8 grid.
//
//   forward(x [B, in_channels, Z, H, W]) -> (logits [B, Z, H, W], kd [B, kd_channels, Z, H/8, W/8])
//
// Widths with base b (32 in the original code): e1 b, e2 2b, e3 4b, e4 4b, d3 4b, d2 2b, x7_1 2b.
// Every conv has a bias and is followed by ReLU except the logit conv. In-plane convs are (1, k, k);
// "pool" is MaxPool3d((1,3,3), stride (1,2,2), pad (0,1,1)); "up" is nearest interpolation.
//   e1 = conv(1,7,7) in->b, conv(1,3,3) b->b                      (Z x H x W)
//   e2 = pool, 2x conv(1,3,3) -> 2b                               (Z x H/2)
//   e3 = pool, 2x conv(1,3,3) -> 4b                               (Z x H/4)
//   e4 = pool, 3x conv(3,3,3) 4b->4b, dilation (1,2,2)            (Z x H/8; z receptive field 7)
//   d3 = conv 8b->4b, conv 4b->4b on up(e4) ++ e3
//   d2 = conv 6b->2b, conv 2b->2b on up(d3) ++ e2
//   x7_1 = conv 3b->2b on up(d2) ++ e1; logits = conv(1,3,3) 2b->1 (no ReLU)
//   kd = Conv1x1x1 12b->12b, ReLU, Conv1x1x1 12b->kd_channels on Dropout(0.5)([e4, avg2(d3), avg4(d2),
//        avg8(x7_1)]) with avg_f = AvgPool3d((1,2,2)) applied log2 f times.
// H and W must be multiples of 8; Z is free.
#include <torch/nn/module.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/pimpl.h>

#include <tuple>
#include <vector>

namespace dtc::nets {

struct StudentKDImpl : torch::nn::Module {
  static constexpr int64_t kMultiple = 8;
  StudentKDImpl(int64_t in_channels = 1, int64_t base = 32, int64_t kd_channels = 384);
  std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& x);
  int64_t in_channels, base, kd_channels;
  // Children: e1_0, e1_1, e2_0, e2_1, e3_0, e3_1, e4_0..e4_2, d3_0, d3_1, d2_0, d2_1, d1_0, logit, kd_0, kd_1
  std::vector<torch::nn::Conv3d> e1, e2, e3, e4, d3, d2;
  torch::nn::Conv3d d1{nullptr}, logit{nullptr}, kd1{nullptr}, kd2{nullptr};
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(StudentKD);

}  // namespace dtc::nets
