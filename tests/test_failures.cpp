// Bad input, mismatched calls, dead and silent peers, abort: every rank gets a
// collx::error within its timeout, and nothing the caller owns is touched.

#include <doctest/doctest.h>

#include "expect.hpp"

#include <stdlib.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include <collx/transport/faulty.hpp>

#include "common.hpp"

using collx::dtype;
using collx::errc;
using collx::reduce_op;
using namespace std::chrono_literals;

namespace {

using test::expect_error;

bool contains(const std::string& s, const std::string& needle) { return s.find(needle) != std::string::npos; }

}  // namespace

TEST_CASE("bad input is refused before any byte moves, on every rank, and leaves buffers as they were") {
  test::expect_ok(test::run_ranks(3, [](collx::communicator& c) {
    std::vector<float> in(10, 1.0f), out(10, 7.0f), small(9, 7.0f);
    std::vector<float> gathered(29, 7.0f);
    std::vector<std::int32_t> ints(6, 3);
    auto unchanged = [&] {
      for (float x : out) REQUIRE(x == 7.0f);
      for (float x : small) REQUIRE(x == 7.0f);
      for (float x : gathered) REQUIRE(x == 7.0f);
      for (float x : in) REQUIRE(x == 1.0f);
      for (auto x : ints) REQUIRE(x == 3);
    };
    auto e = expect_error([&] { c.all_reduce(in, small, reduce_op::sum); });
    CHECK(e.kind() == errc::invalid_argument);
    CHECK(contains(e.what(), "input 10 and output 9"));
    e = expect_error([&] { c.all_gather(in, gathered); });
    CHECK(e.kind() == errc::invalid_argument);
    e = expect_error([&] { c.reduce_scatter(small, out, reduce_op::sum); });
    CHECK(e.kind() == errc::invalid_argument);
    e = expect_error([&] { c.all_reduce(nullptr, out.data(), 10, dtype::f32, reduce_op::sum); });
    CHECK(contains(e.what(), "input is null"));
    e = expect_error([&] { c.all_reduce(out.data(), out.data() + 1, 9, dtype::f32, reduce_op::sum); });
    CHECK(contains(e.what(), "overlap"));
    e = expect_error([&] { c.all_reduce(ints, reduce_op::avg); });
    CHECK(contains(e.what(), "avg needs a floating-point element type, got i32"));
    e = expect_error([&] {
      c.all_reduce(reinterpret_cast<const std::byte*>(in.data()) + 1, out.data(), 4, dtype::f32,
                   reduce_op::sum);
    });
    CHECK(contains(e.what(), "aligned"));
    e = expect_error([&] { c.all_gather(out); });
    CHECK(contains(e.what(), "not a multiple of 3 ranks"));
    collx::options bad;
    bad.timeout = -1ms;
    e = expect_error([&] { c.all_reduce(out, reduce_op::sum, bad); });
    CHECK(contains(e.what(), "timeout"));
    CHECK(e.rank() == c.rank());
    unchanged();
    // Refused input does not poison the communicator: the next good call works.
    c.all_reduce(in, out, reduce_op::sum);
    for (float x : out) REQUIRE(x == 3.0f);
  }));
}

namespace {
std::vector<float> gpu_like(64, 1.0f);  // stands for GPU memory in the test below
bool fake_probe(const void* p) noexcept {
  return p >= static_cast<const void*>(gpu_like.data()) && p < static_cast<const void*>(gpu_like.data() + 64);
}
}  // namespace

