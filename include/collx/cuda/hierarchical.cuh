#pragma once

// Hierarchical collectives on GPU buffers: one process per GPU rank, nodes as the
// launcher finds them (COLLX_NODE_ID, else the host name; every node the same size).
// Inside a node the ranks meet over CUDA IPC (collx::cuda::ipc_communicator: copy
// engines and short kernels, no kernel spinning across processes); across nodes over
// tcp, through pinned host memory (collx::cuda::staged). The composition is
// algorithms::hier_levels, priced by the host's cost model (algorithms::hier_predict):
// for a large all-reduce, a reduce-scatter inside the node, an all-reduce of each rank's
// shard across nodes (L groups at once), an all-gather inside the node; so only n/L of
// each rank's bytes ever go through host memory. (Host ranks need no such class: one
// communicator spans nodes and runs algorithm::hierarchical as a schedule.)
//
//   collx::cuda::hierarchical h(device);            // a launched job (collx-run, torchrun, ...)
//   h.all_reduce(d_grads, d_grads, n, collx::dtype::f32, collx::reduce_op::sum, stream);
//
// Calls block their thread until this rank's part is done (as ipc_communicator's and
// staged's do), waiting first for the work already on `stream` (a stream of this rank's
// GPU); copies between levels go on `stream`, so the result is seen through it. They
// cannot be captured in a graph. Arguments are checked before any level moves a byte:
// input that is bad on every rank is refused on every rank; a rank whose input alone is
// bad refuses, and its peers' first level call times out naming it (NCCL's would hang).

#include <cuda_runtime.h>

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

#include "collx/algorithms/hierarchical.hpp"
#include "collx/algorithms/select.hpp"
#include "collx/cuda/ipc.cuh"
#include "collx/cuda/probe.hpp"
#include "collx/cuda/staged.hpp"
#include "collx/launch/levels.hpp"

namespace collx::cuda {

namespace detail {

// A GPU front end's calls with the stream fixed: the untyped calls the composition makes.
template <class C>
struct on_stream {
  C& c;
  cudaStream_t s;
  void all_reduce(const void* in, void* out, std::size_t n, dtype t, reduce_op op, const options& o) {
    c.all_reduce(in, out, n, t, op, s, o);
  }
  void all_gather(const void* in, void* out, std::size_t n, dtype t, const options& o) {
    c.all_gather(in, out, n, t, s, o);
  }
  void reduce_scatter(const void* in, void* out, std::size_t n, dtype t, reduce_op op, const options& o) {
    c.reduce_scatter(in, out, n, t, op, s, o);
  }
};

}  // namespace detail

class hierarchical {
 public:
  // From a launched job's environment (collx/launch/init.hpp), on GPU `device`.
  explicit hierarchical(int device, communicator_config cfg = {}, algorithms::hierarchical_options ho = {},
                        ipc_options io = {})
      : hierarchical(collx::detail::launched_job(cfg.timeout), device, cfg, ho, std::move(io)) {}

  hierarchical(const std::shared_ptr<store>& st, const launch_info& li, int device,
               communicator_config cfg = {}, algorithms::hierarchical_options ho = {}, ipc_options io = {})
      : b_(collx::detail::hier_setup(st, li, cfg)),
        ho_(ho),
        device_(device),
        world_(b_.world),
        across_(b_.across) {
    {
      collx::cuda::detail::device_guard g(device_);
      check(cudaEventCreateWithFlags(&copied_, cudaEventDisableTiming), "cudaEventCreate");
    }
    io.timeout = b_.cfg.timeout;
    if (io.job_id.empty()) io.job_id = b_.node_job;
    prefix_store hier = collx::detail::hier_keys(*st);
    node_ = std::make_unique<ipc_communicator>(hier, b_.t.local, b_.t.per_node, device, std::move(io),
                                               "node" + std::to_string(b_.t.node) + "/cuda_ipc");
  }

