// The routed transport with its ranks as threads of one process: nodes named per rank,
// shared memory between the ranks of a node and tcp (loopback) across, built the way
// init_from_env builds it for a job that spans nodes. What crosses which route is
// counted; results are checked against the independent reference; errors from the
// shared-memory route name the job's ranks. (Across processes and emulated hosts:
// tests/multiprocess and tests/netns.)

#include <filesystem>
#include <random>
#include <stdexcept>

#include <collx/launch/init.hpp>

#include "common.hpp"
#include "reference.hpp"

using namespace collx;
using namespace std::chrono_literals;

namespace {

using routed = routed_transport<shm_transport, tcp_transport>;

// A job of ids.size() ranks; rank r lives on node ids[r]. Each rank's route counters
// are kept here when its communicator is made.
struct job {
  std::vector<std::string> ids;
  std::string name;
  std::string dir;
  std::vector<std::shared_ptr<const route_counters>> counters;

  explicit job(std::vector<std::string> node_ids) : ids(std::move(node_ids)) {
    std::random_device rd;
    name = "test-routed-" + std::to_string(::getpid()) + "-" + std::to_string(rd());
    dir = (std::filesystem::temp_directory_path() / ("collx-" + name)).string();
    counters.resize(ids.size());
  }
  ~job() { std::filesystem::remove_all(dir); }
  job(const job&) = delete;
  job& operator=(const job&) = delete;

  int size() const { return static_cast<int>(ids.size()); }

  communicator make(int r) {
    auto st = std::make_shared<file_store>(dir);
    launch_info li;
    li.rank = r;
    li.size = size();
    li.store_dir = dir;
    communicator_config cfg;
    cfg.timeout = 30s;
    prefix_store keys(*st, "collx");
    const node_layout at = node_layout::of(ids, r);
    cfg.node_of = at.node_of();
    routed t = detail::routed_over(keys, li, at, cfg, name, detail::tcp_across{});
    counters[static_cast<std::size_t>(r)] = t.counters();
    return communicator(std::move(t), cfg, st);
  }

  // Runs f on every rank; a rank's communicator is closed only after every rank is done.
  std::vector<std::exception_ptr> run(const std::function<void(communicator&)>& f) {
    return test::run_ranks_over(
        size(), [this](int r) { return make(r); },
        [&](communicator& c) {
          std::exception_ptr e;
          try {
            f(c);
          } catch (...) {
            e = std::current_exception();
          }
          file_store(dir).barrier("done", size(), 30s);
          if (e) std::rethrow_exception(e);
        });
  }
};

// Throws, naming the first wrong element, unless got[i] == want(i) for every i.
template <class Want>
void expect_all(const std::string& where, const std::vector<double>& got, Want&& want) {
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (got[i] != want(i)) {
      throw std::runtime_error(where + ": [" + std::to_string(i) + "] = " + std::to_string(got[i]) +
                               ", expected " + std::to_string(want(i)));
    }
  }
}

std::vector<double> inputs(int r, std::size_t n) {
  std::vector<double> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = test::input(r, i);
  return v;
}

