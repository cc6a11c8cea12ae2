#pragma once

// The shared-memory transport: processes on one host. Each rank owns one POSIX
// shared-memory segment holding, for every peer, a ring of slots that peer writes into
// (single producer, single consumer: two counters, no locks). A segment is mapped once
// per communicator by every rank, then its name is unlinked at once, so nothing is
// left in /dev/shm once the processes are gone, however they end.
//
// Two-sided messages cost two copies (sender into the slot, slot into the receiver's
// memory). The one-sided face saves one: recv_view() completes with a pointer into the
// slot itself, so the executor reduces straight out of the peer's ring into the
// destination and then releases the slot.
//
// Waiting: a rank spins briefly on its rings, then sleeps on a futex in its own
// segment (a doorbell that peers ring after publishing or freeing a slot), always for
// a bounded time. Liveness: each rank holds an exclusive flock on its segment for as
// long as it lives, so a peer whose lock can be taken is dead, whether it exited,
// crashed or was killed, and even while it is an unreaped zombie.

#include <fcntl.h>
#include <linux/futex.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "collx/config.hpp"
#include "collx/core/error.hpp"
#include "collx/rendezvous/store.hpp"
#include "collx/transport/concept.hpp"

namespace collx {

struct shm_options {
  // Slot size: at least the executor's segment (defaults::segment_bytes), so that a
  // pipeline segment fits one slot and can be reduced in place.
  std::size_t slot_bytes = defaults::segment_bytes;
  // Slots per ring: more than the executor's staging slots, so that views the executor
  // still holds never stop a sender outright.
  std::size_t slots = 2 * defaults::staging_slots;
  // Names the segments /collx-<job>-<rank>; empty: COLLX_JOB_ID, else a fresh random id.
  std::string job_id;
  std::chrono::milliseconds timeout = detail::timeout_from_env(defaults::timeout);
  // How long an idle rank polls its rings before it sleeps on the futex; COLLX_SHM_SPIN_US
  // overrides. A pipeline segment arrives every few tens of microseconds, and a futex
  // wake-up costs about as much, so a rank that sleeps between segments loses half its time.
  std::chrono::microseconds spin{spin_from_env()};
  // Each member's rank in the job, for errors (routed_transport: a node's ranks, which
  // are members 0..size-1 here); empty: their numbers here.
  std::vector<int> ranks;

  static long long spin_from_env() {
    const char* v = std::getenv("COLLX_SHM_SPIN_US");
    return v != nullptr && *v != '\0' ? std::atoll(v) : 200;
  }
};

namespace detail {

// A slot's header: the message's envelope and which of its bytes the slot holds.
struct shm_meta {
  envelope_wire env;
  std::uint64_t total, offset, bytes;

