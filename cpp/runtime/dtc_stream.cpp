// dtc-stream: segment a video file, a camera, a folder of frames or raw frames on stdin with a dtc model
// file, in a three-stage pipeline (decode -> inference -> overlay/encode) joined by bounded queues, and
// report the latency distribution and the frame rate. `dtc-stream --help` documents the command line.
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <opencv2/videoio.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "dtc/runtime.h"

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using dtc::runtime::Error;

namespace {

constexpr const char* kUsage = R"(usage: dtc-stream MODEL INPUT [--out DIR] [--threads N] [--fixed-threads] [--device cpu|cuda] [--masks]
                  [--probs] [--no-overlay] [--pad] [--raw WxHxC] [--fps F] [--realtime] [--drop-late]
                  [--max-frames N] [--queue N] [--quiet]

Segment live ultrasound with a model exported by `dtc export` (the .dtc file), without Python.

positional arguments:
  MODEL            a model file written by `dtc export` (model.dtc)
  INPUT            a video file, a camera index (0, 1, ...), a folder of frames (sorted by name: png, jpg,
                   bmp, tif), or - for raw uint8 frames on stdin (give their size with --raw)

options:
  --out DIR        output folder (default: INPUT + "_dtc", or stream_dtc for a camera or stdin)
  --threads N      the most intra-op threads the network uses (default: LibTorch's choice). While other
                   processes compete for the cores, fewer threads are faster (their barriers do not wait
                   for preempted threads): the runtime measures and switches, see --fixed-threads
  --fixed-threads  always run N threads, however busy the machine is
  --device D       cpu (default), cuda or cuda:N (when the build has CUDA)
  --masks          write masks/NNNNNN.png (0/255)
  --probs          write probs/NNNNNN.npy (float32 probabilities, H x W)
  --no-overlay     do not write overlay.mp4 (the frame with the mask contour in green)
  --pad            pad frames whose size is not a multiple of the network's (default: refuse them)
  --raw WxHxC      the size of raw stdin frames: width, height, channels (1 grey, 3 BGR), e.g. 448x256x1
  --fps F          frame rate of the overlay video (default: the input's, else 30)
  --realtime       deliver a file's or folder's frames at that rate, as a scanner would, instead of as
                   fast as they decode: the latency then reads as a live feed's (no backlog of frames)
  --drop-late      when the network falls behind a live source, segment the newest frame and skip the ones
                   that waited (a display wants the present, not a backlog): the frame waiting for the
                   network is replaced by each newer one, and the report counts the skipped frames
  --max-frames N   stop after N frames (a camera runs until then, or until interrupted)
  --queue N        capacity of each queue between the stages (default 4)
  --quiet          print only the final report
  -h, --help       show this help

Writes report.json (frames, wall time, FPS, inference and end-to-end latency p50/p95/p99 in ms, the frames
run at each thread count, frames skipped by --drop-late) into the output folder and prints it. Exit
status: 0 on success, 2 for a bad command line, 1 for any other error (unreadable input or model, a frame
the model cannot take, a camera that does not open).
)";

struct Options {
  std::string model, input, out, device = "cpu", raw;
  int threads = 0, max_frames = -1, queue = 4;
  double fps = 0;
  bool masks = false, probs = false, overlay = true, pad = false, quiet = false, realtime = false;
  bool fixed_threads = false, drop_late = false;
};

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

int to_int(const std::string& flag, const std::string& value, int lo) {
  try {
    size_t used = 0;
    const int v = std::stoi(value, &used);
    if (used == value.size() && v >= lo) return v;
  } catch (const std::exception&) {
  }
  throw UsageError(flag + " must be an integer >= " + std::to_string(lo) + ", got '" + value + "'");
}

Options parse(int argc, char** argv) {
  Options o;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw UsageError(a + " needs a value");
      return argv[++i];
    };
    if (a == "-h" || a == "--help") {
      std::cout << kUsage;
      std::exit(0);
    } else if (a == "--out") {
      o.out = value();
    } else if (a == "--threads") {
      o.threads = to_int(a, value(), 1);
    } else if (a == "--fixed-threads") {
      o.fixed_threads = true;
    } else if (a == "--device") {
      o.device = value();
    } else if (a == "--masks") {
      o.masks = true;
    } else if (a == "--probs") {
      o.probs = true;
    } else if (a == "--no-overlay") {
      o.overlay = false;
    } else if (a == "--pad") {
      o.pad = true;
    } else if (a == "--realtime") {
      o.realtime = true;
    } else if (a == "--drop-late") {
      o.drop_late = true;
    } else if (a == "--quiet") {
      o.quiet = true;
    } else if (a == "--raw") {
      o.raw = value();
    } else if (a == "--max-frames") {
      o.max_frames = to_int(a, value(), 1);
    } else if (a == "--queue") {
      o.queue = to_int(a, value(), 1);
    } else if (a == "--fps") {
      const std::string v = value();
      try {
        o.fps = std::stod(v);
      } catch (const std::exception&) {
        o.fps = -1;
      }
      if (!(o.fps > 0)) throw UsageError("--fps must be a positive number, got '" + v + "'");
    } else if (a.size() > 1 && a[0] == '-' && a != "-") {
      throw UsageError("unknown option " + a);
    } else {
      positional.push_back(a);
    }
  }
  if (positional.size() != 2) throw UsageError("expected MODEL and INPUT, got " + std::to_string(positional.size()) + " argument(s)");
  o.model = positional[0];
  o.input = positional[1];
  if (o.device != "cpu" && o.device.rfind("cuda", 0) != 0) throw UsageError("--device must be cpu or cuda[:N], got '" + o.device + "'");
  if (o.input == "-" && o.raw.empty()) throw UsageError("INPUT - (raw frames on stdin) needs --raw WxHxC");
  return o;
}

