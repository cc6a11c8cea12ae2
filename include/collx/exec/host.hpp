#pragma once

// The host executor: runs any schedule over any two-sided transport.
//
// It keeps every step that may start started: sends and receives are posted as soon as
// their dependencies have completed (in list order per channel, so that messages pair
// up first-in first-out), and a receive-and-reduce lands in one of a few staging slots.
// So while the reduction of segment k runs on this thread, segment k+1 is already
// arriving in the next slot. All waiting goes through transport.poll() with a bounded
// slice, and the whole operation through one deadline: it cannot hang.

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "collx/config.hpp"
#include "collx/core/error.hpp"
#include "collx/core/reduce.hpp"
#include "collx/schedule/channels.hpp"
#include "collx/schedule/schedule.hpp"
#include "collx/schedule/walk.hpp"
#include "collx/transport/concept.hpp"

namespace collx {

// A schedule with what executors derive from it once, so a cached plan costs nothing
// per call: its channels (schedule/channels.hpp) and its largest staged message.
struct plan {
  schedule sched;
  channel_layout channels;
  std::size_t staged = 0;  // largest staged message, elements

  explicit plan(schedule s) : sched(std::move(s)), channels(sched), staged(sched.max_staged()) {}
};

struct exec_buffers {
  const std::byte* input = nullptr;  // null when in place
  std::byte* output = nullptr;
  std::byte* scratch = nullptr;  // provided by the executor when null
};

struct exec_call {
  dtype type = dtype::u8;
  reduce_op op = reduce_op::sum;
  envelope env;
  std::chrono::milliseconds timeout = defaults::timeout;
  // When the call began, which its deadline counts from (the front end reads the clock
  // once for this and for its flight recorder); the epoch: when run() begins.
  std::chrono::steady_clock::time_point start{};
};

template <transport T>
class host_executor {
 public:
  void run(T& t, const plan& pl, exec_buffers bufs, const exec_call& call) {
    const schedule& s = pl.sched;
    const std::size_t es = size_of(call.type);
    reserve(s.steps.size(), pl.staged * es, s.scratch_count * es);
    if (bufs.scratch == nullptr) bufs.scratch = scratch_.get();
    running r{t, pl, bufs, call, es, pl.staged * es};
    std::fill_n(state_.get(), s.steps.size(), waiting);
    inflight_.clear();
    free_slots_.clear();
    for (std::size_t k = 0; k < slots(); ++k) free_slots_.push_back(k);
    heads_.assign(pl.channels.count, 0);
    try {
      progress(r);
    } catch (const error& e) {
      cancel_all(t);
      if (!e.collective().empty()) throw;
      throw error(e.kind(), to_string(s.coll), s.rank, e.peer(),
                  e.detail() + " (step #" + std::to_string(r.current) + " of " +
                      std::to_string(s.steps.size()) + " in " + call.env.describe() + ")");
    } catch (...) {
      cancel_all(t);
      throw;
    }
    confirm(t, s, call);
  }

 private:
  // One call under way.
  struct running {
    T& t;
    const plan& pl;
    exec_buffers bufs;
    const exec_call& call;
    std::size_t es;           // element size
    std::size_t slot_bytes;   // of a staging slot
    std::size_t done = 0;     // steps finished
    std::size_t current = 0;  // the step being started or completed, for error reports
    const schedule& s = pl.sched;

    std::byte* bytes(const region& g) const {
      std::byte* base = g.buf == buffer::output    ? bufs.output
                        : g.buf == buffer::scratch ? bufs.scratch
                                                   : const_cast<std::byte*>(bufs.input);
      return base + g.offset * es;
    }
  };

  // Until every step has finished: start what may start, complete what has arrived, and
  // when nothing moved, wait on the transport, bounded by the call's deadline.
  void progress(running& r) {
    const std::size_t n = r.s.steps.size();
    const auto start =
        r.call.start.time_since_epoch().count() != 0 ? r.call.start : std::chrono::steady_clock::now();
    // A century stands for "forever": milliseconds::max() would overflow the clock.
    const auto deadline =
        start + std::min<std::chrono::milliseconds>(r.call.timeout, std::chrono::hours(24 * 365 * 100));
    while (r.done < n) {
      bool progressed = start_ready(r);
      progressed = post_reductions(r) || progressed;
      progressed = complete_arrived(r) || progressed;
      if (r.done == n || progressed) continue;
      const auto now = std::chrono::steady_clock::now();
      if (now >= deadline) {
        r.current = oldest_waiting(r.s);
        throw_timeout(r.s, r.call, r.current,
                      std::chrono::duration_cast<std::chrono::milliseconds>(now - start));
      }
      r.t.poll(std::min<std::chrono::nanoseconds>(deadline - now, defaults::poll_slice));
    }
  }

