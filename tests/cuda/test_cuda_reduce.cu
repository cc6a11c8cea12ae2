// The reduction kernels against the host's reductions (core/reduce.hpp), bit for bit:
// every dtype and op, counts that leave a kernel no vector, a partial one and many
// blocks' worth, on aligned, equally misaligned, differently misaligned and in-place
// operands. Guard elements on both sides of the result must come back untouched.
//
// The data is NaN-free. Floats hold small integers, so sums and products are exact and
// both sides must agree exactly; a second case feeds f16 and bf16 values that do round,
// where agreement is still exact because native f16/bf16 arithmetic rounds once and the
// host's float detour cannot double-round (see cuda_reduce.cuh).
#include <doctest/doctest.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <cuda_runtime.h>

#include "collx/core/dtype.hpp"
#include "collx/core/error.hpp"
#include "collx/core/reduce.hpp"
#include "collx/exec/cuda_reduce.cuh"

namespace {

using bytes = std::vector<unsigned char>;

constexpr std::size_t counts[] = {0, 1, 7, 1000003};
constexpr std::size_t max_count = 1000003;
constexpr unsigned char guard = 0xa5;  // every byte around and under a result before a run
constexpr std::size_t lead = 16;       // bytes before element 0 of an aligned operand

void cuda_ok(cudaError_t e, const char* what) {
  INFO(what, ": ", cudaGetErrorString(e));
  REQUIRE(e == cudaSuccess);
}

// Device memory for one operand: lead guard bytes, max_count + 2 elements, a spare 16.
struct device_buffer {
  std::byte* base = nullptr;
  std::size_t size = 0;
  explicit device_buffer(std::size_t elem) : size(lead + (max_count + 2) * elem + 16) {
    cuda_ok(cudaMalloc(&base, size), "cudaMalloc");
  }
  ~device_buffer() { cudaFree(base); }
  device_buffer(const device_buffer&) = delete;
  device_buffer& operator=(const device_buffer&) = delete;
};

// Deterministic, NaN-free element bits for element i of operand `which`.
void fill(collx::dtype t, bytes& out, std::size_t n, unsigned which, bool rounding) {
  using collx::dtype;
  const std::size_t sz = collx::size_of(t);
  out.assign(n * sz, 0);
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint64_t h = (i + 1) * 0x9e3779b97f4a7c15ull + which * 0xbf58476d1ce4e5b9ull;
    const auto mix = static_cast<std::uint32_t>(h >> 32);
    // Small integers in [-8, 8]: every sum and product of two is exact in every float type.
    const float small = static_cast<float>(static_cast<int>(mix % 17u) - 8);
    // Rounding values: +-[1/16, 16) with 16 significant bits, away from subnormals.
    const float wide = (mix & 1u ? -1.0f : 1.0f) * static_cast<float>((mix >> 1) % 65536u + 256u) / 4096.0f;
    const float f = rounding ? wide : small;
    void* p = out.data() + i * sz;
    switch (t) {
      case dtype::i8: {
        const auto v = static_cast<std::int8_t>(static_cast<int>(mix % 256u) - 128);
        std::memcpy(p, &v, sz);
        break;
      }
      case dtype::u8: {
        const auto v = static_cast<std::uint8_t>(mix);
        std::memcpy(p, &v, sz);
        break;
      }
      case dtype::i32: {
        // Every other element small (products stay in range), the rest the full range (wrap).
        const auto v = static_cast<std::int32_t>(i % 2 ? static_cast<std::int32_t>(mix % 2001u) - 1000
                                                       : static_cast<std::int32_t>(mix));
        std::memcpy(p, &v, sz);
        break;
      }
      case dtype::i64: {
        const auto v = static_cast<std::int64_t>(i % 2 ? static_cast<std::int64_t>(mix % 2001u) - 1000
                                                       : static_cast<std::int64_t>(h));
        std::memcpy(p, &v, sz);
        break;
      }
      case dtype::f16: {
        const collx::half v(f);
        std::memcpy(p, &v.bits, sz);
        break;
      }
      case dtype::bf16: {
        const collx::bfloat16 v(f);
        std::memcpy(p, &v.bits, sz);
        break;
      }
      case dtype::f32: {
        std::memcpy(p, &f, sz);
        break;
      }
      case dtype::f64: {
        const double v = f;
        std::memcpy(p, &v, sz);
        break;
      }
    }
  }
}

std::string hex(const unsigned char* p, std::size_t n) {
  static const char digits[] = "0123456789abcdef";
  std::string s = "0x";
  for (std::size_t k = n; k-- > 0;) {  // little-endian: the most significant byte last
    s += digits[p[k] >> 4];
    s += digits[p[k] & 15];
  }
  return s;
}