// A bounded queue between two pipeline stages: push blocks while full, pop blocks while empty; close()
// wakes everyone (the producer is done, or a stage failed).
template <typename T>
class BoundedQueue {
 public:
  explicit BoundedQueue(size_t capacity) : capacity_(capacity) {}
  bool push(T item) {
    std::unique_lock<std::mutex> lock(mu_);
    not_full_.wait(lock, [&] { return closed_ || items_.size() < capacity_; });
    if (closed_) return false;
    items_.push_back(std::move(item));
    not_empty_.notify_one();
    return true;
  }
  // Never waits: when full, the oldest item gives way. Returns how many were dropped (0 or 1), or -1 when closed.
  int push_replacing_oldest(T item) {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return -1;
    int dropped = 0;
    if (items_.size() >= capacity_) {
      items_.pop_front();
      dropped = 1;
    }
    items_.push_back(std::move(item));
    not_empty_.notify_one();
    return dropped;
  }
  std::optional<T> pop() {
    std::unique_lock<std::mutex> lock(mu_);
    not_empty_.wait(lock, [&] { return closed_ || !items_.empty(); });
    if (items_.empty()) return std::nullopt;
    T item = std::move(items_.front());
    items_.pop_front();
    not_full_.notify_one();
    return item;
  }
  void close() {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
    not_empty_.notify_all();
    not_full_.notify_all();
  }

 private:
  size_t capacity_;
  std::mutex mu_;
  std::condition_variable not_empty_, not_full_;
  std::deque<T> items_;
  bool closed_ = false;
};

struct Item {
  int64_t index = 0;
  cv::Mat frame;
  Clock::time_point decoded;
  dtc::runtime::Result result;
};

// Frame sources: each returns false at the end of the input and throws Error on a broken one.
class Source {
 public:
  virtual ~Source() = default;
  virtual bool read(cv::Mat& frame) = 0;
  virtual double fps() const { return 0; }
};

class CaptureSource : public Source {
 public:
  CaptureSource(cv::VideoCapture cap, std::string what) : cap_(std::move(cap)), what_(std::move(what)) {}
  bool read(cv::Mat& frame) override {
    if (!cap_.read(frame) || frame.empty()) {
      if (count_ == 0) throw Error("no frame could be decoded from " + what_);
      return false;
    }
    ++count_;
    return true;
  }
  double fps() const override { return cap_.get(cv::CAP_PROP_FPS); }

 private:
  mutable cv::VideoCapture cap_;
  std::string what_;
  int64_t count_ = 0;
};

