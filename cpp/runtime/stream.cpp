// dtc::runtime::Stream: OpenCV frames in, probabilities and masks at the frame's size out.
#include <ATen/ATen.h>
#include <opencv2/core.hpp>
#include <torch/utils.h>

#include <chrono>
#include <string>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "dtc/runtime.h"

namespace dtc::runtime {

void keep_freed_memory() {
#if defined(__GLIBC__)
  mallopt(M_MMAP_THRESHOLD, 256 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
#endif
}

namespace {
ThreadGovernor::Options governor_options(const StreamOptions& o, bool on_cpu) {
  if (o.threads < 0) throw Error("dtc runtime: StreamOptions.threads must be >= 0 (0: LibTorch's count), got " + std::to_string(o.threads));
  ThreadGovernor::Options g;
  g.max_threads = o.threads > 0 ? o.threads : at::get_num_threads();
  // On a GPU the intra-op threads only launch kernels: nothing to govern.
  g.adaptive = o.adaptive_threads && on_cpu;
  return g;
}
}  // namespace

Stream::Stream(Model model, StreamOptions options)
    : model_(std::move(model)), pad_(options.pad), governor_(governor_options(options, model_.device().is_cpu())) {}

at::Tensor Stream::to_input(const cv::Mat& frame) const {
  if (frame.empty()) throw Error("dtc runtime: the frame is empty");
  const int depth = frame.depth(), channels = frame.channels();
  if ((depth != CV_8U && depth != CV_32F) || (channels != 1 && channels != 3 && channels != 4)) {
    throw Error("dtc runtime: a frame must be 8-bit or 32-bit float with 1 (grey), 3 (BGR) or 4 (BGRA) channels, got "
                "OpenCV type " + cv::typeToString(frame.type()));
  }
  cv::Mat dense = frame.isContinuous() ? frame : frame.clone();
  const auto dtype = depth == CV_8U ? at::kByte : at::kFloat;
  at::Tensor t = at::from_blob(dense.data, {1, dense.rows, dense.cols, channels}, at::TensorOptions().dtype(dtype));
  // Identical arithmetic to dtc.deploy.Segmenter (uint8 -> float32 / 255), so both give the same bits.
  t = depth == CV_8U ? t.to(at::kFloat) / 255.0 : t.clone();
  if (depth == CV_32F) {
    const double lo = t.min().item<double>(), hi = t.max().item<double>();
    if (!(lo >= 0.0 && hi <= 1.0)) {
      throw Error("dtc runtime: float frames must be in [0, 1], got values in [" + std::to_string(lo) + ", " +
                  std::to_string(hi) + "]");
    }
  }
  t = t.permute({0, 3, 1, 2});
  if (channels >= 3) t = t.narrow(1, 0, 3).flip({1});  // OpenCV's BGR(A) -> RGB
  const int64_t want = model_.preprocessing().in_channels, have = t.size(1);
  if (have == 1 && want != 1) {
    t = t.expand({-1, want, -1, -1});
  } else if (have == 3 && want == 1) {
    // ITU-R BT.601 luma, as dtc.deploy.Segmenter.
    const at::Tensor luma = at::tensor({0.299, 0.587, 0.114}, at::TensorOptions().dtype(at::kDouble)).to(at::kFloat).view({1, 3, 1, 1});
    t = (t * luma).sum(1, /*keepdim=*/true);
  } else if (have != want) {
    throw Error("dtc runtime: the network takes " + std::to_string(want) + " channel(s), cannot feed " +
                std::to_string(have) + "-channel frames");
  }
  return t.contiguous();
}

at::Tensor Stream::probabilities_of(const cv::Mat& frame) {
  const int64_t m = model_.preprocessing().multiple;
  const int depth = frame.depth(), channels = frame.channels();
  const bool fits = !frame.empty() && frame.rows % m == 0 && frame.cols % m == 0;
  if (fits && depth == CV_8U && model_.takes_8bit(channels)) {
    // The common case, a camera's or decoder's 8-bit frame: converted and normalised in one pass.
    return model_.probabilities_8bit(frame.data, frame.rows, frame.cols, channels, static_cast<int64_t>(frame.step[0]),
                                     /*bgr=*/true);
  }
  at::Tensor x = to_input(frame);
  const int64_t h = x.size(2), w = x.size(3);
  const int64_t pad_h = (m - h % m) % m, pad_w = (m - w % m) % m;
  if (pad_h || pad_w) {
    if (!pad_) {
      throw Error("dtc runtime: frame size " + std::to_string(w) + "x" + std::to_string(h) + " (WxH) is not a multiple of " +
                  std::to_string(m) + " (the network downsamples by " + std::to_string(m) +
                  "); resize the frames, or let the runtime pad them (Stream(model, /*pad=*/true), dtc-stream --pad)");
    }
    x = at::replication_pad2d(x, {0, pad_w, 0, pad_h});
  }
  return model_.probabilities(x);
}

void Stream::warm_up(const cv::Mat& frame) {
  if (!model_.device().is_cpu()) {
    probabilities_of(frame);
  } else {
    // oneDNN builds a thread count's kernels the first time it runs them (tens of milliseconds): every
    // count the governor may switch to is built here, so no switch stalls the stream later.
    for (int count : governor_.counts()) {
      at::set_num_threads(count);
      probabilities_of(frame);
      governor_.warmed(count);
    }
    at::set_num_threads(governor_.threads());
  }
  warmed_ = true;
}

Result Stream::push(const cv::Mat& frame) {
  const bool on_cpu = model_.device().is_cpu();
  const auto start = std::chrono::steady_clock::now();
  if (!warmed_) warm_up(frame);
  const int threads = governor_.threads();
  // Per calling thread with OpenMP, so set here, on the thread that runs the network.
  if (on_cpu && at::get_num_threads() != threads) at::set_num_threads(threads);
  const at::Tensor prob = probabilities_of(frame);
  return finish(prob, frame.rows, frame.cols, start, threads, on_cpu);
}

Result Stream::finish(const at::Tensor& probabilities, int64_t h, int64_t w, std::chrono::steady_clock::time_point start,
                      int threads, bool on_cpu) {
  at::Tensor prob = probabilities.select(1, 0).select(0, 0).narrow(0, 0, h).narrow(1, 0, w).to(at::kCPU).contiguous();
  Result r;
  r.prob = cv::Mat(static_cast<int>(h), static_cast<int>(w), CV_32FC1);
  std::memcpy(r.prob.data, prob.data_ptr<float>(), sizeof(float) * h * w);
  cv::compare(r.prob, model_.preprocessing().threshold, r.mask, cv::CMP_GT);
  r.inference_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  r.threads = on_cpu ? threads : 0;
  if (on_cpu) governor_.record(r.inference_ms);
  ++frames_;
  return r;
}

}  // namespace dtc::runtime
