// One rank of the GPU hierarchical test: started by collx-run, with `--nodes K` naming
// K emulated nodes of consecutive ranks (COLLX_NODE_ID; CUDA IPC inside each, tcp
// through pinned memory across; without it, the real hosts), every rank a
// process on the same GPU or its own. Every collective, algorithm, element type and
// reduction on device buffers, each way of composing the all-reduce, checked against
// the serial reference; then bad input, refused alike on every rank.
// `--probe` only says whether a GPU is there (exit 77 if not), before collx-run starts.
// Exit: 0 all right, 1 a wrong result, 2 an error.

#include <collx/cuda/hierarchical.cuh>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "device_case.hpp"

namespace {

// The hierarchy with its all-reduce way fixed, for device_case.hpp's calls.
struct one_way {
  collx::cuda::hierarchical h;
  collx::hier_way way = collx::hier_way::hierarchical;

  explicit one_way(int device) : h(device) {}
  int rank() const { return h.rank(); }
  int size() const { return h.size(); }
  void all_reduce(const void* in, void* out, std::size_t n, collx::dtype t, collx::reduce_op op,
                  cudaStream_t s, const collx::options& o) {
    h.all_reduce(in, out, n, t, op, s, o, way);
  }
  void all_gather(const void* in, void* out, std::size_t n, collx::dtype t, cudaStream_t s,
                  const collx::options& o) {
    h.all_gather(in, out, n, t, s, o);
  }
  void reduce_scatter(const void* in, void* out, std::size_t n, collx::dtype t, collx::reduce_op op,
                      cudaStream_t s, const collx::options& o) {
    h.reduce_scatter(in, out, n, t, op, s, o);
  }
  void synchronize(cudaStream_t s) { h.synchronize(s); }
};

// Bad input: a host pointer and an unsupported reduction are refused on every rank,
// and the device buffer is left as it was.
int refusals(test::device_rank<one_way>& env) {
  std::vector<float> host(16, 1.0f);
  int missed = 0;
  auto refused = [&](auto call, const char* what) {
    try {
      call();
      std::printf("rank %d: %s was not refused\n", env.comm.rank(), what);
      ++missed;
    } catch (const collx::error& e) {
      if (e.kind() != collx::errc::invalid_argument) {
        std::printf("rank %d: %s: wrong kind: %s\n", env.comm.rank(), what, e.what());
        ++missed;
      }
    }
  };
  test::cuda_ok(cudaMemsetAsync(env.d_out, 0x5a, 64, env.stream), "memset");
  refused(
      [&] {
        env.comm.h.all_reduce(host.data(), env.d_out, 16, collx::dtype::f32, collx::reduce_op::sum,
                              env.stream);
      },
      "a host input");
  refused(
      [&] {
        env.comm.h.all_reduce(env.d_in, env.d_out, 16, collx::dtype::i32, collx::reduce_op::avg, env.stream);
      },
      "avg of i32");
  unsigned char back[64];
  test::cuda_ok(cudaMemcpyAsync(back, env.d_out, 64, cudaMemcpyDeviceToHost, env.stream), "copy back");
  test::cuda_ok(cudaStreamSynchronize(env.stream), "sync");
  for (unsigned char b : back) missed += b != 0x5a;
  return missed;
}

}  // namespace

int main(int argc, char** argv) {
  int devices = 0;
  if (const int rc = test::worker_start(argc, argv, devices); rc >= 0) return rc;
  try {
    const collx::launch_info li = collx::launch_from_env();
    if (argc > 2 && std::strcmp(argv[1], "--nodes") == 0) {
      const int k = std::atoi(argv[2]);
      const std::string node = "node" + std::to_string(li.rank * k / li.size);
      setenv("COLLX_NODE_ID", node.c_str(), 1);
    }
    const int device = li.local_rank % devices;
    test::cuda_ok(cudaSetDevice(device), "cudaSetDevice");
    test::device_rank<one_way> env(std::size_t{16} << 20, device, device);
    const auto& t = env.comm.h.layout();
    long long cases = 0;
    long long bad = test::device_all_types(env, (std::size_t{1} << 18) + 3, cases);
    for (auto way : {collx::hier_way::leader, collx::hier_way::flat, collx::hier_way::automatic}) {
      env.comm.way = way;
      for (std::size_t n :
           {std::size_t{0}, std::size_t{1}, std::size_t{7}, std::size_t{1001}, std::size_t{65537}}) {
        for (bool in_place : {false, true}) {
          for (auto op : {collx::reduce_op::sum, collx::reduce_op::avg, collx::reduce_op::max}) {
            bad += test::device_call<float>(env, collx::collective::all_reduce, collx::algorithm::ring, op, n,
                                            in_place);
            ++cases;
          }
          bad +=
              test::device_call<std::int32_t>(env, collx::collective::all_reduce, collx::algorithm::automatic,
                                              collx::reduce_op::sum, n, in_place);
          ++cases;
        }
      }
    }
    const int missed = refusals(env);
    std::printf(
        "rank %d (node %d, local %d, device %d): %lld calls, %lld wrong elements, %d refusals missed\n",
        li.rank, t.node, t.local, device, cases, bad, missed);
    return bad == 0 && missed == 0 ? 0 : 1;
  } catch (const std::exception& x) {
    std::printf("error: %s\n", x.what());
    return 2;
  }
}
