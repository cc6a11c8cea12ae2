// A stopgap benchmark until collx-bench lands: all-reduce of float32 sums over the
// in-process transport, sizes from 8 B to 64 MiB, reported as nccl-tests reports them.
// time: mean over iterations after warm-up, the maximum over ranks.
// algbw = bytes / time; busbw = algbw * 2(p-1)/p for all-reduce.
// Usage: local_sweep [ranks] [max_bytes] [algorithm: auto ring rd rabenseifner tree]

#include <collx/collx.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

int main(int argc, char** argv) {
  const int p = argc > 1 ? std::atoi(argv[1]) : 2;
  const std::size_t max_bytes = argc > 2 ? std::strtoull(argv[2], nullptr, 10) : (64u << 20);
  const auto algo = collx::parse_algorithm(argc > 3 ? argv[3] : "auto");
  if (p < 1 || max_bytes < 8 || !algo || !collx::implements(*algo, collx::collective::all_reduce)) {
    std::fprintf(stderr, "usage: local_sweep [ranks>=1] [max_bytes>=8] [auto|ring|rd|rabenseifner|tree]\n");
    return 2;
  }
  collx::options opt;
  opt.algo = *algo;
  std::printf("# collx local_sweep: all_reduce (%s), f32 sum, %d ranks as threads (local transport)\n",
              argc > 3 ? argv[3] : "auto", p);
  std::printf("# %10s %12s %6s %6s %10s %9s %9s %7s\n", "size", "count", "type", "redop", "time(us)", "algbw",
              "busbw", "#wrong");
  long long wrong_total = 0;
  for (std::size_t bytes = 8; bytes <= max_bytes; bytes *= 2) {
    const std::size_t n = bytes / sizeof(float);
    const int iters = bytes >= (8u << 20) ? 5 : bytes >= (256u << 10) ? 20 : 100;
    const int warmup = 2;
    collx::local_world world(p);
    std::vector<double> seconds(static_cast<std::size_t>(p));
    std::atomic<long long> wrong{0};
    std::vector<std::thread> threads;
    for (int r = 0; r < p; ++r) {
      threads.emplace_back([&, r] {
        collx::communicator comm(world.transport(r));
        std::vector<float> in(n, static_cast<float>(r + 1)), out(n);
        for (int i = 0; i < warmup; ++i) comm.all_reduce(in, out, collx::reduce_op::sum, opt);
        const auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < iters; ++i) comm.all_reduce(in, out, collx::reduce_op::sum, opt);
        const auto t1 = std::chrono::steady_clock::now();
        seconds[static_cast<std::size_t>(r)] = std::chrono::duration<double>(t1 - t0).count() / iters;
        const float want = static_cast<float>(p * (p + 1) / 2);
        wrong += std::count_if(out.begin(), out.end(), [&](float x) { return x != want; });
      });
    }
    for (auto& t : threads) t.join();
    const double t = *std::max_element(seconds.begin(), seconds.end());
    const double algbw = static_cast<double>(bytes) / t / 1e9;
    const double busbw = algbw * 2.0 * (p - 1) / p;
    wrong_total += wrong.load();
    std::printf("  %10zu %12zu %6s %6s %10.2f %9.3f %9.3f %7lld\n", bytes, n, "float", "sum", t * 1e6, algbw,
                busbw, wrong.load());
  }
  std::printf("# Out of bounds values : %lld %s\n", wrong_total, wrong_total == 0 ? "OK" : "FAILED");
  return wrong_total == 0 ? 0 : 1;
}
