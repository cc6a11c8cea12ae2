#pragma once

// GPU collectives in one process: a group of ranks, each a thread driving its own
// stream on a GPU (the same GPU for all, or one each), and stream-ordered calls as in
// NCCL: a call checks its arguments, enqueues one kernel on the caller's stream and
// returns; completion is seen through the stream, and the calls can be captured into a
// CUDA graph once each call shape has run once (its program is then on the device).
//
//   collx::cuda::group g({0, 0, 0, 0});      // four ranks on GPU 0
//   // on rank r's thread:
//   auto comm = g.rank(r);
//   comm.all_reduce(d_in, d_out, n, collx::dtype::f32, collx::reduce_op::sum, stream);
//   comm.synchronize(stream);                // waits, and throws if the call failed
//
// Errors a kernel meets (a rank that never calls, a rank that made another call) stop
// every rank's kernel within the timeout; the next call or synchronize() on each rank
// throws collx::error naming the rank at fault, and the communicator refuses later calls.

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "collx/algorithms/select.hpp"
#include "collx/config.hpp"
#include "collx/core/error.hpp"
#include "collx/core/options.hpp"
#include "collx/cuda/staged.hpp"
#include "collx/exec/cuda.cuh"
#include "collx/exec/peer.hpp"
#include "collx/front/check.hpp"
#include "collx/front/failure.hpp"
#include "collx/front/program.hpp"
#include "collx/front/resolve.hpp"

namespace collx::cuda {

struct group_options {
  // Thread blocks per rank, each an independent call over a slice (peer_memory::lanes_for);
  // COLLX_GPU_LANES overrides the default, as NCCL_MAX_NCHANNELS does NCCL's.
  int lanes =
      static_cast<int>(collx::detail::count_from_env("COLLX_GPU_LANES", 4, 1, cuda::detail::max_lanes));
  // Threads per block; COLLX_GPU_THREADS overrides the default (as NCCL_NTHREADS).
  unsigned threads = static_cast<unsigned>(collx::detail::count_from_env("COLLX_GPU_THREADS", 512, 32, 1024));
  std::uint32_t slots = 4;              // per channel
  std::size_t slot_bytes = 128 * 1024;  // a piece; messages are cut to fit slots*slot_bytes
  // COLLX_TIMEOUT overrides this default, as on every entry.
  std::chrono::milliseconds timeout = collx::detail::timeout_from_env(defaults::timeout);
};

namespace detail {

// Restores the caller's current device when it goes.
class device_guard {
 public:
  explicit device_guard(int device) {
    check(cudaGetDevice(&old_), "cudaGetDevice");
    if (old_ != device) check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~device_guard() { cudaSetDevice(old_); }
  device_guard(const device_guard&) = delete;
  device_guard& operator=(const device_guard&) = delete;

 private:
  int old_ = 0;
};

template <class T>
struct device_free {
  int device = 0;
  void operator()(T* p) const noexcept {
    int old = 0;
    cudaGetDevice(&old);
    cudaSetDevice(device);
    cudaFree(p);
    cudaSetDevice(old);
  }
};
template <class T>
using device_ptr = std::unique_ptr<T, device_free<T>>;

// Stream-ordered memory (cudaMallocAsync), freed on the stream that owns it, after the
// work queued there: cudaFree would wait for the whole device, including peers' kernels
// that spin waiting for this rank. The stream must outlive the pointer.
template <class T>
struct stream_free {
  int device = 0;
  cudaStream_t stream = nullptr;
  void operator()(T* p) const noexcept {
    int old = 0;
    cudaGetDevice(&old);
    cudaSetDevice(device);
    cudaFreeAsync(p, stream);
    cudaSetDevice(old);
  }
};
template <class T>
using stream_ptr = std::unique_ptr<T, stream_free<T>>;

// bytes of stream-ordered memory on `device`, allocated and later freed on `stream`.
inline stream_ptr<std::byte> stream_alloc(int device, std::size_t bytes, cudaStream_t stream) {
  device_guard g(device);
  void* p = nullptr;
  check(cudaMallocAsync(&p, std::max<std::size_t>(bytes, 16), stream),
        "cudaMallocAsync of " + std::to_string(bytes) + " bytes");
  return stream_ptr<std::byte>(static_cast<std::byte*>(p), stream_free<std::byte>{device, stream});
}

template <class T>
device_ptr<T> device_alloc(int device, std::size_t bytes) {
  device_guard g(device);
  void* p = nullptr;
  check(cudaMalloc(&p, bytes), "cudaMalloc of " + std::to_string(bytes) + " bytes");
  return device_ptr<T>(static_cast<T*>(p), device_free<T>{device});
}

// The group's shared memory: mailboxes on each receiver's GPU, and the control words
// (failure flags, waits, status) in mapped host memory that every GPU and the host can
// reach. Allocated when the group is made and freed when it goes (cudaFree and
// cudaFreeHost synchronize the device: only at teardown).
struct group_state {
  group_options opt;
  communicator_config cfg;  // the timeout is opt's; the rest from the environment
  std::vector<int> devices;
  peer_memory::world_view w;
  std::vector<device_ptr<std::byte>> box_memory;             // per rank: its lanes' mailboxes
  std::vector<device_ptr<peer_memory::mailbox>> box_tables;  // per rank: every mailbox's address, on its GPU
  void* control = nullptr;                                   // cudaHostAlloc'd, mapped
  std::uint64_t* failure_flags = nullptr;                    // [ranks + 1]: peer_memory::world_view::failed
  std::uint64_t* waiting = nullptr;
  peer_memory::status* status = nullptr;                   // [rank * lanes + lane]
  std::unique_ptr<collx::detail::failure_latch[]> failed;  // [rank]: each rank's first failure

