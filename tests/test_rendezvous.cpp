// The rendezvous stores, and the process transports driven from threads of one process
// (each rank its own endpoint, exactly as in separate processes): the store's protocol,
// its bounded waits, and the transports' envelope checks and failure paths.

#include <doctest/doctest.h>

#include <collx/launch/init.hpp>

#include "skip.hpp"

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <future>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <vector>

using namespace collx;
using namespace std::chrono_literals;

namespace {

std::uint16_t free_port() {
  auto fd = detail::listen_on("127.0.0.1", "0");
  return static_cast<std::uint16_t>(
      std::stoi(detail::split_endpoint(detail::local_endpoint(fd.get())).second));
}

std::string temp_dir() {
  std::random_device rd;
  return (std::filesystem::temp_directory_path() / ("collx-test-store-" + std::to_string(rd()))).string();
}

// Runs f(rank) on p threads, rethrowing the first failure.
void on_ranks(int p, const std::function<void(int)>& f) {
  std::vector<std::future<void>> done;
  for (int r = 0; r < p; ++r) done.push_back(std::async(std::launch::async, f, r));
  for (auto& d : done) d.get();
}

void exercise(const std::function<std::unique_ptr<store>(int)>& make, int p) {
  on_ranks(p, [&](int r) {
    auto st = make(r);
    st->set("k/" + std::to_string(r),
            std::string("value of ") + std::to_string(r) + std::string(1, '\0') + "!");
    for (int q = 0; q < p; ++q) {
      const auto v = st->get("k/" + std::to_string(q), 10s);
      CHECK(v == std::string("value of ") + std::to_string(q) + std::string(1, '\0') + "!");
    }
    st->add("counter", r + 1);
    st->barrier("b1", p, 10s);
    CHECK(st->add("counter", 0) == p * (p + 1) / 2);
    st->barrier("b2", p, 10s);
  });
}

}  // namespace

TEST_CASE("tcp_store: set, get that waits, add and barrier across 5 clients") {
  const auto port = free_port();
  std::shared_ptr<store> server;
  exercise(
      [&](int r) -> std::unique_ptr<store> {
        return std::make_unique<tcp_store>("127.0.0.1", port, r == 0, 10s);
      },
      5);
}

namespace {

// Some containers have no IPv6, not even loopback: the IPv6 cases then report themselves
// skipped (tests/skip.hpp). Empty when there is one, else why not.
std::string no_ipv6_loopback() {
  try {
    (void)detail::listen_on("::1", "0");
    return {};
  } catch (const error& e) {
    return std::string("no IPv6 loopback here (") + e.what() + ")";
  }
}

}  // namespace

TEST_CASE("tcp_store over IPv6 loopback") {
  if (const auto why = no_ipv6_loopback(); !why.empty()) COLLX_SKIP_CASE(why);
  const auto port = free_port();
  tcp_store s("::1", port, true, 5s);
  s.set("x", "y");
  CHECK(s.get("x", 1s) == "y");
}

TEST_CASE("file_store: set, get that waits, add and barrier across 4 clients") {
  const auto dir = temp_dir();
  exercise([&](int) -> std::unique_ptr<store> { return std::make_unique<file_store>(dir); }, 4);
  std::filesystem::remove_all(dir);
}

