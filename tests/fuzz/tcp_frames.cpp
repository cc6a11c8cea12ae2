// Fuzz target: what a tcp_transport rank reads from the wire. First the hello of a
// connection it accepted, then message headers on a pair's first stream, each checked
// against the envelope and size the receive expects.
//
// Input: byte 0 sets this rank (0..3), the job's size (rank+1..rank+4) and its streams
// per peer (1..4); then a 24-byte hello; then 56 bytes whose envelope and size are what
// the first receive expects (later receives expect the next call numbers); then frames:
// a header, and after a data header its payload (as many bytes as it claims, or what is
// left), until an abort frame or a refused header ends the connection.
//
// Beyond "no crash", each step checks:
// - fewer bytes than a frame is need_more, whole frames are never need_more;
// - an accepted hello or data header re-encodes (as the sender builds it) to exactly
//   its bytes, and matches what this rank expects;
// - an abort frame's reason is read only up to its bound (64 KiB);
// - a refused frame says why, and a mismatch names the peer;
// - the parser allocates no more than its error message.

#include <cstdint>
#include <cstring>
#include <span>

#include "collx/transport/tcp.hpp"
#include "fuzz_check.hpp"

namespace {

namespace detail = collx::detail;
using detail::parse_status;

constexpr std::uint64_t nonce = 0x0123456789abcdefull;
constexpr int peer = 5;
constexpr std::size_t message_alloc_limit = 1024;

static_assert(sizeof(detail::tcp_hello) == 24 && sizeof(detail::tcp_header) == 56, "no padding on the wire");

template <class T>
bool same_bytes(const T& v, std::span<const std::byte> bytes) {
  return bytes.size() == sizeof v && std::memcmp(&v, bytes.data(), sizeof v) == 0;
}

// Returns false when the connection ends (need_more, or a refused hello).
bool hello(std::span<const std::byte> in, int rank, int size, int streams) {
  const std::size_t n = std::min(in.size(), sizeof(detail::tcp_hello));
  const auto bytes = in.first(n);
  detail::tcp_hello_parsed r;
  {
    collx_fuzz::alloc_probe probe;
    r = detail::parse_tcp_hello(bytes, nonce, rank, size, streams);
    COLLX_FUZZ_CHECK(probe.largest() == 0);
  }
  COLLX_FUZZ_CHECK((r.status == parse_status::need_more) == (n < sizeof(detail::tcp_hello)));
  if (r.status == parse_status::bad) COLLX_FUZZ_CHECK(r.why != nullptr && *r.why != '\0');
  if (r.status != parse_status::done) return false;
  const auto& h = r.hello;
  COLLX_FUZZ_CHECK(h.rank > rank && h.rank < size && h.stream >= 0 && h.stream < streams && h.nonce == nonce);
  detail::tcp_hello sent;  // as connect_mesh builds it
  sent.rank = h.rank;
  sent.stream = h.stream;
  sent.nonce = nonce;
  COLLX_FUZZ_CHECK(same_bytes(sent, bytes));
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  auto in = std::as_bytes(std::span(data, size));
  if (in.empty()) return 0;
  const auto cfg = std::to_integer<unsigned>(in[0]);
  const int rank = static_cast<int>(cfg & 3u);
  const int ranks = rank + 1 + static_cast<int>((cfg >> 2) & 3u);
  const int streams = 1 + static_cast<int>((cfg >> 4) & 3u);
  in = in.subspan(1);
  if (!hello(in, rank, ranks, streams)) return 0;
  in = in.subspan(sizeof(detail::tcp_hello));

  if (in.size() < sizeof(detail::tcp_header)) return 0;
  detail::tcp_header want;
  std::memcpy(&want, in.data(), sizeof want);
  in = in.subspan(sizeof want);
  collx::envelope expect = want.env.decoded();
  const auto expect_size = static_cast<std::size_t>(want.size);

  for (;; ++expect.seq) {
    const std::size_t n = std::min(in.size(), sizeof(detail::tcp_header));
    const auto bytes = in.first(n);
    detail::tcp_header_parsed r;
    {
      collx_fuzz::alloc_probe probe;
      r = detail::parse_tcp_header(bytes, expect, expect_size, peer);
      COLLX_FUZZ_CHECK(probe.largest() <= message_alloc_limit);
    }
    COLLX_FUZZ_CHECK((r.status == parse_status::need_more) == (n < sizeof(detail::tcp_header)));
    if (r.status == parse_status::need_more) return 0;
    if (r.status == parse_status::bad) {
      COLLX_FUZZ_CHECK(!r.message.empty());
      COLLX_FUZZ_CHECK(r.kind == collx::errc::transport || r.kind == collx::errc::mismatch);
      if (r.kind == collx::errc::mismatch) COLLX_FUZZ_CHECK(r.message.find("peer 5") != std::string::npos);
      return 0;
    }
    in = in.subspan(n);
    if (r.abort) {
      COLLX_FUZZ_CHECK(r.reason_bytes <= detail::tcp_max_reason && r.reason_bytes <= r.header.size);
      COLLX_FUZZ_CHECK(r.reason_bytes == r.header.size || r.reason_bytes == detail::tcp_max_reason);
      return 0;  // the peer has failed: nothing more is read
    }
    COLLX_FUZZ_CHECK(r.header.env.decoded() == expect && r.header.size == expect_size);
    COLLX_FUZZ_CHECK(same_bytes(detail::tcp_header::of(expect, expect_size), bytes));
    in = in.subspan(std::min(in.size(), expect_size));  // the payload
  }
}
