// collx-draw: shows what an algorithm moves where, step by step.
//
//   collx-draw --coll allreduce --algo ring -p 4 [--count N] [--segment N] [--steps] [--svg FILE]
//   collx-draw --coll allreduce --algo hierarchical -p 8 --nodes 2 --svg h.svg
//
// --nodes N puts the ranks on N nodes, in blocks (rank r on node r*N/p): the algorithms
// that know nodes see them, and messages between nodes are marked "across" (drawn thick).
//
// The text lists, for each phase (the algorithm's step number), every message: sender,
// receiver, the block it carries, and whether the receiver adds it in (reduce) or
// stores it (copy). --steps also prints each rank's schedule with its dependencies.
// --svg draws ranks as rows and phases as columns, an arrow per message, reductions red.

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "cli.hpp"

namespace {

using namespace collx;

struct message {
  std::uint32_t phase;
  int from;
  int to;
  region src;
  region dst;
  bool reduce;
};

// Pairs the k-th send from a to b with the k-th receive on b from a, as transports do.
std::vector<message> messages(const std::vector<schedule>& all) {
  std::map<std::pair<int, int>, std::vector<const step*>> sends, recvs;
  for (const auto& s : all) {
    for (const auto& st : s.steps) {
      if (st.kind == step_kind::send) sends[{s.rank, st.peer}].push_back(&st);
      if (is_receive(st.kind)) recvs[{st.peer, s.rank}].push_back(&st);
    }
  }
  std::vector<message> out;
  for (const auto& [key, list] : sends) {
    const auto& rl = recvs[key];
    for (std::size_t k = 0; k < list.size() && k < rl.size(); ++k) {
      out.push_back({list[k]->phase, key.first, key.second, list[k]->src, rl[k]->dst,
                     rl[k]->kind == step_kind::recv_reduce});
    }
  }
  std::sort(out.begin(), out.end(), [](const message& a, const message& b) {
    return std::tie(a.phase, a.from, a.to, a.src.offset) < std::tie(b.phase, b.from, b.to, b.src.offset);
  });
  return out;
}

void svg(const std::string& path, const std::vector<message>& msgs, int p, const std::string& title,
         const std::vector<int>& node_of) {
  auto across = [&](const message& m) {
    return !node_of.empty() &&
           node_of[static_cast<std::size_t>(m.from)] != node_of[static_cast<std::size_t>(m.to)];
  };
  std::uint32_t phases = 0;
  for (const auto& m : msgs) phases = std::max(phases, m.phase + 1);
  const int col = 130, row = 56, left = 70, top = 60;
  const int width = left + static_cast<int>(phases) * col + 40;
  const int height = top + p * row + 30;
  std::ofstream f(path);
  f << "<svg xmlns='http://www.w3.org/2000/svg' width='" << width << "' height='" << height
    << "' font-family='monospace' font-size='11'>\n"
    << "<defs><marker id='a' viewBox='0 0 10 10' refX='9' refY='5' markerWidth='7' markerHeight='7' "
       "orient='auto'><path d='M0,0 L10,5 L0,10 z' fill='context-stroke'/></marker></defs>\n"
    << "<rect width='100%' height='100%' fill='white'/>\n"
    << "<text x='10' y='20' font-size='14'>" << title << "</text>\n"
    << "<text x='10' y='38' fill='#c0392b'>red: received and reduced</text>"
    << "<text x='220' y='38' fill='#2471a3'>blue: received and stored</text>"
    << "<text x='430' y='38' fill='#888'>grey dashed: empty message (a signal)</text>"
    << (node_of.empty() ? "" : "<text x='700' y='38'>thick: between nodes</text>") << "\n";
  for (int r = 0; r < p; ++r) {
    const int y = top + r * row + row / 2;
    if (r > 0 && !node_of.empty() &&
        node_of[static_cast<std::size_t>(r)] != node_of[static_cast<std::size_t>(r - 1)]) {
      f << "<line x1='0' y1='" << y - row / 2 << "' x2='" << width << "' y2='" << y - row / 2
        << "' stroke='#333' stroke-dasharray='8 4'/>\n";
    }
    f << "<text x='10' y='" << y + 4 << "'>rank " << r << "</text>"
      << "<line x1='" << left << "' y1='" << y << "' x2='" << width - 20 << "' y2='" << y
      << "' stroke='#ccc'/>\n";
  }
  for (std::uint32_t ph = 0; ph < phases; ++ph) {
    f << "<text x='" << left + static_cast<int>(ph) * col + 40 << "' y='" << top - 4 << "'>step " << ph
      << "</text>\n";
  }
  std::map<std::pair<std::uint32_t, int>, int> stacked;  // labels of one sender in one phase
  for (const auto& m : msgs) {
    const int x1 = left + static_cast<int>(m.phase) * col + 10;
    const int x2 = x1 + col - 30;
    const int y1 = top + m.from * row + row / 2;
    const int y2 = top + m.to * row + row / 2;
    const bool empty = m.dst.count == 0;  // a signal: a barrier's, or a rooted call's closing round
    const char* color = empty ? "#888" : m.reduce ? "#c0392b" : "#2471a3";
    f << "<line x1='" << x1 << "' y1='" << y1 << "' x2='" << x2 << "' y2='" << y2 << "' stroke='" << color
      << "' stroke-width='" << (across(m) ? 3.5 : 1.5) << "' marker-end='url(#a)'"
      << (empty ? " stroke-dasharray='4 3'" : "") << "/>";
    if (!empty) {
      const int k = stacked[{m.phase, m.from}]++;
      f << "<text x='" << x1 << "' y='" << y1 - 4 - 11 * k << "' fill='" << color << "'>" << to_string(m.dst)
        << "</text>";
    }
    f << "\n";
  }
  f << "</svg>\n";
}

// To stdout, exit 0, when asked for (-h, --help); to stderr, exit 2, after a bad argument.
int usage(std::FILE* to = stderr) {
  std::fprintf(
      to,
      "usage: collx-draw --coll "
      "allreduce|allgather|reducescatter|broadcast|reduce|alltoall|gather|scatter|barrier|sendrecv\n"
      "                  --algo "
      "ring|rd|rabenseifner|bruck|tree|binomial|chain|dissemination|pairwise|linear|\n"
      "                  scatter_allgather|direct|hierarchical|leader\n"
      "                  -p RANKS [--nodes N]\n"
      "                  [--root RANK] [--count N] [--segment N] [--in-place] [--steps] [--svg FILE]\n");
  return to == stdout ? 0 : 2;
}

}  // namespace