TEST_CASE("with a GPU object in the program, device buffers are refused by host communicators") {
  // What collx::cuda's objects install (front/check.hpp), with a probe that calls one
  // vector device memory: the call fails before a byte moves, and says what to use.
  collx::detail::device_memory_probe.store(&fake_probe);
  collx::local_world w(1);
  collx::communicator c(w.transport(0));
  std::vector<float> host(64, 2.0f);
  try {
    c.all_reduce(gpu_like.data(), host.data(), 64, dtype::f32, reduce_op::sum);
    FAIL("device memory was taken");
  } catch (const collx::error& e) {
    CHECK(e.kind() == errc::invalid_argument);
    CHECK(std::string(e.what()).find("input is GPU memory") != std::string::npos);
  }
  CHECK(host == std::vector<float>(64, 2.0f));
  c.all_reduce(host.data(), host.data(), 64, dtype::f32, reduce_op::sum);  // host memory: fine
  collx::detail::device_memory_probe.store(nullptr);
}

TEST_CASE("ranks that call different collectives all get an error saying what each called") {
  collx::communicator_config cfg;
  cfg.timeout = 20s;
  const auto start = std::chrono::steady_clock::now();
  auto errors = test::run_ranks(
      3,
      [](collx::communicator& c) {
        std::vector<float> v(12, 1.0f), g(36);
        if (c.rank() == 1) {
          c.all_gather(v, g);
        } else {
          c.all_reduce(v, reduce_op::sum);
        }
      },
      cfg);
  CHECK(std::chrono::steady_clock::now() - start < 10s);  // found out, not timed out
  bool named_both = false;
  for (std::size_t r = 0; r < errors.size(); ++r) {
    auto e = test::as_error(errors[r]);
    REQUIRE_MESSAGE(e.has_value(), "rank " << r << " did not fail");
    CHECK(e->kind() == errc::mismatch);
    const std::string w = e->what();
    INFO(w);
    CHECK(contains(w, "called"));
    named_both = named_both || (contains(w, "all_gather(f32") && contains(w, "all_reduce(f32, sum"));
  }
  CHECK(named_both);
}

TEST_CASE("different counts, types, reductions or a zero count on one rank are mismatches") {
  struct variant {
    const char* name;
    std::function<void(collx::communicator&)> call;
  };
  const std::vector<variant> variants = {
      {"count",
       [](collx::communicator& c) {
         std::vector<float> v(c.rank() == 2 ? 9 : 8, 1.0f);
         c.all_reduce(v, reduce_op::sum);
       }},
      {"type of the same size",
       [](collx::communicator& c) {
         if (c.rank() == 0) {
           std::vector<std::int32_t> v(8, 1);
           c.all_reduce(v, reduce_op::sum);
         } else {
           std::vector<float> v(8, 1.0f);
           c.all_reduce(v, reduce_op::sum);
         }
       }},
      {"reduction",
       [](collx::communicator& c) {
         std::vector<double> v(8, 1.0);
         c.all_reduce(v, c.rank() == 1 ? reduce_op::max : reduce_op::sum);
       }},
      {"zero count",
       [](collx::communicator& c) {
         std::vector<float> v(c.rank() == 0 ? 0 : 5, 1.0f);
         c.all_reduce(v, reduce_op::sum);
       }},
  };
  collx::communicator_config cfg;
  cfg.timeout = 20s;
  for (const auto& v : variants) {
    CAPTURE(v.name);
    const auto start = std::chrono::steady_clock::now();
    auto errors = test::run_ranks(3, v.call, cfg);
    CHECK(std::chrono::steady_clock::now() - start < 10s);
    for (std::size_t r = 0; r < errors.size(); ++r) {
      auto e = test::as_error(errors[r]);
      REQUIRE_MESSAGE(e.has_value(), "rank " << r << " did not fail");
      CHECK(e->kind() == errc::mismatch);
    }
  }
}

