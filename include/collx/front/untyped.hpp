#pragma once

// The untyped blocking calls, as in NCCL (pointers, a count per rank and a dtype),
// written once for every host entry. Entry runs a call with
// run_now(collective, in, out, count, type, op, options) and befriends this class.
// In place when in == out (all_reduce), in == out + rank*count*size (all_gather), or
// out == in + rank*count*size (reduce_scatter).

#include <cstddef>

#include "collx/core/dtype.hpp"
#include "collx/core/options.hpp"
#include "collx/core/reduce.hpp"

namespace collx::detail {

template <class Entry>
class untyped_calls {
 public:
  void all_reduce(const void* in, void* out, std::size_t count, dtype t, reduce_op op,
                  const options& o = {}) {
    entry().run_now(collective::all_reduce, in, out, count, t, op, o);
  }
  void all_gather(const void* in, void* out, std::size_t count, dtype t, const options& o = {}) {
    entry().run_now(collective::all_gather, in, out, count, t, reduce_op::sum, o);
  }
  void reduce_scatter(const void* in, void* out, std::size_t count, dtype t, reduce_op op,
                      const options& o = {}) {
    entry().run_now(collective::reduce_scatter, in, out, count, t, op, o);
  }
  // The root's in to every rank's out; in is read on the root only (null elsewhere is fine).
  void broadcast(const void* in, void* out, std::size_t count, dtype t, int root, const options& o = {}) {
    entry().run_now(collective::broadcast, in, out, count, t, reduce_op::sum, o, root);
  }
  // Every rank's in combined into the root's out; out is written on the root only.
  void reduce(const void* in, void* out, std::size_t count, dtype t, reduce_op op, int root,
              const options& o = {}) {
    entry().run_now(collective::reduce, in, out, count, t, op, o, root);
  }
  // count is one block: out block j = rank j's in block rank(); in place when in == out.
  void all_to_all(const void* in, void* out, std::size_t count, dtype t, const options& o = {}) {
    entry().run_now(collective::all_to_all, in, out, count, t, reduce_op::sum, o);
  }
  // count is one block: the root's out block j = rank j's in; out is written on the root only.
  void gather(const void* in, void* out, std::size_t count, dtype t, int root, const options& o = {}) {
    entry().run_now(collective::gather, in, out, count, t, reduce_op::sum, o, root);
  }
  // count is one block: out = the root's in block rank(); in is read on the root only.
  void scatter(const void* in, void* out, std::size_t count, dtype t, int root, const options& o = {}) {
    entry().run_now(collective::scatter, in, out, count, t, reduce_op::sum, o, root);
  }
  // Returns once every rank has called it.
  void barrier(const options& o = {}) {
    entry().run_now(collective::barrier, nullptr, nullptr, 0, dtype::u8, reduce_op::sum, o);
  }

 private:
  Entry& entry() noexcept { return static_cast<Entry&>(*this); }
};

}  // namespace collx::detail