  void set(const envelope& e, std::uint64_t msg_bytes, std::uint64_t off, std::uint64_t len) {
    env = envelope_wire::of(e);
    total = msg_bytes;
    offset = off;
    bytes = len;
  }
};

struct shm_control {
  std::atomic<std::uint32_t> doorbell;  // futex word: bumped on every event for the owner
  std::atomic<std::uint32_t> sleeping;  // the owner is (about to be) in futex_wait
  std::atomic<std::uint32_t> aborted;
  std::int32_t pid;
  std::uint32_t kind;        // set before `aborted`: the errc the owner failed with
  std::uint64_t gave_up_at;  // set before `aborted`: the first call the owner did not complete
  std::uint64_t slot_bytes, slots, ranks;
  char reason[1024];
};

// One ring: the sender advances head after filling a slot, the receiver advances tail
// after emptying one. Each counter has its own cache line.
struct shm_ring {
  alignas(64) std::atomic<std::uint64_t> head;
  alignas(64) std::atomic<std::uint64_t> tail;
  alignas(64) std::uint64_t pad;
};

struct shm_op {
  enum : int { idle, pending, done, failed };
  int state = idle;
  int peer = -1;
  bool sending = false;
  bool view = false;
  envelope env;
  std::byte* buf = nullptr;  // a send only reads it
  std::size_t size = 0;
  std::size_t moved = 0;    // bytes published (send) or consumed (receive)
  std::uint64_t chunk = 0;  // the view's chunk number in its ring
  const std::byte* view_ptr = nullptr;
  errc kind = errc::transport;
  std::string message;
};

inline long futex(std::atomic<std::uint32_t>* addr, int cmd, std::uint32_t val, const timespec* ts) {
  return ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(addr), cmd, val, ts, nullptr, 0);
}

// One mapped segment.
struct shm_mapping {
  void* base = nullptr;
  std::size_t bytes = 0;
  int fd = -1;
  shm_mapping() = default;
  shm_mapping(shm_mapping&& o) noexcept
      : base(std::exchange(o.base, nullptr)), bytes(std::exchange(o.bytes, 0)), fd(std::exchange(o.fd, -1)) {}
  shm_mapping& operator=(shm_mapping&& o) noexcept {
    if (this != &o) {
      release();
      base = std::exchange(o.base, nullptr);
      bytes = std::exchange(o.bytes, 0);
      fd = std::exchange(o.fd, -1);
    }
    return *this;
  }
  ~shm_mapping() { release(); }
  void release() noexcept {
    if (base != nullptr) ::munmap(base, bytes);
    if (fd >= 0) ::close(fd);
    base = nullptr;
    fd = -1;
  }
};

// The job's name for its segments: `job` if set, else COLLX_JOB_ID, else one rank 0 draws
// and shares through the store. Slashes would make it a path.
// `keys`: the caller's view of the store.
inline std::string job_id_for(std::string job, collx::store& keys, int rank,
                              std::chrono::milliseconds timeout) {
  if (job.empty()) {
    if (const char* v = std::getenv("COLLX_JOB_ID"); v != nullptr && *v != '\0') job = v;
  }
  if (job.empty()) {
    if (rank == 0) {
      std::random_device rd;
      char id[32];
      std::snprintf(id, sizeof id, "%d-%08x", static_cast<int>(::getpid()), rd());
      keys.set("job", id);
    }
    job = keys.get("job", timeout);
  }
  for (char& ch : job) {
    if (ch == '/' || ch == '|') ch = '_';
  }
  return job;
}

inline void map_segment(shm_mapping& s, const std::string& name) {
  s.base = ::mmap(nullptr, s.bytes, PROT_READ | PROT_WRITE, MAP_SHARED, s.fd, 0);
  if (s.base == MAP_FAILED) {
    s.base = nullptr;
    throw_sys(errc::transport, "cannot map shared memory " + name, errno);
  }
}

// A segment's name, unlinked when this goes unless disarmed: so nothing is left in
// /dev/shm when setup fails before every rank has the segment mapped.
struct shm_unlinker {
  std::string name;
  bool armed = true;
  ~shm_unlinker() {
    if (armed) ::shm_unlink(name.c_str());
  }
};

// Creates this rank's segment guard.name, reserves its pages (a full /dev/shm must be an
// error here, not a SIGBUS later; `hint` says how to need less) and maps it.
inline void create_segment(shm_mapping& s, shm_unlinker& guard, std::size_t bytes, std::string_view hint) {
  s.fd = ::shm_open(guard.name.c_str(), O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
  if (s.fd < 0) {
    guard.armed = errno != EEXIST;  // a name in use is someone else's to unlink
    throw_sys(errc::transport, "cannot create shared memory segment " + guard.name, errno);
  }
  s.bytes = bytes;
  if (const int e = ::posix_fallocate(s.fd, 0, static_cast<off_t>(bytes)); e != 0) {
    throw_sys(errc::transport,
              "cannot reserve " + std::to_string(bytes >> 20) + " MiB of shared memory for " + guard.name +
                  std::string(hint),
              e);
  }
  map_segment(s, guard.name);
}

// Maps peer q's segment `name` of `bytes`; `needs` says what the transport needs, for
// the error when the name cannot be opened (a peer on another host, most likely).
inline void open_segment(shm_mapping& s, const std::string& name, std::size_t bytes, int q,
                         std::string_view needs) {
  s.fd = ::shm_open(name.c_str(), O_RDWR | O_CLOEXEC, 0);
  if (s.fd < 0) {
    throw_sys(errc::transport,
              "cannot open peer " + std::to_string(q) + "'s shared memory " + name + " (" +
                  std::string(needs) + ")",
              errno);
  }
  s.bytes = bytes;
  map_segment(s, name);
}

// What a rank publishes under its key: its segment's name and the geometry it was built
// with. Every rank compares the geometry before it opens the segment: a rank that fails
// first unlinks its name, so a check of the segment alone gave the other rank "cannot
// open peer P's shared memory" instead of the true reason, depending on who was first.
struct shm_published {
  std::string name;  // job names hold no '|' (job_id_for)
  std::uint64_t slot_bytes = 0, slots = 0, ranks = 0;
};

inline std::string to_text(const shm_published& p) {
  return p.name + "|" + std::to_string(p.slot_bytes) + "|" + std::to_string(p.slots) + "|" +
         std::to_string(p.ranks);
}

inline std::optional<shm_published> parse_published(const std::string& text) {
  const auto bar = text.find('|');
  if (bar == std::string::npos) return std::nullopt;
  unsigned long long slot_bytes = 0, slots = 0, ranks = 0;
  char tail = 0;
  if (std::sscanf(text.c_str() + bar + 1, "%llu|%llu|%llu%c", &slot_bytes, &slots, &ranks, &tail) != 3)
    return std::nullopt;
  return shm_published{text.substr(0, bar), slot_bytes, slots, ranks};
}

}  // namespace detail

class shm_transport {
 public:
  using op = detail::shm_op;