  hierarchical(const hierarchical&) = delete;  // the staged levels point into it
  hierarchical& operator=(const hierarchical&) = delete;
  ~hierarchical() {
    if (copied_ != nullptr) {
      cudaEventSynchronize(copied_);
      cudaEventDestroy(copied_);
    }
  }

  int rank() const noexcept { return b_.world.rank(); }
  int size() const noexcept { return b_.world.size(); }
  int device() const noexcept { return device_; }
  const node_layout& layout() const noexcept { return b_.t; }
  double predict(hier_way way, double bytes) const { return algorithms::hier_predict(b_.t, ho_, way, bytes); }
  hier_way choose(double bytes) const { return algorithms::hier_choose(b_.t, ho_, bytes); }

  // In place when in == out. `way`: flat, hierarchical or leader; automatic asks the model.
  void all_reduce(const void* in, void* out, std::size_t count, dtype t, reduce_op op, cudaStream_t stream,
                  const options& o = {}, hier_way way = hier_way::automatic) {
    collx::cuda::detail::device_guard g(device_);  // staged has no GPU of its own
    const std::size_t bytes = checked(collective::all_reduce, in, out, count, t, op, o);
    if (count == 0) return;
    if (way == hier_way::automatic) way = choose(static_cast<double>(bytes));
    if (b_.t.nodes == 1) return node_->all_reduce(in, out, count, t, op, stream, o);
    if (b_.t.per_node == 1) return across_.all_reduce(in, out, count, t, op, stream, o);
    if (way == hier_way::flat) {
      options ring = o;
      if (ring.algo == algorithm::automatic) ring.algo = algorithm::ring;  // what predict() prices
      return world_.all_reduce(in, out, count, t, op, stream, ring);
    }
    compose(stream, [&](const auto& levels, auto& mem) {
      auto* data = static_cast<std::byte*>(out);
      if (in != out) mem.copy(data, static_cast<const std::byte*>(in), bytes);
      levels.all_reduce(data, count, t, op, way, o);
    });
  }

  // out holds size() blocks of count, rank q's at q * count; in place when in is this
  // rank's block of out.
  void all_gather(const void* in, void* out, std::size_t count, dtype t, cudaStream_t stream,
                  const options& o = {}) {
    collx::cuda::detail::device_guard g(device_);  // staged has no GPU of its own
    checked(collective::all_gather, in, out, count, t, reduce_op::sum, o);
    if (count == 0) return;
    if (b_.t.nodes == 1) return node_->all_gather(in, out, count, t, stream, o);
    if (b_.t.per_node == 1) return across_.all_gather(in, out, count, t, stream, o);
    compose(stream, [&](const auto& levels, auto&) {
      levels.all_gather(static_cast<const std::byte*>(in), static_cast<std::byte*>(out), count, t, o);
    });
  }

  // in holds size() blocks of count; out receives the reduction of every rank's block
  // rank(). In place when out is this rank's block of in.
  void reduce_scatter(const void* in, void* out, std::size_t count, dtype t, reduce_op op,
                      cudaStream_t stream, const options& o = {}) {
    collx::cuda::detail::device_guard g(device_);  // staged has no GPU of its own
    checked(collective::reduce_scatter, in, out, count, t, op, o);
    if (count == 0) return;
    if (b_.t.nodes == 1) return node_->reduce_scatter(in, out, count, t, op, stream, o);
    if (b_.t.per_node == 1) return across_.reduce_scatter(in, out, count, t, op, stream, o);
    compose(stream, [&](const auto& levels, auto&) {
      levels.reduce_scatter(static_cast<const std::byte*>(in), static_cast<std::byte*>(out), count, t, op, o);
    });
  }

  // For symmetry with the in-process group: waits for the stream's work.
  void synchronize(cudaStream_t stream) {
    collx::cuda::detail::device_guard g(device_);
    check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  }

 private:
  hierarchical(const collx::detail::launched& j, int device, communicator_config cfg,
               algorithms::hierarchical_options ho, ipc_options io)
      : hierarchical(j.st, j.li, device, cfg, ho, std::move(io)) {
    collx::detail::retire_store(*j.st, j.li, cfg.timeout);
  }

