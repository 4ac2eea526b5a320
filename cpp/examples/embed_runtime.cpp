// Embedding dtc's C++ runtime in another application (a navigation system, an ultrasound research
// platform): load a model exported by `dtc export`, push the scanner's frames, use the masks.
// Built by CMake as dtc-embed-example (so CI compiles it); run:
//   dtc-embed-example model.dtc frame.png
#include <opencv2/imgcodecs.hpp>

#include <iostream>

#include "dtc/runtime.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: dtc-embed-example MODEL.dtc FRAME_IMAGE\n";
    return 2;
  }
  try {
    // Once at start-up: freed activations stay in the heap instead of page-faulting in every frame.
    dtc::runtime::keep_freed_memory();
    // Load once at start-up, on the thread that will push the frames; "cuda" when the application has a GPU.
    const auto model = dtc::runtime::Model::load(argv[1], "cpu");
    dtc::runtime::StreamOptions options;
    options.pad = true;   // frames of any size: padded to the network's multiple, the result cropped back
    options.threads = 2;  // at most; fewer while other work keeps the cores busy (adaptive_threads)
    dtc::runtime::Stream stream(model, options);
    // In an application this is the frame grabber's callback; here one image from disk.
    const cv::Mat frame = cv::imread(argv[2], cv::IMREAD_UNCHANGED);
    if (frame.empty()) {
      std::cerr << "cannot read " << argv[2] << "\n";
      return 1;
    }
    // At start-up, with a frame of the scanner's size: builds the kernels, so the first real frame is not slow.
    stream.warm_up(frame);
    const dtc::runtime::Result r = stream.push(frame);
    std::cout << "foreground pixels: " << cv::countNonZero(r.mask) << " of " << r.mask.total() << " ("
              << r.inference_ms << " ms)\n";
    return 0;
  } catch (const dtc::runtime::Error& e) {
    // Every runtime failure is an Error with a readable message: report it, never crash the host.
    std::cerr << "dtc runtime: " << e.what() << "\n";
    return 1;
  }
}
