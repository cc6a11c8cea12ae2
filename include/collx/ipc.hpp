#pragma once

// Ranks in different processes on one host that map each other's memory: GPU ranks over
// CUDA IPC (cuda/ipc.cuh) and, for the tests, host ranks over POSIX shared
// memory (host_ipc_api below). The peer-memory executor (exec/peer.hpp) runs on the host
// here, one piece at a time: its copies and reductions go to the memory's own engine
// (on a GPU: the copy engines and short kernels), complete before the piece is
// published. No kernel ever spins waiting for another process: processes sharing a GPU
// are time-sliced, so two spinning kernels of different processes would wait on each
// other for a whole time slice at every step.
//
// Each rank owns
//   - an inbox in its memory (a GPU's, for CUDA): slots per sender, which senders fill
//     through the mapping of it they opened once (cudaIpcOpenMemHandle);
//   - a control segment in host shared memory: the mailboxes' counters and signatures,
//     and (rank 0's) the failure flags (each rank writes only its own) and the waits
//     that let a timed-out rank name the rank really stuck.
// Both are set up once per communicator through the rendezvous store and reused.
//
// The Api is what the memory needs:
//   static constexpr bool device_memory;          // the callers' buffers are GPU memory
//   memory alloc(std::size_t bytes);               // owned, .get() -> std::byte*
//   std::string export_handle(const memory&);       // what a peer needs to map it
//   mapping open(const std::string& handle, std::size_t bytes);  // .get() -> std::byte*
//   void copy(std::byte* dst, const std::byte* src, std::size_t bytes);   // done on return
//   template <class T, reduce_op Op> void reduce(T* dst, const T* a, const T* b, std::size_t n);
//   void finish_avg(dtype t, std::byte* data, std::size_t n, int divisor);
//   void zero(std::byte* p, std::size_t bytes);

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "collx/algorithms/select.hpp"
#include "collx/config.hpp"
#include "collx/core/error.hpp"
#include "collx/core/options.hpp"
#include "collx/exec/peer_program.hpp"
#include "collx/front/check.hpp"
#include "collx/front/failure.hpp"
#include "collx/front/program.hpp"
#include "collx/front/resolve.hpp"
#include "collx/front/untyped.hpp"
#include "collx/net/socket.hpp"
#include "collx/rendezvous/store.hpp"
#include "collx/transport/shm.hpp"

namespace collx {

struct ipc_options {
  std::uint32_t slots = 4;
  // A piece: one copy-engine transfer. Messages are cut to fit slots*slot_bytes.
  std::size_t slot_bytes = std::size_t{4} << 20;
  // Names the control segments /collx-ipc-<job>-<rank>; empty: COLLX_JOB_ID, else fresh.
  std::string job_id;
  std::chrono::milliseconds timeout = detail::timeout_from_env(defaults::timeout);
};

namespace detail {

// The host side of a piece's wait, and its moves through the Api.
template <class Api>
struct ipc_context : peer_memory::host_context {
  Api* api;

