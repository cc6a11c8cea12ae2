// The ipc protocol (ipc.hpp) across real processes: forked ranks that map each
// other's memory, here host shared memory (host_ipc_api) standing in for CUDA IPC, run
// every algorithm and collective with small slots, checked against the serial
// reference; a rank that never calls is a timeout naming it on the others; ranks that
// call differently get a mismatch; nothing is left in /dev/shm.

#include <doctest/doctest.h>

#include <dirent.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <collx/ipc.hpp>
#include <collx/rendezvous/store.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "reference.hpp"
#include "slack.hpp"

using namespace collx;

namespace {

// Every rank process this test forked, for leftovers().
std::vector<pid_t>& children() {
  static std::vector<pid_t> kids;
  return kids;
}

// Runs body(rank, store) in p forked processes; returns their exit codes (a rank still
// running after `bound` is killed and reported as 99).
std::vector<int> fork_ranks(int p, const std::function<int(int, store&)>& body,
                            std::chrono::seconds bound = std::chrono::seconds(120)) {
  char tmpl[] = "/tmp/collx-ipc-test-XXXXXX";
  REQUIRE(::mkdtemp(tmpl) != nullptr);
  const std::string dir = tmpl;
  char job[48];
  std::snprintf(job, sizeof job, "ipctest-%d-%d", static_cast<int>(::getpid()), std::rand());
  std::vector<pid_t> kids;
  std::fflush(nullptr);  // or the children print what the parent had buffered
  for (int r = 0; r < p; ++r) {
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      int code = 0;
      try {
        ::setenv("COLLX_JOB_ID", job, 1);
        file_store st(dir);
        code = body(r, st);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "rank %d: %s\n", r, e.what());
        code = 98;
      }
      std::fflush(stdout);
      std::fflush(stderr);
      ::_exit(code);
    }
    kids.push_back(pid);
    children().push_back(pid);
  }
  std::vector<int> codes(static_cast<std::size_t>(p), -1);
  const auto deadline = std::chrono::steady_clock::now() + bound;
  for (std::size_t left = kids.size(); left > 0;) {
    for (std::size_t i = 0; i < kids.size(); ++i) {
      if (codes[i] != -1) continue;
      int st = 0;
      if (::waitpid(kids[i], &st, WNOHANG) == kids[i]) {
        codes[i] = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        --left;
      }
    }
    if (std::chrono::steady_clock::now() > deadline) {
      for (std::size_t i = 0; i < kids.size(); ++i) {
        if (codes[i] != -1) continue;
        ::kill(kids[i], SIGKILL);
        ::waitpid(kids[i], nullptr, 0);
        codes[i] = 99;
        --left;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  std::filesystem::remove_all(dir);
  return codes;
}

// Segments of this test's jobs still in /dev/shm: the control segments, named after the
// job (which carries this process's pid), and the inboxes, named after the rank process
// that made them (ipc.hpp: /collx-ipc-mem-<pid>-...), one of the children.
int leftovers() {
  int n = 0;
  if (DIR* d = ::opendir("/dev/shm")) {
    while (const dirent* e = ::readdir(d)) {
      const std::string name = e->d_name;
      if (name.find("collx-ipc-ipctest-" + std::to_string(::getpid()) + "-") == 0) ++n;
      for (pid_t kid : children()) {
        if (name.find("collx-ipc-mem-" + std::to_string(kid) + "-") == 0) ++n;
      }
    }
    ::closedir(d);
  }
  return n;
}

ipc_options small_slots() {
  ipc_options o;
  o.slots = 2;
  o.slot_bytes = 48;  // a 1001-element f32 message is 84 pieces
  o.timeout = std::chrono::seconds(20);
  return o;
}

template <class T>
long long call_and_check(ipc_communicator<host_ipc_api>& c, collective coll, algorithm a, reduce_op op,
                         std::size_t n, bool in_place) {
  test::case_buffers<T> b(coll, c.size(), c.rank(), n, in_place);
  T* out = b.out_ptr();
  const T* in = b.in_ptr();
  T* dst =
      in_place && coll == collective::reduce_scatter ? out + static_cast<std::size_t>(c.rank()) * n : out;
  options o;
  o.algo = a;
  switch (coll) {
    case collective::all_reduce: c.all_reduce(in, dst, n, dtype_v<T>, op, o); break;
    case collective::all_gather: c.all_gather(in, dst, n, dtype_v<T>, o); break;
    case collective::reduce_scatter: c.reduce_scatter(in, dst, n, dtype_v<T>, op, o); break;
    default: break;
  }
  const long long bad = b.wrong(op);
  if (bad != 0) {
    std::printf("rank %d: %s %s n=%zu %s %s: %lld wrong\n", c.rank(), std::string(to_string(coll)).c_str(),
                std::string(to_string(a)).c_str(), n, in_place ? "in-place" : "out-of-place",
                std::string(to_string(op)).c_str(), bad);
  }
  return bad;
}

// Runs body(rank, communicator) on p forked ranks over the ipc entry with small slots,
// for p = 2, 3, 5; body returns the elements it found wrong. Every rank must find none,
// and no segment may be left in /dev/shm.
void expect_no_wrong(const std::function<long long(int, int, ipc_communicator<host_ipc_api>&)>& body) {
  for (int p : {2, 3, 5}) {
    const auto codes = fork_ranks(p, [p, &body](int r, store& st) {
      ipc_communicator<host_ipc_api> c(st, r, p, host_ipc_api{}, small_slots());
      const long long bad = body(r, p, c);
      if (bad != 0) std::printf("rank %d: %lld wrong\n", r, bad);
      return bad == 0 ? 0 : 1;
    });
    for (int r = 0; r < p; ++r) {
      INFO("p = ", p, ", rank ", r);
      CHECK(codes[static_cast<std::size_t>(r)] == 0);
    }
  }
  CHECK(leftovers() == 0);
}

}  // namespace

TEST_CASE("ipc: every algorithm and collective across processes, p = 2, 3, 5") {
  expect_no_wrong([](int, int, ipc_communicator<host_ipc_api>& c) {
    long long bad = 0;
    for (auto coll : {collective::all_reduce, collective::all_gather, collective::reduce_scatter}) {
      for (auto a : all_algorithms) {
        if (!implements(a, coll)) continue;
        for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{7}, std::size_t{1001}}) {
          for (bool in_place : {false, true}) {
            bad += call_and_check<float>(c, coll, a, reduce_op::sum, n, in_place);
            if (coll != collective::all_gather) {
              bad += call_and_check<std::int32_t>(c, coll, a, reduce_op::max, n, in_place);
              bad += call_and_check<double>(c, coll, a, reduce_op::avg, n, in_place);
            }
          }
        }
      }
    }
    bad += call_and_check<half>(c, collective::all_reduce, algorithm::ring, reduce_op::sum, 333, false);
    bad += call_and_check<std::int8_t>(c, collective::all_reduce, algorithm::tree, reduce_op::min, 333, true);
    return bad;
  });
}