int main(int argc, char** argv) {
  collective coll = collective::all_reduce;
  algorithm algo = algorithm::ring;
  int p = 0;
  std::size_t count = 0;
  std::size_t segment = 0;
  int root = 0;
  bool in_place = false;
  bool steps = false;
  int nodes = 0;
  std::string svg_path;
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    const char* v = i + 1 < argc ? argv[i + 1] : "";
    if (a == "-h" || a == "--help") return usage(stdout);
    if (a == "--coll") {
      auto c = cli::parse_collective(v);
      if (!c) return usage();
      coll = *c;
      ++i;
    } else if (a == "--algo") {
      auto x = parse_algorithm(v);
      if (!x || *x == algorithm::automatic) return usage();
      algo = *x;
      ++i;
    } else if (a == "-p") {
      p = std::atoi(v);
      ++i;
    } else if (a == "--count") {
      count = std::strtoull(v, nullptr, 10);
      ++i;
    } else if (a == "--segment") {
      segment = std::strtoull(v, nullptr, 10);
      ++i;
    } else if (a == "--root") {
      root = std::atoi(v);
      ++i;
    } else if (a == "--nodes") {
      nodes = std::atoi(v);
      ++i;
    } else if (a == "--in-place") {
      in_place = true;
    } else if (a == "--steps") {
      steps = true;
    } else if (a == "--svg") {
      svg_path = v;
      ++i;
    } else {
      return usage();
    }
  }
  if (p < 1 || p > 4096 || root < 0 || root >= p || nodes < 0 || nodes > p) return usage();
  std::vector<int> node_of;
  for (int r = 0; nodes > 0 && r < p; ++r) node_of.push_back(r * nodes / p);
  if (!implements(algo, coll)) {
    std::fprintf(stderr, "collx-draw: %s does not implement %s\n", std::string(to_string(algo)).c_str(),
                 std::string(to_string(coll)).c_str());
    return 2;
  }
  if (count == 0 && coll != collective::barrier) {
    count = coll == collective::all_reduce ? 2 * static_cast<std::size_t>(p) : 2;
  }
  if (segment == 0) segment = count * static_cast<std::size_t>(p);  // one message per block
  std::vector<schedule> all;
  for (int r = 0; r < p; ++r) {
    // send_recv is drawn as nccl-tests' sendrecv runs it: a ring shift of count each.
    const int to = (r + 1) % p;
    const int from = (r - 1 + p) % p;
    std::vector<std::size_t> sc(static_cast<std::size_t>(p), 0), rc = sc;
    sc[static_cast<std::size_t>(to)] = count;
    rc[static_cast<std::size_t>(from)] = count;
    const bool shift = coll == collective::send_recv;
    all.push_back(algorithms::build(algo, {coll, r, p, count, segment, in_place, root, shift ? sc : rc, rc,
                                           shift ? to : -1, shift ? from : -1, node_of}));
  }
  const auto proof = verify(all);
  const auto msgs = messages(all);
  const auto cost = predict(all, {1.0, 0.0, 0.0}, 1);
  const std::string title = std::string(to_string(algo)) + " " + std::string(to_string(coll)) +
                            ", p = " + std::to_string(p) + ", count = " + std::to_string(count) +
                            (rooted(coll) ? ", root " + std::to_string(root) : std::string()) +
                            (in_place ? ", in place" : "") +
                            (nodes > 0 ? ", " + std::to_string(nodes) + " nodes" : std::string());
  std::printf(
      "# %s\n# %zu messages, %zu on the busiest rank, %g latency steps on the critical path; verifier: %s\n",
      title.c_str(), msgs.size(), cost.messages, cost.seconds, proof.ok ? "proven" : proof.message.c_str());
  std::uint32_t phase = ~0u;
  for (const auto& m : msgs) {
    if (m.phase != phase) {
      phase = m.phase;
      std::printf("step %u\n", phase);
    }
    const bool across = !node_of.empty() &&
                        node_of[static_cast<std::size_t>(m.from)] != node_of[static_cast<std::size_t>(m.to)];
    std::printf("  %3d -> %-3d %-16s -> %-16s %s%s\n", m.from, m.to, to_string(m.src).c_str(),
                to_string(m.dst).c_str(),
                m.dst.count == 0 ? "signal"
                : m.reduce       ? "reduce"
                                 : "copy",
                across ? " across" : "");
  }
  if (steps) {
    for (const auto& s : all) std::printf("%s", to_text(s).c_str());
  }
  if (!svg_path.empty()) {
    svg(svg_path, msgs, p, title, node_of);
    std::printf("# drawing written to %s\n", svg_path.c_str());
  }
  return proof.ok ? 0 : 1;
}
