#pragma once
// The model half of dtc's C++ runtime (no OpenCV): load a model file, run it on tensors, write one.
// Applications include dtc/runtime.h; this part is also compiled into the Python extension, which
// writes model files for `dtc export`.

#include <ATen/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace dtc::runtime {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// What a network expects of its input (recorded by the trainer, carried by the model file).
struct Preprocessing {
  int64_t in_channels = 3;
  std::vector<double> mean, std;  // per channel: x_normalised = (x - mean) / std, x in [0, 1]
  int64_t multiple = 16;          // H and W must be multiples of this
  int64_t train_height = 0, train_width = 0;  // the size it was trained at (0: unknown)
  double threshold = 0.5;         // mask = prob > threshold
};

// A loaded network. Cheap to copy (shared); `probabilities` may be called from one thread at a time.
class Model {
 public:
  // device: "cpu", "cuda" or "cuda:N". Throws Error when the file is missing or not a dtc model, or the
  // device is unavailable.
  static Model load(const std::string& path, const std::string& device = "cpu");

  // The contract of every exported dtc model: float frames in [0, 1], (N, C_in, H, W), un-normalised,
  // H and W multiples of preprocessing().multiple -> probabilities (N, 1, H, W), float32, on device().
  at::Tensor probabilities(const at::Tensor& frames) const;
  // One 8-bit frame as a camera or decoder delivers it: `height` rows of `width` pixels, `row_bytes` apart,
  // each pixel `channels` interleaved values (1: grey; 3 or 4: BGR(A) when `bgr`, else RGB(A); alpha is
  // ignored). Grey feeds every input channel of a colour network. The same numbers as probabilities() of
  // the frame / 255 as float, converted and normalised in one pass instead of six. Throws Error for a
  // colour frame and a grey network, or a size that is not a multiple.
  at::Tensor probabilities_8bit(const uint8_t* pixels, int64_t height, int64_t width, int64_t channels,
                                int64_t row_bytes, bool bgr) const;
  // Whether probabilities_8bit takes 8-bit frames with this many interleaved channels.
  bool takes_8bit(int64_t channels) const;

  const Preprocessing& preprocessing() const;
  const std::string& net() const;      // "student", "unet" or "unetpp"
  const std::string& metadata() const;  // JSON written by `dtc export` (checkpoint, versions)
  c10::Device device() const;

  struct Impl;

 private:
  static void check_size(const Preprocessing& p, int64_t height, int64_t width);  // throws Error
  at::Tensor probabilities_of_normalised(const at::Tensor& x) const;

  std::shared_ptr<Impl> impl_;
};

// Writes a model file (what `dtc export` calls through Python): the weights by name for the network
// `net` built with `kwargs`, its preprocessing and free-form JSON metadata. Every tensor the network has
// must be given, with its shape; the file is written to a temporary name and renamed into place.
void save_model(const std::string& path, const std::string& net, const std::map<std::string, int64_t>& kwargs,
                const std::map<std::string, at::Tensor>& tensors, const Preprocessing& pre,
                const std::string& metadata);

}  // namespace dtc::runtime
