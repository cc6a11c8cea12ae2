#pragma once

// The symbolic verifier. It runs every rank's schedule on symbols instead of numbers:
// each element holds "the sum, over ranks q, of m_q copies of input_q[i]". At the end
// every element of every result must hold exactly one copy of each contribution it
// should, taken at the right index, and nothing else. It also proves that the schedule
// is race-free (every pair of steps touching the same elements, one of them writing,
// is ordered by dependencies), so that any order an executor picks gives that result;
// that it never writes the caller's input; and that it cannot deadlock when sends
// complete on their own (eager delivery). A rendezvous transport, where a send ends
// only once its receive is posted, can still deadlock a schedule this walk accepts;
// every algorithm here is also run on the rendezvous in-process transport by the tests.
//
// Elements are handled as runs, not one by one: a run is a range whose elements share
// their multiplicities and whose source indices rise with the position. A schedule over
// a million elements is a few runs per chunk.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "collx/schedule/schedule.hpp"
#include "collx/schedule/walk.hpp"

namespace collx {

struct verify_result {
  bool ok = true;
  std::string message;
  explicit operator bool() const noexcept { return ok; }
};

namespace detail {

struct run {
  std::size_t begin = 0;  // position within its buffer (or message)
  std::size_t end = 0;
  bool defined = false;
  long long src = 0;                // source index of the element at `begin`
  std::vector<std::uint16_t> mult;  // contributions per rank
};

inline run clip(const run& x, std::size_t b, std::size_t e) {
  run y = x;
  y.begin = std::max(b, x.begin);
  y.end = std::min(e, x.end);
  y.src = x.src + static_cast<long long>(y.begin - x.begin);
  return y;
}

// A buffer as a sorted list of runs covering [0, size).
class run_map {
 public:
  explicit run_map(std::size_t size = 0) : size_(size) {
    if (size > 0) runs_.push_back({0, size, false, 0, {}});
  }
  std::size_t size() const noexcept { return size_; }

  // Runs covering [b, e), shifted to start at 0.
  std::vector<run> read(std::size_t b, std::size_t e) const {
    std::vector<run> out;
    for (const auto& x : runs_) {
      if (x.end <= b || x.begin >= e) continue;
      run y = clip(x, b, e);
      y.begin -= b;
      y.end -= b;
      out.push_back(std::move(y));
    }
    return out;
  }

  // Replaces [b, b + len) by runs given relative to 0.
  void write(std::size_t b, const std::vector<run>& rel) {
    const std::size_t e = b + (rel.empty() ? 0 : rel.back().end);
    std::vector<run> next;
    next.reserve(runs_.size() + rel.size() + 2);
    for (const auto& x : runs_) {
      if (x.begin < b) next.push_back(clip(x, x.begin, b));
      if (x.begin >= b) break;
    }
    for (auto y : rel) {
      y.begin += b;
      y.end += b;
      next.push_back(std::move(y));
    }
    for (const auto& x : runs_) {
      if (x.end > e) next.push_back(clip(x, e, x.end));
    }
    next.erase(std::remove_if(next.begin(), next.end(), [](const run& x) { return x.begin >= x.end; }),
               next.end());
    runs_ = std::move(next);
  }

