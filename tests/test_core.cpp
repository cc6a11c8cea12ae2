// Element types, reductions, errors and requests.

#include <doctest/doctest.h>

#include <bit>
#include <cmath>
#include <collx/calibrate.hpp>
#include <collx/collx.hpp>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <thread>

using collx::bfloat16;
using collx::dtype;
using collx::half;
using collx::reduce_op;

TEST_CASE("half converts exactly where it can and rounds to nearest even") {
  CHECK(half(1.0f).bits == 0x3c00);
  CHECK(half(-2.0f).bits == 0xc000);
  CHECK(half(65504.0f).bits == 0x7bff);  // largest finite
  CHECK(half(65520.0f).bits == 0x7c00);  // rounds up to inf
  CHECK(half(std::numeric_limits<float>::infinity()).bits == 0x7c00);
  CHECK(std::isnan(static_cast<float>(half(std::nanf("")))));
  CHECK(half(5.9604644775390625e-8f).bits == 0x0001);  // smallest subnormal
  CHECK(half(2.98e-8f).bits == 0x0000);                // below half of it: zero
  CHECK(half(1.0f + 1.0f / 2048).bits == 0x3c00);      // tie: to even (down)
  CHECK(half(1.0f + 3.0f / 2048).bits == 0x3c02);      // tie: to even (up)
  // Every finite half survives a round trip through float.
  for (std::uint32_t b = 0; b < 0x10000; ++b) {
    const auto h = half::from_bits(static_cast<std::uint16_t>(b));
    const float f = static_cast<float>(h);
    if (std::isnan(f)) continue;
    REQUIRE(half(f).bits == h.bits);
  }
}

TEST_CASE("bfloat16 rounds to nearest even and keeps NaN a NaN") {
  CHECK(bfloat16(1.0f).bits == 0x3f80);
  CHECK(bfloat16(std::bit_cast<float>(0x3f808000u)).bits == 0x3f80);  // tie, even stays
  CHECK(bfloat16(std::bit_cast<float>(0x3f818000u)).bits == 0x3f82);  // tie, odd rounds up
  CHECK(std::isnan(static_cast<float>(bfloat16(std::nanf("")))));
  for (std::uint32_t b = 0; b < 0x10000; ++b) {
    const auto h = bfloat16::from_bits(static_cast<std::uint16_t>(b));
    const float f = static_cast<float>(h);
    if (std::isnan(f)) continue;
    REQUIRE(bfloat16(f).bits == h.bits);
  }
}

TEST_CASE("dtype sizes, names and the avg restriction") {
  CHECK(collx::size_of(dtype::i8) == 1);
  CHECK(collx::size_of(dtype::bf16) == 2);
  CHECK(collx::size_of(dtype::i32) == 4);
  CHECK(collx::size_of(dtype::f64) == 8);
  CHECK(collx::to_string(dtype::bf16) == "bf16");
  CHECK(collx::dtype_v<half> == dtype::f16);
  for (auto t : collx::all_dtypes) {
    CHECK(collx::supports(t, reduce_op::sum));
    CHECK(collx::supports(t, reduce_op::avg) == collx::is_floating(t));
  }
}

namespace {
template <class T>
T reduce_one(reduce_op op, T a, T b) {
  T out{};
  collx::reduce(collx::dtype_v<T>, op, &out, &a, &b, 1);
  return out;
}
}  // namespace

TEST_CASE("reductions compute each operation, wrapping integers instead of overflowing") {
  CHECK(reduce_one<float>(reduce_op::sum, 1.5f, 2.25f) == 3.75f);
  CHECK(reduce_one<double>(reduce_op::prod, -1.5, 4.0) == -6.0);
  CHECK(reduce_one<std::int32_t>(reduce_op::min, -3, 2) == -3);
  CHECK(reduce_one<std::int64_t>(reduce_op::max, -3, 2) == 2);
  CHECK(reduce_one<std::int8_t>(reduce_op::sum, 100, 100) == static_cast<std::int8_t>(-56));
  CHECK(reduce_one<std::uint8_t>(reduce_op::prod, 16, 17) == static_cast<std::uint8_t>(16));
  CHECK(reduce_one<std::int32_t>(reduce_op::sum, std::numeric_limits<std::int32_t>::max(), 1) ==
        std::numeric_limits<std::int32_t>::min());
  CHECK(static_cast<float>(reduce_one<half>(reduce_op::sum, half(1.0f), half(0.5f))) == 1.5f);
  CHECK(static_cast<float>(reduce_one<bfloat16>(reduce_op::max, bfloat16(-1.0f), bfloat16(3.0f))) == 3.0f);
  CHECK(static_cast<float>(reduce_one<half>(reduce_op::min, half(-1.0f), half(3.0f))) == -1.0f);
}

TEST_CASE("reduce works on long runs and in place, and finish_avg divides") {
  std::vector<float> a(1001), b(1001);
  for (std::size_t i = 0; i < a.size(); ++i) {
    a[i] = static_cast<float>(i);
    b[i] = 2.0f * static_cast<float>(i);
  }
  collx::reduce(dtype::f32, reduce_op::sum, a.data(), a.data(), b.data(), a.size());
  for (std::size_t i = 0; i < a.size(); ++i) REQUIRE(a[i] == 3.0f * static_cast<float>(i));
  collx::finish_avg(dtype::f32, a.data(), a.size(), 3);
  for (std::size_t i = 0; i < a.size(); ++i) REQUIRE(a[i] == static_cast<float>(i));
  std::vector<half> h(5, half(3.0f));
  collx::finish_avg(dtype::f16, h.data(), h.size(), 2);
  CHECK(static_cast<float>(h[4]) == 1.5f);
}

