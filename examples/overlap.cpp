// Overlapping communication with computation, as a training step does with gradient
// buckets: while bucket k is being all-reduced (an async call returning a request),
// the "backward pass" computes bucket k+1. The same work is timed once with the
// requests waited on at once (no overlap) and once overlapped, and the time saved is
// printed. Ranks are threads of this process over the in-process transport.
//
//   overlap [ranks] [buckets] [bucket_mib]

#include <collx/collx.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

namespace {

// Stand-in for a backward pass: some arithmetic over the bucket, deterministic.
void compute_gradients(std::vector<float>& bucket, int rank, int k) {
  for (std::size_t i = 0; i < bucket.size(); ++i) {
    float x = static_cast<float>((i + static_cast<std::size_t>(k)) % 97) * 0.01f;
    for (int it = 0; it < 8; ++it) x = x * 0.5f + std::sqrt(x + 1.0f);
    bucket[i] = x + static_cast<float>(rank);
  }
}

double run(int p, int buckets, std::size_t n, bool overlap, bool& correct) {
  collx::local_world world(p);
  std::vector<double> seconds(static_cast<std::size_t>(p));
  std::vector<int> ok(static_cast<std::size_t>(p), 1);
  std::vector<std::thread> ranks;
  for (int r = 0; r < p; ++r) {
    ranks.emplace_back([&, r] {
      collx::communicator comm(world.transport(r));
      std::vector<std::vector<float>> grads(static_cast<std::size_t>(buckets), std::vector<float>(n));
      std::vector<collx::request> pending;
      const auto t0 = std::chrono::steady_clock::now();
      for (int k = 0; k < buckets; ++k) {
        auto& g = grads[static_cast<std::size_t>(k)];
        compute_gradients(g, r, k);
        pending.push_back(comm.all_reduce_async(g, collx::reduce_op::avg));
        if (!overlap) pending.back().wait();  // the blocking way: communicate, then compute on
      }
      for (auto& q : pending) q.wait();
      seconds[static_cast<std::size_t>(r)] =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      // avg over ranks of (x + rank) is x + (p-1)/2.
      std::vector<float> check(n);
      for (int k = 0; k < buckets; ++k) {
        compute_gradients(check, 0, k);
        const float shift = static_cast<float>(p - 1) / 2.0f;
        for (std::size_t i = 0; i < n; i += 997) {
          if (std::fabs(grads[static_cast<std::size_t>(k)][i] - (check[i] + shift)) > 1e-4f)
            ok[static_cast<std::size_t>(r)] = 0;
        }
      }
    });
  }
  for (auto& t : ranks) t.join();
  for (int v : ok) correct = correct && v == 1;
  double t = 0;
  for (double s : seconds) t = std::max(t, s);
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  const int p = argc > 1 ? std::atoi(argv[1]) : 2;
  const int buckets = argc > 2 ? std::atoi(argv[2]) : 8;
  const double mib = argc > 3 ? std::atof(argv[3]) : 2.0;
  if (p < 1 || buckets < 1 || !(mib > 0)) {
    std::fprintf(stderr, "usage: overlap [ranks>=1] [buckets>=1] [bucket_mib>0]\n");
    return 2;
  }
  const auto n = static_cast<std::size_t>(mib * 1024 * 1024 / sizeof(float));
  bool correct = true;
  const double serial = run(p, buckets, n, false, correct);
  const double overlapped = run(p, buckets, n, true, correct);
  std::printf(
      "%d ranks, %d buckets of %.1f MiB: one after the other %.1f ms, overlapped %.1f ms, saved %.1f ms "
      "(%.0f%%)\n",
      p, buckets, mib, serial * 1e3, overlapped * 1e3, (serial - overlapped) * 1e3,
      100.0 * (serial - overlapped) / serial);
  std::printf("results %s\n", correct ? "correct" : "WRONG");
  return correct ? 0 : 1;
}