  ~group_state() {
    if (control != nullptr) cudaFreeHost(control);
  }
};

}  // namespace detail

class communicator;

// The ranks of one process. Made once, before the ranks' threads call; then each thread
// takes its communicator with rank(r).
class group {
 public:
  // Streams each rank drives on its GPU: the caller's and its upload stream.
  static constexpr int streams_per_rank = 2;

  // CUDA_DEVICE_MAX_CONNECTIONS as CUDA reads it: 8 unless set.
  static int hardware_queues() {
    const char* conn = std::getenv("CUDA_DEVICE_MAX_CONNECTIONS");
    return conn != nullptr && *conn != '\0' ? std::atoi(conn) : 8;
  }

  explicit group(std::vector<int> devices, group_options opt = {})
      : s_(std::make_shared<detail::group_state>()) {
    const int p = static_cast<int>(devices.size());
    check_arguments(devices, opt);
    open_peer_access(devices);
    check_kernels_fit(devices, opt);
    install_device_memory_probe();
    auto& s = *s_;
    s.opt = opt;
    s.cfg.timeout = opt.timeout;
    s.devices = std::move(devices);
    s.w.ranks = p;
    s.w.lanes = opt.lanes;
    s.w.slots = opt.slots;
    s.w.slot_bytes = opt.slot_bytes;
    s.failed = std::make_unique<collx::detail::failure_latch[]>(static_cast<std::size_t>(p));
    map_control_words();
    upload_mailbox_tables(allocate_mailboxes());
    for (int d : s.devices) {
      detail::device_guard g(d);
      cuda::check(cudaDeviceSynchronize(), "setting up the group");
    }
  }

  int size() const noexcept { return s_->w.ranks; }

  // Rank r's communicator, for the one thread that will drive it.
  communicator rank(int r) const;

  // Stops every rank's kernels at their next wait, from any thread: each rank's next call
  // or synchronize() throws errc::aborted, and so do all later calls.
  // (The application's own failure flag, after the ranks': no rank writes it.)
  void abort() noexcept {
    std::atomic_ref<std::uint64_t>(s_->failure_flags[s_->w.ranks])
        .store(static_cast<std::uint64_t>(peer_memory::outcome::aborted), std::memory_order_release);
  }

 private:
  [[noreturn]] static void invalid(const std::string& why) {
    throw error(errc::invalid_argument, "cuda::group", error::no_rank, error::no_rank, why);
  }

