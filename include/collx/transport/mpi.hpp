#pragma once

// collx::mpi_transport: the executor's two-sided transport over MPI point-to-point, for
// jobs launched with mpirun or srun. Include it on its own (collx.hpp leaves it out so
// that the core needs no MPI) and link collx::mpi.
//
// Each message travels as two MPI messages on collx's private duplicate of the caller's
// communicator (made by the first transport over it, shared by later ones, each with
// tags of its own): a fixed 48-byte header (a magic number, the envelope, the byte
// size) on one tag, then the data on another. A receive posts only the header's receive; once
// the header has arrived and matches what this rank expects, the data's receive is
// posted straight into the caller's buffer. So a peer that called another collective,
// count or algorithm is refused before a byte of its data lands, and nothing is staged.
// Several receives from one peer may wait for their headers at once: MPI keeps the
// messages of one sender and tag in order, and data receives are posted in header order,
// so the two streams stay paired. Data over INT_MAX bytes goes as one message of a
// derived datatype, because MPI counts are int and Open MPI 4.1 has no large-count
// point-to-point calls.
//
// What MPI lets a rank find out, and what it does not:
// - abort() makes this rank's pending operations fail and sends a short abort message
//   (the failure's kind, its reason, the rank where it started) to every peer on a third
//   tag. Peers look for it in poll() and every few test() calls and then fail their
//   operations with this rank, as the local transport does. A communicator aborts its
//   transport on every failed call, so one rank's mismatch or timeout reaches the others
//   within milliseconds instead of after their own timeouts.
// - A process that is killed or crashes sends nothing. Open MPI's mpirun notices the
//   lost process and terminates the whole job; other launchers do what they are told
//   (Slurm: srun --kill-on-bad-exit). Where the job survives, peers time out.
// - A rank that never makes the call sends nothing either: the executor's deadline
//   fires and the waiting ranks get errc::timeout, then abort, which tells the rest.
// - Not every operation can be withdrawn: Open MPI ignores MPI_Cancel for sends, and a
//   receive already matched to a message completes regardless. cancel() waits a short,
//   bounded time for such an operation, then frees its request, so after a failed call
//   a transfer already under way may still read the caller's send buffer or write the
//   receive buffer, even after the communicator is destroyed: a peer that was alive but
//   stalled matches the message whenever it runs again. The fault-injection tests
//   showed it (a stalled rank woke, and its peer's Open MPI read a freed send buffer).
//   So after a failed call over MPI, keep that call's buffers for the rest of the
//   process, or end the process (the usual MPI answer to a failure); the shm and tcp
//   transports have no such limit.
//
// Threads: a communicator runs its blocking calls on the caller's thread and its _async
// calls on one worker thread, never two at once, so MPI_THREAD_SERIALIZED is enough for
// collx, and the constructor refuses less. Only abort() may come from any thread at any
// time; below MPI_THREAD_MULTIPLE a mutex keeps its MPI calls apart from the executor's.
// The application may make MPI calls of its own while a collx call is in flight only
// with MPI_THREAD_MULTIPLE, which is what mpi_session asks for.

#include <mpi.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "collx/core/error.hpp"
#include "collx/transport/concept.hpp"

namespace collx {

// Initializes MPI for the lifetime of the object unless someone already did, and then
// finalizes it. Destroy every communicator over an mpi_transport before it.
class mpi_session {
 public:
  mpi_session() : mpi_session(nullptr, nullptr) {}
  // MPI_THREAD_MULTIPLE is asked for, not just SERIALIZED, so that the application may
  // call MPI itself while an async collective runs on the communicator's worker thread.
  mpi_session(int* argc, char*** argv) {
    int initialized = 0;
    int finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (finalized) {
      throw error(errc::invalid_argument, "mpi_session", error::no_rank, error::no_rank,
                  "MPI was finalized already and cannot be initialized again");
    }
    if (initialized) {
      MPI_Query_thread(&provided_);
      return;
    }
    if (MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided_) != MPI_SUCCESS) {
      throw error(errc::transport, "mpi_session", error::no_rank, error::no_rank, "MPI_Init_thread failed");
    }
    owner_ = true;
  }
  mpi_session(const mpi_session&) = delete;
  mpi_session& operator=(const mpi_session&) = delete;
  ~mpi_session() {
    if (!owner_) return;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Finalize();
  }

  // The thread level MPI provides: MPI_THREAD_SINGLE ... MPI_THREAD_MULTIPLE.
  int thread_level() const noexcept { return provided_; }
  // Whether this session initialized MPI (and so will finalize it).
  bool owner() const noexcept { return owner_; }

 private:
  int provided_ = MPI_THREAD_SINGLE;
  bool owner_ = false;
};

struct mpi_transport_options {
  // The largest message handed to MPI as a plain count of bytes; larger ones go as one
  // message of a derived datatype. Lowered by tests, so that path runs without gigabytes.
  std::size_t max_message_bytes = INT_MAX;
  // How long cancel() waits for an operation that MPI cannot withdraw (see above) before
  // it lets go of the request: long enough for a transfer already under way to finish.
  std::chrono::milliseconds cancel_wait{20};
};