TEST_CASE("the envelope's wire form carries every field, and every field changes the signature") {
  collx::envelope e;
  e.seq = 0x0102030405060708ull;
  e.count = 1000003;
  e.segment = 4099;
  e.tag = 77;
  e.coll = collx::collective::reduce_scatter;
  e.type = dtype::bf16;
  e.op = reduce_op::max;
  e.algo = collx::algorithm::tree;
  const auto w = collx::envelope_wire::of(e);
  std::byte bytes[sizeof w];
  std::memcpy(bytes, &w, sizeof w);
  collx::envelope_wire back;
  std::memcpy(&back, bytes, sizeof back);
  CHECK(back.decoded() == e);
  // One field at a time differs: the signature must differ too (the peer executor's
  // only check that ranks made the same call).
  const std::uint64_t sig = collx::signature(e);
  CHECK(sig != 0);
  auto differs = [&](auto change) {
    collx::envelope f = e;
    change(f);
    return collx::signature(f) != sig && !(f == e);
  };
  CHECK(differs([](auto& f) { ++f.seq; }));
  CHECK(differs([](auto& f) { ++f.count; }));
  CHECK(differs([](auto& f) { ++f.segment; }));
  CHECK(differs([](auto& f) { ++f.tag; }));
  CHECK(differs([](auto& f) { f.coll = collx::collective::all_gather; }));
  CHECK(differs([](auto& f) { f.type = dtype::f16; }));
  CHECK(differs([](auto& f) { f.op = reduce_op::min; }));
  CHECK(differs([](auto& f) { f.algo = collx::algorithm::ring; }));
}

TEST_CASE("collx::error is a system_error that names the call, rank and peer") {
  const collx::error e(collx::errc::timeout, "all_reduce", 2, 3, "waited too long");
  const std::system_error& base = e;
  CHECK(base.code() == collx::errc::timeout);
  CHECK(base.code().category().name() == std::string("collx"));
  CHECK(e.kind() == collx::errc::timeout);
  CHECK(e.rank() == 2);
  CHECK(e.peer() == 3);
  CHECK(e.collective() == "all_reduce");
  const std::string what = e.what();
  CHECK(what.find("all_reduce on rank 2 (peer 3): waited too long") != std::string::npos);
}

TEST_CASE("request: move-only, test, wait_for and wait rethrow the operation's error") {
  static_assert(!std::is_copy_constructible_v<collx::request>);
  static_assert(std::is_nothrow_move_constructible_v<collx::request>);
  auto state = std::make_shared<collx::detail::request_state>();
  collx::request r(state);
  CHECK(r.valid());
  CHECK_FALSE(r.test());
  CHECK_FALSE(r.wait_for(std::chrono::milliseconds(5)));
  std::thread t([state] {
    state->complete(std::make_exception_ptr(collx::error(collx::errc::peer_failure, "x", 0, 1, "gone")));
  });
  CHECK_THROWS_AS(r.wait(), collx::error);
  t.join();
  CHECK_FALSE(r.valid());

  auto ok = std::make_shared<collx::detail::request_state>();
  collx::request r2(ok);
  ok->complete(nullptr);
  CHECK(r2.wait_for(std::chrono::seconds(1)));
  collx::request empty;
  CHECK(empty.test());
}

TEST_CASE("COLLX_TIMEOUT overrides the default timeout, and malformed values are ignored") {
  using namespace std::chrono_literals;
  ::setenv("COLLX_TIMEOUT", "2.5", 1);
  CHECK(collx::detail::timeout_from_env(7ms) == 2500ms);
  ::setenv("COLLX_TIMEOUT", "soon", 1);
  CHECK(collx::detail::timeout_from_env(7ms) == 7ms);
  ::setenv("COLLX_TIMEOUT", "-1", 1);
  CHECK(collx::detail::timeout_from_env(7ms) == 7ms);
  ::unsetenv("COLLX_TIMEOUT");
  CHECK(collx::detail::timeout_from_env(7ms) == 7ms);
}

TEST_CASE("a calibrated model file is what the automatic choice uses, and a bad one is ignored") {
  const std::string path = "collx_test_model.txt";
  REQUIRE(collx::write_model(path, {3e-6, 2e-10, 1e-10}));
  ::setenv("COLLX_MODEL_FILE", path.c_str(), 1);
  CHECK(collx::model_file_path() == path);
  const collx::communicator_config cfg;
  CHECK(cfg.model.alpha == doctest::Approx(3e-6));
  CHECK(cfg.model.beta == doctest::Approx(2e-10));
  CHECK(cfg.model.gamma == doctest::Approx(1e-10));
  {
    std::ofstream f(path);
    f << "fast very fast\n";
  }
  CHECK_FALSE(collx::read_model(path).has_value());
  CHECK(collx::communicator_config{}.model.alpha == collx::local_transport_model.alpha);
  ::unsetenv("COLLX_MODEL_FILE");
  std::remove(path.c_str());
}
