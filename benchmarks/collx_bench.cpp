// collx-bench: the nccl-tests-style harness.
//
//   collx-bench [--coll allreduce|allgather|reducescatter|broadcast|reduce|alltoall|gather|scatter|sendrecv]
//               [-r ROOT] [--algo NAME|auto]
//               [--transport local|cuda|shm,tcp,auto,mpi,cuda_ipc,cuda_hier] [--np N] [--gpus 0,0,...]
//               [--gpu]
//               [-b 8] [-e 64M] [-f 2] [-n 20] [-w 5] [-c 1] [-o sum] [-d float]
//               [--vs nccl,mpi,gloo] [--json FILE] [--csv FILE]
//
// Options mean what they mean in nccl-tests. size is nccl-tests' size: the whole buffer
// of all-reduce, broadcast and reduce, the whole gathered (all-gather) or scattered
// (reduce-scatter) buffer. time is the mean over -n iterations after -w warm-up ones, the
// maximum over ranks. algbw = size / time; busbw = algbw * 2(p-1)/p for all-reduce, 1
// for broadcast, reduce and sendrecv (each rank sends its buffer to rank+1 and receives
// rank-1's, out of place only), (p-1)/p otherwise (all-gather, reduce-scatter, all-to-all,
// gather, scatter: size is the whole p-block buffer). With -c 1 every rank checks its result
// against a serial reference of the inputs it can compute for every rank, computed in
// exact integers (or double, for avg) and not by collx's reduction code
// (baselines.hpp); #wrong counts the elements that differ.
//
// Ranks: --transport local runs them as threads of this process. auto is what
// init_from_env builds: shm on one node, and on several shm inside each node with tcp
// across (nodes by COLLX_NODE_ID or host name; the hierarchical algorithm knows them). Every other transport
// runs them as processes: those of a launcher (collx-run, mpirun, srun, torchrun-style
// environment), or, with none, --np N processes forked from this one. Several process
// transports (--transport shm,tcp) and the baselines (--vs) are measured size by size
// in the same run, so that their figures share the machine's state. A baseline that
// cannot run is listed as skipped with the reason.
//
// GPUs (in a build with CUDA; cuda_contenders.cu): --transport cuda runs the ranks as
// threads of this process on GPU 0, or on the devices --gpus lists (one per rank), with
// collx::cuda::group's collectives on device buffers. --gpu gives the process transports
// device buffers: each rank on GPU LOCAL_RANK % (devices), collx::cuda::staged over the
// transport (shown as collx/tcp+gpu); --transport cuda_ipc (with --gpu) runs the ranks'
// processes over CUDA IPC (collx::cuda::ipc_communicator); --transport cuda_hier (with
// --gpu) runs them as collx::cuda::hierarchical (nodes by COLLX_NODE_ID or host name:
// CUDA IPC inside, staged tcp across); --vs nccl runs NCCL, loaded at run time
// (libnccl.so.2), on the same device buffers. The GPU contenders are timed with the host
// clock from a barrier to the synchronize after the last call, and checked like the
// others. Without a CUDA device either mode says why and exits 77.

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>
#include <collx/collx.hpp>
#include <collx/launch/init.hpp>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "../tools/cli.hpp"
#include "baselines.hpp"
#if COLLX_BENCH_HAVE_CUDA
#include "cuda_contenders.hpp"
#endif
#if COLLX_BENCH_HAVE_MPI
#include <collx/transport/mpi.hpp>
#endif

