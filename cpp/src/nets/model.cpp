// Model files of the C++ runtime: LibTorch's own archive (torch::serialize), read and written here.
//
// Why this format: the runtime must run the network code that trained (cpp/src/nets), not a re-traced
// copy of it. An archive of named tensors plus the network's name and constructor arguments lets the
// runtime rebuild that very module and load the weights into it, needs no compiler, TorchScript or JIT at
// export time, and is read by any LibTorch program. (The torch.export and ONNX files that `dtc export`
// also writes serve Python and other runtimes.)
#include "dtc/runtime_model.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <torch/nn/module.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>
#include <torch/utils.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>

#include "dtc/nets.h"

namespace dtc::runtime {
namespace {

constexpr const char* kFormat = "dtc-runtime-model";
constexpr int64_t kVersion = 1;

struct Net {
  std::shared_ptr<torch::nn::Module> module;
  std::function<at::Tensor(const at::Tensor&)> logits;
};

int64_t kwarg(const std::map<std::string, int64_t>& kwargs, const std::string& key, int64_t fallback) {
  auto it = kwargs.find(key);
  return it == kwargs.end() ? fallback : it->second;
}

Net build(const std::string& name, const std::map<std::string, int64_t>& kw) {
  using namespace dtc::nets;
  if (name == "student") {
    auto m = std::make_shared<RealtimeStudentImpl>(kwarg(kw, "in_channels", 3), kwarg(kw, "base", 16));
    return {m, [m](const at::Tensor& x) { return std::get<0>(m->forward(x)); }};
  }
  if (name == "unet") {
    auto m = std::make_shared<UNetImpl>(kwarg(kw, "in_channels", 3), kwarg(kw, "base", 64));
    return {m, [m](const at::Tensor& x) { return std::get<0>(m->forward(x)); }};
  }
  if (name == "unetpp") {
    auto m = std::make_shared<UNetPlusPlusImpl>(kwarg(kw, "in_channels", 3), kwarg(kw, "width", 64),
                                                kwarg(kw, "decoder_width", 32));
    return {m, [m](const at::Tensor& x) { return std::get<0>(m->forward(x)); }};
  }
  throw Error("dtc runtime: unknown network '" + name + "'; expected student, unet or unetpp");
}

std::map<std::string, at::Tensor> tensors_of(torch::nn::Module& m) {
  std::map<std::string, at::Tensor> out;
  for (const auto& p : m.named_parameters()) out[p.key()] = p.value();
  for (const auto& b : m.named_buffers()) out[b.key()] = b.value();
  return out;
}

std::string what(const std::exception& e) {
  // c10::Error carries a C++ backtrace after the message; users need the first line only.
  if (const auto* ce = dynamic_cast<const c10::Error*>(&e)) return ce->what_without_backtrace();
  return e.what();
}

template <typename T>
T read_value(torch::serialize::InputArchive& ar, const std::string& path, const std::string& key) {
  c10::IValue v;
  if (!ar.try_read(key, v)) throw Error("dtc runtime: " + path + " lacks '" + key + "' (not a complete dtc model file)");
  return v.to<T>();
}

}  // namespace

struct Model::Impl {
  Net net;
  std::string name, metadata;
  Preprocessing pre;
  c10::Device device{c10::kCPU};
  at::Tensor mean, std;  // (1, C, 1, 1) float32 on device
};

Model Model::load(const std::string& path, const std::string& device) {
  if (!std::filesystem::is_regular_file(path)) throw Error("dtc runtime: model file not found: " + path);
  c10::Device dev{c10::kCPU};
  try {
    dev = c10::Device(device);
  } catch (const std::exception&) {
    throw Error("dtc runtime: device must be cpu, cuda or cuda:N, got '" + device + "'");
  }
  if (dev.is_cuda() && !at::hasCUDA()) {
    throw Error("dtc runtime: device '" + device + "' was asked for but this build or machine has no CUDA");
  }
  torch::serialize::InputArchive ar;
  try {
    ar.load_from(path, c10::Device(c10::kCPU));
  } catch (const std::exception& e) {
    throw Error("dtc runtime: " + path + " is not a dtc model file (export one with `dtc export`): " + what(e));
  }
  auto impl = std::make_shared<Impl>();
  try {
    if (read_value<std::string>(ar, path, "dtc_format") != kFormat) {
      throw Error("dtc runtime: " + path + " is not a dtc model file (export one with `dtc export`)");
    }
    const int64_t version = read_value<int64_t>(ar, path, "dtc_version");
    if (version > kVersion) {
      throw Error("dtc runtime: " + path + " has format version " + std::to_string(version) + "; this runtime reads up to " +
                  std::to_string(kVersion));
    }
    impl->name = read_value<std::string>(ar, path, "dtc_net");
    std::map<std::string, int64_t> kwargs;
    for (const auto& e : read_value<c10::Dict<std::string, int64_t>>(ar, path, "dtc_kwargs")) kwargs[e.key()] = e.value();
    auto& p = impl->pre;
    p.in_channels = read_value<int64_t>(ar, path, "dtc_in_channels");
    p.mean = read_value<std::vector<double>>(ar, path, "dtc_mean");
    p.std = read_value<std::vector<double>>(ar, path, "dtc_std");
    p.multiple = read_value<int64_t>(ar, path, "dtc_multiple");
    const auto size = read_value<std::vector<int64_t>>(ar, path, "dtc_train_size");
    if (size.size() == 2) p.train_height = size[0], p.train_width = size[1];
    p.threshold = read_value<double>(ar, path, "dtc_threshold");
    impl->metadata = read_value<std::string>(ar, path, "dtc_metadata");
    if (static_cast<int64_t>(p.mean.size()) != p.in_channels || static_cast<int64_t>(p.std.size()) != p.in_channels) {
      throw Error("dtc runtime: " + path + ": mean/std do not have in_channels values");
    }
    impl->net = build(impl->name, kwargs);
    torch::serialize::InputArchive weights;
    if (!ar.try_read("weights", weights)) throw Error("dtc runtime: " + path + " holds no weights");
    for (auto& [name, t] : tensors_of(*impl->net.module)) {
      at::Tensor stored;
      if (!weights.try_read(name, stored, /*is_buffer=*/false)) {
        throw Error("dtc runtime: " + path + " does not match the " + impl->name + " network: it lacks '" + name + "'");
      }
      if (stored.sizes() != t.sizes()) {
        std::ostringstream msg;
        msg << "dtc runtime: " << path << " does not match the " << impl->name << " network: '" << name << "' has shape "
            << stored.sizes() << ", the network expects " << t.sizes();
        throw Error(msg.str());
      }
      torch::NoGradGuard no_grad;
      t.copy_(stored);
    }
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error("dtc runtime: " + path + " could not be loaded: " + what(e));
  }
  impl->net.module->eval();
  impl->net.module->to(dev);
  {
    // Channels-last activations run the depthwise-separable student about twice as fast on the CPU
    // (oneDNN); dtc.deploy.Segmenter does the same, so both compute alike.
    torch::NoGradGuard no_grad;
    for (auto& p : impl->net.module->parameters()) {
      if (p.dim() == 4) p.set_data(p.contiguous(at::MemoryFormat::ChannelsLast));
    }
  }
  impl->device = dev;
  const auto opts = at::TensorOptions().dtype(at::kFloat).device(dev);
  impl->mean = at::tensor(impl->pre.mean, at::TensorOptions().dtype(at::kDouble)).to(opts).view({1, -1, 1, 1});
  impl->std = at::tensor(impl->pre.std, at::TensorOptions().dtype(at::kDouble)).to(opts).view({1, -1, 1, 1});
  Model m;
  m.impl_ = std::move(impl);
  return m;
}

at::Tensor Model::probabilities(const at::Tensor& frames) const {
  const auto& p = impl_->pre;
  if (!frames.defined() || frames.dim() != 4 || frames.size(1) != p.in_channels || !at::isFloatingType(frames.scalar_type())) {
    std::ostringstream msg;
    msg << "dtc runtime: frames must be floating point shaped (N, " << p.in_channels << ", H, W), got "
        << (frames.defined() ? frames.sizes() : at::IntArrayRef{}) << (frames.defined() ? " " : "")
        << (frames.defined() ? std::string(c10::toString(frames.scalar_type())) : std::string("an undefined tensor"));
    throw Error(msg.str());
  }
  check_size(p, frames.size(2), frames.size(3));
  torch::NoGradGuard no_grad;
  // The same ops, in the same order, dtype and layout, as dtc.deploy.Segmenter: (x - mean) / std, forward, sigmoid.
  return probabilities_of_normalised(
      (frames.to(impl_->device, at::kFloat).contiguous(at::MemoryFormat::ChannelsLast) - impl_->mean) / impl_->std);
}

void Model::check_size(const Preprocessing& p, int64_t height, int64_t width) {
  if (height <= 0 || width <= 0 || height % p.multiple || width % p.multiple) {
    throw Error("dtc runtime: frame size " + std::to_string(width) + "x" + std::to_string(height) +
                " (WxH) is not a multiple of " + std::to_string(p.multiple) + " (the network downsamples by " +
                std::to_string(p.multiple) + "); pad or resize the frames");
  }
}

at::Tensor Model::probabilities_of_normalised(const at::Tensor& x) const {
  torch::NoGradGuard no_grad;
  return at::sigmoid(impl_->net.logits(x).to(at::kFloat));
}

bool Model::takes_8bit(int64_t channels) const {
  return channels == 1 || ((channels == 3 || channels == 4) && impl_->pre.in_channels == 3);
}

at::Tensor Model::probabilities_8bit(const uint8_t* pixels, int64_t height, int64_t width, int64_t channels,
                                     int64_t row_bytes, bool bgr) const {
  const auto& p = impl_->pre;
  if (pixels == nullptr || height <= 0 || width <= 0 || row_bytes < width * channels) {
    throw Error("dtc runtime: an 8-bit frame needs pixels, a positive size and row_bytes >= width * channels, got " +
                std::to_string(width) + "x" + std::to_string(height) + " (WxH), row_bytes " + std::to_string(row_bytes));
  }
  if (!takes_8bit(channels)) {
    throw Error("dtc runtime: the network takes " + std::to_string(p.in_channels) + " channel(s); probabilities_8bit " +
                "takes grey frames, or BGR(A)/RGB(A) frames for a 3-channel network, got " + std::to_string(channels) +
                " channel(s)");
  }
  check_size(p, height, width);
  const int64_t c_in = p.in_channels;
  // Float32 constants rounded exactly as the tensor path rounds them (mean and std held as float32), and
  // the same two IEEE operations per value, (v / 255 - mean) / std: the same bits as probabilities().
  std::vector<float> mean(c_in), stdev(c_in);
  for (int64_t c = 0; c < c_in; ++c) mean[c] = static_cast<float>(p.mean[c]), stdev[c] = static_cast<float>(p.std[c]);
  // Which source byte feeds input channel c (RGB order in the network).
  std::vector<int64_t> source(c_in);
  for (int64_t c = 0; c < c_in; ++c) source[c] = channels == 1 ? 0 : (bgr ? 2 - c : c);
  at::Tensor x = at::empty({1, c_in, height, width}, at::TensorOptions().dtype(at::kFloat).memory_format(at::MemoryFormat::ChannelsLast));
  float* out = x.data_ptr<float>();
  at::parallel_for(0, height, 16, [&](int64_t begin, int64_t end) {
    for (int64_t y = begin; y < end; ++y) {
      const uint8_t* row = pixels + y * row_bytes;
      float* o = out + y * width * c_in;
      for (int64_t x_ = 0; x_ < width; ++x_) {
        for (int64_t c = 0; c < c_in; ++c) {
          const float v = static_cast<float>(row[x_ * channels + source[c]]) / 255.0f;
          o[x_ * c_in + c] = (v - mean[c]) / stdev[c];
        }
      }
    }
  });
  return probabilities_of_normalised(x.to(impl_->device));
}

const Preprocessing& Model::preprocessing() const { return impl_->pre; }
const std::string& Model::net() const { return impl_->name; }
const std::string& Model::metadata() const { return impl_->metadata; }
c10::Device Model::device() const { return impl_->device; }

void save_model(const std::string& path, const std::string& net, const std::map<std::string, int64_t>& kwargs,
                const std::map<std::string, at::Tensor>& tensors, const Preprocessing& pre, const std::string& metadata) {
  Net built = build(net, kwargs);
  // Checked against a freshly built network, so a file that saves is a file that loads.
  const auto expected = tensors_of(*built.module);
  torch::serialize::OutputArchive weights;
  for (const auto& [name, t] : expected) {
    auto it = tensors.find(name);
    if (it == tensors.end()) throw Error("dtc runtime: save_model: the " + net + " network's tensor '" + name + "' was not given");
    if (it->second.sizes() != t.sizes()) {
      std::ostringstream msg;
      msg << "dtc runtime: save_model: '" << name << "' has shape " << it->second.sizes() << ", the " << net
          << " network expects " << t.sizes();
      throw Error(msg.str());
    }
    weights.write(name, it->second.detach().to(at::kCPU).to(t.scalar_type()).contiguous(), /*is_buffer=*/false);
  }
  for (const auto& [name, t] : tensors) {
    if (!expected.count(name)) throw Error("dtc runtime: save_model: the " + net + " network has no tensor '" + name + "'");
  }
  if (static_cast<int64_t>(pre.mean.size()) != pre.in_channels || static_cast<int64_t>(pre.std.size()) != pre.in_channels) {
    throw Error("dtc runtime: save_model: mean and std need in_channels values");
  }
  torch::serialize::OutputArchive ar;
  ar.write("dtc_format", c10::IValue(std::string(kFormat)));
  ar.write("dtc_version", c10::IValue(kVersion));
  ar.write("dtc_net", c10::IValue(net));
  c10::Dict<std::string, int64_t> kw;
  for (const auto& [k, v] : kwargs) kw.insert(k, v);
  ar.write("dtc_kwargs", c10::IValue(kw));
  ar.write("dtc_in_channels", c10::IValue(pre.in_channels));
  ar.write("dtc_mean", c10::IValue(pre.mean));
  ar.write("dtc_std", c10::IValue(pre.std));
  ar.write("dtc_multiple", c10::IValue(pre.multiple));
  std::vector<int64_t> size;
  if (pre.train_height > 0 && pre.train_width > 0) size = {pre.train_height, pre.train_width};
  ar.write("dtc_train_size", c10::IValue(size));
  ar.write("dtc_threshold", c10::IValue(pre.threshold));
  ar.write("dtc_metadata", c10::IValue(metadata));
  ar.write("weights", weights);
  const std::string tmp = path + ".tmp";
  try {
    ar.save_to(tmp);
  } catch (const std::exception& e) {
    std::remove(tmp.c_str());
    throw Error("dtc runtime: cannot write " + path + ": " + what(e));
  }
  std::filesystem::rename(tmp, path);
}

}  // namespace dtc::runtime
