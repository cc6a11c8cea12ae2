// One rank of a multi-process test, started by collx-run (or mpirun): it builds its
// communicator from the environment and runs one scenario.
//
//   mp_worker collectives   every collective, every algorithm that implements it, odd
//                           and edge counts, in place and out of place, several types,
//                           every root of the rooted ones, all_to_all_v, send/recv and
//                           send_recv, each result checked against a serial reference
//                           in double; barriers between
//   mp_worker dtypes        every element type and every reduction it supports (prod and
//                           min too), all_reduce, reduce_scatter and reduce, each
//                           algorithm, counts 0, 1, 7, 1001 and a segment and 3, against exact serial
//                           references (test::typed_reduce)
//   mp_worker kill VICTIM   a few good calls, then VICTIM SIGKILLs itself; every other
//                           rank must get a collx::error (not hang) and says so
//   mp_worker mismatch      rank 0 calls a different count: every rank gets an error
//   mp_worker mismatch-root the ranks broadcast from different roots: every rank gets
//                           the mismatch error
//   mp_worker mismatch-split in an all_to_all_v, ranks 0 and 1 disagree on their block:
//                           every rank gets the mismatch error
//   mp_worker mismatch-send 2 ranks: rank 0 sends 6 elements, rank 1 receives 5: both
//                           get the mismatch error, the sender's send included
//   mp_worker kill-broadcast VICTIM  as kill, the calls broadcasts
//   mp_worker kill-alltoall VICTIM   as kill, the calls all-to-alls
//   mp_worker fault VICTIM  mixed collectives while COLLX_FAULT strikes rank VICTIM (or
//                           nobody: delays and slow ranks must leave every result right);
//                           each rank that fails says when and whom it blamed, checks
//                           that the failed communicator refuses the next call and that
//                           its file descriptors are back, then (when the victim lives)
//                           builds a new communicator and checks its results
//   mp_worker abort VICTIM  VICTIM calls abort() while the others are blocked in a call
//   mp_worker late LATE     rank LATE starts its first call after the others' timeout:
//                           they fail it, and LATE must fail it too, though their
//                           messages for it reached LATE before they gave up
//   mp_worker linger        rank 1 never calls: rank 0's error must reach its caller,
//                           its communicator and store destroyed, soon after its timeout
//   mp_worker models        each rank with its own cost model: the automatic choice agrees
//   mp_worker straggler VICTIM  VICTIM comes 5 ms late to each of 200 all-reduces
//   mp_worker soak CALLS    CALLS random collectives (sizes, algorithms, types, in place
//                           or not) over a shm and a tcp communicator at random, each
//                           result checked
// soak and fault draw from COLLX_TEST_SEED (default 1 and 7), and print the seed.
//
// COLLX_TEST_NODES (a comma list, each rank's node) names this rank's node through
// COLLX_NODE_ID, so that one host runs a job of several nodes: shared memory inside
// each, tcp (or MPI) across.
//
// Exit status 0 when the scenario held on this rank. Output lines a test script checks:
// "OK <n> cases", "DETECTED <kind> after <ms> ms: <message>", and for faults "BLAMES
// <0|1>", "REFUSED", "FDS <before> <after>", "REBUILT OK <n> cases".

#include <collx/launch/init.hpp>

#include "../reference.hpp"
#include "../slack.hpp"
#if COLLX_HAVE_MPI
#include <collx/launch/init_mpi.hpp>
#endif

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <numeric>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