// broadcast and reduce from every root, and barriers, over the peer executor: the
// rooted schedules' empty messages and their ordering run there too.
TEST_CASE("ipc: broadcast, reduce and barrier across processes, p = 2, 3, 5, every root") {
  expect_no_wrong([&](int r, int p, ipc_communicator<host_ipc_api>& c) {
    long long bad = 0;
    for (int root = 0; root < p; ++root) {
      for (auto a : {algorithm::binomial, algorithm::chain}) {
        for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{1001}}) {
          std::vector<float> in(n), out(n, 99.0f);
          for (std::size_t i = 0; i < n; ++i) in[i] = static_cast<float>(test::input(r, i));
          options o;
          o.algo = a;
          c.broadcast(r == root ? in.data() : nullptr, out.data(), n, dtype::f32, root, o);
          for (std::size_t i = 0; i < n; ++i)
            bad += out[i] == static_cast<float>(test::input(root, i)) ? 0 : 1;
          std::fill(out.begin(), out.end(), 99.0f);
          c.reduce(in.data(), out.data(), n, dtype::f32, reduce_op::sum, root, o);
          for (std::size_t i = 0; i < n; ++i) {
            const double want = r == root ? test::ref_reduce(reduce_op::sum, p, i) : 99.0;
            bad += out[i] == static_cast<float>(want) ? 0 : 1;
          }
        }
      }
      c.barrier();
    }
    return bad;
  });
}