namespace detail {

inline constexpr std::uint32_t mpi_magic = 0x584c4f43;        // "COLX" in little-endian memory
inline constexpr std::uint32_t mpi_abort_magic = 0x54524241;  // "ABRT"
inline constexpr std::size_t mpi_header_size = 8 + sizeof(envelope_wire) + 8;
// Small enough to go eagerly on every Open MPI transport (vader's eager limit is 4 KiB),
// so an abort message never waits for its receiver to post a receive.
inline constexpr std::size_t mpi_abort_size = 1024;
// magic, kind, origin, reason length, the first call the sender did not complete
inline constexpr std::size_t mpi_abort_fixed = 24;
// Each transport's messages use three tags of their own: header, data, abort (see
// mpi_state's constructor for why).
inline constexpr int mpi_tags = 3;

// Transports this process has taken part in, agreed between ranks at construction.
inline std::atomic<std::uint64_t>& mpi_generation() noexcept {
  static std::atomic<std::uint64_t> g{0};
  return g;
}

using mpi_header = std::array<std::byte, mpi_header_size>;

template <class T>
void put_bytes(std::byte* p, T v) noexcept {
  std::memcpy(p, &v, sizeof v);
}
template <class T>
T get_bytes(const std::byte* p) noexcept {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// The header: the magic number, 4 bytes of zero, the envelope's wire form, the byte count.
inline void encode_header(mpi_header& h, const envelope& env, std::uint64_t bytes) noexcept {
  std::byte* p = h.data();
  put_bytes(p, mpi_magic);
  put_bytes(p + 4, std::uint32_t{0});
  put_bytes(p + 8, envelope_wire::of(env));
  put_bytes(p + 8 + sizeof(envelope_wire), bytes);
}

inline bool decode_header(const mpi_header& h, envelope& env, std::uint64_t& bytes) noexcept {
  const std::byte* p = h.data();
  if (get_bytes<std::uint32_t>(p) != mpi_magic) return false;
  env = get_bytes<envelope_wire>(p + 8).decoded();
  bytes = get_bytes<std::uint64_t>(p + 8 + sizeof(envelope_wire));
  return true;
}

inline std::string mpi_error_text(std::string_view call, int rc) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) len = 0;
  return std::string(call) + " failed: " +
         (len > 0 ? std::string(text, static_cast<std::size_t>(len)) : "error " + std::to_string(rc));
}

inline const char* mpi_thread_level_name(int level) noexcept {
  switch (level) {
    case MPI_THREAD_SINGLE: return "MPI_THREAD_SINGLE";
    case MPI_THREAD_FUNNELED: return "MPI_THREAD_FUNNELED";
    case MPI_THREAD_SERIALIZED: return "MPI_THREAD_SERIALIZED";
    case MPI_THREAD_MULTIPLE: return "MPI_THREAD_MULTIPLE";
    default: return "an unknown thread level";
  }
}

// Starts a send or receive of n bytes; start(buf, count, type) is MPI_Isend or MPI_Irecv
// with the rest bound. Over `plain` bytes the message is one element of a derived type:
// whole blocks of `plain` bytes, then the remainder.
template <class Start>
int mpi_start(std::size_t n, std::size_t plain, Start&& start) {
  if (n <= plain) return start(static_cast<int>(n), MPI_BYTE);
  const std::size_t blocks = n / plain;
  const std::size_t rest = n % plain;
  if (blocks > static_cast<std::size_t>(INT_MAX)) return MPI_ERR_COUNT;
  MPI_Datatype block = MPI_DATATYPE_NULL;
  MPI_Datatype whole = MPI_DATATYPE_NULL;
  int rc = MPI_Type_contiguous(static_cast<int>(plain), MPI_BYTE, &block);
  if (rc != MPI_SUCCESS) return rc;
  if (rest == 0) {
    rc = MPI_Type_contiguous(static_cast<int>(blocks), block, &whole);
  } else {
    int lengths[2] = {static_cast<int>(blocks), static_cast<int>(rest)};
    MPI_Aint offsets[2] = {0, static_cast<MPI_Aint>(blocks * plain)};
    MPI_Datatype types[2] = {block, MPI_BYTE};
    rc = MPI_Type_create_struct(2, lengths, offsets, types, &whole);
  }
  MPI_Type_free(&block);
  if (rc == MPI_SUCCESS) rc = MPI_Type_commit(&whole);
  if (rc == MPI_SUCCESS) rc = start(1, whole);
  // MPI keeps the type alive until the operation that uses it completes.
  if (whole != MPI_DATATYPE_NULL) MPI_Type_free(&whole);
  return rc;
}