  static void check_arguments(const std::vector<int>& devices, const group_options& opt) {
    const int p = static_cast<int>(devices.size());
    if (p < 1 || p > peer_memory::max_ranks)
      invalid("a group has 1 to " + std::to_string(peer_memory::max_ranks) + " ranks");
    if (opt.lanes < 1 || opt.lanes > cuda::detail::max_lanes) {
      invalid("lanes must be 1 to " + std::to_string(cuda::detail::max_lanes));
    }
    if (opt.threads < 32 || opt.threads > 1024 || opt.threads % 32 != 0)
      invalid("threads must be a multiple of 32 up to 1024");
    if (opt.slots < 1) invalid("slots must be at least 1");
    if (opt.slot_bytes < 16 || opt.slot_bytes % 16 != 0)
      invalid("slot_bytes must be a positive multiple of 16");
    if (opt.timeout <= std::chrono::milliseconds::zero()) invalid("timeout must be positive");
    int count = 0;
    cuda::check(cudaGetDeviceCount(&count), "cudaGetDeviceCount");
    for (int d : devices) {
      if (d < 0 || d >= count)
        invalid("device " + std::to_string(d) + " does not exist (" + std::to_string(count) + " found)");
    }
  }

  // Ranks on different GPUs write each other's mailboxes: they need peer access.
  static void open_peer_access(const std::vector<int>& devices) {
    for (int a : devices) {
      for (int b : devices) {
        if (a == b) continue;
        int can = 0;
        cuda::check(cudaDeviceCanAccessPeer(&can, a, b), "cudaDeviceCanAccessPeer");
        if (can == 0)
          invalid("GPU " + std::to_string(a) + " cannot access GPU " + std::to_string(b) + "'s memory");
        detail::device_guard g(a);
        const cudaError_t e = cudaDeviceEnablePeerAccess(b, 0);
        if (e == cudaErrorPeerAccessAlreadyEnabled) {
          cudaGetLastError();
        } else {
          cuda::check(e, "cudaDeviceEnablePeerAccess");
        }
      }
    }
  }

  // Every rank's kernel must be resident at once, since each waits for the others': the
  // blocks must fit the GPU, and the streams its hardware queues (a stream that shares
  // a queue can sit behind another rank's next call, which waits for this one). Each
  // rank drives two streams: the caller's, and its own upload stream, whose first-call
  // upload and synchronize must not queue behind a peer's spinning kernel.
  static void check_kernels_fit(const std::vector<int>& devices, const group_options& opt) {
    for (int d : devices) {
      const auto here = static_cast<int>(std::count(devices.begin(), devices.end(), d));
      int sms = 0, per_sm = 0;
      detail::device_guard g(d);
      cuda::check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, d), "cudaDeviceGetAttribute");
      cuda::check(
          cudaOccupancyMaxActiveBlocksPerMultiprocessor(
              &per_sm, cuda::detail::peer_kernel<float, reduce_op::sum>, static_cast<int>(opt.threads), 0),
          "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
      if (static_cast<long>(here) * opt.lanes > static_cast<long>(sms) * per_sm) {
        invalid(std::to_string(here) + " ranks of " + std::to_string(opt.lanes) + " lanes need " +
                std::to_string(here * opt.lanes) + " resident blocks on GPU " + std::to_string(d) +
                ", which holds " + std::to_string(sms * per_sm) + ": fewer lanes or threads");
      }
      const int queues = hardware_queues();
      if (streams_per_rank * here > queues) {
        invalid(std::to_string(here) + " ranks on GPU " + std::to_string(d) + " drive " +
                std::to_string(streams_per_rank * here) +
                " streams (each rank's own and its upload stream) and need as many hardware queues; "
                "CUDA_DEVICE_MAX_CONNECTIONS is " +
                std::to_string(queues) +
                ": set it (up to 32) in the environment before the program's first CUDA call, and leave "
                "room for the application's other streams");
      }
    }
  }

  // The failure flags, the waits and the status words, in mapped host memory.
  void map_control_words() {
    auto& s = *s_;
    const auto lanes = static_cast<std::size_t>(s.opt.lanes);
    const auto up = static_cast<std::size_t>(s.w.ranks);
    const std::size_t control_bytes =
        (up + 1 + up * lanes) * sizeof(std::uint64_t) + up * lanes * sizeof(peer_memory::status);
    cuda::check(cudaHostAlloc(&s.control, control_bytes, cudaHostAllocMapped | cudaHostAllocPortable),
                "cudaHostAlloc of the control words");
    std::memset(s.control, 0, control_bytes);
    s.failure_flags = static_cast<std::uint64_t*>(s.control);
    s.waiting = s.failure_flags + up + 1;
    s.status = reinterpret_cast<peer_memory::status*>(s.waiting + up * lanes);
    for (std::size_t i = 0; i < up * lanes; ++i) s.status[i] = peer_memory::status{};
    // With unified addressing (every 64-bit platform CUDA supports) the mapped host
    // pointer is the device pointer too.
    s.w.failed = s.failure_flags;
    s.w.waiting = s.waiting;
  }