namespace {

using namespace collx;

struct settings {
  collective coll = collective::all_reduce;
  algorithm algo = algorithm::automatic;
  std::string transport = "local";
  int np = 2;
  double min_bytes = 8;
  double max_bytes = 64.0 * 1024 * 1024;
  double factor = 2;
  int iters = 20;
  int warmup = 5;
  bool check = true;
  reduce_op op = reduce_op::sum;
  dtype type = dtype::f32;
  int root = 0;  // broadcast's and reduce's (-r), as nccl-tests
  std::vector<std::string> vs;
  std::string json;
  std::string csv;
  bool plant_error = false;  // testing the harness: corrupt one element before the check
  bool gpu = false;          // --gpu: device buffers for the process transports
  std::vector<int> gpus;     // --gpus: --transport cuda's devices, one per rank
};

struct row {
  algorithm algo = algorithm::ring;  // what ran: auto resolved, as the communicator resolves it
  std::string peer_algo;             // a baseline's: what the library says it ran
  std::size_t bytes = 0;
  std::size_t count = 0;
  bool in_place = false;
  double time_us = 0;
  double algbw = 0;
  double busbw = 0;
  long long wrong = 0;
  bool missing = false;  // a baseline without this form (printed n/a, not written to the files)
};

const char* dtype_name(dtype t) {
  switch (t) {
    case dtype::i8: return "int8";
    case dtype::u8: return "uint8";
    case dtype::i32: return "int32";
    case dtype::i64: return "int64";
    case dtype::f16: return "half";
    case dtype::bf16: return "bfloat16";
    case dtype::f32: return "float";
    case dtype::f64: return "double";
  }
  return "?";
}

bool parse_dtype(std::string_view s, dtype& t) {
  for (auto d : all_dtypes) {
    if (s == dtype_name(d) || s == to_string(d)) {
      t = d;
      return true;
    }
  }
  return false;
}

bool parse_op(std::string_view s, reduce_op& op) {
  for (auto o : all_reduce_ops) {
    if (s == to_string(o)) {
      op = o;
      return true;
    }
  }
  return false;
}

// The whole buffer is the size for all-reduce, broadcast and reduce; the gathered (or
// scattered) one, p blocks, for all-gather and reduce-scatter.
bool whole_buffer(collective c) {
  return c == collective::all_reduce || rooted(c) || c == collective::send_recv;
}

// The case as the baselines take it: its inputs and its reference (baselines.hpp), which
// collx's rows use too. count is per rank.
bench::baseline_case case_of(const settings& s, std::size_t count, bool in_place) {
  bench::baseline_case bc;
  bc.coll = s.coll;
  bc.type = s.type;
  bc.op = s.op;
  bc.count = count;
  bc.in_place = in_place;
  bc.iters = s.iters;
  bc.warmup = s.warmup;
  bc.check = s.check;
  bc.algo = s.algo;
  bc.root = s.root;
  return bc;
}

std::vector<std::string> split(std::string_view list) {
  std::vector<std::string> out;
  for (std::size_t p0 = 0; p0 <= list.size();) {
    const std::size_t q = std::min(list.find(',', p0), list.size());
    if (q > p0) out.emplace_back(list.substr(p0, q - p0));
    p0 = q + 1;
  }
  return out;
}

void barrier(communicator& c) {
  std::int32_t x = 0;
  c.all_reduce(std::span(&x, 1), reduce_op::sum);
}

// One size, out of place or in place: every rank runs this with its communicator and
// gets the same row back. Time is the slowest rank's, wrong the sum over ranks, both
// agreed through the communicator itself.
row measure(const settings& s, communicator& c, std::size_t bytes, bool in_place) {
  const int p = c.size();
  const int r = c.rank();
  const auto up = static_cast<std::size_t>(p);
  const auto ur = static_cast<std::size_t>(r);
  const std::size_t es = size_of(s.type);
  const bool whole_in = s.coll == collective::reduce_scatter || s.coll == collective::scatter ||
                        s.coll == collective::all_to_all;
  // In place, the rank's own block sits at rank * count of a p-block buffer: the input of
  // an all-gather or gather, the result of a reduce-scatter or scatter.
  const bool own_in = s.coll == collective::all_gather || s.coll == collective::gather;
  const bool own_out = s.coll == collective::reduce_scatter || s.coll == collective::scatter;
  const std::size_t count = whole_buffer(s.coll) ? bytes / es : bytes / es / up;  // per rank
  row out;
  const communicator_config cfg;  // what the communicators were built with
  out.algo = algorithms::resolve(s.algo, cfg.algo, s.coll, p, static_cast<double>(count * es), cfg.model,
                                 static_cast<double>(cfg.segment_bytes));
  out.bytes = whole_buffer(s.coll) ? count * es : count * es * up;
  out.count = whole_buffer(s.coll) ? count : count * up;
  out.in_place = in_place;
  options o;
  o.algo = s.algo;
  const std::size_t in_n = whole_in ? count * up : count;
  const std::size_t out_n =
      s.coll == collective::all_gather || s.coll == collective::gather || s.coll == collective::all_to_all
          ? count * up
          : count;
  const std::size_t buf_n = in_place ? std::max(in_n, out_n) : 0;
  std::vector<std::byte> in(in_n * es), outb(out_n * es), inplace(buf_n * es);
  // Each rank's contribution: the vector it reduces, or its block of the gather.
  const bench::baseline_data data = bench::reference_data(case_of(s, count, in_place), p);
  data.fill(in.data(), r, in_n);
  std::byte* send = in.data();
  std::byte* recv = outb.data();
  auto prepare = [&] {
    if (!in_place) return;
    const std::size_t at = own_in ? ur * count * es : 0;
    std::memcpy(inplace.data() + at, in.data(), in_n * es);
  };
  if (in_place) {
    send = own_in ? inplace.data() + ur * count * es : inplace.data();
    recv = own_out ? inplace.data() + ur * count * es : inplace.data();
  }
  auto once = [&] {
    switch (s.coll) {
      case collective::all_reduce: c.all_reduce(send, recv, count, s.type, s.op, o); break;
      case collective::all_gather: c.all_gather(send, recv, count, s.type, o); break;
      case collective::reduce_scatter: c.reduce_scatter(send, recv, count, s.type, s.op, o); break;
      case collective::broadcast: c.broadcast(send, recv, count, s.type, s.root, o); break;
      case collective::reduce: c.reduce(send, recv, count, s.type, s.op, s.root, o); break;
      case collective::all_to_all: c.all_to_all(send, recv, count, s.type, o); break;
      case collective::gather: c.gather(send, recv, count, s.type, s.root, o); break;
      case collective::scatter: c.scatter(send, recv, count, s.type, s.root, o); break;
      case collective::barrier: c.barrier(o); break;
      case collective::send_recv:  // nccl-tests' sendrecv: a ring shift
        c.send_recv(send, count, (r + 1) % p, recv, count, (r - 1 + p) % p, s.type, 0, o);
        break;
      case collective::all_to_all_v: break;  // not a --coll: its counts have no nccl-tests form
    }
  };
  prepare();
  for (int i = 0; i < s.warmup; ++i) once();
  barrier(c);
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < s.iters; ++i) once();
  double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / s.iters;
  c.all_reduce(std::span(&t, 1), reduce_op::max);
  long long wrong = 0;
  if (s.check) {
    // One more call on fresh inputs, checked. The result region is poisoned first, so
    // an element the call fails to write is counted, not left over from the timed calls.
    if (in_place) {
      std::memset(inplace.data(), 0xff, inplace.size());
    } else {
      std::memset(outb.data(), 0xff, outb.size());
    }
    prepare();
    once();
    const std::byte* got = recv;
    if (s.plant_error && r == 0 && out_n > 0) const_cast<std::byte*>(got)[0] ^= std::byte{0x41};
    wrong += out_n > 0 ? data.check(got, r, out_n) : 0;
    std::int64_t w = wrong;
    c.all_reduce(std::span(&w, 1), reduce_op::sum);
    wrong = w;
  }
  out.time_us = t * 1e6;
  out.algbw = t > 0 ? static_cast<double>(out.bytes) / t / 1e9 : 0;
  out.busbw = out.algbw * cli::busbw_factor(s.coll, p);
  out.wrong = s.check ? wrong : -1;
  return out;
}