// One send or receive. The executor keeps it in place while it is pending, which is
// what lets the transport link it into its lists without allocating.
struct mpi_op {
  enum : unsigned char { idle, sending, header, data, done, failed };
  unsigned char state = idle;
  bool sending_side = false;
  bool linked = false;       // on the transport's list of pending operations
  bool queued = false;       // a receive waiting for its header, in its peer's queue
  bool peer_caused = false;  // failed because the peer failed
  int peer = -1;
  std::array<MPI_Request, 2> req{MPI_REQUEST_NULL, MPI_REQUEST_NULL};  // header, data
  mpi_header hdr{};
  envelope expect;
  std::byte* dst = nullptr;
  std::size_t size = 0;
  mpi_op* prev = nullptr;
  mpi_op* next = nullptr;
  mpi_op* after = nullptr;  // the next receive from the same peer waiting for its header
  errc kind = errc::transport;
  std::string message;

  mpi_op() = default;
  mpi_op(const mpi_op&) = delete;
  mpi_op& operator=(const mpi_op&) = delete;
};

struct mpi_peer {
  mpi_op* first = nullptr;  // receives waiting for their header, in posting order
  mpi_op* last = nullptr;
  // Set when a header was refused or a receive withdrawn: the data stream from this
  // peer may no longer pair with the headers, so no later receive from it may land.
  bool out_of_step = false;
  // Set when its abort message arrived; the rest is guarded by mpi_state::info_m.
  bool failed = false;
  errc kind = errc::peer_failure;
  int origin = -1;
  std::string reason;
  std::uint64_t gave_up_at = std::numeric_limits<std::uint64_t>::max();
};

// The private duplicate of a parent communicator. It is made once per parent and kept
// until the parent is freed (MPI_COMM_WORLD's: until MPI_Finalize) and no transport uses
// it, rather than made and freed per transport, because Open MPI reuses a freed
// communicator's context id and delivers to the new communicator messages that reached
// a rank after it freed the old one. After a failure such messages are common (a peer's
// abort message, a refused message's data), and one would take the sequence number of a
// message of the next transport, which would then be lost or, for data, land in the
// wrong buffer.
struct mpi_comm_handle {
  MPI_Comm comm = MPI_COMM_NULL;
  mpi_comm_handle() = default;
  mpi_comm_handle(const mpi_comm_handle&) = delete;
  mpi_comm_handle& operator=(const mpi_comm_handle&) = delete;
  ~mpi_comm_handle() {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized && comm != MPI_COMM_NULL) MPI_Comm_free(&comm);
  }
};
using mpi_comm_ref = std::shared_ptr<mpi_comm_handle>;

// Called by MPI when the parent is freed (and MPI_COMM_WORLD's attributes at finalize).
inline int mpi_drop_comm_ref(MPI_Comm, int, void* value, void*) {
  delete static_cast<mpi_comm_ref*>(value);
  return MPI_SUCCESS;
}

inline int mpi_comm_keyval() {
  static const int keyval = [] {
    int k = MPI_KEYVAL_INVALID;
    MPI_Comm_create_keyval(MPI_COMM_NULL_COPY_FN, mpi_drop_comm_ref, &k, nullptr);
    return k;
  }();
  return keyval;
}

// Collective the first time for a parent (MPI_Comm_dup); a lookup afterwards, on every
// rank alike, since they all made the first call.
inline mpi_comm_ref mpi_private_comm(MPI_Comm parent) {
  const int keyval = mpi_comm_keyval();
  void* value = nullptr;
  int found = 0;
  if (keyval != MPI_KEYVAL_INVALID) MPI_Comm_get_attr(parent, keyval, &value, &found);
  if (found && value != nullptr) return *static_cast<mpi_comm_ref*>(value);
  auto h = std::make_shared<mpi_comm_handle>();
  if (const int rc = MPI_Comm_dup(parent, &h->comm); rc != MPI_SUCCESS) {
    h->comm = MPI_COMM_NULL;
    throw error(errc::transport, "mpi_transport", error::no_rank, error::no_rank,
                mpi_error_text("MPI_Comm_dup", rc));
  }
  // Errors become collx::error instead of ending the job.
  MPI_Comm_set_errhandler(h->comm, MPI_ERRORS_RETURN);
  if (keyval != MPI_KEYVAL_INVALID) {
    auto* ref = new mpi_comm_ref(h);
    if (MPI_Comm_set_attr(parent, keyval, ref) != MPI_SUCCESS) delete ref;
  }
  return h;
}