namespace {

using namespace collx;
using clk = std::chrono::steady_clock;

using test::input;
using test::ref_reduce;

using test::close_enough;
using test::from_d;
using test::to_d;

int failures = 0;
int cases = 0;

template <class T>
void one_case(communicator& comm, collective c, algorithm a, std::size_t n, bool in_place, reduce_op op) {
  const int p = comm.size();
  const int me = comm.rank();
  const auto up = static_cast<std::size_t>(p);
  const auto urank = static_cast<std::size_t>(me);
  options o;
  o.algo = a;
  ++cases;
  std::vector<T> in;
  std::vector<T> out;
  std::size_t first = 0;  // index of this rank's result block, for checking
  std::size_t len = 0;
  auto fill = [&](std::vector<T>& v, std::size_t count, std::size_t at, std::size_t base) {
    for (std::size_t i = 0; i < count; ++i) v[at + i] = from_d<T>(input(me, base + i));
  };
  switch (c) {
    case collective::all_reduce:
      in.resize(n);
      fill(in, n, 0, 0);
      if (in_place) {
        comm.all_reduce(in, op, o);
        out = in;
      } else {
        out.assign(n, from_d<T>(99));
        comm.all_reduce(in, out, op, o);
      }
      len = n;
      break;
    case collective::reduce_scatter:
      in.resize(n * up);
      fill(in, n * up, 0, 0);
      if (in_place) {
        comm.reduce_scatter(in, op, o);
        out = in;
        first = urank * n;
      } else {
        out.assign(n, from_d<T>(99));
        comm.reduce_scatter(in, out, op, o);
      }
      len = n;
      break;
    case collective::all_gather:
      if (in_place) {
        out.assign(n * up, from_d<T>(99));
        fill(out, n, urank * n, 0);
        comm.all_gather(out, o);
      } else {
        in.resize(n);
        fill(in, n, 0, 0);
        out.assign(n * up, from_d<T>(99));
        comm.all_gather(in, out, o);
      }
      len = n * up;
      break;
    default: break;  // the rooted ones: rooted_case
  }
  long long wrong = 0;
  for (std::size_t i = 0; i < len; ++i) {
    double want = 0;
    if (c == collective::all_reduce) want = ref_reduce(op, p, i);
    if (c == collective::reduce_scatter) want = ref_reduce(op, p, urank * n + i);
    if (c == collective::all_gather)
      want = input(static_cast<int>(i / std::max<std::size_t>(n, 1)), i % std::max<std::size_t>(n, 1));
    if (!close_enough(out[first + i], want, op)) ++wrong;
  }
  // In-place reduce-scatter leaves the other blocks as they were.
  if (c == collective::reduce_scatter && in_place) {
    for (std::size_t i = 0; i < n * up; ++i) {
      if (i >= first && i < first + n) continue;
      if (to_d(out[i]) != input(me, i)) ++wrong;
    }
  }
  if (wrong != 0) {
    ++failures;
    std::printf("FAILED %s %s n=%zu %s %s: %lld wrong\n", std::string(to_string(c)).c_str(),
                std::string(to_string(a)).c_str(), n, in_place ? "in-place" : "out-of-place",
                std::string(to_string(op)).c_str(), wrong);
  }
}

// broadcast or reduce from `root`: every rank's result (broadcast), the root's (reduce),
// and, on the other ranks of a reduce, a buffer left as it was.
template <class T>
void rooted_case(communicator& comm, collective c, algorithm a, std::size_t n, bool in_place, reduce_op op,
                 int root) {
  const int me = comm.rank();
  options o;
  o.algo = a;
  if (n == 1001) o.segment_bytes = 40;  // many segments: the pipeline runs
  ++cases;
  std::vector<T> in(n), out(n, from_d<T>(99));
  for (std::size_t i = 0; i < n; ++i) in[i] = from_d<T>(input(me, i));
  if (c == collective::broadcast) {
    if (in_place) {
      comm.broadcast(in, root, o);
    } else {
      comm.broadcast(in, out, root, o);
    }
  } else if (in_place) {
    comm.reduce(in, op, root, o);
  } else {
    comm.reduce(in, out, op, root, o);
  }
  const std::vector<T>& got = in_place ? in : out;
  long long wrong = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const double want = c == collective::broadcast ? input(root, i)
                        : me == root               ? ref_reduce(op, comm.size(), i)
                        : in_place                 ? input(me, i)
                                                   : 99.0;
    if (!close_enough(got[i], want, c == collective::broadcast || me != root ? reduce_op::sum : op)) ++wrong;
  }
  if (wrong != 0) {
    ++failures;
    std::printf("FAILED %s %s root %d n=%zu %s %s: %lld wrong\n", std::string(to_string(c)).c_str(),
                std::string(to_string(a)).c_str(), root, n, in_place ? "in-place" : "out-of-place",
                std::string(to_string(op)).c_str(), wrong);
  }
}

// all_to_all, gather or scatter of blocks of n: element k of rank r's input is input(r, k).
template <class T>
void move_case(communicator& comm, collective c, algorithm a, std::size_t n, bool in_place, int root) {
  const int me = comm.rank();
  const auto up = static_cast<std::size_t>(comm.size());
  ++cases;
  options o;
  o.algo = a;
  std::vector<T> in(c == collective::gather ? n : n * up),
      out(c == collective::scatter ? n : n * up, from_d<T>(99));
  for (std::size_t k = 0; k < in.size(); ++k) in[k] = from_d<T>(input(me, k));
  if (c == collective::all_to_all) {
    in_place ? comm.all_to_all(in, o) : comm.all_to_all(in, out, o);
  } else if (c == collective::gather) {
    comm.gather(in, out, root, o);
  } else {
    comm.scatter(in, out, root, o);
  }
  const std::vector<T>& got = in_place ? in : out;
  long long wrong = 0;
  const std::size_t mine = static_cast<std::size_t>(me) * n;
  for (std::size_t k = 0; k < got.size(); ++k) {
    const int j = n == 0 ? 0 : static_cast<int>(k / n);
    const std::size_t i = n == 0 ? 0 : k % n;
    const double want = c == collective::all_to_all ? input(j, mine + i)
                        : c == collective::scatter  ? input(root, mine + k)
                        : me == root                ? input(j, i)
                                                    : 99.0;
    if (!close_enough(got[k], want, reduce_op::sum)) ++wrong;
  }
  if (wrong != 0) {
    ++failures;
    std::printf("FAILED %s root %d n=%zu %s: %lld wrong\n", std::string(to_string(c)).c_str(), root, n,
                in_place ? "in-place" : "out-of-place", wrong);
  }
}