  // Each rank's lanes' mailboxes, zeroed on its GPU; returns every mailbox's address,
  // [rank * lanes + lane].
  std::vector<peer_memory::mailbox> allocate_mailboxes() {
    auto& s = *s_;
    const auto lanes = static_cast<std::size_t>(s.opt.lanes);
    const auto up = static_cast<std::size_t>(s.w.ranks);
    const std::size_t each = (peer_memory::mailbox_bytes(s.w) + 255) / 256 * 256;
    std::vector<peer_memory::mailbox> table(up * lanes);
    for (std::size_t r = 0; r < up; ++r) {
      auto mem = detail::device_alloc<std::byte>(s.devices[r], each * lanes);
      detail::device_guard g(s.devices[r]);
      cuda::check(cudaMemset(mem.get(), 0, each * lanes), "cudaMemset of the mailboxes");
      for (std::size_t j = 0; j < lanes; ++j)
        table[r * lanes + j] = peer_memory::mailbox_at(mem.get() + j * each, s.w);
      s.box_memory.push_back(std::move(mem));
    }
    return table;
  }

  // A copy of the mailbox table on each rank's GPU.
  void upload_mailbox_tables(const std::vector<peer_memory::mailbox>& table) {
    auto& s = *s_;
    const auto up = static_cast<std::size_t>(s.w.ranks);
    for (std::size_t r = 0; r < up; ++r) {
      auto t = detail::device_alloc<peer_memory::mailbox>(s.devices[r],
                                                          table.size() * sizeof(peer_memory::mailbox));
      detail::device_guard g(s.devices[r]);
      cuda::check(cudaMemcpy(t.get(), table.data(), table.size() * sizeof(peer_memory::mailbox),
                             cudaMemcpyHostToDevice),
                  "copying the mailbox table");
      s.box_tables.push_back(std::move(t));
    }
  }

  std::shared_ptr<detail::group_state> s_;
};

class communicator {
 public:
  communicator(communicator&&) noexcept = default;
  communicator& operator=(communicator&&) = delete;
  // Frees this rank's programs and scratch on its upload stream once its last call
  // (eager, or a graph's replay launched before this) is done: never a device-wide
  // synchronize. Graphs captured from this communicator must not be launched after it.
  ~communicator() {
    if (upload_ && done_) cudaStreamWaitEvent(upload_.get(), done_.get(), 0);  // any current device
  }

  int rank() const noexcept { return rank_; }
  int size() const noexcept { return g_->w.ranks; }
  int device() const noexcept { return g_->devices[static_cast<std::size_t>(rank_)]; }

  // The untyped calls, as in NCCL: device pointers, a count per rank and a dtype.
  // In place when in == out (all_reduce), in == out + rank*count (all_gather), or
  // out == in + rank*count (reduce_scatter).
  void all_reduce(const void* in, void* out, std::size_t count, dtype t, reduce_op op, cudaStream_t stream,
                  const options& o = {}) {
    enqueue(collective::all_reduce, in, out, count, t, op, stream, o);
  }
  void all_gather(const void* in, void* out, std::size_t count, dtype t, cudaStream_t stream,
                  const options& o = {}) {
    enqueue(collective::all_gather, in, out, count, t, reduce_op::sum, stream, o);
  }
  void reduce_scatter(const void* in, void* out, std::size_t count, dtype t, reduce_op op,
                      cudaStream_t stream, const options& o = {}) {
    enqueue(collective::reduce_scatter, in, out, count, t, op, stream, o);
  }

  // Typed forms: T is a collx element type (float, double, collx::half, ...).
  template <element T>
  void all_reduce(const T* in, T* out, std::size_t count, reduce_op op, cudaStream_t stream,
                  const options& o = {}) {
    all_reduce(in, out, count, dtype_v<T>, op, stream, o);
  }
  template <element T>
  void all_gather(const T* in, T* out, std::size_t count, cudaStream_t stream, const options& o = {}) {
    all_gather(in, out, count, dtype_v<T>, stream, o);
  }
  template <element T>
  void reduce_scatter(const T* in, T* out, std::size_t count, reduce_op op, cudaStream_t stream,
                      const options& o = {}) {
    reduce_scatter(in, out, count, dtype_v<T>, op, stream, o);
  }