  explicit ipc_context(Api* a) : api(a) {}
  COLLX_HD void copy(std::byte* dst, const std::byte* src, std::uint64_t bytes) {
    COLLX_HOST_ONLY(api->copy(dst, src, bytes);)
    (void)dst, (void)src, (void)bytes;
  }
  template <class T, reduce_op Op>
  COLLX_HD void reduce(T* dst, const T* a, const T* b, std::uint64_t n) {
    COLLX_HOST_ONLY(api->template reduce<T, collx::detail::combining<Op>>(dst, a, b, n);)
    (void)dst, (void)a, (void)b, (void)n;
  }
};

// A control segment's layout: counters first (each receiver's mailbox: ready[p],
// acked[p], sig[p*slots]), then rank 0's failure flags and waits.
struct ipc_control_header {
  std::uint64_t ranks, slots, slot_bytes;
  std::int64_t pid;
  std::uint64_t unmapped;  // 1 once this rank has closed its mappings of its peers' inboxes
};

// Whether process pid may still exist (and so map memory): a dead one's mappings died
// with it.
inline bool process_alive(std::int64_t pid) {
  return ::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM;
}

// Memory a rank could not free safely (a peer still mapped it when the bound ran out):
// kept until the process ends, and counted for the tests.
template <class Memory>
std::size_t keep_until_exit(Memory* m = nullptr) {
  static std::mutex lock;
  static std::vector<Memory> kept;
  const std::lock_guard<std::mutex> hold(lock);
  if (m != nullptr) kept.push_back(std::move(*m));
  return kept.size();
}

// What a rank publishes: "<segment>|<ranks>|<slots>|<slot bytes>|<inbox handle>". The
// geometry is checked from this before the segment is opened: a rank that fails first
// unlinks its segment, and the other then said "cannot open peer P's shared memory"
// instead of the true reason. (Job names hold no '|'; the handle may.)
struct ipc_published {
  std::string name;
  std::uint64_t ranks = 0, slots = 0, slot_bytes = 0;
  std::string handle;
};

inline std::optional<ipc_published> parse_ipc_published(const std::string& text) {
  const auto bar = text.find('|');
  if (bar == std::string::npos) return std::nullopt;
  unsigned long long ranks = 0, slots = 0, slot_bytes = 0;
  int used = -1;
  if (std::sscanf(text.c_str() + bar + 1, "%llu|%llu|%llu|%n", &ranks, &slots, &slot_bytes, &used) != 3 ||
      used < 0)
    return std::nullopt;
  return ipc_published{text.substr(0, bar), ranks, slots, slot_bytes,
                       text.substr(bar + 1 + static_cast<std::size_t>(used))};
}

}  // namespace detail

// Rank `rank` of `size` processes. Api: see above.
template <class Api>
class ipc_communicator : public detail::untyped_calls<ipc_communicator<Api>> {
 public:
  ipc_communicator(store& st, int rank, int size, Api api, ipc_options opt = {},
                   const std::string& prefix = "collx/ipc")
      : api_(std::move(api)), opt_(std::move(opt)), rank_(rank), size_(size) {
    auto bad = [&](const std::string& why) {
      throw error(errc::invalid_argument, "ipc_communicator", rank, error::no_rank, why);
    };
    if (size < 1 || size > peer_memory::max_ranks || rank < 0 || rank >= size) {
      bad("rank " + std::to_string(rank) + " of " + std::to_string(size) + " (at most " +
          std::to_string(peer_memory::max_ranks) + " ranks)");
    }
    if (opt_.slots < 1 || opt_.slot_bytes < 16 || opt_.slot_bytes % 16 != 0) {
      bad("needs at least one slot of a multiple of 16 bytes");
    }
    if (opt_.timeout <= std::chrono::milliseconds::zero()) bad("timeout must be positive");
    cfg_.timeout = opt_.timeout;
    prefix_store keys(st, prefix);
    setup(keys);
  }

  ipc_communicator(ipc_communicator&&) = delete;  // the world's table points into it

