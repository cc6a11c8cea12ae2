#pragma once

// The checks every front end runs before a byte moves (collx::communicator, the GPU
// group, the ipc communicator): what can be known on one rank about one call.

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <string_view>

#include "collx/core/dtype.hpp"
#include "collx/core/error.hpp"
#include "collx/core/options.hpp"
#include "collx/core/reduce.hpp"
#include "collx/schedule/schedule.hpp"

namespace collx::detail {

// Tells device memory from host memory, for the host front ends to refuse device buffers
// with an error instead of faulting on them. Null (no check) until a program makes a GPU
// object (collx::cuda::staged, group or ipc_communicator): asking the CUDA runtime costs
// a microsecond a call, and would start CUDA in programs that never use it.
inline std::atomic<bool (*)(const void*)> device_memory_probe{nullptr};

// What the schedule runs on: in place, the input is null and output holds it.
struct checked_call {
  bool in_place = false;
  const std::byte* in = nullptr;
  std::byte* out = nullptr;
};

// The call's kinds and options: what makes sense whatever the buffers.
inline void check_kinds(collective coll, dtype t, reduce_op op, const options& o, int rank, int size,
                        int root) {
  const std::string_view name = to_string(coll);
  auto invalid = [&](const std::string& msg) {
    throw error(errc::invalid_argument, name, rank, error::no_rank, msg);
  };
  if (static_cast<unsigned>(t) > static_cast<unsigned>(dtype::f64)) invalid("unknown element type");
  if (static_cast<unsigned>(op) > static_cast<unsigned>(reduce_op::avg)) invalid("unknown reduction");
  if (reduces(coll) && !supports(t, op)) {
    invalid(std::string(to_string(op)) + " needs a floating-point element type, got " +
            std::string(to_string(t)));
  }
  if (rooted(coll) && (root < 0 || root >= size)) {
    invalid("root " + std::to_string(root) + " is not a rank of this communicator (0.." +
            std::to_string(size - 1) + ")");
  }
  if (o.timeout < std::chrono::milliseconds::zero()) invalid("timeout must not be negative");
  if (o.segment_bytes != 0 && o.segment_bytes < size_of(t)) {
    invalid("segment_bytes " + std::to_string(o.segment_bytes) + " is smaller than one " +
            std::string(to_string(t)) + " element");
  }
  if (static_cast<unsigned>(o.algo) > static_cast<unsigned>(last_algorithm)) {
    invalid("unknown algorithm " + std::to_string(static_cast<int>(o.algo)));
  }
  if (!implements(o.algo, coll)) {
    throw error(errc::unsupported, name, rank, error::no_rank,
                "algorithm " + std::string(to_string(o.algo)) + " does not implement " + std::string(name));
  }
}

// Host front ends refuse device buffers (once a program has made a GPU object).
inline void check_host_memory(std::string_view name, const void* in, const void* out, int rank) {
  const auto probe = device_memory_probe.load(std::memory_order_relaxed);
  if (probe == nullptr) return;
  const bool in_dev = in != nullptr && probe(in);
  if (in_dev || (out != nullptr && probe(out))) {
    throw error(errc::invalid_argument, name, rank, error::no_rank,
                std::string(in_dev ? "input" : "output") +
                    " is GPU memory, which this communicator's transport moves through the host: wrap the "
                    "communicator in collx::cuda::staged, or use collx::cuda::group or ipc_communicator");
  }
}

inline void check_alignment(std::string_view name, const void* in, const void* out, dtype t, int rank) {
  const std::size_t es = size_of(t);
  if (reinterpret_cast<std::uintptr_t>(in) % es != 0 || reinterpret_cast<std::uintptr_t>(out) % es != 0) {
    throw error(errc::invalid_argument, name, rank, error::no_rank,
                "buffers must be aligned to the element size (" + std::to_string(es) + " bytes for " +
                    std::string(to_string(t)) + ")");
  }
}

// Whether the call is the in-place form: in == out (all_reduce, broadcast, reduce,
// all_to_all), in == out + rank*count (all_gather, gather), or out == in + rank*count
// (reduce_scatter, scatter), as in NCCL.
inline bool is_in_place(collective coll, std::uintptr_t ia, std::uintptr_t oa, std::size_t block) {
  if (coll == collective::all_gather || coll == collective::gather) return ia == oa + block;
  if (coll == collective::reduce_scatter || coll == collective::scatter) return oa == ia + block;
  return ia == oa;
}

// Throws invalid_argument (or unsupported, for an algorithm that lacks the collective)
// naming the call and the rank. A broadcast or scatter reads no input on ranks other than
// the root, and a reduce or gather writes no output there: those may be null.
inline checked_call check_call(collective coll, const void* in, void* out, std::size_t count, dtype t,
                               reduce_op op, const options& o, int rank, int size, bool host_memory = true,
                               int root = 0) {
  const std::string_view name = to_string(coll);
  auto invalid = [&](const std::string& msg) {
    throw error(errc::invalid_argument, name, rank, error::no_rank, msg);
  };
  check_kinds(coll, t, op, o, rank, size, root);
  const std::size_t es = size_of(t);
  const auto up = static_cast<std::size_t>(size);
  if (count > std::numeric_limits<std::size_t>::max() / es / up) {
    invalid("count " + std::to_string(count) + " overflows the address space");
  }
  checked_call c;
  if (count == 0) return c;  // nothing will be touched: null pointers are fine
  const bool off_root = rooted(coll) && rank != root;
  const bool in_unused =
      off_root && (coll == collective::broadcast || coll == collective::scatter) && in == nullptr;
  const bool out_unused =
      off_root && (coll == collective::reduce || coll == collective::gather) && out == nullptr;
  if ((in == nullptr && !in_unused) || (out == nullptr && !out_unused)) {
    invalid(std::string(in == nullptr ? "input" : "output") + " is null with count " + std::to_string(count));
  }
  if (host_memory) check_host_memory(name, in, out, rank);
  check_alignment(name, in, out, t, rank);
  const auto ia = reinterpret_cast<std::uintptr_t>(in);
  const auto oa = reinterpret_cast<std::uintptr_t>(out);
  const std::size_t in_bytes = in_unused ? 0 : input_extent(coll, size, count) * es;
  c.in_place = is_in_place(coll, ia, oa, count * es * static_cast<std::size_t>(rank));
  const std::size_t out_bytes = out_unused ? 0 : output_extent(coll, size, count, false) * es;
  if (!c.in_place && ia < oa + out_bytes && oa < ia + in_bytes) {
    invalid(
        "input and output overlap without being the in-place form; use separate buffers, or the in-place "
        "overload");
  }
  if (c.in_place) {
    const bool out_first = coll == collective::all_gather || coll == collective::gather;
    c.out = static_cast<std::byte*>(out_first ? out : const_cast<void*>(in));
  } else {
    c.in = static_cast<const std::byte*>(in);
    c.out = static_cast<std::byte*>(out);
  }
  return c;
}

// The exchanges sized per peer (all_to_all_v, send_recv): a count per rank on each side;
// in and out hold the sums, block q after block q-1, and may be null only where their
// sum is 0; they must not overlap (there is no in-place form). A rank's block for itself
// is as long on both sides. send_recv's peers are checked by check_peers.
inline void check_exchange(collective coll, const void* in, std::span<const std::size_t> send_counts,
                           const void* out, std::span<const std::size_t> recv_counts, dtype t,
                           const options& o, int rank, int size, bool host_memory = true) {
  const std::string_view name = to_string(coll);
  auto invalid = [&](const std::string& msg) {
    throw error(errc::invalid_argument, name, rank, error::no_rank, msg);
  };
  check_kinds(coll, t, reduce_op::sum, o, rank, size, 0);
  const auto up = static_cast<std::size_t>(size);
  if (send_counts.size() != up || recv_counts.size() != up) {
    invalid("needs a count per rank on each side (" + std::to_string(size) + "), got " +
            std::to_string(send_counts.size()) + " to send and " + std::to_string(recv_counts.size()) +
            " to receive");
  }
  const std::size_t es = size_of(t);
  auto total = [&](std::span<const std::size_t> counts, const char* side) {
    std::size_t sum = 0;
    for (auto c : counts) {
      if (c > std::numeric_limits<std::size_t>::max() / es - sum) {
        invalid(std::string(side) + " counts overflow the address space");
      }
      sum += c;
    }
    return sum;
  };
  const std::size_t in_n = total(send_counts, "send");
  const std::size_t out_n = total(recv_counts, "receive");
  const auto ur = static_cast<std::size_t>(rank);
  if (coll == collective::all_to_all_v && send_counts[ur] != recv_counts[ur]) {
    invalid("this rank's block for itself is " + std::to_string(send_counts[ur]) + " elements to send but " +
            std::to_string(recv_counts[ur]) + " to receive");
  }
  if ((in == nullptr && in_n != 0) || (out == nullptr && out_n != 0)) {
    invalid(std::string(in == nullptr && in_n != 0 ? "input" : "output") + " is null with " +
            std::to_string(in == nullptr && in_n != 0 ? in_n : out_n) + " elements to move");
  }
  if (host_memory) check_host_memory(name, in, out, rank);
  check_alignment(name, in, out, t, rank);
  const auto ia = reinterpret_cast<std::uintptr_t>(in);
  const auto oa = reinterpret_cast<std::uintptr_t>(out);
  if (in_n != 0 && out_n != 0 && ia < oa + out_n * es && oa < ia + in_n * es) {
    invalid("input and output overlap; " + std::string(name) + " has no in-place form");
  }
}

// send_recv's peers: each a rank, or -1 for none (a send alone, a receive alone); a rank
// sends to itself only while receiving from itself, as many elements.
inline void check_peers(int dst, std::size_t send_n, int src, std::size_t recv_n, int rank, int size) {
  auto invalid = [&](const std::string& msg) {
    throw error(errc::invalid_argument, to_string(collective::send_recv), rank, error::no_rank, msg);
  };
  for (int q : {dst, src}) {
    if (q < -1 || q >= size) {
      invalid("peer " + std::to_string(q) + " is not a rank of this communicator (0.." +
              std::to_string(size - 1) + ")");
    }
  }
  if (dst == -1 && src == -1) invalid("names no peer to send to or receive from");
  if ((dst == rank) != (src == rank) || (dst == rank && send_n != recv_n)) {
    invalid("a rank sends to itself only while receiving as many elements from itself (send to " +
            std::to_string(dst) + ", receive from " + std::to_string(src) + ")");
  }
}

}  // namespace collx::detail