  // The envelope of step st's message: the call's, but where blocks are sized per peer
  // (all_to_all_v, send_recv) it carries the pair's count as this rank sees it, and a
  // send_recv's receipt carries envelope::receipt.
  static envelope envelope_of(const running& r, const step& st) {
    envelope e = r.call.env;
    if (!per_peer(r.s.coll)) return e;
    const auto& counts = st.kind == step_kind::send ? r.s.send_counts : r.s.recv_counts;
    e.count = counts[static_cast<std::size_t>(st.peer)];
    if (r.s.coll == collective::send_recv && st.phase == receipt_phase) e.count = envelope::receipt;
    return e;
  }

  // Starts each channel's next steps while their turn has come. Whether any started.
  bool start_ready(running& r) {
    bool progressed = false;
    for (std::size_t qi = 0; qi < r.pl.channels.count; ++qi) {
      const auto queue = r.pl.channels.steps_of(qi);
      for (auto& h = heads_[qi]; h < queue.size(); ++h) {
        const std::size_t i = queue[h];
        const step& st = r.s.steps[i];
        if (st.kind == step_kind::recv_reduce || !deps_done(r.s, i)) break;
        r.current = i;
        switch (st.kind) {
          case step_kind::copy:
            if (st.src.count != 0) std::memmove(r.bytes(st.dst), r.bytes(st.src), st.src.count * r.es);
            state_[i] = finished;
            ++r.done;
            break;
          case step_kind::send:
            r.t.send(st.peer, envelope_of(r, st), {r.bytes(st.src), st.src.count * r.es}, ops_[i]);
            start_op(i);
            break;
          case step_kind::recv:
            r.t.recv(st.peer, envelope_of(r, st), {r.bytes(st.dst), st.dst.count * r.es}, ops_[i]);
            start_op(i);
            break;
          case step_kind::recv_reduce: break;
        }
        progressed = true;
      }
    }
    return progressed;
  }

  // A receive-and-reduce lands in a staging slot, so it is posted on its channel turn
  // without waiting for its dependencies, which gate only the reduction (waiting could
  // deadlock a rendezvous transport: two partners that each must finish a send before
  // posting the receive the other's send needs). Among the channels' next steps, slots
  // go to the earliest, so a later step does not take the slot an earlier one it may
  // depend on needs (handing them out channel by channel deadlocked folded recursive
  // doubling). A receive-and-reduce queued behind a plain receive that waits is not yet
  // a candidate, nor is one whose reduction waits for a receive-and-reduce not yet
  // posted: while that one is queued behind a plain receive, the later ones would take
  // every slot and wait for it (a hierarchical reduce's leader: the reductions across
  // nodes, on their own channel, took the slots that its node's sums needed first).
  // Whether any was posted.
  bool post_reductions(running& r) {
    bool progressed = false;
    const std::size_t n = r.s.steps.size();
    while (!free_slots_.empty()) {
      std::size_t best = n;
      std::size_t best_q = 0;
      // The receive channels: p..2p-1.
      for (std::size_t qi = r.pl.channels.count / 2; qi + 1 < r.pl.channels.count; ++qi) {
        const auto queue = r.pl.channels.steps_of(qi);
        if (heads_[qi] == queue.size()) continue;
        const std::size_t i = queue[heads_[qi]];
        if (r.s.steps[i].kind == step_kind::recv_reduce && i < best && !waits_for_unposted(r.s, i)) {
          best = i;
          best_q = qi;
        }
      }
      if (best == n) break;
      const step& st = r.s.steps[best];
      r.current = best;
      slot_of_[best] = free_slots_.back();
      free_slots_.pop_back();
      if (viewed(r.t, st.dst.count * r.es)) {
        // The slot is only a token here: it bounds the views held, as it bounds staging.
        if constexpr (one_sided_transport<T>)
          r.t.recv_view(st.peer, r.call.env, st.dst.count * r.es, ops_[best]);
      } else {
        r.t.recv(st.peer, r.call.env, {staging_.get() + slot_of_[best] * r.slot_bytes, st.dst.count * r.es},
                 ops_[best]);
      }
      start_op(best);
      ++heads_[best_q];
      progressed = true;
    }
    return progressed;
  }

  // Completes what has arrived, and reduces staged data as it comes. Whether any did.
  bool complete_arrived(running& r) {
    bool progressed = false;
    for (std::size_t k = 0; k < inflight_.size();) {
      const std::size_t i = inflight_[k];
      r.current = i;
      if (state_[i] == started) {
        if (!r.t.test(ops_[i])) {
          ++k;
          continue;
        }
        state_[i] = arrived;
        progressed = true;
      }
      const step& st = r.s.steps[i];
      if (st.kind == step_kind::recv_reduce) {
        if (!deps_done(r.s, i)) {
          ++k;
          continue;
        }
        reduce_arrived(r, i);
      }
      state_[i] = finished;
      ++r.done;
      inflight_[k] = inflight_.back();
      inflight_.pop_back();
      progressed = true;
    }
    return progressed;
  }