  shm_transport() = default;

  shm_transport(store& st, int rank, int size, shm_options opt = {}, const std::string& prefix = "collx/shm")
      : rank_(rank), size_(size), opt_(std::move(opt)) {
    if (size < 1 || rank < 0 || rank >= size) {
      throw error(errc::invalid_argument, "shm_transport", rank, error::no_rank,
                  "rank " + std::to_string(rank) + " of " + std::to_string(size));
    }
    const long cpus = ::sysconf(_SC_NPROCESSORS_ONLN);
    oversubscribed_ = cpus > 0 && size > cpus;
    if (opt_.slots < 2 || opt_.slot_bytes < 4096 || opt_.slot_bytes % 64 != 0) {
      throw error(errc::invalid_argument, "shm_transport", rank, error::no_rank,
                  "needs at least 2 slots of at least 4096 bytes, a multiple of 64");
    }
    prefix_store keys(st, prefix);
    setup(keys);
  }

  shm_transport(shm_transport&&) noexcept = default;
  shm_transport& operator=(shm_transport&&) noexcept = default;
  ~shm_transport() = default;

  int rank() const noexcept { return rank_; }
  int size() const noexcept { return size_; }
  std::size_t max_view_bytes() const noexcept { return opt_.slot_bytes; }

  void send(int peer, const envelope& env, std::span<const std::byte> data, op& o) {
    start(peer, o, true, env);
    o.buf = const_cast<std::byte*>(data.data());
    o.size = data.size();
    auto& q = peers_[static_cast<std::size_t>(peer)].sendq;
    q.push_back(&o);
    if (q.size() == 1) pump_send(peer);
  }

  void recv(int peer, const envelope& env, std::span<std::byte> data, op& o) {
    start(peer, o, false, env);
    o.buf = data.data();
    o.size = data.size();
    enqueue_recv(peer, o);
  }

  // One-sided face: completes when the whole message sits in one slot of this rank's
  // ring from `peer`; view() is then its bytes, valid until release(o).
  void recv_view(int peer, const envelope& env, std::size_t bytes, op& o) {
    if (bytes > opt_.slot_bytes) {
      throw error(errc::invalid_argument, {}, name(rank_), name(peer), "a view holds at most one slot");
    }
    start(peer, o, false, env);
    o.view = true;
    o.size = bytes;
    enqueue_recv(peer, o);
  }
  const std::byte* view(const op& o) const noexcept { return o.view_ptr; }
  void release(op& o) {
    if (!o.view || o.view_ptr == nullptr) return;
    auto& p = peers_[static_cast<std::size_t>(o.peer)];
    p.freed.push_back(o.chunk);
    o.view_ptr = nullptr;
    advance_tail(o.peer);
  }

  bool test(op& o) {
    if (o.state == op::pending) progress_peer(o.peer);
    if (o.state == op::failed) throw error(o.kind, {}, name(rank_), name(o.peer), o.message);
    return o.state == op::done;
  }