class FolderSource : public Source {
 public:
  explicit FolderSource(const fs::path& dir) {
    for (const auto& e : fs::directory_iterator(dir)) {
      std::string ext = e.path().extension().string();
      std::transform(ext.begin(), ext.end(), ext.begin(), ::tolower);
      if (e.is_regular_file() && (ext == ".png" || ext == ".jpg" || ext == ".jpeg" || ext == ".bmp" || ext == ".tif" || ext == ".tiff")) {
        files_.push_back(e.path());
      }
    }
    std::sort(files_.begin(), files_.end());
    if (files_.empty()) throw Error("the folder " + dir.string() + " holds no frames (png, jpg, bmp or tif)");
  }
  bool read(cv::Mat& frame) override {
    if (next_ >= files_.size()) return false;
    const fs::path& f = files_[next_++];
    frame = cv::imread(f.string(), cv::IMREAD_UNCHANGED);
    if (frame.empty()) throw Error("cannot read the frame " + f.string());
    if (frame.depth() == CV_16U) frame.convertTo(frame, CV_8U, 1.0 / 257.0);
    return true;
  }

 private:
  std::vector<fs::path> files_;
  size_t next_ = 0;
};

class RawSource : public Source {
 public:
  explicit RawSource(const std::string& spec) {
    int w = 0, h = 0, c = 0;
    char x1 = 0, x2 = 0;
    std::istringstream in(spec);
    if (!(in >> w >> x1 >> h >> x2 >> c) || x1 != 'x' || x2 != 'x' || w <= 0 || h <= 0 || (c != 1 && c != 3) || in.peek() != EOF) {
      throw UsageError("--raw must be WxHxC with positive W, H and C = 1 or 3, got '" + spec + "'");
    }
    w_ = w, h_ = h, c_ = c;
  }
  bool read(cv::Mat& frame) override {
    frame.create(h_, w_, c_ == 1 ? CV_8UC1 : CV_8UC3);
    const size_t bytes = static_cast<size_t>(w_) * h_ * c_;
    const size_t got = std::fread(frame.data, 1, bytes, stdin);
    if (got == 0 && std::feof(stdin)) return false;
    if (got != bytes) {
      throw Error("stdin ended inside a frame: " + std::to_string(got) + " of " + std::to_string(bytes) +
                  " bytes (is --raw " + std::to_string(w_) + "x" + std::to_string(h_) + "x" + std::to_string(c_) + " right?)");
    }
    return true;
  }

 private:
  int w_ = 0, h_ = 0, c_ = 0;
};

bool all_digits(const std::string& s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](unsigned char ch) { return std::isdigit(ch); });
}

std::unique_ptr<Source> open_source(const Options& o) {
  if (o.input == "-") return std::make_unique<RawSource>(o.raw);
  if (all_digits(o.input) && !fs::exists(o.input)) {
    cv::VideoCapture cap(std::stoi(o.input));
    if (!cap.isOpened()) throw Error("camera " + o.input + " does not open (is it connected, and free?)");
    return std::make_unique<CaptureSource>(std::move(cap), "camera " + o.input);
  }
  if (!fs::exists(o.input)) throw Error("input not found: " + o.input + " (expected a video file, a folder of frames, a camera index or -)");
  if (fs::is_directory(o.input)) return std::make_unique<FolderSource>(o.input);
  cv::VideoCapture cap(o.input);
  if (!cap.isOpened()) throw Error("cannot open the video " + o.input + " (unreadable or not a video OpenCV can decode)");
  return std::make_unique<CaptureSource>(std::move(cap), "the video " + o.input);
}

std::string frame_name(int64_t i, const char* ext) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%06lld%s", static_cast<long long>(i), ext);
  return buf;
}

// Written under a temporary name and renamed, so a reader never sees half a file.
void write_png(const fs::path& path, const cv::Mat& image) {
  const fs::path tmp = path.parent_path() / ("." + path.stem().string() + ".tmp.png");
  if (!cv::imwrite(tmp.string(), image)) throw Error("cannot write " + path.string());
  fs::rename(tmp, path);
}

void write_npy(const fs::path& path, const cv::Mat& prob) {
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + std::to_string(prob.rows) + ", " +
                       std::to_string(prob.cols) + "), }";
  const size_t unpadded = 10 + header.size() + 1;
  header += std::string((64 - unpadded % 64) % 64, ' ') + "\n";
  const fs::path tmp = path.parent_path() / ("." + path.filename().string() + ".tmp");
  {
    std::ofstream f(tmp, std::ios::binary);
    const uint16_t len = static_cast<uint16_t>(header.size());
    f.write("\x93NUMPY\x01\x00", 8);
    f.write(reinterpret_cast<const char*>(&len), 2);
    f.write(header.data(), header.size());
    f.write(reinterpret_cast<const char*>(prob.data), sizeof(float) * prob.total());
    if (!f) throw Error("cannot write " + path.string());
  }
  fs::rename(tmp, path);
}

