#pragma once

// Which algorithm runs a call. With one algorithm in this build the automatic choice
// is ring for every collective; the cost model (schedule/cost.hpp) is the place the
// choice will be priced from once there is more than one to choose between.

#include <cstddef>

#include "collx/algorithms/ring.hpp"
#include "collx/core/error.hpp"
#include "collx/core/options.hpp"
#include "collx/schedule/schedule.hpp"

namespace collx::algorithms {

struct call_shape {
  collective coll = collective::all_reduce;
  int rank = 0;
  int ranks = 1;
  std::size_t count = 0;
  std::size_t segment = 1;  // elements
  bool in_place = false;
};

constexpr algorithm choose(collective, int, std::size_t /*bytes*/) noexcept { return algorithm::ring; }

inline schedule build(algorithm a, const call_shape& c) {
  switch (a) {
    case algorithm::automatic:
    case algorithm::ring: return ring(c.coll, {c.rank, c.ranks, c.count, c.segment, c.in_place});
  }
  throw error(errc::unsupported, to_string(c.coll), c.rank, error::no_rank,
              "algorithm " + std::string(to_string(a)) + " is not available");
}

}  // namespace collx::algorithms
