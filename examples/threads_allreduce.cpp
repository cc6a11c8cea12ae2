// hello_allreduce with ranks as threads: four ranks, threads of this process over the
// in-process transport, sum a vector. Each rank contributes rank+1, so every element
// ends as 1+2+3+4 = 10 on every rank. No launcher needed: build/examples/threads_allreduce

#include <collx/collx.hpp>

#include <cstdio>
#include <thread>
#include <vector>

int main() {
  constexpr int ranks = 4;
  collx::local_world world(ranks);
  std::vector<std::thread> threads;
  std::vector<int> ok(ranks, 0);
  for (int r = 0; r < ranks; ++r) {
    threads.emplace_back([&world, &ok, r] {
      collx::communicator comm(world.transport(r));
      std::vector<float> grads(1000, static_cast<float>(comm.rank() + 1));
      comm.all_reduce(grads, collx::reduce_op::sum);  // in place
      ok[static_cast<std::size_t>(r)] = grads.front() == 10.0f && grads.back() == 10.0f;
      std::printf("rank %d of %d: grads[0] = %g\n", comm.rank(), comm.size(), static_cast<double>(grads[0]));
    });
  }
  for (auto& t : threads) t.join();
  for (int v : ok) {
    if (v == 0) return 1;
  }
  return 0;
}