// The first element where got and want differ, or n.
std::size_t first_difference(const unsigned char* got, const unsigned char* want, std::size_t n,
                             std::size_t sz) {
  for (std::size_t i = 0; i < n; ++i) {
    if (std::memcmp(got + i * sz, want + i * sz, sz) != 0) return i;
  }
  return n;
}

bool all_guard(const unsigned char* p, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) {
    if (p[i] != guard) return false;
  }
  return true;
}

// Where the three operands lie: each at lead + offset elements into its buffer, or the
// result on top of an operand.
struct layout {
  const char* name;
  std::size_t off_a, off_b, off_d;
  int alias;  // 0: dst has its own buffer; 1: dst == a; 2: dst == b
};
constexpr layout layouts[] = {
    {"aligned", 0, 0, 0, 0},
    {"offset by one element", 1, 1, 1, 0},
    {"misaligned differently", 1, 0, 0, 0},
    {"in place, dst == a", 0, 0, 0, 1},
    {"in place at an offset, dst == b", 1, 1, 1, 2},
};

struct buffers {
  device_buffer a, b, d;
  explicit buffers(std::size_t sz) : a(sz), b(sz), d(sz) {}
};

// One run: reduce on the device, the host reference beside it, compared element by element.
void check_reduce(buffers& buf, collx::dtype t, collx::reduce_op op, std::size_t n, const layout& l,
                  bool rounding) {
  const std::size_t sz = collx::size_of(t);
  const std::string what = std::string(collx::to_string(t)) + " " + std::string(collx::to_string(op)) +
                           ", count " + std::to_string(n) + ", " + l.name +
                           (rounding ? ", rounding values" : "");
  INFO(what);
  bytes ha, hb;
  fill(t, ha, n, 1, rounding);
  fill(t, hb, n, 2, rounding);
  bytes want(n * sz);
  collx::reduce(t, op, want.data(), ha.data(), hb.data(), n);

  const std::size_t span = lead + (n + 2) * sz + 16;  // operands up to 15 bytes on
  cuda_ok(cudaMemset(buf.a.base, guard, span), "cudaMemset");
  cuda_ok(cudaMemset(buf.b.base, guard, span), "cudaMemset");
  cuda_ok(cudaMemset(buf.d.base, guard, span), "cudaMemset");
  std::byte* a = buf.a.base + lead + l.off_a * sz;
  std::byte* b = buf.b.base + lead + l.off_b * sz;
  std::byte* d = l.alias == 1 ? a : l.alias == 2 ? b : buf.d.base + lead + l.off_d * sz;
  cuda_ok(cudaMemcpy(a, ha.data(), n * sz, cudaMemcpyHostToDevice), "cudaMemcpy a");
  cuda_ok(cudaMemcpy(b, hb.data(), n * sz, cudaMemcpyHostToDevice), "cudaMemcpy b");

  collx::cuda::reduce(t, op, d, a, b, n, nullptr);
  cuda_ok(cudaDeviceSynchronize(), "reduce kernel");

  // The result with one element of guard on each side.
  bytes got((n + 2) * sz);
  cuda_ok(cudaMemcpy(got.data(), d - sz, got.size(), cudaMemcpyDeviceToHost), "cudaMemcpy back");
  CHECK_MESSAGE(all_guard(got.data(), sz), "the element before the result was written");
  CHECK_MESSAGE(all_guard(got.data() + (n + 1) * sz, sz), "the element after the result was written");
  const std::size_t i = first_difference(got.data() + sz, want.data(), n, sz);
  if (i != n) {
    FAIL_CHECK(what, ": first difference at index ", i, " of ", n, ": device ",
               hex(got.data() + sz + i * sz, sz), ", host ", hex(want.data() + i * sz, sz), " (a ",
               hex(ha.data() + i * sz, sz), ", b ", hex(hb.data() + i * sz, sz), ")");
  }
}

}  // namespace

TEST_CASE("cuda reduce matches the host's reduce for every dtype, op, count and layout") {
  for (const collx::dtype t : collx::all_dtypes) {
    buffers buf(collx::size_of(t));
    for (const collx::reduce_op op : collx::all_reduce_ops) {
      if (!collx::supports(t, op)) continue;
      for (const std::size_t n : counts) {
        for (const layout& l : layouts) check_reduce(buf, t, op, n, l, false);
      }
    }
  }
}

