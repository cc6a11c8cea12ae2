#pragma once

// One walk over all ranks' schedules, shared by the verifier and the cost model.
// It runs steps in a dataflow order the host executor could also have chosen: a step
// runs once its dependencies have run and the steps before it on the same channel
// (sends to the same peer, receives from the same peer) have run; a receive also needs
// the matching send, matched first-in first-out per (sender, receiver) pair, which is
// how every transport delivers.

#include <cstddef>
#include <cstdint>
#include <deque>
#include <span>
#include <string>
#include <vector>

#include "collx/schedule/schedule.hpp"

namespace collx::detail {

struct walk_outcome {
  bool ok = true;
  std::string problem;  // why the walk stopped: a deadlock or a malformed step
};

// Index of the previous step on the same channel, or -1.
inline std::vector<long> channel_predecessors(const schedule& s) {
  std::vector<long> prev(s.steps.size(), -1);
  std::vector<long> last_send(static_cast<std::size_t>(s.ranks), -1);
  std::vector<long> last_recv(static_cast<std::size_t>(s.ranks), -1);
  for (std::size_t i = 0; i < s.steps.size(); ++i) {
    const auto& st = s.steps[i];
    if (st.kind == step_kind::copy) continue;
    auto& last = st.kind == step_kind::send ? last_send : last_recv;
    const auto q = static_cast<std::size_t>(st.peer);
    prev[i] = last[q];
    last[q] = static_cast<long>(i);
  }
  return prev;
}

inline std::string step_name(int rank, std::size_t i, const step& st) {
  return "rank " + std::to_string(rank) + " step #" + std::to_string(i) + " (" +
         std::string(to_string(st.kind)) +
         (st.peer >= 0 ? " peer " + std::to_string(st.peer) : std::string()) + ")";
}

// f(rank, index, sender, send_index) is called once per step; for a receive, sender
// and send_index name the send it consumes, otherwise they are -1 and 0. f returns
// false to stop the walk.
template <class F>
walk_outcome walk(std::span<const schedule> all, F&& f) {
  const auto p = all.size();
  walk_outcome out;
  for (std::size_t r = 0; r < p; ++r) {
    const auto& s = all[r];
    for (std::size_t i = 0; i < s.steps.size(); ++i) {
      const auto& st = s.steps[i];
      if (st.kind != step_kind::copy &&
          (st.peer < 0 || static_cast<std::size_t>(st.peer) >= p || static_cast<std::size_t>(st.peer) == r)) {
        return {false, step_name(static_cast<int>(r), i, st) + " names an invalid peer"};
      }
      for (auto d : s.deps_of(i)) {
        if (d >= i) {
          return {false,
                  step_name(static_cast<int>(r), i, st) + " depends on a later step #" + std::to_string(d)};
        }
      }
    }
  }
  std::vector<std::vector<long>> chan(p);
  std::vector<std::vector<char>> done(p);
  std::vector<std::size_t> first(p, 0);
  // in_flight[receiver * p + sender]: send steps run but not yet received, in order.
  std::vector<std::deque<std::size_t>> in_flight(p * p);
  for (std::size_t r = 0; r < p; ++r) {
    chan[r] = channel_predecessors(all[r]);
    done[r].assign(all[r].steps.size(), 0);
  }
  bool progress = true;
  while (progress) {
    progress = false;
    for (std::size_t r = 0; r < p; ++r) {
      const auto& s = all[r];
      for (std::size_t i = first[r]; i < s.steps.size(); ++i) {
        if (done[r][i] != 0) continue;
        const auto& st = s.steps[i];
        bool ready = chan[r][i] < 0 || done[r][static_cast<std::size_t>(chan[r][i])] != 0;
        for (auto d : s.deps_of(i)) ready = ready && done[r][d] != 0;
        if (!ready) continue;
        int from = -1;
        std::size_t idx = 0;
        if (is_receive(st.kind)) {
          auto& q = in_flight[r * p + static_cast<std::size_t>(st.peer)];
          if (q.empty()) continue;
          from = st.peer;
          idx = q.front();
          q.pop_front();
        }
        if (!f(static_cast<int>(r), i, from, idx)) return {false, {}};
        if (st.kind == step_kind::send) in_flight[static_cast<std::size_t>(st.peer) * p + r].push_back(i);
        done[r][i] = 1;
        progress = true;
        while (first[r] < s.steps.size() && done[r][first[r]] != 0) ++first[r];
      }
    }
  }
  for (std::size_t r = 0; r < p; ++r) {
    if (first[r] < all[r].steps.size()) {
      const auto i = first[r];
      return {false, "deadlock: " + step_name(static_cast<int>(r), i, all[r].steps[i]) + " can never run"};
    }
  }
  for (std::size_t q = 0; q < p * p; ++q) {
    if (!in_flight[q].empty()) {
      return {false, "rank " + std::to_string(q % p) + " sends a message that rank " + std::to_string(q / p) +
                         " never receives"};
    }
  }
  return out;
}

}  // namespace collx::detail