// all_reduce, all_gather, reduce_scatter, broadcast and reduce with `algo` at count n,
// out of place, checked against the reference on every rank.
void checked_calls(communicator& c, algorithm algo, std::size_t n) {
  const int r = c.rank();
  const int p = c.size();
  const auto up = static_cast<std::size_t>(p);
  options o;
  o.algo = algo;
  const bool any = algo == algorithm::automatic;
  const std::string where =
      std::string(to_string(algo)) + " n=" + std::to_string(n) + " rank " + std::to_string(r);
  if (any || implements(algo, collective::all_reduce)) {
    std::vector<double> out(n, -1);
    c.all_reduce(inputs(r, n), out, reduce_op::sum, o);
    expect_all("all_reduce " + where, out,
               [&](std::size_t i) { return test::ref_reduce(reduce_op::sum, p, i); });
  }
  if (any || implements(algo, collective::all_gather)) {
    std::vector<double> out(n * up, -1);
    c.all_gather(inputs(r, n), out, o);
    expect_all("all_gather " + where, out,
               [&](std::size_t i) { return test::input(static_cast<int>(i / n), i % n); });
  }
  if (any || implements(algo, collective::reduce_scatter)) {
    std::vector<double> out(n, -1);
    c.reduce_scatter(inputs(r, n * up), out, reduce_op::sum, o);
    const auto base = static_cast<std::size_t>(r) * n;
    expect_all("reduce_scatter " + where, out,
               [&](std::size_t i) { return test::ref_reduce(reduce_op::sum, p, base + i); });
  }
  const int root = p - 1;
  if (any || implements(algo, collective::broadcast)) {
    std::vector<double> v = r == root ? inputs(root, n) : std::vector<double>(n, -1);
    c.broadcast(v, root, o);
    expect_all("broadcast " + where, v, [&](std::size_t i) { return test::input(root, i); });
  }
  if (any || implements(algo, collective::reduce)) {
    std::vector<double> out(n, -1);
    c.reduce(inputs(r, n), out, reduce_op::sum, root, o);
    if (r == root) {
      expect_all("reduce " + where, out,
                 [&](std::size_t i) { return test::ref_reduce(reduce_op::sum, p, i); });
    }
  }
}

}  // namespace

TEST_CASE("2 nodes x 2: a flat ring all-reduce carries its intra-node half over shared memory") {
  job j({"a", "a", "b", "b"});
  const std::size_t n = 100'003;
  test::expect_ok(j.run([&](communicator& c) {
    std::vector<double> out(n, -1);
    options o;
    o.algo = algorithm::ring;
    c.all_reduce(inputs(c.rank(), n), out, reduce_op::sum, o);
    expect_all("all_reduce", out, [](std::size_t i) { return test::ref_reduce(reduce_op::sum, 4, i); });
  }));
  // The ring sends r -> r+1: 0->1 and 2->3 stay inside a node, 1->2 and 3->0 cross.
  std::uint64_t near = 0, far = 0;
  for (int r = 0; r < 4; ++r) {
    const auto& k = *j.counters[static_cast<std::size_t>(r)];
    INFO("rank " << r << ": near " << k.near_bytes << " B, far " << k.far_bytes << " B");
    if (r % 2 == 0) {
      CHECK(k.near_bytes > 0);
      CHECK(k.far_bytes == 0);
    } else {
      CHECK(k.near_bytes == 0);
      CHECK(k.far_bytes > 0);
    }
    near += k.near_bytes;
    far += k.far_bytes;
  }
  // A ring all-reduce sends 2(p-1)/p of the buffer from each rank: half of it near.
  CHECK(near == far);
  CHECK(near + far >= 4 * 2 * 3 * n * sizeof(double) / 4);
}

TEST_CASE("unequal (3+2) and interleaved nodes: the collectives match the reference, ring and automatic") {
  for (const auto& ids :
       {std::vector<std::string>{"a", "a", "a", "b", "b"}, std::vector<std::string>{"a", "b", "a", "b", "a"},
        std::vector<std::string>{"a", "b", "b"}}) {
    job j(ids);
    CAPTURE(j.size());
    CAPTURE(ids[1]);
    test::expect_ok(j.run([](communicator& c) {
      for (algorithm a : {algorithm::ring, algorithm::automatic, algorithm::tree, algorithm::hierarchical}) {
        for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{1001}, std::size_t{70'001}}) {
          checked_calls(c, a, n);
        }
      }
    }));
    for (int r = 0; r < j.size(); ++r) {
      const auto& k = *j.counters[static_cast<std::size_t>(r)];
      CHECK(k.far_bytes > 0);  // every rank has a peer off its node and the ring crosses
    }
  }
}