  // Reduces the message of receive-and-reduce step i, in a view or a staging slot, and
  // frees its slot.
  void reduce_arrived(running& r, std::size_t i) {
    const step& st = r.s.steps[i];
    if (viewed(r.t, st.dst.count * r.es)) {
      if constexpr (one_sided_transport<T>) {
        reduce(r.call.type, r.call.op, r.bytes(st.dst), r.bytes(st.src), r.t.view(ops_[i]), st.dst.count);
        r.t.release(ops_[i]);
      }
    } else {
      reduce(r.call.type, r.call.op, r.bytes(st.dst), r.bytes(st.src),
             staging_.get() + slot_of_[i] * r.slot_bytes, st.dst.count);
    }
    free_slots_.push_back(slot_of_[i]);
  }

  enum : unsigned char { waiting, started, arrived, finished };

  // Whether step i depends on a receive-and-reduce not yet posted.
  bool waits_for_unposted(const schedule& s, std::size_t i) const noexcept {
    for (auto d : s.deps_of(i)) {
      if (s.steps[d].kind == step_kind::recv_reduce && state_[d] == waiting) return true;
    }
    return false;
  }
  bool deps_done(const schedule& s, std::size_t i) const noexcept {
    for (auto d : s.deps_of(i)) {
      if (state_[d] != finished) return false;
    }
    return true;
  }

  static constexpr std::size_t slots() noexcept { return defaults::staging_slots; }

  // Whether a receive-and-reduce of `bytes` reduces out of a view of the transport's
  // memory rather than out of a staging slot.
  static bool viewed([[maybe_unused]] const T& t, [[maybe_unused]] std::size_t bytes) noexcept {
    if constexpr (one_sided_transport<T>) {
      return bytes <= t.max_view_bytes();
    } else {
      return false;
    }
  }

  void start_op(std::size_t i) {
    state_[i] = started;
    inflight_.push_back(i);
  }

  // Buffers grow to the largest call seen and are then reused: the steady state allocates nothing.
  void reserve(std::size_t steps, std::size_t slot_bytes, std::size_t scratch_bytes) {
    if (steps > steps_cap_) {
      ops_ = std::make_unique<typename T::op[]>(steps);
      state_ = std::make_unique_for_overwrite<unsigned char[]>(steps);
      slot_of_ = std::make_unique_for_overwrite<std::size_t[]>(steps);
      steps_cap_ = steps;
      inflight_.reserve(steps);
    }
    if (slot_bytes * slots() > staging_cap_) {
      staging_ = std::make_unique_for_overwrite<std::byte[]>(slot_bytes * slots());
      staging_cap_ = slot_bytes * slots();
    }
    if (scratch_bytes > scratch_cap_) {
      scratch_ = std::make_unique_for_overwrite<std::byte[]>(scratch_bytes);
      scratch_cap_ = scratch_bytes;
    }
    free_slots_.reserve(slots());
  }

  void cancel_all(T& t) noexcept {
    for (auto i : inflight_) {
      if (state_[i] != started) continue;
      try {
        t.cancel(ops_[i]);
      } catch (...) {
      }
    }
    inflight_.clear();
  }

  // The earliest receive still outstanding names the peer this rank is waiting for.
  std::size_t oldest_waiting(const schedule& s) const {
    std::size_t best = s.steps.size();
    for (auto i : inflight_) {
      if (state_[i] == started && is_receive(s.steps[i].kind)) best = std::min(best, i);
    }
    if (best == s.steps.size()) {
      for (std::size_t i = 0; i < s.steps.size(); ++i) {
        if (state_[i] != finished) return i;
      }
      return 0;
    }
    return best;
  }

  // Every step is done, but a peer may have given up on this call after sending what
  // this rank received (a late rank completes from messages sent before the timeout):
  // then the call fails here too, so that no two ranks disagree on whether it happened.
  static void confirm(T& t, const schedule& s, const exec_call& call) {
    try {
      t.confirm(call.env.seq);
    } catch (const error& e) {
      throw error(e.kind(), to_string(s.coll), s.rank, e.peer(),
                  e.detail() + " (this rank had every message of " + call.env.describe() +
                      ", but the peer gave up on that call first)");
    }
  }

  [[noreturn]] static void throw_timeout(const schedule& s, const exec_call& call, std::size_t i,
                                         std::chrono::milliseconds waited) {
    const step& st = s.steps[i];
    std::string what = std::string(to_string(st.kind)) + " of " + std::to_string(st.count()) + " elements";
    throw error(errc::timeout, to_string(s.coll), s.rank, st.peer,
                "timed out after " + std::to_string(waited.count()) + " ms waiting for peer " +
                    std::to_string(st.peer) + " (step #" + std::to_string(i) + ": " + what +
                    "); this rank called " + call.env.describe() +
                    ". Is the peer alive, and did it make the same call?");
  }

  std::unique_ptr<typename T::op[]> ops_;
  std::unique_ptr<unsigned char[]> state_;
  std::unique_ptr<std::size_t[]> slot_of_;
  std::size_t steps_cap_ = 0;
  std::unique_ptr<std::byte[]> staging_;
  std::size_t staging_cap_ = 0;
  std::unique_ptr<std::byte[]> scratch_;
  std::size_t scratch_cap_ = 0;
  std::vector<std::size_t> inflight_;
  std::vector<std::size_t> free_slots_;
  std::vector<std::size_t> heads_;
};

}  // namespace collx
