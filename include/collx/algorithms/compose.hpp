#pragma once

// Schedules made of schedules: a part (the flat schedule of a group of ranks, or of a
// slice of the call) appended to a whole, its ranks mapped to the whole's and its
// buffers placed where the whole's layout puts them. The hierarchical algorithms
// (hierarchical.hpp) compose their levels this way, and a lane of the peer executor
// runs a block collective over a slice of every block (slice_of_blocks).

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <span>
#include <vector>

#include "collx/schedule/schedule.hpp"

namespace collx::algorithms {
namespace detail {

// Where one buffer of a part (a group's flat schedule) lies in the whole schedule:
// element e of the part's buffer is element at + e of `to`, or, where `units` is given,
// element at + units[e / unit] * stride + e % unit (the part's buffer is a row of units,
// each landing where the job's layout puts it: a rank's block, say). The stride is the
// unit unless given: a larger one spreads the units apart (slice_of_blocks below).
struct placement {
  buffer to = buffer::output;
  std::size_t at = 0;
  std::vector<std::size_t> units{};
  std::size_t stride = 0;  // 0: the part_map's unit
};

// A part's three buffers in the whole schedule, and its unit: every region of the part
// is cut where it crosses a multiple of `unit` (0: never), so that each piece lies in one
// unit. The cuts depend only on the part's own offsets, the same on the sending and on
// the receiving side of every message: a message cut in pieces is received in the same
// pieces, in order.
struct part_map {
  placement in{buffer::input};
  placement out{buffer::output};
  placement tmp{buffer::scratch};
  std::size_t unit = 0;
  // false: the part's empty messages (a rooted tree's signals, rooted.hpp) are left out,
  // where the whole's own data paths already tell every rank of every other (the
  // verifier checks it); a step that waited for one waits for what it waited for.
  bool signals = true;