  void cancel(op& o) {
    if (o.state == op::done && o.view) release(o);
    if (o.state != op::pending) return;
    auto& p = peers_[static_cast<std::size_t>(o.peer)];
    auto& q = o.sending ? p.sendq : p.recvq;
    const bool midway = o.moved != 0;
    std::erase(q, &o);
    o.state = op::idle;
    if (midway) fail_peer(o.peer, errc::aborted, "an operation with this peer was cancelled midway");
  }

  void poll(std::chrono::nanoseconds d) {
    if (progress()) return;
    // Spin a little: a peer that is mid-copy usually publishes within microseconds,
    // far sooner than a futex round trip.
    const auto spin_until = detail::clock::now() + std::min<std::chrono::nanoseconds>(opt_.spin, d);
    for (unsigned k = 1;; ++k) {
      if (progress()) return;
      if (k % 16 != 0) continue;
      if (detail::clock::now() >= spin_until) break;
      // More ranks than cores: let the peer we wait for run. (A yield is a system call,
      // about a microsecond here, too dear when every rank has its own core.)
      if (oversubscribed_) std::this_thread::yield();
    }
    if (d <= std::chrono::nanoseconds::zero()) return;  // a look, not a wait
    auto& c = control(rank_);
    const std::uint32_t seen = c.doorbell.load();
    c.sleeping.store(1);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (progress()) {
      c.sleeping.store(0);
      return;
    }
    // Sleep at most 10 ms at a time, so that a dead peer is noticed promptly.
    const auto slice = std::min<std::chrono::nanoseconds>(d, std::chrono::milliseconds(10));
    timespec ts{0, static_cast<long>(std::max<long long>(slice.count(), 0))};
    detail::futex(&c.doorbell, FUTEX_WAIT, seen, &ts);
    c.sleeping.store(0);
    if (!progress()) check_peers();
  }

  void abort(errc kind, std::string_view why, std::uint64_t seq) {
    if (aborted_ || segs_.empty()) return;
    aborted_ = true;
    auto& c = control(rank_);
    const std::size_t n = std::min(why.size(), sizeof c.reason - 1);
    std::memcpy(c.reason, why.data(), n);
    c.reason[n] = '\0';
    c.gave_up_at = seq;
    c.kind = static_cast<std::uint32_t>(kind);
    c.aborted.store(1);
    for (int q = 0; q < size_; ++q) {
      if (q == rank_) continue;
      fail_peer(q, kind, "this rank aborted: " + std::string(why), true);
      wake(q);
    }
  }

  void confirm(std::uint64_t seq) {
    for (int q = 0; q < size_; ++q) {
      if (q == rank_) continue;
      auto& c = control(q);
      if (c.aborted.load() == 0 || c.gave_up_at > seq) continue;
      const std::string why = failed_text(q);
      const errc k = as_seen_by_peers(static_cast<errc>(c.kind));
      fail_peer(q, k, why);
      throw error(k, {}, name(rank_), name(q), why);
    }
  }

  // Fault injection (collx/transport/faulty.hpp): this rank lets go of its liveness
  // lock, so that its peers find it gone though the process lives on: the shared
  // memory analogue of a dropped connection. Its own operations fail too.
  void inject_disconnect(bool /*reset*/) {
    if (segs_.empty()) return;
    ::flock(segs_[static_cast<std::size_t>(rank_)].fd, LOCK_UN);
    for (int q = 0; q < size_; ++q) {
      if (q != rank_)
        fail_peer(q, errc::transport, "this rank let go of its shared memory by fault injection");
    }
  }

 private:
  struct peer_state {
    std::deque<op*> sendq;
    std::deque<op*> recvq;
    std::uint64_t rpos = 0;            // next chunk to read from this peer's ring
    std::vector<std::uint64_t> freed;  // chunks released out of order, ahead of tail
    bool failed = false;
    errc kind = errc::peer_failure;
    std::string why;
  };