int usage() {
  std::fprintf(
      stderr,
      "usage: collx-bench [--coll "
      "allreduce|allgather|reducescatter|broadcast|reduce|alltoall|gather|scatter|\n"
      "                           sendrecv]\n"
      "                   [-r ROOT]\n"
      "                   [--algo NAME|auto]\n"
      "                   [--transport local|cuda|shm,tcp,auto,mpi,cuda_ipc,cuda_hier] [--np N] [--gpus "
      "0,0,...] "
      "[--gpu]\n"
      "                   [-b MIN] [-e MAX] [-f FACTOR] [-n ITERS] [-w WARMUP] [-c 0|1]\n"
      "                   [-o sum|prod|min|max|avg] [-d float|double|half|bfloat16|int8|uint8|int32|int64]\n"
      "                   [--vs nccl,mpi,gloo] [--json FILE] [--csv FILE]\n");
  return 2;
}

// One implementation measured at every size: collx over a transport, or a baseline.
// run() is collective (every rank calls it) and returns the out-of-place and in-place
// rows, or nothing with `why` set.
struct contender {
  std::string impl;       // "collx", "mpi", "gloo"
  std::string transport;  // collx's transport; the baseline's own otherwise
  std::function<std::optional<std::pair<row, row>>(std::size_t bytes, std::string& why)> run;
};

struct result_row {
  std::string impl;
  std::string transport;
  std::string algorithm;
  row r;
};

contender collx_contender(const settings& s, communicator& c, std::string transport) {
  return {"collx", std::move(transport), [&s, &c](std::size_t bytes, std::string&) {
            row ip;
            ip.missing = true;  // send_recv has no in-place form
            if (s.coll != collective::send_recv) ip = measure(s, c, bytes, true);
            return std::optional(std::pair(measure(s, c, bytes, false), ip));
          }};
}

// A baseline as a contender: the same sizes, inputs and reference as collx. Also collx's
// GPU runners (impl "collx"), which have the baselines' run() and say what algorithm ran.
template <class Baseline>
contender baseline_contender(const settings& s, std::string impl, std::string transport, Baseline& b) {
  return {std::move(impl), std::move(transport),
          [&s, &b](std::size_t bytes, std::string& why) -> std::optional<std::pair<row, row>> {
            const std::size_t es = size_of(s.type);
            const auto up = static_cast<std::size_t>(s.np);
            const std::size_t count = whole_buffer(s.coll) ? bytes / es : bytes / es / up;
            std::pair<row, row> out;
            for (bool ip : {false, true}) {
              row& x = ip ? out.second : out.first;
              if (ip && (s.coll == collective::gather || s.coll == collective::scatter ||
                         s.coll == collective::send_recv)) {
                // MPI's in-place gather and scatter are the root's alone, Gloo has none:
                // not the form collx and NCCL mean. collx's send_recv has no in-place form.
                x.missing = true;
                continue;
              }
              const bench::baseline_case bc = case_of(s, count, ip);
              const auto res = b.run(bc, why, bench::reference_data(bc, s.np));
              if (!res) return std::nullopt;
              x.bytes = whole_buffer(s.coll) ? count * es : count * es * up;
              x.count = whole_buffer(s.coll) ? count : count * up;
              x.in_place = ip;
              x.time_us = res->time_us;
              const double t = res->time_us * 1e-6;
              x.algbw = t > 0 ? static_cast<double>(x.bytes) / t / 1e9 : 0;
              x.busbw = x.algbw * cli::busbw_factor(s.coll, s.np);
              x.wrong = res->wrong;
              x.peer_algo = res->algorithm;
              if (auto a = parse_algorithm(res->algorithm)) x.algo = *a;
            }
            return out;
          }};
}

void print_header(const settings& s, const std::string& where, const std::vector<std::string>& notes = {}) {
  std::printf("# collx-bench %s: %s, algorithm %s, %d ranks (%s)\n", version_string,
              std::string(to_string(s.coll)).c_str(), std::string(to_string(s.algo)).c_str(), s.np,
              where.c_str());
  std::printf("#  nIters %d  warmup %d  check %d  type %s  redop %s\n", s.iters, s.warmup, s.check ? 1 : 0,
              dtype_name(s.type), std::string(to_string(s.op)).c_str());
  for (const auto& n : notes) std::printf("# %s\n", n.c_str());
  std::printf("#\n");
  std::printf("# %62s %34s\n", "out-of-place", "in-place");
  std::printf("# %10s %12s %8s %6s %6s %9s %7s %7s %6s %9s %7s %7s %6s  %-10s %s\n", "size", "count", "type",
              "redop", "root", "time", "algbw", "busbw", "#wrong", "time", "algbw", "busbw", "#wrong", "impl",
              "collx/peer busbw");
  std::printf("# %10s %12s %8s %6s %6s %9s %7s %7s %6s %9s %7s %7s %6s\n", "(B)", "(elements)", "", "", "",
              "(us)", "(GB/s)", "(GB/s)", "", "(us)", "(GB/s)", "(GB/s)", "");
}