  // Waits for the stream, then throws if a call of this rank failed (like ncclCommGetAsyncError).
  void synchronize(cudaStream_t stream) {
    {
      detail::device_guard g(device());
      cuda::check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    }
    check_async("synchronize");
  }

  // Empty while healthy; after a failure, why.
  std::string failure() const { return latch().why(); }

 private:
  friend class group;
  communicator(std::shared_ptr<detail::group_state> g, int r) : g_(std::move(g)), rank_(r) {}

  struct cached_program {
    collx::detail::call_shape key;
    peer_memory::program_image image;  // the host copy stays: the upload is asynchronous
    detail::stream_ptr<std::byte> bytes;
    peer_memory::program_view view;
  };

  [[noreturn]] void invalid(std::string_view coll, const std::string& why) const {
    throw error(errc::invalid_argument, coll, rank_, error::no_rank, why);
  }

  // A kernel of this rank that stopped left its reason in the status words.
  void check_async(std::string_view coll) {
    latch().check(coll, rank_, "make a new group");
    const auto lanes = static_cast<std::size_t>(g_->w.lanes);
    const peer_memory::status* worst = nullptr;
    for (std::size_t j = 0; j < lanes; ++j) {
      const peer_memory::status& s = g_->status[static_cast<std::size_t>(rank_) * lanes + j];
      const auto code = std::atomic_ref<peer_memory::outcome>(const_cast<peer_memory::outcome&>(s.code))
                            .load(std::memory_order_acquire);
      if (code == peer_memory::outcome::ok) continue;
      if (worst == nullptr ||
          (worst->code == peer_memory::outcome::peer_failed && code != peer_memory::outcome::peer_failed))
        worst = &s;
    }
    if (worst == nullptr) {
      const std::uint64_t word =
          std::atomic_ref<std::uint64_t>(g_->failure_flags[g_->w.ranks]).load(std::memory_order_acquire);
      if (word == 0) return;
      latch().set("the group was aborted");
      throw error(errc::aborted, coll, rank_, error::no_rank, "the group was aborted");
    }
    const error e = peer_memory::to_error(*worst, coll, rank_, size(), "Is every rank's thread calling");
    latch().set(e.what());
    throw e;
  }

  // A private stream for uploads and allocations: never the caller's (which may be
  // capturing), and synchronizing it waits for nothing of other ranks'.
  cudaStream_t upload_stream() {
    if (!upload_) {
      cudaStream_t st = nullptr;
      cuda::check(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking), "cudaStreamCreate");
      upload_.reset(st);
    }
    return upload_.get();
  }

  // Stream-ordered allocation on the upload stream, freed there too (cudaFreeAsync): a
  // plain cudaMalloc or cudaFree may synchronize the device, and so wait for other
  // ranks' kernels that wait for this rank.
  detail::stream_ptr<std::byte> allocate(std::size_t bytes) {
    return detail::stream_alloc(device(), bytes, upload_stream());
  }

  void refuse_in_capture(cudaStream_t stream, std::string_view coll, const char* what) const {
    cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    cuda::check(cudaStreamIsCapturing(stream, &cs), "cudaStreamIsCapturing");
    if (cs != cudaStreamCaptureStatusNone) {
      invalid(coll, std::string(what) + ": run this call once outside the capture, then capture it");
    }
  }

  const peer_memory::program_view& program(const collx::detail::call_shape& key, cudaStream_t stream) {
    for (auto& c : programs_) {
      if (c.key == key) return c.view;
    }
    refuse_in_capture(stream, to_string(key.coll), "this call's shape has no program on the GPU yet");
    cached_program c{key, peer_memory::program_for(key, rank_, size()), {}, {}};
    c.bytes = allocate(c.image.bytes.size());
    cuda::check(cudaMemcpyAsync(c.bytes.get(), c.image.bytes.data(), c.image.bytes.size(),
                                cudaMemcpyHostToDevice, upload_stream()),
                "copying a program to the GPU");
    // Done before any stream's kernel can read it.
    cuda::check(cudaStreamSynchronize(upload_stream()), "cudaStreamSynchronize");
    c.view = c.image.view_at(c.bytes.get());
    scratch_need_ = std::max<std::size_t>(scratch_need_, c.image.scratch_count);
    // Kept while the communicator lives: freeing device memory may synchronize the device.
    programs_.push_back(std::move(c));
    return programs_.back().view;
  }

