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

}  // namespace detail

// Proves that the schedules (one per rank, in rank order) compute their collective.
inline verify_result verify(std::span<const schedule> all) {
  using detail::run;
  const int p = static_cast<int>(all.size());
  if (p == 0) return {false, "no schedules"};
  const auto& s0 = all[0];
  const collective coll = s0.coll;
  const std::size_t n = s0.count;
  const bool in_place = s0.in_place;
  const auto up = static_cast<std::size_t>(p);
  for (int r = 0; r < p; ++r) {
    const auto& s = all[static_cast<std::size_t>(r)];
    if (s.rank != r || s.ranks != p || s.coll != coll || s.count != n || s.in_place != in_place) {
      return {false, "schedule " + std::to_string(r) + " describes a different call"};
    }
    for (std::size_t i = 0; i < s.steps.size(); ++i) {
      const auto& st = s.steps[i];
      for (const auto& a : detail::accesses(st)) {
        const std::size_t extent = a.r.buf == buffer::input    ? (in_place ? 0 : input_extent(coll, p, n))
                                   : a.r.buf == buffer::output ? output_extent(coll, p, n, in_place)
                                                               : s.scratch_count;
        if (a.r.end() > extent) {
          return {false, detail::step_name(r, i, st) + " reaches past the end of " +
                             std::string(to_string(a.r.buf))};
        }
        if (a.write && a.r.buf == buffer::input) {
          return {false, detail::step_name(r, i, st) + " writes the caller's input"};
        }
      }
      if (st.kind == step_kind::recv_reduce || st.kind == step_kind::copy) {
        if (st.src.count != st.dst.count) {
          return {false, detail::step_name(r, i, st) + " has source and destination of different sizes"};
        }
      }
    }
    if (auto race = detail::check_races(s); !race.empty()) return {false, race};
  }

  // Initial symbols: input_r[i] is "one copy of rank r's element i".
  struct state {
    detail::run_map in, out, tmp;
  };
  std::vector<state> st(up);
  auto unit = [&](int r) {
    std::vector<std::uint16_t> m(up, 0);
    m[static_cast<std::size_t>(r)] = 1;
    return m;
  };
  for (int r = 0; r < p; ++r) {
    auto& x = st[static_cast<std::size_t>(r)];
    const std::size_t in_n = input_extent(coll, p, n);
    x.in = detail::run_map(in_place ? 0 : in_n);
    x.out = detail::run_map(output_extent(coll, p, n, in_place));
    x.tmp = detail::run_map(all[static_cast<std::size_t>(r)].scratch_count);
    std::vector<run> init;
    if (in_n > 0) init.push_back({0, in_n, true, 0, unit(r)});
    if (in_place) {
      x.out.write(in_place_input(coll, r, n, p).offset, init);
    } else {
      x.in.write(0, init);
    }
  }
  auto map_of = [&](int r, buffer b) -> detail::run_map& {
    auto& x = st[static_cast<std::size_t>(r)];
    return b == buffer::input ? x.in : b == buffer::output ? x.out : x.tmp;
  };
  auto read = [&](int r, const region& g) { return map_of(r, g.buf).read(g.offset, g.end()); };

  // Messages carry the symbols their source held when the send ran.
  std::vector<std::vector<std::vector<run>>> sent(up);
  for (int r = 0; r < p; ++r)
    sent[static_cast<std::size_t>(r)].resize(all[static_cast<std::size_t>(r)].steps.size());
  std::string why;
  auto outcome = detail::walk(all, [&](int r, std::size_t i, int from, std::size_t idx) {
    const auto& s = all[static_cast<std::size_t>(r)];
    const auto& stp = s.steps[i];
    switch (stp.kind) {
      case step_kind::send: sent[static_cast<std::size_t>(r)][i] = read(r, stp.src); return true;
      case step_kind::copy:
        if (stp.src.count != 0) map_of(r, stp.dst.buf).write(stp.dst.offset, read(r, stp.src));
        return true;
      case step_kind::recv:
      case step_kind::recv_reduce: {
        auto msg = std::move(sent[static_cast<std::size_t>(from)][idx]);
        const auto& sender = all[static_cast<std::size_t>(from)].steps[idx];
        if (sender.src.count != stp.dst.count) {
          why = detail::step_name(r, i, stp) + " expects " + std::to_string(stp.dst.count) +
                " elements but " + detail::step_name(from, idx, sender) + " sends " +
                std::to_string(sender.src.count);
          return false;
        }
        if (stp.dst.count == 0) return true;
        if (stp.kind == step_kind::recv) {
          map_of(r, stp.dst.buf).write(stp.dst.offset, msg);
          return true;
        }
        std::vector<run> reduced;
        if (!detail::combine(read(r, stp.src), msg, reduced, why)) {
          why = detail::step_name(r, i, stp) + " " + why;
          return false;
        }
        map_of(r, stp.dst.buf).write(stp.dst.offset, reduced);
        return true;
      }
    }
    return true;
  });
  if (!outcome.ok) return {false, why.empty() ? outcome.problem : why};

  // Every element of every result must hold exactly what the collective defines.
  for (int r = 0; r < p; ++r) {
    const auto& out = st[static_cast<std::size_t>(r)].out;
    // expect(pos) -> (source index, multiplicities) of output element pos, and the end
    // of the range over which that expectation continues with rising source indices.
    struct expect {
      long long src;
      std::vector<std::uint16_t> mult;
      std::size_t until;
    };
    const std::vector<std::uint16_t> all_ones(up, 1);
    auto expected = [&](std::size_t pos) -> expect {
      const auto ln = static_cast<long long>(n);
      const auto lpos = static_cast<long long>(pos);
      switch (coll) {
        case collective::all_reduce: return {lpos, all_ones, n};
        case collective::all_gather: {
          const std::size_t j = pos / n;
          return {lpos - static_cast<long long>(j) * ln, unit(static_cast<int>(j)), (j + 1) * n};
        }
        case collective::reduce_scatter: {
          if (!in_place) return {static_cast<long long>(static_cast<std::size_t>(r) * n) + lpos, all_ones, n};
          const std::size_t j = pos / n;
          // The result block is the reduction; every other block is left as the caller had it.
          return {lpos, j == static_cast<std::size_t>(r) ? all_ones : unit(r), (j + 1) * n};
        }
      }
      return {0, {}, 0};
    };
    for (const auto& x : out.read(0, out.size())) {
      std::size_t pos = x.begin;
      while (pos < x.end) {
        const expect e = expected(pos);
        const std::size_t stop = std::min(e.until, x.end);
        const run y = detail::clip(x, pos, stop);
        if (!y.defined || y.src != e.src || y.mult != e.mult) {
          std::string got = "undefined";
          if (y.defined) {
            got = "element " + std::to_string(y.src) + " with contributions";
            for (std::size_t q = 0; q < up; ++q) {
              if (y.mult[q] != 0) got += " " + std::to_string(q) + "x" + std::to_string(y.mult[q]);
            }
          }
          return {false, "rank " + std::to_string(r) + " output[" + std::to_string(pos) + ".." +
                             std::to_string(stop) + ") holds " + got + ", expected element " +
                             std::to_string(e.src)};
        }
        pos = stop;
      }
    }
  }
  return {};
}

}  // namespace collx