// The exchanges sized per peer. Element i of what rank `from` sends rank `to`: hashed
// from all three, so a block from the wrong rank or offset cannot compare equal.
double exchanged(int from, int to, std::size_t i) {
  return static_cast<double>(
      test::mix((static_cast<std::uint64_t>(from) << 40) ^ (static_cast<std::uint64_t>(to) << 20) ^ (i + 1)) %
      100);
}
std::size_t split(int from, int to, std::size_t scale) {
  const auto h = test::mix(static_cast<std::uint64_t>(from) * 131 + static_cast<std::uint64_t>(to));
  return h % 3 == 0 ? 0 : scale + h % 5;  // zeros among uneven blocks
}

// all_to_all_v (blocks of about `scale` elements, some empty), then a pipeline of sends
// and receives (rank r receives from r-1 and sends to r+1), then a ring shift with
// send_recv; each result checked.
void exchange_cases(communicator& comm, std::size_t scale) {
  const int me = comm.rank();
  const int p = comm.size();
  ++cases;
  std::vector<std::size_t> sc, rc;
  for (int q = 0; q < p; ++q) {
    sc.push_back(split(me, q, scale));
    rc.push_back(split(q, me, scale));
  }
  std::vector<float> in, out(std::accumulate(rc.begin(), rc.end(), std::size_t{0}), -1.0f);
  for (int q = 0; q < p; ++q) {
    for (std::size_t i = 0; i < sc[static_cast<std::size_t>(q)]; ++i)
      in.push_back(static_cast<float>(exchanged(me, q, i)));
  }
  comm.all_to_all_v(in, sc, out, rc);
  long long wrong = 0;
  std::size_t at = 0;
  for (int j = 0; j < p; ++j) {
    for (std::size_t i = 0; i < rc[static_cast<std::size_t>(j)]; ++i, ++at)
      wrong += out[at] != static_cast<float>(exchanged(j, me, i)) ? 1 : 0;
  }
  std::vector<double> got(scale), mine(scale + 1);
  if (me > 0) {
    comm.recv(got, me - 1, 3);
    for (std::size_t i = 0; i < scale; ++i) wrong += got[i] != exchanged(me - 1, me, i) ? 1 : 0;
  }
  for (std::size_t i = 0; i < scale; ++i) mine[i] = exchanged(me, me + 1, i);
  if (me + 1 < p) comm.send(std::span<const double>(mine.data(), scale), me + 1, 3);
  const int to = (me + 1) % p;
  const int from = (me - 1 + p) % p;
  for (std::size_t i = 0; i < mine.size(); ++i) mine[i] = exchanged(me, to, i);
  got.assign(scale + 1, -1.0);
  comm.send_recv(mine, to, got, from);
  for (std::size_t i = 0; i < got.size(); ++i) wrong += got[i] != exchanged(from, me, i) ? 1 : 0;
  if (wrong != 0) {
    ++failures;
    std::printf("FAILED exchanges scale %zu: %lld wrong\n", scale, wrong);
  }
}

void rooted_collectives(communicator& comm) {
  // Every algorithm of all-to-all, gather and scatter, and the automatic choice.
  auto each = [](collective c, auto&& f) {
    f(algorithm::automatic);
    for (algorithm a : all_algorithms)
      if (implements(a, c)) f(a);
  };
  for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{7}, std::size_t{100003}}) {
    each(collective::all_to_all, [&](algorithm a) {
      for (bool ip : {false, true}) move_case<float>(comm, collective::all_to_all, a, n, ip, 0);
      move_case<double>(comm, collective::all_to_all, a, n, false, 0);
    });
    for (int root = 0; root < comm.size(); ++root) {
      each(collective::gather,
           [&](algorithm a) { move_case<float>(comm, collective::gather, a, n, false, root); });
      each(collective::scatter,
           [&](algorithm a) { move_case<std::int32_t>(comm, collective::scatter, a, n, false, root); });
    }
  }
  for (std::size_t scale : {std::size_t{0}, std::size_t{1}, std::size_t{7}, std::size_t{100003}})
    exchange_cases(comm, scale);
  for (collective c : {collective::broadcast, collective::reduce}) {
    each(c, [&](algorithm a) {
      for (int root = 0; root < comm.size(); ++root) {
        for (std::size_t n :
             {std::size_t{0}, std::size_t{1}, std::size_t{7}, std::size_t{1001}, std::size_t{300007}}) {
          for (bool ip : {false, true}) {
            rooted_case<float>(comm, c, a, n, ip, reduce_op::sum, root);
            if (n <= 1001 && c == collective::reduce) {
              rooted_case<std::int32_t>(comm, c, a, n, ip, reduce_op::max, root);
              rooted_case<double>(comm, c, a, n, ip, reduce_op::avg, root);
            }
          }
        }
        comm.barrier();
      }
    });
  }
}