class mpi_state {
 public:
  mpi_state(MPI_Comm parent, const mpi_transport_options& opt) : opt_(opt) {
    int initialized = 0;
    int finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (!initialized || finalized) {
      invalid(finalized
                  ? "MPI is finalized already"
                  : "MPI is not initialized: create a collx::mpi_session, or call MPI_Init_thread, first");
    }
    if (parent == MPI_COMM_NULL) invalid("the communicator is MPI_COMM_NULL");
    int inter = 0;
    MPI_Comm_test_inter(parent, &inter);
    if (inter) invalid("needs an intra-communicator, got an inter-communicator");
    if (opt.max_message_bytes == 0 || opt.max_message_bytes > static_cast<std::size_t>(INT_MAX)) {
      invalid("max_message_bytes must be in [1, INT_MAX], got " + std::to_string(opt.max_message_bytes));
    }
    int provided = MPI_THREAD_SINGLE;
    MPI_Query_thread(&provided);
    if (provided < MPI_THREAD_SERIALIZED) {
      throw error(errc::unsupported, "mpi_transport", error::no_rank, error::no_rank,
                  std::string("MPI provides ") + mpi_thread_level_name(provided) +
                      "; collx needs MPI_THREAD_SERIALIZED at least, because async calls run on a worker "
                      "thread: initialize MPI with MPI_Init_thread, or create a collx::mpi_session");
    }
    serialized_ = provided < MPI_THREAD_MULTIPLE;
    MPI_Comm_size(parent, &size_);
    peers_ = std::vector<mpi_peer>(static_cast<std::size_t>(size_));
    abort_reqs_.assign(static_cast<std::size_t>(size_), MPI_REQUEST_NULL);
    shared_ = mpi_private_comm(parent);
    comm_ = shared_->comm;
    MPI_Comm_rank(comm_, &rank_);
    // The transports on one duplicate keep apart by tags: each takes three that no earlier
    // transport of any of its ranks used, from a generation above every member's last,
    // agreed with one all-reduce. Stale messages of a failed transport keep their tags and
    // are never received (they stay queued in MPI: a little memory per failure).
    std::uint64_t gen = mpi_generation().load();
    if (const int rc = MPI_Allreduce(MPI_IN_PLACE, &gen, 1, MPI_UINT64_T, MPI_MAX, comm_);
        rc != MPI_SUCCESS) {
      throw error(errc::transport, "mpi_transport", error::no_rank, error::no_rank,
                  mpi_error_text("MPI_Allreduce", rc));
    }
    for (std::uint64_t seen = mpi_generation().load(); seen < gen + 1;) {
      if (mpi_generation().compare_exchange_weak(seen, gen + 1)) break;
    }
    void* attr = nullptr;
    int has_ub = 0;
    MPI_Comm_get_attr(comm_, MPI_TAG_UB, &attr, &has_ub);
    // The standard promises tags up to 32767 at least; Open MPI allows 2^31 - 1.
    const std::uint64_t tag_ub =
        has_ub && attr != nullptr ? static_cast<std::uint64_t>(*static_cast<int*>(attr)) : 32767;
    tag_header_ = static_cast<int>(gen % ((tag_ub + 1) / mpi_tags)) * mpi_tags;
    tag_data_ = tag_header_ + 1;
    tag_abort_ = tag_header_ + 2;
  }

  mpi_state(const mpi_state&) = delete;
  mpi_state& operator=(const mpi_state&) = delete;

