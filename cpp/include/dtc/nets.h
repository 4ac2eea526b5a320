#pragma once
// dtc's segmentation networks as LibTorch modules (torch::nn). Each maps an image batch to the triple
// the method needs (docs/method.md §3):
//
//   forward(x [N, C_in, H, W]) -> (logits [N, 1, H, W], local [N, C_l, H, W], global [N, C_g, h_g, w_g])
//
//   logits  the segmentation logits at input resolution (apply sigmoid for probabilities);
//   local   a late, full-resolution decoder feature map (the "local prototype" tap);
//   global  the bottleneck feature map (the "global prototype" tap).
//
// Every net also splits into its encoder and decoder, for methods that read or replace encoder features
// (the clip teacher of docs/v2i.md):
//
//   features(x) -> [f_0, ..., f_{L-1}]  the encoder levels, shallow to deep; f_l [N, C_l, H/s_l, W/s_l]
//                                       with s_l = feature_strides()[l], C_l = feature_channels[l]
//   decode(x, f) -> the triple above, computed from the given levels (x supplies the input size, and
//                   the image skip of the real-time student); forward(x) == decode(x, features(x))
//
// H and W must be multiples of the net's `kMultiple` (16, or 32 for the ResNet-encoder U-Net++); other
// sizes raise ValueError (c10::ValueError) naming the expected multiple. All modules follow the dtype,
// device and memory format (channels-last) of their parameters; forward and backward run in C++.
//
// Parameter names follow PyTorch's habits (`conv1.weight`, `bn1.running_mean`, `layer1.0.conv2.weight`),
// so state dicts read naturally and the U-Net++ encoder matches torchvision's ResNet-34 key for key under
// the prefix `encoder.`.

#include <torch/nn/module.h>
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/pimpl.h>

#include <array>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

namespace dtc::nets {

using Triple = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// Inference path of Conv → BatchNorm (→ ReLU): in eval mode, when no gradient to the parameters is
// wanted, the batch norm is folded into the convolution (w·γ/σ, β − μ·γ/σ with σ = √(var + ε)) and the
// ReLU applied in place, one convolution instead of three ops and two temporaries. The folded tensors
// are cached and rebuilt whenever a parameter or statistic changes (new storage, or an in-place write:
// the tensors' version counters), so load_state_dict, .to() and optimiser steps are always seen.
// Training mode runs the unfused ops unchanged.
struct FoldedConvBn {
  at::Tensor forward(torch::nn::Conv2d& conv, torch::nn::BatchNorm2d& bn, const at::Tensor& x, bool relu);
  // Whether forward would take the folded path for these modules now (eval mode, no parameter gradient).
  static bool applies(const torch::nn::Conv2d& conv, const torch::nn::BatchNorm2d& bn);

 private:
  at::Tensor weight_, bias_;
  // weight_ reordered into oneDNN's blocked layout, per input shape and intra-op thread count: oneDNN
  // picks its kernel, and with it the weight layout, by both, and a weight packed for another count is
  // reordered again on every call (2-3x slower). A stream keeps one frame size and switches between a
  // few thread counts, so this holds a handful; empty where oneDNN's fused convolution is unavailable.
  std::map<std::vector<int64_t>, at::Tensor> packed_;
  std::array<const void*, 5> storage_{};
  std::array<int64_t, 5> versions_{};
  c10::ScalarType dtype_ = c10::ScalarType::Undefined;
  c10::MemoryFormat format_ = c10::MemoryFormat::Contiguous;
  std::mutex mu_;
};

// Conv(k×k, no bias) → BatchNorm → optional ReLU. `groups == in_channels` makes it depthwise.
// Children: conv, bn.
struct ConvBnActImpl : torch::nn::Module {
  ConvBnActImpl(int64_t in_channels, int64_t out_channels, int64_t kernel, int64_t stride = 1, int64_t groups = 1,
                bool relu = true);
  at::Tensor forward(const at::Tensor& x);
  torch::nn::Conv2d conv{nullptr};
  torch::nn::BatchNorm2d bn{nullptr};
  bool relu;
  std::shared_ptr<FoldedConvBn> folded = std::make_shared<FoldedConvBn>();
};
TORCH_MODULE(ConvBnAct);

// Two 3×3 Conv-BN-ReLU. Children: conv1, bn1, conv2, bn2.
struct DoubleConvImpl : torch::nn::Module {
  DoubleConvImpl(int64_t in_channels, int64_t out_channels, int64_t mid_channels = -1);
  at::Tensor forward(const at::Tensor& x);
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr};
  torch::nn::BatchNorm2d bn1{nullptr}, bn2{nullptr};
  std::shared_ptr<FoldedConvBn> folded1 = std::make_shared<FoldedConvBn>(), folded2 = std::make_shared<FoldedConvBn>();
};
TORCH_MODULE(DoubleConv);