// The sweep: at each size every contender in turn, so that collx and its peers see the
// same machine state. Rank 0 prints and writes the files; returns the exit status.
int sweep(const settings& s, std::vector<contender>& who,
          const std::vector<std::pair<std::string, std::string>>& skipped, bool print, int nodes) {
  std::vector<result_row> rows;
  long long wrong_total = 0;
  double bus_sum = 0;
  int bus_n = 0;
  std::vector<std::string> failed(who.size());  // a baseline that could not run, and why
  const std::size_t unit = size_of(s.type) * (whole_buffer(s.coll) ? 1 : static_cast<std::size_t>(s.np));
  // One untimed pass at the first size: the first row would otherwise carry what the
  // start of a job costs (other ranks still starting, pages, caches, a sleeping peer).
  for (std::size_t k = 0; k < who.size(); ++k) {
    std::string ignored;
    (void)who[k].run(static_cast<std::size_t>(s.min_bytes) / unit * unit, ignored);
  }
  for (double b = s.min_bytes; b <= s.max_bytes * 1.000001; b *= s.factor) {
    const auto bytes = static_cast<std::size_t>(b) / unit * unit;
    std::vector<std::optional<std::pair<row, row>>> got(who.size());
    for (std::size_t k = 0; k < who.size(); ++k) {
      if (!failed[k].empty()) continue;
      got[k] = who[k].run(bytes, failed[k]);
      if (!got[k] && failed[k].empty()) failed[k] = "failed";
    }
    for (std::size_t k = 0; k < who.size(); ++k) {
      if (!got[k]) continue;
      const auto& [oop, ip] = *got[k];
      const std::string label = who[k].impl == "collx" || who[k].impl == "nccl"
                                    ? who[k].impl + "/" + who[k].transport
                                    : who[k].impl;
      std::string ratio;
      if (who[k].impl != "collx") {
        for (std::size_t j = 0; j < who.size(); ++j) {
          if (who[j].impl != "collx" || !got[j] || oop.busbw <= 0) continue;
          char buf[64];
          std::snprintf(buf, sizeof buf, "%s%s %.2fx", ratio.empty() ? "" : "  ", who[j].transport.c_str(),
                        got[j]->first.busbw / oop.busbw);
          ratio += buf;
        }
      }
      if (print) {
        char in_place[64];
        if (ip.missing) {
          std::snprintf(in_place, sizeof in_place, "%9s %7s %7s %6s", "n/a", "", "", "");
        } else {
          std::snprintf(in_place, sizeof in_place, "%9.2f %7.2f %7.2f %6lld", ip.time_us, ip.algbw, ip.busbw,
                        ip.wrong);
        }
        std::printf("  %10zu %12zu %8s %6s %6d %9.2f %7.2f %7.2f %6lld %s  %-10s %s\n", oop.bytes, oop.count,
                    dtype_name(s.type), std::string(to_string(s.op)).c_str(), rooted(s.coll) ? s.root : -1,
                    oop.time_us, oop.algbw, oop.busbw, oop.wrong, in_place, label.c_str(), ratio.c_str());
      }
      for (const row& x : {oop, ip}) {
        if (x.missing) continue;
        const std::string algo = who[k].impl == "collx" ? std::string(to_string(x.algo)) : x.peer_algo;
        rows.push_back({who[k].impl, who[k].transport, algo, x});
        wrong_total += std::max(0LL, x.wrong);
        if (who[k].impl == "collx") {
          bus_sum += x.busbw;
          ++bus_n;
        }
      }
    }
    if (print) {
      std::fflush(stdout);
      std::fprintf(stderr, "collx-bench: %zu bytes done\n", bytes);
    }
  }
  if (!print) return wrong_total == 0 ? 0 : 1;
  for (const auto& [name, why] : skipped)
    std::printf("# baseline %-5s: skipped (%s)\n", name.c_str(), why.c_str());
  for (std::size_t k = 0; k < who.size(); ++k) {
    if (!failed[k].empty())
      std::printf("# baseline %-5s: skipped (%s)\n", who[k].impl.c_str(), failed[k].c_str());
  }
  std::printf("# Out of bounds values : %lld %s\n", wrong_total, wrong_total == 0 ? "OK" : "FAILED");
  std::printf("# Avg bus bandwidth    : %g\n#\n", bus_n ? bus_sum / bus_n : 0.0);

  if (!s.json.empty()) {
    std::ofstream f(s.json);
    f << "[\n";
    for (std::size_t k = 0; k < rows.size(); ++k) {
      const auto& [impl, transport, algo, x] = rows[k];
      f << "  {\"impl\": \"" << impl << "\", \"collective\": \"" << to_string(s.coll)
        << "\", \"algorithm\": \"" << algo << "\", \"transport\": \"" << transport
        << "\", \"ranks\": " << s.np << ", \"nodes\": " << nodes << ", \"bytes\": " << x.bytes
        << ", \"count\": " << x.count << ", \"dtype\": \"" << dtype_name(s.type) << "\", \"op\": \""
        << to_string(s.op) << "\", \"in_place\": " << (x.in_place ? "true" : "false")
        << ", \"time_us\": " << x.time_us << ", \"algbw_gbps\": " << x.algbw
        << ", \"busbw_gbps\": " << x.busbw << ", \"wrong\": " << x.wrong << "}"
        << (k + 1 < rows.size() ? ",\n" : "\n");
    }
    f << "]\n";
  }
  if (!s.csv.empty()) {
    std::ofstream f(s.csv);
    f << "impl,collective,algorithm,transport,ranks,nodes,bytes,count,dtype,op,in_place,time_us,algbw_gbps,"
         "busbw_gbps,wrong\n";
    for (const auto& [impl, transport, algo, x] : rows) {
      f << impl << "," << to_string(s.coll) << "," << algo << "," << transport << "," << s.np << "," << nodes
        << "," << x.bytes << "," << x.count << "," << dtype_name(s.type) << "," << to_string(s.op) << ","
        << (x.in_place ? 1 : 0) << "," << x.time_us << "," << x.algbw << "," << x.busbw << "," << x.wrong
        << "\n";
    }
  }
  return wrong_total == 0 ? 0 : 1;
}

// Why --vs nccl cannot run where it is not run at all: NCCL runs on GPU buffers.
const char* nccl_why(const settings& s) {
#if COLLX_BENCH_HAVE_CUDA
  if (s.transport == "local") return "runs on GPU buffers: --transport tcp --gpu --vs nccl";
  return "runs on GPU buffers: add --gpu";
#else
  (void)s;
  return "this build has no CUDA (CMake found no nvcc): NCCL runs on GPU buffers, with --gpu";
#endif
}

