// collx-sim: what the alpha-beta-gamma model predicts for every algorithm of a
// collective at any rank count, from the closed-form costs the automatic choice uses.
//
//   collx-sim --coll allreduce -p 65536 --bytes 256M --alpha 2us --beta 25GB/s --gamma 50GB/s [--json]
//   collx-sim --coll broadcast --root 3 -p 65536 --bytes 256M --segment 512K
//   collx-sim --coll allreduce --nodes 8192 --per-node 8 --bytes 1G --inter-beta 12.5GB/s
//
// On nodes (--nodes N --per-node L: p = N*L), --alpha/--beta/--gamma price the links
// inside a node and --inter-alpha/--inter-beta/--inter-gamma those between nodes
// (default 25 us, 1.1 GB/s: 10 Gbit/s Ethernet); flat algorithms pay the links between,
// the hierarchical one each level its own (algorithms::predicted_on_nodes).
//
// bytes is the buffer size as nccl-tests counts it: the whole vector for all-reduce,
// broadcast and reduce, the whole p-block buffer for all-gather, reduce-scatter,
// all-to-all, gather and scatter, what each rank sends for sendrecv (a ring shift); a
// barrier has none. algbw = bytes / time; busbw = algbw * 2(p-1)/p for all-reduce, 1 for
// broadcast, reduce and sendrecv, (p-1)/p otherwise. The segment (the pipeline's,
// default the library's) prices the pipelined chain; the root changes no cost (every
// rank's tree has the same shape), and is checked against p.

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "cli.hpp"

namespace {

// To stdout, exit 0, when asked for (-h, --help); to stderr, exit 2, after a bad argument.
int usage(std::FILE* to = stderr) {
  std::fprintf(
      to,
      "usage: collx-sim --coll "
      "allreduce|allgather|reducescatter|broadcast|reduce|alltoall|gather|scatter|barrier\n"
      "                 -p RANKS\n"
      "                 --bytes SIZE [--root RANK] [--segment SIZE] [--alpha TIME] [--beta BANDWIDTH]\n"
      "                 [--gamma BANDWIDTH] [--json]\n"
      "                 [--nodes N --per-node L [--inter-alpha TIME] [--inter-beta BANDWIDTH]\n"
      "                  [--inter-gamma BANDWIDTH]]\n"
      "  SIZE like 256M, TIME like 2us, BANDWIDTH like 25GB/s\n");
  return to == stdout ? 0 : 2;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace collx;
  collective coll = collective::all_reduce;
  int p = 0;
  double bytes = -1;
  int root = 0;
  double segment = static_cast<double>(defaults::segment_bytes);
  cost_params m{2e-6, 1.0 / 25e9, 1.0 / 50e9};
  algorithms::node_shape ns{1, 0, between_nodes_model};
  bool json = false;
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    const char* v = i + 1 < argc ? argv[i + 1] : "";
    if (a == "-h" || a == "--help") return usage(stdout);
    bool ok = true;
    if (a == "--coll") {
      auto c = cli::parse_collective(v);
      ok = c.has_value();
      if (ok) coll = *c;
      ++i;
    } else if (a == "-p") {
      p = std::atoi(v);
      ok = p >= 1 && p <= (1 << 24);  // keeps the model's int arithmetic exact, far past any job
      ++i;
    } else if (a == "--bytes" || a == "--segment") {
      auto b = cli::parse_bytes(v);
      ok = b.has_value() && (a == "--bytes" || *b >= 1);
      if (ok) (a == "--bytes" ? bytes : segment) = *b;
      ++i;
    } else if (a == "--root") {
      root = std::atoi(v);
      ok = root >= 0;
      ++i;
    } else if (a == "--nodes" || a == "--per-node") {
      const int k = std::atoi(v);
      ok = k >= 1 && k <= (1 << 24);
      (a == "--nodes" ? ns.nodes : ns.per_node) = k;
      ++i;
    } else if (a == "--alpha" || a == "--inter-alpha") {
      auto t = cli::parse_seconds(v);
      ok = t.has_value();
      if (ok) (a == "--alpha" ? m : ns.inter).alpha = *t;
      ++i;
    } else if (a == "--beta" || a == "--gamma" || a == "--inter-beta" || a == "--inter-gamma") {
      auto t = cli::parse_seconds_per_byte(v);
      ok = t.has_value();
      cost_params& to = a.starts_with("--inter") ? ns.inter : m;
      if (ok) (a.ends_with("beta") ? to.beta : to.gamma) = *t;
      ++i;
    } else if (a == "--json") {
      json = true;
    } else {
      ok = false;
    }
    if (!ok) {
      std::fprintf(stderr, "collx-sim: bad argument %s %s\n", argv[i - (a == "--json" ? 0 : 1)], v);
      return usage();
    }
  }
  if (coll == collective::barrier && bytes < 0) bytes = 0;
  if (ns.per_node > 0 || ns.nodes > 1) {
    if (ns.per_node == 0) ns.per_node = 1;
    if (p != 0 && p != ns.nodes * ns.per_node) {
      std::fprintf(stderr, "collx-sim: -p %d is not --nodes %d x --per-node %d\n", p, ns.nodes, ns.per_node);
      return usage();
    }
    p = ns.nodes * ns.per_node;
  }
  if (p < 1 || bytes < 0) return usage();
  if (rooted(coll) && root >= p) {
    std::fprintf(stderr, "collx-sim: root %d is not one of %d ranks\n", root, p);
    return usage();
  }

