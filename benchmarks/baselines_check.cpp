// baselines_check: runs collx-bench's baselines (baselines.hpp) through all-reduce,
// all-gather and reduce-scatter on a few sizes, out of place and in place, and checks
// every result against collx-bench's serial reference.
//
//   mpirun -np P baselines_check             MPI, then Gloo, P processes
//   baselines_check [--threads N]            no launcher: MPI is skipped with its reason,
//                                            Gloo runs N ranks (2) as threads of this process
//   ... --sweep 8,1M,64M [-n 20] [-w 5] [--coll allreduce]
//                                            float sum only: time, algbw and busbw per size
//
// Exit status 1 when any element is wrong, or when a baseline that can run here fails a
// float sum case; a case a library cannot do (no average in MPI) is listed with why.

#include "baselines.hpp"

#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "../tools/cli.hpp"

namespace {

using collx::collective;
using collx::dtype;
using collx::reduce_op;

using runner =
    std::function<std::optional<bench::baseline_result>(const bench::baseline_case&, std::string&)>;

struct tally {
  int ran = 0;
  int skipped = 0;
  int failed = 0;  // cases that should have run and did not
  long long wrong = 0;
};

std::size_t count_for(collective coll, dtype t, double bytes, int ranks) {
  const std::size_t es = collx::size_of(t);
  const auto b = static_cast<std::size_t>(bytes);
  const std::size_t n = coll == collective::all_reduce ? b / es : b / es / static_cast<std::size_t>(ranks);
  return std::max<std::size_t>(n, 1);
}

// nccl-tests' size: the whole buffer of all-reduce, the whole gathered or scattered one.
std::size_t size_bytes(const bench::baseline_case& c, int ranks) {
  const std::size_t es = collx::size_of(c.type);
  return c.coll == collective::all_reduce ? c.count * es : c.count * es * static_cast<std::size_t>(ranks);
}

std::string name(const bench::baseline_case& c) {
  return std::string(collx::to_string(c.coll)) + " " + std::string(collx::to_string(c.type)) + " " +
         std::string(collx::to_string(c.op));
}

tally suite(const char* impl, const runner& run, int ranks, bool print) {
  struct item {
    bench::baseline_case c;
    bool required;
  };
  std::vector<item> items;
  // A few bytes, a little over 1 KiB (no multiple of the rank count or of the chunks a
  // library cuts), and 1 MiB, where the libraries switch to their large-message paths.
  for (auto coll : {collective::all_reduce, collective::all_gather, collective::reduce_scatter}) {
    for (double bytes : {8.0, 1036.0, 1024.0 * 1024}) {
      for (bool ip : {false, true}) {
        bench::baseline_case c;
        c.coll = coll;
        c.count = count_for(coll, c.type, bytes, ranks);
        c.in_place = ip;
        c.iters = 3;
        c.warmup = 1;
        items.push_back({c, true});
      }
    }
  }
  // Other types and operations: what a library lacks is skipped with why.
  const std::pair<dtype, reduce_op> others[] = {{dtype::f64, reduce_op::prod}, {dtype::i32, reduce_op::max},
                                                {dtype::u8, reduce_op::min},   {dtype::i8, reduce_op::sum},
                                                {dtype::i64, reduce_op::sum},  {dtype::f16, reduce_op::sum},
                                                {dtype::bf16, reduce_op::sum}, {dtype::f32, reduce_op::avg}};
  for (auto coll : {collective::all_reduce, collective::all_gather, collective::reduce_scatter}) {
    for (auto [t, op] : others) {
      if (coll == collective::all_gather && op != reduce_op::sum) continue;
      for (bool ip : {false, true}) {
        bench::baseline_case c;
        c.coll = coll;
        c.type = t;
        c.op = op;
        c.count = count_for(coll, t, 1036, ranks);
        c.in_place = ip;
        c.iters = 2;
        c.warmup = 1;
        items.push_back({c, false});
      }
    }
  }
  tally out;
  for (const auto& [c, required] : items) {
    std::string why;
    const auto r = run(c, why);
    const std::string what = name(c);
    if (!r) {
      ++out.skipped;
      if (required) ++out.failed;
      if (print) {
        std::printf("%-4s %-24s %-12s %8zu B  %s (%s)\n", impl, what.c_str(),
                    c.in_place ? "in-place" : "out-of-place", size_bytes(c, ranks),
                    required ? "FAILED to run" : "skipped", why.c_str());
      }
      continue;
    }
    ++out.ran;
    out.wrong += r->wrong;
    if (print) {
      std::printf("%-4s %-24s %-12s %8zu B  %10.2f us  wrong %lld  [%s]\n", impl, what.c_str(),
                  c.in_place ? "in-place" : "out-of-place", size_bytes(c, ranks), r->time_us, r->wrong,
                  r->algorithm.c_str());
    }
    std::fflush(stdout);
  }
  return out;
}

struct sweep_settings {
  std::vector<double> sizes;
  collective coll = collective::all_reduce;
  int iters = 20;
  int warmup = 5;
};

tally sweep(const char* impl, const runner& run, int ranks, bool print, const sweep_settings& s) {
  tally out;
  for (double bytes : s.sizes) {
    bench::baseline_case c;
    c.coll = s.coll;
    c.count = count_for(s.coll, c.type, bytes, ranks);
    c.iters = s.iters;
    c.warmup = s.warmup;
    const std::size_t size = size_bytes(c, ranks);
    std::string line;
    char cell[160];
    std::snprintf(cell, sizeof cell, "%-4s %-14s %10zu %10zu", impl,
                  std::string(collx::to_string(c.coll)).c_str(), size, c.count);
    line += cell;
    std::string algorithm = "?";
    for (bool ip : {false, true}) {
      c.in_place = ip;
      std::string why;
      const auto r = run(c, why);
      if (!r) {
        ++out.failed;
        line += "  skipped (" + why + ")";
        break;
      }
      ++out.ran;
      out.wrong += r->wrong;
      algorithm = r->algorithm;
      const double algbw = r->time_us > 0 ? static_cast<double>(size) / (r->time_us * 1e-6) / 1e9 : 0;
      std::snprintf(cell, sizeof cell, " %11.2f %7.3f %7.3f %6lld", r->time_us, algbw,
                    algbw * collx::cli::busbw_factor(c.coll, ranks), r->wrong);
      line += cell;
    }
    if (print) {
      std::printf("%s  [%s]\n", line.c_str(), algorithm.c_str());
      std::fflush(stdout);
    }
  }
  return out;
}

void sweep_header(int ranks) {
  std::printf(
      "# float sum, %d ranks; time in us (mean per iteration, max over ranks), algbw and busbw in GB/s\n",
      ranks);
  std::printf("# %-2s %-14s %10s %10s %11s %7s %7s %6s %11s %7s %7s %6s\n", "", "", "size(B)", "count",
              "oop time", "algbw", "busbw", "#wrong", "ip time", "algbw", "busbw", "#wrong");
}

std::string summary(const char* impl, const tally& t) {
  return std::string(impl) + " ran " + std::to_string(t.ran) + " cases (" + std::to_string(t.skipped) +
         " skipped" + (t.failed > 0 ? ", " + std::to_string(t.failed) + " FAILED to run" : "") + ")";
}

int usage() {
  std::fprintf(stderr,
               "usage: baselines_check [--threads N] [--sweep SIZE,SIZE,...] [-n ITERS] [-w WARMUP] "
               "[--coll allreduce|allgather|reducescatter]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 2;
  bool do_sweep = false;
  sweep_settings ss;
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    if (i + 1 >= argc) return usage();
    const std::string v = argv[++i];
    if (a == "--threads") {
      threads = std::atoi(v.c_str());
      if (threads < 1 || threads > 64) return usage();
    } else if (a == "--sweep") {
      do_sweep = true;
      for (std::size_t p = 0; p <= v.size();) {
        const std::size_t q = std::min(v.find(',', p), v.size());
        const auto b = collx::cli::parse_bytes(std::string_view(v).substr(p, q - p));
        if (!b || *b < 1) return usage();
        ss.sizes.push_back(*b);
        p = q + 1;
      }
    } else if (a == "-n" || a == "-w") {
      const int k = std::atoi(v.c_str());
      if (k < (a == "-n" ? 1 : 0)) return usage();
      (a == "-n" ? ss.iters : ss.warmup) = k;
    } else if (a == "--coll") {
      const auto c = collx::cli::parse_collective(v);
      if (!c) return usage();
      ss.coll = *c;
    } else {
      return usage();
    }
  }

  auto exercise = [&](const char* impl, const runner& run, int ranks, bool print) {
    if (!do_sweep) return suite(impl, run, ranks, print);
    if (print) sweep_header(ranks);
    return sweep(impl, run, ranks, print, ss);
  };

  std::string lines;
  bool failed = false;
  long long wrong = 0;
  bool print = true;
  {
    bench::mpi_baseline mpi;
    if (!mpi.why_not().empty()) {
      lines += "mpi skipped (" + mpi.why_not() + ")";
    } else {
      print = mpi.rank() == 0;
      const runner run = [&](const bench::baseline_case& c, std::string& why) { return mpi.run(c, why); };
      const tally t = exercise("mpi", run, mpi.size(), print);
      lines += summary("mpi", t);
      failed = failed || t.failed > 0;
      wrong += t.wrong;
    }
    lines += "; ";

    const bool launched = std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr ||
                          std::getenv("PMI_SIZE") != nullptr || std::getenv("WORLD_SIZE") != nullptr;
    std::string why;
    if (!bench::gloo_baseline::available(why)) {
      lines += "gloo skipped (" + why + ")";
    } else if (launched) {
      auto gloo = bench::gloo_baseline::from_environment(why);
      if (!gloo) {
        lines += "gloo FAILED to start (" + why + ")";
        failed = true;
      } else {
        print = gloo->rank() == 0;
        const runner run = [&](const bench::baseline_case& c, std::string& w) { return gloo->run(c, w); };
        const tally t = exercise("gloo", run, gloo->size(), print);
        lines += summary("gloo", t);
        failed = failed || t.failed > 0;
        wrong += t.wrong;
      }
    } else {
      // No launcher: the ranks are threads of this process, as collx-bench's are.
      char dir[] = "/tmp/collx-gloo-XXXXXX";
      if (mkdtemp(dir) == nullptr) {
        std::perror("baselines_check: mkdtemp");
        return 1;
      }
      std::vector<tally> tallies(static_cast<std::size_t>(threads));
      std::vector<std::thread> ts;
      for (int r = 0; r < threads; ++r) {
        ts.emplace_back([&, r] {
          bench::gloo_baseline g(r, threads, dir);
          const runner run = [&](const bench::baseline_case& c, std::string& w) { return g.run(c, w); };
          tallies[static_cast<std::size_t>(r)] = exercise("gloo", run, threads, r == 0);
        });
      }
      for (auto& t : ts) t.join();
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
      const tally& t = tallies[0];
      lines += summary("gloo", t) + " as " + std::to_string(threads) + " threads";
      failed = failed || t.failed > 0;
      wrong += t.wrong;
      print = true;
    }
    const bool ok = !failed && wrong == 0;
    if (print) {
      std::printf("baselines_check: %s; %lld wrong: %s\n", lines.c_str(), wrong, ok ? "OK" : "FAILED");
      std::fflush(stdout);
    }
    if (!ok) return 1;
  }
  return 0;
}
