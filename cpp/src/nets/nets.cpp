// The three segmentation networks (see cpp/include/dtc/nets.h for the architectures and taps).
#include "dtc/nets.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <string>

namespace dtc::nets {
namespace {

namespace nn = torch::nn;

nn::Conv2d conv(int64_t in, int64_t out, int64_t kernel, int64_t stride = 1, int64_t groups = 1, bool bias = false) {
  return nn::Conv2d(
      nn::Conv2dOptions(in, out, kernel).stride(stride).padding(kernel / 2).groups(groups).bias(bias));
}

// Shape checks shared by every net: the message names the net, the argument and the expectation.
void check_input(const char* net, const at::Tensor& x, int64_t in_channels, int64_t multiple) {
  TORCH_CHECK_VALUE(x.defined() && x.dim() == 4, net, ": x must have shape [N, ", in_channels,
                    ", H, W], got ", x.defined() ? x.sizes() : at::IntArrayRef{});
  TORCH_CHECK_VALUE(x.size(1) == in_channels, net, ": x must have ", in_channels,
                    " channels (shape [N, C, H, W]), got shape ", x.sizes());
  TORCH_CHECK_VALUE(x.size(2) > 0 && x.size(3) > 0 && x.size(2) % multiple == 0 && x.size(3) % multiple == 0, net,
                    ": H and W must be positive multiples of ", multiple, " (the encoder downsamples by ", multiple,
                    "), got H=", x.size(2), ", W=", x.size(3));
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), net, ": x must be a floating-point tensor, got ",
                   x.scalar_type());
}

// decode() takes features a caller may have replaced (the clip teacher's enhanced levels): the message
// names the level and the shape it must keep.
void check_features(const char* net, const at::Tensor& x, const std::vector<at::Tensor>& f,
                    const std::vector<int64_t>& strides, const std::vector<int64_t>& channels) {
  TORCH_CHECK_VALUE(f.size() == strides.size(), net, ".decode: features must hold the ", strides.size(),
                    " encoder levels that features(x) returns, got ", f.size());
  for (size_t l = 0; l < f.size(); ++l) {
    const std::vector<int64_t> expected = {x.size(0), channels[l], x.size(2) / strides[l], x.size(3) / strides[l]};
    TORCH_CHECK_VALUE(f[l].defined() && f[l].sizes() == at::IntArrayRef(expected), net, ".decode: features[", l,
                      "] (stride ", strides[l], ") must have shape ", at::IntArrayRef(expected), ", got ",
                      f[l].defined() ? f[l].sizes() : at::IntArrayRef{});
    TORCH_CHECK_TYPE(f[l].device() == x.device() && at::isFloatingType(f[l].scalar_type()), net, ".decode: features[",
                     l, "] must be floating point on x's device ", x.device(), ", got ", f[l].scalar_type(), " on ",
                     f[l].device());
  }
}

at::Tensor upsample2(const at::Tensor& x) { return at::upsample_nearest2d(x, {2 * x.size(2), 2 * x.size(3)}); }

bool needs_grad(const at::Tensor& t) { return at::GradMode::is_enabled() && t.requires_grad(); }

// A 1x1 convolution with bias (the heads). On channels-last CPU activations at inference it is one matrix
// product over the pixels, [N*H*W, C_in] x [C_in, C_out]: the generic convolution took about twice as long
// for the light student's one-channel head at 128x224 (a path oneDNN does not block for). Elsewhere the
// module's own forward.
at::Tensor pointwise_conv(nn::Conv2d& conv, const at::Tensor& x) {
  const auto& o = conv->options;
  const bool direct = x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 4 &&
                      x.is_contiguous(at::MemoryFormat::ChannelsLast) && conv->bias.defined() &&
                      conv->weight.scalar_type() == at::kFloat && (*o.kernel_size())[0] == 1 &&
                      (*o.kernel_size())[1] == 1 && (*o.stride())[0] == 1 && (*o.stride())[1] == 1 && o.groups() == 1 &&
                      !needs_grad(x) && !needs_grad(conv->weight) && !needs_grad(conv->bias);
  if (!direct) return conv->forward(x);
  const int64_t n = x.size(0), c_in = x.size(1), h = x.size(2), w = x.size(3), c_out = conv->weight.size(0);
  const at::Tensor pixels = x.permute({0, 2, 3, 1}).reshape({n * h * w, c_in});  // a view: channels-last
  return at::addmm(conv->bias, pixels, conv->weight.reshape({c_out, c_in}).t())
      .view({n, h, w, c_out})
      .permute({0, 3, 1, 2});
}