  detail::shm_control& control(int r) const {
    return *static_cast<detail::shm_control*>(segs_[static_cast<std::size_t>(r)].base);
  }
  // The ring through which `from` sends to `to`, in `to`'s segment.
  detail::shm_ring& ring(int to, int from) const {
    auto* base = static_cast<std::byte*>(segs_[static_cast<std::size_t>(to)].base);
    return reinterpret_cast<detail::shm_ring*>(base + rings_offset())[index(to, from)];
  }
  detail::shm_meta& meta(int to, int from, std::uint64_t chunk) const {
    auto* base = static_cast<std::byte*>(segs_[static_cast<std::size_t>(to)].base);
    auto* m = reinterpret_cast<detail::shm_meta*>(base + metas_offset());
    return m[index(to, from) * opt_.slots + chunk % opt_.slots];
  }
  std::byte* slot(int to, int from, std::uint64_t chunk) const {
    auto* base = static_cast<std::byte*>(segs_[static_cast<std::size_t>(to)].base);
    return base + data_offset() + (index(to, from) * opt_.slots + chunk % opt_.slots) * opt_.slot_bytes;
  }
  int name(int q) const {
    return q >= 0 && static_cast<std::size_t>(q) < opt_.ranks.size() ? opt_.ranks[static_cast<std::size_t>(q)]
                                                                     : q;
  }

  static std::size_t index(int to, int from) { return static_cast<std::size_t>(from < to ? from : from - 1); }
  std::size_t channels() const { return static_cast<std::size_t>(size_ > 1 ? size_ - 1 : 0); }
  static std::size_t round_up(std::size_t n, std::size_t a) { return (n + a - 1) / a * a; }
  std::size_t rings_offset() const { return round_up(sizeof(detail::shm_control), 64); }
  std::size_t metas_offset() const { return rings_offset() + channels() * sizeof(detail::shm_ring); }
  std::size_t data_offset() const {
    return round_up(metas_offset() + channels() * opt_.slots * sizeof(detail::shm_meta), 4096);
  }
  std::size_t segment_bytes() const { return data_offset() + channels() * opt_.slots * opt_.slot_bytes; }

  void start(int peer, op& o, bool sending, const envelope& env) {
    if (peer < 0 || peer >= size_ || peer == rank_) {
      throw error(errc::invalid_argument, {}, rank_, peer, "no such peer");
    }
    auto& p = peers_[static_cast<std::size_t>(peer)];
    if (p.failed) throw error(p.kind, {}, name(rank_), name(peer), p.why);
    o.state = op::pending;
    o.peer = peer;
    o.sending = sending;
    o.view = false;
    o.env = env;
    o.moved = 0;
    o.view_ptr = nullptr;
    o.message.clear();
  }

  void enqueue_recv(int peer, op& o) {
    auto& q = peers_[static_cast<std::size_t>(peer)].recvq;
    q.push_back(&o);
    if (q.size() == 1) pump_recv(peer);
  }

  // After publishing a head or tail: wakes r if it sleeps. The fence pairs with the one
  // r runs between announcing its sleep and looking at its rings one last time, so
  // either r sees what was published or this sees r asleep. A rank that is awake is not
  // touched: bumping its doorbell on every message would bounce a cache line between
  // the cores each time.
  void ring_doorbell(int r) {
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (control(r).sleeping.load(std::memory_order_relaxed) != 0) wake(r);
  }

  void wake(int r) {
    auto& c = control(r);
    c.doorbell.fetch_add(1);
    detail::futex(&c.doorbell, FUTEX_WAKE, 1, nullptr);
  }

  bool progress() {
    bool moved = false;
    for (int q = 0; q < size_; ++q) {
      if (q != rank_) moved = progress_peer(q) || moved;
    }
    return moved;
  }

  bool progress_peer(int q) {
    bool moved = false;
    auto& p = peers_[static_cast<std::size_t>(q)];
    if (!p.sendq.empty()) moved = pump_send(q) || moved;
    if (!p.recvq.empty()) moved = pump_recv(q) || moved;
    return moved;
  }

