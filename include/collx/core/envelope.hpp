#pragma once

// The envelope: what every message of a collective call carries so that ranks that
// made different calls find out instead of hanging or computing garbage. Its one wire
// form (envelope_wire) is what shm's slot header, tcp's frame header and mpi's header
// carry, and what the peer executor's signature hashes: a field added to the envelope
// is added here once and travels, and is checked, everywhere.

#include <cstdint>
#include <string>

#include "collx/core/dtype.hpp"
#include "collx/core/options.hpp"
#include "collx/core/reduce.hpp"

namespace collx {

struct envelope {
  std::uint64_t seq = 0;      // the call's number on this communicator
  std::uint64_t count = 0;    // elements per rank
  std::uint64_t segment = 0;  // pipeline segment, elements: ranks must cut alike
  std::uint32_t tag = 0;
  collective coll = collective::all_reduce;
  dtype type = dtype::u8;
  reduce_op op = reduce_op::sum;
  algorithm algo = algorithm::ring;
  std::int32_t root = 0;  // broadcast's and reduce's; 0 for the others

  // The count of a send_recv's receipt: no block has as many elements.
  static constexpr std::uint64_t receipt = ~std::uint64_t{0};

  friend bool operator==(const envelope&, const envelope&) = default;

  std::string describe() const {
    std::string s(to_string(coll));
    s += "(";
    s += to_string(type);
    if (reduces(coll)) s.append(", ").append(to_string(op));
    if (rooted(coll)) s += ", root=" + std::to_string(root);
    s += count == receipt ? std::string(", receipt") : ", count=" + std::to_string(count);
    s += ", " + std::string(to_string(algo)) + ", segment=" + std::to_string(segment);
    if (tag != 0) s += ", tag=" + std::to_string(tag);
    // A send_recv is not a numbered call: it carries the number of the next one.
    s += point_to_point(coll) ? ") before call #" + std::to_string(seq) : ") as call #" + std::to_string(seq);
    return s;
  }
};

// The envelope as it travels: 40 bytes, no padding, fields in native byte order (ranks
// of one job share one; each transport's magic number catches a rank that does not).
struct envelope_wire {
  std::uint64_t seq = 0;
  std::uint64_t count = 0;
  std::uint64_t segment = 0;
  std::uint32_t tag = 0;
  std::int32_t root = 0;
  std::uint8_t coll = 0, type = 0, op = 0, algo = 0;
  std::uint32_t spare = 0;  // zero: room for a field without changing the size

  static constexpr envelope_wire of(const envelope& e) noexcept {
    envelope_wire w;
    w.seq = e.seq;
    w.count = e.count;
    w.segment = e.segment;
    w.tag = e.tag;
    w.root = e.root;
    w.coll = static_cast<std::uint8_t>(e.coll);
    w.type = static_cast<std::uint8_t>(e.type);
    w.op = static_cast<std::uint8_t>(e.op);
    w.algo = static_cast<std::uint8_t>(e.algo);
    return w;
  }

  constexpr envelope decoded() const noexcept {
    envelope e;
    e.seq = seq;
    e.count = count;
    e.segment = segment;
    e.tag = tag;
    e.root = root;
    e.coll = static_cast<collective>(coll);
    e.type = static_cast<dtype>(type);
    e.op = static_cast<reduce_op>(op);
    e.algo = static_cast<algorithm>(algo);
    return e;
  }
};
static_assert(sizeof(envelope_wire) == 40, "the envelope's wire form has no padding");

// The envelope as one word, for a transport with room for no more (the peer executor's
// slots): a hash of the wire form's fields, never 0.
constexpr std::uint64_t signature(const envelope& e) noexcept {
  const envelope_wire w = envelope_wire::of(e);
  std::uint64_t h = 1469598103934665603ull;  // FNV-1a, 64-bit
  auto mix = [&](std::uint64_t v) {
    for (int i = 0; i < 8; ++i) {
      h ^= (v >> (8 * i)) & 0xffu;
      h *= 1099511628211ull;
    }
  };
  mix(w.seq);
  mix(w.count);
  mix(w.segment);
  mix(w.tag | static_cast<std::uint64_t>(static_cast<std::uint32_t>(w.root)) << 32);
  mix(static_cast<std::uint64_t>(w.coll) | static_cast<std::uint64_t>(w.type) << 8 |
      static_cast<std::uint64_t>(w.op) << 16 | static_cast<std::uint64_t>(w.algo) << 24);
  return h == 0 ? 1 : h;
}

}  // namespace collx