// all-to-all, gather and scatter from every root, every algorithm that implements them,
// over the peer executor. Inputs hashed from (rank, index): a block at the wrong rank or
// offset cannot compare equal.
TEST_CASE("ipc: all-to-all, gather and scatter across processes, p = 2, 3, 5, every root and algorithm") {
  auto in_of = [](int r, std::size_t i) {
    return static_cast<float>(test::mix(static_cast<std::uint64_t>(r) << 32 | i) % 1000);
  };
  expect_no_wrong([&](int r, int p, ipc_communicator<host_ipc_api>& c) {
    const auto up = static_cast<std::size_t>(p);
    const auto ur = static_cast<std::size_t>(r);
    long long bad = 0;
    for (auto coll : {collective::all_to_all, collective::gather, collective::scatter}) {
      for (auto a : all_algorithms) {
        if (!implements(a, coll)) continue;
        for (int root = 0; root < (coll == collective::all_to_all ? 1 : p); ++root) {
          for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{333}}) {
            options o;
            o.algo = a;
            std::vector<float> in(coll == collective::gather ? n : n * up),
                out(coll == collective::scatter ? n : n * up, -1.0f);
            for (std::size_t i = 0; i < in.size(); ++i) in[i] = in_of(r, i);
            if (coll == collective::all_to_all) c.all_to_all(in.data(), out.data(), n, dtype::f32, o);
            if (coll == collective::gather)
              c.gather(in.data(), r == root ? out.data() : nullptr, n, dtype::f32, root, o);
            if (coll == collective::scatter)
              c.scatter(r == root ? in.data() : nullptr, out.data(), n, dtype::f32, root, o);
            for (std::size_t k = 0; k < out.size(); ++k) {
              const std::size_t j = k / n, i = k % n;
              const float want = coll == collective::all_to_all ? in_of(static_cast<int>(j), ur * n + i)
                                 : coll == collective::gather
                                     ? (r == root ? in_of(static_cast<int>(j), i) : -1.0f)
                                     : in_of(root, ur * n + k);
              bad += out[k] == want ? 0 : 1;
            }
          }
        }
      }
    }
    return bad;
  });
}

TEST_CASE(
    "ipc: COLLX_TIMEOUT, COLLX_ALGO and COLLX_SEGMENT_BYTES set its calls as they do the host "
    "communicator's") {
  // Rank 1 never calls; rank 0's timeout names the call as it ran. Exit codes: 0 when
  // the error names what the environment asked for, else what went wrong.
  const auto t0 = std::chrono::steady_clock::now();
  const auto codes = fork_ranks(2, [](int r, store& st) {
    ::setenv("COLLX_TIMEOUT", std::to_string(0.5 * test::slack_factor()).c_str(), 1);
    ::setenv("COLLX_ALGO", "tree", 1);  // neither the model's choice here nor ring
    ::setenv("COLLX_SEGMENT_BYTES", "8192", 1);
    ipc_options o;  // 16 KiB of slots: an 8 KiB segment fits, so it is not cut
    o.slots = 4;
    o.slot_bytes = 4096;
    ipc_communicator<host_ipc_api> c(st, r, 2, host_ipc_api{}, o);
    if (r == 1) {
      std::this_thread::sleep_for(test::with_slack(std::chrono::seconds(2)));
      return 0;
    }
    std::vector<float> v(3000, 1.0f);
    try {
      c.all_reduce(v.data(), v.data(), v.size(), dtype::f32, reduce_op::sum);
    } catch (const error& e) {
      std::printf("rank %d: %s\n", r, e.what());
      const std::string what = e.what();
      if (e.kind() != errc::timeout) return 3;
      return what.find("tree, segment=2048)") != std::string::npos ? 0 : 4;
    }
    return 2;
  });
  CHECK(std::chrono::steady_clock::now() - t0 < test::with_slack(std::chrono::seconds(10)));  // not 5 minutes
  CHECK(codes[0] == 0);
  CHECK(codes[1] == 0);
  CHECK(leftovers() == 0);
}

TEST_CASE("ipc: a rank that never calls is a timeout naming it, within the bound") {
  // Rank 2 sets up and then sleeps; ranks 0 and 1 call. Exit codes: 10 + the rank blamed
  // when timed out, 50 + the rank when stopped because another failed first.
  const auto t0 = std::chrono::steady_clock::now();
  const auto codes = fork_ranks(3, [](int r, store& st) {
    ipc_options o = small_slots();
    o.timeout = test::with_slack(std::chrono::milliseconds(400));
    ipc_communicator<host_ipc_api> c(st, r, 3, host_ipc_api{}, o);
    if (r == 2) {
      std::this_thread::sleep_for(test::with_slack(std::chrono::seconds(2)));
      return 0;
    }
    try {
      call_and_check<float>(c, collective::all_reduce, algorithm::ring, reduce_op::sum, 1000, false);
    } catch (const error& e) {
      std::printf("rank %d: %s\n", r, e.what());
      // The next call is refused at once.
      try {
        call_and_check<float>(c, collective::all_reduce, algorithm::ring, reduce_op::sum, 10, false);
        return 3;
      } catch (const error&) {
      }
      if (e.kind() == errc::timeout) return 10 + e.peer();
      if (e.kind() == errc::peer_failure) return 50 + e.peer();
      return 4;
    }
    return 2;
  });
  CHECK(std::chrono::steady_clock::now() - t0 < test::with_slack(std::chrono::seconds(30)));
  CHECK(codes[2] == 0);
  // Whoever timed out first followed the waits to rank 2; the other stopped on its word.
  const bool named = codes[0] == 12 || codes[1] == 12;
  CHECK(named);
  for (int r = 0; r < 2; ++r) {
    INFO("rank ", r, " exit ", codes[static_cast<std::size_t>(r)]);
    CHECK((codes[static_cast<std::size_t>(r)] == 12 || codes[static_cast<std::size_t>(r)] >= 50));
  }
  CHECK(leftovers() == 0);
}