int collectives(communicator& comm) {
  const std::size_t counts[] = {0, 1, 7, 1001, 300007};
  for (collective c : {collective::all_reduce, collective::reduce_scatter, collective::all_gather}) {
    for (algorithm a : all_algorithms) {
      if (!implements(a, c)) continue;
      for (std::size_t n : counts) {
        for (bool ip : {false, true}) {
          one_case<float>(comm, c, a, n, ip, reduce_op::sum);
          if (n <= 1001 && c != collective::all_gather) {
            one_case<std::int32_t>(comm, c, a, n, ip, reduce_op::max);
            one_case<double>(comm, c, a, n, ip, reduce_op::avg);
          }
        }
      }
    }
  }
  // The automatic choice too, a call past tcp's striping limit (16 MiB), and a bf16 sum.
  one_case<float>(comm, collective::all_reduce, algorithm::automatic, 1 << 20, false, reduce_op::sum);
  one_case<float>(comm, collective::all_reduce, algorithm::ring, (1 << 22) + 3, true, reduce_op::sum);
  one_case<bfloat16>(comm, collective::all_reduce, algorithm::automatic, 4099, true, reduce_op::sum);
  rooted_collectives(comm);
  if (failures != 0) return 1;
  std::printf("OK %d cases\n", cases);
  return 0;
}

// The typed matrix (scenario "dtypes"): all_reduce, reduce_scatter and reduce (to the
// last rank) of T with `op`, on test::typed_input, checked against test::typed_reduce,
// which never calls collx: exact for every type and reduction but avg, whose one
// division rounds to the type.
template <class T>
constexpr bool signed_input = !std::is_integral_v<T> || std::is_signed_v<T>;

template <class T>
void typed_call(communicator& comm, collective c, algorithm a, bool in_place, reduce_op op,
                std::vector<T>& in, std::vector<T>& out) {
  options o;
  o.algo = a;
  const int root = comm.size() - 1;
  if (c == collective::all_reduce) {
    in_place ? comm.all_reduce(in, op, o) : comm.all_reduce(in, out, op, o);
  } else if (c == collective::reduce_scatter) {
    in_place ? comm.reduce_scatter(in, op, o) : comm.reduce_scatter(in, out, op, o);
  } else {
    in_place ? comm.reduce(in, op, root, o) : comm.reduce(in, out, op, root, o);
  }
}

// Elements of the buffers that differ from what the call must leave: the result where
// this rank gets one (element i of the whole input space is typed_reduce(i)), the
// input's own bits everywhere else (an out-of-place input, the other blocks of an
// in-place reduce-scatter, a reduce's buffer off the root), and 99 in an output the
// call does not write.
template <class T>
long long typed_wrong(const communicator& comm, collective c, bool in_place, reduce_op op, std::size_t n,
                      const std::vector<T>& in, const std::vector<T>& out, const std::vector<T>& mine) {
  const int me = comm.rank();
  const int p = comm.size();
  const bool written = c != collective::reduce || me == p - 1;
  const std::size_t block = c == collective::reduce_scatter ? static_cast<std::size_t>(me) * n : 0;
  auto right = [&](T got, std::size_t at) {
    return close_enough(got, test::typed_reduce(op, signed_input<T>, p, at), op);
  };
  long long wrong = 0;
  for (std::size_t i = 0; i < in.size(); ++i) {
    const bool result = in_place && written && i >= block && i < block + n;
    const bool ok = result ? right(in[i], i) : std::memcmp(&in[i], &mine[i], sizeof(T)) == 0;
    wrong += ok ? 0 : 1;
  }
  for (std::size_t i = 0; !in_place && i < n; ++i) {
    const bool ok = written ? right(out[i], block + i) : to_d(out[i]) == 99.0;
    wrong += ok ? 0 : 1;
  }
  return wrong;
}

template <class T>
void typed_case(communicator& comm, collective c, algorithm a, std::size_t n, bool in_place, reduce_op op) {
  ++cases;
  const std::size_t in_n = c == collective::reduce_scatter ? n * static_cast<std::size_t>(comm.size()) : n;
  std::vector<T> in(in_n), out(n, from_d<T>(99));
  for (std::size_t i = 0; i < in_n; ++i)
    in[i] = from_d<T>(static_cast<double>(test::typed_input(op, signed_input<T>, comm.rank(), i)));
  const std::vector<T> mine = in;
  typed_call(comm, c, a, in_place, op, in, out);
  const long long wrong = typed_wrong(comm, c, in_place, op, n, in, out, mine);
  if (wrong != 0) {
    ++failures;
    std::printf("FAILED %s %s %s %s n=%zu %s: %lld wrong\n", std::string(to_string(c)).c_str(),
                std::string(to_string(dtype_v<T>)).c_str(), std::string(to_string(op)).c_str(),
                std::string(to_string(a)).c_str(), n, in_place ? "in-place" : "out-of-place", wrong);
  }
}