cv::Mat overlay_of(const cv::Mat& frame, const cv::Mat& mask) {
  cv::Mat grey, out;
  cv::Mat eight = frame;
  if (frame.depth() == CV_32F) frame.convertTo(eight, CV_8U, 255.0);
  if (eight.channels() == 1) {
    grey = eight;
  } else {
    cv::cvtColor(eight, grey, eight.channels() == 4 ? cv::COLOR_BGRA2GRAY : cv::COLOR_BGR2GRAY);
  }
  cv::cvtColor(grey, out, cv::COLOR_GRAY2BGR);
  std::vector<std::vector<cv::Point>> contours;
  cv::findContours(mask, contours, cv::RETR_EXTERNAL, cv::CHAIN_APPROX_NONE);
  cv::drawContours(out, contours, -1, cv::Scalar(0, 255, 0), 1);
  return out;
}

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double pos = q * (v.size() - 1);
  const size_t lo = static_cast<size_t>(pos);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - lo);
}

std::string counts_json(const std::map<int, int64_t>& counts) {
  std::string s;
  for (const auto& [threads, frames] : counts) {
    s += (s.empty() ? "\"" : ", \"") + std::to_string(threads) + "\": " + std::to_string(frames);
  }
  return s;
}

std::string error_text(const std::exception& e) {
  if (const auto* ce = dynamic_cast<const c10::Error*>(&e)) return ce->what_without_backtrace();
  return e.what();
}