TEST_CASE("ipc: abort() on one rank stops the others' calls with an error naming it") {
  // Rank 1 aborts instead of calling; rank 0's call ends with peer_failure naming rank 1,
  // long before its timeout. Exit codes: 30 + the rank named.
  const auto t0 = std::chrono::steady_clock::now();
  const auto codes = fork_ranks(2, [](int r, store& st) {
    ipc_options o = small_slots();
    o.timeout = std::chrono::seconds(20);
    ipc_communicator<host_ipc_api> c(st, r, 2, host_ipc_api{}, o);
    if (r == 1) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      c.abort();
      return c.failure().empty() ? 1 : 0;
    }
    try {
      call_and_check<float>(c, collective::all_reduce, algorithm::ring, reduce_op::sum, 1000, false);
    } catch (const error& e) {
      return e.kind() == errc::peer_failure ? 30 + e.peer() : 2;
    }
    return 3;
  });
  CHECK(codes[0] == 31);
  CHECK(codes[1] == 0);
  CHECK(std::chrono::steady_clock::now() - t0 < test::with_slack(std::chrono::seconds(15)));
}

TEST_CASE("ipc: ranks set up with different slots both say so, in every one of 20 rounds") {
  // Whichever fails first unlinks its segment: the other must still name the slots, not
  // "cannot open peer P's shared memory". Exit codes: 0 when the error names the slots.
  for (int round = 0; round < 20; ++round) {
    const auto codes = fork_ranks(2, [](int r, store& st) {
      ipc_options o = small_slots();
      o.slots = 4 + static_cast<std::uint32_t>(r);
      try {
        ipc_communicator<host_ipc_api> c(st, r, 2, host_ipc_api{}, o);
      } catch (const error& e) {
        std::printf("rank %d: %s\n", r, e.what());
        return std::string(e.what()).find("was set up with different slots") != std::string::npos ? 0 : 1;
      }
      return 2;
    });
    INFO("round ", round);
    CHECK(codes[0] == 0);
    CHECK(codes[1] == 0);
    if (codes[0] != 0 || codes[1] != 0) break;
  }
  CHECK(leftovers() == 0);
}

TEST_CASE("ipc: ranks that call differently get a mismatch") {
  const auto codes = fork_ranks(2, [](int r, store& st) {
    ipc_communicator<host_ipc_api> c(st, r, 2, host_ipc_api{}, small_slots());
    try {
      call_and_check<float>(c, collective::all_reduce, algorithm::ring, reduce_op::sum, r == 0 ? 100 : 101,
                            false);
    } catch (const error& e) {
      return e.kind() == errc::mismatch ? 20 : 21;
    }
    return 0;
  });
  // Both ranks, each with the mismatch, not a timeout or a peer's failure.
  CHECK(codes[0] == 20);
  CHECK(codes[1] == 20);
}