  // Copies what fits of the sends to q into q's ring from this rank.
  bool pump_send(int q) {
    auto& p = peers_[static_cast<std::size_t>(q)];
    auto& r = ring(q, rank_);
    bool moved = false;
    std::uint64_t head = r.head.load(std::memory_order_relaxed);
    while (!p.sendq.empty()) {
      op& o = *p.sendq.front();
      while (o.moved < o.size || (o.size == 0 && o.state == op::pending)) {
        if (head - r.tail.load(std::memory_order_acquire) >= opt_.slots) {
          if (moved) ring_doorbell(q);
          return moved;
        }
        const std::size_t len = std::min(opt_.slot_bytes, o.size - o.moved);
        if (len != 0) std::memcpy(slot(q, rank_, head), o.buf + o.moved, len);
        meta(q, rank_, head).set(o.env, o.size, o.moved, len);
        r.head.store(++head, std::memory_order_release);
        o.moved += len;
        moved = true;
        if (o.size == 0) break;
      }
      o.state = op::done;
      p.sendq.pop_front();
    }
    if (moved) ring_doorbell(q);
    return moved;
  }

  bool pump_recv(int q) {
    auto& p = peers_[static_cast<std::size_t>(q)];
    auto& r = ring(rank_, q);
    bool moved = false;
    while (!p.recvq.empty()) {
      op& o = *p.recvq.front();
      for (;;) {
        if (p.rpos == r.head.load(std::memory_order_acquire)) return moved;
        const detail::shm_meta& m = meta(rank_, q, p.rpos);
        if (m.offset == 0 && !check(q, o, m)) return true;
        if (o.view) {
          o.view_ptr = slot(rank_, q, p.rpos);
          o.chunk = p.rpos++;
          o.moved = m.bytes;
          break;
        }
        if (m.bytes != 0) std::memcpy(o.buf + m.offset, slot(rank_, q, p.rpos), m.bytes);
        o.moved = m.offset + m.bytes;
        p.freed.push_back(p.rpos++);
        advance_tail(q);
        moved = true;
        if (o.moved == o.size) break;
      }
      o.state = op::done;
      p.recvq.pop_front();
      moved = true;
    }
    return moved;
  }

  // Chunks may be released out of order (views); tail moves over the freed prefix.
  void advance_tail(int q) {
    auto& p = peers_[static_cast<std::size_t>(q)];
    auto& r = ring(rank_, q);
    std::uint64_t tail = r.tail.load(std::memory_order_relaxed);
    const std::uint64_t start = tail;
    for (bool found = true; found;) {
      found = false;
      for (std::size_t i = 0; i < p.freed.size(); ++i) {
        if (p.freed[i] == tail) {
          p.freed[i] = p.freed.back();
          p.freed.pop_back();
          ++tail;
          found = true;
          break;
        }
      }
    }
    if (tail != start) {
      r.tail.store(tail, std::memory_order_release);
      ring_doorbell(q);
    }
  }

  // The first chunk of a message: it must be what this rank expects.
  bool check(int q, op& o, const detail::shm_meta& m) {
    const envelope got = m.env.decoded();
    std::string msg;
    if (!(got == o.env)) {
      msg = "this rank called " + o.env.describe() + " but peer " + std::to_string(name(q)) + " called " +
            got.describe();
    } else if (m.total != o.size) {
      msg = "peer " + std::to_string(name(q)) + " sent " + std::to_string(m.total) +
            " bytes where this rank expects " + std::to_string(o.size) + " for " + o.env.describe();
    }
    if (msg.empty()) return true;
    fail_peer(q, errc::mismatch, msg);
    return false;
  }

  void fail_peer(int q, errc kind, const std::string& why, bool self = false) {
    auto& p = peers_[static_cast<std::size_t>(q)];
    if (!p.failed) {
      p.failed = true;
      p.kind = self ? errc::aborted : kind;
      p.why = why;
    }
    for (auto* dq : {&p.sendq, &p.recvq}) {
      for (op* o : *dq) {
        o->state = op::failed;
        o->kind = p.kind;
        o->message = p.why;
      }
      dq->clear();
    }
  }

  // A peer this rank waits on that aborted or died fails what is pending with it.
  void check_peers() {
    for (int q = 0; q < size_; ++q) {
      if (q == rank_) continue;
      auto& p = peers_[static_cast<std::size_t>(q)];
      if (p.sendq.empty() && p.recvq.empty()) continue;
      auto& c = control(q);
      if (c.aborted.load() != 0) {
        fail_peer(q, as_seen_by_peers(static_cast<errc>(c.kind)), failed_text(q));
      } else if (!alive(q)) {
        fail_peer(q, errc::peer_failure,
                  "peer " + std::to_string(name(q)) + " (pid " + std::to_string(c.pid) +
                      ") is gone: it exited or was killed in the middle of a collective");
      }
    }
  }