TEST_CASE("cuda reduce rounds f16, bf16, f32 and f64 as the host does") {
  for (const collx::dtype t : {collx::dtype::f16, collx::dtype::bf16, collx::dtype::f32, collx::dtype::f64}) {
    buffers buf(collx::size_of(t));
    for (const collx::reduce_op op : collx::all_reduce_ops) {
      for (const layout& l : {layouts[0], layouts[1], layouts[3]})
        check_reduce(buf, t, op, max_count, l, true);
    }
  }
}

TEST_CASE("cuda reduce refuses avg on integer types, before touching memory") {
  for (const collx::dtype t : collx::all_dtypes) {
    if (collx::is_floating(t)) continue;
    INFO(collx::to_string(t));
    for (const std::size_t n : {std::size_t{0}, std::size_t{5}}) {
      bool threw = false;
      try {
        collx::cuda::reduce(t, collx::reduce_op::avg, nullptr, nullptr, nullptr, n, nullptr);
      } catch (const collx::error& e) {
        threw = true;
        CHECK(e.kind() == collx::errc::invalid_argument);
      }
      CHECK_MESSAGE(threw, "avg on an integer type was accepted (count ", n, ")");
    }
  }
}

TEST_CASE("cuda finish_avg divides as the host's finish_avg") {
  for (const collx::dtype t : collx::all_dtypes) {
    const std::size_t sz = collx::size_of(t);
    device_buffer buf(sz);
    for (const std::size_t n : counts) {
      for (const std::size_t off : {std::size_t{0}, std::size_t{1}}) {
        for (const int divisor : {1, 3, 8}) {
          const std::string what = std::string(collx::to_string(t)) + " finish_avg, count " +
                                   std::to_string(n) + ", offset " + std::to_string(off) + ", divisor " +
                                   std::to_string(divisor);
          INFO(what);
          bytes h;
          fill(t, h, n, 3, collx::is_floating(t));
          bytes want = h;
          collx::finish_avg(t, want.data(), n, divisor);
          cuda_ok(cudaMemset(buf.base, guard, lead + (n + 2) * sz), "cudaMemset");
          std::byte* d = buf.base + lead + off * sz;
          cuda_ok(cudaMemcpy(d, h.data(), n * sz, cudaMemcpyHostToDevice), "cudaMemcpy");
          collx::cuda::finish_avg(t, d, n, divisor, nullptr);
          cuda_ok(cudaDeviceSynchronize(), "finish_avg kernel");
          bytes got((n + 2) * sz);
          cuda_ok(cudaMemcpy(got.data(), d - sz, got.size(), cudaMemcpyDeviceToHost), "cudaMemcpy back");
          CHECK_MESSAGE(all_guard(got.data(), sz), "the element before the data was written");
          CHECK_MESSAGE(all_guard(got.data() + (n + 1) * sz, sz), "the element after the data was written");
          const std::size_t i = first_difference(got.data() + sz, want.data(), n, sz);
          if (i != n) {
            FAIL_CHECK(what, ": first difference at index ", i, ": device ",
                       hex(got.data() + sz + i * sz, sz), ", host ", hex(want.data() + i * sz, sz));
          }
        }
      }
    }
  }
}

TEST_CASE("cuda copy copies every byte and nothing more") {
  constexpr std::size_t sizes[] = {0, 1, 7, 15, 16, 17, 4096, 1000003, 16 * 1000003};
  constexpr std::size_t offsets[][2] = {{0, 0}, {1, 1}, {3, 3}, {8, 8}, {0, 1}, {5, 0}, {8, 0}};
  constexpr std::size_t biggest = 16 * 1000003;
  std::byte* src = nullptr;
  std::byte* dst = nullptr;
  cuda_ok(cudaMalloc(&src, biggest + 64), "cudaMalloc");
  cuda_ok(cudaMalloc(&dst, biggest + 64), "cudaMalloc");
  bytes h(biggest);
  for (std::size_t i = 0; i < h.size(); ++i) h[i] = static_cast<unsigned char>((i * 131u + i / 251u) ^ 0x5au);
  for (const std::size_t n : sizes) {
    for (const auto& off : offsets) {
      const std::string what = "copy of " + std::to_string(n) + " bytes, src offset " +
                               std::to_string(off[0]) + ", dst offset " + std::to_string(off[1]);
      INFO(what);
      cuda_ok(cudaMemset(dst, guard, n + 64), "cudaMemset");
      cuda_ok(cudaMemcpy(src + lead + off[0], h.data(), n, cudaMemcpyHostToDevice), "cudaMemcpy");
      collx::cuda::copy(dst + lead + off[1], src + lead + off[0], n, nullptr);
      cuda_ok(cudaDeviceSynchronize(), "copy kernel");
      bytes got(n + 2);
      cuda_ok(cudaMemcpy(got.data(), dst + lead + off[1] - 1, got.size(), cudaMemcpyDeviceToHost), "back");
      CHECK_MESSAGE(got.front() == guard, "the byte before the copy was written");
      CHECK_MESSAGE(got.back() == guard, "the byte after the copy was written");
      const std::size_t i = first_difference(got.data() + 1, h.data(), n, 1);
      if (i != n) FAIL_CHECK(what, ": first difference at byte ", i, " of ", n);
    }
  }
  cudaFree(src);
  cudaFree(dst);
}

