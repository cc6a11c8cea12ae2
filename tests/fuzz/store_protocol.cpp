// Fuzz target: the rendezvous store's wire protocol (hello with the job's token, then
// set/get/add requests), as the server parses it from a client's buffer.
//
// Input: byte 0 gives the token's length t (0..16), the next t bytes are the token the
// server expects, the next byte the size of the pieces the stream arrives in (0: all at
// once), and the rest is what the client sends.
//
// Beyond "no crash", each step checks:
// - need_more consumes nothing, and a whole message cut by one byte is need_more;
// - an accepted message re-encodes (with the client's own encoder) to exactly its bytes;
// - keys and values stay within the documented bounds (4 KiB, 64 MiB);
// - a refusal has a reason, and more bytes after it do not change it;
// - the parser allocates no more than a short message, whatever lengths the bytes claim,
//   and serving a request allocates no more than the request's own size.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <string_view>

#include "collx/rendezvous/store.hpp"
#include "fuzz_check.hpp"

namespace {

namespace detail = collx::detail;
using detail::parse_status;

// A reason for the log is all a parser may allocate.
constexpr std::size_t parser_alloc_limit = 256;

detail::store_parsed parse(std::string_view in, bool hello, std::string_view token) {
  collx_fuzz::alloc_probe probe;
  auto r = hello ? detail::parse_store_request(in) : detail::parse_store_hello(in, token);
  COLLX_FUZZ_CHECK(probe.largest() <= parser_alloc_limit);
  return r;
}

bool within(std::string_view part, std::string_view whole) {
  return part.empty() ||
         (part.data() >= whole.data() && part.data() + part.size() <= whole.data() + whole.size());
}

void check(const detail::store_parsed& r, std::string_view in, bool hello, std::string_view token) {
  switch (r.status) {
    case parse_status::need_more: COLLX_FUZZ_CHECK(r.used == 0); break;
    case parse_status::bad: {
      COLLX_FUZZ_CHECK(!r.why.empty());
      std::string more(in);
      more.append(16, '\x7f');
      COLLX_FUZZ_CHECK(parse(more, hello, token).status == parse_status::bad);
      break;
    }
    case parse_status::done: {
      COLLX_FUZZ_CHECK(r.used > 0 && r.used <= in.size());
      const std::string_view msg = in.substr(0, r.used);
      if (!hello) {
        COLLX_FUZZ_CHECK(detail::encode_store_hello(token) == msg);
      } else {
        const auto& q = r.request;
        COLLX_FUZZ_CHECK(q.key.size() <= detail::store_max_key);
        COLLX_FUZZ_CHECK(q.value.size() <= detail::store_max_value);
        COLLX_FUZZ_CHECK(within(q.key, msg) && within(q.value, msg));
        COLLX_FUZZ_CHECK(q.cmd == detail::store_cmd::set || q.value.empty());
        std::string again = detail::encode_store_request(q.cmd, q.key, q.arg);
        again.append(q.value);
        COLLX_FUZZ_CHECK(again == msg);
      }
      COLLX_FUZZ_CHECK(parse(msg.substr(0, r.used - 1), hello, token).status == parse_status::need_more);
      break;
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  if (input.empty()) return 0;
  const std::size_t tlen = std::min<std::size_t>(static_cast<std::uint8_t>(input[0]) % 17, input.size() - 1);
  const std::string_view token = input.substr(1, tlen);
  input.remove_prefix(1 + tlen);
  if (input.empty()) return 0;
  const std::size_t piece =
      static_cast<std::uint8_t>(input[0]) == 0 ? input.size() : static_cast<std::uint8_t>(input[0]);
  input.remove_prefix(1);

  // What the server holds, and one client's state, as store_server keeps them.
  std::map<std::string, std::string, std::less<>> table;
  bool hello = false;
  std::string in;
  for (std::size_t at = 0; at < input.size();) {
    const std::size_t n = std::min(piece, input.size() - at);
    in.append(input.substr(at, n));
    at += n;
    for (;;) {
      const auto r = parse(in, hello, token);
      check(r, in, hello, token);
      if (r.status == parse_status::bad) return 0;  // the server drops the client
      if (r.status == parse_status::need_more) break;
      if (!hello) {
        hello = true;
      } else {
        const auto& q = r.request;
        collx_fuzz::alloc_probe probe;
        if (q.cmd == detail::store_cmd::set) {
          table[std::string(q.key)] = std::string(q.value);
          COLLX_FUZZ_CHECK(table.find(q.key)->second == q.value);
        } else if (q.cmd == detail::store_cmd::add) {
          std::int64_t delta = 0;
          std::memcpy(&delta, &q.arg, sizeof delta);
          auto& v = table[std::string(q.key)];
          const auto cur = detail::store_add(v, delta);
          if (!cur) return 0;  // refused: not a number
          COLLX_FUZZ_CHECK(v == std::to_string(*cur));
        }
        // Map nodes and a number's text are small; a key or value copy is the request's size.
        COLLX_FUZZ_CHECK(probe.largest() <= std::max<std::size_t>(r.used, 256));
      }
      in.erase(0, r.used);
    }
    // The server drops a client whose buffer outgrows one request (store_server::serve):
    // a client that waits for nothing must never reach that bound.
    COLLX_FUZZ_CHECK(in.size() < detail::store_max_request);
  }
  return 0;
}
