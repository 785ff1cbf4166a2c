// Latency summaries for the benchmarks: median, p99 and median absolute
// deviation over raw samples; and the order in which rounds visit points.
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

namespace rocket::tools {

struct Summary {
  double p50 = 0, p99 = 0, mad = 0, mean = 0;
  size_t n = 0;
};

// The point a round visits `i`-th of `n`: forward in odd rounds, backward in
// even ones, so that a machine drifting over a run weighs on every point alike.
inline size_t in_round_order(int round, size_t i, size_t n) { return round % 2 == 1 ? i : n - 1 - i; }

inline double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  double pos = q * static_cast<double>(v.size() - 1);
  size_t lo = static_cast<size_t>(pos);
  size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - static_cast<double>(lo));
}

inline Summary summarize(const std::vector<double>& v) {
  Summary s;
  s.n = v.size();
  if (v.empty()) return s;
  s.p50 = percentile(v, 0.5);
  s.p99 = percentile(v, 0.99);
  double sum = 0;
  std::vector<double> dev;
  dev.reserve(v.size());
  for (double x : v) {
    sum += x;
    dev.push_back(std::fabs(x - s.p50));
  }
  s.mean = sum / static_cast<double>(v.size());
  s.mad = percentile(dev, 0.5);
  return s;
}

}  // namespace rocket::tools
