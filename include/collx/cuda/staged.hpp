#pragma once

// GPU buffers over a host transport (tcp, shm, mpi): the input is copied to pinned host
// memory, the collective runs on the host communicator, the result is copied back. This
// is how collx carries GPU data between hosts until a GPU-aware network transport
// exists, and the path to hold beside NCCL's socket transport (NCCL_NET=Socket), which
// stages through host memory too.
//
// Ordering: the call waits for the work already on `stream` (the input must be ready),
// runs the collective on the calling thread, enqueues the copy back on `stream` and
// returns; so the result is seen through the stream, as with the GPU collectives, but
// the call blocks its thread for the collective and cannot be captured into a graph.
//
// Host code: needs the CUDA runtime's header and library (collx::cuda), not nvcc.

#include <cuda_runtime.h>

#include <cstddef>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "collx/communicator.hpp"
#include "collx/cuda/probe.hpp"

namespace collx::cuda {

class staged {
 public:
  explicit staged(collx::communicator& c) : c_(c) { install_device_memory_probe(); }
  staged(const staged&) = delete;
  staged& operator=(const staged&) = delete;
  ~staged() {
    if (copied_ != nullptr) {
      cudaEventSynchronize(copied_);
      cudaEventDestroy(copied_);
    }
    if (host_ != nullptr) cudaFreeHost(host_);
    for (std::byte* old : retired_) cudaFreeHost(old);
  }

  // The untyped calls of collx::communicator, on device pointers. In place as there.
  void all_reduce(const void* in, void* out, std::size_t count, dtype t, reduce_op op, cudaStream_t stream,
                  const options& o = {}) {
    const std::size_t bytes = checked_bytes("all_reduce", in, out, count, t, 2);
    std::byte* h = host(2 * bytes, stream);
    copy_in(h, in, bytes, stream);
    if (in == out) {
      c_.all_reduce(h, h, count, t, op, o);
    } else {
      c_.all_reduce(h, h + bytes, count, t, op, o);
      h += bytes;
    }
    copy_out(out, h, bytes, stream);
  }
  void all_gather(const void* in, void* out, std::size_t count, dtype t, cudaStream_t stream,
                  const options& o = {}) {
    const std::size_t bytes = checked_bytes("all_gather", in, out, count, t, c_.size());
    const std::size_t all = bytes * static_cast<std::size_t>(c_.size());
    std::byte* h = host(all, stream);
    std::byte* mine = h + bytes * static_cast<std::size_t>(c_.rank());
    copy_in(mine, in, bytes, stream);
    c_.all_gather(mine, h, count, t, o);  // in place in the host buffer
    copy_out(out, h, all, stream);
  }
  void reduce_scatter(const void* in, void* out, std::size_t count, dtype t, reduce_op op,
                      cudaStream_t stream, const options& o = {}) {
    const std::size_t bytes = checked_bytes("reduce_scatter", in, out, count, t, c_.size());
    const std::size_t all = bytes * static_cast<std::size_t>(c_.size());
    std::byte* h = host(all, stream);
    copy_in(h, in, all, stream);
    std::byte* mine = h + bytes * static_cast<std::size_t>(c_.rank());
    c_.reduce_scatter(h, mine, count, t, op, o);  // in place in the host buffer
    copy_out(out, mine, bytes, stream);
  }

  int rank() const noexcept { return c_.rank(); }
  int size() const noexcept { return c_.size(); }
  collx::communicator& host_communicator() noexcept { return c_; }

 private:
  // What can be known before a byte moves; the host communicator checks the rest.
  std::size_t checked_bytes(std::string_view coll, const void* in, const void* out, std::size_t count,
                            dtype t, int factor) const {
    const auto bad = [&](const std::string& why) {
      throw error(errc::invalid_argument, coll, c_.rank(), error::no_rank, why);
    };
    if (static_cast<unsigned>(t) > static_cast<unsigned>(dtype::f64)) bad("unknown element type");
    if (count > std::numeric_limits<std::size_t>::max() / size_of(t) / static_cast<std::size_t>(factor)) {
      bad("count " + std::to_string(count) + " overflows the address space");
    }
    if (count != 0 && (in == nullptr || out == nullptr))
      bad(std::string(in == nullptr ? "input" : "output") + " is null");
    return count * size_of(t);
  }

  // Pinned memory, grown to the largest call and reused; portable, so that calls whose
  // streams are on different GPUs may all use it.
  std::byte* host(std::size_t bytes, cudaStream_t stream) {
    bind_event(stream);
    if (bytes <= cap_) return host_;
    // Outgrown buffers are kept until the end (cudaFreeHost synchronizes the device), and
    // the buffer at least doubles, so that what is kept stays below what is in use.
    if (host_ != nullptr) retired_.push_back(host_);
    host_ = nullptr;
    const std::size_t want = bytes > 2 * cap_ ? bytes : 2 * cap_;
    void* p = nullptr;
    check(cudaHostAlloc(&p, want, cudaHostAllocPortable),
          "cudaHostAlloc of " + std::to_string(want) + " bytes");
    host_ = static_cast<std::byte*>(p);
    cap_ = want;
    return host_;
  }

  // The previous call's copy back, on whatever stream (which may be gone by now), may
  // still read the buffer: an event, not the stream, says when it is done. The event
  // lives on the device of this call's stream (an event records only on a stream of its
  // own device): made anew, once the last one is done, when the call's device changes.
  void bind_event(cudaStream_t stream) {
    int device = 0;
    check(cudaStreamGetDevice(stream, &device), "cudaStreamGetDevice");
    if (copied_ != nullptr) {
      check(cudaEventSynchronize(copied_), "cudaEventSynchronize");
      if (device == event_device_) return;
      cudaEventDestroy(copied_);
      copied_ = nullptr;
    }
    int old = 0;
    check(cudaGetDevice(&old), "cudaGetDevice");
    if (old != device) check(cudaSetDevice(device), "cudaSetDevice");
    const cudaError_t e = cudaEventCreateWithFlags(&copied_, cudaEventDisableTiming);
    if (old != device) cudaSetDevice(old);
    check(e, "cudaEventCreate");
    event_device_ = device;
  }
  // Waits for the stream's earlier work (which produced `in`, and any copy back that
  // still reads the staging buffer), then for the copy itself.
  static void copy_in(std::byte* h, const void* in, std::size_t bytes, cudaStream_t stream) {
    if (bytes != 0) check(cudaMemcpyAsync(h, in, bytes, cudaMemcpyDeviceToHost, stream), "copy to the host");
    check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  }
  void copy_out(void* out, const std::byte* h, std::size_t bytes, cudaStream_t stream) {
    if (bytes != 0) check(cudaMemcpyAsync(out, h, bytes, cudaMemcpyHostToDevice, stream), "copy to the GPU");
    check(cudaEventRecord(copied_, stream), "cudaEventRecord");
  }

  collx::communicator& c_;
  std::byte* host_ = nullptr;
  std::size_t cap_ = 0;
  std::vector<std::byte*> retired_;  // outgrown pinned buffers, freed at the end
  cudaEvent_t copied_ = nullptr;     // recorded after each copy back, on event_device_
  int event_device_ = -1;
};

}  // namespace collx::cuda