#if COLLX_BENCH_HAVE_CUDA
// The barrier and reductions of a host communicator, for contenders that time and count
// through the harness's communicator rather than their own library.
bench::detail::group_ops host_ops(communicator& c) {
  bench::detail::group_ops g;
  g.barrier = [&c] { barrier(c); };
  g.max = [&c](double v) {
    c.all_reduce(std::span(&v, 1), reduce_op::max);
    return v;
  };
  g.sum = [&c](long long v) {
    std::int64_t w = v;
    c.all_reduce(std::span(&w, 1), reduce_op::sum);
    return static_cast<long long>(w);
  };
  return g;
}

// The largest buffer of the sweep: the whole buffer at -e, in place or not.
std::size_t max_buffer_bytes(const settings& s) {
  return static_cast<std::size_t>(s.max_bytes * 1.000001) + 64;
}
#endif

// --transport local: the ranks are threads of this process; there are no peers to
// compare with, since MPI and Gloo need processes.
int run_threads(settings s) {
  local_world world(s.np);
  std::vector<std::pair<std::string, std::string>> skipped;
  for (const auto& peer : s.vs) {
    skipped.emplace_back(
        peer, peer == "nccl" ? nccl_why(s)
              : peer == "mpi" || peer == "gloo"
                  ? "runs beside collx's process transports: --transport shm,tcp (under mpirun for mpi)"
                  : "unknown baseline");
  }
  std::vector<int> status(static_cast<std::size_t>(s.np));
  std::vector<std::thread> threads;
  for (int r = 0; r < s.np; ++r) {
    threads.emplace_back([&, r] {
      communicator c(world.transport(r));
      std::vector<contender> who{collx_contender(s, c, "local")};
      if (r == 0) print_header(s, "threads of one process, 1 node");
      status[static_cast<std::size_t>(r)] = sweep(s, who, skipped, r == 0, 1);
    });
  }
  for (auto& t : threads) t.join();
  return *std::max_element(status.begin(), status.end());
}

// Rank 0's line for a GPU mode that cannot run here; the caller exits 77 (ctest: skipped).
int gpu_skip(const std::string& mode, const std::string& why, bool print) {
  if (print) {
    std::printf("collx-bench: %s: skipped: %s\n", mode.c_str(), why.c_str());
    std::fflush(stdout);
  }
  return 77;
}

#if COLLX_BENCH_HAVE_CUDA
// The threads of one process meeting at a host barrier: run_cuda's barrier and reductions.
// A thread that fails drops out, so that the others never wait for it.
class thread_sync {
 public:
  explicit thread_sync(int p) : b_(p), d_(static_cast<std::size_t>(p)), l_(static_cast<std::size_t>(p)) {}
  bench::detail::group_ops ops(int r) {
    const auto ur = static_cast<std::size_t>(r);
    bench::detail::group_ops g;
    g.barrier = [this] { b_.arrive_and_wait(); };
    g.max = [this, ur](double v) {
      d_[ur] = v;
      b_.arrive_and_wait();
      const double m = *std::max_element(d_.begin(), d_.end());
      b_.arrive_and_wait();  // no one writes again before every rank has read
      return m;
    };
    g.sum = [this, ur](long long v) {
      l_[ur] = v;
      b_.arrive_and_wait();
      long long t = 0;
      for (long long x : l_) t += x;
      b_.arrive_and_wait();
      return t;
    };
    return g;
  }
  void drop() { b_.arrive_and_drop(); }

 private:
  std::barrier<> b_;
  std::vector<double> d_;
  std::vector<long long> l_;
};
#endif

// --transport cuda: the ranks are threads of this process, each on its GPU (--gpus, or
// GPU 0 for all), running collx::cuda::group's collectives on device buffers.
int run_cuda(settings s) {
#if COLLX_BENCH_HAVE_CUDA
  if (const std::string why = bench::gpu::no_device(); !why.empty())
    return gpu_skip("--transport cuda", why, true);
  std::vector<int> devices = s.gpus.empty() ? std::vector<int>(static_cast<std::size_t>(s.np), 0) : s.gpus;
  s.np = static_cast<int>(devices.size());
  bool shared = false;
  std::string list;
  for (std::size_t i = 0; i < devices.size(); ++i) {
    list += (i == 0 ? "" : ",") + std::to_string(devices[i]);
    for (std::size_t j = 0; j < i; ++j) shared = shared || devices[i] == devices[j];
  }
  std::vector<std::pair<std::string, std::string>> skipped;
  for (const auto& peer : s.vs) {
    // NCCL refuses two ranks of one process on one GPU (ncclInvalidUsage) unless
    // NCCL_MULTI_RANK_GPU_ENABLE=1 on NCCL >= 2.30; one process with a GPU per rank is not
    // wired up here either: NCCL runs beside the process transports.
    skipped.emplace_back(
        peer, peer == "nccl"
                  ? (shared ? "NCCL refuses several ranks of one process on one GPU (unless "
                              "NCCL_MULTI_RANK_GPU_ENABLE=1, NCCL >= 2.30); run it beside collx over "
                              "processes: --transport tcp --gpu --vs nccl"
                            : "not run with ranks as threads; run it beside collx over processes: "
                              "--transport tcp --gpu --vs nccl")
              : peer == "mpi" || peer == "gloo"
                  ? "runs beside collx's process transports: --transport shm,tcp (under mpirun for mpi)"
                  : "unknown baseline");
  }
  const auto group = bench::gpu::make_thread_group(devices);
  thread_sync sync(s.np);
  std::vector<int> status(static_cast<std::size_t>(s.np));
  std::vector<std::thread> threads;
  const std::string where = "threads of one process on GPU " + list + ", 1 node";
  for (int r = 0; r < s.np; ++r) {
    threads.emplace_back([&, r] {
      try {
        auto runner = group->rank(r, max_buffer_bytes(s), sync.ops(r));
        sync.ops(r).barrier();  // every rank's buffers made before the first call
        std::vector<contender> who{baseline_contender(s, "collx", "cuda", *runner)};
        if (r == 0) {
          print_header(s, where,
                       {"collx/cuda: collx::cuda::group on device buffers, each rank its own stream; "
                        "time by the host clock to the synchronize after the last call"});
        }
        status[static_cast<std::size_t>(r)] = sweep(s, who, skipped, r == 0, 1);
        sync.ops(r).barrier();  // no rank's buffers go while another's calls may run
      } catch (const std::exception& e) {
        std::fprintf(stderr, "collx-bench: rank %d: %s\n", r, e.what());
        status[static_cast<std::size_t>(r)] = 1;
        group->abort();
        sync.drop();
      }
    });
  }
  for (auto& t : threads) t.join();
  return *std::max_element(status.begin(), status.end());
#else
  (void)s;
  return gpu_skip("--transport cuda", "this build has no CUDA (CMake found no nvcc)", true);
#endif
}

