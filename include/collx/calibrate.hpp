#pragma once

// Calibration: measures the cost model's alpha, beta and gamma for the in-process
// transport as collx itself runs it, and stores them where the automatic choice of
// algorithm finds them.
//
// alpha: half the time of a 1-element ring all-reduce between 2 ranks (two messages,
//        executor overhead included: what one more step of an algorithm costs).
// beta:  from a large in-place ring all-gather between 2 ranks, one message of n bytes
//        each way: (t - alpha) / n.
// gamma: the host reduction loop, f32 sum over buffers larger than the caches.
// Each figure is the median of several runs.

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "collx/communicator.hpp"
#include "collx/transport/local.hpp"

namespace collx {

// Writes "alpha beta gamma" where read_model() (schedule/cost.hpp) reads it.
inline bool write_model(const std::string& path, const cost_params& m) {
  if (path.empty()) return false;
  std::error_code ec;
  const auto dir = std::filesystem::path(path).parent_path();
  if (!dir.empty()) std::filesystem::create_directories(dir, ec);
  std::ofstream f(path);
  f.precision(6);
  f << std::scientific << m.alpha << " " << m.beta << " " << m.gamma << "\n";
  return static_cast<bool>(f);
}

namespace detail {

template <class F>
double median_seconds(int runs, F&& f) {
  std::vector<double> t;
  for (int i = 0; i < runs; ++i) t.push_back(f());
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// Runs f(comm) on 2 local ranks and returns rank 0's seconds per call over `iters`.
// An error on either rank is rethrown here, after both threads have ended.
template <class F>
double time_local_pair(int iters, F&& f) {
  local_world world(2);
  double seconds = 0;
  std::exception_ptr other_failed;
  std::thread other([&] {
    try {
      communicator c(world.transport(1));
      for (int i = 0; i < iters + 2; ++i) f(c);
    } catch (...) {
      other_failed = std::current_exception();
    }
  });
  try {
    communicator c(world.transport(0));
    for (int i = 0; i < 2; ++i) f(c);  // warm-up: plans built, pages touched
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < iters; ++i) f(c);
    seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / iters;
  } catch (...) {
    world.kill(0);  // release the other rank at once instead of after its timeout
    other.join();
    throw;
  }
  other.join();
  if (other_failed) std::rethrow_exception(other_failed);
  return seconds;
}

}  // namespace detail

inline cost_params calibrate_local(int runs = 5) {
  cost_params m;
  options ring;
  ring.algo = algorithm::ring;
  m.alpha = detail::median_seconds(runs,
                                   [&] {
                                     return detail::time_local_pair(200, [&](communicator& c) {
                                       std::vector<float> v(1, 1.0f);
                                       c.all_reduce(v, reduce_op::sum, ring);
                                     });
                                   }) /
            2;
  constexpr std::size_t big = std::size_t{16} << 20;  // bytes per rank's block
  options whole = ring;
  whole.segment_bytes = big;  // one message each way
  std::vector<std::vector<float>> bufs(2, std::vector<float>(2 * big / sizeof(float), 1.0f));
  const double t_big = detail::median_seconds(runs, [&] {
    return detail::time_local_pair(
        5, [&](communicator& c) { c.all_gather(bufs[static_cast<std::size_t>(c.rank())], whole); });
  });
  m.beta = std::max(t_big - m.alpha, 1e-12) / static_cast<double>(big);
  std::vector<float> a(big / sizeof(float), 1.0f), b(big / sizeof(float), 2.0f);
  m.gamma = detail::median_seconds(
                runs,
                [&] {
                  const auto t0 = std::chrono::steady_clock::now();
                  reduce(dtype::f32, reduce_op::sum, a.data(), a.data(), b.data(), a.size());
                  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
                }) /
            static_cast<double>(big);
  return m;
}

}  // namespace collx
