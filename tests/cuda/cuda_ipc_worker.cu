// One rank of the CUDA IPC test: started by collx-run (2 processes on one GPU, or one
// GPU each where there are several), it runs every collective, algorithm, element type
// and reduction on device buffers and checks each result against the serial reference.
// `--probe` only says whether a GPU is there (exit 77 if not), before collx-run starts.
// Exit: 0 all right, 1 a wrong result, 2 an error.

#include <collx/init.hpp>
#include <collx/transport/cuda_ipc.cuh>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "../reference.hpp"

using collx::algorithm;
using collx::collective;
using collx::dtype_v;
using collx::reduce_op;
using collx::to_string;

namespace {

void ok(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

struct env_t {
  collx::cuda::ipc_communicator& comm;
  cudaStream_t stream;
  std::byte* d_in;
  std::byte* d_out;
  std::size_t cap;
};

template <class T>
long long one_call(env_t& env, collective coll, algorithm a, reduce_op op, std::size_t n, bool in_place) {
  const int me = env.comm.rank();
  test::case_buffers<T> b(coll, env.comm.size(), me, n, in_place);
  const std::size_t out_bytes = b.out.size() * sizeof(T);
  if (out_bytes > env.cap || b.in.size() * sizeof(T) > env.cap) throw std::runtime_error("buffers too small");
  ok(cudaMemcpyAsync(env.d_out, b.out.data(), out_bytes, cudaMemcpyHostToDevice, env.stream), "copy out");
  if (!in_place) {
    ok(cudaMemcpyAsync(env.d_in, b.in.data(), b.in.size() * sizeof(T), cudaMemcpyHostToDevice, env.stream),
       "copy in");
  }
  auto* out = reinterpret_cast<T*>(env.d_out);
  const T* in = in_place ? (coll == collective::all_gather ? out + static_cast<std::size_t>(me) * n : out)
                         : reinterpret_cast<const T*>(env.d_in);
  T* dst = in_place && coll == collective::reduce_scatter ? out + static_cast<std::size_t>(me) * n : out;
  collx::options o;
  o.algo = a;
  switch (coll) {
    case collective::all_reduce: env.comm.all_reduce(in, dst, n, dtype_v<T>, op, env.stream, o); break;
    case collective::all_gather: env.comm.all_gather(in, dst, n, dtype_v<T>, env.stream, o); break;
    case collective::reduce_scatter:
      env.comm.reduce_scatter(in, dst, n, dtype_v<T>, op, env.stream, o);
      break;
  }
  ok(cudaMemcpyAsync(b.out.data(), env.d_out, out_bytes, cudaMemcpyDeviceToHost, env.stream), "copy back");
  ok(cudaStreamSynchronize(env.stream), "sync");
  const long long bad = b.wrong(op);
  if (bad != 0) {
    std::printf("rank %d: %s %s %s %s n=%zu %s: %lld wrong\n", me, std::string(to_string(coll)).c_str(),
                std::string(to_string(a)).c_str(), std::string(to_string(dtype_v<T>)).c_str(),
                std::string(to_string(op)).c_str(), n, in_place ? "in-place" : "out-of-place", bad);
  }
  return bad;
}

template <class T>
long long matrix(env_t& env, std::vector<std::size_t> counts, int& cases) {
  long long bad = 0;
  for (auto coll : {collective::all_reduce, collective::all_gather, collective::reduce_scatter}) {
    for (auto a : collx::all_algorithms) {
      if (!collx::implements(a, coll)) continue;
      for (auto op : collx::all_reduce_ops) {
        if ((coll == collective::all_gather && op != reduce_op::sum) || !collx::supports(dtype_v<T>, op))
          continue;
        for (std::size_t n : counts) {
          for (bool in_place : {false, true}) {
            bad += one_call<T>(env, coll, a, op, n, in_place);
            ++cases;
          }
        }
      }
    }
  }
  return bad;
}

}  // namespace

int main(int argc, char** argv) {
  int devices = 0;
  const cudaError_t e = cudaGetDeviceCount(&devices);
  if (e != cudaSuccess || devices == 0) {
    std::printf("skipped: no CUDA device (%s)\n", e != cudaSuccess ? cudaGetErrorString(e) : "none found");
    return 77;
  }
  if (argc > 1 && std::strcmp(argv[1], "--probe") == 0) return 0;
  try {
    const collx::launch_info li = collx::launch_from_env();
    auto st = collx::store_from(li, std::chrono::seconds(60));
    const int device = li.local_rank % devices;
    ok(cudaSetDevice(device), "cudaSetDevice");
    collx::cuda::ipc_communicator comm(*st, li.rank, li.size, device);
    env_t env{comm, nullptr, nullptr, nullptr, std::size_t{8} << 20};
    ok(cudaStreamCreateWithFlags(&env.stream, cudaStreamNonBlocking), "stream");
    ok(cudaMalloc(&env.d_in, env.cap), "cudaMalloc");
    ok(cudaMalloc(&env.d_out, env.cap), "cudaMalloc");
    int cases = 0;
    long long bad = 0;
    const std::vector<std::size_t> counts{0, 1, 7, 1001};
    bad += matrix<std::int8_t>(env, counts, cases);
    bad += matrix<std::int32_t>(env, counts, cases);
    bad += matrix<std::int64_t>(env, counts, cases);
    bad += matrix<collx::half>(env, counts, cases);
    bad += matrix<collx::bfloat16>(env, counts, cases);
    bad += matrix<float>(env, {0, 1, 7, 1001, (std::size_t{1} << 20) + 3}, cases);
    bad += matrix<double>(env, counts, cases);
    std::printf("rank %d: %d calls on device %d, %lld wrong elements\n", li.rank, cases, device, bad);
    return bad == 0 ? 0 : 1;
  } catch (const std::exception& x) {
    std::printf("error: %s\n", x.what());
    return 2;
  }
}