#if COLLX_BENCH_HAVE_CUDA
// A host communicator for the harness's barrier and sums: the first one made, or a shm
// one made for it (kept last in `comms`, which never reallocates).
communicator& ops_comm(std::vector<communicator>& comms, const std::shared_ptr<collx::store>& st,
                       const launch_info& li, const communicator_config& cfg) {
  if (comms.empty()) comms.push_back(make_communicator(st, li, "shm", cfg, "collx-bench/ops"));
  return comms.front();
}
#endif

// Started by a launcher (collx-run, mpirun, torchrun): this process is one rank.
int run_process(settings s, const launch_info& li, const std::vector<std::string>& transports) {
  s.np = li.size;
  // --gpu: every rank finds no device alike and exits 77 before meeting the others.
  int device = 0;
  if (s.gpu) {
    const std::string mode = "--transport " + s.transport + " --gpu";
#if COLLX_BENCH_HAVE_CUDA
    if (const std::string why = bench::gpu::no_device(); !why.empty())
      return gpu_skip(mode, why, li.rank == 0);
    device = (li.local_rank >= 0 ? li.local_rank : 0) % bench::gpu::device_count();
#else
    return gpu_skip(mode, "this build has no CUDA (CMake found no nvcc)", li.rank == 0);
#endif
  }
  const bool want_nccl = s.gpu && std::find(s.vs.begin(), s.vs.end(), "nccl") != s.vs.end();
  std::string nccl_label = "auto";  // NCCL's own choice of transport
  std::vector<std::string> notes;
  if (want_nccl) {
    // Ranks of one host that share a GPU: NCCL refuses them ("Duplicate GPU detected")
    // unless each looks like a host of its own, which sends NCCL over its network path;
    // on loopback, which NCCL skips unless told. What the user set stays.
    if (li.local_size == li.size) {
      const std::string host_id = "collx-bench-" + std::to_string(li.rank);
      ::setenv("NCCL_HOSTID", host_id.c_str(), 0);
      ::setenv("NCCL_NET", "Socket", 0);
      ::setenv("NCCL_SOCKET_IFNAME", "lo", 0);
    }
    const std::string net = detail::env_str("NCCL_NET");
    const std::string ifname = detail::env_str("NCCL_SOCKET_IFNAME");
    if ((net == "Socket" || net == "socket") && ifname == "lo") {
      nccl_label = "socket(lo)";
      notes.push_back(
          "nccl: NCCL_NET=Socket NCCL_SOCKET_IFNAME=lo NCCL_HOSTID=collx-bench-<rank>: NCCL and collx here "
          "both carry GPU buffers over loopback sockets (collx: tcp with staged GPU buffers)");
    }
  }
  std::vector<std::pair<std::string, std::string>> skipped;
  std::unique_ptr<bench::mpi_baseline> mpi;
  std::unique_ptr<bench::gloo_baseline> gloo;
  std::vector<contender> who;
  std::vector<communicator> comms;
  comms.reserve(transports.size() + 1);  // contenders keep references: never reallocate
  const bool want_mpi = std::find(transports.begin(), transports.end(), "mpi") != transports.end() ||
                        std::find(s.vs.begin(), s.vs.end(), "mpi") != s.vs.end();
#if COLLX_BENCH_HAVE_MPI
  // MPI initialized for collx's MPI transport (threads serialized), then shared by the
  // baseline; finalized when the process ends.
  static std::optional<mpi_session> session;
  if (li.launcher == "mpirun") session.emplace();
#endif
  if (want_mpi) mpi = std::make_unique<bench::mpi_baseline>();
  const communicator_config cfg;
  std::shared_ptr<collx::store> st;
#if COLLX_BENCH_HAVE_CUDA
  // Destroyed before the communicators they run over.
  std::vector<std::unique_ptr<bench::gpu::rank_runner>> runners;
  std::unique_ptr<bench::gpu::rank_runner> nccl;
#endif
  for (const auto& t : transports) {
#if COLLX_BENCH_HAVE_CUDA
    if (t == "cuda_ipc") {
      // Processes of one host over CUDA IPC; the harness's barrier and sums ride on a
      // host communicator, the first one asked for, or a shm one of its own.
      if (!st) st = store_from(li, cfg.timeout);
      runners.push_back(bench::gpu::make_ipc(*st, li.rank, li.size, device, max_buffer_bytes(s),
                                             host_ops(ops_comm(comms, st, li, cfg))));
      who.push_back(baseline_contender(s, "collx", "cuda_ipc", *runners.back()));
      continue;
    }
    if (t == "cuda_hier") {
      // Its levels are communicators of its own; the harness's barrier and sums as above.
      if (!st) st = store_from(li, cfg.timeout);
      runners.push_back(
          bench::gpu::make_hier(st, li, device, max_buffer_bytes(s), host_ops(ops_comm(comms, st, li, cfg))));
      who.push_back(baseline_contender(s, "collx", "cuda_hier", *runners.back()));
      continue;
    }
#endif
    if (t == "mpi") {
#if COLLX_BENCH_HAVE_MPI
      if (!mpi->why_not().empty())
        throw error(errc::unsupported, "collx-bench", li.rank, error::no_rank,
                    "--transport mpi: " + mpi->why_not());
      comms.emplace_back(mpi_transport(MPI_COMM_WORLD), cfg);
#else
      throw error(errc::unsupported, "collx-bench", li.rank, error::no_rank,
                  "--transport mpi: built without MPI");
#endif
    } else {
      if (!st) st = store_from(li, cfg.timeout);
      comms.push_back(make_communicator(st, li, t, cfg, "collx-bench/" + t));
    }
#if COLLX_BENCH_HAVE_CUDA
    if (s.gpu) {
      runners.push_back(
          bench::gpu::make_staged(comms.back(), device, max_buffer_bytes(s), host_ops(comms.back())));
      who.push_back(baseline_contender(s, "collx", t + "+gpu", *runners.back()));
      continue;
    }
#endif
    who.push_back(collx_contender(s, comms.back(), t));
  }
  std::string nccl_skipped;
#if COLLX_BENCH_HAVE_CUDA
  if (want_nccl) {
    // NCCL's unique id goes from rank 0 through the store, before the store is retired.
    if (!st) st = store_from(li, cfg.timeout);
    communicator& host = comms.front();
    auto agree_all = [&host](bool ok) {
      std::int32_t x = ok ? 1 : 0;
      host.all_reduce(std::span(&x, 1), reduce_op::min);
      return x == 1;
    };
    auto share_id = [&](const std::string& mine) {
      const std::string key = "collx-bench/nccl/id";
      if (li.rank == 0) {
        st->set(key, mine);
        return mine;
      }
      return st->get(key, cfg.timeout);
    };
    nccl = bench::gpu::make_nccl(li.rank, li.size, device, max_buffer_bytes(s), host_ops(host), agree_all,
                                 share_id, nccl_skipped);
    if (nccl) {
      std::string version;
      bench::gpu::nccl_loadable(version);
      notes.insert(notes.begin(), "nccl: NCCL " + version + " (libnccl.so.2) on the same device buffers");
    }
  }
#endif
  if (s.gpu) {
    notes.insert(notes.begin(),
                 "collx/<transport>+gpu: collx::cuda::staged on device buffers (rank 0 on GPU " +
                     std::to_string(device) +
                     "); time by the host clock to the synchronize after the last call");
  }
  if (st) detail::retire_store(*st, li, cfg.timeout);
  for (const auto& peer : s.vs) {
    std::string why;
    if (peer == "mpi") {
      if (mpi->why_not().empty()) {
        who.push_back(baseline_contender(s, "mpi", "mpi", *mpi));
      } else {
        skipped.emplace_back(peer, mpi->why_not());
      }
    } else if (peer == "gloo") {
      gloo = bench::gloo_baseline::from_environment(why);
      if (gloo) {
        who.push_back(baseline_contender(s, "gloo", "tcp", *gloo));
      } else {
        skipped.emplace_back(peer, why);
      }
    } else if (peer == "nccl" && want_nccl) {
#if COLLX_BENCH_HAVE_CUDA
      if (nccl) {
        who.push_back(baseline_contender(s, "nccl", nccl_label, *nccl));
      } else {
        skipped.emplace_back(peer, nccl_skipped);
      }
#endif
    } else {
      skipped.emplace_back(peer, peer == "nccl" ? nccl_why(s) : "unknown baseline");
    }
  }
  if (li.rank == 0) {
    print_header(
        s, li.launcher == "mpirun" ? "processes started by mpirun" : "processes started by " + li.launcher,
        notes);
  }
  return sweep(s, who, skipped, li.rank == 0, 1);
}

