#pragma once

// The in-process transport: p ranks as threads of one process. It is the reference
// transport for tests, so it also carries the fault-injection hooks: a per-rank delay
// on every message and a kill switch that makes a rank dead to its peers.
//
// Rendezvous, like shared-memory MPI for large messages: whichever of the send and the
// receive comes second copies the bytes once, straight from the sender's memory into the
// receiver's, and completes both. Nothing is allocated or copied twice on the way, and
// a send completes only when its bytes have left, so the executor's ordering of later
// writes after the send is what keeps the sender's buffer safe.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
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

namespace detail {

struct local_op {
  enum : int { idle, pending, done, failed };
  std::atomic<int> state{idle};
  int peer = -1;
  bool sending = false;
  envelope expect;
  std::byte* dst = nullptr;
  std::size_t size = 0;
  errc kind = errc::transport;
  std::string message;
};

// A send waiting for its receive: it points into the sender's memory.
struct local_send {
  envelope env;
  std::span<const std::byte> data;
  local_op* op;
};

struct local_mailbox {
  std::mutex m;
  std::condition_variable cv;
  std::uint64_t events = 0;
  std::vector<std::deque<local_send>> queued;  // by sender
  std::vector<std::deque<local_op*>> posted;   // by sender
};

struct local_rank_state {
  std::atomic<bool> failed{false};
  std::atomic<long long> delay_us{0};
  std::mutex m;  // guards the four fields below, written once when the rank fails
  errc kind = errc::peer_failure;
  int origin = -1;  // the rank whose failure this one passed on
  std::string reason;
  std::uint64_t gave_up_at = 0;  // the first call it did not complete
};

struct local_state {
  std::vector<std::unique_ptr<local_mailbox>> boxes;
  std::vector<std::unique_ptr<local_rank_state>> ranks;

  explicit local_state(int p) : boxes(static_cast<std::size_t>(p)), ranks(static_cast<std::size_t>(p)) {
    for (auto& b : boxes) {
      b = std::make_unique<local_mailbox>();
      b->queued.resize(static_cast<std::size_t>(p));
      b->posted.resize(static_cast<std::size_t>(p));
    }
    for (auto& r : ranks) r = std::make_unique<local_rank_state>();
  }
  int size() const noexcept { return static_cast<int>(boxes.size()); }
  local_mailbox& box(int r) { return *boxes[static_cast<std::size_t>(r)]; }
  local_rank_state& rank(int r) { return *ranks[static_cast<std::size_t>(r)]; }

  // Why operations with rank q fail, as the rank that sees it should say it.
  std::pair<errc, std::string> failure_of(int q) {
    auto& s = rank(q);
    std::lock_guard lock(s.m);
    std::string msg = "peer " + std::to_string(q) + " failed";
    if (s.origin >= 0 && s.origin != q) msg += " after rank " + std::to_string(s.origin) + " failed";
    return {s.kind, msg + ": " + s.reason};
  }

  // Marks rank q failed and ends every operation that involves it: its peers' receives
  // from it and sends to it fail with q's failure; q's own operations end as aborted,
  // which also releases a thread of q blocked in a call.
  void fail_rank(int q, errc kind, int origin, std::string reason, std::uint64_t gave_up_at) {
    auto& s = rank(q);
    {
      std::lock_guard lock(s.m);
      if (s.failed.load()) return;
      s.kind = kind;
      s.origin = origin;
      s.reason = std::move(reason);
      s.gave_up_at = gave_up_at;
      s.failed.store(true);
    }
    const auto [k, msg] = failure_of(q);
    const std::string own = "this rank aborted: " + msg.substr(msg.find(": ") + 2);
    auto end = [](local_op* op, errc e, const std::string& m) {
      op->kind = e;
      op->message = m;
      op->state.store(local_op::failed, std::memory_order_release);
    };
    const auto uq = static_cast<std::size_t>(q);
    for (int r = 0; r < size(); ++r) {
      auto& b = box(r);
      {
        std::lock_guard lock(b.m);
        for (std::size_t from = 0; from < b.posted.size(); ++from) {
          if (r != q && from != uq) continue;
          for (auto* op : b.posted[from]) end(op, r == q ? errc::aborted : k, r == q ? own : msg);
          b.posted[from].clear();
          for (auto& m : b.queued[from]) end(m.op, from == uq ? errc::aborted : k, from == uq ? own : msg);
          b.queued[from].clear();
        }
        ++b.events;
      }
      b.cv.notify_all();
    }
  }
};

// Completes a receive with a sender's message after checking envelope and size; called
// with the receiver's mailbox locked. A refused message fails the send too, so that
// both sides learn what the other called.
inline void deliver(local_op& op, int from, const envelope& env, std::span<const std::byte> data,
                    local_op& sender, int to) {
  auto refuse = [&](std::string mine, std::string theirs) {
    op.kind = errc::mismatch;
    op.message = std::move(mine);
    op.state.store(local_op::failed, std::memory_order_release);
    sender.kind = errc::mismatch;
    sender.message = std::move(theirs);
    sender.state.store(local_op::failed, std::memory_order_release);
  };
  if (!(env == op.expect)) {
    refuse("this rank called " + op.expect.describe() + " but peer " + std::to_string(from) + " called " +
               env.describe(),
           "this rank called " + env.describe() + " but peer " + std::to_string(to) + " called " +
               op.expect.describe());
    return;
  }
  if (data.size() != op.size) {
    const std::string what = " for " + op.expect.describe();
    refuse("peer " + std::to_string(from) + " sent " + std::to_string(data.size()) +
               " bytes where this rank expects " + std::to_string(op.size) + what,
           "this rank sent " + std::to_string(data.size()) + " bytes where peer " + std::to_string(to) +
               " expects " + std::to_string(op.size) + what);
    return;
  }
  if (!data.empty()) std::memcpy(op.dst, data.data(), data.size());
  op.state.store(local_op::done, std::memory_order_release);
  sender.state.store(local_op::done, std::memory_order_release);
}

}  // namespace detail

