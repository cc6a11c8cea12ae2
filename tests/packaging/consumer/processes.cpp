// The consumer as processes: what a user's program launched by collx-run looks like.
#include <collx/launch/init.hpp>

#include <cstdio>
#include <vector>

int main() {
  collx::communicator comm = collx::init_from_env();
  std::vector<float> v(5, 1.0f);
  comm.all_reduce(v, collx::reduce_op::sum);
  if (v[4] != static_cast<float>(comm.size())) return 1;
  std::printf("consumer: processes all_reduce ok (rank %d of %d)\n", comm.rank(), comm.size());
  return 0;
}
