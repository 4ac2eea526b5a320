#pragma once
// How many intra-op threads each frame of a stream runs with, chosen from the latencies it measures.
//
// A forward of the light student is ~40 parallel regions, each ending at a barrier. When other processes
// compete for the cores, the scheduler often preempts one of the network's threads, and the others wait
// at the barrier until it runs again. On the 2-core development machine, under load, 2 threads went from
// 9 ms to 150-250 ms a frame while 1 thread went from 14 to 45 ms (benchmarks/RESULTS.md, stream): the
// count that is fastest on a quiet machine is the worst one on a busy machine.
//
// The governor keeps the stream at the count that measured fastest recently. It notices a collapse within
// a few frames (the median of the last three frames more than `collapse_factor` times the level at which
// the count was last confirmed) and then tries the next lower count at once. Now and then it runs one
// frame at a neighbouring count (fewer threads while at the maximum, more otherwise) and switches when
// that frame beats the recent median by the margin. A retry that loses doubles the interval to the next
// one, up to `max_probe_every`, so a machine that stays busy pays for rare slow frames only, and a
// machine that becomes quiet again gets its threads back.
//
// The governor only decides; the caller sets the count (at::set_num_threads on the thread that runs the
// network) before each frame. No OpenCV and no LibTorch in here, so it is tested on its own.

#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <vector>

namespace dtc::runtime {

class ThreadGovernor {
 public:
  struct Options {
    int max_threads = 1;            // the most intra-op threads a frame may use (>= 1)
    bool adaptive = true;           // false: always max_threads
    int probe_every = 30;           // frames between two retries of another count, at first (>= 1)
    int max_probe_every = 480;      // the longest interval the doubling reaches (>= probe_every)
    double switch_margin = 0.85;    // a retry wins when it is this fraction of the current median or less
    double collapse_factor = 2.0;   // retry at once when the recent median exceeds this times the confirmed level
  };

  // Throws std::invalid_argument naming the option when one is out of range.
  explicit ThreadGovernor(Options options);

  // The thread count the next frame should run with.
  int threads() const;
  // Records the latency (ms, > 0 and finite; others are ignored) of the frame just run with threads().
  // The first frame at a count builds that count's kernels, so its latency is not taken as its speed,
  // unless the caller ran the count before (warmed).
  void record(double ms);
  // Every count a retry may use, fewest threads first (the caller warms them up before the first frame).
  std::vector<int> counts() const;
  void warmed(int threads);

  int home_threads() const;  // the count the stream settles on between retries
  int64_t switches() const { return switches_; }
  int64_t probes() const { return probes_; }
  // How many frames ran with each thread count.
  const std::map<int, int64_t>& frames_per_count() const { return frames_; }
  const Options& options() const { return options_; }

 private:
  struct Count {
    int threads = 1;
    bool ran = false;              // a count's first frame builds its kernels; that latency is not recorded
    std::deque<double> recent;     // the latest frames at this count, newest last
    double confirmed = 0;          // the level at which this count was last confirmed best (0: not yet)
  };
  double median_of_recent(const Count& c, size_t last) const;
  void start_probe(size_t index);

  Options options_;
  std::vector<Count> counts_;  // max_threads, its half, its quarter, ... 1
  size_t home_ = 0;
  long probe_ = -1;            // index of the count being retried, or -1
  int since_probe_ = 0;
  int interval_ = 0;
  int64_t switches_ = 0, probes_ = 0;
  std::map<int, int64_t> frames_;
};

}  // namespace dtc::runtime