// cat([upsample2(low), skip], 1): the decoder's step. At inference on channels-last CPU tensors it is one
// pass that writes each output pixel's channels from the two sources (about a tenth of the light
// student's time at 128x224 went to the separate upsample, cat and their two allocations); elsewhere
// (autograd, other layouts, devices) the two ATen ops. Pure copies, so both give the same bits.
at::Tensor upsample2_cat(const at::Tensor& low, const at::Tensor& skip) {
  const auto cl = at::MemoryFormat::ChannelsLast;
  const bool direct = low.device().is_cpu() && skip.device().is_cpu() && low.scalar_type() == at::kFloat &&
                      skip.scalar_type() == at::kFloat && low.dim() == 4 && skip.dim() == 4 &&
                      low.is_contiguous(cl) && skip.is_contiguous(cl) && !needs_grad(low) && !needs_grad(skip) &&
                      skip.size(0) == low.size(0) && skip.size(2) == 2 * low.size(2) && skip.size(3) == 2 * low.size(3);
  if (!direct) return at::cat({upsample2(low), skip}, 1);
  const int64_t n = low.size(0), c_low = low.size(1), c_skip = skip.size(1), h = skip.size(2), w = skip.size(3);
  const int64_t c = c_low + c_skip;
  at::Tensor out = at::empty({n, c, h, w}, low.options().memory_format(cl));
  const float* lo = low.data_ptr<float>();
  const float* sk = skip.data_ptr<float>();
  float* o = out.data_ptr<float>();
  at::parallel_for(0, n * h, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, w * c)), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / h, y = row % h;
      const float* low_row = lo + (b * (h / 2) + y / 2) * (w / 2) * c_low;
      const float* skip_row = sk + row * w * c_skip;
      float* out_row = o + row * w * c;
      for (int64_t x = 0; x < w; ++x) {
        std::memcpy(out_row + x * c, low_row + (x / 2) * c_low, sizeof(float) * c_low);
        std::memcpy(out_row + x * c + c_low, skip_row + x * c_skip, sizeof(float) * c_skip);
      }
    }
  });
  return out;
}

using ConvPointwise = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, at::IntArrayRef,
                                 at::IntArrayRef, at::IntArrayRef, int64_t, c10::string_view,
                                 c10::List<std::optional<at::Scalar>>, std::optional<c10::string_view>);
using ReorderWeight = at::Tensor(const at::Tensor&, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, int64_t,
                                 at::OptionalIntArrayRef);

template <typename Signature>
const c10::TypedOperatorHandle<Signature>* find_op(const char* name) {
  try {
    const auto handle = c10::Dispatcher::singleton().findSchema({name, ""});
    if (!handle.has_value() || !at::hasMKLDNN()) return nullptr;
    return new c10::TypedOperatorHandle<Signature>(handle->typed<Signature>());
  } catch (const c10::Error&) {
    return nullptr;
  }
}

// oneDNN's convolution with its weights reordered once into oneDNN's blocked layout and the ReLU applied
// as a post-op while the output is still in cache: the ops PyTorch's inductor emits for conv + relu on
// the CPU. They give the same bits as conv2d then relu (tests/models/test_folded_inference.py); builds
// without oneDNN keep the plain path.
const c10::TypedOperatorHandle<ConvPointwise>* conv_pointwise_op() {
  static const auto* op = find_op<ConvPointwise>("mkldnn::_convolution_pointwise");
  return op;
}

