// One rank of the CUDA IPC test: started by collx-run (2 processes on one GPU, or one
// GPU each where there are several), it runs every collective, algorithm, element type
// and reduction on device buffers and checks each result against the serial reference.
// `--probe` only says whether a GPU is there (exit 77 if not), before collx-run starts.
// Exit: 0 all right, 1 a wrong result, 2 an error.

#include <collx/launch/init.hpp>
#include <collx/cuda/ipc.cuh>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "device_case.hpp"

int main(int argc, char** argv) {
  int devices = 0;
  if (const int rc = test::worker_start(argc, argv, devices); rc >= 0) return rc;
  try {
    const collx::launch_info li = collx::launch_from_env();
    auto st = collx::store_from(li, std::chrono::seconds(60));
    const int device = li.local_rank % devices;
    test::cuda_ok(cudaSetDevice(device), "cudaSetDevice");
    test::device_rank<collx::cuda::ipc_communicator> env(std::size_t{16} << 20, device, *st, li.rank, li.size,
                                                         device);
    long long cases = 0;
    const long long bad = test::device_all_types(env, (std::size_t{1} << 20) + 3, cases);
    std::printf("rank %d: %lld calls on device %d, %lld wrong elements\n", li.rank, cases, device, bad);
    return bad == 0 ? 0 : 1;
  } catch (const std::exception& x) {
    std::printf("error: %s\n", x.what());
    return 2;
  }
}