TEST_CASE("a prefixed view keeps its keys under its prefix, nests, and works as a store across 3 clients") {
  const auto dir = temp_dir();
  {
    file_store under(dir);
    prefix_store job(under, "job");
    prefix_store notes = job.view("stuck/7");
    job.set("nonce", "42");
    notes.set("0", "1");
    CHECK(under.get("job/nonce", 1s) == "42");
    CHECK(under.get("job/stuck/7/0", 1s) == "1");
    CHECK(job.get("stuck/7/0", 1s) == "1");
    CHECK(job.add("n", 2) == 2);
    CHECK(under.add("job/n", 1) == 3);
    // Another prefix sees none of it.
    prefix_store other(under, "other");
    CHECK_THROWS_AS(other.get("nonce", 50ms), error);
  }
  exercise(
      [&](int) -> std::unique_ptr<store> {
        struct owning_view : store {
          explicit owning_view(const std::string& d) : under(d), view(under, "a/b") {}
          void set(std::string_view k, std::string_view v) override { view.set(k, v); }
          std::string get(std::string_view k, std::chrono::milliseconds t) override { return view.get(k, t); }
          std::int64_t add(std::string_view k, std::int64_t d) override { return view.add(k, d); }
          file_store under;
          prefix_store view;
        };
        return std::make_unique<owning_view>(dir);
      },
      3);
  std::filesystem::remove_all(dir);
}

// The failing ranks' notes (communicator::compare_notes) as make_communicator keeps them:
// rank 2 of 4 follows them from the peer it blames.
TEST_CASE("failure notes name the rank where a chain of failures began, or the one stuck or gone") {
  const auto dir = temp_dir();
  auto under = std::make_shared<file_store>(dir);
  prefix_store keys(*under, "job/stuck/1");
  using blame = failure_notes::blame;
  detail::store_notes r0(under, keys, 0, 4), r1(under, keys, 1, 4), r2(under, keys, 2, 4),
      r3(under, keys, 3, 4);
  const auto soon = [] { return detail::clock::now() + 100ms; };

  SUBCASE("a peer that lost another, which failed on its own") {
    r1.note(1, blame::began);
    r0.note(1, blame::lost);
    r2.note(0, blame::lost);
    const auto [culprit, story] = r2.follow(0, soon());
    CHECK(culprit == 1);
    CHECK(story == "; peer 0 had itself lost peer 1, which failed on its own: the failure began at peer 1");
  }
  SUBCASE("a chain of waits down to a rank that noted nothing: the one stuck") {
    r0.note(3, blame::waiting);
    r2.note(0, blame::waiting);
    const auto [culprit, story] = r2.follow(0, soon());
    CHECK(culprit == 3);
    CHECK(story.starts_with("; peer 0 was itself waiting for peer 3, which noted nothing within "));
    CHECK(story.ends_with(" ms: peer 3 is the one stuck"));
  }
  SUBCASE("a peer that lost a rank that noted nothing: that rank is gone") {
    r0.note(3, blame::lost);
    const auto [culprit, story] = r2.follow(0, soon());
    CHECK(culprit == 3);
    CHECK(story.ends_with("peer 3 is gone"));
  }
  SUBCASE("nothing to add: the peer began it, noted nothing, a cycle, or a note of nonsense") {
    r0.note(0, blame::began);
    CHECK(r2.follow(0, soon()) == std::pair<int, std::string>{0, ""});
    CHECK(r2.follow(1, soon()) == std::pair<int, std::string>{1, ""});
    r1.note(3, blame::waiting);
    r3.note(1, blame::waiting);
    CHECK(r2.follow(1, soon()) == std::pair<int, std::string>{1, ""});
    keys.set("3", "7 lost");  // no rank 7 in a job of 4
    r1.note(3, blame::lost);
    CHECK(r2.follow(1, soon()) == std::pair<int, std::string>{1, ""});
  }
  SUBCASE("a store that is gone adds nothing and throws nothing") {
    std::filesystem::remove_all(dir);
    r0.note(1, blame::lost);  // the file store's directory is gone: the write fails
    CHECK(r2.follow(0, soon()) == std::pair<int, std::string>{0, ""});
  }
  std::filesystem::remove_all(dir);
}