const c10::TypedOperatorHandle<ReorderWeight>* reorder_weight_op() {
  static const auto* op = find_op<ReorderWeight>("mkldnn::_reorder_convolution_weight");
  return op;
}
}  // namespace

// ------------------------------------------------------------------------------------- building blocks
bool FoldedConvBn::applies(const nn::Conv2d& conv, const nn::BatchNorm2d& bn) {
  return !conv->is_training() && !bn->is_training() && bn->options.track_running_stats() &&
         !needs_grad(conv->weight) && !needs_grad(bn->weight);
}

at::Tensor FoldedConvBn::forward(nn::Conv2d& conv, nn::BatchNorm2d& bn, const at::Tensor& x, bool relu) {
  if (!applies(conv, bn)) {
    auto y = bn->forward(conv->forward(x));
    return relu ? at::relu(y) : y;
  }
  const at::Tensor* sources[5] = {&conv->weight, &bn->weight, &bn->bias, &bn->running_mean, &bn->running_var};
  const auto format = conv->weight.suggest_memory_format();
  const auto& o = conv->options;
  const at::IntArrayRef padding = *std::get<torch::ExpandingArray<2>>(o.padding());
  const auto* conv_op = conv_pointwise_op();
  const auto* reorder_op = reorder_weight_op();
  const bool onednn = conv_op != nullptr && reorder_op != nullptr && x.device().is_cpu() &&
                      x.scalar_type() == at::kFloat && conv->weight.scalar_type() == at::kFloat &&
                      at::globalContext().userEnabledMkldnn() &&
                      // under autocast conv2d runs in the lower precision; the oneDNN ops are not on its list
                      !at::autocast::is_autocast_enabled(at::kCPU);
  // Parameters made under inference mode (a model moved to the GPU inside torch.inference_mode()) have
  // no version counter, so an in-place update of them could not be noticed: they are folded afresh.
  bool cacheable = true;
  for (const at::Tensor* source : sources) cacheable = cacheable && !source->is_inference();
  at::Tensor w, b, packed;
  {
    std::lock_guard<std::mutex> lock(mu_);
    bool fresh = cacheable && weight_.defined() && dtype_ == conv->weight.scalar_type() && format_ == format;
    for (int i = 0; i < 5 && fresh; ++i) {
      fresh = storage_[i] == sources[i]->unsafeGetTensorImpl()->storage().data() && versions_[i] == sources[i]->_version();
    }
    if (!fresh) {
      at::NoGradGuard no_grad;
      // In float64, then rounded once to the parameters' dtype.
      const at::Tensor scale =
          bn->weight.to(at::kDouble) / at::sqrt(bn->running_var.to(at::kDouble) + bn->options.eps());
      weight_ = (conv->weight.to(at::kDouble) * scale.view({-1, 1, 1, 1}))
                    .to(conv->weight.scalar_type())
                    .contiguous(format);
      bias_ = (bn->bias.to(at::kDouble) - bn->running_mean.to(at::kDouble) * scale).to(conv->weight.scalar_type());
      packed_.clear();
      for (int i = 0; i < 5; ++i) {
        storage_[i] = sources[i]->unsafeGetTensorImpl()->storage().data();
        versions_[i] = cacheable ? sources[i]->_version() : -1;
      }
      dtype_ = conv->weight.scalar_type();
      format_ = format;
    }
    if (onednn) {
      std::vector<int64_t> key = x.sizes().vec();
      key.push_back(at::get_num_threads());
      auto it = packed_.find(key);
      if (it == packed_.end()) {
        // Bounded: a training run's validation sizes or a caller cycling through shapes must not grow it.
        if (packed_.size() >= 8) packed_.clear();
        it = packed_.emplace(key, reorder_op->call(weight_, padding, *o.stride(), *o.dilation(), o.groups(), x.sizes())).first;
      }
      packed = it->second;
    }
    w = weight_;
    b = bias_;
  }
  if (onednn) {
    return conv_op->call(x, packed, b, padding, *o.stride(), *o.dilation(), o.groups(), relu ? "relu" : "none",
                         c10::List<std::optional<at::Scalar>>(), std::nullopt);
  }
  at::Tensor y = at::conv2d(x, w, b, *o.stride(), padding, *o.dilation(), o.groups());
  return relu ? at::relu_(y) : y;
}

