#pragma once

// GPU ranks in different processes on one host, over CUDA IPC (ipc.hpp holds
// the protocol, proven on host memory by the tests; this is its GPU memory):
//   - each rank's inbox is cudaMalloc'd on its GPU and exported once with
//     cudaIpcGetMemHandle; peers map it once with cudaIpcOpenMemHandle;
//   - pieces move with cudaMemcpyAsync on the rank's own stream (the copy engines:
//     processes sharing a GPU must not spin in kernels, see DESIGN), reductions run as
//     short kernels (exec/cuda_reduce.cuh), each complete before its piece is published.
//
// Calls block the calling thread until this rank's part is done, and wait first for the
// work already on the caller's stream: the result is then ready for any stream. (They
// are not stream-ordered and cannot be captured into a graph: the in-process group,
// collx/cuda/group.cuh, is.)
//
//   auto st = collx::store_from(collx::launch_from_env(), timeout);
//   collx::cuda::ipc_communicator comm(*st, rank, size, /*device*/ 0);
//   comm.all_reduce(d_in, d_out, n, collx::dtype::f32, collx::reduce_op::sum, stream);

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdio>
#include <string>
#include <utility>

#include "collx/cuda/group.cuh"
#include "collx/exec/cuda_reduce.cuh"
#include "collx/ipc.hpp"

namespace collx::cuda {

// The ipc protocol's memory on a GPU. All work goes to one stream of its own.
class cuda_ipc_api {
 public:
  static constexpr bool device_memory = true;
  struct memory {
    detail::device_ptr<std::byte> p;
    std::byte* get() const noexcept { return p.get(); }
  };
  struct mapping {
    std::byte* base = nullptr;
    int device = 0;
    mapping() = default;
    mapping(mapping&& o) noexcept : base(std::exchange(o.base, nullptr)), device(o.device) {}
    mapping& operator=(mapping&& o) noexcept {
      if (this != &o) {
        close();
        base = std::exchange(o.base, nullptr);
        device = o.device;
      }
      return *this;
    }
    ~mapping() { close(); }
    std::byte* get() const noexcept { return base; }
    void close() noexcept {
      if (base == nullptr) return;
      int old = 0;
      cudaGetDevice(&old);
      cudaSetDevice(device);
      cudaIpcCloseMemHandle(base);
      cudaSetDevice(old);
      base = nullptr;
    }
  };

  explicit cuda_ipc_api(int device) : device_(device) {
    install_device_memory_probe();
    detail::device_guard g(device_);
    check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
  }
  cuda_ipc_api(cuda_ipc_api&& o) noexcept : device_(o.device_), stream_(std::exchange(o.stream_, nullptr)) {}
  cuda_ipc_api& operator=(cuda_ipc_api&&) = delete;
  ~cuda_ipc_api() {
    if (stream_ != nullptr) {
      detail::device_guard g(device_);
      cudaStreamDestroy(stream_);
    }
  }

  int device() const noexcept { return device_; }
  cudaStream_t stream() const noexcept { return stream_; }

  memory alloc(std::size_t bytes) {
    return {detail::device_alloc<std::byte>(device_, std::max<std::size_t>(bytes, 1))};
  }

  // The handle in hex, then '/' and the PCI bus id of the GPU that holds the memory, so
  // that a peer on another GPU can check that it may copy into it.
  std::string export_handle(const memory& m) const {
    detail::device_guard g(device_);
    cudaIpcMemHandle_t h;
    check(cudaIpcGetMemHandle(&h, m.get()), "cudaIpcGetMemHandle");
    std::string hex;
    const auto* b = reinterpret_cast<const unsigned char*>(&h);
    for (std::size_t i = 0; i < sizeof h; ++i) {
      char two[3];
      std::snprintf(two, sizeof two, "%02x", b[i]);
      hex += two;
    }
    char bus[32] = {};
    check(cudaDeviceGetPCIBusId(bus, sizeof bus, device_), "cudaDeviceGetPCIBusId");
    return hex + "/" + bus;
  }

  mapping open(const std::string& published, std::size_t /*bytes*/) {
    cudaIpcMemHandle_t h;
    auto* b = reinterpret_cast<unsigned char*>(&h);
    const std::string hex = published.substr(0, published.find('/'));
    if (hex.size() != 2 * sizeof h) {
      throw error(errc::transport, "cuda_ipc", error::no_rank, error::no_rank, "malformed IPC handle");
    }
    if (hex.size() < published.size()) require_peer_access(published.substr(hex.size() + 1));
    for (std::size_t i = 0; i < sizeof h; ++i)
      b[i] = static_cast<unsigned char>(std::stoul(hex.substr(2 * i, 2), nullptr, 16));
    detail::device_guard g(device_);
    void* p = nullptr;
    check(cudaIpcOpenMemHandle(&p, h, cudaIpcMemLazyEnablePeerAccess),
          "cudaIpcOpenMemHandle (ranks on one host; a process cannot open its own handle)");
    mapping m;
    m.base = static_cast<std::byte*>(p);
    m.device = device_;
    return m;
  }