TEST_CASE("cuda reduce matches the host's reduce at every misalignment of dst, a and b, in place too") {
  // Byte misalignments 0..15 in steps of the element size, each operand its own: the
  // destination is aligned first and a source misaligned against it is funnel-shifted
  // (exec/vector_walk.hpp). 1 element: none of it vectors; 33 and 100: a few vectors and
  // heads and tails of every length; max_count: many blocks' worth, a few layouts.
  for (const collx::dtype t : collx::all_dtypes) {
    const std::size_t sz = collx::size_of(t);
    buffers buf(sz);
    const collx::reduce_op op = collx::is_floating(t) ? collx::reduce_op::sum : collx::reduce_op::max;
    for (std::size_t md = 0; md < 16; md += sz) {
      for (std::size_t ma = 0; ma < 16; ma += sz) {
        for (const std::size_t n : {std::size_t{1}, std::size_t{33}, std::size_t{100}}) {
          INFO("misaligned: dst ", md, " a ", ma, " bytes");
          for (std::size_t mb = 0; mb < 16; mb += sz) {
            INFO("b ", mb, " bytes");
            check_reduce(buf, t, op, n, layout{"misaligned", ma / sz, mb / sz, md / sz, 0}, false);
          }
          check_reduce(buf, t, op, n, layout{"in place, dst == a, b misaligned", md / sz, ma / sz, 0, 1},
                       false);
          check_reduce(buf, t, op, n, layout{"in place, dst == b, a misaligned", ma / sz, md / sz, 0, 2},
                       false);
        }
      }
    }
    const std::size_t far = 15 / sz;  // the largest misalignment in elements
    for (const layout& l : {layout{"a one element on", 1, 0, 0, 0}, layout{"each its own", far, 1, 0, 0},
                            layout{"dst misaligned most", 0, 1, far, 0}}) {
      check_reduce(buf, t, collx::reduce_op::sum, max_count, l, collx::is_floating(t));
    }
  }
}

TEST_CASE("cuda copy copies every byte and nothing more at every misalignment of dst and src") {
  constexpr std::size_t biggest = 1000003;
  std::byte* src = nullptr;
  std::byte* dst = nullptr;
  cuda_ok(cudaMalloc(&src, biggest + 64), "cudaMalloc");
  cuda_ok(cudaMalloc(&dst, biggest + 64), "cudaMalloc");
  bytes h(biggest);
  for (std::size_t i = 0; i < h.size(); ++i) h[i] = static_cast<unsigned char>((i * 131u + i / 251u) ^ 0x5au);
  for (std::size_t ms = 0; ms < 16; ++ms) {
    for (std::size_t md = 0; md < 16; ++md) {
      for (const std::size_t n : {std::size_t{15}, std::size_t{100}, std::size_t{4099}, biggest}) {
        if (n == biggest && (ms + md) % 5 != 0) continue;  // many blocks' worth: a few pairs
        INFO("copy of ", n, " bytes, src misaligned ", ms, ", dst ", md);
        cuda_ok(cudaMemset(dst, guard, n + 64), "cudaMemset");
        cuda_ok(cudaMemcpy(src + lead + ms, h.data(), n, cudaMemcpyHostToDevice), "cudaMemcpy");
        collx::cuda::copy(dst + lead + md, src + lead + ms, n, nullptr);
        cuda_ok(cudaDeviceSynchronize(), "copy kernel");
        bytes got(n + 2);
        cuda_ok(cudaMemcpy(got.data(), dst + lead + md - 1, got.size(), cudaMemcpyDeviceToHost), "back");
        CHECK_MESSAGE(got.front() == guard, "the byte before the copy was written");
        CHECK_MESSAGE(got.back() == guard, "the byte after the copy was written");
        const std::size_t i = first_difference(got.data() + 1, h.data(), n, 1);
        if (i != n) FAIL_CHECK("first difference at byte ", i, " of ", n);
      }
    }
  }
  cudaFree(src);
  cudaFree(dst);
}