TEST_CASE("a mismatch found on the shared-memory route names the job's ranks, and every rank fails") {
  // Node 0 = {0, 3}, node 1 = {1, 2}: ring 1 -> 2 is inside node 1, where rank 1 is
  // member 0 of the shared memory. Rank 1 calls with another count.
  job j({"b", "a", "a", "b"});
  const auto errors = j.run([](communicator& c) {
    const std::size_t n = c.rank() == 1 ? 64 : 65;
    std::vector<double> v(n, 1.0);
    options o;
    o.algo = algorithm::ring;
    c.all_reduce(v, reduce_op::sum, o);
  });
  for (int r = 0; r < 4; ++r) {
    const auto e = test::as_error(errors[static_cast<std::size_t>(r)]);
    REQUIRE_MESSAGE(e.has_value(), "rank " << r << " succeeded");
    CHECK_MESSAGE(e->kind() == errc::mismatch, "rank " << r << ": " << e->what());
  }
  const auto e2 = test::as_error(errors[2]);
  INFO(e2->what());
  CHECK(std::string(e2->what()).find("peer 1 ") != std::string::npos);
  CHECK(std::string(e2->what()).find("peer 0 ") == std::string::npos);
}

TEST_CASE("tcp_options::reach: a peer left out is never connected, and an operation with it is refused") {
  job j({"a", "a", "b"});
  const auto errors = j.run([](communicator& c) { c.barrier(); });
  test::expect_ok(errors);
  // The routed transport's far route refuses a near peer outright.
  auto st = std::make_shared<file_store>(j.dir + "-reach");
  std::vector<std::exception_ptr> errs(2);
  std::vector<std::thread> ts;
  for (int r = 0; r < 2; ++r) {
    ts.emplace_back([&, r] {
      try {
        tcp_options to;
        to.timeout = 10s;
        to.reach = {false, false};
        tcp_transport t(*st, r, 2, "127.0.0.1", to);
        std::vector<std::byte> b(8);
        tcp_transport::op o;
        t.send(1 - r, envelope{}, b, o);
      } catch (...) {
        errs[static_cast<std::size_t>(r)] = std::current_exception();
      }
    });
  }
  for (auto& t : ts) t.join();
  std::filesystem::remove_all(j.dir + "-reach");
  for (const auto& e : errs) {
    const auto x = test::as_error(e);
    REQUIRE(x.has_value());
    CHECK(x->kind() == errc::invalid_argument);
    CHECK(std::string(x->what()).find("does not reach peer") != std::string::npos);
  }
}

// The hierarchical broadcast and reduce from `root`: every rank ends with the root's
// buffer; the root with the sum, the other ranks' outputs untouched.
void hierarchical_rooted_calls(communicator& c, std::size_t n, bool in_place, int root) {
  const int r = c.rank();
  options o;
  o.algo = algorithm::hierarchical;
  const std::string where = "p=" + std::to_string(c.size()) + " n=" + std::to_string(n) +
                            (in_place ? " in place" : "") + " root " + std::to_string(root) + " rank " +
                            std::to_string(r);
  std::vector<double> out(n, -1);
  if (in_place) {
    if (r == root) out = inputs(r, n);
    c.broadcast(std::span<double>(out), root, o);
  } else {
    c.broadcast(inputs(r, n), out, root, o);
  }
  expect_all("hierarchical broadcast " + where, out, [&](std::size_t i) { return test::input(root, i); });
  std::vector<double> sum(n, -1);
  if (in_place) {
    sum = inputs(r, n);
    c.reduce(std::span<double>(sum), reduce_op::sum, root, o);
  } else {
    c.reduce(inputs(r, n), sum, reduce_op::sum, root, o);
  }
  expect_all("hierarchical reduce " + where, sum, [&](std::size_t i) {
    if (r == root) return test::ref_reduce(reduce_op::sum, c.size(), i);
    return in_place ? test::input(r, i) : -1.0;
  });
}

