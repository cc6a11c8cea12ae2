#pragma once

// The one resolution of a call, for every entry (the host communicator, the ipc
// communicator, the GPU group): from the call's options, then the entry's configuration
// (whose defaults come from COLLX_TIMEOUT, COLLX_SEGMENT_BYTES and COLLX_ALGO), to the
// algorithm, the segment, the timeout and the envelope the call runs with.

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "collx/algorithms/select.hpp"
#include "collx/config.hpp"
#include "collx/core/dtype.hpp"
#include "collx/core/options.hpp"
#include "collx/core/reduce.hpp"
#include "collx/schedule/cost.hpp"
#include "collx/transport/concept.hpp"

namespace collx {

// The cost model's parameters for the in-process transport, from `local_sweep 2` on the
// project's 2-core VM (docs/performance.md): about 27 us for a 2-message call gives
// alpha; the 1 MiB and 64 MiB points give 2*beta + gamma between 0.13 and 0.3 ns/B.
// They decide only which algorithm runs; collx-calibrate measures them per machine.
inline constexpr cost_params local_transport_model{13e-6, 0.1e-9, 0.1e-9};

// A link between nodes, until one is measured: 10 Gbit/s Ethernet (1.1 GB/s), 25 us a
// message; a reduction costs what it costs inside a node.
inline constexpr cost_params between_nodes_model{25e-6, 1.0 / 1.1e9, 0.1e-9};

namespace detail {
// COLLX_INTER_MODEL="alpha beta gamma" (seconds, seconds per byte, seconds per byte).
inline cost_params inter_model_from_env() {
  const char* v = std::getenv("COLLX_INTER_MODEL");
  if (v == nullptr || *v == '\0') return between_nodes_model;
  cost_params m;
  char tail = 0;
  if (std::sscanf(v, "%lf %lf %lf %c", &m.alpha, &m.beta, &m.gamma, &tail) != 3 || !(m.alpha >= 0) ||
      !(m.beta > 0) || !(m.gamma > 0)) {
    throw error(errc::invalid_argument, "COLLX_INTER_MODEL", error::no_rank, error::no_rank,
                std::string("'") + v + "' is not three numbers: alpha (s), beta (s/B), gamma (s/B)");
  }
  return m;
}
}  // namespace detail

// What an entry's calls run with when a call does not say.
struct communicator_config {
  // Bound on every call; COLLX_TIMEOUT (seconds) overrides this default.
  std::chrono::milliseconds timeout = detail::timeout_from_env(defaults::timeout);
  // Pipeline segment; COLLX_SEGMENT_BYTES overrides this default.
  std::size_t segment_bytes = detail::segment_from_env(defaults::segment_bytes);
  // The algorithm for calls that do not name one; COLLX_ALGO overrides this default.
  algorithm algo = algorithms::algorithm_from_env(algorithm::automatic);
  // What the automatic choice prices algorithms with: what collx-calibrate measured
  // (schedule/cost.hpp: model_file_path), else the defaults above. Ranks must agree on
  // it; make_communicator, init_from_env and init_from_mpi give every rank rank 0's.
  cost_params model = read_model(model_file_path()).value_or(local_transport_model);
  // Each rank's node (node_of[r]; any integers, equal for ranks of one node), for the
  // algorithms that know nodes and for the automatic choice; empty: one node.
  // make_communicator, init_from_env and init_from_mpi fill it in for a job of nodes.
  std::vector<int> node_of;
  // What the automatic choice prices a link between nodes with (`model` prices links
  // inside a node). COLLX_INTER_MODEL overrides this default; ranks get rank 0's.
  cost_params inter = detail::inter_model_from_env();
  // The flight recorder (core/recorder.hpp): the calls it keeps, 0 for none;
  // COLLX_TRACE_ENTRIES overrides this default.
  std::size_t trace_entries =
      static_cast<std::size_t>(detail::count_from_env("COLLX_TRACE_ENTRIES", 4096, 0, 1L << 24));
  // Where it writes its file on a failure, on SIGUSR1 and (COLLX_TRACE_AT_EXIT=1) at the
  // end; empty: nowhere, and SIGUSR1 keeps its default. COLLX_TRACE_DIR overrides it.
  std::string trace_dir = detail::env_str("COLLX_TRACE_DIR");
};

namespace detail {

struct resolved_call {
  algorithm algo = algorithm::ring;
  std::size_t segment = 1;  // elements
  std::chrono::milliseconds timeout = defaults::timeout;
  envelope env;
};

inline constexpr std::size_t no_message_limit = std::numeric_limits<std::size_t>::max();

// Call #seq of `coll` over `ranks` ranks, on `nodes` (the entry's cfg.node_of, computed
// once; the default: one node). A path whose messages must fit a buffer (the
// peer executor's slots) gives max_message_bytes: segments are cut to fit it.
inline resolved_call resolve(collective coll, std::size_t count, dtype t, reduce_op op, const options& o,
                             const communicator_config& cfg, int ranks, std::uint64_t seq,
                             std::size_t max_message_bytes = no_message_limit, int root = 0,
                             const algorithms::node_shape& nodes = {}) {
  const std::size_t es = size_of(t);
  resolved_call r;
  const std::size_t seg_bytes =
      std::min(o.segment_bytes != 0 ? o.segment_bytes : cfg.segment_bytes, max_message_bytes);
  r.segment = std::max<std::size_t>(1, seg_bytes / es);
  r.algo = algorithms::resolve(o.algo, cfg.algo, coll, ranks, static_cast<double>(count * es), cfg.model,
                               static_cast<double>(r.segment * es), nodes);
  r.timeout = o.timeout.count() != 0 ? o.timeout : cfg.timeout;
  // What the call does not use is signed as a constant, so that only real differences
  // between ranks are mismatches.
  r.env = {seq,
           count,
           r.segment,
           o.tag,
           coll,
           t,
           reduces(coll) ? op : reduce_op::sum,
           r.algo,
           rooted(coll) ? root : 0};
  return r;
}

// A timeout as the peer executor counts it: nanoseconds, "forever" a century.
inline std::uint64_t timeout_ns(std::chrono::milliseconds timeout) {
  const auto bounded = std::min<std::chrono::milliseconds>(timeout, std::chrono::hours(24 * 365 * 100));
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(bounded).count());
}

}  // namespace detail
}  // namespace collx