class local_transport {
 public:
  using op = detail::local_op;

  local_transport() = default;
  local_transport(std::shared_ptr<detail::local_state> s, int rank) : s_(std::move(s)), rank_(rank) {}
  local_transport(local_transport&& o) noexcept
      : s_(std::move(o.s_)), rank_(o.rank_), seen_(o.seen_), cause_(o.cause_.load()) {}
  local_transport& operator=(local_transport&& o) noexcept {
    s_ = std::move(o.s_);
    rank_ = o.rank_;
    seen_ = o.seen_;
    cause_.store(o.cause_.load());
    return *this;
  }

  int rank() const noexcept { return rank_; }
  int size() const noexcept { return s_ ? s_->size() : 0; }

  void send(int peer, const envelope& env, std::span<const std::byte> data, op& o) {
    check_alive(peer);
    if (const auto d = s_->rank(rank_).delay_us.load(); d > 0) {
      std::this_thread::sleep_for(std::chrono::microseconds(d));
      check_alive(peer);
    }
    o.peer = peer;
    o.sending = true;
    o.state.store(op::pending, std::memory_order_relaxed);
    auto& b = s_->box(peer);
    {
      std::unique_lock lock(b.m);
      // Checked again under the lock: fail_rank sets the flag before it sweeps this
      // mailbox, so a send queued here after the sweep would wait for nothing.
      if (s_->rank(rank_).failed.load() || s_->rank(peer).failed.load()) {
        lock.unlock();
        check_alive(peer);
      }
      auto& posted = b.posted[static_cast<std::size_t>(rank_)];
      if (!posted.empty()) {
        op* r = posted.front();
        posted.pop_front();
        detail::deliver(*r, rank_, env, data, o, peer);
      } else {
        b.queued[static_cast<std::size_t>(rank_)].push_back({env, data, &o});
      }
      ++b.events;
    }
    b.cv.notify_all();
  }

  void recv(int peer, const envelope& env, std::span<std::byte> data, op& o) {
    check_self(peer);
    o.peer = peer;
    o.sending = false;
    o.expect = env;
    o.dst = data.data();
    o.size = data.size();
    o.state.store(op::pending, std::memory_order_relaxed);
    auto& b = s_->box(rank_);
    {
      std::unique_lock lock(b.m);
      if (s_->rank(rank_).failed.load()) {  // again under the lock, as in send()
        lock.unlock();
        check_self(peer);
      }
      auto& q = b.queued[static_cast<std::size_t>(peer)];
      if (q.empty()) {
        if (s_->rank(peer).failed.load()) {
          const auto [k, msg] = s_->failure_of(peer);
          o.kind = k;
          o.message = msg;
          o.state.store(op::failed, std::memory_order_release);
        } else {
          b.posted[static_cast<std::size_t>(peer)].push_back(&o);
        }
        return;
      }
      const detail::local_send m = q.front();
      q.pop_front();
      detail::deliver(o, peer, m.env, m.data, *m.op, rank_);
    }
    // The sender may be waiting in poll(); tell it, without holding our own lock.
    auto& sb = s_->box(peer);
    {
      std::lock_guard lock(sb.m);
      ++sb.events;
    }
    sb.cv.notify_all();
  }

  bool test(op& o) {
    const int st = o.state.load(std::memory_order_acquire);
    if (st == op::failed) {
      if (o.kind != errc::mismatch && o.kind != errc::aborted) cause_ = o.peer;
      throw error(o.kind, {}, rank_, o.peer, o.message);
    }
    return st == op::done;
  }

