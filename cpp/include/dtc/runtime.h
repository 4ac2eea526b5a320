#pragma once
// dtc's C++ runtime: run a trained dtc network on live frames without Python.
//
//   auto model = dtc::runtime::Model::load("student.dtc", "cpu");   // written by `dtc export`
//   dtc::runtime::Stream stream(model);
//   for (cv::Mat frame; camera.read(frame);) {
//     dtc::runtime::Result r = stream.push(frame);                  // r.mask: CV_8U 0/255, r.prob: CV_32F
//   }
//
// The model file is a LibTorch archive (torch::serialize) holding the network's weights, the name and
// constructor arguments of the C++ network that trained them, and the preprocessing it expects. The
// runtime builds that very network (cpp/src/nets) and loads the weights into it: it runs the code that
// trained, with no TorchScript, JIT or Python involved.
//
// Every failure (a missing or foreign model file, a frame of the wrong kind or size, an unavailable
// device) throws dtc::runtime::Error with a message naming the argument and what was expected.

#include <opencv2/core/mat.hpp>

#include <chrono>

#include "dtc/runtime_model.h"
#include "dtc/runtime_threads.h"

namespace dtc::runtime {

// One frame's result, at the frame's own size.
struct Result {
  cv::Mat prob;  // CV_32FC1 probabilities in [0, 1]
  cv::Mat mask;  // CV_8UC1, 255 where prob > threshold, else 0
  double inference_ms = 0;        // preprocessing + forward + copy back
  int threads = 0;                // the intra-op threads it ran with (CPU models)
};

struct StreamOptions {
  // Frames whose size is not a multiple of the net's are padded (edge replication, bottom/right) and the
  // result cropped back; without it such a frame throws Error naming the size and the multiple.
  bool pad = false;
  // The most intra-op threads a frame uses on the CPU; 0: LibTorch's count when the Stream is made.
  int threads = 0;
  // Run fewer threads while the machine is busy, and more again once it is quiet (runtime_threads.h).
  // false: always `threads`. Either way push() sets LibTorch's intra-op thread count (at::set_num_threads)
  // on the calling thread before each frame; other LibTorch work on that thread sees the count it left.
  bool adaptive_threads = true;
};

// Keep freed memory in the process's heap (glibc's mmap and trim thresholds raised; a no-op elsewhere).
// A forward allocates and frees the same few-megabyte activations every frame; with glibc's defaults
// they go back to the kernel and every frame page-faults them in again, about a third of the frame time
// of the light student at 256x448. Call it once at start-up; it affects the whole process, which keeps
// its peak footprint.
void keep_freed_memory();

// Frame-by-frame segmentation of a stream (camera, video, scanner feed). Call push from one thread, the
// one that loaded the model (see docs/deploy.md: LibTorch keeps one OpenMP pool per calling thread, and
// a second pool on a small machine makes every parallel region wait for wake-ups).
class Stream {
 public:
  explicit Stream(Model model, StreamOptions options = {});
  Stream(Model model, bool pad) : Stream(std::move(model), StreamOptions{pad}) {}
  // frame: CV_8UC1 (grey), CV_8UC3 (BGR, as OpenCV decodes) or CV_8UC4 (BGRA), or CV_32FC1/CV_32FC3 in [0, 1].
  Result push(const cv::Mat& frame);
  // Builds the network's kernels for frames like this one (its size and type) at every thread count the
  // stream may use. The first push does it otherwise, and takes that much longer (tens of milliseconds per
  // count): an application calls it at start-up, before the scanner's frames arrive. Throws what push would.
  void warm_up(const cv::Mat& frame);
  // The frame as the network's input tensor (1, C_in, H, W) float32 in [0, 1] (RGB order).
  at::Tensor to_input(const cv::Mat& frame) const;
  const Model& model() const { return model_; }
  int64_t frames() const { return frames_; }
  // Which thread counts the frames ran with, and how often the count changed.
  const ThreadGovernor& threads() const { return governor_; }

 private:
  at::Tensor probabilities_of(const cv::Mat& frame);  // (1, 1, H', W'), H' and W' padded to the multiple
  Result finish(const at::Tensor& probabilities, int64_t h, int64_t w, std::chrono::steady_clock::time_point start,
                int threads, bool on_cpu);

  Model model_;
  bool pad_;
  ThreadGovernor governor_;
  bool warmed_ = false;
  int64_t frames_ = 0;
};

}  // namespace dtc::runtime