// No launcher: start --np ranks of this very program, as collx-run would, and wait.
int spawn_ranks(const settings& s, char** argv) {
  const std::string port = [] {
    detail::fd_t fd = detail::listen_on("127.0.0.1", "0");
    return detail::split_endpoint(detail::local_endpoint(fd.get())).second;
  }();
  char job[40];
  std::snprintf(job, sizeof job, "bench-%d-%08x", static_cast<int>(::getpid()), std::random_device{}());
  std::vector<pid_t> kids;
  for (int r = 0; r < s.np; ++r) {
    const pid_t pid = ::fork();
    if (pid < 0) throw error(errc::transport, "collx-bench", error::no_rank, error::no_rank, "fork failed");
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      const std::string rank = std::to_string(r), size = std::to_string(s.np);
      ::setenv("RANK", rank.c_str(), 1);
      ::setenv("LOCAL_RANK", rank.c_str(), 1);
      ::setenv("WORLD_SIZE", size.c_str(), 1);
      ::setenv("LOCAL_WORLD_SIZE", size.c_str(), 1);
      ::setenv("MASTER_ADDR", "127.0.0.1", 1);
      ::setenv("MASTER_PORT", port.c_str(), 1);
      ::setenv("COLLX_JOB_ID", job, 1);
      ::execv("/proc/self/exe", argv);
      std::perror("collx-bench: exec");
      ::_exit(127);
    }
    kids.push_back(pid);
  }
  int worst = 0;
  for (std::size_t left = kids.size(); left > 0; --left) {
    int st = 0;
    const pid_t pid = ::wait(&st);
    if (pid < 0) break;
    const int code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    if (code != 0 && worst == 0) {
      worst = code;
      // 77, skipped (no GPU for --gpu): every rank finds that alone and exits; rank 0 says why.
      if (code == 77) continue;
      for (pid_t k : kids) {
        if (k != pid) ::kill(k, SIGTERM);
      }
    }
  }
  return worst;
}

}  // namespace

