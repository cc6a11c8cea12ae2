#pragma once

// The schedule IR. An algorithm is a pure function from (collective, rank, ranks,
// count, ...) to a schedule: for one rank, an ordered list of steps over index ranges
// of three buffers, with the dependencies between the steps. Schedules are plain data,
// so one verifier proves them, one cost model prices them, one executor runs them.

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <numeric>
#include <span>
#include <string>
#include <vector>

#include "collx/core/options.hpp"

namespace collx {

// The buffers a step may touch. input is the caller's send buffer (never written),
// output the caller's receive buffer, scratch executor memory for partial results.
// In-place calls have no input: the schedule starts from output.
enum class buffer : std::uint8_t { input, output, scratch };

constexpr std::string_view to_string(buffer b) noexcept {
  switch (b) {
    case buffer::input: return "in";
    case buffer::output: return "out";
    case buffer::scratch: return "tmp";
  }
  return "?";
}

// A range of elements of one buffer.
struct region {
  buffer buf = buffer::output;
  std::size_t offset = 0;
  std::size_t count = 0;

  std::size_t end() const noexcept { return offset + count; }
  friend bool operator==(const region&, const region&) = default;
};

// "out[4+2]": buffer, first element, count.
inline std::string to_string(const region& r) {
  return std::string(to_string(r.buf)) + "[" + std::to_string(r.offset) + "+" + std::to_string(r.count) + "]";
}

constexpr bool overlaps(const region& a, const region& b) noexcept {
  return a.buf == b.buf && a.count != 0 && b.count != 0 && a.offset < b.end() && b.offset < a.end();
}

enum class step_kind : std::uint8_t {
  send,         // send src to peer
  recv,         // receive from peer into dst
  recv_reduce,  // receive from peer, dst = src (local operand) op received
  copy,         // dst = src, locally
};

constexpr std::string_view to_string(step_kind k) noexcept {
  switch (k) {
    case step_kind::send: return "send";
    case step_kind::recv: return "recv";
    case step_kind::recv_reduce: return "recv_reduce";
    case step_kind::copy: return "copy";
  }
  return "?";
}

constexpr bool is_receive(step_kind k) noexcept {
  return k == step_kind::recv || k == step_kind::recv_reduce;
}

struct step {
  step_kind kind = step_kind::copy;
  int peer = -1;                // the other rank, for send and receive kinds
  region src;                   // send: what leaves; recv_reduce: the local operand; copy: the source
  region dst;                   // recv and recv_reduce: where the result lands; copy: the destination
  std::uint32_t dep_begin = 0;  // dependencies: schedule::deps[dep_begin, dep_begin+dep_count)
  std::uint32_t dep_count = 0;
  std::uint32_t phase = 0;  // the algorithm's step number, for drawings and the cost model

  // Elements moved or produced by this step.
  std::size_t count() const noexcept { return kind == step_kind::send ? src.count : dst.count; }
};

struct schedule {
  collective coll = collective::all_reduce;
  algorithm algo = algorithm::ring;
  int rank = 0;
  int ranks = 1;
  std::size_t count = 0;  // elements per rank, as in the public API
  bool in_place = false;
  int root = 0;                   // broadcast's source, reduce's destination; 0 for the others
  std::size_t scratch_count = 0;  // elements of scratch the executor must provide
  // The collectives sized per peer (per_peer(coll): all_to_all_v, send_recv): the
  // elements this rank sends to and receives from each rank, block q of the input and of
  // the output, back to back in rank order. Each message to or from q is signed with
  // its side's count for q. Empty for the other collectives.
  std::vector<std::size_t> send_counts, recv_counts;
  std::vector<step> steps;
  std::vector<std::uint32_t> deps;

  std::span<const std::uint32_t> deps_of(std::size_t i) const noexcept {
    return {deps.data() + steps[i].dep_begin, steps[i].dep_count};
  }

