// dtc::farneback_opencv: OpenCV's own calcOpticalFlowFarneback (+ the 3×3/5×5 median per flow
// component) for a batch of pairs on the CPU, parallel over the pairs. It is the authors' flow,
// computed by the library they used, without a Python loop: the baseline dtc::farneback is checked
// against, and a fast CPU flow provider where OpenCV C++ is installed.
//
// Built only when CMake finds OpenCV C++ (files named *_opencv.cpp are filtered out otherwise), so
// this file registers its own schema with TORCH_LIBRARY_FRAGMENT instead of listing it in
// registration.cpp: registration.cpp is always compiled, and a schema declared there without a
// kernel would make `torch.ops.dtc.farneback_opencv` exist but fail on every call, where Python
// code (dtc.ops._fake, the flow providers) needs `hasattr(torch.ops.dtc, "farneback_opencv")` to
// mean "usable". Everything about this op therefore lives in this one file.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <mutex>
#include <opencv2/core.hpp>
#include <opencv2/imgproc.hpp>
#include <opencv2/video/tracking.hpp>

#include "ops/farneback.h"

namespace dtc::ops {
namespace {

// Threading: the pairs are spread over torch's intra-op threads (at::parallel_for, one pair per
// task) and OpenCV is held to one thread for the duration of the call. Why: pairs are independent
// and equal in cost, so splitting the batch keeps every core busy for the whole call, whereas
// OpenCV's own pool (TBB in Debian's build) only parallelises parts of the pyramid (resize) inside
// one pair — the polynomial expansion, matrix updates and window passes of its Farnebäck are serial
// loops — and letting each of torch's workers also fan out onto a machine-wide TBB pool just
// oversubscribes the cores. Measured (256×448, batch 16, authors' parameters, 2-core dev machine
// at load ≈8 from other jobs): torch-over-pairs + OpenCV at 1 thread 936 ms, + OpenCV's default
// pool 970 ms, serial loop over pairs on OpenCV's pool alone 997 ms, and fully serial 1029 ms —
// all within the noise of a saturated machine, so the choice rests on the argument above; the
// many-core measurement is still to be taken (the GPU machines have no OpenCV C++).
//
// cv::setNumThreads is process-wide, so concurrent calls (the op releases the GIL) share one
// guard: the first caller in saves OpenCV's setting and lowers it to 1, the last one out restores it.
class SingleThreadedOpenCV {
 public:
  SingleThreadedOpenCV() {
    std::lock_guard<std::mutex> lock(mutex());
    if (active()++ == 0) {
      saved() = cv::getNumThreads();
      cv::setNumThreads(1);
    }
  }
  ~SingleThreadedOpenCV() {
    std::lock_guard<std::mutex> lock(mutex());
    if (--active() == 0) cv::setNumThreads(saved());
  }
  SingleThreadedOpenCV(const SingleThreadedOpenCV&) = delete;
  SingleThreadedOpenCV& operator=(const SingleThreadedOpenCV&) = delete;

 private:
  static std::mutex& mutex() {
    static std::mutex m;
    return m;
  }
  static int& active() {
    static int n = 0;
    return n;
  }
  static int& saved() {
    static int n = 1;
    return n;
  }
};

int cv_type_of(at::ScalarType t) {
  switch (t) {
    case at::kByte: return CV_8UC1;
    case at::kFloat: return CV_32FC1;
    case at::kDouble: return CV_64FC1;
    default: TORCH_CHECK_TYPE(false, "farneback_opencv: images must be float32, float64 or uint8, got ", t);
  }
}

at::Tensor farneback_opencv_cpu(const at::Tensor& prev, const at::Tensor& next, double pyr_scale, int64_t levels,
                                int64_t winsize, int64_t iterations, int64_t poly_n, double poly_sigma,
                                bool gaussian_window, int64_t median) {
  TORCH_CHECK_VALUE(prev.device().is_cpu() && next.device().is_cpu(),
                    "farneback_opencv: prev and next must be CPU tensors (OpenCV runs on the CPU), got ",
                    prev.device(), " and ", next.device());
  // Same contract as dtc::farneback (shapes, dtypes, parameter ranges, no NaN/Inf), so the two ops
  // are interchangeable; the plan itself is not needed, OpenCV builds its own.
  (void)check_and_plan_farneback(prev, next, pyr_scale, levels, winsize, iterations, poly_n, poly_sigma,
                                 gaussian_window, median);
  const int64_t N = prev.size(0);
  const int H = int(prev.size(2)), W = int(prev.size(3));
  at::Tensor out = at::empty({N, 2, H, W}, prev.options().dtype(at::kFloat).memory_format(at::MemoryFormat::Contiguous));
  if (N == 0) return out;

  const at::Tensor a = prev.contiguous(), b = next.contiguous();
  const int type = cv_type_of(a.scalar_type());
  const int64_t HW = int64_t(H) * W;
  const size_t in_bytes = size_t(HW) * a.element_size();
  // OpenCV's Mat headers take non-const pointers; the inputs are only read.
  auto* a_ptr = static_cast<uint8_t*>(const_cast<void*>(a.const_data_ptr()));
  auto* b_ptr = static_cast<uint8_t*>(const_cast<void*>(b.const_data_ptr()));
  float* out_ptr = out.mutable_data_ptr<float>();
  const int flags = gaussian_window ? cv::OPTFLOW_FARNEBACK_GAUSSIAN : 0;
  const bool filter = median == 3 || median == 5;

  SingleThreadedOpenCV single_threaded;
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    // Per-worker scratch, reused for every pair of the chunk: OpenCV's interleaved (dx, dy) flow
    // and, when filtering, its two planes before the median.
    cv::Mat flow(H, W, CV_32FC2);
    cv::Mat planes[2];
    if (filter) planes[0].create(H, W, CV_32FC1), planes[1].create(H, W, CV_32FC1);
    for (int64_t n = begin; n < end; ++n) {
      const cv::Mat p(H, W, type, a_ptr + n * in_bytes), q(H, W, type, b_ptr + n * in_bytes);
      cv::calcOpticalFlowFarneback(p, q, flow, pyr_scale, int(levels), int(winsize), int(iterations), int(poly_n),
                                   poly_sigma, flags);
      // Headers over this pair's two output planes: OpenCV writes the result straight into the tensor.
      cv::Mat dst[2] = {cv::Mat(H, W, CV_32FC1, out_ptr + (2 * n) * HW),
                        cv::Mat(H, W, CV_32FC1, out_ptr + (2 * n + 1) * HW)};
      if (filter) {
        cv::split(flow, planes);
        for (int c = 0; c < 2; ++c) cv::medianBlur(planes[c], dst[c], int(median));
      } else {
        cv::split(flow, dst);
      }
      for (int c = 0; c < 2; ++c) {
        TORCH_INTERNAL_ASSERT(dst[c].data == reinterpret_cast<uchar*>(out_ptr + (2 * n + c) * HW),
                              "farneback_opencv: OpenCV reallocated the output plane");
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(dtc, m) {
  // Not differentiable, like dtc::farneback; same parameters and defaults (the authors').
  m.def("farneback_opencv(Tensor prev, Tensor next, float pyr_scale=0.5, int levels=3, int winsize=15, "
        "int iterations=3, int poly_n=5, float poly_sigma=1.2, bool gaussian_window=False, int median=3) -> Tensor");
}

TORCH_LIBRARY_IMPL(dtc, CPU, m) { m.impl("farneback_opencv", TORCH_FN(farneback_opencv_cpu)); }

}  // namespace dtc::ops