 private:
  std::size_t size_;
  std::vector<run> runs_;
};

// a op b over runs of equal total length; fails if an element would combine different
// source indices or undefined data.
inline bool combine(const std::vector<run>& a, const std::vector<run>& b, std::vector<run>& out,
                    std::string& why) {
  out.clear();
  std::size_t i = 0;
  std::size_t j = 0;
  while (i < a.size() && j < b.size()) {
    const std::size_t lo = std::max(a[i].begin, b[j].begin);
    const std::size_t hi = std::min(a[i].end, b[j].end);
    const run x = clip(a[i], lo, hi);
    const run y = clip(b[j], lo, hi);
    if (!x.defined || !y.defined) {
      why = "reduces undefined data at element " + std::to_string(lo);
      return false;
    }
    if (x.src != y.src) {
      why = "reduces element " + std::to_string(x.src) + " with element " + std::to_string(y.src);
      return false;
    }
    run z = x;
    for (std::size_t q = 0; q < z.mult.size(); ++q) {
      z.mult[q] = static_cast<std::uint16_t>(z.mult[q] + y.mult[q]);
    }
    out.push_back(std::move(z));
    if (a[i].end == hi) ++i;
    if (b[j].end == hi) ++j;
  }
  return true;
}

struct access {
  region r;
  bool write;
};

inline std::vector<access> accesses(const step& st) {
  switch (st.kind) {
    case step_kind::send: return {{st.src, false}};
    case step_kind::recv: return {{st.dst, true}};
    case step_kind::recv_reduce: return {{st.src, false}, {st.dst, true}};
    case step_kind::copy: return {{st.src, false}, {st.dst, true}};
  }
  return {};
}

inline std::string check_races(const schedule& s) {
  const std::size_t n = s.steps.size();
  const std::size_t words = (n + 63) / 64;
  std::vector<std::uint64_t> before(n * words, 0);  // before[j]: steps ordered before j
  std::vector<std::vector<access>> acc(n);
  for (std::size_t j = 0; j < n; ++j) {
    acc[j] = accesses(s.steps[j]);
    for (auto d : s.deps_of(j)) {
      before[j * words + d / 64] |= std::uint64_t{1} << (d % 64);
      for (std::size_t w = 0; w < words; ++w) before[j * words + w] |= before[d * words + w];
    }
    for (std::size_t i = 0; i < j; ++i) {
      if ((before[j * words + i / 64] >> (i % 64)) & 1u) continue;
      for (const auto& x : acc[i]) {
        for (const auto& y : acc[j]) {
          if ((x.write || y.write) && overlaps(x.r, y.r)) {
            return "race: " + step_name(s.rank, i, s.steps[i]) + " and " + step_name(s.rank, j, s.steps[j]) +
                   " touch the same elements of " + std::string(to_string(x.r.buf)) + " without a dependency";
          }
        }
      }
    }
  }
  return {};
}

// What can be checked on one rank's schedule alone: that it describes the call rank 0's
// does, that no step reaches past a buffer or writes the caller's input, that a
// reduction's or copy's two sides have one size, and that it has no race.
inline verify_result check_steps(const schedule& s, int r, const schedule& s0, int p) {
  const collective coll = s0.coll;
  const std::size_t n = s0.count;
  const bool in_place = s0.in_place;
  // The exchanges sized per peer have a count of their own on each rank.
  const bool same_count = per_peer(coll) || s.count == n;
  if (s.rank != r || s.ranks != p || s.coll != coll || !same_count || s.in_place != in_place ||
      s.root != s0.root) {
    return {false, "schedule " + std::to_string(r) + " describes a different call"};
  }
  if (rooted(coll) && (s0.root < 0 || s0.root >= p)) {
    return {false, "root " + std::to_string(s0.root) + " is not a rank of " + std::to_string(p)};
  }
  for (std::size_t i = 0; i < s.steps.size(); ++i) {
    const auto& st = s.steps[i];
    for (const auto& a : accesses(st)) {
      const std::size_t extent = a.r.buf == buffer::input    ? (in_place ? 0 : input_elements(s))
                                 : a.r.buf == buffer::output ? output_elements(s)
                                                             : s.scratch_count;
      if (a.r.end() > extent) {
        return {false, step_name(r, i, st) + " reaches past the end of " + std::string(to_string(a.r.buf))};
      }
      if (a.write && a.r.buf == buffer::input)
        return {false, step_name(r, i, st) + " writes the caller's input"};
    }
    if ((st.kind == step_kind::recv_reduce || st.kind == step_kind::copy) && st.src.count != st.dst.count) {
      return {false, step_name(r, i, st) + " has source and destination of different sizes"};
    }
  }
  if (auto race = check_races(s); !race.empty()) return {false, race};
  return {};
}

// The exchanges sized per peer: what each rank expects from each must be what that one
// sends it (otherwise the runtime reports a mismatch), and every rank has a count for
// every rank.
inline verify_result check_counts(std::span<const schedule> all) {
  const std::size_t p = all.size();
  for (std::size_t r = 0; r < p; ++r) {
    if (all[r].send_counts.size() != p || all[r].recv_counts.size() != p) {
      return {false, "rank " + std::to_string(r) + " does not have a count for each of the " +
                         std::to_string(p) + " ranks"};
    }
  }
  for (std::size_t r = 0; r < p; ++r) {
    for (std::size_t q = 0; q < p; ++q) {
      if (all[r].recv_counts[q] != all[q].send_counts[r]) {
        return {false, "rank " + std::to_string(r) + " expects " + std::to_string(all[r].recv_counts[q]) +
                           " elements from rank " + std::to_string(q) + ", which sends " +
                           std::to_string(all[q].send_counts[r])};
      }
    }
  }
  return {};
}

// Every rank's buffers as symbols, run through the schedules, then checked against what
// the collective defines.
class symbolic_ranks {
 public:
  // Initial symbols: input_r[i] is "one copy of rank r's element i".
  explicit symbolic_ranks(std::span<const schedule> all)
      : all_(all),
        p_(static_cast<int>(all.size())),
        coll_(all[0].coll),
        n_(all[0].count),
        in_place_(all[0].in_place),
        root_(all[0].root),
        state_(all.size()),
        sent_(all.size()),
        heard_(all.size()) {
    for (int r = 0; r < p_; ++r) {
      auto& x = state_[index(r)];
      const std::size_t in_n = input_elements(all_[index(r)]);
      x.in = run_map(in_place_ ? 0 : in_n);
      x.out = run_map(output_elements(all_[index(r)]));
      x.tmp = run_map(all_[index(r)].scratch_count);
      std::vector<run> init;
      if (in_n > 0) init.push_back({0, in_n, true, 0, unit(r)});
      if (in_place_) {
        x.out.write(in_place_input(coll_, r, n_, p_).offset, init);
      } else {
        x.in.write(0, init);
      }
      sent_[index(r)].resize(all_[index(r)].steps.size());
      if (must_hear_all()) heard_[index(r)].resize(all_[index(r)].steps.size());
    }
  }