  void copy(std::byte* dst, const std::byte* src, std::size_t bytes) {
    detail::device_guard g(device_);
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_), "cudaMemcpyAsync");
    check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  }
  template <class T, reduce_op Op>
  void reduce(T* dst, const T* a, const T* b, std::size_t n) {
    detail::device_guard g(device_);
    cuda::reduce(dtype_v<T>, Op, dst, a, b, n, stream_);
    check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  }
  void finish_avg(dtype t, std::byte* data, std::size_t n, int divisor) {
    detail::device_guard g(device_);
    cuda::finish_avg(t, data, n, divisor, stream_);
    check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  }
  void zero(std::byte* p, std::size_t bytes) {
    detail::device_guard g(device_);
    check(cudaMemsetAsync(p, 0, bytes, stream_), "cudaMemsetAsync");
    check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  }

 private:
  // Pieces are copied from this rank's GPU into the peer's inbox: on another GPU that
  // needs peer access, which CUDA IPC does not give where the hardware has none (the
  // copy would fail, or worse). Refused here, when the communicator is made. A GPU this
  // process cannot see (CUDA_VISIBLE_DEVICES) cannot be checked: cudaIpcOpenMemHandle
  // decides.
  void require_peer_access(const std::string& bus) const {
    int theirs = -1;
    if (cudaDeviceGetByPCIBusId(&theirs, bus.c_str()) != cudaSuccess) {
      cudaGetLastError();
      return;
    }
    if (theirs == device_) return;
    int can = 0;
    check(cudaDeviceCanAccessPeer(&can, device_, theirs), "cudaDeviceCanAccessPeer");
    if (can == 0) {
      throw error(errc::unsupported, "cuda_ipc", error::no_rank, error::no_rank,
                  "GPU " + std::to_string(device_) + " cannot access GPU " + std::to_string(theirs) + " (" +
                      bus +
                      ")'s memory: CUDA IPC between them needs peer access; carry the buffers through host "
                      "memory instead (collx::cuda::staged over shm)");
    }
  }

  int device_ = 0;
  cudaStream_t stream_ = nullptr;
};

// One rank of a job whose ranks are processes on one host, each with a GPU (the same
// one or its own). Device pointers in, device pointers out.
class ipc_communicator {
 public:
  ipc_communicator(store& st, int rank, int size, int device, ipc_options opt = {},
                   const std::string& prefix = "collx/cuda_ipc")
      : c_(st, rank, size, cuda_ipc_api(device), std::move(opt), prefix) {}

  int rank() const noexcept { return c_.rank(); }
  int size() const noexcept { return c_.size(); }
  int device() const noexcept { return api().device(); }

  void all_reduce(const void* in, void* out, std::size_t count, dtype t, reduce_op op, cudaStream_t stream,
                  const options& o = {}) {
    ready(in, out, count, stream, "all_reduce");
    c_.all_reduce(in, out, count, t, op, o);
  }
  void all_gather(const void* in, void* out, std::size_t count, dtype t, cudaStream_t stream,
                  const options& o = {}) {
    ready(in, out, count, stream, "all_gather");
    c_.all_gather(in, out, count, t, o);
  }
  void reduce_scatter(const void* in, void* out, std::size_t count, dtype t, reduce_op op,
                      cudaStream_t stream, const options& o = {}) {
    ready(in, out, count, stream, "reduce_scatter");
    c_.reduce_scatter(in, out, count, t, op, o);
  }

  // For symmetry with the in-process group: the calls are done on return already.
  void synchronize(cudaStream_t stream) {
    detail::device_guard g(device());
    check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  }

  void abort() noexcept { c_.abort(); }
  std::string failure() const { return c_.failure(); }

 private:
  const cuda_ipc_api& api() const { return const_cast<collx::ipc_communicator<cuda_ipc_api>&>(c_).api(); }

  // Device memory only (checked before a byte moves), and the caller's earlier work done.
  void ready(const void* in, const void* out, std::size_t count, cudaStream_t stream, std::string_view coll) {
    require_device_memory(coll, rank(), in, out, count, device());
    detail::device_guard g(device());
    check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  }

  collx::ipc_communicator<cuda_ipc_api> c_;
};

}  // namespace collx::cuda