  // The API's count is per rank; the model takes bytes per rank the same way.
  auto rank_bytes = [&](double b) {
    return coll == collective::all_reduce || coll == collective::broadcast || coll == collective::reduce ||
                   coll == collective::send_recv
               ? b
               : b / p;
  };
  const double per_rank = rank_bytes(bytes);
  const double factor = cli::busbw_factor(coll, p);
  auto predict = [&](algorithm a, double b) {
    return algorithms::predicted_on_nodes(a, coll, p, rank_bytes(b), m, ns, segment);
  };
  auto winner = [&](double b) { return algorithms::choose(coll, p, rank_bytes(b), m, segment, ns); };
  auto row = [&](algorithm a, double b) {
    const double t = predict(a, b);
    const double algbw = t > 0 ? b / t / 1e9 : 0;
    return std::pair{t, algbw};
  };

  std::vector<algorithm> algos;
  for (auto a : all_algorithms) {
    if (implements(a, coll)) algos.push_back(a);
  }
  const algorithm pick = algorithms::choose(coll, p, per_rank, m, segment, ns);
  if (json) {
    std::printf(
        "{\"collective\": \"%s\", \"ranks\": %d, \"bytes\": %.0f, \"alpha_s\": %g, \"beta_s_per_byte\": %g, "
        "\"gamma_s_per_byte\": %g, \"choice\": \"%s\", \"algorithms\": [",
        std::string(to_string(coll)).c_str(), p, bytes, m.alpha, m.beta, m.gamma,
        std::string(to_string(pick)).c_str());
    for (std::size_t k = 0; k < algos.size(); ++k) {
      const auto [t, algbw] = row(algos[k], bytes);
      std::printf("%s{\"algorithm\": \"%s\", \"time_us\": %.3f, \"algbw_gbps\": %.3f, \"busbw_gbps\": %.3f}",
                  k ? ", " : "", std::string(to_string(algos[k])).c_str(), t * 1e6, algbw, algbw * factor);
    }
    std::printf("], \"winners\": [");
    for (double b = 8;; b = std::min(b * 4, bytes)) {
      const algorithm w = winner(b);
      std::printf("%s{\"bytes\": %.0f, \"algorithm\": \"%s\"}", b == 8 ? "" : ", ", b,
                  std::string(to_string(w)).c_str());
      if (b >= bytes) break;
    }
    std::printf("]}\n");
    return 0;
  }
  std::printf(
      "# collx-sim: %s, p = %d, %.0f bytes; alpha %.3g s, beta %.3g s/B (%.3g GB/s), gamma %.3g s/B\n",
      std::string(to_string(coll)).c_str(), p, bytes, m.alpha, m.beta, 1e-9 / m.beta, m.gamma);
  if (ns.nodes > 1) {
    std::printf("# %d nodes of %d; between nodes alpha %.3g s, beta %.3g s/B (%.3g GB/s), gamma %.3g s/B\n",
                ns.nodes, ns.per_node, ns.inter.alpha, ns.inter.beta, 1e-9 / ns.inter.beta, ns.inter.gamma);
  }
  std::printf("# %-14s %14s %12s %12s\n", "algorithm", "time(us)", "algbw(GB/s)", "busbw(GB/s)");
  for (auto a : algos) {
    const auto [t, algbw] = row(a, bytes);
    std::printf("  %-14s %14.2f %12.3f %12.3f%s\n", std::string(to_string(a)).c_str(), t * 1e6, algbw,
                algbw * factor, a == pick ? "  <- auto" : "");
  }
  std::printf("# which algorithm wins where\n# %12s %-14s %14s\n", "bytes", "algorithm", "time(us)");
  for (double b = 8;; b = std::min(b * 4, bytes)) {
    const algorithm w = winner(b);
    std::printf("  %12.0f %-14s %14.2f\n", b, std::string(to_string(w)).c_str(), predict(w, b) * 1e6);
    if (b >= bytes) break;
  }
  return 0;
}