// The hierarchical all-reduce, all-gather and reduce-scatter at count n, in place or out,
// checked against the reference; the caller's other blocks of an in-place reduce-scatter
// must stay as they were.
void hierarchical_calls(communicator& c, std::size_t n, bool in_place) {
  const int r = c.rank();
  const int p = c.size();
  const auto up = static_cast<std::size_t>(p);
  const auto mine = static_cast<std::size_t>(r) * n;
  options o;
  o.algo = algorithm::hierarchical;
  const std::string where = "p=" + std::to_string(p) + " n=" + std::to_string(n) +
                            (in_place ? " in place" : "") + " rank " + std::to_string(r);
  std::vector<double> out(n, -1);
  if (in_place) {
    out = inputs(r, n);
    c.all_reduce(out, reduce_op::sum, o);
  } else {
    c.all_reduce(inputs(r, n), out, reduce_op::sum, o);
  }
  expect_all("hierarchical all_reduce " + where, out,
             [&](std::size_t i) { return test::ref_reduce(reduce_op::sum, p, i); });
  std::vector<double> all(n * up, -1);
  if (in_place) {
    std::copy_n(inputs(r, n).begin(), n, all.begin() + static_cast<std::ptrdiff_t>(mine));
    c.all_gather(std::span<double>(all), o);
  } else {
    c.all_gather(inputs(r, n), all, o);
  }
  expect_all("hierarchical all_gather " + where, all,
             [&](std::size_t i) { return test::input(static_cast<int>(i / n), i % n); });
  if (in_place) {
    all = inputs(r, n * up);
    c.reduce_scatter(std::span<double>(all), reduce_op::sum, o);
    expect_all("hierarchical reduce_scatter " + where, all, [&](std::size_t i) {
      return i / n == static_cast<std::size_t>(r) ? test::ref_reduce(reduce_op::sum, p, i)
                                                  : test::input(r, i);
    });
  } else {
    c.reduce_scatter(inputs(r, n * up), out, reduce_op::sum, o);
    expect_all("hierarchical reduce_scatter " + where, out,
               [&](std::size_t i) { return test::ref_reduce(reduce_op::sum, p, mine + i); });
  }
  for (int root = 0; root < p; ++root) hierarchical_rooted_calls(c, n, in_place, root);
}

TEST_CASE(
    "hierarchical all-reduce, all-gather, reduce-scatter, broadcast and reduce on nodes of threads (local "
    "transport): every shape, count and root matches") {
  const std::vector<std::vector<int>> shapes = {{0, 0, 1, 1},          {0, 0, 1, 1, 2, 2},
                                                {0, 1, 0, 1, 0, 1},    {0, 0, 0, 1, 1},
                                                {3, 3, 3, 7, 7, 7, 7}, {0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3}};
  for (const auto& node_of : shapes) {
    const int p = static_cast<int>(node_of.size());
    CAPTURE(p);
    communicator_config cfg;
    cfg.node_of = node_of;
    cfg.segment_bytes = 4096;  // several segments per shard
    test::expect_ok(test::run_ranks(
        p,
        [&](communicator& c) {
          for (std::size_t n :
               {std::size_t{0}, std::size_t{1}, std::size_t{5}, std::size_t{1001}, std::size_t{70'001}}) {
            for (bool in_place : {false, true}) hierarchical_calls(c, n, in_place);
          }
        },
        cfg));
  }
}

TEST_CASE("the automatic choice on nodes prices links: hierarchical for large calls across slow links") {
  const cost_params intra{2e-6, 1.0 / 8e9, 1.0 / 16e9};
  const cost_params inter{50e-6, 1.0 / 125e6, 1.0 / 16e9};  // 1 Gbit/s
  const std::vector<int> two_by_two = {0, 0, 1, 1};
  const auto ns = algorithms::node_shape::of(two_by_two, inter);
  CHECK(ns.nodes == 2);
  CHECK(ns.per_node == 2);
  CHECK(algorithms::choose(collective::all_reduce, 4, 64 << 20, intra, 0, ns) == algorithm::hierarchical);
  // All-gather and reduce-scatter of 16 MiB blocks: one block per rank crosses, not three.
  CHECK(algorithms::choose(collective::all_gather, 4, 16 << 20, intra, 0, ns) == algorithm::hierarchical);
  CHECK(algorithms::choose(collective::reduce_scatter, 4, 16 << 20, intra, 0, ns) == algorithm::hierarchical);
  // One node: the flat choice, never the hierarchy (it would only add a copy).
  CHECK(algorithms::choose(collective::all_reduce, 4, 64 << 20, intra) != algorithm::hierarchical);
  // 8,192 nodes of 8: still the hierarchy for 1 GiB.
  std::vector<int> big;
  for (int r = 0; r < 8192 * 8; ++r) big.push_back(r / 8);
  CHECK(algorithms::choose(collective::all_reduce, 8192 * 8, 1 << 30, intra, 0,
                           algorithms::node_shape::of(big, inter)) == algorithm::hierarchical);
}