int main(int argc, char** argv) {
  // --transport cuda: ranks share a GPU, each stream needs a hardware queue of its own
  // (collx/cuda/group.cuh); read when CUDA starts, so before anything else.
  ::setenv("CUDA_DEVICE_MAX_CONNECTIONS", "32", 0);
  settings s;
  bool np_given = false;
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    if (a == "--plant-error") {
      s.plant_error = true;
      continue;
    }
    if (a == "--gpu") {
      s.gpu = true;
      continue;
    }
    if (i + 1 >= argc) return usage();
    const std::string_view v = argv[++i];
    bool ok = true;
    if (a == "--coll") {
      auto c = cli::parse_collective(v);
      ok = c.has_value();
      if (ok) s.coll = *c;
    } else if (a == "--algo") {
      auto x = parse_algorithm(v);
      ok = x.has_value();
      if (ok) s.algo = *x;
    } else if (a == "--transport") {
      s.transport = std::string(v);
    } else if (a == "--np") {
      s.np = std::atoi(std::string(v).c_str());
      ok = s.np >= 1 && s.np <= 1024;
      np_given = true;
    } else if (a == "--gpus") {
      s.gpus.clear();
      for (const auto& d : split(v)) {
        char* end = nullptr;
        const long n = std::strtol(d.c_str(), &end, 10);
        ok = ok && *end == '\0' && n >= 0 && n < 1024;
        s.gpus.push_back(static_cast<int>(n));
      }
      ok = ok && !s.gpus.empty() && s.gpus.size() <= 1024;
    } else if (a == "-b" || a == "-e") {
      auto b = cli::parse_bytes(v);
      ok = b.has_value() && *b >= 1;
      if (ok) (a == "-b" ? s.min_bytes : s.max_bytes) = *b;
    } else if (a == "-f") {
      s.factor = std::atof(std::string(v).c_str());
      ok = s.factor > 1;
    } else if (a == "-n" || a == "-w") {
      const int k = std::atoi(std::string(v).c_str());
      ok = k >= 0 && (a == "-w" || k >= 1);
      (a == "-n" ? s.iters : s.warmup) = k;
    } else if (a == "-c") {
      s.check = v != "0";
    } else if (a == "-o") {
      ok = parse_op(v, s.op);
    } else if (a == "-r" || a == "--root") {
      s.root = std::atoi(std::string(v).c_str());
      ok = s.root >= 0;
    } else if (a == "-d") {
      ok = parse_dtype(v, s.type);
    } else if (a == "--vs") {
      s.vs = split(v);
    } else if (a == "--json") {
      s.json = std::string(v);
    } else if (a == "--csv") {
      s.csv = std::string(v);
    } else {
      ok = false;
    }
    if (!ok) {
      std::fprintf(stderr, "collx-bench: bad value for %s: %s\n", argv[i - 1], argv[i]);
      return usage();
    }
  }

  if ((s.type == dtype::f16 || s.type == dtype::bf16) && s.np > 256 && s.check) {
    std::fprintf(stderr, "collx-bench: past 256 ranks a 16-bit float sum is no longer exact: use -c 0\n");
    return 2;
  }
  if (!supports(s.type, s.op)) {
    std::fprintf(stderr, "collx-bench: %s needs a floating-point type\n",
                 std::string(to_string(s.op)).c_str());
    return 2;
  }
  if (s.coll == collective::barrier) {
    std::fprintf(stderr, "collx-bench: --coll barrier is not measured here yet (it moves no bytes)\n");
    return 2;
  }
  if (rooted(s.coll) && s.root >= s.np) {
    std::fprintf(stderr, "collx-bench: root %d is not one of %d ranks\n", s.root, s.np);
    return 2;
  }
  if (!implements(s.algo, s.coll)) {
    std::fprintf(stderr, "collx-bench: %s does not implement %s\n", std::string(to_string(s.algo)).c_str(),
                 std::string(to_string(s.coll)).c_str());
    return 2;
  }
  const auto transports = split(s.transport);
  bool local = false;
  bool cuda = false;
  for (const auto& t : transports) {
    if (t != "local" && t != "cuda" && t != "shm" && t != "tcp" && t != "auto" && t != "mpi" &&
        t != "cuda_ipc" && t != "cuda_hier") {
      std::fprintf(
          stderr,
          "collx-bench: unknown transport '%s' (local, cuda, shm, tcp, auto, mpi, cuda_ipc, cuda_hier)\n",
          t.c_str());
      return 2;
    }
    local = local || t == "local";
    cuda = cuda || t == "cuda";
    if ((t == "cuda_ipc" || t == "cuda_hier") && !s.gpu) {
      std::fprintf(stderr, "collx-bench: --transport %s carries GPU buffers: add --gpu\n", t.c_str());
      return 2;
    }
  }
  if ((local || cuda) && transports.size() > 1) {
    std::fprintf(stderr, "collx-bench: the %s transport (ranks as threads) runs alone\n",
                 local ? "local" : "cuda");
    return 2;
  }
  if (s.gpu && (local || cuda)) {
    std::fprintf(
        stderr,
        "collx-bench: --gpu is for the process transports (shm, tcp, mpi); ranks as threads on GPUs: "
        "--transport cuda\n");
    return 2;
  }
  if (!s.gpus.empty()) {
    if (!cuda) {
      std::fprintf(stderr, "collx-bench: --gpus lists --transport cuda's devices, one per rank\n");
      return 2;
    }
    if (np_given && static_cast<std::size_t>(s.np) != s.gpus.size()) {
      std::fprintf(stderr, "collx-bench: --np %d but --gpus lists %zu devices\n", s.np, s.gpus.size());
      return 2;
    }
    s.np = static_cast<int>(s.gpus.size());
  }
  try {
    if (local) return run_threads(s);
    if (cuda) return run_cuda(s);
    const launch_info li = launch_from_env();
    if (li.launcher == "none") return spawn_ranks(s, argv);
    return run_process(s, li, transports);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "collx-bench: %s\n", e.what());
    return 1;
  }
}