  void cancel(op& o) {
    if (o.state.load(std::memory_order_acquire) != op::pending) return;
    // A pending send waits in the receiver's mailbox, a pending receive in our own.
    auto& b = s_->box(o.sending ? o.peer : rank_);
    std::lock_guard lock(b.m);
    if (o.sending) {
      auto& q = b.queued[static_cast<std::size_t>(rank_)];
      for (auto it = q.begin(); it != q.end(); ++it) {
        if (it->op == &o) {
          q.erase(it);
          break;
        }
      }
    } else {
      auto& posted = b.posted[static_cast<std::size_t>(o.peer)];
      for (auto it = posted.begin(); it != posted.end(); ++it) {
        if (*it == &o) {
          posted.erase(it);
          break;
        }
      }
    }
    o.state.store(op::idle, std::memory_order_relaxed);
  }

  void poll(std::chrono::nanoseconds d) {
    auto& b = s_->box(rank_);
    std::unique_lock lock(b.m);
    b.cv.wait_for(lock, d, [&] { return b.events != seen_; });
    seen_ = b.events;
  }

  // Passes on the first failure this rank saw, so that its peers learn the root cause.
  void abort(errc kind, std::string_view why, std::uint64_t seq) {
    if (const int cause = cause_.load(); cause >= 0) {
      auto& c = s_->rank(cause);
      std::unique_lock lock(c.m);
      const int origin = c.origin >= 0 ? c.origin : cause;
      const errc k = c.kind;
      std::string reason = c.reason;
      lock.unlock();
      s_->fail_rank(rank_, k, origin, std::move(reason), seq);
    } else {
      s_->fail_rank(rank_, kind, rank_, std::string(why), seq);
    }
  }

  void confirm(std::uint64_t seq) {
    for (int q = 0; q < size(); ++q) {
      auto& r = s_->rank(q);
      if (q == rank_ || !r.failed.load()) continue;
      std::unique_lock lock(r.m);
      if (r.gave_up_at > seq) continue;
      lock.unlock();
      cause_ = q;
      const auto [k, msg] = s_->failure_of(q);
      throw error(k, {}, rank_, q, msg);
    }
  }

 private:
  void check_self(int peer) {
    if (s_->rank(rank_).failed.load()) throw_self_failed(peer);
  }

  void check_alive(int peer) {
    check_self(peer);
    if (s_->rank(peer).failed.load()) {
      cause_ = peer;
      const auto [k, msg] = s_->failure_of(peer);
      throw error(k, {}, rank_, peer, msg);
    }
  }

  [[noreturn]] void throw_self_failed(int peer) {
    auto& me = s_->rank(rank_);
    std::lock_guard lock(me.m);
    throw error(errc::aborted, {}, rank_, peer,
                "this rank has failed (" + me.reason +
                    "); a failed rank of a local_world stays failed: build a new local_world");
  }

  std::shared_ptr<detail::local_state> s_;
  int rank_ = 0;
  std::uint64_t seen_ = 0;
  std::atomic<int> cause_{-1};  // the peer whose failure made this rank fail, if any
};

// The shared world of p in-process ranks. transport(r) is rank r's endpoint; give each
// to one thread (through a communicator).
class local_world {
 public:
  explicit local_world(int ranks) : s_(make(ranks)) {}

  int size() const noexcept { return s_->size(); }

  local_transport transport(int rank) const {
    check(rank);
    return {s_, rank};
  }

  // Fault injection: rank r is dead from now on; its peers' operations with it fail.
  void kill(int rank) {
    check(rank);
    // A dead rank says nothing of which calls it completed: confirm() ignores it.
    s_->fail_rank(rank, errc::peer_failure, rank, "killed by fault injection",
                  std::numeric_limits<std::uint64_t>::max());
  }

  // Fault injection: every message rank r sends from now on is delayed by d.
  void set_delay(int rank, std::chrono::microseconds d) {
    check(rank);
    s_->rank(rank).delay_us.store(d.count());
  }

 private:
  void check(int rank) const {
    if (rank < 0 || rank >= size()) {
      throw error(errc::invalid_argument, "local_world", rank, error::no_rank,
                  "rank out of range [0, " + std::to_string(size()) + ")");
    }
  }

  static std::shared_ptr<detail::local_state> make(int ranks) {
    if (ranks < 1) {
      throw error(errc::invalid_argument, "local_world", error::no_rank, error::no_rank,
                  "needs at least one rank, got " + std::to_string(ranks));
    }
    return std::make_shared<detail::local_state>(ranks);
  }

  std::shared_ptr<detail::local_state> s_;
};

static_assert(transport<local_transport>);

}  // namespace collx
