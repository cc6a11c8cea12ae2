// The same all-reduce with every algorithm, its measured time next to what the cost
// model predicts for it (the closed forms the automatic choice uses), and the choice.
// Ranks are threads of this process over the in-process transport.
//
//   compare_algorithms [ranks] [iterations]

#include <collx/collx.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

int main(int argc, char** argv) {
  const int p = argc > 1 ? std::atoi(argv[1]) : 4;
  const int iters = argc > 2 ? std::atoi(argv[2]) : 10;
  if (p < 1 || iters < 1) {
    std::fprintf(stderr, "usage: compare_algorithms [ranks>=1] [iterations>=1]\n");
    return 2;
  }
  const collx::cost_params model = collx::communicator_config{}.model;
  std::printf(
      "# all-reduce, f32 sum, %d ranks as threads; model alpha %.1f us, beta %.2f GB/s, gamma %.2f GB/s\n", p,
      model.alpha * 1e6, 1e-9 / model.beta, 1e-9 / model.gamma);
  std::printf("# %10s %-14s %12s %14s %8s\n", "bytes", "algorithm", "measured(us)", "predicted(us)", "ratio");
  bool all_right = true;
  for (std::size_t bytes : {std::size_t{4} << 10, std::size_t{1} << 20, std::size_t{16} << 20}) {
    const std::size_t n = bytes / sizeof(float);
    const auto pick =
        collx::algorithms::choose(collx::collective::all_reduce, p, static_cast<double>(bytes), model);
    for (auto algo : collx::all_algorithms) {
      if (!collx::implements(algo, collx::collective::all_reduce)) continue;
      collx::local_world world(p);
      std::vector<double> seconds(static_cast<std::size_t>(p));
      std::vector<int> right(static_cast<std::size_t>(p), 0);
      std::vector<std::thread> ranks;
      for (int r = 0; r < p; ++r) {
        ranks.emplace_back([&, r] {
          collx::communicator comm(world.transport(r));
          collx::options o;
          o.algo = algo;
          std::vector<float> in(n, 1.0f), out(n);
          comm.all_reduce(in, out, collx::reduce_op::sum, o);  // warm-up: plan built, pages touched
          const auto t0 = std::chrono::steady_clock::now();
          for (int i = 0; i < iters; ++i) comm.all_reduce(in, out, collx::reduce_op::sum, o);
          seconds[static_cast<std::size_t>(r)] =
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / iters;
          right[static_cast<std::size_t>(r)] =
              out.front() == static_cast<float>(p) && out.back() == static_cast<float>(p);
        });
      }
      for (auto& t : ranks) t.join();
      double t = 0;
      for (std::size_t r = 0; r < seconds.size(); ++r) {
        t = std::max(t, seconds[r]);
        all_right = all_right && right[r] == 1;
      }
      const double predicted = collx::algorithms::predicted_seconds(algo, collx::collective::all_reduce, p,
                                                                    static_cast<double>(bytes), model);
      std::printf("  %10zu %-14s %12.1f %14.1f %8.2f%s\n", bytes, std::string(collx::to_string(algo)).c_str(),
                  t * 1e6, predicted * 1e6, t / predicted, algo == pick ? "  <- auto" : "");
    }
  }
  std::printf("# results %s\n", all_right ? "correct on every rank" : "WRONG");
  return all_right ? 0 : 1;
}