// Every element type, every reduction it supports, every algorithm of all_reduce,
// reduce_scatter and reduce (and the automatic choice), counts 0, 1, 7, 1001 and one
// past the default segment (a second segment of 3 elements; out of place only, to keep
// the time down), in place and out of place.
template <class... T>
int typed_matrix(communicator& comm, test::types<T...>) {
  auto one_type = [&](auto tag) {
    using U = decltype(tag);
    std::vector<std::size_t> counts{0, 1, 7, 1001};
    const std::size_t past_segment = test::past_segment<U>();  // two segments, the second of 3
    if (past_segment != 0) counts.push_back(past_segment);
    for (reduce_op op : all_reduce_ops) {
      if (!supports(dtype_v<U>, op)) continue;
      for (collective c : {collective::all_reduce, collective::reduce_scatter, collective::reduce}) {
        std::vector<algorithm> algos{algorithm::automatic};
        for (algorithm a : all_algorithms)
          if (implements(a, c)) algos.push_back(a);
        for (algorithm a : algos)
          for (std::size_t n : counts)
            for (bool ip : {false, true})
              if (!ip || n != past_segment || n == 0) typed_case<U>(comm, c, a, n, ip, op);
      }
    }
  };
  (one_type(T{}), ...);
  if (failures != 0) return 1;
  std::printf("OK %d cases\n", cases);
  return 0;
}

long long ms_since(clk::time_point t0) {
  return static_cast<long long>(
      std::chrono::duration_cast<std::chrono::milliseconds>(clk::now() - t0).count());
}

int report(const error& e, long long ms) {
  std::printf("DETECTED %s after %lld ms: %s\n", e.code().message().c_str(), ms, e.what());
  std::fflush(stdout);
  return 0;
}

// One call of the kill scenarios: an all-reduce, (kill-broadcast) a broadcast from the
// last rank, or (kill-alltoall) an all-to-all.
std::string kill_calls = "kill";
void kill_call(communicator& comm, std::vector<float>& v) {
  if (kill_calls == "kill-broadcast") {
    comm.broadcast(v, comm.size() - 1);
  } else if (kill_calls == "kill-alltoall") {
    const auto up = static_cast<std::size_t>(comm.size());
    comm.all_to_all(std::span<float>(v.data(), v.size() / up * up));
  } else {
    comm.all_reduce(v, reduce_op::sum);
  }
}

// Calls on until the victim's failure reaches this rank.
int kill_or_abort_wait(communicator& comm, std::vector<float>& v) {
  const auto t0 = clk::now();
  try {
    for (int i = 0; i < 1000; ++i) kill_call(comm, v);
  } catch (const error& e) {
    return report(e, ms_since(t0));
  }
  std::printf("NOT DETECTED\n");
  return 1;
}

int kill_scenario(communicator& comm, int victim) {
  // SIGTERM is not ignored: collx-run must give the survivors the moment they need to
  // notice the death by themselves and say so before it stops them.
  std::vector<float> v(1 << 18, 1.0f);
  for (int i = 0; i < 3; ++i) kill_call(comm, v);
  if (comm.rank() == victim) {
    std::fflush(stdout);
    std::raise(SIGKILL);
  }
  return kill_or_abort_wait(comm, v);
}

// A straggler: rank `victim` comes to each of 200 all-reduces 5 ms after the others, as a
// rank with a slow data loader would; the results stay right.
int straggler_scenario(communicator& comm, int victim) {
  std::vector<float> v(1000);
  for (int i = 0; i < 200; ++i) {
    if (comm.rank() == victim) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    std::fill(v.begin(), v.end(), 1.0f);
    comm.all_reduce(v, reduce_op::sum);
    if (v.front() != static_cast<float>(comm.size())) {
      std::printf("ERROR wrong sum %g\n", static_cast<double>(v.front()));
      return 1;
    }
  }
  std::printf("OK 200 cases\n");
  return 0;
}

// mismatch: rank 0 passes another count; mismatch-root: the ranks name different roots;
// mismatch-split: in an all_to_all_v, rank 0 sends rank 1 one element more than rank 1
// expects (the other pairs agree).
int mismatch_scenario(communicator& comm, const std::string& how) {
  std::vector<float> v(comm.rank() == 0 && how == "mismatch" ? 5 : 6, 1.0f);
  const auto t0 = clk::now();
  try {
    if (how == "mismatch-root") {
      comm.broadcast(v, comm.rank() % 2);
    } else if (how == "mismatch-send") {  // 2 ranks: 6 elements sent, 5 expected
      if (comm.rank() == 0) comm.send(v, 1, 9);
      if (comm.rank() == 1) comm.recv(std::span<float>(v.data(), 5), 0, 9);
    } else if (how == "mismatch-split") {
      std::vector<std::size_t> counts(static_cast<std::size_t>(comm.size()), 2);
      std::vector<float> in(2 * counts.size() + (comm.rank() == 0 ? 1 : 0)), out(2 * counts.size());
      std::vector<std::size_t> sc = counts;
      if (comm.rank() == 0) sc[1] = 3;
      comm.all_to_all_v(in, sc, out, counts);
    } else {
      comm.all_reduce(v, reduce_op::sum);
    }
  } catch (const error& e) {
    return report(e, ms_since(t0));
  }
  std::printf("NOT DETECTED\n");
  return 1;
}