ConvBnActImpl::ConvBnActImpl(int64_t in_channels, int64_t out_channels, int64_t kernel, int64_t stride,
                             int64_t groups, bool relu_)
    : relu(relu_) {
  conv = register_module("conv", dtc::nets::conv(in_channels, out_channels, kernel, stride, groups));
  bn = register_module("bn", nn::BatchNorm2d(out_channels));
}

at::Tensor ConvBnActImpl::forward(const at::Tensor& x) { return folded->forward(conv, bn, x, relu); }

DoubleConvImpl::DoubleConvImpl(int64_t in_channels, int64_t out_channels, int64_t mid_channels) {
  if (mid_channels < 0) mid_channels = out_channels;
  conv1 = register_module("conv1", conv(in_channels, mid_channels, 3));
  bn1 = register_module("bn1", nn::BatchNorm2d(mid_channels));
  conv2 = register_module("conv2", conv(mid_channels, out_channels, 3));
  bn2 = register_module("bn2", nn::BatchNorm2d(out_channels));
}

at::Tensor DoubleConvImpl::forward(const at::Tensor& x) {
  return folded2->forward(conv2, bn2, folded1->forward(conv1, bn1, x, true), true);
}

// ------------------------------------------------------------------------------------------ U-Net
UNetImpl::UNetImpl(int64_t in_channels_, int64_t base_) : in_channels(in_channels_), base(base_) {
  TORCH_CHECK_VALUE(in_channels > 0, "UNet: in_channels must be positive, got ", in_channels);
  TORCH_CHECK_VALUE(base > 0, "UNet: base (the first level's width) must be positive, got ", base);
  int64_t prev = in_channels;
  for (int64_t i = 0; i < 5; ++i) {
    const int64_t width = base << i;
    enc.push_back(register_module("enc" + std::to_string(i), DoubleConv(prev, width)));
    feature_channels.push_back(width);
    prev = width;
  }
  up.resize(4, nullptr);
  dec.resize(4, nullptr);
  for (int64_t i = 3; i >= 0; --i) {
    const int64_t width = base << i;
    up[i] = register_module("up" + std::to_string(i), ConvBnAct(2 * width, width, 3));
    dec[i] = register_module("dec" + std::to_string(i), DoubleConv(2 * width, width));
  }
  head = register_module("head", conv(base, 1, 1, 1, 1, /*bias=*/true));
}

std::vector<at::Tensor> UNetImpl::features(const at::Tensor& x) {
  check_input("UNet", x, in_channels, kMultiple);
  std::vector<at::Tensor> skips;
  at::Tensor y = x;
  for (int64_t i = 0; i < 5; ++i) {
    if (i > 0) y = at::max_pool2d(y, {2, 2});
    y = enc[i]->forward(y);
    skips.push_back(y);
  }
  return skips;
}

Triple UNetImpl::decode(const at::Tensor& x, const std::vector<at::Tensor>& skips) {
  check_input("UNet", x, in_channels, kMultiple);
  check_features("UNet", x, skips, feature_strides(), feature_channels);
  at::Tensor y = skips[4];
  for (int64_t i = 3; i >= 0; --i) {
    y = up[i]->forward(upsample2(y));
    y = dec[i]->forward(at::cat({skips[i], y}, 1));
  }
  return {head->forward(y), y, skips[4]};
}

Triple UNetImpl::forward(const at::Tensor& x) { return decode(x, features(x)); }