TEST_CASE("a killed peer makes every other rank fail, naming it, instead of hanging") {
  for (int p : {2, 3, 5}) {
    CAPTURE(p);
    collx::local_world world(p);
    const int victim = p - 1;
    collx::communicator_config cfg;
    cfg.timeout = 30s;
    // Slow the ranks down so that the kill lands in the middle of the collective.
    for (int r = 0; r < p; ++r) world.set_delay(r, 2ms);
    std::thread killer([&] {
      std::this_thread::sleep_for(30ms);
      world.kill(victim);
    });
    const auto start = std::chrono::steady_clock::now();
    auto errors = test::run_ranks(
        world,
        [&](collx::communicator& c) {
          std::vector<float> v(1 << 16, 1.0f);
          collx::options o;
          o.segment_bytes = 4096;  // many messages, so many chances to notice
          for (int i = 0; i < 1000; ++i) c.all_reduce(v, reduce_op::sum, o);
        },
        cfg);
    killer.join();
    CHECK(std::chrono::steady_clock::now() - start < 20s);
    for (int r = 0; r < p; ++r) {
      auto e = test::as_error(errors[static_cast<std::size_t>(r)]);
      REQUIRE_MESSAGE(e.has_value(), "rank " << r << " did not fail");
      const std::string w = e->what();
      INFO("rank ", r, ": ", w);
      if (r == victim) {
        CHECK(e->kind() == errc::aborted);
      } else {
        CHECK(e->kind() == errc::peer_failure);
        CHECK(
            (contains(w, "peer " + std::to_string(victim)) || contains(w, "rank " + std::to_string(victim))));
        CHECK(contains(w, "killed by fault injection"));
      }
    }
  }
}

TEST_CASE("a peer that never makes the call gives every other rank a timeout error") {
  collx::communicator_config cfg;
  cfg.timeout = 300ms;
  const auto start = std::chrono::steady_clock::now();
  auto errors = test::run_ranks(
      4,
      [](collx::communicator& c) {
        if (c.rank() == 2) return;  // silent: never calls
        std::vector<float> v(100, 1.0f);
        c.all_reduce(v, reduce_op::sum);
      },
      cfg);
  const auto took = std::chrono::steady_clock::now() - start;
  CHECK(took < 5s);
  CHECK(!errors[2]);
  for (int r : {0, 1, 3}) {
    auto e = test::as_error(errors[static_cast<std::size_t>(r)]);
    REQUIRE_MESSAGE(e.has_value(), "rank " << r << " did not fail");
    CHECK(e->kind() == errc::timeout);
    INFO(e->what());
    CHECK(contains(e->what(), "timed out"));
  }
  // Rank 3 receives from rank 2 in the ring: its own error names rank 2 directly.
  auto e3 = test::as_error(errors[3]);
  CHECK(e3->peer() == 2);
}

TEST_CASE("a per-call timeout bounds one call, and a failed communicator refuses further calls") {
  auto errors = test::run_ranks(2, [](collx::communicator& c) {
    if (c.rank() == 1) return;
    std::vector<float> v(10, 1.0f);
    collx::options o;
    o.timeout = 100ms;
    auto e = expect_error([&] { c.all_reduce(v, reduce_op::sum, o); });
    CHECK(e.kind() == errc::timeout);
    CHECK_FALSE(c.failure().empty());
    auto again = expect_error([&] { c.all_reduce(v, reduce_op::sum); });
    CHECK(again.kind() == errc::aborted);
    CHECK(contains(again.what(), "create a new one"));
    for (float x : v) CHECK(x == 1.0f);
  });
  test::expect_ok(errors);
}

TEST_CASE("abort() releases a rank blocked in a call, from another thread") {
  auto errors = test::run_ranks(2, [](collx::communicator& c) {
    if (c.rank() == 1) return;  // never joins: rank 0 would wait for the whole timeout
    std::thread aborter([&] {
      std::this_thread::sleep_for(100ms);
      c.abort("the job is being torn down");
    });
    const auto start = std::chrono::steady_clock::now();
    std::vector<float> v(10, 1.0f);
    auto e = expect_error([&] { c.all_reduce(v, reduce_op::sum); });
    aborter.join();
    CHECK(e.kind() == errc::aborted);
    CHECK(std::chrono::steady_clock::now() - start < 5s);
  });
  test::expect_ok(errors);
}