// One random collective, the same on every rank (they draw from one seed).
void random_case(communicator& comm, std::mt19937_64& rng) {
  constexpr collective colls[] = {collective::all_reduce, collective::reduce_scatter, collective::all_gather};
  const collective c = colls[rng() % 3];
  std::vector<algorithm> algos{algorithm::automatic};
  for (algorithm a : all_algorithms) {
    if (implements(a, c)) algos.push_back(a);
  }
  const algorithm a = algos[rng() % algos.size()];
  // Sizes spread over decades: mostly small, some past a shm slot and a tcp stripe.
  const int decade = static_cast<int>(rng() % 6);
  std::size_t n = rng() % 10;
  for (int d = 0; d < decade; ++d) n = n * 10 + rng() % 10;
  const bool in_place = rng() % 2 == 0;
  switch (rng() % 4) {
    case 0: one_case<float>(comm, c, a, n, in_place, reduce_op::sum); break;
    case 1: one_case<std::int32_t>(comm, c, a, n, in_place, reduce_op::max); break;
    case 2:
      one_case<double>(comm, c, a, n, in_place,
                       c == collective::all_gather ? reduce_op::sum : reduce_op::avg);
      break;
    default: one_case<bfloat16>(comm, c, a, std::min<std::size_t>(n, 4099), in_place, reduce_op::sum); break;
  }
}

// A communicator of the job over `transport`, met through `st` under `prefix`; "mpi"
// (under mpirun) is met through MPI instead.
communicator make(const std::shared_ptr<store>& st, const launch_info& li, const std::string& transport,
                  const communicator_config& cfg, const std::string& prefix) {
#if COLLX_HAVE_MPI
  if (transport == "mpi") return init_from_mpi(MPI_COMM_WORLD, cfg, "mpi");
#endif
  return make_communicator(st, li, transport, cfg, prefix);
}

int open_fds() {
  int n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) ++n;
  return n;
}

// The random scenarios' seed: COLLX_TEST_SEED, else `fallback`; every rank draws the same
// sequence from it. Printed, so that a failure can be run again as it ran.
std::uint64_t test_seed(std::uint64_t fallback) {
  const char* v = std::getenv("COLLX_TEST_SEED");
  const std::uint64_t seed = v != nullptr && *v != '\0' ? std::strtoull(v, nullptr, 10) : fallback;
  std::printf("SEED %llu (COLLX_TEST_SEED=%llu reruns this sequence)\n",
              static_cast<unsigned long long>(seed), static_cast<unsigned long long>(seed));
  std::fflush(stdout);
  return seed;
}

// Mixed collectives while COLLX_FAULT strikes `victim` (-1: a fault nobody dies of).
int fault_scenario(const communicator_config& cfg, int victim) {
  std::signal(SIGTERM, SIG_IGN);  // a killed victim makes collx-run stop the others
  const launch_info li = launch_from_env();
  std::string transport = detail::env_str("COLLX_TRANSPORT");
  const std::shared_ptr<store> st = store_from(li, cfg.timeout);
  st->barrier("fault/connected", li.size, cfg.timeout);  // every store connection is made
  const int fds_before = open_fds();
  const std::uint64_t seed = test_seed(7);
  std::mt19937_64 rng(seed);
  std::optional<error> failure;
  long long ms = 0;
  {
    communicator comm = make(st, li, transport, cfg, "gen1");
    for (int i = 0; i < 60 && !failure; ++i) {
      const auto t0 = clk::now();
      try {
        random_case(comm, rng);
      } catch (const error& e) {
        failure = e;
        ms = ms_since(t0);
      }
    }
    if (!failure) {
      if (failures != 0) return 1;
      std::printf("OK %d cases\n", cases);
      return 0;
    }
    const error& e = *failure;
    report(e, ms);
    if (li.rank != victim) {
      // Whom it blames: the victim, as the peer it waited for, in the reason a
      // neighbour passed on, or as the rank whose failure the peer's followed ("peer 2
      // failed after rank 1 failed").
      const std::string what = e.what(), v = std::to_string(victim);
      const bool blames = e.peer() == victim || what.find("peer " + v) != std::string::npos ||
                          what.find("after rank " + v + " failed") != std::string::npos;
      std::printf("BLAMES %d\n", blames ? 1 : 0);
    }
    if (li.rank != victim && ms > cfg.timeout.count() + 2000 * test::slack_factor())
      std::printf("LATE: %lld ms against a %lld ms timeout\n", ms,
                  static_cast<long long>(cfg.timeout.count()));
    try {
      std::vector<float> v(3, 1.0f);
      comm.all_reduce(v, reduce_op::sum);
      std::printf("NOT REFUSED: a failed communicator ran another call\n");
    } catch (const error& again) {
      if (again.kind() == errc::aborted)
        std::printf("REFUSED\n");
      else
        std::printf("NOT REFUSED: %s\n", again.what());
    }
  }
  const int fds_after = open_fds();
  std::printf("FDS %d %d\n", fds_before, fds_after);
  std::fflush(stdout);
  // A communicator is rebuilt by making a new one: the victim lives unless it was killed.
  const char* plan = std::getenv("COLLX_FAULT");
  if (plan != nullptr && std::string(plan).starts_with("kill")) return 0;
  // MPI may still read a failed call's send buffer whenever a late peer matches the
  // message (Open MPI cannot cancel a send): only the end of the process is safe.
  if (transport == "mpi") {
    std::printf("NOT REBUILT (mpi)\n");
    return 0;
  }
  ::unsetenv("COLLX_FAULT");
  failures = 0;
  cases = 0;
  communicator again = make(st, li, transport, cfg, "gen2");
  rng.seed(seed + 1);  // the ranks stopped at different points of the first sequence
  for (int i = 0; i < 20; ++i) random_case(again, rng);
  if (failures != 0) return 1;
  std::printf("REBUILT OK %d cases\n", cases);
  return 0;
}

