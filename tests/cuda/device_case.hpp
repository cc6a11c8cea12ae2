#pragma once

// One rank's calls on device buffers, checked against the serial reference: shared by
// the GPU group test (threads), the staged test and the CUDA IPC worker (processes).
// Comm is any of collx's GPU front ends: the untyped calls with a stream at the end.

#include <cuda_runtime.h>
#include <collx/cuda/probe.hpp>

#include <cstddef>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../reference.hpp"
#include "gpu_gate.hpp"

namespace test {

// The start of a multi-process GPU worker: -1 to go on, with the GPUs counted, or the
// exit code: 77 (and why) without a GPU, 1 where a GPU is listed but CUDA fails
// (gpu_gate.hpp), 0 for `--probe`, which asks only that.
inline int worker_start(int argc, char** argv, int& devices) {
  if (const int gate = gpu_gate(); gate >= 0) return gate;
  if (cudaGetDeviceCount(&devices) != cudaSuccess) return 2;
  return argc > 1 && std::string(argv[1]) == "--probe" ? 0 : -1;
}

inline void cuda_ok(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

// A rank's communicator, its own non-blocking stream, device buffers of `cap` bytes each
// and pinned host buffers as large, made once: freeing or synchronous copies while other
// ranks' calls are in flight would wait for their kernels, which wait for this rank.
// Copies go through pinned memory: a cudaMemcpyAsync to or from pageable memory waits in
// the driver until its stream's kernel is done and, on the H200 of the first GPU run,
// kept the other ranks' threads of the process from launching theirs (the group test hung
// on its first calls; the ipc test, a process per rank, passed).
template <class Comm>
struct device_rank {
  Comm comm;
  cudaStream_t stream = nullptr;
  std::byte* d_in = nullptr;
  std::byte* d_out = nullptr;
  std::byte* h_in = nullptr;
  std::byte* h_out = nullptr;
  std::size_t cap = 0;

  template <class... A>
  device_rank(std::size_t bytes, int device, A&&... args) : comm(std::forward<A>(args)...), cap(bytes) {
    cuda_ok(cudaSetDevice(device), "cudaSetDevice");
    cuda_ok(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
    cuda_ok(cudaMalloc(&d_in, cap), "cudaMalloc");
    cuda_ok(cudaMalloc(&d_out, cap), "cudaMalloc");
    cuda_ok(cudaMallocHost(&h_in, cap), "cudaMallocHost");
    cuda_ok(cudaMallocHost(&h_out, cap), "cudaMallocHost");
  }
  device_rank(const device_rank&) = delete;
  device_rank& operator=(const device_rank&) = delete;
  ~device_rank() {
    cudaStreamSynchronize(stream);
    cudaFree(d_in);
    cudaFree(d_out);
    cudaFreeHost(h_in);
    cudaFreeHost(h_out);
    cudaStreamDestroy(stream);
  }
};

// One call; returns the wrong elements of this rank's result (and prints the case).
template <class T, class Comm>
long long device_call(device_rank<Comm>& env, collx::collective coll, collx::algorithm a, collx::reduce_op op,
                      std::size_t n, bool in_place) {
  using collx::collective;
  const int me = env.comm.rank();
  case_buffers<T> b(coll, env.comm.size(), me, n, in_place);
  const std::size_t out_bytes = b.out.size() * sizeof(T);
  const std::size_t in_bytes = b.in.size() * sizeof(T);
  if (out_bytes > env.cap || in_bytes > env.cap) throw std::runtime_error("device buffers too small");
  std::memcpy(env.h_out, b.out.data(), out_bytes);
  cuda_ok(cudaMemcpyAsync(env.d_out, env.h_out, out_bytes, cudaMemcpyHostToDevice, env.stream), "copy out");
  if (!in_place) {
    std::memcpy(env.h_in, b.in.data(), in_bytes);
    cuda_ok(cudaMemcpyAsync(env.d_in, env.h_in, in_bytes, cudaMemcpyHostToDevice, env.stream), "copy in");
  }
  auto* out = reinterpret_cast<T*>(env.d_out);
  const std::size_t mine = static_cast<std::size_t>(me) * n;
  const T* in =
      in_place ? (coll == collective::all_gather ? out + mine : out) : reinterpret_cast<const T*>(env.d_in);
  T* dst = in_place && coll == collective::reduce_scatter ? out + mine : out;
  collx::options o;
  o.algo = a;
  const collx::dtype t = collx::dtype_v<T>;
  switch (coll) {
    case collective::all_reduce: env.comm.all_reduce(in, dst, n, t, op, env.stream, o); break;
    case collective::all_gather: env.comm.all_gather(in, dst, n, t, env.stream, o); break;
    case collective::reduce_scatter: env.comm.reduce_scatter(in, dst, n, t, op, env.stream, o); break;
    default: break;  // the GPU paths run the first three only
  }
  cuda_ok(cudaMemcpyAsync(env.h_out, env.d_out, out_bytes, cudaMemcpyDeviceToHost, env.stream), "copy back");
  if constexpr (requires { env.comm.synchronize(env.stream); }) {
    env.comm.synchronize(env.stream);  // throws if the call failed
  } else {
    cuda_ok(cudaStreamSynchronize(env.stream), "cudaStreamSynchronize");
  }
  std::memcpy(b.out.data(), env.h_out, out_bytes);
  const long long bad = b.wrong(op);
  if (bad != 0) {
    std::printf("rank %d: %s %s %s %s n=%zu %s: %lld wrong\n", me, std::string(to_string(coll)).c_str(),
                std::string(to_string(a)).c_str(), std::string(to_string(t)).c_str(),
                std::string(to_string(op)).c_str(), n, in_place ? "in-place" : "out-of-place", bad);
  }
  return bad;
}

// Products of more than two inputs (each up to 8 in magnitude) are not exact in 16-bit
// floats, which round them in whatever order the algorithm multiplies (and overflow f16
// at p = 8): the exact reference cannot judge them. The kernels' f16 and bf16 products
// are checked bit for bit against the host's in test_cuda_reduce.
template <class T>
bool exact_product(collx::reduce_op op, int p) {
  constexpr bool narrow_float = std::is_same_v<T, collx::half> || std::is_same_v<T, collx::bfloat16>;
  return !(narrow_float && op == collx::reduce_op::prod && p > 2);
}

// Every collective, algorithm and reduction the type supports, for each count, in place
// and not. Adds to `cases`; returns the wrong elements.
template <class T, class Comm>
long long device_matrix(device_rank<Comm>& env, const std::vector<std::size_t>& counts, long long& cases) {
  using collx::collective;
  long long bad = 0;
  for (auto coll : {collective::all_reduce, collective::all_gather, collective::reduce_scatter}) {
    for (auto a : collx::all_algorithms) {
      if (!collx::implements(a, coll)) continue;
      for (auto op : collx::all_reduce_ops) {
        if ((coll == collective::all_gather && op != collx::reduce_op::sum) ||
            !collx::supports(collx::dtype_v<T>, op) || !exact_product<T>(op, env.comm.size()))
          continue;
        for (std::size_t n : counts) {
          for (bool in_place : {false, true}) {
            bad += device_call<T>(env, coll, a, op, n, in_place);
            ++cases;
          }
        }
      }
    }
  }
  return bad;
}

// Every element type: u8 too, whose reference wraps the small signed inputs as u8 holds
// them (case_buffers::reduced), so that its min and max compare unsigned.
template <class Comm>
long long device_all_types(device_rank<Comm>& env, std::size_t big, long long& cases) {
  const std::vector<std::size_t> counts{0, 1, 7, 1001};
  long long bad = 0;
  bad += device_matrix<std::int8_t>(env, counts, cases);
  bad += device_matrix<std::uint8_t>(env, counts, cases);
  bad += device_matrix<std::int32_t>(env, counts, cases);
  bad += device_matrix<std::int64_t>(env, counts, cases);
  bad += device_matrix<collx::half>(env, counts, cases);
  bad += device_matrix<collx::bfloat16>(env, counts, cases);
  bad += device_matrix<float>(env, {0, 1, 7, 1001, big}, cases);
  bad += device_matrix<double>(env, counts, cases);
  return bad;
}

}  // namespace test