  // Runs every step in an order the schedules allow; messages carry the symbols their
  // source held when the send ran.
  verify_result execute() {
    std::string why;
    auto outcome = walk(all_, [&](int r, std::size_t i, int from, std::size_t idx) {
      const auto& stp = all_[index(r)].steps[i];
      if (must_hear_all()) learn(r, i, from, idx);
      switch (stp.kind) {
        case step_kind::send: sent_[index(r)][i] = read(r, stp.src); return true;
        case step_kind::copy:
          if (stp.src.count != 0) map_of(r, stp.dst.buf).write(stp.dst.offset, read(r, stp.src));
          return true;
        case step_kind::recv:
        case step_kind::recv_reduce: return deliver(r, i, from, idx, why);
      }
      return true;
    });
    if (!outcome.ok) return {false, why.empty() ? outcome.problem : why};
    return {};
  }

  // Every element of every result must hold exactly what the collective defines; a
  // barrier's, an all-to-all's and a rooted call's rank must have heard from every rank
  // before it can finish (algorithms/rooted.hpp says why).
  verify_result check_outputs() const {
    if (must_hear_all()) {
      if (auto bad = check_heard(); !bad) return bad;
    }
    for (int r = 0; r < p_; ++r) {
      const auto& out = state_[index(r)].out;
      for (const auto& x : out.read(0, out.size())) {
        for (std::size_t pos = x.begin; pos < x.end;) {
          const expect e = expected(r, pos);
          const std::size_t stop = std::min(e.until, x.end);
          const run y = clip(x, pos, stop);
          if (e.undefined ? y.defined : (!y.defined || y.src != e.src || y.mult != e.mult)) {
            return {false,
                    "rank " + std::to_string(r) + " output[" + std::to_string(pos) + ".." +
                        std::to_string(stop) + ") holds " + describe(y) + ", expected " +
                        (e.undefined ? std::string("it untouched") : "element " + std::to_string(e.src))};
          }
          pos = stop;
        }
      }
    }
    return {};
  }