// VICTIM aborts while every other rank is blocked in a call it never joins.
int abort_scenario(communicator& comm, int victim) {
  std::vector<float> v(1 << 16, 1.0f);
  comm.all_reduce(v, reduce_op::sum);
  if (comm.rank() == victim) {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    comm.abort("the victim gave up on purpose");
    std::printf("ABORTED\n");
    std::fflush(stdout);
    // Alive until the others have reported: they must learn of the abort from the abort,
    // not from this process ending.
    std::this_thread::sleep_for(test::with_slack(std::chrono::seconds(3)));
    return 0;
  }
  return kill_or_abort_wait(comm, v);
}

// LATE joins call #0 two timeouts after the others (COLLX_ALGO picks the algorithm).
int late_scenario(communicator& comm, int late) {
  std::vector<float> v(1000, 1.0f);
  if (comm.rank() == late) std::this_thread::sleep_for(test::with_slack(std::chrono::seconds(3)));
  const auto t0 = clk::now();
  try {
    comm.all_reduce(v, reduce_op::sum);
    std::printf("CALL SUCCEEDED on rank %d after its peers failed it\n", comm.rank());
    return 1;
  } catch (const error& e) {
    report(e, ms_since(t0));
  }
  // Alive until the late rank has called: its peers' exit is not what must tell it.
  if (comm.rank() != late) std::this_thread::sleep_for(test::with_slack(std::chrono::seconds(4)));
  return 0;
}

// Rank 1 of linger: asks the store every 50 ms until it has closed (rank 0 is gone) or
// `limit` has passed.
int linger_watch(store& st, std::chrono::milliseconds limit) {
  const auto t0 = clk::now();
  try {
    while (clk::now() - t0 < limit) {
      st.add("linger/poll", 1);
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    std::printf("STORE STILL UP after %lld ms\n", ms_since(t0));
  } catch (const error&) {
    std::printf("STORE GONE after %lld ms\n", ms_since(t0));
  }
  std::fflush(stdout);
  return 0;
}

// linger: rank 0's call fails at its timeout because rank 1, alive and connected to the
// store rank 0 serves, never makes it. The error must reach rank 0's caller soon after the
// timeout, its communicator and store destroyed on the way: the store outlives its owner
// for a short bounded linger while others are connected, not for another timeout. Rank 1
// keeps asking the store until it is gone (or two timeouts and a bit have passed).
int linger_scenario(const communicator_config& cfg) {
  const launch_info li = launch_from_env();
  std::optional<clk::time_point> called;
  try {
    std::shared_ptr<store> st = store_from(li, cfg.timeout);
    communicator comm = make(st, li, detail::env_str("COLLX_TRANSPORT"), cfg, "linger");
    if (li.rank != 0) return linger_watch(*st, 2 * cfg.timeout + std::chrono::seconds(2));
    st.reset();  // the communicator holds the store now: it goes when the communicator does
    std::vector<float> v(1000, 1.0f);
    called = clk::now();
    comm.all_reduce(v, reduce_op::sum);
    std::printf("NOT DETECTED\n");
    return 1;
  } catch (const error& e) {
    if (!called) throw;
    return report(e, ms_since(*called));  // its communicator and store are gone by now
  }
}

// Each rank reads a different cost model (as hosts with different calibrations would);
// the automatic choice must still agree, because every rank takes rank 0's.
int models_scenario(communicator_config cfg, const std::string& transport) {
  const launch_info li = launch_from_env();
  const std::shared_ptr<store> st = store_from(li, cfg.timeout);
  const cost_params rank0{1e-3, 1e-12, 1e-12};  // latency is everything: few messages
  const cost_params others{1e-9, 1e-9, 1e-9};   // bandwidth is everything: ring-like
  cfg.model = li.rank == 0 ? rank0 : others;
  communicator comm = make(st, li, transport, cfg, "models");
  int differ = 0;
  const std::size_t counts[] = {1, 1001, 300007, 1 << 20};
  for (collective c : {collective::all_reduce, collective::reduce_scatter, collective::all_gather}) {
    for (std::size_t n : counts) {
      const double bytes = static_cast<double>(n * sizeof(float));
      differ += algorithms::choose(c, comm.size(), bytes, rank0) !=
                algorithms::choose(c, comm.size(), bytes, others);
      one_case<float>(comm, c, algorithm::automatic, n, false, reduce_op::sum);
    }
  }
  if (failures != 0) return 1;
  std::printf("OK %d cases (the two models choose differently in %d of them)\n", cases, differ);
  return differ > 0 ? 0 : 1;
}

// CALLS random collectives over communicators of one job (shm and tcp; and mpi under
// mpirun with COLLX_INIT=mpi), each call on one of them at random.
int soak_scenario(const communicator_config& cfg, long calls, bool with_mpi) {
  const launch_info li = launch_from_env();
  const std::shared_ptr<store> st = store_from(li, cfg.timeout);
  std::vector<std::string> names{"shm", "tcp"};
  if (with_mpi) names.emplace_back("mpi");
  std::vector<communicator> comms;
  for (const auto& n : names) comms.push_back(make(st, li, n, cfg, "soak-" + n));
  std::mt19937_64 rng(test_seed(1));
  const auto t0 = clk::now();
  std::vector<long> on(names.size());
  for (long i = 0; i < calls && failures <= 10; ++i) {
    const std::size_t k = rng() % comms.size();
    ++on[k];
    random_case(comms[k], rng);
  }
  if (failures != 0) return 1;
  const auto secs = std::chrono::duration<double>(clk::now() - t0).count();
  std::string split;
  for (std::size_t k = 0; k < names.size(); ++k)
    split += (k ? ", " : "") + std::to_string(on[k]) + " over " + names[k];
  std::printf("OK %d cases (%s; %.1f s)\n", cases, split.c_str(), secs);
  return 0;
}

}  // namespace