  // Largest message (elements) a receive-and-reduce stages: sizes the staging slots.
  std::size_t max_staged() const noexcept {
    std::size_t m = 0;
    for (const auto& s : steps) {
      if (s.kind == step_kind::recv_reduce) m = std::max(m, s.dst.count);
    }
    return m;
  }
};

// Phases number an algorithm's steps for drawings, with one exception an executor reads:
// in a send_recv, the empty messages of this phase are receipts (algorithms/exchange.hpp),
// signed so that no data message can be taken for one.
inline constexpr std::uint32_t receipt_phase = 1;

// A schedule for the call, with no steps yet: where every algorithm starts.
inline schedule empty_schedule(collective coll, algorithm algo, int rank, int ranks, std::size_t count,
                               bool in_place, int root = 0) {
  return schedule{.coll = coll,
                  .algo = algo,
                  .rank = rank,
                  .ranks = ranks,
                  .count = count,
                  .in_place = in_place,
                  .root = root,
                  .scratch_count = 0,
                  .send_counts = {},
                  .recv_counts = {},
                  .steps = {},
                  .deps = {}};
}

// Elements in each of the caller's buffers for a collective of `count` per rank.
// all_reduce, broadcast, reduce: in = out = count (broadcast reads only the root's
// input, reduce writes only the root's output). all_gather, gather: in = count, out =
// ranks*count (gather writes only the root's). reduce_scatter, scatter: in = ranks*count
// (scatter reads only the root's), out = count; in place, their out is the whole
// ranks*count buffer and the result lands at rank*count. all_to_all: in = out =
// ranks*count, block j of the input for rank j. barrier: none. all_to_all_v and
// send_recv: the sums of the schedule's counts (input_elements, output_elements).
constexpr std::size_t input_extent(collective c, int ranks, std::size_t count) noexcept {
  if (c == collective::barrier) return 0;
  const bool blocks =
      c == collective::reduce_scatter || c == collective::scatter || c == collective::all_to_all;
  return blocks ? count * static_cast<std::size_t>(ranks) : count;
}
constexpr std::size_t output_extent(collective c, int ranks, std::size_t count, bool in_place) noexcept {
  if (c == collective::barrier) return 0;
  if (c == collective::all_gather || c == collective::gather || c == collective::all_to_all ||
      ((c == collective::reduce_scatter || c == collective::scatter) && in_place)) {
    return count * static_cast<std::size_t>(ranks);
  }
  return count;
}

// Where block q starts among blocks of the given counts, back to back.
inline std::size_t block_start(std::span<const std::size_t> counts, int q) noexcept {
  return std::accumulate(counts.begin(), counts.begin() + q, std::size_t{0});
}

// Elements of the caller's input and output buffers that a schedule's call has.
inline std::size_t input_elements(const schedule& s) noexcept {
  if (per_peer(s.coll)) return std::accumulate(s.send_counts.begin(), s.send_counts.end(), std::size_t{0});
  return input_extent(s.coll, s.ranks, s.count);
}
inline std::size_t output_elements(const schedule& s) noexcept {
  if (per_peer(s.coll)) return std::accumulate(s.recv_counts.begin(), s.recv_counts.end(), std::size_t{0});
  return output_extent(s.coll, s.ranks, s.count, s.in_place);
}

// The part of output that holds the result: none on a reduce's or a gather's other ranks.
constexpr region result_region(collective c, int rank, std::size_t count, bool in_place, int ranks,
                               int root = 0) noexcept {
  if ((c == collective::reduce_scatter || c == collective::scatter) && in_place) {
    return {buffer::output, static_cast<std::size_t>(rank) * count, count};
  }
  if ((c == collective::reduce || c == collective::gather) && rank != root) return {buffer::output, 0, 0};
  return {buffer::output, 0, output_extent(c, ranks, count, in_place)};
}

// The part of output that an in-place call starts with the rank's contribution in.
constexpr region in_place_input(collective c, int rank, std::size_t count, int ranks) noexcept {
  if (c == collective::all_gather || c == collective::gather) {
    return {buffer::output, static_cast<std::size_t>(rank) * count, count};
  }
  return {buffer::output, 0, input_extent(c, ranks, count)};
}

// Appends steps to a schedule and derives their dependencies from the regions they
// touch: a step depends on every earlier step whose region overlaps its own where at
// least one of the two writes. Algorithms therefore state only what moves where; the
// ordering that makes it safe cannot be forgotten.
class schedule_builder {
 public:
  explicit schedule_builder(schedule& s) : s_(s) {}

  std::uint32_t send(int peer, region src, std::uint32_t phase) {
    return add({step_kind::send, peer, src, {}, 0, 0, phase});
  }
  std::uint32_t recv(int peer, region dst, std::uint32_t phase) {
    return add({step_kind::recv, peer, {}, dst, 0, 0, phase});
  }
  std::uint32_t recv_reduce(int peer, region operand, region dst, std::uint32_t phase) {
    return add({step_kind::recv_reduce, peer, operand, dst, 0, 0, phase});
  }
  std::uint32_t copy(region src, region dst, std::uint32_t phase) {
    return add({step_kind::copy, -1, src, dst, 0, 0, phase});
  }