 private:
  struct rank_state {
    run_map in, out, tmp;
  };
  // What output element pos of rank r must hold: the source index and multiplicities,
  // and the end of the range over which that continues with rising source indices.
  struct expect {
    long long src;
    std::vector<std::uint16_t> mult;
    std::size_t until;
    bool undefined = false;  // the call must not write there (out of place: never defined)
  };

  static std::size_t index(int r) noexcept { return static_cast<std::size_t>(r); }
  // A rank that finishes must have heard from every rank, so that a mismatch is never
  // missed (algorithms/rooted.hpp says why): the barrier, the rooted calls and
  // all-to-all, whose Bruck form hears from most ranks only through others.
  bool must_hear_all() const noexcept {
    return coll_ == collective::barrier || coll_ == collective::all_to_all || rooted(coll_);
  }

  std::vector<std::uint16_t> unit(int r) const {
    std::vector<std::uint16_t> m(index(p_), 0);
    m[index(r)] = 1;
    return m;
  }

  run_map& map_of(int r, buffer b) {
    auto& x = state_[index(r)];
    return b == buffer::input ? x.in : b == buffer::output ? x.out : x.tmp;
  }
  std::vector<run> read(int r, const region& g) { return map_of(r, g.buf).read(g.offset, g.end()); }

  // Step i of rank r receives the message of step idx of rank `from`.
  bool deliver(int r, std::size_t i, int from, std::size_t idx, std::string& why) {
    const auto& stp = all_[index(r)].steps[i];
    auto msg = std::move(sent_[index(from)][idx]);
    const auto& sender = all_[index(from)].steps[idx];
    if (sender.src.count != stp.dst.count) {
      why = step_name(r, i, stp) + " expects " + std::to_string(stp.dst.count) + " elements but " +
            step_name(from, idx, sender) + " sends " + std::to_string(sender.src.count);
      return false;
    }
    if (stp.dst.count == 0) return true;
    if (stp.kind == step_kind::recv) {
      map_of(r, stp.dst.buf).write(stp.dst.offset, msg);
      return true;
    }
    std::vector<run> reduced;
    if (!combine(read(r, stp.src), msg, reduced, why)) {
      why = step_name(r, i, stp) + " " + why;
      return false;
    }
    map_of(r, stp.dst.buf).write(stp.dst.offset, reduced);
    return true;
  }

  expect expected(int r, std::size_t pos) const {
    const std::vector<std::uint16_t> all_ones(index(p_), 1);
    const auto ln = static_cast<long long>(n_);
    const auto lpos = static_cast<long long>(pos);
    switch (coll_) {
      case collective::all_reduce: return {lpos, all_ones, n_};
      case collective::all_gather: {
        const std::size_t j = pos / n_;
        return {lpos - static_cast<long long>(j) * ln, unit(static_cast<int>(j)), (j + 1) * n_};
      }
      case collective::reduce_scatter: {
        if (!in_place_) return {static_cast<long long>(index(r) * n_) + lpos, all_ones, n_};
        const std::size_t j = pos / n_;
        // The result block is the reduction; every other block is left as the caller had it.
        return {lpos, j == index(r) ? all_ones : unit(r), (j + 1) * n_};
      }
      case collective::broadcast: return {lpos, unit(root_), n_};
      case collective::reduce:
        if (r == root_) return {lpos, all_ones, n_};
        // The other ranks' output is not the call's to write: in place it keeps the
        // rank's input, out of place it stays as the caller left it.
        return in_place_ ? expect{lpos, unit(r), n_} : expect{0, {}, n_, true};
      case collective::all_to_all: {  // block j: rank j's block for this rank
        const std::size_t j = pos / n_;
        return {static_cast<long long>(index(r) * n_ + pos - j * n_), unit(static_cast<int>(j)),
                (j + 1) * n_};
      }
      case collective::gather: {
        const std::size_t j = pos / n_;
        if (r == root_)
          return {lpos - static_cast<long long>(j) * ln, unit(static_cast<int>(j)), (j + 1) * n_};
        // The other ranks' output is not the call's to write; in place, their own block
        // (their input) stays.
        if (in_place_ && j == index(r)) return {lpos - static_cast<long long>(j) * ln, unit(r), (j + 1) * n_};
        return {0, {}, in_place_ ? (j + 1) * n_ : output_extent(coll_, p_, n_, false), true};
      }
      case collective::scatter: {
        if (!in_place_) return {static_cast<long long>(index(r) * n_) + lpos, unit(root_), n_};
        // In place the buffer holds every block: this rank's is the root's, the others stay.
        const std::size_t j = pos / n_;
        return {lpos, j == index(r) ? unit(root_) : unit(r), (j + 1) * n_};
      }
      case collective::all_to_all_v:
      case collective::send_recv: return expected_block(r, pos);
      case collective::barrier: break;
    }
    return {0, {}, 0};
  }

