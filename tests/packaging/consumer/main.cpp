#include <collx/collx.hpp>

#include <cstdio>
#include <thread>
#include <vector>

int main() {
  collx::local_world world(3);
  std::vector<int> ok(3, 0);
  std::vector<std::thread> ranks;
  for (int r = 0; r < 3; ++r) {
    ranks.emplace_back([&, r] {
      collx::communicator comm(world.transport(r));
      std::vector<float> v(5, 1.0f);
      comm.all_reduce(v, collx::reduce_op::sum);
      ok[static_cast<std::size_t>(r)] = v[4] == 3.0f;
    });
  }
  for (auto& t : ranks) t.join();
  if (ok != std::vector<int>{1, 1, 1}) return 1;
  std::printf("consumer: all_reduce ok (collx %s)\n", collx::version_string);
  return 0;
}