// ------------------------------------------------------------------------------------------ U-Net
// The classic U-Net of docs/method.md §3. Widths base·(1, 2, 4, 8, 16) (64-128-256-512-1024 by default); each
// level two 3×3 Conv-BN-ReLU; 2×2 max pooling; decoder: nearest ×2 upsampling then a 3×3 Conv-BN-ReLU
// halving the channels, concatenation with the skip, two 3×3 Conv-BN-ReLU; 1×1 head.
//   local  = last decoder map   [N, base,    H,    W]
//   global = bottleneck         [N, 16·base, H/16, W/16]
// Children: enc0..enc4 (DoubleConv), up3..up0 (ConvBnAct), dec3..dec0 (DoubleConv), head (Conv2d 1×1).
struct UNetImpl : torch::nn::Module {
  static constexpr int64_t kMultiple = 16;
  explicit UNetImpl(int64_t in_channels = 3, int64_t base = 64);
  Triple forward(const at::Tensor& x);
  // enc0..enc4 at strides 1, 2, 4, 8, 16.
  std::vector<at::Tensor> features(const at::Tensor& x);
  Triple decode(const at::Tensor& x, const std::vector<at::Tensor>& features);
  static std::vector<int64_t> feature_strides() { return {1, 2, 4, 8, 16}; }
  int64_t in_channels, base;
  std::vector<int64_t> feature_channels;
  std::vector<DoubleConv> enc, dec;  // enc[0..4], dec[0..3] (dec[i] produces level i)
  std::vector<ConvBnAct> up;         // up[i]: level i+1 → level i channels
  torch::nn::Conv2d head{nullptr};
};
TORCH_MODULE(UNet);

// ---------------------------------------------------------------------------------------- U-Net++
// torchvision-style ResNet BasicBlock. Children: conv1, bn1, conv2, bn2, [downsample = Sequential(conv, bn)].
struct BasicBlockImpl : torch::nn::Module {
  BasicBlockImpl(int64_t in_channels, int64_t out_channels, int64_t stride);
  at::Tensor forward(const at::Tensor& x);
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr};
  torch::nn::BatchNorm2d bn1{nullptr}, bn2{nullptr};
  torch::nn::Sequential downsample{nullptr};
  std::shared_ptr<FoldedConvBn> folded1 = std::make_shared<FoldedConvBn>(), folded2 = std::make_shared<FoldedConvBn>();
};
TORCH_MODULE(BasicBlock);

// ResNet-34 layout (blocks 3-4-6-3) with widths width·(1, 1, 2, 4, 8); the classifier is omitted.
// Children match torchvision.models.resnet34: conv1, bn1, layer1..layer4.
// features(x) returns the five encoder maps f0..f4 at strides 2, 4, 8, 16, 32.
struct ResNetEncoderImpl : torch::nn::Module {
  explicit ResNetEncoderImpl(int64_t in_channels = 3, int64_t width = 64);
  std::vector<at::Tensor> features(const at::Tensor& x);
  std::vector<int64_t> channels;  // of f0..f4
  torch::nn::Conv2d conv1{nullptr};
  torch::nn::BatchNorm2d bn1{nullptr};
  torch::nn::Sequential layer1{nullptr}, layer2{nullptr}, layer3{nullptr}, layer4{nullptr};
};
TORCH_MODULE(ResNetEncoder);