TEST_CASE("a key that never appears is a timeout error, not a hang") {
  const auto port = free_port();
  tcp_store s("127.0.0.1", port, true, 5s);
  const auto t0 = std::chrono::steady_clock::now();
  try {
    (void)s.get("never", 200ms);
    FAIL("no error");
  } catch (const error& e) {
    CHECK(e.kind() == errc::timeout);
    CHECK(std::string(e.what()).find("did every rank start") != std::string::npos);
  }
  CHECK(std::chrono::steady_clock::now() - t0 < 3s);
  const auto dir = temp_dir();
  file_store f(dir);
  CHECK_THROWS_AS((void)f.get("never", 100ms), error);
  std::filesystem::remove_all(dir);
}

TEST_CASE("a client whose server never starts fails within its timeout") {
  const auto port = free_port();
  const auto t0 = std::chrono::steady_clock::now();
  CHECK_THROWS_AS(tcp_store("127.0.0.1", port, false, 300ms), error);
  CHECK(std::chrono::steady_clock::now() - t0 < 3s);
}

namespace {

template <class Make>
void transport_roundtrip(int p, Make make, const std::string& host = "127.0.0.1") {
  auto server = std::make_shared<tcp_store>(host, 0, true, 20s);  // rank 0's, on a free port
  const auto port = server->port();
  on_ranks(p, [&](int r) {
    auto st = r == 0 ? server : std::make_shared<tcp_store>(host, port, false, 20s);
    communicator c(make(*st, r, p), {}, st);
    for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{7}, std::size_t{100003}}) {
      std::vector<double> v(n);
      for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<double>(r + 1) * static_cast<double>(i % 5);
      c.all_reduce(v, reduce_op::sum);
      for (std::size_t i = 0; i < n; ++i) REQUIRE(v[i] == p * (p + 1) / 2.0 * static_cast<double>(i % 5));
    }
    // The store is shared by the ranks' threads' transports; everyone leaves together.
    st->barrier("done", p, 20s);
  });
}

}  // namespace

TEST_CASE("tcp transport, one and three streams per peer, ranks as threads") {
  for (int streams : {1, 3}) {
    CAPTURE(streams);
    transport_roundtrip(3, [streams](store& st, int r, int p) {
      tcp_options o;
      o.streams = streams;
      o.stripe_min_bytes = 4096;
      return tcp_transport(st, r, p, "127.0.0.1", o);
    });
  }
}

TEST_CASE("tcp transport over IPv6 loopback, ranks as threads") {
  if (const auto why = no_ipv6_loopback(); !why.empty()) COLLX_SKIP_CASE(why);
  transport_roundtrip(
      3, [](store& st, int r, int p) { return tcp_transport(st, r, p, "::1"); }, "::1");
}

TEST_CASE("shm transport with small slots (messages span many), ranks as threads") {
  static std::atomic<int> job{0};
  const std::string id = "test-" + std::to_string(::getpid()) + "-" + std::to_string(job++);
  transport_roundtrip(3, [&](store& st, int r, int p) {
    shm_options o;
    o.slot_bytes = 4096;
    o.slots = 3;
    o.job_id = id;
    return shm_transport(st, r, p, o);
  });
  for (const auto& e : std::filesystem::directory_iterator("/dev/shm")) {
    CHECK(e.path().filename().string().find("collx-" + id) == std::string::npos);
  }
}

TEST_CASE("a bad launch environment is refused with a clear error") {
  ::setenv("RANK", "3", 1);
  ::setenv("WORLD_SIZE", "2", 1);
  CHECK_THROWS_AS(launch_from_env(), error);
  ::setenv("RANK", "0", 1);
  ::setenv("MASTER_ADDR", "127.0.0.1", 1);
  ::setenv("MASTER_PORT", "notaport", 1);
  CHECK_THROWS_AS(launch_from_env(), error);
  ::unsetenv("MASTER_ADDR");
  ::unsetenv("MASTER_PORT");
  ::setenv("COLLX_JOB_ID", "", 1);
  ::unsetenv("COLLX_STORE_DIR");
  CHECK_THROWS_AS(launch_from_env(), error);  // no rendezvous named at all
  ::unsetenv("RANK");
  ::unsetenv("WORLD_SIZE");
  ::unsetenv("COLLX_JOB_ID");
  CHECK(launch_from_env().launcher == "none");
}