TEST_CASE("a rank that starts a call after its peers timed out in it fails it too") {
  for (const auto algo : {collx::algorithm::ring, collx::algorithm::recursive_doubling}) {
    const int p = algo == collx::algorithm::ring ? 2 : 3;
    collx::communicator_config cfg;
    cfg.timeout = 300ms;
    cfg.algo = algo;
    std::vector<std::string> outcome(static_cast<std::size_t>(p));
    test::expect_ok(test::run_ranks(
        p,
        [&](collx::communicator& c) {
          std::vector<float> v(100, 1.0f);
          if (c.rank() == 1) std::this_thread::sleep_for(900ms);
          try {
            c.all_reduce(v, reduce_op::sum);
            outcome[static_cast<std::size_t>(c.rank())] = "succeeded";
          } catch (const collx::error& e) {
            outcome[static_cast<std::size_t>(c.rank())] = std::string(e.code().message());
          }
        },
        cfg));
    INFO(to_string(algo));
    for (const auto& o : outcome) CHECK(o != "succeeded");
  }
}

TEST_CASE(
    "COLLX_TIMEOUT, COLLX_ALGO and COLLX_SEGMENT_BYTES set the host communicator's calls, and automatic asks "
    "the model") {
  // COLLX_ALGO=tree: neither what the model chooses for these calls nor a ring default.
  // Rank 1 never calls: rank 0's timeout names the call as it ran.
  auto timed_out_call = [](int p) {
    std::string what;
    const auto start = std::chrono::steady_clock::now();
    test::expect_ok(test::run_ranks(p, [&](collx::communicator& c) {
      if (c.rank() != 0) return;
      std::vector<float> v(3000, 1.0f);
      what = expect_error([&] { c.all_reduce(v, reduce_op::sum); }).what();
    }));
    return std::pair{what, std::chrono::steady_clock::now() - start};
  };
  {
    test::scoped_env timeout("COLLX_TIMEOUT", "0.5"), algo("COLLX_ALGO", "tree"),
        seg("COLLX_SEGMENT_BYTES", "8192");
    const auto [what, took] = timed_out_call(2);
    INFO(what);
    CHECK(contains(what, "timed out after"));
    CHECK(contains(what, "tree, segment=2048)"));
    CHECK(took < 5s);  // the default timeout is five minutes
  }
  {
    test::scoped_env timeout("COLLX_TIMEOUT", "0.5"), algo("COLLX_ALGO", "");
    const collx::communicator_config cfg;
    const auto chosen = collx::algorithms::choose(collx::collective::all_reduce, 3, 3000 * 4.0, cfg.model);
    const auto [what, took] = timed_out_call(3);
    INFO(what);
    CHECK(contains(what, std::string(", ") + std::string(to_string(chosen)) + ", segment=131072)"));
  }
}

TEST_CASE("a slow rank delays the others but the answer is right") {
  collx::local_world world(3);
  world.set_delay(1, 5ms);
  test::expect_ok(test::run_ranks(world, [](collx::communicator& c) {
    std::vector<std::int64_t> v(1000, c.rank() + 1);
    c.all_reduce(v, reduce_op::sum);
    for (auto x : v) REQUIRE(x == 6);
  }));
}

namespace {
template <class C, class R>
concept can_async_reduce = requires(C& c, R&& r) {
  c.all_reduce_async(std::forward<R>(r), collx::reduce_op::sum);
};
}  // namespace

TEST_CASE("async calls refuse temporary buffers at compile time: they would be freed before the call runs") {
  static_assert(can_async_reduce<collx::communicator, std::vector<float>&>);
  static_assert(can_async_reduce<collx::communicator, std::span<float>>);
  static_assert(!can_async_reduce<collx::communicator, std::vector<float>>);
  static_assert(!can_async_reduce<collx::communicator, std::vector<float>&&>);
  CHECK(true);
}