int run(const Options& o) {
  if (o.threads > 0) at::set_num_threads(o.threads);
  // Decode and encode are one stage each; OpenCV's own worker threads would only compete with the
  // network's intra-op threads for the cores.
  cv::setNumThreads(1);
  auto model = dtc::runtime::Model::load(o.model, o.device);
  dtc::runtime::Stream stream(model, dtc::runtime::StreamOptions{o.pad, o.threads, !o.fixed_threads});
  auto source = open_source(o);
  fs::path out = o.out;
  if (out.empty()) {
    out = (o.input == "-" || all_digits(o.input)) ? fs::path("stream_dtc") : fs::path(fs::path(o.input).lexically_normal().string() + "_dtc");
    if (fs::path(o.input).filename().empty()) out = fs::path(o.input).parent_path().string() + "_dtc";
  }
  fs::create_directories(out);
  if (o.masks) fs::create_directories(out / "masks");
  if (o.probs) fs::create_directories(out / "probs");
  const double fps = o.fps > 0 ? o.fps : (source->fps() > 0 && source->fps() < 1000 ? source->fps() : 30.0);

  // With --drop-late only the newest decoded frame waits for the network.
  BoundedQueue<Item> decoded(o.drop_late ? 1 : o.queue), inferred(o.queue);
  std::atomic<int64_t> skipped{0};
  std::mutex error_mu;
  std::string error;
  auto fail = [&](const std::string& message) {
    {
      std::lock_guard<std::mutex> lock(error_mu);
      if (error.empty()) error = message;
    }
    decoded.close();
    inferred.close();
  };
  // The first frame builds the network's kernels for its size at every thread count the runtime may use,
  // before the clock starts, as a scanner application does at start-up: the stream's first frames then do
  // not queue behind that.
  cv::Mat first;
  const bool has_first = source->read(first);
  if (has_first) stream.warm_up(first);
  const auto start = Clock::now();
  std::thread reader([&] {
    try {
      for (int64_t i = 0; o.max_frames < 0 || i < o.max_frames; ++i) {
        Item item;
        if (o.realtime) {
          std::this_thread::sleep_until(start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(i / fps)));
        }
        if (i == 0) {
          if (!has_first) break;
          item.frame = first;
        } else if (!source->read(item.frame)) {
          break;
        }
        item.index = i;
        item.decoded = Clock::now();
        if (o.drop_late) {
          const int dropped = decoded.push_replacing_oldest(std::move(item));
          if (dropped < 0) return;
          skipped += dropped;
        } else if (!decoded.push(std::move(item))) {
          return;
        }
      }
    } catch (const std::exception& e) {
      fail(error_text(e));
    }
    decoded.close();
  });
  // The overlay/encode stage runs on its own thread and inference on this one. GNU OpenMP keeps one
  // worker pool per thread that enters a parallel region, and once more pool threads exist than cores
  // it stops spinning between regions: every one of the network's ~40 ops per frame then waits for
  // futex wake-ups, which made 2 intra-op threads no faster than 1. This thread loaded the model, so
  // its pool already exists; running the network here keeps it the only one.
  std::vector<double> inference_ms, latency_ms;
  cv::VideoWriter writer;
  const fs::path video = out / "overlay.mp4", video_tmp = out / ".overlay.tmp.mp4";
  std::thread encoder([&] {
    try {
      while (auto item = inferred.pop()) {
        if (o.overlay) {
          cv::Mat frame = overlay_of(item->frame, item->result.mask);
          if (!writer.isOpened()) {
            writer.open(video_tmp.string(), cv::VideoWriter::fourcc('m', 'p', '4', 'v'), fps, frame.size());
            if (!writer.isOpened()) throw Error("OpenCV cannot write an MP4 video to " + video_tmp.string());
          }
          writer.write(frame);
        }
        if (o.masks) write_png(out / "masks" / frame_name(item->index, ".png"), item->result.mask);
        if (o.probs) write_npy(out / "probs" / frame_name(item->index, ".npy"), item->result.prob);
        inference_ms.push_back(item->result.inference_ms);
        latency_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - item->decoded).count());
        if (!o.quiet && item->index % 100 == 0) std::cerr << "dtc-stream: frame " << item->index << "\n";
      }
    } catch (const std::exception& e) {
      fail(error_text(e));
    }
  });
  try {
    while (auto item = decoded.pop()) {
      item->result = stream.push(item->frame);
      if (!inferred.push(std::move(*item))) break;
    }
  } catch (const std::exception& e) {
    fail(error_text(e));
  }
  inferred.close();
  reader.join();
  encoder.join();
  const double wall = std::chrono::duration<double>(Clock::now() - start).count();
  if (writer.isOpened()) {
    writer.release();
    if (error.empty()) fs::rename(video_tmp, video);
  }
  fs::remove(video_tmp);
  if (!error.empty()) throw Error(error);
  if (latency_ms.empty()) throw Error("the input " + o.input + " held no frames");

  const size_t n = latency_ms.size();
  double inference_total = 0;
  for (double v : inference_ms) inference_total += v;
  std::ostringstream r;
  r.setf(std::ios::fixed);
  r.precision(3);
  r << "{\n  \"frames\": " << n << ",\n  \"wall_s\": " << wall << ",\n  \"fps\": " << n / wall
    << ",\n  \"device\": \"" << model.device().str() << "\",\n  \"threads\": " << stream.threads().options().max_threads
    << ",\n  \"adaptive_threads\": " << (stream.threads().options().adaptive ? "true" : "false")
    << ",\n  \"frames_per_thread_count\": {" << counts_json(stream.threads().frames_per_count())
    << "},\n  \"thread_switches\": " << stream.threads().switches() << ",\n  \"skipped_frames\": " << skipped.load()
    << ",\n  \"inference_ms\": {\"p50\": " << percentile(inference_ms, 0.5) << ", \"p95\": " << percentile(inference_ms, 0.95)
    << ", \"p99\": " << percentile(inference_ms, 0.99) << ", \"mean\": " << inference_total / n << "},\n"
    << "  \"latency_ms\": {\"p50\": " << percentile(latency_ms, 0.5) << ", \"p95\": " << percentile(latency_ms, 0.95)
    << ", \"p99\": " << percentile(latency_ms, 0.99) << "},\n"
    << "  \"inference_fraction\": " << (inference_total / 1000.0) / wall << "\n}\n";
  {
    std::ofstream f(out / ".report.json.tmp");
    f << r.str();
  }
  fs::rename(out / ".report.json.tmp", out / "report.json");
  std::cout << r.str();
  if (!o.quiet) std::cerr << "dtc-stream: wrote " << n << " frame(s) to " << out.string() << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  dtc::runtime::keep_freed_memory();
  try {
    return run(parse(argc, argv));
  } catch (const UsageError& e) {
    std::cerr << "dtc-stream: error: " << e.what() << "\n\n" << kUsage;
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "dtc-stream: error: " << error_text(e) << "\n";
    return 1;
  } catch (...) {
    std::cerr << "dtc-stream: error: an unknown failure\n";
    return 1;
  }
}