namespace {

// A raw connection, as a stranger would make it.
detail::fd_t raw_connect(std::uint16_t port) {
  return detail::connect_to("127.0.0.1", std::to_string(port), detail::clock::now() + 2s);
}

void raw_send(const detail::fd_t& fd, const std::string& bytes) {
  detail::write_all(fd.get(), std::as_bytes(std::span(bytes.data(), bytes.size())), detail::clock::now() + 2s,
                    "the store");
}

// True when the server hung up on this connection (end of stream or reset).
bool hung_up(const detail::fd_t& fd) {
  try {
    (void)detail::read_pod<std::uint8_t>(fd.get(), detail::clock::now() + 3s, "the store");
    return false;
  } catch (const error& e) {
    return e.kind() == errc::peer_failure;
  }
}

std::string store_hello(const std::string& token) {
  std::string h(8, '\0');
  const std::uint32_t magic = detail::store_hello_magic;
  const auto len = static_cast<std::uint32_t>(token.size());
  std::memcpy(h.data(), &magic, 4);
  std::memcpy(h.data() + 4, &len, 4);
  return h + token;
}

std::string store_request(std::uint8_t cmd, std::uint32_t klen, std::uint64_t arg) {
  std::string r(1, static_cast<char>(cmd));
  r.append(reinterpret_cast<const char*>(&klen), 4);
  r.append(std::string(std::min<std::uint32_t>(klen, 16), 'k'));
  r.append(reinterpret_cast<const char*>(&arg), 8);
  return r;
}

}  // namespace

TEST_CASE("the store refuses strangers, garbage and oversized requests, and serves its job on") {
  tcp_store server("127.0.0.1", 0, true, 5s, "job-secret");
  const auto port = server.port();
  SUBCASE("a client with another token, or none, is refused with a hint") {
    tcp_store wrong("127.0.0.1", port, false, 2s, "a-guess");
    try {
      wrong.set("k", "v");
      FAIL("a client with the wrong token was served");
    } catch (const error& e) {
      CHECK(std::string(e.what()).find("COLLX_AUTH_TOKEN") != std::string::npos);
    }
    tcp_store none("127.0.0.1", port, false, 2s, "");
    CHECK_THROWS_AS((void)none.get("k", 100ms), error);
  }
  SUBCASE("garbage instead of a hello") {
    auto fd = raw_connect(port);
    raw_send(fd, std::string(64, 'x'));
    CHECK(hung_up(fd));
  }
  SUBCASE("a hello that claims a huge token") {
    auto fd = raw_connect(port);
    std::string h = store_hello("");
    const std::uint32_t huge = 1u << 31;
    std::memcpy(h.data() + 4, &huge, 4);
    raw_send(fd, h);
    CHECK(hung_up(fd));
  }
  SUBCASE("a known client that sends a huge key, a huge value or an unknown command") {
    for (const auto& req : {store_request(1, 1u << 30, 1), store_request(1, 4, std::uint64_t{1} << 40),
                            store_request(9, 4, 0)}) {
      auto fd = raw_connect(port);
      raw_send(fd, store_hello("job-secret") + req);
      CHECK(hung_up(fd));
    }
  }
  SUBCASE("add on a key that holds no number, or a number and more") {
    for (const auto& v : {std::string("x"), std::string("12\0x", 4), std::string("99999999999999999999")}) {
      tcp_store job("127.0.0.1", port, false, 2s, "job-secret");
      job.set("not-a-number", v);
      CHECK_THROWS_AS((void)job.add("not-a-number", 1), error);
    }
  }
  // Whatever came before, the job's own clients are served.
  tcp_store good("127.0.0.1", port, false, 2s, "job-secret");
  good.set("k", "v");
  CHECK(server.get("k", 1s) == "v");
  CHECK(good.add("n", 2) == 2);
}