  void enqueue(collective coll, const void* in, void* out, std::size_t count, dtype t, reduce_op op,
               cudaStream_t stream, const options& o) {
    const std::string_view name = to_string(coll);
    check_async(name);
    const collx::detail::checked_call k =
        collx::detail::check_call(coll, in, out, count, t, op, o, rank_, size(), false);
    const std::size_t es = size_of(t);
    // A count-0 call still runs: its empty pieces carry its signature to every peer, so
    // that count 0 here and more elsewhere is a mismatch, not a timeout (exec/peer.hpp).
    if (count != 0) check_addressable(name, in, out);

    detail::device_guard guard(device());
    const auto& s = *g_;
    // The call number is taken below, once nothing can refuse the call.
    collx::detail::resolved_call r =
        collx::detail::resolve(coll, count, t, op, o, s.cfg, size(), seq_, s.opt.slots * s.opt.slot_bytes);

    // Everything that can refuse the call comes first (programs and scratch refuse in a
    // capture): a call refused on one rank must not use up a call number, or its later
    // calls would carry signatures its peers' do not.
    const int lanes = peer_memory::lanes_for(coll, count, es, s.opt.lanes, s.opt.slot_bytes);
    cuda::detail::launch_args args = prepare_lanes(coll, k, count, es, op, r, lanes, stream);
    ensure_scratch(stream, name, es * static_cast<std::size_t>(lanes));
    for (int j = 0; j < lanes; ++j) {
      args.lanes[j].scratch = scratch_.get() + static_cast<std::size_t>(j) * scratch_need_ * es;
    }
    const bool capturing = is_capturing(stream);
    order_after_last_call(stream, capturing);

    r.env.seq = seq_++;
    for (int j = 0; j < lanes; ++j) args.lanes[j].sig = signature(r.env);
    cuda::detail::launch_peer(t, op, args, lanes, s.opt.threads, stream);
    if (capturing) {
      // The graph records done_ when it replays (an external record node), so that the
      // calls after a replay, eager or another graph's, wait for it.
      cuda::check(cudaEventRecordWithFlags(done_.get(), stream, cudaEventRecordExternal),
                  "cudaEventRecordWithFlags(external)");
      captured_ = true;
    } else {
      cuda::check(cudaEventRecord(done_.get(), stream), "cudaEventRecord");
      last_ = stream;
    }
  }

  // Both buffers must be memory this rank's GPU can address: device memory, managed
  // memory or mapped host memory. Pageable host memory would fault in the kernel.
  void check_addressable(std::string_view name, const void* in, void* out) const {
    for (const void* ptr : {in, static_cast<const void*>(out)}) {
      cudaPointerAttributes at{};
      const cudaError_t e = cudaPointerGetAttributes(&at, ptr);
      if (e != cudaSuccess || at.type == cudaMemoryTypeUnregistered || at.devicePointer == nullptr) {
        cudaGetLastError();
        invalid(name, std::string(ptr == in ? "input" : "output") +
                          " is not memory the GPU can address (device, managed or mapped host memory); "
                          "host vectors go through collx::communicator");
      }
    }
  }

  // The kernel's arguments but for scratch and signatures: each lane's program (fetched,
  // or uploaded on first use) over its slice (front/program.hpp's lane_shape), buffers
  // and status word, and where avg divides its part of the result.
  cuda::detail::launch_args prepare_lanes(collective coll, const collx::detail::checked_call& checked,
                                          std::size_t count, std::size_t element_size, reduce_op op,
                                          const collx::detail::resolved_call& resolved, int lanes,
                                          cudaStream_t stream) {
    const auto& s = *g_;
    cuda::detail::launch_args args{};
    args.w = s.w;
    args.w.boxes = s.box_tables[static_cast<std::size_t>(rank_)].get();
    args.divisor = op == reduce_op::avg ? size() : 0;
    const collx::detail::call_shape whole{coll, resolved.algo, count, resolved.segment, checked.in_place};
    const region res = result_region(coll, rank_, count, checked.in_place, size());
    for (int j = 0; j < lanes; ++j) {
      const collx::detail::lane_part part = collx::detail::lane_shape(whole, element_size, lanes, j);
      const std::size_t lo = part.first * element_size;
      peer_memory::lane_call& c = args.lanes[j];
      c.prog = program(part.shape, stream);
      c.rank = rank_;
      c.lane = j;
      c.in = checked.in == nullptr ? nullptr : checked.in + lo;
      c.out = checked.out + lo;
      c.timeout_ns = collx::detail::timeout_ns(resolved.timeout);
      c.st = &s.status[static_cast<std::size_t>(rank_) * static_cast<std::size_t>(s.w.lanes) +
                       static_cast<std::size_t>(j)];
      // The lane's slice of the result (of each block's, which for a reduce-scatter is the one).
      args.divide_at[j] = checked.out + res.offset * element_size + lo;
      args.divide_count[j] = part.shape.count;
    }
    return args;
  }

