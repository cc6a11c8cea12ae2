#pragma once

// A schedule's steps sorted into channels, in posting order: sends to peer q in channel
// q, receives from peer q in channel p + q, local copies in channel 2p. Messages of one
// channel pair up first-in first-out, so only a channel's head can start next: an
// executor looks at 2p + 1 candidates per round, not at every step. Both executors run
// from this one layout: the host plan keeps it, and the peer program is compiled from
// it (a dependency becomes "position k of channel c", so a lane keeps only the heads).

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "collx/schedule/schedule.hpp"

namespace collx {

struct channel_layout {
  std::uint32_t count = 0;              // channels: 2p + 1
  std::vector<std::uint32_t> begin;     // count + 1 offsets into order
  std::vector<std::uint32_t> order;     // step indices, channel after channel
  std::vector<std::uint32_t> channel;   // per step: its channel
  std::vector<std::uint32_t> position;  // per step: its place in its channel

  static std::uint32_t channel_of(const step& st, int ranks) noexcept {
    const auto p = static_cast<std::uint32_t>(ranks);
    if (st.kind == step_kind::copy) return 2 * p;
    const auto q = static_cast<std::uint32_t>(st.peer);
    return st.kind == step_kind::send ? q : p + q;
  }

  explicit channel_layout(const schedule& s)
      : count(2 * static_cast<std::uint32_t>(s.ranks) + 1),
        begin(count + 1, 0),
        order(s.steps.size()),
        channel(s.steps.size()),
        position(s.steps.size()) {
    std::vector<std::uint32_t> filled(count, 0);
    for (std::size_t i = 0; i < s.steps.size(); ++i) {
      channel[i] = channel_of(s.steps[i], s.ranks);
      position[i] = filled[channel[i]]++;
    }
    for (std::uint32_t c = 0; c < count; ++c) begin[c + 1] = begin[c] + filled[c];
    for (std::size_t i = 0; i < s.steps.size(); ++i) {
      order[begin[channel[i]] + position[i]] = static_cast<std::uint32_t>(i);
    }
  }

  // The steps of channel c, in posting order.
  std::span<const std::uint32_t> steps_of(std::size_t c) const noexcept {
    return {order.data() + begin[c], begin[c + 1] - begin[c]};
  }
};

}  // namespace collx