  // Peers may still map this rank's inbox, and freeing memory another process maps is
  // undefined (CUDA IPC): close this rank's mappings and say so in its own control
  // segment, then free its own inbox (after this body) once every peer has said so or is
  // gone. A peer that still maps it after the bound (the timeout, at most 10 s) leaves it
  // kept until this process ends (keep_until_exit), never freed under the peer.
  ~ipc_communicator() {
    if (w_.waiting == nullptr) return;
    inboxes_.clear();
    std::atomic_ref<std::uint64_t>(header_of(rank_)->unmapped).store(1, std::memory_order_release);
    const auto deadline = std::chrono::steady_clock::now() +
                          std::min<std::chrono::milliseconds>(opt_.timeout, std::chrono::seconds(10));
    while (!peers_unmapped() && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    if (!peers_unmapped()) detail::keep_until_exit(&own_inbox_);
  }

  int rank() const noexcept { return rank_; }
  int size() const noexcept { return size_; }
  Api& api() noexcept { return api_; }

  // all_reduce, all_gather, reduce_scatter: the untyped calls (front/untyped.hpp), in
  // place as in collx::communicator; each blocks until the call is done on this rank.

  // Gives up: every peer's waits end with an error naming this rank; later calls fail.
  void abort() noexcept {
    peer_memory::host_context::store_release(w_.failed + rank_,
                                             static_cast<std::uint64_t>(peer_memory::outcome::aborted));
    failed_.set("aborted by the application");
  }

  std::string failure() const { return failed_.why(); }

 private:
  struct cached {
    detail::call_shape key;
    peer_memory::program_image image;
  };

  std::size_t counters_bytes() const {
    const auto p = static_cast<std::size_t>(size_);
    return sizeof(detail::ipc_control_header) + (2 * p + p * opt_.slots) * sizeof(std::uint64_t);
  }
  // Rank 0's segment also holds the failure flags (p + 1) and the waits (p).
  std::size_t control_bytes() const {
    return counters_bytes() + (1 + 2 * static_cast<std::size_t>(size_)) * sizeof(std::uint64_t);
  }

  detail::ipc_control_header* header_of(int q) const {
    return static_cast<detail::ipc_control_header*>(controls_[static_cast<std::size_t>(q)].base);
  }

  // Every peer has closed its mapping of this rank's inbox, or its process is gone.
  bool peers_unmapped() const {
    for (int q = 0; q < size_; ++q) {
      if (q == rank_) continue;
      detail::ipc_control_header* h = header_of(q);
      if (std::atomic_ref<std::uint64_t>(h->unmapped).load(std::memory_order_acquire) == 0 &&
          detail::process_alive(h->pid))
        return false;
    }
    return true;
  }
  std::size_t inbox_bytes() const { return static_cast<std::size_t>(size_) * opt_.slots * opt_.slot_bytes; }

  // The counters follow the header in each rank's control segment; the slots are its inbox.
  peer_memory::mailbox mailbox_of(std::byte* control, std::byte* inbox) const {
    return peer_memory::mailbox_over(
        inbox, reinterpret_cast<std::uint64_t*>(control + sizeof(detail::ipc_control_header)), size_);
  }

  // Peer q's control segment and inbox, mapped; its geometry checked first from what it
  // published (its segment may be gone already), then from the segment itself.
  std::byte* open_peer(store& keys, std::size_t q) {
    const int peer = static_cast<int>(q);
    const std::string v = keys.get(std::to_string(q), opt_.timeout);
    const auto published = detail::parse_ipc_published(v);
    if (!published) throw error(errc::transport, "ipc_communicator", rank_, peer, "malformed address " + v);
    check_geometry(peer, published->ranks, published->slots, published->slot_bytes);
    detail::open_segment(controls_[q], published->name, control_bytes(), peer,
                         "CUDA IPC needs every rank on one host");
    const auto* ph = static_cast<const detail::ipc_control_header*>(controls_[q].base);
    check_geometry(peer, ph->ranks, ph->slots, ph->slot_bytes);
    inboxes_[q] = api_.open(published->handle, inbox_bytes());
    return inboxes_[q].get();
  }

  void check_geometry(int peer, std::uint64_t ranks, std::uint64_t slots, std::uint64_t slot_bytes) const {
    if (ranks == static_cast<std::uint64_t>(size_) && slots == opt_.slots && slot_bytes == opt_.slot_bytes)
      return;
    auto geometry = [](std::uint64_t n, std::uint64_t bytes, std::uint64_t p) {
      return std::to_string(n) + " slots of " + std::to_string(bytes) + " bytes for " + std::to_string(p) +
             " ranks";
    };
    throw error(errc::invalid_argument, "ipc_communicator", rank_, peer,
                "peer " + std::to_string(peer) +
                    " was set up with different slots or rank count: " + geometry(slots, slot_bytes, ranks) +
                    " there, " + geometry(opt_.slots, opt_.slot_bytes, static_cast<std::uint64_t>(size_)) +
                    " here (ipc_options must be equal on every rank)");
  }

  void setup(store& keys) {
    const std::string job = detail::job_id_for(opt_.job_id, keys, rank_, opt_.timeout);
    const auto p = static_cast<std::size_t>(size_);
    controls_.resize(p);
    inboxes_.resize(p);

    // This rank's control segment and inbox, published with its geometry (ipc_published).
    const std::string name = "/collx-ipc-" + job + "-" + std::to_string(rank_);
    detail::shm_unlinker guard{name};
    auto& mine = controls_[static_cast<std::size_t>(rank_)];
    detail::create_segment(mine, guard, control_bytes(), " (is /dev/shm large enough?)");
    auto* header = static_cast<detail::ipc_control_header*>(mine.base);
    header->ranks = p;
    header->slots = opt_.slots;
    header->slot_bytes = opt_.slot_bytes;
    header->pid = ::getpid();
    header->unmapped = 0;
    own_inbox_ = api_.alloc(inbox_bytes());
    api_.zero(own_inbox_.get(), inbox_bytes());
    keys.set(std::to_string(rank_), name + "|" + std::to_string(p) + "|" + std::to_string(opt_.slots) + "|" +
                                        std::to_string(opt_.slot_bytes) + "|" +
                                        api_.export_handle(own_inbox_));

    std::vector<peer_memory::mailbox> boxes(p);
    for (std::size_t q = 0; q < p; ++q) {
      std::byte* inbox = q == static_cast<std::size_t>(rank_) ? own_inbox_.get() : open_peer(keys, q);
      boxes[q] = mailbox_of(static_cast<std::byte*>(controls_[q].base), inbox);
    }
    boxes_ = std::move(boxes);
    auto* zero = static_cast<std::byte*>(controls_[0].base) + counters_bytes();
    w_.ranks = size_;
    w_.lanes = 1;
    w_.slots = opt_.slots;
    w_.slot_bytes = opt_.slot_bytes;
    w_.boxes = boxes_.data();
    w_.failed = reinterpret_cast<std::uint64_t*>(zero);
    w_.waiting = w_.failed + size_ + 1;
    keys.barrier("mapped", size_, opt_.timeout);
    ::shm_unlink(name.c_str());
    guard.armed = false;
    if constexpr (requires { api_.mapped(); }) api_.mapped();
  }

  [[noreturn]] void invalid(std::string_view coll, const std::string& why) const {
    throw error(errc::invalid_argument, coll, rank_, error::no_rank, why);
  }

  const peer_memory::program_image& program(const detail::call_shape& key) {
    for (auto& c : programs_) {
      if (c.key == key) return c.image;
    }
    if (programs_.size() == 32) programs_.erase(programs_.begin());
    programs_.push_back({key, peer_memory::program_for(key, rank_, size_)});
    return programs_.back().image;
  }

  friend class detail::untyped_calls<ipc_communicator>;

  void run_now(collective coll, const void* in, void* out, std::size_t count, dtype t, reduce_op op,
               const options& o, int root = 0) {
    const std::string_view name = to_string(coll);
    failed_.check(name, rank_, "create a new one");
    const detail::checked_call c =
        detail::check_call(coll, in, out, count, t, op, o, rank_, size_, !Api::device_memory, root);
    const std::uint64_t seq = seq_++;
    // A count-0 call still runs: its empty messages carry its signature (exec/peer.hpp).
    const std::size_t es = size_of(t);
    const detail::resolved_call r =
        detail::resolve(coll, count, t, op, o, cfg_, size_, seq, opt_.slots * opt_.slot_bytes, root);
    const peer_memory::program_image& img = program({coll, r.algo, count, r.segment, c.in_place, root});
    if (img.scratch_count * es > scratch_bytes_) {
      scratch_ = api_.alloc(img.scratch_count * es);
      scratch_bytes_ = img.scratch_count * es;
    }
    peer_memory::status st;
    peer_memory::lane_call call;
    call.prog = img.view_at(img.bytes.data());
    call.rank = rank_;
    call.in = c.in;
    call.out = c.out;
    call.scratch = scratch_bytes_ != 0 ? scratch_.get() : nullptr;
    call.sig = signature(r.env);
    call.timeout_ns = detail::timeout_ns(r.timeout);
    call.st = &st;
    detail::ipc_context<Api> ctx(&api_);
    bool done = false;
    detail::visit_dtype(t, [&](auto tag) {
      using T = decltype(tag);
      detail::visit_reduce_op(op, [&](auto reduction) {
        done = peer_memory::run_lane<T, detail::combining<decltype(reduction)::value>>(ctx, call, w_);
      });
    });
    if (!done) {
      const error e =
          peer_memory::to_error(st, name, rank_, size_, "Is every rank's process calling", r.env.describe());
      failed_.set(e.what());
      throw e;
    }
    if (op == reduce_op::avg && reduces(coll)) {
      const region res = result_region(coll, rank_, count, c.in_place, size_, root);
      if (res.count != 0) api_.finish_avg(t, c.out + res.offset * es, res.count, size_);
    }
  }

  Api api_;
  ipc_options opt_;
  communicator_config cfg_;  // the timeout is opt_'s; the rest from the environment
  int rank_ = 0;
  int size_ = 1;
  std::vector<detail::shm_mapping> controls_;
  typename Api::memory own_inbox_;
  std::vector<typename Api::mapping> inboxes_;
  std::vector<peer_memory::mailbox> boxes_;
  peer_memory::world_view w_;
  std::vector<cached> programs_;
  typename Api::memory scratch_;
  std::size_t scratch_bytes_ = 0;
  std::uint64_t seq_ = 0;
  detail::failure_latch failed_;
};

// Host memory in POSIX shared memory: the ipc protocol on any machine, for the tests.
struct host_ipc_api {
  static constexpr bool device_memory = false;
  struct memory {
    detail::shm_mapping m;
    std::string name;
    std::byte* get() const noexcept { return static_cast<std::byte*>(m.base); }
  };
  using mapping = memory;

