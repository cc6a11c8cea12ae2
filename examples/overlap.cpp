// Overlapping communication with computation, as a training step does with gradient
// buckets: while bucket k is being all-reduced (an async call returning a request), the
// "backward pass" computes bucket k+1. The step is timed four ways, three runs each (the
// best and the worst printed): the computation alone, the all-reduces alone, the two one after the other, and
// overlapped. Ranks are threads of this process over the in-process transport.
//
// What it shows depends on the machine. The in-process all-reduce is CPU work (copies and
// sums by each communicator's worker thread), so overlap saves time only when cores would
// otherwise be idle: with as many busy threads as cores (2 ranks, each computing while its
// worker reduces, on 2 cores) it saves nothing, and the runs differ by several percent
// either way. Where the transfer needs no core (a network, a GPU's copy engine), overlap
// hides up to the shorter of the two.
//
//   overlap [ranks] [buckets] [bucket_mib]

#include <collx/collx.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

namespace {

using clock_type = std::chrono::steady_clock;

// Stand-in for a backward pass: some arithmetic over the bucket, deterministic.
void compute_gradients(std::vector<float>& bucket, int rank, int k) {
  for (std::size_t i = 0; i < bucket.size(); ++i) {
    float x = static_cast<float>((i + static_cast<std::size_t>(k)) % 97) * 0.01f;
    for (int it = 0; it < 8; ++it) x = x * 0.5f + std::sqrt(x + 1.0f);
    bucket[i] = x + static_cast<float>(rank);
  }
}

enum class mode { compute, communicate, serial, overlapped };

// One rank's step in mode m, timed. communicate: the gradients are computed before the
// clock starts, so only the all-reduces are timed.
double step(collx::communicator& comm, std::vector<std::vector<float>>& grads, int rank, mode m) {
  const int buckets = static_cast<int>(grads.size());
  auto bucket = [&](int k) -> std::vector<float>& { return grads[static_cast<std::size_t>(k)]; };
  if (m == mode::communicate)
    for (int k = 0; k < buckets; ++k) compute_gradients(bucket(k), rank, k);
  std::vector<collx::request> pending;
  const auto t0 = clock_type::now();
  for (int k = 0; k < buckets; ++k) {
    if (m != mode::communicate) compute_gradients(bucket(k), rank, k);
    if (m == mode::compute) continue;
    pending.push_back(comm.all_reduce_async(bucket(k), collx::reduce_op::avg));
    if (m != mode::overlapped) pending.back().wait();  // the blocking way: communicate, then compute on
  }
  for (auto& q : pending) q.wait();
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

// The average over p ranks of (x + rank) is x + (p-1)/2.
bool averaged_right(const std::vector<std::vector<float>>& grads, int p) {
  std::vector<float> check(grads.front().size());
  const float shift = static_cast<float>(p - 1) / 2.0f;
  for (std::size_t k = 0; k < grads.size(); ++k) {
    compute_gradients(check, 0, static_cast<int>(k));
    for (std::size_t i = 0; i < check.size(); i += 997)
      if (std::fabs(grads[k][i] - (check[i] + shift)) > 1e-4f) return false;
  }
  return true;
}

// The slowest rank's time for one step in mode m; `correct` turns false on a wrong average.
double run(int p, int buckets, std::size_t n, mode m, bool& correct) {
  collx::local_world world(p);
  std::vector<double> seconds(static_cast<std::size_t>(p));
  std::vector<int> ok(static_cast<std::size_t>(p), 1);
  std::vector<std::thread> ranks;
  for (int r = 0; r < p; ++r) {
    ranks.emplace_back([&, r] {
      collx::communicator comm(world.transport(r));
      std::vector<std::vector<float>> grads(static_cast<std::size_t>(buckets), std::vector<float>(n));
      seconds[static_cast<std::size_t>(r)] = step(comm, grads, r, m);
      if (m == mode::serial || m == mode::overlapped)
        ok[static_cast<std::size_t>(r)] = averaged_right(grads, p);
    });
  }
  for (auto& t : ranks) t.join();
  for (int v : ok) correct = correct && v == 1;
  return *std::max_element(seconds.begin(), seconds.end());
}

// Best and worst of three runs: the worst says how much this machine's noise moves a figure.
struct timing {
  double best = 0, worst = 0;
};

timing three_runs(int p, int buckets, std::size_t n, mode m, bool& correct) {
  timing t;
  t.best = t.worst = run(p, buckets, n, m, correct);
  for (int i = 1; i < 3; ++i) {
    const double s = run(p, buckets, n, m, correct);
    t.best = std::min(t.best, s);
    t.worst = std::max(t.worst, s);
  }
  return t;
}

void print(int p, int buckets, double mib, const timing (&t)[4]) {
  const unsigned cores = std::thread::hardware_concurrency();
  std::printf("%d ranks as threads on %u cores, %d buckets of %.1f MiB, best (worst) of 3 runs:\n", p, cores,
              buckets, mib);
  const char* names[] = {"computation alone", "all-reduces alone", "one after the other", "overlapped"};
  for (int m = 0; m < 4; ++m)
    std::printf("  %-20s %8.1f ms (%.1f)\n", names[m], t[m].best * 1e3, t[m].worst * 1e3);
  const double saved = t[2].best - t[3].best;
  const double most = std::min(t[0].best, t[1].best);
  const double noise = std::max(t[2].worst - t[2].best, t[3].worst - t[3].best);
  std::printf(
      "overlapped against one after the other: %+.1f ms (%+.0f%%). Overlap can save at most %.1f ms\n",
      -saved * 1e3, -100.0 * saved / t[2].best, most * 1e3);
  std::printf(
      "(the shorter alone); runs of one way differ here by up to %.1f ms: a difference smaller than\n"
      "that, or a saving larger than %.1f ms, is this machine's noise, not overlap.\n",
      noise * 1e3, most * 1e3);
  std::printf(
      "The in-process all-reduce is CPU work (copies and sums on each communicator's worker\n"
      "thread), so overlap saves time only when cores would otherwise idle");
  std::printf(".\n");
  if (static_cast<unsigned>(2 * p) >= cores)
    std::printf(
        "Here %d ranks, each computing while its worker reduces, keep %d threads busy on %u cores:\n"
        "expect no saving.\n",
        p, 2 * p, cores);
  std::printf(
      "Over a network or a GPU copy engine the transfer needs no core, and overlap can hide\n"
      "up to the shorter of the two.\n");
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
  timing t[4];
  for (mode m : {mode::compute, mode::communicate, mode::serial, mode::overlapped})
    t[static_cast<int>(m)] = three_runs(p, buckets, n, m, correct);
  print(p, buckets, mib, t);
  std::printf("results %s\n", correct ? "correct" : "WRONG");
  return correct ? 0 : 1;
}