  std::string failed_text(int q) const {
    const auto& c = control(q);
    return "peer " + std::to_string(name(q)) +
           " failed: " + std::string(c.reason, strnlen(c.reason, sizeof c.reason));
  }

  // The owner holds an exclusive lock for life; if ours can be had, it is dead.
  bool alive(int q) const {
    const int fd = segs_[static_cast<std::size_t>(q)].fd;
    if (::flock(fd, LOCK_SH | LOCK_NB) == 0) {
      ::flock(fd, LOCK_UN);
      return false;
    }
    return true;
  }

  void setup(store& keys) {
    const std::string job = detail::job_id_for(opt_.job_id, keys, rank_, opt_.timeout);
    const std::string name = "/collx-" + job + "-" + std::to_string(rank_);
    segs_.resize(static_cast<std::size_t>(size_));
    peers_.resize(static_cast<std::size_t>(size_));

    // Our segment: created, sized, locked, published; unlinked as soon as everyone
    // has it mapped (and on any failure before that).
    detail::shm_unlinker guard{name};
    auto& mine = segs_[static_cast<std::size_t>(rank_)];
    detail::create_segment(mine, guard, segment_bytes(),
                           " (is /dev/shm large enough? COLLX_SHM_SLOT_BYTES and COLLX_SHM_SLOTS shrink it)");
    const int fd = mine.fd;
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) detail::throw_sys(errc::transport, "flock " + name, errno);
    auto& c = control(rank_);
    c.pid = static_cast<std::int32_t>(::getpid());
    c.slot_bytes = opt_.slot_bytes;
    c.slots = opt_.slots;
    c.ranks = static_cast<std::uint64_t>(size_);
    keys.set(std::to_string(rank_), detail::to_text({name, c.slot_bytes, c.slots, c.ranks}));

    for (int q = 0; q < size_; ++q) {
      if (q == rank_) continue;
      const std::string text = keys.get(std::to_string(q), opt_.timeout);
      const auto published = detail::parse_published(text);
      if (!published) {
        throw error(errc::transport, "shm_transport", rank_, q,
                    "peer " + std::to_string(q) + " published '" + text +
                        "' for its shared memory: not a collx shm rank of this version?");
      }
      check_geometry(q, *published);  // before opening: the segment may be gone already
      detail::open_segment(segs_[static_cast<std::size_t>(q)], published->name, segment_bytes(), q,
                           "the shm transport needs every rank on one host");
      const auto& pc = control(q);  // the segment itself, in case the store's key is stale
      check_geometry(q, {published->name, pc.slot_bytes, pc.slots, pc.ranks});
    }
    keys.barrier("mapped", size_, opt_.timeout);
    ::shm_unlink(name.c_str());
    guard.armed = false;
  }

  void check_geometry(int q, const detail::shm_published& peer) const {
    if (peer.slot_bytes == opt_.slot_bytes && peer.slots == opt_.slots &&
        peer.ranks == static_cast<std::uint64_t>(size_))
      return;
    auto geometry = [](std::uint64_t slots, std::uint64_t bytes, std::uint64_t ranks) {
      return std::to_string(slots) + " slots of " + std::to_string(bytes) + " bytes for " +
             std::to_string(ranks) + " ranks";
    };
    throw error(errc::invalid_argument, "shm_transport", rank_, q,
                "peer " + std::to_string(q) + " was set up with different slot sizes or rank count: " +
                    geometry(peer.slots, peer.slot_bytes, peer.ranks) + " there, " +
                    geometry(opt_.slots, opt_.slot_bytes, static_cast<std::uint64_t>(size_)) +
                    " here (COLLX_SHM_SLOTS and COLLX_SHM_SLOT_BYTES must be equal on every rank)");
  }

  int rank_ = 0;
  int size_ = 0;
  bool oversubscribed_ = false;  // more ranks on this host than online CPUs
  shm_options opt_;
  std::vector<detail::shm_mapping> segs_;
  std::vector<peer_state> peers_;
  bool aborted_ = false;
};

static_assert(transport<shm_transport>);

}  // namespace collx
