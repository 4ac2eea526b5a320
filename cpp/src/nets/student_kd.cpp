// The XDim-KD 3-D student (architecture and shapes in cpp/include/dtc/student_kd.h).
#include "dtc/student_kd.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <string>

namespace dtc::nets {
namespace {

namespace nn = torch::nn;

// (kz, k, k) kernel, same-size padding with the given in-plane dilation.
nn::Conv3d conv3d(int64_t in, int64_t out, int64_t kz, int64_t k, int64_t dilation = 1) {
  return nn::Conv3d(nn::Conv3dOptions(in, out, {kz, k, k})
                        .padding({kz / 2, dilation * (k / 2), dilation * (k / 2)})
                        .dilation({1, dilation, dilation})
                        .bias(true));
}

at::Tensor pool(const at::Tensor& x) { return at::max_pool3d(x, {1, 3, 3}, {1, 2, 2}, {0, 1, 1}); }

at::Tensor up_to(const at::Tensor& x, const at::Tensor& like) {
  return at::upsample_nearest3d(x, {like.size(2), like.size(3), like.size(4)}, c10::nullopt, c10::nullopt, c10::nullopt);
}

at::Tensor avg_down(at::Tensor x, int times) {
  for (int i = 0; i < times; ++i) x = at::avg_pool3d(x, {1, 2, 2}, {1, 2, 2});
  return x;
}

at::Tensor run(std::vector<nn::Conv3d>& convs, at::Tensor x) {
  for (auto& c : convs) x = at::relu(c->forward(x));
  return x;
}

}  // namespace

StudentKDImpl::StudentKDImpl(int64_t in_channels_, int64_t base_, int64_t kd_channels_)
    : in_channels(in_channels_), base(base_), kd_channels(kd_channels_) {
  TORCH_CHECK_VALUE(in_channels > 0 && base > 0 && kd_channels > 0,
                    "StudentKD: in_channels, base and kd_channels must be positive, got ", in_channels, ", ", base, ", ",
                    kd_channels);
  const int64_t b = base;
  auto add = [this](const std::string& name, nn::Conv3d c) { return register_module(name, c); };
  e1 = {add("e1_0", conv3d(in_channels, b, 1, 7)), add("e1_1", conv3d(b, b, 1, 3))};
  e2 = {add("e2_0", conv3d(b, 2 * b, 1, 3)), add("e2_1", conv3d(2 * b, 2 * b, 1, 3))};
  e3 = {add("e3_0", conv3d(2 * b, 4 * b, 1, 3)), add("e3_1", conv3d(4 * b, 4 * b, 1, 3))};
  e4 = {add("e4_0", conv3d(4 * b, 4 * b, 3, 3, 2)), add("e4_1", conv3d(4 * b, 4 * b, 3, 3, 2)),
        add("e4_2", conv3d(4 * b, 4 * b, 3, 3, 2))};
  d3 = {add("d3_0", conv3d(8 * b, 4 * b, 1, 3)), add("d3_1", conv3d(4 * b, 4 * b, 1, 3))};
  d2 = {add("d2_0", conv3d(6 * b, 2 * b, 1, 3)), add("d2_1", conv3d(2 * b, 2 * b, 1, 3))};
  d1 = add("d1_0", conv3d(3 * b, 2 * b, 1, 3));
  logit = add("logit", conv3d(2 * b, 1, 1, 3));
  kd1 = add("kd_0", nn::Conv3d(nn::Conv3dOptions(12 * b, 12 * b, 1).bias(true)));
  kd2 = add("kd_1", nn::Conv3d(nn::Conv3dOptions(12 * b, kd_channels, 1).bias(true)));
  dropout = register_module("dropout", nn::Dropout(nn::DropoutOptions(0.5)));
}

std::tuple<at::Tensor, at::Tensor> StudentKDImpl::forward(const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.defined() && x.dim() == 5 && x.size(1) == in_channels, "StudentKD: x must have shape [B, ",
                    in_channels, ", Z, H, W], got ", x.defined() ? x.sizes() : at::IntArrayRef{});
  TORCH_CHECK_VALUE(x.size(0) > 0 && x.size(2) > 0 && x.size(3) > 0 && x.size(4) > 0 && x.size(3) % kMultiple == 0 &&
                        x.size(4) % kMultiple == 0,
                    "StudentKD: Z must be positive and H, W positive multiples of ", kMultiple,
                    " (three in-plane poolings), got ", x.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), "StudentKD: x must be floating point, got ", x.scalar_type());
  const at::Tensor f1 = run(e1, x);
  const at::Tensor f2 = run(e2, pool(f1));
  const at::Tensor f3 = run(e3, pool(f2));
  const at::Tensor f4 = run(e4, pool(f3));
  const at::Tensor g3 = run(d3, at::cat({up_to(f4, f3), f3}, 1));
  const at::Tensor g2 = run(d2, at::cat({up_to(g3, f2), f2}, 1));
  const at::Tensor x7 = at::relu(d1->forward(at::cat({up_to(g2, f1), f1}, 1)));
  const at::Tensor logits = logit->forward(x7).squeeze(1);
  at::Tensor kd = at::cat({f4, avg_down(g3, 1), avg_down(g2, 2), avg_down(x7, 3)}, 1);
  kd = kd2->forward(at::relu(kd1->forward(dropout->forward(kd))));
  return {logits, kd};
}

}  // namespace dtc::nets
