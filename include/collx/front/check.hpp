#pragma once

// The checks every front end runs before a byte moves (collx::communicator, the GPU
// group, the ipc communicator): what can be known on one rank about one call.

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <limits>
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
  if (const auto probe = device_memory_probe.load(std::memory_order_relaxed);
      host_memory && probe != nullptr) {
    const bool in_dev = in != nullptr && probe(in);
    if (in_dev || (out != nullptr && probe(out))) {
      invalid(std::string(in_dev ? "input" : "output") +
              " is GPU memory, which this communicator's transport moves through the host: wrap the "
              "communicator in collx::cuda::staged, or use collx::cuda::group or ipc_communicator");
    }
  }
  const auto ia = reinterpret_cast<std::uintptr_t>(in);
  const auto oa = reinterpret_cast<std::uintptr_t>(out);
  if (ia % es != 0 || oa % es != 0) {
    invalid("buffers must be aligned to the element size (" + std::to_string(es) + " bytes for " +
            std::string(to_string(t)) + ")");
  }
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

}  // namespace collx::detail