TEST_CASE("a timeout of milliseconds::max() means no timeout, not an instant one") {
  collx::communicator_config cfg;
  cfg.timeout = std::chrono::milliseconds::max();
  test::expect_ok(test::run_ranks(
      2,
      [](collx::communicator& c) {
        std::vector<float> v(10, 1.0f);
        collx::options o;
        o.timeout = std::chrono::milliseconds::max();
        c.all_reduce(v, reduce_op::sum, o);
        for (float x : v) REQUIRE(x == 2.0f);
      },
      cfg));
}

TEST_CASE("ranks that force different algorithms, or different tags, all get a mismatch error") {
  collx::communicator_config cfg;
  cfg.timeout = 20s;
  for (int variant = 0; variant < 3; ++variant) {
    CAPTURE(variant);
    auto errors = test::run_ranks(
        3,
        [variant](collx::communicator& c) {
          collx::options o;
          std::vector<float> v(variant == 2 ? 0 : 64, 1.0f);
          if (variant == 0 && c.rank() == 0) o.algo = collx::algorithm::recursive_doubling;
          if (variant == 0 && c.rank() != 0) o.algo = collx::algorithm::ring;
          if (variant >= 1 && c.rank() == 1) o.tag = 9;  // variant 2: count 0, only the signature travels
          c.all_reduce(v, reduce_op::sum, o);
        },
        cfg);
    for (std::size_t r = 0; r < errors.size(); ++r) {
      auto e = test::as_error(errors[r]);
      REQUIRE_MESSAGE(e.has_value(), "rank " << r << " did not fail");
      CHECK(e->kind() == errc::mismatch);
    }
  }
}

TEST_CASE("an algorithm that does not implement the collective is refused before any byte moves") {
  test::expect_ok(test::run_ranks(2, [](collx::communicator& c) {
    std::vector<float> v(10, 1.0f);
    collx::options o;
    o.algo = collx::algorithm::bruck;
    auto e = expect_error([&] { c.all_reduce(v, reduce_op::sum, o); });
    CHECK(e.kind() == errc::unsupported);
    CHECK(contains(e.what(), "bruck does not implement all_reduce"));
    o.algo = collx::algorithm::ring;
    o.segment_bytes = 2;  // less than one f32
    e = expect_error([&] { c.all_reduce(v, reduce_op::sum, o); });
    CHECK(e.kind() == errc::invalid_argument);
    for (float x : v) REQUIRE(x == 1.0f);
    c.all_reduce(v, reduce_op::sum);  // still healthy
    for (float x : v) REQUIRE(x == 2.0f);
  }));
}

TEST_CASE("COLLX_ALGO picks the default algorithm, and a name it does not know is an error") {
  ::setenv("COLLX_ALGO", "rabenseifner", 1);
  CHECK(collx::communicator_config{}.algo == collx::algorithm::rabenseifner);
  ::setenv("COLLX_ALGO", "fastest", 1);
  CHECK_THROWS_AS(collx::communicator_config{}, collx::error);
  ::unsetenv("COLLX_ALGO");
  CHECK(collx::communicator_config{}.algo == collx::algorithm::automatic);
}

TEST_CASE("kill and set_delay check their rank") {
  collx::local_world world(2);
  CHECK_THROWS_AS(world.kill(2), collx::error);
  CHECK_THROWS_AS(world.set_delay(-1, 1ms), collx::error);
}