  ~mpi_state() {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized) return;
    // Abort messages are eager, so these have completed unless a peer's process is gone.
    for (auto& r : abort_reqs_) {
      if (r == MPI_REQUEST_NULL) continue;
      int flag = 0;
      if ((MPI_Test(&r, &flag, MPI_STATUS_IGNORE) != MPI_SUCCESS || !flag) && r != MPI_REQUEST_NULL) {
        MPI_Cancel(&r);
        MPI_Request_free(&r);
      }
    }
  }

  int rank() const noexcept { return rank_; }
  int size() const noexcept { return size_; }

  void send(int peer, const envelope& env, std::span<const std::byte> data, mpi_op& o) {
    check_peer(peer);
    auto lock = guard();
    check_usable(peer);
    if (o.req[0] != MPI_REQUEST_NULL || o.req[1] != MPI_REQUEST_NULL) release(o);
    o.peer = peer;
    o.sending_side = true;
    o.peer_caused = false;
    o.size = data.size();
    encode_header(o.hdr, env, data.size());
    int rc = MPI_Isend(o.hdr.data(), static_cast<int>(mpi_header_size), MPI_BYTE, peer, tag_header_, comm_,
                       &o.req[0]);
    if (rc != MPI_SUCCESS) throw error(errc::transport, {}, rank_, peer, mpi_error_text("MPI_Isend", rc));
    // A header with no data after it tells the peer the size is zero.
    if (!data.empty()) {
      rc = mpi_start(data.size(), opt_.max_message_bytes, [&](int n, MPI_Datatype t) {
        return MPI_Isend(data.data(), n, t, peer, tag_data_, comm_, &o.req[1]);
      });
      if (rc != MPI_SUCCESS) {
        MPI_Request_free(&o.req[0]);
        throw error(errc::transport, {}, rank_, peer, mpi_error_text("MPI_Isend", rc));
      }
    }
    o.state = mpi_op::sending;
    link(o);
  }

  void recv(int peer, const envelope& env, std::span<std::byte> data, mpi_op& o) {
    check_peer(peer);
    auto lock = guard();
    check_usable(peer);
    if (peers_[static_cast<std::size_t>(peer)].out_of_step) {
      throw error(
          errc::transport, {}, rank_, peer,
          "messages from peer " + std::to_string(peer) +
              " are out of step after an earlier refused or withdrawn receive; build a new transport");
    }
    if (o.req[0] != MPI_REQUEST_NULL || o.req[1] != MPI_REQUEST_NULL) release(o);
    o.peer = peer;
    o.sending_side = false;
    o.peer_caused = false;
    o.expect = env;
    o.dst = data.data();
    o.size = data.size();
    const int rc = MPI_Irecv(o.hdr.data(), static_cast<int>(mpi_header_size), MPI_BYTE, peer, tag_header_,
                             comm_, &o.req[0]);
    if (rc != MPI_SUCCESS) throw error(errc::transport, {}, rank_, peer, mpi_error_text("MPI_Irecv", rc));
    o.state = mpi_op::header;
    enqueue(o);
    link(o);
  }

  bool test(mpi_op& o) {
    if (o.state == mpi_op::done) return true;
    if (o.state == mpi_op::failed) throw_failure(o);
    if (o.state == mpi_op::idle) return false;
    auto lock = guard();
    if (aborted_.load(std::memory_order_acquire)) {
      fail(o, errc::aborted, "this rank aborted: " + abort_reason_);
      throw_failure(o);
    }
    // Probing costs about as much as a test, so a pending operation pays for it only now
    // and then; poll() probes every time, and it runs whenever nothing moves.
    if ((++probe_tick_ & 15U) == 0) probe_aborts();
    advance(o);
    if (o.state == mpi_op::failed) throw_failure(o);
    return o.state == mpi_op::done;
  }

  void cancel(mpi_op& o) {
    if (o.state == mpi_op::idle || o.state == mpi_op::done) return;
    auto lock = guard();
    dequeue(o);
    unlink(o);
    // The withdrawn receive's message, or its data, may still arrive and would pair with
    // the next receive from that peer.
    if (!o.sending_side &&
        (o.state != mpi_op::failed || o.req[0] != MPI_REQUEST_NULL || o.req[1] != MPI_REQUEST_NULL)) {
      peers_[static_cast<std::size_t>(o.peer)].out_of_step = true;
    }
    release(o);
    if (o.state != mpi_op::failed) o.state = mpi_op::idle;
  }

  void poll(std::chrono::nanoseconds d) {
    using steady = std::chrono::steady_clock;
    // Spin first: a message already on the wire lands within microseconds. Then yield,
    // which hands an oversubscribed core to the peer this rank waits for. Then sleep in
    // short naps, so that a rank waiting for a slow peer stops burning a core; a nap
    // adds a little latency only to waits that are already long.
    constexpr int spin_rounds = 64;
    constexpr auto yield_window = std::chrono::milliseconds(1);
    constexpr auto nap = std::chrono::microseconds(100);
    const auto start = steady::now();
    const auto end = start + d;
    for (int round = 0;; ++round) {
      {
        auto lock = guard();
        if (aborted_.load(std::memory_order_acquire)) return;
        if (probe_aborts()) return;
        for (mpi_op* o = active_; o != nullptr; o = o->next) {
          // Any change may unlink operations, this one's successor included: stop here.
          if (advance(*o)) return;
        }
      }
      const auto now = steady::now();
      if (now >= end) return;
      if (round < spin_rounds) continue;
      if (now - start < yield_window) {
        std::this_thread::yield();
      } else {
        std::this_thread::sleep_for(std::min<steady::duration>(end - now, nap));
      }
    }
  }

  // Reads the abort messages that have arrived: a peer that gave up on call #seq fails it.
  void confirm(std::uint64_t seq) {
    {
      auto lock = guard();
      probe_aborts();
    }
    int gave_up = -1;
    {
      std::lock_guard info(info_m_);
      for (int q = 0; q < size_ && gave_up < 0; ++q) {
        const mpi_peer& pq = peers_[static_cast<std::size_t>(q)];
        if (q != rank_ && pq.failed && pq.gave_up_at <= seq) gave_up = q;
      }
    }
    if (gave_up < 0) return;
    const auto [k, msg] = failure_of(gave_up);
    set_cause(gave_up);
    throw error(k, {}, rank_, gave_up, msg);
  }

  // Passes on the first failure this rank saw, so that its peers learn the root cause.
  void abort(errc kind, std::string_view why, std::uint64_t seq) {
    if (aborting_.exchange(true)) return;
    errc k = kind;
    int origin = rank_;
    std::string reason(why);
    {
      std::lock_guard info(info_m_);
      if (cause_ >= 0) {
        const mpi_peer& c = peers_[static_cast<std::size_t>(cause_)];
        k = c.kind;
        origin = c.origin >= 0 ? c.origin : cause_;
        reason = c.reason;
      }
    }
    abort_reason_ = reason;
    aborted_.store(true, std::memory_order_release);

    auto lock = guard();
    const std::size_t room = mpi_abort_size - mpi_abort_fixed;
    if (reason.size() > room) reason.resize(room);
    std::byte* p = abort_out_.data();
    put_bytes(p, mpi_abort_magic);
    put_bytes(p + 4, static_cast<std::int32_t>(k));
    put_bytes(p + 8, static_cast<std::int32_t>(origin));
    put_bytes(p + 12, static_cast<std::uint32_t>(reason.size()));
    put_bytes(p + 16, seq);
    if (!reason.empty()) std::memcpy(p + mpi_abort_fixed, reason.data(), reason.size());
    const int n = static_cast<int>(mpi_abort_fixed + reason.size());
    for (int q = 0; q < size_; ++q) {
      // Best effort: a peer that cannot be told will time out instead.
      if (q != rank_)
        MPI_Isend(p, n, MPI_BYTE, q, tag_abort_, comm_, &abort_reqs_[static_cast<std::size_t>(q)]);
    }
  }

 private:
  [[noreturn]] static void invalid(const std::string& why) {
    throw error(errc::invalid_argument, "mpi_transport", error::no_rank, error::no_rank, why);
  }

  std::unique_lock<std::mutex> guard() {
    return serialized_ ? std::unique_lock<std::mutex>(m_) : std::unique_lock<std::mutex>();
  }

  void check_peer(int peer) const {
    if (peer < 0 || peer >= size_) {
      throw error(errc::invalid_argument, {}, rank_, peer,
                  "peer out of range [0, " + std::to_string(size_) + ")");
    }
  }

  void check_usable(int peer) {
    if (aborted_.load(std::memory_order_acquire)) {
      throw error(errc::aborted, {}, rank_, peer,
                  "this rank has failed (" + abort_reason_ +
                      "); a failed mpi_transport stays failed: build a new one");
    }
    if (peers_[static_cast<std::size_t>(peer)].failed) {
      const auto [k, msg] = failure_of(peer);
      set_cause(peer);
      throw error(k, {}, rank_, peer, msg);
    }
  }

  // Why operations with peer q fail, as the rank that sees it should say it.
  std::pair<errc, std::string> failure_of(int q) {
    std::lock_guard info(info_m_);
    const mpi_peer& s = peers_[static_cast<std::size_t>(q)];
    std::string msg = "peer " + std::to_string(q) + " failed";
    if (s.origin >= 0 && s.origin != q) msg += " after rank " + std::to_string(s.origin) + " failed";
    return {s.kind, msg + ": " + s.reason};
  }

  void set_cause(int peer) {
    std::lock_guard info(info_m_);
    if (cause_ < 0) cause_ = peer;
  }

  [[noreturn]] void throw_failure(const mpi_op& o) {
    if (o.peer_caused) set_cause(o.peer);
    throw error(o.kind, {}, rank_, o.peer, o.message);
  }

  void link(mpi_op& o) noexcept {
    o.prev = nullptr;
    o.next = active_;
    if (active_ != nullptr) active_->prev = &o;
    active_ = &o;
    o.linked = true;
  }

  void unlink(mpi_op& o) noexcept {
    if (!o.linked) return;
    if (o.prev != nullptr) {
      o.prev->next = o.next;
    } else {
      active_ = o.next;
    }
    if (o.next != nullptr) o.next->prev = o.prev;
    o.prev = o.next = nullptr;
    o.linked = false;
  }

  void enqueue(mpi_op& o) noexcept {
    mpi_peer& q = peers_[static_cast<std::size_t>(o.peer)];
    o.after = nullptr;
    if (q.last != nullptr) {
      q.last->after = &o;
    } else {
      q.first = &o;
    }
    q.last = &o;
    o.queued = true;
  }

  void dequeue(mpi_op& o) noexcept {
    if (!o.queued) return;
    mpi_peer& q = peers_[static_cast<std::size_t>(o.peer)];
    mpi_op* before = nullptr;
    for (mpi_op* x = q.first; x != nullptr; before = x, x = x->after) {
      if (x != &o) continue;
      if (before != nullptr) {
        before->after = x->after;
      } else {
        q.first = x->after;
      }
      if (q.last == x) q.last = before;
      break;
    }
    o.after = nullptr;
    o.queued = false;
  }

  void finish(mpi_op& o) noexcept {
    o.state = mpi_op::done;
    unlink(o);
  }

  // Requests stay with the failed operation until cancel() releases them.
  void fail(mpi_op& o, errc kind, std::string message, bool peer_caused = false) {
    o.state = mpi_op::failed;
    o.kind = kind;
    o.message = std::move(message);
    o.peer_caused = peer_caused;
    dequeue(o);
    unlink(o);
  }

  void fail_for_peer(mpi_op& o) {
    auto [k, msg] = failure_of(o.peer);
    fail(o, k, std::move(msg), true);
  }

  // An operation still under way with a peer known to have failed ends with its failure.
  bool fail_if_peer_failed(mpi_op& o) {
    if (!peers_[static_cast<std::size_t>(o.peer)].failed) return false;
    fail_for_peer(o);
    return true;
  }

  // Moves o along; true if anything changed, for this operation or another.
  bool advance(mpi_op& o) {
    switch (o.state) {
      case mpi_op::sending: {
        for (auto& r : o.req) {
          if (r == MPI_REQUEST_NULL) continue;
          int flag = 0;
          if (const int rc = MPI_Test(&r, &flag, MPI_STATUS_IGNORE); rc != MPI_SUCCESS) {
            fail(o, errc::transport, mpi_error_text("MPI_Test of a send", rc));
            return true;
          }
        }
        if (o.req[0] == MPI_REQUEST_NULL && o.req[1] == MPI_REQUEST_NULL) {
          finish(o);
          return true;
        }
        return fail_if_peer_failed(o);
      }
      case mpi_op::header: return advance_peer(o.peer);
      case mpi_op::data: {
        int flag = 0;
        if (const int rc = MPI_Test(&o.req[1], &flag, MPI_STATUS_IGNORE); rc != MPI_SUCCESS) {
          fail(o, errc::transport, mpi_error_text("MPI_Test of a receive", rc));
          return true;
        }
        if (flag) {
          finish(o);
          return true;
        }
        return fail_if_peer_failed(o);
      }
      default: return false;
    }
  }

  // Checks arrived headers from peer q in posting order, and posts each accepted one's
  // data receive: only in that order do data messages pair with their headers.
  bool advance_peer(int q) {
    mpi_peer& pq = peers_[static_cast<std::size_t>(q)];
    bool changed = false;
    while (mpi_op* o = pq.first) {
      int flag = 0;
      MPI_Status st;
      if (const int rc = MPI_Test(&o->req[0], &flag, &st); rc != MPI_SUCCESS) {
        pq.out_of_step = true;
        fail(*o, errc::transport, mpi_error_text("MPI_Test of a header receive", rc));
        changed = true;
        continue;
      }
      if (!flag) break;
      changed = true;
      dequeue(*o);
      accept(*o, st);
    }
    // A failed peer sends nothing more: receives still waiting for its headers fail.
    if (pq.failed && pq.first != nullptr) {
      while (mpi_op* o = pq.first) fail_for_peer(*o);
      changed = true;
    }
    return changed;
  }

  void accept(mpi_op& o, MPI_Status& st) {
    const int q = o.peer;
    mpi_peer& pq = peers_[static_cast<std::size_t>(q)];
    int got = 0;
    MPI_Get_count(&st, MPI_BYTE, &got);
    envelope env;
    std::uint64_t bytes = 0;
    if (got != static_cast<int>(mpi_header_size) || !decode_header(o.hdr, env, bytes)) {
      pq.out_of_step = true;
      fail(o, errc::transport,
           "peer " + std::to_string(q) + " sent a message that is not a collx header (" +
               std::to_string(got) +
               " bytes); is something else sending on collx's duplicate of the communicator?");
      return;
    }
    if (!(env == o.expect)) {
      pq.out_of_step = true;
      fail(o, errc::mismatch,
           "this rank called " + o.expect.describe() + " but peer " + std::to_string(q) + " called " +
               env.describe());
      return;
    }
    if (bytes != o.size) {
      pq.out_of_step = true;
      fail(o, errc::mismatch,
           "peer " + std::to_string(q) + " sent " + std::to_string(bytes) +
               " bytes where this rank expects " + std::to_string(o.size) + " for " + o.expect.describe());
      return;
    }
    if (o.size == 0) {
      finish(o);
      return;
    }
    const int rc = mpi_start(o.size, opt_.max_message_bytes, [&](int n, MPI_Datatype t) {
      return MPI_Irecv(o.dst, n, t, q, tag_data_, comm_, &o.req[1]);
    });
    if (rc != MPI_SUCCESS) {
      pq.out_of_step = true;
      fail(o, errc::transport, mpi_error_text("MPI_Irecv", rc));
      return;
    }
    o.state = mpi_op::data;
  }

  // Reads every abort message that has arrived; true if there was one.
  bool probe_aborts() {
    bool found = false;
    for (;;) {
      int flag = 0;
      MPI_Message msg = MPI_MESSAGE_NULL;
      MPI_Status st;
      if (MPI_Improbe(MPI_ANY_SOURCE, tag_abort_, comm_, &flag, &msg, &st) != MPI_SUCCESS || !flag) {
        return found;
      }
      // It has arrived (and is small), so this receive does not block.
      if (MPI_Mrecv(abort_in_.data(), static_cast<int>(mpi_abort_size), MPI_BYTE, &msg, &st) != MPI_SUCCESS) {
        return found;
      }
      found = true;
      const int q = st.MPI_SOURCE;
      int got = 0;
      MPI_Get_count(&st, MPI_BYTE, &got);
      const std::byte* p = abort_in_.data();
      errc k = errc::peer_failure;
      int origin = q;
      std::string reason = "it sent an abort message collx cannot read";
      std::uint64_t gave_up_at = std::numeric_limits<std::uint64_t>::max();
      if (got >= static_cast<int>(mpi_abort_fixed) && get_bytes<std::uint32_t>(p) == mpi_abort_magic) {
        const auto kind = get_bytes<std::int32_t>(p + 4);
        const auto from = get_bytes<std::int32_t>(p + 8);
        const auto len = get_bytes<std::uint32_t>(p + 12);
        gave_up_at = get_bytes<std::uint64_t>(p + 16);
        if (kind >= static_cast<int>(errc::invalid_argument) && kind <= static_cast<int>(errc::unsupported)) {
          k = static_cast<errc>(kind);
        }
        if (from >= 0 && from < size_) origin = from;
        if (len <= static_cast<std::uint32_t>(got) - mpi_abort_fixed) {
          reason.assign(reinterpret_cast<const char*>(p + mpi_abort_fixed), len);
        }
      }
      std::lock_guard info(info_m_);
      mpi_peer& pq = peers_[static_cast<std::size_t>(q)];
      if (pq.failed) continue;
      pq.kind = k;
      pq.origin = origin;
      pq.reason = std::move(reason);
      pq.gave_up_at = gave_up_at;
      pq.failed = true;
    }
  }

  // Withdraws what MPI lets it withdraw; waits a bounded time for the rest, then lets go.
  void release(mpi_op& o) {
    bool any = false;
    for (auto& r : o.req) {
      if (r == MPI_REQUEST_NULL) continue;
      MPI_Cancel(&r);
      any = true;
    }
    if (!any) return;
    const auto until = std::chrono::steady_clock::now() + opt_.cancel_wait;
    for (;;) {
      bool left = false;
      for (auto& r : o.req) {
        if (r == MPI_REQUEST_NULL) continue;
        int flag = 0;
        if (MPI_Test(&r, &flag, MPI_STATUS_IGNORE) != MPI_SUCCESS && r != MPI_REQUEST_NULL) {
          MPI_Request_free(&r);
        } else if (!flag) {
          left = true;
        }
      }
      if (!left) return;
      if (std::chrono::steady_clock::now() >= until) {
        for (auto& r : o.req) {
          if (r != MPI_REQUEST_NULL) MPI_Request_free(&r);
        }
        return;
      }
      std::this_thread::yield();
    }
  }

  mpi_transport_options opt_;
  mpi_comm_ref shared_;
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 0;
  bool serialized_ = true;
  int tag_header_ = 0;
  int tag_data_ = 1;
  int tag_abort_ = 2;
  std::mutex m_;       // taken around MPI calls when MPI provides less than MPI_THREAD_MULTIPLE
  std::mutex info_m_;  // guards peer failures and cause_, which abort() reads from any thread
  std::vector<mpi_peer> peers_;
  mpi_op* active_ = nullptr;  // pending operations, for poll()
  unsigned probe_tick_ = 0;
  int cause_ = -1;  // the peer whose failure made this rank fail, if any
  std::atomic<bool> aborting_{false};
  std::atomic<bool> aborted_{false};
  std::string abort_reason_;  // written once, before aborted_ is set
  std::vector<MPI_Request> abort_reqs_;
  std::array<std::byte, mpi_abort_size> abort_out_{};
  std::array<std::byte, mpi_abort_size> abort_in_{};
};

}  // namespace detail

