// The smallest complete collx program: every rank contributes rank+1 and all-reduces, so
// every element ends as 1+2+...+p on every rank.
//
//   build/collx-run -n 4 build/examples/hello_allreduce
//
// init_from_env() reads what the launcher set (collx-run or torchrun-style RANK,
// WORLD_SIZE, MASTER_ADDR, MASTER_PORT; mpirun; srun) and picks the transport: shared
// memory on one host, tcp across hosts (COLLX_TRANSPORT overrides). With no launcher it
// runs as a single rank.

#include <collx/launch/init.hpp>

#include <cstdio>
#include <vector>

int main() {
  collx::communicator comm = collx::init_from_env();
  const int p = comm.size();
  std::vector<float> grads(1000, static_cast<float>(comm.rank() + 1));
  comm.all_reduce(grads, collx::reduce_op::sum);  // in place
  const float want = static_cast<float>(p * (p + 1) / 2);
  std::printf("rank %d of %d: grads[0] = %g (want %g)\n", comm.rank(), p, static_cast<double>(grads[0]),
              static_cast<double>(want));
  return grads.front() == want && grads.back() == want ? 0 : 1;
}