// ---------------------------------------------------------------------------------------- U-Net++
BasicBlockImpl::BasicBlockImpl(int64_t in_channels, int64_t out_channels, int64_t stride) {
  conv1 = register_module("conv1", conv(in_channels, out_channels, 3, stride));
  bn1 = register_module("bn1", nn::BatchNorm2d(out_channels));
  conv2 = register_module("conv2", conv(out_channels, out_channels, 3));
  bn2 = register_module("bn2", nn::BatchNorm2d(out_channels));
  if (stride != 1 || in_channels != out_channels) {
    downsample = register_module(
        "downsample", nn::Sequential(conv(in_channels, out_channels, 1, stride), nn::BatchNorm2d(out_channels)));
  }
}

at::Tensor BasicBlockImpl::forward(const at::Tensor& x) {
  auto y = folded1->forward(conv1, bn1, x, true);
  y = folded2->forward(conv2, bn2, y, false);
  return at::relu(y + (downsample ? downsample->forward(x) : x));
}

ResNetEncoderImpl::ResNetEncoderImpl(int64_t in_channels, int64_t width) {
  TORCH_CHECK_VALUE(width > 0, "UNetPlusPlus: width (the encoder's first width) must be positive, got ", width);
  channels = {width, width, 2 * width, 4 * width, 8 * width};
  conv1 = register_module("conv1", nn::Conv2d(nn::Conv2dOptions(in_channels, width, 7).stride(2).padding(3).bias(false)));
  bn1 = register_module("bn1", nn::BatchNorm2d(width));
  const int64_t blocks[4] = {3, 4, 6, 3};  // ResNet-34
  nn::Sequential* layers[4] = {&layer1, &layer2, &layer3, &layer4};
  int64_t prev = width;
  for (int64_t l = 0; l < 4; ++l) {
    const int64_t out = channels[l + 1];
    nn::Sequential seq;
    for (int64_t b = 0; b < blocks[l]; ++b) {
      seq->push_back(BasicBlock(b == 0 ? prev : out, out, (b == 0 && l > 0) ? 2 : 1));
    }
    *layers[l] = register_module("layer" + std::to_string(l + 1), seq);
    prev = out;
  }
}

std::vector<at::Tensor> ResNetEncoderImpl::features(const at::Tensor& x) {
  std::vector<at::Tensor> f;
  f.push_back(at::relu(bn1->forward(conv1->forward(x))));
  f.push_back(layer1->forward(at::max_pool2d(f[0], {3, 3}, {2, 2}, {1, 1})));
  f.push_back(layer2->forward(f[1]));
  f.push_back(layer3->forward(f[2]));
  f.push_back(layer4->forward(f[3]));
  return f;
}

UNetPlusPlusImpl::UNetPlusPlusImpl(int64_t in_channels_, int64_t width_, int64_t decoder_width_)
    : in_channels(in_channels_), width(width_), decoder_width(decoder_width_) {
  TORCH_CHECK_VALUE(in_channels > 0, "UNetPlusPlus: in_channels must be positive, got ", in_channels);
  TORCH_CHECK_VALUE(decoder_width >= 2 && decoder_width % 2 == 0,
                    "UNetPlusPlus: decoder_width must be an even number >= 2, got ", decoder_width);
  encoder = register_module("encoder", ResNetEncoder(in_channels, width));
  const auto& enc = encoder->channels;
  feature_channels = enc;
  nodes.resize(4);
  for (int64_t i = 0; i < 4; ++i) {
    const int64_t out = decoder_width << i;
    for (int64_t j = 1; j <= 4 - i; ++j) {
      // cat[f_i, X(i,1..j-1), up(X(i+1,j-1))]; X(i+1,0) is the encoder map f_{i+1}.
      const int64_t below = j == 1 ? enc[i + 1] : (decoder_width << (i + 1));
      const int64_t in = enc[i] + (j - 1) * out + below;
      nodes[i].push_back(
          register_module("node_" + std::to_string(i) + "_" + std::to_string(j), DoubleConv(in, out)));
    }
  }
  final_block = register_module("final", DoubleConv(decoder_width, decoder_width / 2));
  for (int64_t j = 1; j <= 4; ++j) {
    const int64_t in = j < 4 ? decoder_width : decoder_width / 2;
    heads.push_back(register_module("head" + std::to_string(j), conv(in, 1, 1, 1, 1, /*bias=*/true)));
  }
  // Zeros: the heads start equally weighted (softmax of equal logits).
  head_weights = register_parameter("head_weights", at::zeros({4}));
}