  static bool is_capturing(cudaStream_t stream) {
    cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    cuda::check(cudaStreamIsCapturing(stream, &cs), "cudaStreamIsCapturing");
    return cs != cudaStreamCaptureStatusNone;
  }

  void order_after_last_call(cudaStream_t stream, bool capturing) {
    if (!done_) {
      cudaEvent_t ev = nullptr;
      cuda::check(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), "cudaEventCreate");
      done_.reset(ev);
    }
    // Calls of one rank on different streams must not run side by side: both would drive
    // the same mailboxes. The next waits for the last: on another stream, or wherever a
    // graph replay may have run. Inside a capture the wait is an external wait node: a
    // replay waits for whatever call recorded done_ last before it was launched.
    if (capturing) {
      cuda::check(cudaStreamWaitEvent(stream, done_.get(), cudaEventWaitExternal),
                  "cudaStreamWaitEvent(external)");
    } else if (last_ != nullptr && (last_ != stream || captured_)) {
      cuda::check(cudaStreamWaitEvent(stream, done_.get(), 0), "cudaStreamWaitEvent");
    }
  }

  // Scratch for the largest program seen, per lane; grown only outside a capture.
  void ensure_scratch(cudaStream_t stream, std::string_view coll, std::size_t per_elem_bytes) {
    const std::size_t bytes = std::max<std::size_t>(scratch_need_ * per_elem_bytes, 16);
    if (bytes <= scratch_bytes_) return;
    refuse_in_capture(stream, coll, "this call needs more scratch than earlier ones");
    // The old buffer is retired, not freed: kernels of earlier calls may still use it.
    if (scratch_) retired_.push_back(std::move(scratch_));
    scratch_ = allocate(bytes);
    cuda::check(cudaStreamSynchronize(upload_stream()), "cudaStreamSynchronize");
    scratch_bytes_ = bytes;
  }

  struct stream_destroy {
    void operator()(cudaStream_t s) const noexcept { cudaStreamDestroy(s); }
  };
  struct event_free {
    void operator()(cudaEvent_t e) const noexcept { cudaEventDestroy(e); }
  };

  std::shared_ptr<detail::group_state> g_;
  int rank_ = 0;
  std::uint64_t seq_ = 0;
  // Declared before the memory freed on it, so that it goes after that memory: the
  // destructor queues the frees behind the last call, then the stream goes (at once;
  // its work completes on its own).
  std::unique_ptr<CUstream_st, stream_destroy> upload_;
  std::unique_ptr<CUevent_st, event_free> done_;
  std::vector<cached_program> programs_;
  std::size_t scratch_need_ = 0;  // elements per lane
  detail::stream_ptr<std::byte> scratch_;
  // Outgrown scratch, kept until the communicator goes: graphs captured before the
  // growth still use it.
  std::vector<detail::stream_ptr<std::byte>> retired_;
  std::size_t scratch_bytes_ = 0;
  cudaStream_t last_ = nullptr;  // the stream of the last call launched outside a capture
  bool captured_ = false;        // a graph records done_ too: every call waits for it
  collx::detail::failure_latch& latch() const { return g_->failed[static_cast<std::size_t>(rank_)]; }
};

inline communicator group::rank(int r) const {
  if (r < 0 || r >= size()) {
    throw error(errc::invalid_argument, "cuda::group", r, error::no_rank,
                "rank " + std::to_string(r) + " of a group of " + std::to_string(size()));
  }
  return communicator(s_, r);
}

}  // namespace collx::cuda