// U-Net++ (nested dense skip pathways) on the ResNet-34-style encoder. Node X(i,j) (level i at stride
// 2^(i+1), j = 1..4-i) = DoubleConv(cat[f_i, X(i,1..j-1), up2(X(i+1,j-1))]) with decoder_width·2^i
// channels. A full-resolution stage `final` (DoubleConv on up2(X(0,4)), decoder_width/2 channels) gives
// the local tap. Deep supervision: heads 1..3 are 1×1 convs on X(0,1..3) (bilinearly upsampled ×2),
// head 4 a 1×1 conv on `final`; logits = Σ_j softmax(head_weights)_j · head_j.
//   local  = final                 [N, decoder_width/2, H,    W]
//   global = encoder f4 (bottleneck) [N, 8·width,        H/32, W/32]
// Children: encoder, node_{i}_{j}, final, head1..head4; parameter head_weights [4].
struct UNetPlusPlusImpl : torch::nn::Module {
  static constexpr int64_t kMultiple = 32;
  explicit UNetPlusPlusImpl(int64_t in_channels = 3, int64_t width = 64, int64_t decoder_width = 32);
  Triple forward(const at::Tensor& x);
  // The triple plus the four deep-supervision head logits [N, 1, H, W] (for a per-head loss).
  std::tuple<at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>> forward_with_heads(const at::Tensor& x);
  // The encoder maps f0..f4 at strides 2, 4, 8, 16, 32.
  std::vector<at::Tensor> features(const at::Tensor& x);
  Triple decode(const at::Tensor& x, const std::vector<at::Tensor>& features);
  std::tuple<at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>> decode_with_heads(
      const at::Tensor& x, const std::vector<at::Tensor>& features);
  static std::vector<int64_t> feature_strides() { return {2, 4, 8, 16, 32}; }
  int64_t in_channels, width, decoder_width;
  std::vector<int64_t> feature_channels;
  ResNetEncoder encoder{nullptr};
  std::vector<std::vector<DoubleConv>> nodes;  // nodes[i][j-1] = X(i,j)
  DoubleConv final_block{nullptr};
  std::vector<torch::nn::Conv2d> heads;
  at::Tensor head_weights;
};
TORCH_MODULE(UNetPlusPlus);

// -------------------------------------------------------------------------------- real-time student
// MobileNetV2 inverted residual (expand > 1: 1×1 expand → 3×3 depthwise → 1×1 linear project, residual
// when shape is kept) or, with expand == 1, a depthwise-separable block (3×3 depthwise → 1×1, both
// Conv-BN-ReLU). Children: expand (optional), depthwise, project.
struct SeparableBlockImpl : torch::nn::Module {
  SeparableBlockImpl(int64_t in_channels, int64_t out_channels, int64_t stride = 1, int64_t expand = 1);
  at::Tensor forward(const at::Tensor& x);
  ConvBnAct expand{nullptr}, depthwise{nullptr}, project{nullptr};
  bool residual;
};
TORCH_MODULE(SeparableBlock);

// The light student for CPU inference: a U-shaped net of depthwise-separable blocks with widths
// base·(1, 2, 3, 6, 8): stem (3×3 stride 2) → stages at strides 4, 8, 16 (inverted residuals, expand 4)
// → bottleneck at stride 16 gated by its global-average-pooled context (squeeze-excitation; no
// BatchNorm on the 1×1 map, so batch size 1 trains) → decoder of nearest ×2 upsampling, skip
// concatenation (the input image at full resolution) and separable blocks → 1×1 head.
//   local  = full-resolution decoder map [N, base,   H,    W]
//   global = bottleneck                  [N, 8·base, H/16, W/16]
// Children: stem, stage1..stage3 (Sequential), bottleneck (Sequential), context (Conv2d 1×1 with bias),
// dec3..dec0 (SeparableBlock), head.
struct RealtimeStudentImpl : torch::nn::Module {
  static constexpr int64_t kMultiple = 16;
  explicit RealtimeStudentImpl(int64_t in_channels = 3, int64_t base = 16);
  Triple forward(const at::Tensor& x);
  // stem, stage1, stage2 and the context-gated bottleneck, at strides 2, 4, 8, 16.
  std::vector<at::Tensor> features(const at::Tensor& x);
  Triple decode(const at::Tensor& x, const std::vector<at::Tensor>& features);
  static std::vector<int64_t> feature_strides() { return {2, 4, 8, 16}; }
  int64_t in_channels, base;
  std::vector<int64_t> feature_channels;
  ConvBnAct stem{nullptr};
  torch::nn::Conv2d context{nullptr};
  torch::nn::Sequential stage1{nullptr}, stage2{nullptr}, stage3{nullptr}, bottleneck{nullptr};
  std::vector<SeparableBlock> dec;  // dec[i] produces the map at stride 2^i
  torch::nn::Conv2d head{nullptr};
};
TORCH_MODULE(RealtimeStudent);

}  // namespace dtc::nets