std::vector<at::Tensor> UNetPlusPlusImpl::features(const at::Tensor& x) {
  check_input("UNetPlusPlus", x, in_channels, kMultiple);
  return encoder->features(x);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>> UNetPlusPlusImpl::forward_with_heads(
    const at::Tensor& x) {
  return decode_with_heads(x, features(x));
}

Triple UNetPlusPlusImpl::decode(const at::Tensor& x, const std::vector<at::Tensor>& f) {
  auto [logits, local, global, heads_unused] = decode_with_heads(x, f);
  return {logits, local, global};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>> UNetPlusPlusImpl::decode_with_heads(
    const at::Tensor& x, const std::vector<at::Tensor>& f) {
  check_input("UNetPlusPlus", x, in_channels, kMultiple);
  check_features("UNetPlusPlus", x, f, feature_strides(), feature_channels);
  // grid[i][j] = X(i,j); column 0 holds the encoder maps.
  std::vector<std::vector<at::Tensor>> grid(5);
  for (int64_t i = 0; i < 5; ++i) grid[i].push_back(f[i]);
  for (int64_t j = 1; j <= 4; ++j) {
    for (int64_t i = 0; i + j <= 4; ++i) {
      std::vector<at::Tensor> inputs(grid[i].begin(), grid[i].begin() + j);
      inputs.push_back(upsample2(grid[i + 1][j - 1]));
      grid[i].push_back(nodes[i][j - 1]->forward(at::cat(inputs, 1)));
    }
  }
  const at::Tensor local = final_block->forward(upsample2(grid[0][4]));
  const int64_t H = x.size(2), W = x.size(3);
  std::vector<at::Tensor> head_logits;
  for (int64_t j = 1; j <= 3; ++j) {
    head_logits.push_back(
        at::upsample_bilinear2d(heads[j - 1]->forward(grid[0][j]), {H, W}, /*align_corners=*/false));
  }
  head_logits.push_back(heads[3]->forward(local));
  const at::Tensor mix = at::softmax(head_weights, 0);
  at::Tensor logits = head_logits[0] * mix[0];
  for (int64_t j = 1; j < 4; ++j) logits = logits + head_logits[j] * mix[j];
  return {logits, local, f[4], head_logits};
}

Triple UNetPlusPlusImpl::forward(const at::Tensor& x) {
  auto [logits, local, global, heads_unused] = forward_with_heads(x);
  return {logits, local, global};
}

// -------------------------------------------------------------------------------- real-time student
SeparableBlockImpl::SeparableBlockImpl(int64_t in_channels, int64_t out_channels, int64_t stride, int64_t expand_) {
  TORCH_CHECK_VALUE(expand_ >= 1, "SeparableBlock: expand must be >= 1, got ", expand_);
  int64_t mid = in_channels;
  if (expand_ > 1) {
    mid = in_channels * expand_;
    expand = register_module("expand", ConvBnAct(in_channels, mid, 1));
  }
  depthwise = register_module("depthwise", ConvBnAct(mid, mid, 3, stride, /*groups=*/mid));
  // The inverted residual's projection is linear (MobileNetV2); the plain separable block keeps its ReLU.
  project = register_module("project", ConvBnAct(mid, out_channels, 1, 1, 1, /*relu=*/expand_ == 1));
  residual = expand_ > 1 && stride == 1 && in_channels == out_channels;
}

at::Tensor SeparableBlockImpl::forward(const at::Tensor& x) {
  at::Tensor y = expand ? expand->forward(x) : x;
  y = project->forward(depthwise->forward(y));
  return residual ? y + x : y;
}

RealtimeStudentImpl::RealtimeStudentImpl(int64_t in_channels_, int64_t base_) : in_channels(in_channels_), base(base_) {
  TORCH_CHECK_VALUE(in_channels > 0, "RealtimeStudent: in_channels must be positive, got ", in_channels);
  TORCH_CHECK_VALUE(base > 0, "RealtimeStudent: base (the stem width) must be positive, got ", base);
  const int64_t c[5] = {base, 2 * base, 3 * base, 6 * base, 8 * base};
  feature_channels = {c[0], c[1], c[2], c[4]};
  constexpr int64_t kExpand = 4;
  stem = register_module("stem", ConvBnAct(in_channels, c[0], 3, 2));
  const int64_t extra_blocks[3] = {1, 2, 2};
  nn::Sequential* stages[3] = {&stage1, &stage2, &stage3};
  for (int64_t s = 0; s < 3; ++s) {
    nn::Sequential seq;
    seq->push_back(SeparableBlock(c[s], c[s + 1], 2, 1));
    for (int64_t b = 0; b < extra_blocks[s]; ++b) seq->push_back(SeparableBlock(c[s + 1], c[s + 1], 1, kExpand));
    *stages[s] = register_module("stage" + std::to_string(s + 1), seq);
  }
  bottleneck = register_module("bottleneck", nn::Sequential(SeparableBlock(c[3], c[4], 1, kExpand),
                                                            SeparableBlock(c[4], c[4], 1, kExpand)));
  context = register_module("context", conv(c[4], c[4], 1, 1, 1, /*bias=*/true));
  dec.resize(4, nullptr);
  dec[3] = register_module("dec3", SeparableBlock(c[4] + c[2], c[2]));
  dec[2] = register_module("dec2", SeparableBlock(c[2] + c[1], c[1]));
  dec[1] = register_module("dec1", SeparableBlock(c[1] + c[0], c[0]));
  dec[0] = register_module("dec0", SeparableBlock(c[0] + in_channels, c[0]));
  head = register_module("head", conv(c[0], 1, 1, 1, 1, /*bias=*/true));
}

std::vector<at::Tensor> RealtimeStudentImpl::features(const at::Tensor& x) {
  check_input("RealtimeStudent", x, in_channels, kMultiple);
  const at::Tensor s0 = stem->forward(x);
  const at::Tensor s1 = stage1->forward(s0);
  const at::Tensor s2 = stage2->forward(s1);
  at::Tensor g = bottleneck->forward(stage3->forward(s2));
  g = g * at::sigmoid(context->forward(at::adaptive_avg_pool2d(g, {1, 1})));
  return {s0, s1, s2, g};
}

Triple RealtimeStudentImpl::forward(const at::Tensor& x) { return decode(x, features(x)); }

Triple RealtimeStudentImpl::decode(const at::Tensor& x, const std::vector<at::Tensor>& f) {
  check_input("RealtimeStudent", x, in_channels, kMultiple);
  check_features("RealtimeStudent", x, f, feature_strides(), feature_channels);
  const at::Tensor &s0 = f[0], &s1 = f[1], &s2 = f[2], &g = f[3];
  at::Tensor y = dec[3]->forward(upsample2_cat(g, s2));
  y = dec[2]->forward(upsample2_cat(y, s1));
  y = dec[1]->forward(upsample2_cat(y, s0));
  // The image itself is the full-resolution skip: cheap, and it carries the edges.
  y = dec[0]->forward(upsample2_cat(y, x.to(y.scalar_type())));
  return {pointwise_conv(head, y), y, g};
}

}  // namespace dtc::nets