TEST_CASE("fault plans: COLLX_FAULT's syntax, and a malformed plan is an invalid_argument error") {
  const auto plan =
      collx::fault_plan::parse(" reset:rank=1,after=40 ; delay:time=200us,jitter=1ms;stall:for=2s ");
  REQUIRE(plan.faults.size() == 3);
  CHECK(plan.faults[0].what == collx::fault::kind::reset);
  CHECK(plan.faults[0].rank == 1);
  CHECK(plan.faults[0].after == 40);
  CHECK(plan.faults[1].rank == -1);
  CHECK(plan.faults[1].time == 200us);
  CHECK(plan.faults[1].jitter == 1ms);
  CHECK(plan.faults[2].stall_for == 2s);
  CHECK(collx::fault_plan::parse("").empty());
  for (const char* bad :
       {"explode", "kill:rank", "kill:rank=x", "delay:time=5", "delay:time=5h", "kill:when=3",
        "delay:time=99999999999999999999s", "stall:time=5s", "delay:after=10", "kill:rank=4294967295"}) {
    CAPTURE(bad);
    const auto e = expect_error([&] { collx::fault_plan::parse(bad); });
    CHECK(e.kind() == errc::invalid_argument);
    CHECK(contains(e.what(), "COLLX_FAULT"));
  }
  // A rank the world lacks, or a connection fault on a transport without connections.
  collx::local_world world(2);
  auto e = expect_error([&] { collx::faulty(world.transport(0), collx::fault_plan::parse("kill:rank=2")); });
  CHECK(contains(e.what(), "rank 2 of 2"));
  e = expect_error([&] { collx::faulty(world.transport(0), collx::fault_plan::parse("drop")); });
  CHECK(contains(e.what(), "no connections"));
}

TEST_CASE("faulty<T>: delayed and jittered messages keep their order, and every result is right") {
  collx::local_world world(3);
  const auto plan = collx::fault_plan::parse("delay:time=20us,jitter=300us; slow:rank=2,time=2ms");
  test::expect_ok(test::run_ranks_over(
      3, [&](int r) { return collx::communicator(collx::faulty(world.transport(r), plan)); },
      [](collx::communicator& c) {
        const int r = c.rank();
        for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{1001}, std::size_t{40000}}) {
          for (auto a :
               {collx::algorithm::ring, collx::algorithm::tree, collx::algorithm::recursive_doubling}) {
            std::vector<double> v(n);
            for (std::size_t i = 0; i < n; ++i)
              v[i] = static_cast<double>(r * 1000 + static_cast<int>(i % 977));
            collx::options o;
            o.algo = a;
            o.segment_bytes = 4096;  // many messages per peer, so order matters
            c.all_reduce(v, reduce_op::sum, o);
            std::size_t wrong = 0;
            for (std::size_t i = 0; i < n; ++i)
              wrong += v[i] == 3000.0 + 3.0 * static_cast<double>(i % 977) ? 0 : 1;
            REQUIRE(wrong == 0);
          }
        }
      }));
}

TEST_CASE("faulty<T>: a rank that aborts mid-collective gives every other rank an error naming it") {
  collx::local_world world(3);
  const auto plan = collx::fault_plan::parse("abort:rank=1,after=5");
  collx::communicator_config cfg;
  cfg.timeout = 10s;
  const auto errors = test::run_ranks_over(
      3, [&](int r) { return collx::communicator(collx::faulty(world.transport(r), plan), cfg); },
      [](collx::communicator& c) {
        std::vector<float> v(100000, 1.0f);
        collx::options o;
        o.segment_bytes = 4096;
        for (int i = 0; i < 10; ++i) c.all_reduce(v, reduce_op::sum, o);
      });
  for (int r = 0; r < 3; ++r) {
    const auto e = test::as_error(errors[static_cast<std::size_t>(r)]);
    REQUIRE(e);
    if (r != 1) CHECK((e->peer() == 1 || contains(e->what(), "rank 1 aborted")));
  }
}

// ---- the flight recorder (core/recorder.hpp) ----

namespace {

// A fresh directory under /tmp, removed with what it holds when it goes.
struct temp_dir {
  std::string path;
  temp_dir() {
    char name[] = "/tmp/collx-trace-XXXXXX";
    REQUIRE(::mkdtemp(name) != nullptr);
    path = name;
  }
  ~temp_dir() { std::filesystem::remove_all(path); }
  std::vector<std::string> files() const {
    std::vector<std::string> v;
    for (const auto& f : std::filesystem::directory_iterator(path)) v.push_back(f.path().string());
    std::sort(v.begin(), v.end());
    return v;
  }
};

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::size_t occurrences(const std::string& s, const std::string& needle) {
  std::size_t n = 0;
  for (auto at = s.find(needle); at != std::string::npos; at = s.find(needle, at + 1)) ++n;
  return n;
}

}  // namespace