  const placement& of(buffer b) const noexcept {
    return b == buffer::input ? in : b == buffer::output ? out : tmp;
  }
  std::size_t stride_of(const placement& pl) const noexcept { return pl.stride != 0 ? pl.stride : unit; }
  // Where a piece that lies within one unit lands.
  region place(region r) const {
    const placement& pl = of(r.buf);
    std::size_t off = r.offset;
    if (!pl.units.empty() && r.count != 0) off = pl.units[off / unit] * stride_of(pl) + off % unit;
    return {pl.to, pl.at + off, r.count};
  }
  // The offsets within a step's regions (from their starts) at which one of them
  // crosses into another unit, and the end: the pieces the step becomes.
  std::vector<std::size_t> cuts(const step& st) const {
    const region& a = st.kind == step_kind::recv ? st.dst : st.src;
    std::vector<std::size_t> c;
    auto add = [&](const region& r) {
      if (unit == 0) return;
      for (std::size_t t = unit - r.offset % unit; t < r.count; t += unit) c.push_back(t);
    };
    add(a);
    if (st.kind == step_kind::recv_reduce || st.kind == step_kind::copy) add(st.dst);
    c.push_back(a.count);
    std::sort(c.begin(), c.end());
    c.erase(std::unique(c.begin(), c.end()), c.end());
    return c;
  }
};

// The steps a part's step became in the whole schedule: [first, last).
struct placed {
  std::uint32_t first = 0, last = 0;
  std::vector<std::uint32_t> stood_for{};  // a step left out: the whole's steps it waited for
};

// Appends the steps of `part`, the schedule of a group of ranks, whose phases lie in
// [from, to] to s: the group's rank q is the job's group[q]; part's buffers lie where
// `map` says; its phases follow s's. Each step keeps its own dependencies (`where` maps
// part's steps to s's, so that a part appended in pieces keeps them across its pieces)
// and gains those its regions imply; the steps of its first phase also wait for s's
// steps `first_after` (an order no region implies: who hears from whom).
inline void append_part(schedule& s, schedule_builder& b, const schedule& part, std::span<const int> group,
                        const part_map& map, std::vector<placed>& where, std::uint32_t from = 0,
                        std::uint32_t to = ~0u, std::span<const std::uint32_t> first_after = {}) {
  where.resize(part.steps.size());
  std::uint32_t phase0 = 0;
  for (const auto& st : s.steps) phase0 = std::max(phase0, st.phase + 1);
  for (std::size_t i = 0; i < part.steps.size(); ++i) {
    const step& st = part.steps[i];
    if (st.phase < from || st.phase > to) continue;
    const int peer = st.peer >= 0 ? group[static_cast<std::size_t>(st.peer)] : -1;
    const std::uint32_t phase = phase0 + st.phase - from;
    where[i].first = static_cast<std::uint32_t>(s.steps.size());
    where[i].stood_for.clear();
    // The whole's steps that part's step i waits for.
    auto waits = [&](auto&& wait) {
      for (auto d : part.deps_of(i)) {
        for (std::uint32_t k = where[d].first; k < where[d].last; ++k) wait(k);
        for (auto k : where[d].stood_for) wait(k);
      }
      if (st.phase == from) {
        for (auto k : first_after) wait(k);
      }
    };
    const bool message = st.kind == step_kind::send || st.kind == step_kind::recv;
    if (!map.signals && message && st.count() == 0) {
      auto& left_out = where[i].stood_for;
      waits([&](std::uint32_t k) { left_out.push_back(k); });
      std::sort(left_out.begin(), left_out.end());
      left_out.erase(std::unique(left_out.begin(), left_out.end()), left_out.end());
      where[i].last = where[i].first;
      continue;
    }
    std::size_t begin = 0;
    for (std::size_t end : map.cuts(st)) {
      waits([&](std::uint32_t k) { b.after(k); });
      auto piece = [&](region r) { return map.place({r.buf, r.offset + begin, end - begin}); };
      switch (st.kind) {
        case step_kind::send: b.send(peer, piece(st.src), phase); break;
        case step_kind::recv: b.recv(peer, piece(st.dst), phase); break;
        case step_kind::recv_reduce: b.recv_reduce(peer, piece(st.src), piece(st.dst), phase); break;
        case step_kind::copy: b.copy(piece(st.src), piece(st.dst), phase); break;
      }
      begin = end;
    }
    where[i].last = static_cast<std::uint32_t>(s.steps.size());
  }
  // Scratch for every buffer of the part that lies in the whole schedule's scratch.
  const std::size_t extent[3] = {input_elements(part), output_elements(part), part.scratch_count};
  for (buffer k : {buffer::input, buffer::output, buffer::scratch}) {
    const placement& pl = map.of(k);
    if (pl.to != buffer::scratch) continue;
    const std::size_t end =
        pl.units.empty() ? extent[static_cast<std::size_t>(k)]
                         : *std::max_element(pl.units.begin(), pl.units.end()) * map.stride_of(pl) + map.unit;
    s.scratch_count = std::max(s.scratch_count, pl.at + end);
  }
}

}  // namespace detail

// The schedule `part`, a collective of part.count elements per block, run over the
// first part.count elements of each block of a layout whose blocks are `stride`
// elements apart (the caller's buffers start where the slice does): the blocks of
// every buffer that holds one per rank (all-gather's output, reduce-scatter's input,
// and its output in place) are spread to the stride; scratch and the other buffers stay
// as they are. A lane of the peer executor so runs an all-gather or reduce-scatter over
// its slice of each block (exec/peer.hpp). Messages are cut at block boundaries, at the
// same offsets on both ends: every algorithm's messages start at the same offset within
// a block on the sending and on the receiving side, as hierarchical.hpp's parts rely on.
inline schedule slice_of_blocks(const schedule& part, std::size_t stride) {
  if (part.count == 0 || stride == part.count) return part;
  schedule s = part;
  s.steps.clear();
  s.deps.clear();
  s.scratch_count = 0;
  schedule_builder b(s);
  std::vector<std::size_t> blocks(static_cast<std::size_t>(part.ranks));
  std::iota(blocks.begin(), blocks.end(), std::size_t{0});
  std::vector<int> ranks(blocks.size());
  std::iota(ranks.begin(), ranks.end(), 0);
  detail::part_map m;
  m.unit = part.count;
  const bool blocked_in = input_elements(part) == part.count * blocks.size();
  const bool blocked_out = output_elements(part) == part.count * blocks.size();
  if (blocked_in) m.in = {buffer::input, 0, blocks, stride};
  if (blocked_out) m.out = {buffer::output, 0, blocks, stride};
  std::vector<detail::placed> where;
  detail::append_part(s, b, part, ranks, m, where);
  return s;
}

}  // namespace collx::algorithms
