// dtc::runtime::ThreadGovernor (see cpp/include/dtc/runtime_threads.h for the policy and why).
#include "dtc/runtime_threads.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace dtc::runtime {
namespace {
// Frames a count's median is taken over: enough to ignore one preempted frame, few enough to follow a
// change of load within a quarter of a second at 30 frames per second.
constexpr size_t kRecent = 7;
// The short window that detects a collapse.
constexpr size_t kCollapseWindow = 3;
// Frames a new stream runs before its first retry: the first thing to learn is whether the maximum count
// is the right one on this machine right now, before a backlog builds up behind a collapsed one.
constexpr int kFirstProbeAfter = 4;
}  // namespace

ThreadGovernor::ThreadGovernor(Options options) : options_(options) {
  if (options_.max_threads < 1) {
    throw std::invalid_argument("ThreadGovernor: max_threads must be >= 1, got " + std::to_string(options_.max_threads));
  }
  if (options_.probe_every < 1) {
    throw std::invalid_argument("ThreadGovernor: probe_every must be >= 1 frame, got " + std::to_string(options_.probe_every));
  }
  if (options_.max_probe_every < options_.probe_every) {
    throw std::invalid_argument("ThreadGovernor: max_probe_every must be >= probe_every (" +
                                std::to_string(options_.probe_every) + "), got " +
                                std::to_string(options_.max_probe_every));
  }
  if (!(options_.switch_margin > 0 && options_.switch_margin <= 1)) {
    throw std::invalid_argument("ThreadGovernor: switch_margin must be in (0, 1], got " +
                                std::to_string(options_.switch_margin));
  }
  if (!(options_.collapse_factor > 1) || !std::isfinite(options_.collapse_factor)) {
    throw std::invalid_argument("ThreadGovernor: collapse_factor must be a finite number > 1, got " +
                                std::to_string(options_.collapse_factor));
  }
  for (int t = options_.max_threads;; t /= 2) {
    Count c;
    c.threads = t;
    counts_.push_back(c);
    if (t == 1) break;
  }
  interval_ = options_.probe_every;
  since_probe_ = std::max(0, interval_ - kFirstProbeAfter);
}

int ThreadGovernor::threads() const { return counts_[probe_ >= 0 ? static_cast<size_t>(probe_) : home_].threads; }

int ThreadGovernor::home_threads() const { return counts_[home_].threads; }

std::vector<int> ThreadGovernor::counts() const {
  std::vector<int> v;
  if (!options_.adaptive) return {options_.max_threads};
  for (auto it = counts_.rbegin(); it != counts_.rend(); ++it) v.push_back(it->threads);
  return v;
}

void ThreadGovernor::warmed(int threads) {
  for (auto& c : counts_) {
    if (c.threads == threads) c.ran = true;
  }
}

double ThreadGovernor::median_of_recent(const Count& c, size_t last) const {
  const size_t n = std::min(last, c.recent.size());
  if (n == 0) return 0;
  std::vector<double> v(c.recent.end() - static_cast<long>(n), c.recent.end());
  std::nth_element(v.begin(), v.begin() + static_cast<long>(n / 2), v.end());
  return v[n / 2];
}

void ThreadGovernor::start_probe(size_t index) {
  probe_ = static_cast<long>(index);
  since_probe_ = 0;
  ++probes_;
}

void ThreadGovernor::record(double ms) {
  if (!(ms > 0) || !std::isfinite(ms)) return;
  const size_t k = probe_ >= 0 ? static_cast<size_t>(probe_) : home_;
  Count& c = counts_[k];
  ++frames_[c.threads];
  if (!c.ran) {
    // The first frame at a count builds its kernels (oneDNN keys them by thread count): not its speed.
    // A retry stays on for the next frame.
    c.ran = true;
    return;
  }
  c.recent.push_back(ms);
  if (c.recent.size() > kRecent) c.recent.pop_front();
  if (!options_.adaptive || counts_.size() == 1) return;

  Count& home = counts_[home_];
  if (probe_ >= 0) {
    probe_ = -1;
    since_probe_ = 0;
    // Against the last few frames, not the longer median: when the load has just arrived, the longer
    // median still remembers the quiet frames.
    const double home_level = median_of_recent(home, kCollapseWindow);
    if (home.recent.empty() || ms <= options_.switch_margin * home_level) {
      home_ = k;
      ++switches_;
      interval_ = options_.probe_every;
      c.recent.assign(1, ms);
      c.confirmed = ms;
    } else {
      interval_ = std::min(2 * interval_, options_.max_probe_every);
      // Confirmed at the level it runs at now, so a load that stays does not trigger retry after retry.
      home.confirmed = std::max(home_level, median_of_recent(home, kRecent));
      c.recent.clear();
    }
    return;
  }

  ++since_probe_;
  if (home.recent.size() >= kCollapseWindow) {
    const double level = median_of_recent(home, kRecent);
    if (home.confirmed == 0 || level < home.confirmed) home.confirmed = level;
    const bool collapsed = median_of_recent(home, kCollapseWindow) > options_.collapse_factor * home.confirmed;
    if (collapsed && since_probe_ >= static_cast<int>(kCollapseWindow) && home_ + 1 < counts_.size()) {
      start_probe(home_ + 1);
      return;
    }
  }
  if (since_probe_ >= interval_) start_probe(home_ > 0 ? home_ - 1 : home_ + 1);
}

}  // namespace dtc::runtime