TEST_CASE("flight recorder: 10,000 calls keep the last N, oldest first, each done") {
  temp_dir dir;
  collx::communicator_config cfg;
  cfg.trace_entries = 64;
  test::expect_ok(test::run_ranks(
      3,
      [&](collx::communicator& c) {
        std::vector<std::int32_t> v(1, c.rank());
        for (int i = 0; i < 10000; ++i) c.all_reduce(v, reduce_op::max);
        const std::string text = read_text(c.dump_trace(dir.path));
        INFO(text.substr(0, 400));
        CHECK(contains(text, "\"rank\": " + std::to_string(c.rank()) + ", \"size\": 3,"));
        CHECK(contains(text, "\"calls\": 10000, \"capacity\": 64, \"error_kind\": null, \"error\": null"));
        CHECK(occurrences(text, "{\"seq\": ") == 64);
        CHECK(occurrences(text, "\"state\": \"done\"") == 64);
        // Oldest first: calls 9936 to 9999, in order.
        const auto first =
            text.find("{\"seq\": 9936, \"coll\": \"all_reduce\", \"type\": \"i32\", \"op\": \"max\"");
        const auto last = text.find("{\"seq\": 9999, ");
        CHECK(first != std::string::npos);
        CHECK(last != std::string::npos);
        CHECK(first < last);
        CHECK(!contains(text, "{\"seq\": 9935,"));
      },
      cfg));
  CHECK(dir.files().size() == 3);
}

TEST_CASE("flight recorder: a failed call writes every rank's file, whole, with the error and the call") {
  temp_dir dir;
  collx::communicator_config cfg;
  cfg.timeout = 20s;
  cfg.trace_dir = dir.path;
  const auto errors = test::run_ranks(
      3,
      [](collx::communicator& c) {
        std::vector<float> v(8, 1.0f);
        c.all_reduce(v, reduce_op::sum);
        std::vector<float> w(c.rank() == 2 ? 9 : 8, 1.0f);
        c.all_reduce(w, reduce_op::sum);  // rank 2's count differs: a mismatch everywhere
      },
      cfg);
  for (const auto& e : errors) REQUIRE(test::as_error(e));
  const auto files = dir.files();
  REQUIRE(files.size() == 3);
  for (int r = 0; r < 3; ++r) {
    const std::string& f = files[static_cast<std::size_t>(r)];
    INFO(f);
    CHECK(contains(f, "/collx-trace.rank" + std::to_string(r) + "."));
    CHECK(f.ends_with(".json"));  // renamed into place: no .tmp left
    const std::string text = read_text(f);
    CHECK(contains(text, "\"reason\": \"error\""));
    CHECK(contains(text, "\"calls\": 2,"));
    CHECK(contains(
        text, "\"error_kind\": \"mismatch\", \"error\": \"collx: all_reduce on rank " + std::to_string(r)));
    CHECK(contains(text, "{\"seq\": 0, \"coll\": \"all_reduce\", \"type\": \"f32\", \"op\": \"sum\""));
    CHECK(contains(text, "\"count\": " + std::string(r == 2 ? "9" : "8") + ", \"bytes\": "));
    CHECK(occurrences(text, "\"state\": \"done\"") == 1);
    CHECK(occurrences(text, "\"state\": \"failed\"") == 1);
    CHECK(text.ends_with("}\n"));
  }
}

TEST_CASE("flight recorder: off with COLLX_TRACE_ENTRIES=0, strings escaped for JSON") {
  collx::communicator_config cfg;
  cfg.trace_entries = 0;
  test::expect_ok(test::run_ranks(
      1, [&](collx::communicator& c) { CHECK_THROWS_AS(c.dump_trace("/tmp"), collx::error); }, cfg));
  CHECK(collx::detail::json_quoted("a\"b\\c\n\x01") == "\"a\\\"b\\\\c\\u000a\\u0001\"");
}