  // Copies on the call's stream (this rank's GPU is current for the whole call, each
  // public call's guard); scratch in device memory, kept between calls.
  struct device_memory {
    hierarchical& h;
    cudaStream_t s;
    void copy(std::byte* dst, const std::byte* src, std::size_t bytes) const {
      if (bytes != 0) check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, s), "cudaMemcpyAsync");
    }
    void copy2d(std::byte* dst, std::size_t dpitch, const std::byte* src, std::size_t spitch,
                std::size_t width, std::size_t rows) const {
      if (width == 0 || rows == 0) return;
      // One copy where the pitches are within what a 2D copy takes (cudaDevAttrMaxPitch
      // is 2^31 - 1 on current GPUs); row by row beyond.
      constexpr std::size_t max_pitch = std::size_t{1} << 30;
      if (dpitch > max_pitch || spitch > max_pitch) {
        for (std::size_t r = 0; r < rows; ++r) copy(dst + r * dpitch, src + r * spitch, width);
        return;
      }
      check(cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, rows, cudaMemcpyDeviceToDevice, s),
            "cudaMemcpy2DAsync");
    }
    std::byte* scratch(int i, std::size_t bytes) const { return h.scratch(i, bytes, s); }
  };

  // Runs f on the composition of this call: the levels bound to its stream.
  template <class F>
  void compose(cudaStream_t s, F&& f) {
    // The last call's copies out of scratch, on whatever stream, may still be running.
    check(cudaEventSynchronize(copied_), "cudaEventSynchronize");
    detail::on_stream<ipc_communicator> node{*node_, s};
    detail::on_stream<staged> across{across_, s};
    device_memory mem{*this, s};
    f(algorithms::hier_levels{b_.t, node, across, mem}, mem);
    check(cudaEventRecord(copied_, s), "cudaEventRecord");
  }

  // Grown on the call's stream (cudaMallocAsync, and cudaFreeAsync for the old one, once
  // this call's copies so far are done): cudaMalloc and cudaFree would synchronize the
  // device, peers' work included. Freed at teardown.
  std::byte* scratch(int i, std::size_t bytes, cudaStream_t s) {
    auto& a = scratch_[i];
    if (a.bytes < bytes) {
      check(cudaStreamSynchronize(s), "cudaStreamSynchronize");  // this call's copies so far
      collx::cuda::detail::device_guard g(device_);
      if (a.p) check(cudaFreeAsync(a.p.release(), s), "cudaFreeAsync");
      a.bytes = 0;
      void* p = nullptr;
      check(cudaMallocAsync(&p, bytes, s), "cudaMallocAsync of " + std::to_string(bytes) + " bytes");
      // Ready before the levels' own streams touch it (the IPC level copies on its own).
      check(cudaStreamSynchronize(s), "cudaStreamSynchronize");
      a.p = collx::cuda::detail::device_ptr<std::byte>(static_cast<std::byte*>(p),
                                                       collx::cuda::detail::device_free<std::byte>{device_});
      a.bytes = bytes;
    }
    return a.p.get();
  }

  // Argument checks every rank makes alike, before any level moves a byte.
  std::size_t checked(collective c, const void* in, void* out, std::size_t count, dtype t, reduce_op op,
                      const options& o) const {
    collx::detail::check_call(c, in, out, count, t, op, o, rank(), size(), false);
    require_device_memory(to_string(c), rank(), in, out, count, device_);
    return count * size_of(t);
  }

  struct area {
    collx::cuda::detail::device_ptr<std::byte> p;
    std::size_t bytes = 0;
  };

  collx::detail::hier_base b_;
  algorithms::hierarchical_options ho_;
  int device_ = 0;
  staged world_;
  staged across_;
  std::unique_ptr<ipc_communicator> node_;
  area scratch_[2];
  cudaEvent_t copied_ = nullptr;  // recorded after each composed call's copies
};

}  // namespace collx::cuda
