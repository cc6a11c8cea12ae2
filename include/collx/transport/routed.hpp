#pragma once

// One transport for a job that spans nodes: each peer is reached over the link its
// locality calls for, the ranks of this rank's node over Near (shared memory), every
// other rank over Far (tcp, or MPI under mpirun). Executors and schedules see one
// transport of the job's ranks; the routes are this class's business alone.
//
// Failures, aborts and mismatches are each route's own, exactly as when it runs alone:
// an abort goes out on both (a rank gives up for every peer), confirm() asks both, and
// an error from Near names the job's ranks (shm_options::ranks). The one wait, poll(),
// makes progress on both routes within its bound: when only one route has operations
// pending it waits on that one alone; when both do, it looks at each without blocking,
// for as long as shared memory would spin since an operation last finished (a message
// across often lands while one inside is awaited: a wait on either alone would notice
// the other's only when it ends), then checks Far without blocking and waits on Near
// for a short slice, so neither route starves the other.
//
// counters() counts what each route carried from this rank, for tests and tools.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "collx/core/envelope.hpp"
#include "collx/core/error.hpp"
#include "collx/transport/concept.hpp"

namespace collx {

// Bytes and messages this rank sent over each route.
struct route_counters {
  std::atomic<std::uint64_t> near_bytes{0}, far_bytes{0};
  std::atomic<std::uint64_t> near_messages{0}, far_messages{0};
};

template <transport Near, transport Far>
class routed_transport {
 public:
  struct op {
    typename Near::op near;
    typename Far::op far;
    bool on_near = false;
    bool counted = false;  // in its route's count of operations in flight
  };

  // When both routes have operations in flight: how long poll() looks at both without
  // blocking since an operation last finished, then how long each wait on Near lasts.
  static constexpr std::chrono::microseconds both_spin{200};
  static constexpr std::chrono::microseconds both_slice{50};

  routed_transport() = default;

  // `near` connects the ranks `members` of the job (its rank i is the job's rank
  // members[i]; this rank among them); `far` connects the job's ranks, at least every
  // one outside members.
  routed_transport(Near near, Far far, std::vector<int> members)
      : near_(std::move(near)), far_(std::move(far)), counters_(std::make_shared<route_counters>()) {
    local_.assign(static_cast<std::size_t>(far_.size()), -1);
    for (std::size_t i = 0; i < members.size(); ++i) {
      const int q = members[i];
      if (q < 0 || q >= far_.size() || local_[static_cast<std::size_t>(q)] != -1) {
        throw error(errc::invalid_argument, "routed_transport", far_.rank(), error::no_rank,
                    "node members must be distinct ranks of the job");
      }
      local_[static_cast<std::size_t>(q)] = static_cast<int>(i);
    }
    if (static_cast<int>(members.size()) != near_.size() ||
        local_[static_cast<std::size_t>(far_.rank())] != near_.rank()) {
      throw error(errc::invalid_argument, "routed_transport", far_.rank(), error::no_rank,
                  "the near transport's ranks are not this node's members");
    }
  }

  int rank() const noexcept { return far_.rank(); }
  int size() const noexcept { return far_.size(); }
  bool is_near(int peer) const noexcept {
    return peer >= 0 && peer < size() && local_[static_cast<std::size_t>(peer)] >= 0;
  }
  std::shared_ptr<const route_counters> counters() const noexcept { return counters_; }
  Near& near_route() noexcept { return near_; }
  Far& far_route() noexcept { return far_; }

  void send(int peer, const envelope& env, std::span<const std::byte> data, op& o) {
    route(peer, o);
    if (o.on_near) {
      near_.send(local(peer), env, data, o.near);
      counters_->near_bytes += data.size();
      ++counters_->near_messages;
    } else {
      far_.send(peer, env, data, o.far);
      counters_->far_bytes += data.size();
      ++counters_->far_messages;
    }
    begun(o);
  }

  void recv(int peer, const envelope& env, std::span<std::byte> data, op& o) {
    route(peer, o);
    if (o.on_near) {
      near_.recv(local(peer), env, data, o.near);
    } else {
      far_.recv(peer, env, data, o.far);
    }
    begun(o);
  }

  bool test(op& o) {
    bool done = false;
    try {
      done = o.on_near ? near_.test(o.near) : far_.test(o.far);
    } catch (...) {
      ended(o);
      throw;
    }
    if (done) ended(o);
    return done;
  }

  void cancel(op& o) {
    if (o.on_near) {
      near_.cancel(o.near);
    } else {
      far_.cancel(o.far);
    }
    ended(o);
  }

  void poll(std::chrono::nanoseconds d) {
    if (far_busy_ == 0 && near_busy_ != 0) return near_.poll(d);
    if (near_busy_ == 0 && far_busy_ != 0) return far_.poll(d);
    const auto now = std::chrono::steady_clock::now();
    if (!spinning_) {
      spinning_ = true;
      spin_from_ = now;
    }
    far_.poll(std::chrono::nanoseconds(0));
    if (now - spin_from_ < both_spin) return near_.poll(std::chrono::nanoseconds(0));
    near_.poll(std::min<std::chrono::nanoseconds>(d, both_slice));
    far_.poll(std::chrono::nanoseconds(0));
  }

  void abort(errc kind, std::string_view why, std::uint64_t seq) {
    near_.abort(kind, why, seq);
    far_.abort(kind, why, seq);
  }

  void confirm(std::uint64_t seq) {
    near_.confirm(seq);
    far_.confirm(seq);
  }

  // Fault injection (collx/transport/faulty.hpp): both routes drop.
  void inject_disconnect(bool reset) requires requires(Near& n, Far& f) {
    n.inject_disconnect(reset);
    f.inject_disconnect(reset);
  }
  {
    near_.inject_disconnect(reset);
    far_.inject_disconnect(reset);
  }

 private:
  int local(int peer) const { return local_[static_cast<std::size_t>(peer)]; }

  void route(int peer, op& o) {
    if (peer < 0 || peer >= size() || peer == rank()) {
      throw error(errc::invalid_argument, {}, rank(), peer, "no such peer");
    }
    o.on_near = is_near(peer);
  }

  void begun(op& o) {
    o.counted = true;
    ++(o.on_near ? near_busy_ : far_busy_);
  }

  void ended(op& o) {
    if (!o.counted) return;
    o.counted = false;
    spinning_ = false;
    --(o.on_near ? near_busy_ : far_busy_);
  }

  Near near_;
  Far far_;
  std::vector<int> local_;  // each job rank's index in near_, -1 off this node
  std::size_t near_busy_ = 0, far_busy_ = 0;
  bool spinning_ = false;  // poll() has looked at both since an operation last finished
  std::chrono::steady_clock::time_point spin_from_{};
  std::shared_ptr<route_counters> counters_;
};

}  // namespace collx