  // The exchanges sized per peer: block j of rank r's output is rank j's block for r.
  expect expected_block(int r, std::size_t pos) const {
    const auto& mine = all_[index(r)].recv_counts;
    std::size_t start = 0;
    for (int j = 0; j < p_; ++j) {
      const std::size_t len = mine[index(j)];
      if (pos < start + len) {
        const std::size_t from = block_start(all_[index(j)].send_counts, r);
        return {static_cast<long long>(from + pos - start), unit(j), start + len};
      }
      start += len;
    }
    return {0, {}, start, true};
  }

  // Step i of rank r has heard from its rank, from whatever its dependencies heard from,
  // and, a receive, from whatever the matched send had heard from.
  void learn(int r, std::size_t i, int from, std::size_t idx) {
    auto& mine = heard_[index(r)][i];
    mine.assign(index(p_), false);
    mine[index(r)] = true;
    auto merge = [&](const std::vector<bool>& other) {
      for (std::size_t q = 0; q < other.size(); ++q) mine[q] = mine[q] || other[q];
    };
    for (auto d : all_[index(r)].deps_of(i)) merge(heard_[index(r)][d]);
    if (from >= 0) merge(heard_[index(from)][idx]);
  }

  verify_result check_heard() const {
    for (int r = 0; r < p_; ++r) {
      std::vector<bool> all(index(p_), false);
      all[index(r)] = true;
      for (const auto& h : heard_[index(r)]) {
        for (std::size_t q = 0; q < h.size(); ++q) all[q] = all[q] || h[q];
      }
      for (int q = 0; q < p_; ++q) {
        if (!all[index(q)]) {
          return {false, "rank " + std::to_string(r) + " can finish the " + std::string(to_string(coll_)) +
                             " without hearing from rank " + std::to_string(q)};
        }
      }
    }
    return {};
  }

  std::string describe(const run& y) const {
    if (!y.defined) return "undefined";
    std::string got = "element " + std::to_string(y.src) + " with contributions";
    for (std::size_t q = 0; q < index(p_); ++q) {
      if (y.mult[q] != 0) got += " " + std::to_string(q) + "x" + std::to_string(y.mult[q]);
    }
    return got;
  }

  std::span<const schedule> all_;
  int p_;
  collective coll_;
  std::size_t n_;
  bool in_place_;
  int root_;
  std::vector<rank_state> state_;
  std::vector<std::vector<std::vector<run>>> sent_;  // [rank][step]: what a send carried
  std::vector<std::vector<std::vector<bool>>>
      heard_;  // [rank][step], must_hear_all calls only: whom it heard from
};

}  // namespace detail

// Proves that the schedules (one per rank, in rank order) compute their collective.
inline verify_result verify(std::span<const schedule> all) {
  const int p = static_cast<int>(all.size());
  if (p == 0) return {false, "no schedules"};
  for (int r = 0; r < p; ++r) {
    if (auto bad = detail::check_steps(all[static_cast<std::size_t>(r)], r, all[0], p); !bad) return bad;
  }
  if (per_peer(all[0].coll)) {
    if (auto bad = detail::check_counts(all); !bad) return bad;
  }
  detail::symbolic_ranks world(all);
  if (auto bad = world.execute(); !bad) return bad;
  return world.check_outputs();
}

}  // namespace collx
