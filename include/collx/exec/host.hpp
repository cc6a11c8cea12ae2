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
#include "collx/schedule/schedule.hpp"
#include "collx/schedule/walk.hpp"
#include "collx/transport/concept.hpp"

namespace collx {

// A schedule with what executors derive from it once, so a cached plan costs nothing
// per call.
struct plan {
  schedule sched;
  // The steps of each channel in posting order: sends to peer q at [q], receives from
  // peer q at [ranks + q], local copies last. Only a queue's head can start next, so
  // the executor looks at 2p+1 candidates per round, not at every step.
  std::vector<std::vector<std::uint32_t>> queues;
  std::size_t staged = 0;  // largest staged message, elements

  explicit plan(schedule s) : sched(std::move(s)), staged(sched.max_staged()) {
    const auto p = static_cast<std::size_t>(sched.ranks);
    queues.resize(2 * p + 1);
    for (std::size_t i = 0; i < sched.steps.size(); ++i) {
      const step& st = sched.steps[i];
      const auto q = static_cast<std::size_t>(st.peer);
      auto& queue = st.kind == step_kind::copy   ? queues[2 * p]
                    : st.kind == step_kind::send ? queues[q]
                                                 : queues[p + q];
      queue.push_back(static_cast<std::uint32_t>(i));
    }
  }
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
};

template <transport T>
class host_executor {
 public:
  void run(T& t, const plan& pl, exec_buffers bufs, const exec_call& call) {
    const schedule& s = pl.sched;
    const std::size_t n = s.steps.size();
    const std::size_t es = size_of(call.type);
    reserve(n, pl.staged * es, s.scratch_count * es);
    if (bufs.scratch == nullptr) bufs.scratch = scratch_.get();
    auto bytes = [&](const region& r) -> std::byte* {
      std::byte* base = r.buf == buffer::output    ? bufs.output
                        : r.buf == buffer::scratch ? bufs.scratch
                                                   : const_cast<std::byte*>(bufs.input);
      return base + r.offset * es;
    };

    std::fill_n(state_.get(), n, waiting);
    inflight_.clear();
    free_slots_.clear();
    for (std::size_t k = 0; k < slots(); ++k) free_slots_.push_back(k);
    const std::size_t slot_bytes = pl.staged * es;
    const auto start = std::chrono::steady_clock::now();
    // A century stands for "forever": milliseconds::max() would overflow the clock.
    const auto deadline =
        start + std::min<std::chrono::milliseconds>(call.timeout, std::chrono::hours(24 * 365 * 100));
    std::size_t done = 0;     // steps finished
    std::size_t current = 0;  // the step being started or completed, for error reports
    heads_.assign(pl.queues.size(), 0);

    try {
      while (done < n) {
        bool progressed = false;
        // Start each channel's next steps while their turn has come.
        for (std::size_t qi = 0; qi < pl.queues.size(); ++qi) {
          const auto& queue = pl.queues[qi];
          for (auto& h = heads_[qi]; h < queue.size(); ++h) {
            const std::size_t i = queue[h];
            const step& st = s.steps[i];
            if (st.kind == step_kind::recv_reduce || !deps_done(s, i)) break;
            current = i;
            switch (st.kind) {
              case step_kind::copy:
                if (st.src.count != 0) std::memmove(bytes(st.dst), bytes(st.src), st.src.count * es);
                state_[i] = finished;
                ++done;
                break;
              case step_kind::send:
                t.send(st.peer, call.env, {bytes(st.src), st.src.count * es}, ops_[i]);
                start_op(i);
                break;
              case step_kind::recv:
                t.recv(st.peer, call.env, {bytes(st.dst), st.dst.count * es}, ops_[i]);
                start_op(i);
                break;
              case step_kind::recv_reduce: break;
            }
            progressed = true;
          }
        }
        // A receive-and-reduce lands in a staging slot, so it is posted on its channel
        // turn without waiting for its dependencies, which gate only the reduction
        // (waiting could deadlock a rendezvous transport: two partners that each must
        // finish a send before posting the receive the other's send needs). Among the
        // channels' next steps, slots go to the earliest, so a later step does not take
        // the slot an earlier one it may depend on needs (handing them out channel by
        // channel deadlocked folded recursive doubling). A receive-and-reduce queued
        // behind a plain receive that waits is not yet a candidate.
        while (!free_slots_.empty()) {
          std::size_t best = n;
          std::size_t best_q = 0;
          for (std::size_t qi = pl.queues.size() / 2; qi + 1 < pl.queues.size(); ++qi) {
            const auto& queue = pl.queues[qi];
            if (heads_[qi] == queue.size()) continue;
            const std::size_t i = queue[heads_[qi]];
            if (s.steps[i].kind == step_kind::recv_reduce && i < best) {
              best = i;
              best_q = qi;
            }
          }
          if (best == n) break;
          const step& st = s.steps[best];
          current = best;
          slot_of_[best] = free_slots_.back();
          free_slots_.pop_back();
          if (viewed(t, st.dst.count * es)) {
            // The slot is only a token here: it bounds the views held, as it bounds staging.
            if constexpr (one_sided_transport<T>)
              t.recv_view(st.peer, call.env, st.dst.count * es, ops_[best]);
          } else {
            t.recv(st.peer, call.env, {staging_.get() + slot_of_[best] * slot_bytes, st.dst.count * es},
                   ops_[best]);
          }
          start_op(best);
          ++heads_[best_q];
          progressed = true;
        }
        // Complete what has arrived; reduce staged data as it comes.
        for (std::size_t k = 0; k < inflight_.size();) {
          const std::size_t i = inflight_[k];
          current = i;
          if (state_[i] == started) {
            if (!t.test(ops_[i])) {
              ++k;
              continue;
            }
            state_[i] = arrived;
            progressed = true;
          }
          const step& st = s.steps[i];
          if (st.kind == step_kind::recv_reduce) {
            if (!deps_done(s, i)) {
              ++k;
              continue;
            }
            if (viewed(t, st.dst.count * es)) {
              if constexpr (one_sided_transport<T>) {
                reduce(call.type, call.op, bytes(st.dst), bytes(st.src), t.view(ops_[i]), st.dst.count);
                t.release(ops_[i]);
              }
            } else {
              reduce(call.type, call.op, bytes(st.dst), bytes(st.src),
                     staging_.get() + slot_of_[i] * slot_bytes, st.dst.count);
            }
            free_slots_.push_back(slot_of_[i]);
          }
          state_[i] = finished;
          ++done;
          inflight_[k] = inflight_.back();
          inflight_.pop_back();
          progressed = true;
        }
        if (done == n || progressed) continue;
        const auto now = std::chrono::steady_clock::now();
        if (now >= deadline) {
          current = oldest_waiting(s);
          throw_timeout(s, call, current, std::chrono::duration_cast<std::chrono::milliseconds>(now - start));
        }
        t.poll(std::min<std::chrono::nanoseconds>(deadline - now, defaults::poll_slice));
      }
    } catch (const error& e) {
      cancel_all(t);
      if (!e.collective().empty()) throw;
      throw error(e.kind(), to_string(s.coll), s.rank, e.peer(),
                  e.detail() + " (step #" + std::to_string(current) + " of " + std::to_string(n) + " in " +
                      call.env.describe() + ")");
    } catch (...) {
      cancel_all(t);
      throw;
    }
    confirm(t, s, call);
  }

 private:
  enum : unsigned char { waiting, started, arrived, finished };

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