TEST_CASE(
    "ipc: count 0 on one rank and more on the others, or another count on one of three, is a mismatch on "
    "every "
    "rank within the bound") {
  // A count-0 call moves no element, yet carries its signature to and from every peer
  // (exec/peer_program.hpp: signature_exchange): it used to return at once on its rank
  // and leave the others to time out. With three ranks, the rank that sees no foreign
  // piece itself learns of the mismatch through the failure flags, and says mismatch too.
  for (auto coll : {collective::all_reduce, collective::all_gather, collective::reduce_scatter}) {
    for (int variant = 0; variant < 3; ++variant) {
      const int odd = variant == 2 ? 2 : variant;  // rank 0 or 1 calls with count 0; rank 2 with 8
      const auto t0 = std::chrono::steady_clock::now();
      const auto codes = fork_ranks(3, [&](int r, store& st) {
        ipc_communicator<host_ipc_api> c(st, r, 3, host_ipc_api{}, small_slots());
        const std::size_t n = r != odd ? 7 : variant == 2 ? 8 : 0;
        try {
          call_and_check<float>(c, coll, algorithm::ring, reduce_op::sum, n, false);
        } catch (const error& e) {
          std::printf("rank %d: %s\n", r, e.what());
          return e.kind() == errc::mismatch ? 20 : 21;
        }
        return 0;
      });
      INFO(to_string(coll), " variant ", variant);
      for (int r = 0; r < 3; ++r) CHECK(codes[static_cast<std::size_t>(r)] == 20);
      // small_slots' timeout is 20 s: a mismatch is found at the first piece.
      CHECK(std::chrono::steady_clock::now() - t0 < test::with_slack(std::chrono::seconds(10)));
    }
  }
  CHECK(leftovers() == 0);
}

TEST_CASE(
    "ipc: a rank frees its inbox once every peer has unmapped it or is gone, and keeps it while a peer still "
    "maps it past the bound") {
  using namespace std::chrono_literals;
  // 0: the peer lets its communicator go 1 s later: rank 0's destructor waits for it.
  // 1: the peer's process ends without letting it go (its mappings die with it): rank 0
  //    goes on at once, not after the bound (10 s here).
  // 2: the peer still maps rank 0's inbox after rank 0's bound (its timeout, 1 s): rank
  //    0 keeps the inbox until it exits (keep_until_exit) instead of freeing it.
  for (int variant = 0; variant < 3; ++variant) {
    const auto codes = fork_ranks(2, [variant](int r, store& st) {
      ipc_options o = small_slots();
      if (variant == 2 && r == 0) o.timeout = 1s;
      auto c = std::make_unique<ipc_communicator<host_ipc_api>>(st, r, 2, host_ipc_api{}, o);
      if (call_and_check<float>(*c, collective::all_reduce, algorithm::ring, reduce_op::sum, 7, false) != 0)
        return 1;
      if (r == 1) {
        std::this_thread::sleep_for(variant == 0 ? 1s : variant == 1 ? 300ms : 3s);
        if (variant == 1) ::_exit(0);
        c.reset();
        return 0;
      }
      const auto t0 = std::chrono::steady_clock::now();
      c.reset();
      const auto took = std::chrono::steady_clock::now() - t0;
      const std::size_t kept = detail::keep_until_exit<host_ipc_api::memory>();
      std::printf("variant %d: the destructor took %lld ms, %zu inbox(es) kept\n", variant,
                  static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(took).count()),
                  kept);
      if (variant == 0) return took >= 800ms && took < test::with_slack(5s) && kept == 0 ? 0 : 10;
      if (variant == 1) return took < test::with_slack(3s) && kept == 0 ? 0 : 11;
      return took >= 900ms && took < test::with_slack(3s) && kept == 1 ? 0 : 12;
    });
    INFO("variant ", variant);
    CHECK(codes[0] == 0);
    CHECK(codes[1] == 0);
  }
  CHECK(leftovers() == 0);
}

TEST_CASE("ipc: bad input is refused before anything moves") {
  const auto codes = fork_ranks(1, [](int r, store& st) {
    ipc_communicator<host_ipc_api> c(st, r, 1, host_ipc_api{}, small_slots());
    std::vector<float> v(16, 1.0f);
    int refused = 0;
    auto expect = [&](auto&& f) {
      try {
        f();
      } catch (const error& e) {
        if (e.kind() == errc::invalid_argument || e.kind() == errc::unsupported) ++refused;
      }
    };
    expect([&] { c.all_reduce(v.data(), v.data() + 1, 8, dtype::f32, reduce_op::sum); });
    expect([&] { c.all_reduce(v.data(), v.data(), 8, dtype::i32, reduce_op::avg); });
    expect([&] { c.all_reduce(nullptr, v.data(), 8, dtype::f32, reduce_op::sum); });
    options o;
    o.algo = algorithm::tree;
    expect([&] { c.all_gather(v.data(), v.data() + 8, 8, dtype::f32, o); });
    const bool untouched = v == std::vector<float>(16, 1.0f);
    c.all_reduce(v.data(), v.data(), 16, dtype::f32, reduce_op::sum);  // still healthy
    return refused == 4 && untouched ? 0 : 1;
  });
  CHECK(codes[0] == 0);
}