class mpi_transport {
 public:
  using op = detail::mpi_op;

  // Collective over comm: every rank of comm constructs its transport at the same point,
  // one thread at a time. collx's messages travel on a duplicate of comm, never on comm
  // itself.
  explicit mpi_transport(MPI_Comm comm = MPI_COMM_WORLD, mpi_transport_options opt = {})
      : s_(std::make_unique<detail::mpi_state>(comm, opt)) {}

  int rank() const noexcept { return s_ ? s_->rank() : 0; }
  int size() const noexcept { return s_ ? s_->size() : 0; }

  void send(int peer, const envelope& env, std::span<const std::byte> data, op& o) {
    state().send(peer, env, data, o);
  }
  void recv(int peer, const envelope& env, std::span<std::byte> data, op& o) {
    state().recv(peer, env, data, o);
  }
  bool test(op& o) { return state().test(o); }
  void cancel(op& o) {
    if (s_) s_->cancel(o);
  }
  void poll(std::chrono::nanoseconds d) {
    if (s_) {
      s_->poll(d);
    } else {
      std::this_thread::sleep_for(d);
    }
  }
  void abort(errc kind, std::string_view why, std::uint64_t seq) {
    if (s_) s_->abort(kind, why, seq);
  }
  void confirm(std::uint64_t seq) {
    if (s_) s_->confirm(seq);
  }

 private:
  detail::mpi_state& state() {
    if (!s_) {
      throw error(errc::invalid_argument, "mpi_transport", error::no_rank, error::no_rank,
                  "this mpi_transport was moved from");
    }
    return *s_;
  }

  // Behind a pointer so that moving the transport moves no lists, mutexes or atomics.
  std::unique_ptr<detail::mpi_state> s_;
};

static_assert(transport<mpi_transport>);

}  // namespace collx
