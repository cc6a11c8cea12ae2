#pragma once

// The alpha-beta-gamma cost model of a schedule. alpha is the time to start a message,
// beta the time per byte on a link, gamma the time per byte of a local reduction or copy.
// The model replays the schedules (the same walk as the verifier) with three resources
// per rank, each busy one job at a time: its outgoing link, its incoming link and its
// processor. A message leaves when its send is ready and the sender's link is free,
// occupies that link for alpha + bytes*beta, and is delivered when the receiver's link
// has also carried it. A receive-and-reduce then needs the processor for bytes*gamma.
// This is what makes pipelining visible: segment k+1 travels while segment k is reduced.
// On nodes (link_classes) a message between nodes uses its node's one link instead,
// shared by the node's ranks, at the prices between nodes.

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "collx/schedule/schedule.hpp"
#include "collx/schedule/walk.hpp"

namespace collx {

struct cost_params {
  double alpha = 0.0;  // seconds per message
  double beta = 0.0;   // seconds per byte on a link
  double gamma = 0.0;  // seconds per byte reduced or copied locally
};

struct cost_estimate {
  double seconds = 0.0;        // completion time of the slowest rank
  std::size_t messages = 0;    // messages sent by the busiest rank
  std::size_t bytes_sent = 0;  // bytes sent by the busiest rank
};

// Where calibrated parameters live: $COLLX_MODEL_FILE, else
// $XDG_CACHE_HOME/collx/local.model, else $HOME/.cache/collx/local.model.
inline std::string model_file_path() {
  if (const char* f = std::getenv("COLLX_MODEL_FILE"); f != nullptr && *f != '\0') return f;
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x != nullptr && *x != '\0') {
    return std::string(x) + "/collx/local.model";
  }
  if (const char* h = std::getenv("HOME"); h != nullptr && *h != '\0')
    return std::string(h) + "/.cache/collx/local.model";
  return {};
}

// Reads "alpha beta gamma" (seconds, seconds per byte, seconds per byte) as
// collx-calibrate writes it; nullopt if the file is missing or the numbers are not sane.
inline std::optional<cost_params> read_model(const std::string& path) {
  if (path.empty()) return std::nullopt;
  std::ifstream f(path);
  cost_params m;
  if (!(f >> m.alpha >> m.beta >> m.gamma)) return std::nullopt;
  if (!(m.alpha >= 0 && m.alpha < 1 && m.beta > 0 && m.beta < 1 && m.gamma > 0 && m.gamma < 1))
    return std::nullopt;
  return m;
}

// Two classes of links, for ranks on nodes: a message between ranks of one node goes
// over the rank's own links at `c`'s prices (shared memory), one between nodes over its
// node's one link each way at `inter`'s (the network), which all the node's ranks share.
// Empty node_of: every rank on one node.
struct link_classes {
  std::span<const int> node_of{};
  cost_params inter{};
};

inline cost_estimate predict(std::span<const schedule> all, const cost_params& c, std::size_t elem_size,
                             const link_classes& links = {}) {
  const std::size_t p = all.size();
  std::vector<std::vector<double>> finish(p);
  // Links: each rank's own out and in (0..p-1), then each node's (p + node) for messages
  // between nodes.
  auto node = [&](std::size_t r) {
    return links.node_of.empty() ? std::size_t{0} : static_cast<std::size_t>(links.node_of[r]);
  };
  std::size_t nodes = 1;
  for (std::size_t r = 0; r < p; ++r) nodes = std::max(nodes, node(r) + 1);
  auto link = [&](std::size_t r, std::size_t q) { return node(r) == node(q) ? r : p + node(r); };
  auto price = [&](std::size_t r, std::size_t q) -> const cost_params& {
    return node(r) == node(q) ? c : links.inter;
  };
  std::vector<double> out_link(p + nodes, 0.0);
  std::vector<double> in_link(p + nodes, 0.0);
  std::vector<double> cpu(p, 0.0);
  std::vector<std::size_t> msgs(p, 0);
  std::vector<std::size_t> bytes(p, 0);
  for (std::size_t r = 0; r < p; ++r) finish[r].assign(all[r].steps.size(), 0.0);
  cost_estimate est;
  detail::walk(all, [&](int rank, std::size_t i, int from, std::size_t idx) {
    const auto r = static_cast<std::size_t>(rank);
    const auto& s = all[r];
    const auto& st = s.steps[i];
    double ready = 0.0;
    for (auto d : s.deps_of(i)) ready = std::max(ready, finish[r][d]);
    const double b = static_cast<double>(st.count() * elem_size);
    double t = ready;
    switch (st.kind) {
      case step_kind::send: {
        // The send is done, for the sender, once its link has pushed the bytes out.
        const auto q = static_cast<std::size_t>(st.peer);
        const cost_params& m = price(r, q);
        double& out = out_link[link(r, q)];
        t = std::max(ready, out) + m.alpha + b * m.beta;
        out = t;
        ++msgs[r];
        bytes[r] += st.count() * elem_size;
        break;
      }
      case step_kind::recv:
      case step_kind::recv_reduce: {
        const auto q = static_cast<std::size_t>(from);
        const double left = finish[q][idx];  // the sender's link finished at this time
        // The receiver's link carries the message as it arrives; its own backlog delays it.
        const cost_params& m = price(r, q);
        double& in = in_link[link(r, q)];
        const double arrive = std::max(left, in + m.alpha + b * m.beta);
        in = arrive;
        t = std::max(ready, arrive);
        if (st.kind == step_kind::recv_reduce) {
          t = std::max(t, cpu[r]) + b * c.gamma;
          cpu[r] = t;
        }
        break;
      }
      case step_kind::copy:
        t = std::max(ready, cpu[r]) + b * c.gamma;
        cpu[r] = t;
        break;
    }
    finish[r][i] = t;
    est.seconds = std::max(est.seconds, t);
    return true;
  });
  for (std::size_t r = 0; r < p; ++r) {
    est.messages = std::max(est.messages, msgs[r]);
    est.bytes_sent = std::max(est.bytes_sent, bytes[r]);
  }
  return est;
}

}  // namespace collx