  memory alloc(std::size_t bytes) {
    memory mem;
    char id[64];
    std::snprintf(id, sizeof id, "/collx-ipc-mem-%d-%08x", static_cast<int>(::getpid()),
                  std::random_device{}());
    mem.name = id;
    mem.m.fd = ::shm_open(id, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
    if (mem.m.fd < 0) detail::throw_sys(errc::transport, "shm_open " + mem.name, errno);
    mem.m.bytes = std::max<std::size_t>(bytes, 1);
    if (::ftruncate(mem.m.fd, static_cast<off_t>(mem.m.bytes)) != 0) {
      ::shm_unlink(id);
      detail::throw_sys(errc::transport, "ftruncate " + mem.name, errno);
    }
    try {
      detail::map_segment(mem.m, mem.name);
    } catch (...) {
      ::shm_unlink(id);
      throw;
    }
    // The name lives until every peer has opened it (mapped()), or not at all for
    // memory no peer maps.
    if (mapped_) {
      ::shm_unlink(id);
    } else {
      names_.push_back(mem.name);
    }
    return mem;
  }
  std::string export_handle(const memory& mem) const { return mem.name; }
  mapping open(const std::string& handle, std::size_t bytes) {
    mapping mem;
    mem.name = handle;
    mem.m.fd = ::shm_open(handle.c_str(), O_RDWR | O_CLOEXEC, 0);
    if (mem.m.fd < 0) detail::throw_sys(errc::transport, "shm_open " + handle, errno);
    mem.m.bytes = std::max<std::size_t>(bytes, 1);
    detail::map_segment(mem.m, handle);
    return mem;
  }
  static void copy(std::byte* dst, const std::byte* src, std::size_t bytes) { std::memmove(dst, src, bytes); }
  template <class T, reduce_op Op>
  static void reduce(T* dst, const T* a, const T* b, std::size_t n) {
    detail::reduce_loop<T, Op>(dst, a, b, n);
  }
  static void finish_avg(dtype t, std::byte* data, std::size_t n, int divisor) {
    collx::finish_avg(t, data, n, divisor);
  }
  static void zero(std::byte* p, std::size_t bytes) { std::memset(p, 0, bytes); }

  // Every peer has mapped this rank's memory: nothing is left in /dev/shm from here on.
  void mapped() {
    for (const auto& n : names_) ::shm_unlink(n.c_str());
    names_.clear();
    mapped_ = true;
  }

  host_ipc_api() = default;
  host_ipc_api(host_ipc_api&&) = default;
  host_ipc_api& operator=(host_ipc_api&&) = default;
  ~host_ipc_api() { mapped(); }

 private:
  std::vector<std::string> names_;
  bool mapped_ = false;
};

}  // namespace collx