  // The next step added also waits for step `before`: an order the regions do not
  // imply, as between the empty messages of a barrier's rounds.
  schedule_builder& after(std::uint32_t before) {
    extra_.push_back(before);
    return *this;
  }

 private:
  struct access {
    std::uint32_t step;
    region r;
    bool write;
  };

  // Earlier accesses of one buffer by offset. Only those starting within max_len
  // before a region can reach into it, so a lookup touches a window, not the whole
  // history: building stays fast for schedules of tens of thousands of steps.
  struct history {
    std::multimap<std::size_t, access> by_offset;
    std::size_t max_len = 0;

    template <class F>
    void overlapping(const region& r, F&& f) {
      const std::size_t lo = r.offset > max_len ? r.offset - max_len : 0;
      for (auto it = by_offset.lower_bound(lo); it != by_offset.end() && it->first < r.end(); ++it) {
        if (overlaps(it->second.r, r)) f(it);
      }
    }
  };

  std::uint32_t add(step st) {
    const auto index = static_cast<std::uint32_t>(s_.steps.size());
    const bool has_src = st.kind != step_kind::recv;
    const bool has_dst = st.kind != step_kind::send;
    st.dep_begin = static_cast<std::uint32_t>(s_.deps.size());
    auto depend = [&](const region& r, bool write) {
      history_[static_cast<std::size_t>(r.buf)].overlapping(r, [&](auto it) {
        if (it->second.write || write) s_.deps.push_back(it->second.step);
      });
    };
    if (has_src) depend(st.src, false);
    if (has_dst) depend(st.dst, true);
    s_.deps.insert(s_.deps.end(), extra_.begin(), extra_.end());
    extra_.clear();
    auto first = s_.deps.begin() + st.dep_begin;
    std::sort(first, s_.deps.end());
    s_.deps.erase(std::unique(first, s_.deps.end()), s_.deps.end());
    st.dep_count = static_cast<std::uint32_t>(s_.deps.size() - st.dep_begin);
    if (has_src && st.src.count != 0) record({index, st.src, false});
    if (has_dst && st.dst.count != 0) record({index, st.dst, true});
    s_.steps.push_back(st);
    return index;
  }

  // A write that covers an earlier access makes it redundant: anything later that
  // conflicts with the earlier access also conflicts with the write, which is ordered
  // after it. Dropping it keeps the history as small as the buffer's live pieces.
  void record(const access& a) {
    auto& h = history_[static_cast<std::size_t>(a.r.buf)];
    if (a.write) {
      std::vector<std::multimap<std::size_t, access>::iterator> covered;
      h.overlapping(a.r, [&](auto it) {
        if (it->second.r.offset >= a.r.offset && it->second.r.end() <= a.r.end()) covered.push_back(it);
      });
      for (auto it : covered) h.by_offset.erase(it);
    }
    h.by_offset.emplace(a.r.offset, a);
    h.max_len = std::max(h.max_len, a.r.count);
  }

  schedule& s_;
  std::array<history, 3> history_;
  std::vector<std::uint32_t> extra_;
};

// A readable listing of one rank's schedule, one step a line.
inline std::string to_text(const schedule& s) {
  std::string out = std::string(to_string(s.algo)) + " " + std::string(to_string(s.coll)) + " rank " +
                    std::to_string(s.rank) + "/" + std::to_string(s.ranks) + " count " +
                    std::to_string(s.count) + (s.in_place ? " in-place" : "") +
                    (rooted(s.coll) ? " root " + std::to_string(s.root) : std::string()) + "\n";
  for (std::size_t i = 0; i < s.steps.size(); ++i) {
    const auto& st = s.steps[i];
    out += "  #" + std::to_string(i) + " phase " + std::to_string(st.phase) + " " +
           std::string(to_string(st.kind));
    switch (st.kind) {
      case step_kind::send: out += " " + to_string(st.src) + " -> " + std::to_string(st.peer); break;
      case step_kind::recv: out += " " + std::to_string(st.peer) + " -> " + to_string(st.dst); break;
      case step_kind::recv_reduce:
        out += " " + to_string(st.src) + " op " + std::to_string(st.peer) + " -> " + to_string(st.dst);
        break;
      case step_kind::copy: out += " " + to_string(st.src) + " -> " + to_string(st.dst); break;
    }
    if (st.dep_count != 0) {
      out += "  after";
      for (auto d : s.deps_of(i)) out += " #" + std::to_string(d);
    }
    out += "\n";
  }
  return out;
}

}  // namespace collx