// COLLX_NODE_ID from COLLX_TEST_NODES' entry for this rank.
void name_node_from_test_layout() {
  const std::string nodes = detail::env_str("COLLX_TEST_NODES");
  if (nodes.empty()) return;
  std::string rank = detail::env_str("RANK");
  if (rank.empty()) rank = detail::env_str("OMPI_COMM_WORLD_RANK");
  std::size_t at = 0;
  for (int r = std::atoi(rank.c_str()); r > 0 && at != std::string::npos; --r) {
    at = nodes.find(',', at);
    if (at != std::string::npos) ++at;
  }
  if (at == std::string::npos) throw std::runtime_error("COLLX_TEST_NODES names no node for rank " + rank);
  ::setenv("COLLX_NODE_ID", ("node" + nodes.substr(at, nodes.find(',', at) - at)).c_str(), 1);
}

int main(int argc, char** argv) {
  const std::string scenario = argc > 1 ? argv[1] : "collectives";
  try {
    name_node_from_test_layout();
    communicator_config cfg;
    if (scenario != "collectives") cfg.timeout = std::chrono::seconds(20);
    if (scenario == "late") cfg.timeout = std::chrono::seconds(1);
    const int victim = argc > 2 ? std::atoi(argv[2]) : 1;
#if COLLX_HAVE_MPI
    // Under mpirun with COLLX_INIT=mpi (or COLLX_TRANSPORT=mpi): met through MPI
    // (init_from_mpi); otherwise through the launcher's environment (init_from_env).
    std::optional<mpi_session> mpi;
    const char* t = std::getenv("COLLX_TRANSPORT");
    const char* how = std::getenv("COLLX_INIT");
    if ((t != nullptr && std::string(t) == "mpi") || (how != nullptr && std::string(how) == "mpi"))
      mpi.emplace();
    const bool with_mpi = mpi.has_value();
#else
    const bool with_mpi = false;
#endif
    if (scenario == "fault") {
      cfg.timeout = std::chrono::seconds(4);
      return fault_scenario(cfg, victim);
    }
    if (scenario == "linger") {
      cfg.timeout = std::chrono::seconds(6);
      return linger_scenario(cfg);
    }
    if (scenario == "models") return models_scenario(cfg, detail::env_str("COLLX_TRANSPORT"));
    if (scenario == "soak") return soak_scenario(cfg, argc > 2 ? std::atol(argv[2]) : 1000, with_mpi);
#if COLLX_HAVE_MPI
    communicator comm = mpi ? init_from_mpi(MPI_COMM_WORLD, cfg) : init_from_env(cfg);
#else
    communicator comm = init_from_env(cfg);
#endif
    // COLLX_TEST_NODES_SEEN: the nodes the communicator must see (the emulated hosts).
    if (const std::string want = detail::env_str("COLLX_TEST_NODES_SEEN");
        !want.empty() && std::to_string(comm.nodes()) != want) {
      std::printf("ERROR the communicator sees %d nodes, not %s\n", comm.nodes(), want.c_str());
      return 1;
    }
    if (scenario == "collectives") return collectives(comm);
    if (scenario == "dtypes") return typed_matrix(comm, test::all_types{});
    kill_calls = scenario;
    if (scenario == "kill" || scenario == "kill-broadcast" || scenario == "kill-alltoall")
      return kill_scenario(comm, victim);
    if (scenario == "abort") return abort_scenario(comm, victim);
    if (scenario.starts_with("mismatch")) return mismatch_scenario(comm, scenario);
    if (scenario == "late") return late_scenario(comm, victim);
    if (scenario == "straggler") return straggler_scenario(comm, victim);
    std::fprintf(stderr, "unknown scenario '%s'\n", scenario.c_str());
    return 2;
  } catch (const std::exception& e) {
    std::printf("ERROR %s\n", e.what());
    return 1;
  }
}