TEST_CASE("a client that floods the store while its get waits is dropped, not buffered without bound") {
  tcp_store server("127.0.0.1", 0, true, 5s, "job-secret");
  auto fd = raw_connect(server.port());
  raw_send(fd, store_hello("job-secret") + store_request(2, 4, 60000));  // a get that waits a minute
  const std::string flood(1 << 20, 'x');
  try {
    for (std::size_t sent = 0; sent <= detail::store_max_value + (8u << 20); sent += flood.size())
      raw_send(fd, flood);
  } catch (const error&) {
    // the server hung up midway: what the test wants
  }
  CHECK(hung_up(fd));
  tcp_store good("127.0.0.1", server.port(), false, 2s, "job-secret");
  good.set("k", "v");
  CHECK(good.get("k", 1s) == "v");
}

TEST_CASE("strangers at a rank's tcp listener do not stop the job") {
  auto server = std::make_shared<tcp_store>("127.0.0.1", 0, true, 20s);
  const auto port = server->port();
  std::promise<void> knocked;
  auto knocked_f = knocked.get_future().share();
  std::vector<detail::fd_t> strangers;
  std::thread knock([&] {
    tcp_store peek("127.0.0.1", port, false, 20s);
    const auto [h, p] = detail::split_endpoint(peek.get("collx/tcp/0", 10s));
    strangers.push_back(detail::connect_to(h, p, detail::clock::now() + 2s));  // says nothing
    strangers.push_back(detail::connect_to(h, p, detail::clock::now() + 2s));
    const std::string junk(64, 'x');
    detail::write_all(strangers.back().get(), std::as_bytes(std::span(junk.data(), junk.size())),
                      detail::clock::now() + 2s, "rank 0");
    knocked.set_value();
  });
  const auto t0 = std::chrono::steady_clock::now();
  on_ranks(2, [&](int r) {
    if (r == 1) knocked_f.wait();  // rank 0 meets the strangers first
    auto st = r == 0 ? server : std::make_shared<tcp_store>("127.0.0.1", port, false, 20s);
    communicator c(tcp_transport(*st, r, 2), {}, st);
    std::vector<float> v(1001, static_cast<float>(r + 1));
    c.all_reduce(v, reduce_op::sum);
    CHECK(v[1000] == 3.0f);
    st->barrier("done", 2, 20s);
  });
  knock.join();
  CHECK(std::chrono::steady_clock::now() - t0 < 15s);
}

TEST_CASE("the store survives 600 mutated and random requests, then serves its job") {
  tcp_store server("127.0.0.1", 0, true, 5s, "job-secret");
  const auto port = server.port();
  std::mt19937 gen(20261130);
  auto byte = [&] { return static_cast<char>(gen() & 0xff); };
  const std::string valid[] = {store_request(1, 4, 3) + "abc", store_request(2, 4, 10),
                               store_request(3, 4, 1)};
  for (int i = 0; i < 600; ++i) {
    auto fd = raw_connect(port);
    std::string msg = (i % 3 == 0) ? std::string() : store_hello("job-secret");
    if (i % 2 == 0) {
      std::string r = valid[static_cast<std::size_t>(gen() % 3)];
      for (int k = 0, flips = 1 + static_cast<int>(gen() % 4); k < flips; ++k) r[gen() % r.size()] = byte();
      if (gen() % 4 == 0) r.resize(gen() % r.size());  // truncated
      msg += r;
    } else {
      const std::size_t from = msg.size();
      msg.resize(from + 1 + gen() % 64);
      for (std::size_t k = from; k < msg.size(); ++k) msg[k] = byte();
    }
    try {
      raw_send(fd, msg);
    } catch (const error&) {
      // the server may already have hung up: that is a refusal, which is fine
    }
  }
  tcp_store good("127.0.0.1", port, false, 2s, "job-secret");
  good.set("after", "the storm");
  CHECK(good.get("after", 1s) == "the storm");
}
