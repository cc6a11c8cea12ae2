#pragma once

// collx::communicator: the user's entry point. It owns one rank's transport endpoint,
// checks every call before a byte moves, numbers the calls and stamps each message with
// the call's signature, caches the schedule of each call shape, and runs schedules on
// the host executor: on the calling thread for blocking calls, on one worker thread
// for the _async forms. Calls run in the order they are issued, which must be the same
// on every rank, as with MPI and NCCL.

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <numeric>
#include <optional>
#include <ranges>
#include <span>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "collx/algorithms/select.hpp"
#include "collx/config.hpp"
#include "collx/core/dtype.hpp"
#include "collx/core/error.hpp"
#include "collx/core/log.hpp"
#include "collx/core/options.hpp"
#include "collx/core/recorder.hpp"
#include "collx/core/reduce.hpp"
#include "collx/core/request.hpp"
#include "collx/exec/host.hpp"
#include "collx/front/check.hpp"
#include "collx/front/failure.hpp"
#include "collx/front/program.hpp"
#include "collx/front/resolve.hpp"
#include "collx/front/untyped.hpp"
#include "collx/schedule/schedule.hpp"
#include "collx/transport/concept.hpp"

namespace collx {

// How the ranks of a failed communicator compare notes, through something every rank
// reaches besides the transport (the rendezvous store; communicator::compare_notes). A
// rank alone cannot tell a stalled peer from one that is itself waiting, nor a peer that
// died from one that gave up on a third rank and closed its connections: the notes tell.
class failure_notes {
 public:
  // What a rank blames its failure on: the peer it waited for, the peer it lost, or
  // itself (the failure began there).
  enum class blame { waiting, lost, began };
  virtual ~failure_notes() = default;
  // Noted before this rank closes its connections, so a peer that loses it finds the note.
  virtual void note(int peer, blame why) noexcept = 0;
  // From `peer` on, follows the notes to a rank that blamed itself or noted nothing by
  // `until`: that rank, and the words to add to the error; {peer, ""} when they add
  // nothing (a cycle, the store gone).
  virtual std::pair<int, std::string> follow(int peer,
                                             std::chrono::steady_clock::time_point until) noexcept = 0;
};

namespace detail {

// The transport and its executor behind one virtual call per collective, so that the
// communicator is one type whatever the transport, and the per-message path stays
// fully typed.
class comm_core {
 public:
  virtual ~comm_core() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual void run(const plan& p, const exec_buffers& b, const exec_call& c) = 0;
  virtual void abort(errc kind, std::string_view why, std::uint64_t seq) = 0;
};

template <transport T>
class comm_core_impl final : public comm_core {
 public:
  explicit comm_core_impl(T t) : t_(std::move(t)) {}
  int rank() const override { return static_cast<int>(t_.rank()); }
  int size() const override { return static_cast<int>(t_.size()); }
  void run(const plan& p, const exec_buffers& b, const exec_call& c) override { ex_.run(t_, p, b, c); }
  void abort(errc kind, std::string_view why, std::uint64_t seq) override { t_.abort(kind, why, seq); }

 private:
  T t_;
  host_executor<T> ex_;
};

struct call {
  collective coll = collective::all_reduce;
  const std::byte* in = nullptr;
  std::byte* out = nullptr;
  std::size_t count = 0;
  dtype type = dtype::u8;
  reduce_op op = reduce_op::sum;
  options opt;
  bool in_place = false;
  int root = 0;
  // The exchanges sized per peer (per_peer(coll)): this rank's counts per rank, and
  // send_recv's peers (-1: none).
  std::vector<std::size_t> send_counts, recv_counts;
  int dst = -1, src = -1;
  std::uint64_t seq = 0;
  std::shared_ptr<request_state> done;
};

struct comm_state {
  // What the transport was built with and must outlive it (the rendezvous store, whose
  // server rank 0 keeps for the job's lifetime); declared first, so destroyed last.
  std::shared_ptr<void> keep_alive;
  std::unique_ptr<comm_core> core;
  communicator_config cfg;
  algorithms::node_shape nodes;  // of cfg.node_of, for the automatic choice
  int rank = 0;
  int size = 1;

  // Plans of recent call shapes, most recent first. Building is the only allocation
  // of a call, so a training loop that repeats its shapes allocates nothing.
  static constexpr std::size_t plan_cache_size = 16;
  std::vector<std::pair<call_shape, std::shared_ptr<const plan>>> plans;

  failure_latch failed;  // the first failure, and how many calls finished before it

  std::unique_ptr<flight_recorder> rec;  // the last calls (core/recorder.hpp); null when off

  std::shared_ptr<failure_notes> notes;  // set by compare_notes()

  std::mutex qm;
  std::condition_variable qcv;
  std::deque<call> queue;
  std::uint64_t next_seq = 0;
  bool busy = false;
  bool stopping = false;
  std::thread worker;
};

}  // namespace detail

namespace detail {

template <class R>
using elem_t = std::remove_cv_t<std::ranges::range_value_t<R>>;

// A range the typed API can write: contiguous, sized, of a collx element type, mutable.
template <class R>
concept output_range = std::ranges::contiguous_range<R> && std::ranges::sized_range<R> &&
    element<elem_t<R>> && !std::is_const_v<std::remove_reference_t<std::ranges::range_reference_t<R>>>;

template <class In, class Out>
concept range_pair = std::ranges::contiguous_range<In> && std::ranges::sized_range<In> && output_range<Out> &&
    std::is_same_v<elem_t<In>, elem_t<Out>>;

// A range the typed API reads: contiguous, sized, of a collx element type.
template <class R>
concept input_range = std::ranges::contiguous_range<R> && std::ranges::sized_range<R> && element<elem_t<R>>;

// The async forms return before the call has run, so their buffers must outlive the
// call: lvalues or views (borrowed ranges), never a temporary container.
template <class R>
concept async_output = output_range<R> && std::ranges::borrowed_range<R>;

template <class In, class Out>
concept async_pair =
    range_pair<In, Out> && std::ranges::borrowed_range<In> && std::ranges::borrowed_range<Out>;

}  // namespace detail

class communicator : public detail::untyped_calls<communicator> {
 public:
  template <transport T>
  explicit communicator(T t, communicator_config cfg = {}) : communicator(std::move(t), cfg, nullptr) {}

  // keep_alive is held until the transport is gone: what the transport was built with.
  template <transport T>
  communicator(T t, communicator_config cfg, std::shared_ptr<void> keep_alive)
      : s_(std::make_unique<detail::comm_state>()) {
    s_->keep_alive = std::move(keep_alive);
    s_->core = std::make_unique<detail::comm_core_impl<T>>(std::move(t));
    s_->cfg = cfg;
    if (!cfg.node_of.empty()) s_->nodes = algorithms::node_shape::of(cfg.node_of, cfg.inter);
    s_->rank = s_->core->rank();
    s_->size = s_->core->size();
    if (s_->size < 1 || s_->rank < 0 || s_->rank >= s_->size) {
      throw error(
          errc::invalid_argument, "communicator", s_->rank, error::no_rank,
          "the transport reports rank " + std::to_string(s_->rank) + " of " + std::to_string(s_->size));
    }
    if (cfg.timeout <= std::chrono::milliseconds::zero()) {
      throw error(errc::invalid_argument, "communicator", s_->rank, error::no_rank,
                  "timeout must be positive");
    }
    if (cfg.trace_entries > 0) {
      s_->rec =
          std::make_unique<detail::flight_recorder>(cfg.trace_entries, s_->rank, s_->size, cfg.trace_dir);
    }
  }

  communicator(communicator&&) noexcept = default;
  communicator& operator=(communicator&& o) noexcept {
    if (this != &o) {
      shutdown();
      s_ = std::move(o.s_);
    }
    return *this;
  }
  ~communicator() { shutdown(); }

  int rank() const noexcept { return s_->rank; }
  int size() const noexcept { return s_->size; }
  // The nodes its ranks span, as it was built to see them (1 without a node layout):
  // above 1, messages inside a node and between nodes take their own routes and prices.
  int nodes() const noexcept { return s_->nodes.nodes; }

  // Writes the flight recorder's calls (core/recorder.hpp) into dir now, as a failure or
  // SIGUSR1 would into COLLX_TRACE_DIR; returns the file's path.
  std::string dump_trace(const std::string& dir) const {
    if (!s_->rec) {
      throw error(errc::invalid_argument, "dump_trace", s_->rank, error::no_rank,
                  "the flight recorder is off (COLLX_TRACE_ENTRIES=0)");
    }
    std::string path = s_->rec->dump("asked", dir);
    if (path.empty()) {
      throw error(errc::invalid_argument, "dump_trace", s_->rank, error::no_rank,
                  "cannot write a trace file into '" + dir + "'");
    }
    return path;
  }

  // ---- typed API: any contiguous range (std::vector, std::array, std::span, ...) ----

  // out[i] = op over ranks of in[i]; in.size() == out.size().
  template <class In, class Out>
  requires detail::range_pair<In, Out>
  void all_reduce(const In& in, Out&& out, reduce_op op, const options& o = {}) {
    check_sizes("all_reduce", std::ranges::size(in), std::ranges::size(out), 1, 1);
    run_now(collective::all_reduce, data_of(in), data_of(out), std::ranges::size(in), dtype_of_range<Out>(),
            op, o);
  }
  template <class In, class Out>
  requires detail::async_pair<In, Out> request all_reduce_async(In&& in, Out&& out, reduce_op op,
                                                                const options& o = {}) {
    check_sizes("all_reduce", std::ranges::size(in), std::ranges::size(out), 1, 1);
    return submit(collective::all_reduce, data_of(in), data_of(out), std::ranges::size(in),
                  dtype_of_range<Out>(), op, o);
  }
  // In place: data[i] = op over ranks of data[i].
  template <class Data>
  requires detail::output_range<Data>
  void all_reduce(Data&& data, reduce_op op, const options& o = {}) {
    auto* p = data_of(data);
    run_now(collective::all_reduce, p, p, std::ranges::size(data), dtype_of_range<Data>(), op, o);
  }
  template <class Data>
  requires detail::async_output<Data> request all_reduce_async(Data&& data, reduce_op op,
                                                               const options& o = {}) {
    auto* p = data_of(data);
    return submit(collective::all_reduce, p, p, std::ranges::size(data), dtype_of_range<Data>(), op, o);
  }

  // out = in of rank 0, then in of rank 1, ...; out.size() == in.size() * size().
  template <class In, class Out>
  requires detail::range_pair<In, Out>
  void all_gather(const In& in, Out&& out, const options& o = {}) {
    check_sizes("all_gather", std::ranges::size(in), std::ranges::size(out), 1, usize());
    run_now(collective::all_gather, data_of(in), data_of(out), std::ranges::size(in), dtype_of_range<Out>(),
            reduce_op::sum, o);
  }
  template <class In, class Out>
  requires detail::async_pair<In, Out> request all_gather_async(In&& in, Out&& out, const options& o = {}) {
    check_sizes("all_gather", std::ranges::size(in), std::ranges::size(out), 1, usize());
    return submit(collective::all_gather, data_of(in), data_of(out), std::ranges::size(in),
                  dtype_of_range<Out>(), reduce_op::sum, o);
  }
  // In place: this rank's block is data[rank()*n, (rank()+1)*n) with n = data.size()/size().
  template <class Data>
  requires detail::output_range<Data>
  void all_gather(Data&& data, const options& o = {}) {
    const std::size_t n = block_of("all_gather", std::ranges::size(data));
    auto* p = data_of(data);
    run_now(collective::all_gather, p + static_cast<std::size_t>(rank()) * n * elem_size<Data>(), p, n,
            dtype_of_range<Data>(), reduce_op::sum, o);
  }
  template <class Data>
  requires detail::async_output<Data> request all_gather_async(Data&& data, const options& o = {}) {
    const std::size_t n = block_of("all_gather", std::ranges::size(data));
    auto* p = data_of(data);
    return submit(collective::all_gather, p + static_cast<std::size_t>(rank()) * n * elem_size<Data>(), p, n,
                  dtype_of_range<Data>(), reduce_op::sum, o);
  }

  // out[i] = op over ranks of in[rank()*n + i]; in.size() == out.size() * size().
  template <class In, class Out>
  requires detail::range_pair<In, Out>
  void reduce_scatter(const In& in, Out&& out, reduce_op op, const options& o = {}) {
    check_sizes("reduce_scatter", std::ranges::size(in), std::ranges::size(out), usize(), 1);
    run_now(collective::reduce_scatter, data_of(in), data_of(out), std::ranges::size(out),
            dtype_of_range<Out>(), op, o);
  }
  template <class In, class Out>
  requires detail::async_pair<In, Out> request reduce_scatter_async(In&& in, Out&& out, reduce_op op,
                                                                    const options& o = {}) {
    check_sizes("reduce_scatter", std::ranges::size(in), std::ranges::size(out), usize(), 1);
    return submit(collective::reduce_scatter, data_of(in), data_of(out), std::ranges::size(out),
                  dtype_of_range<Out>(), op, o);
  }
  // In place: the result lands in data[rank()*n, (rank()+1)*n), n = data.size()/size();
  // the other blocks are left as they were.
  template <class Data>
  requires detail::output_range<Data>
  void reduce_scatter(Data&& data, reduce_op op, const options& o = {}) {
    const std::size_t n = block_of("reduce_scatter", std::ranges::size(data));
    auto* p = data_of(data);
    run_now(collective::reduce_scatter, p, p + static_cast<std::size_t>(rank()) * n * elem_size<Data>(), n,
            dtype_of_range<Data>(), op, o);
  }
  template <class Data>
  requires detail::async_output<Data> request reduce_scatter_async(Data&& data, reduce_op op,
                                                                   const options& o = {}) {
    const std::size_t n = block_of("reduce_scatter", std::ranges::size(data));
    auto* p = data_of(data);
    return submit(collective::reduce_scatter, p, p + static_cast<std::size_t>(rank()) * n * elem_size<Data>(),
                  n, dtype_of_range<Data>(), op, o);
  }

  // data = the root's data, on every rank.
  template <class Data>
  requires detail::output_range<Data>
  void broadcast(Data&& data, int root, const options& o = {}) {
    auto* p = data_of(data);
    run_now(collective::broadcast, p, p, std::ranges::size(data), dtype_of_range<Data>(), reduce_op::sum, o,
            root);
  }
  template <class Data>
  requires detail::async_output<Data> request broadcast_async(Data&& data, int root, const options& o = {}) {
    auto* p = data_of(data);
    return submit(collective::broadcast, p, p, std::ranges::size(data), dtype_of_range<Data>(),
                  reduce_op::sum, o, root);
  }
  // out = the root's in, on every rank; in.size() == out.size(), or in is empty on the
  // ranks other than the root (only the root's is read).
  template <class In, class Out>
  requires detail::range_pair<In, Out>
  void broadcast(const In& in, Out&& out, int root, const options& o = {}) {
    const void* from = rooted_side("broadcast", in, std::ranges::size(out), root);
    run_now(collective::broadcast, from, data_of(out), std::ranges::size(out), dtype_of_range<Out>(),
            reduce_op::sum, o, root);
  }
  template <class In, class Out>
  requires detail::async_pair<In, Out> request broadcast_async(In&& in, Out&& out, int root,
                                                               const options& o = {}) {
    const void* from = rooted_side("broadcast", in, std::ranges::size(out), root);
    return submit(collective::broadcast, from, data_of(out), std::ranges::size(out), dtype_of_range<Out>(),
                  reduce_op::sum, o, root);
  }

  // On the root, out[i] = op over ranks of in[i]; in.size() == out.size() there. The
  // other ranks' out is not touched, and may be empty.
  template <class In, class Out>
  requires detail::range_pair<In, Out>
  void reduce(const In& in, Out&& out, reduce_op op, int root, const options& o = {}) {
    void* to = rooted_side("reduce", out, std::ranges::size(in), root);
    run_now(collective::reduce, data_of(in), to, std::ranges::size(in), dtype_of_range<Out>(), op, o, root);
  }
  template <class In, class Out>
  requires detail::async_pair<In, Out> request reduce_async(In&& in, Out&& out, reduce_op op, int root,
                                                            const options& o = {}) {
    void* to = rooted_side("reduce", out, std::ranges::size(in), root);
    return submit(collective::reduce, data_of(in), to, std::ranges::size(in), dtype_of_range<Out>(), op, o,
                  root);
  }
  // In place: on the root data[i] = op over ranks of data[i]; elsewhere data is left as it was.
  template <class Data>
  requires detail::output_range<Data>
  void reduce(Data&& data, reduce_op op, int root, const options& o = {}) {
    auto* p = data_of(data);
    run_now(collective::reduce, p, p, std::ranges::size(data), dtype_of_range<Data>(), op, o, root);
  }
  template <class Data>
  requires detail::async_output<Data> request reduce_async(Data&& data, reduce_op op, int root,
                                                           const options& o = {}) {
    auto* p = data_of(data);
    return submit(collective::reduce, p, p, std::ranges::size(data), dtype_of_range<Data>(), op, o, root);
  }

  // out block j = rank j's in block rank(); in.size() == out.size() == n * size().
  template <class In, class Out>
  requires detail::range_pair<In, Out>
  void all_to_all(const In& in, Out&& out, const options& o = {}) {
    check_sizes("all_to_all", std::ranges::size(in), std::ranges::size(out), 1, 1);
    const std::size_t n = block_of("all_to_all", std::ranges::size(out));
    run_now(collective::all_to_all, data_of(in), data_of(out), n, dtype_of_range<Out>(), reduce_op::sum, o);
  }
  template <class In, class Out>
  requires detail::async_pair<In, Out> request all_to_all_async(In&& in, Out&& out, const options& o = {}) {
    check_sizes("all_to_all", std::ranges::size(in), std::ranges::size(out), 1, 1);
    const std::size_t n = block_of("all_to_all", std::ranges::size(out));
    return submit(collective::all_to_all, data_of(in), data_of(out), n, dtype_of_range<Out>(), reduce_op::sum,
                  o);
  }
  // In place: block j of data goes to rank j, and is replaced by rank j's block for this rank.
  template <class Data>
  requires detail::output_range<Data>
  void all_to_all(Data&& data, const options& o = {}) {
    const std::size_t n = block_of("all_to_all", std::ranges::size(data));
    auto* p = data_of(data);
    run_now(collective::all_to_all, p, p, n, dtype_of_range<Data>(), reduce_op::sum, o);
  }

  // On the root, out block j = rank j's in; out.size() == in.size() * size() there, and
  // may be empty elsewhere.
  template <class In, class Out>
  requires detail::range_pair<In, Out>
  void gather(const In& in, Out&& out, int root, const options& o = {}) {
    void* to = rooted_side("gather", out, std::ranges::size(in) * usize(), root);
    run_now(collective::gather, data_of(in), to, std::ranges::size(in), dtype_of_range<Out>(), reduce_op::sum,
            o, root);
  }
  template <class In, class Out>
  requires detail::async_pair<In, Out> request gather_async(In&& in, Out&& out, int root,
                                                            const options& o = {}) {
    void* to = rooted_side("gather", out, std::ranges::size(in) * usize(), root);
    return submit(collective::gather, data_of(in), to, std::ranges::size(in), dtype_of_range<Out>(),
                  reduce_op::sum, o, root);
  }

  // In place: data holds size() blocks and this rank's contribution is its own,
  // data[rank()*n, (rank()+1)*n); on the root the others fill in, elsewhere data stays.
  template <class Data>
  requires detail::output_range<Data>
  void gather(Data&& data, int root, const options& o = {}) {
    const std::size_t n = block_of("gather", std::ranges::size(data));
    auto* p = data_of(data);
    run_now(collective::gather, p + static_cast<std::size_t>(rank()) * n * elem_size<Data>(), p, n,
            dtype_of_range<Data>(), reduce_op::sum, o, root);
  }

  // out = the root's in block rank(); on the root in.size() == out.size() * size(), and
  // in may be empty elsewhere.
  template <class In, class Out>
  requires detail::range_pair<In, Out>
  void scatter(const In& in, Out&& out, int root, const options& o = {}) {
    const void* from = rooted_side("scatter", in, std::ranges::size(out) * usize(), root);
    run_now(collective::scatter, from, data_of(out), std::ranges::size(out), dtype_of_range<Out>(),
            reduce_op::sum, o, root);
  }
  template <class In, class Out>
  requires detail::async_pair<In, Out> request scatter_async(In&& in, Out&& out, int root,
                                                             const options& o = {}) {
    const void* from = rooted_side("scatter", in, std::ranges::size(out) * usize(), root);
    return submit(collective::scatter, from, data_of(out), std::ranges::size(out), dtype_of_range<Out>(),
                  reduce_op::sum, o, root);
  }

  // In place: data holds size() blocks; block rank() becomes the root's block rank(),
  // the others stay as they were.
  template <class Data>
  requires detail::output_range<Data>
  void scatter(Data&& data, int root, const options& o = {}) {
    const std::size_t n = block_of("scatter", std::ranges::size(data));
    auto* p = data_of(data);
    run_now(collective::scatter, p, p + static_cast<std::size_t>(rank()) * n * elem_size<Data>(), n,
            dtype_of_range<Data>(), reduce_op::sum, o, root);
  }

  // out block j = rank j's in block for this rank. in holds size() blocks back to back,
  // in_counts[j] elements for rank j; out likewise, out_counts[j] elements from rank j.
  // in.size() is the sum of in_counts, out.size() that of out_counts, and in_counts[rank()]
  // == out_counts[rank()]. Rank j's in_counts[rank()] must equal this rank's out_counts[j]:
  // a pair that disagrees fails the call on every rank with errc::mismatch. Out of place
  // only. The async forms copy the counts: they need not outlive the call.
  template <class In, class Out>
  requires detail::range_pair<In, Out>
  void all_to_all_v(const In& in, std::span<const std::size_t> in_counts, Out&& out,
                    std::span<const std::size_t> out_counts, const options& o = {}) {
    run_now(check_v(in, in_counts, out, out_counts, o));
  }
  template <class In, class Out>
  requires detail::async_pair<In, Out> request all_to_all_v_async(In&& in,
                                                                  std::span<const std::size_t> in_counts,
                                                                  Out&& out,
                                                                  std::span<const std::size_t> out_counts,
                                                                  const options& o = {}) {
    return submit(check_v(in, in_counts, out, out_counts, o));
  }
  void all_to_all_v(const void* in, std::span<const std::size_t> in_counts, void* out,
                    std::span<const std::size_t> out_counts, dtype t, const options& o = {}) {
    run_now(check_exchange(collective::all_to_all_v, in, in_counts, out, out_counts, t, o));
  }
  request all_to_all_v_async(const void* in, std::span<const std::size_t> in_counts, void* out,
                             std::span<const std::size_t> out_counts, dtype t, const options& o = {}) {
    return submit(check_exchange(collective::all_to_all_v, in, in_counts, out, out_counts, t, o));
  }

  // Point to point, for pipeline parallelism. Messages between two ranks match in the
  // order they are sent, never by tag: the tag (or options::tag; give one) labels them,
  // and a send and a receive that differ in size, element type or tag fail on both sides
  // with errc::mismatch. As in NCCL, a send waits for its receive: it completes once the
  // receiver has its first segment and a receipt has come back. Calls of a communicator
  // run one at a time in issue order (the _async forms too), so two ranks that each send
  // to the other before receiving cannot both finish: each one's data meets the other's
  // wait for a receipt, a mismatch on both. Exchange with send_recv.
  // send_recv and a send or receive alone are the same call (a send is send_recv with no
  // source): they match each other. They are not numbered calls, and other ranks make
  // no call for them.
  template <class Data>
  requires detail::input_range<Data>
  void send(const Data& data, int peer, std::uint32_t tag = 0, const options& o = {}) {
    run_now(check_send_recv(data_of(data), std::ranges::size(data), peer, nullptr, 0, -1,
                            dtype_of_range<Data>(), tag, o));
  }
  template <class Data>
  requires detail::input_range<Data> && std::ranges::borrowed_range<Data> request
  send_async(Data&& data, int peer, std::uint32_t tag = 0, const options& o = {}) {
    return submit(check_send_recv(data_of(data), std::ranges::size(data), peer, nullptr, 0, -1,
                                  dtype_of_range<Data>(), tag, o));
  }
  template <class Data>
  requires detail::output_range<Data>
  void recv(Data&& data, int peer, std::uint32_t tag = 0, const options& o = {}) {
    run_now(check_send_recv(nullptr, 0, -1, data_of(data), std::ranges::size(data), peer,
                            dtype_of_range<Data>(), tag, o));
  }
  template <class Data>
  requires detail::async_output<Data> request recv_async(Data&& data, int peer, std::uint32_t tag = 0,
                                                         const options& o = {}) {
    return submit(check_send_recv(nullptr, 0, -1, data_of(data), std::ranges::size(data), peer,
                                  dtype_of_range<Data>(), tag, o));
  }
  // Sends to dst while receiving from src, as MPI_Sendrecv: a ring shift, or a pair's exchange.
  template <class In, class Out>
  requires detail::range_pair<In, Out>
  void send_recv(const In& in, int dst, Out&& out, int src, std::uint32_t tag = 0, const options& o = {}) {
    run_now(check_send_recv(data_of(in), std::ranges::size(in), dst, data_of(out), std::ranges::size(out),
                            src, dtype_of_range<Out>(), tag, o));
  }
  template <class In, class Out>
  requires detail::async_pair<In, Out> request send_recv_async(In&& in, int dst, Out&& out, int src,
                                                               std::uint32_t tag = 0, const options& o = {}) {
    return submit(check_send_recv(data_of(in), std::ranges::size(in), dst, data_of(out),
                                  std::ranges::size(out), src, dtype_of_range<Out>(), tag, o));
  }
  // Untyped: count elements of type t; dst or src -1 for none.
  void send(const void* data, std::size_t count, dtype t, int peer, std::uint32_t tag = 0,
            const options& o = {}) {
    run_now(check_send_recv(data, count, peer, nullptr, 0, -1, t, tag, o));
  }
  void recv(void* data, std::size_t count, dtype t, int peer, std::uint32_t tag = 0, const options& o = {}) {
    run_now(check_send_recv(nullptr, 0, -1, data, count, peer, t, tag, o));
  }
  request send_recv_async(const void* in, std::size_t send_count, int dst, void* out, std::size_t recv_count,
                          int src, dtype t, std::uint32_t tag = 0, const options& o = {}) {
    return submit(check_send_recv(in, send_count, dst, out, recv_count, src, t, tag, o));
  }
  void send_recv(const void* in, std::size_t send_count, int dst, void* out, std::size_t recv_count, int src,
                 dtype t, std::uint32_t tag = 0, const options& o = {}) {
    run_now(check_send_recv(in, send_count, dst, out, recv_count, src, t, tag, o));
  }

  // Returns once every rank has called it (the blocking form is in front/untyped.hpp).
  request barrier_async(const options& o = {}) {
    return submit(collective::barrier, nullptr, nullptr, 0, dtype::u8, reduce_op::sum, o);
  }

  // ---- untyped API, as in NCCL: pointers, a count per rank and a dtype ----
  // In place when in == out (all_reduce), in == out + rank*count*size (all_gather),
  // or out == in + rank*count*size (reduce_scatter).
  request all_reduce_async(const void* in, void* out, std::size_t count, dtype t, reduce_op op,
                           const options& o = {}) {
    return submit(collective::all_reduce, in, out, count, t, op, o);
  }
  request all_gather_async(const void* in, void* out, std::size_t count, dtype t, const options& o = {}) {
    return submit(collective::all_gather, in, out, count, t, reduce_op::sum, o);
  }
  request reduce_scatter_async(const void* in, void* out, std::size_t count, dtype t, reduce_op op,
                               const options& o = {}) {
    return submit(collective::reduce_scatter, in, out, count, t, op, o);
  }
  // in is read on the root only (it may be null elsewhere); in place when in == out.
  request broadcast_async(const void* in, void* out, std::size_t count, dtype t, int root,
                          const options& o = {}) {
    return submit(collective::broadcast, in, out, count, t, reduce_op::sum, o, root);
  }
  // out is written on the root only (it may be null elsewhere); in place when in == out.
  request reduce_async(const void* in, void* out, std::size_t count, dtype t, reduce_op op, int root,
                       const options& o = {}) {
    return submit(collective::reduce, in, out, count, t, op, o, root);
  }
  // count is one block; in place when in == out.
  request all_to_all_async(const void* in, void* out, std::size_t count, dtype t, const options& o = {}) {
    return submit(collective::all_to_all, in, out, count, t, reduce_op::sum, o);
  }
  // count is one block; out is written on the root only (null elsewhere is fine); in
  // place when in == out + rank*count.
  request gather_async(const void* in, void* out, std::size_t count, dtype t, int root,
                       const options& o = {}) {
    return submit(collective::gather, in, out, count, t, reduce_op::sum, o, root);
  }
  // count is one block; in is read on the root only (null elsewhere is fine); in place
  // when out == in + rank*count.
  request scatter_async(const void* in, void* out, std::size_t count, dtype t, int root,
                        const options& o = {}) {
    return submit(collective::scatter, in, out, count, t, reduce_op::sum, o, root);
  }
  // The blocking forms (front/untyped.hpp).
  using untyped_calls::all_gather;
  using untyped_calls::all_reduce;
  using untyped_calls::all_to_all;
  using untyped_calls::barrier;
  using untyped_calls::broadcast;
  using untyped_calls::gather;
  using untyped_calls::reduce;
  using untyped_calls::reduce_scatter;
  using untyped_calls::scatter;

  // A rank that times out waiting for a peer cannot tell a stalled peer from one that is
  // itself waiting, and one that lost a peer cannot tell a dead peer from one that gave
  // up on a third rank. With notes (compared through the rendezvous store, say), every
  // failing rank notes whom it blames before it closes its connections, and follows the
  // others' notes: its error names the rank at the end of the chain, the one that made
  // no progress or where the failure began. A timeout keeps the last tenth of each
  // call's timeout, at most 2 s, for asking; a lost peer asks for at most 250 ms. Set
  // them before the first call (they are read without a lock). make_communicator
  // installs them when the job meets through a tcp store.
  void compare_notes(std::shared_ptr<failure_notes> notes) { s_->notes = std::move(notes); }

  // Gives up: this rank's calls in flight and its peers' calls that wait on it end with
  // collx::error; every later call on this communicator fails. May be called from any thread.
  void abort(std::string_view why = "aborted by the application") { fail(errc::aborted, std::string(why)); }

  // Empty while healthy; after a failed call, why it failed. A failed communicator
  // refuses further calls: create a new one.
  std::string failure() const { return s_->failed.why(); }

 private:
  friend class detail::untyped_calls<communicator>;

  template <class R>
  static constexpr dtype dtype_of_range() noexcept {
    return dtype_v<detail::elem_t<R>>;
  }
  template <class R>
  static constexpr std::size_t elem_size() noexcept {
    return sizeof(detail::elem_t<R>);
  }
  template <class R>
  static auto* data_of(R&& r) noexcept {
    using P = decltype(std::ranges::data(r));
    if constexpr (std::is_const_v<std::remove_pointer_t<P>>) {
      return reinterpret_cast<const std::byte*>(std::ranges::data(r));
    } else {
      return reinterpret_cast<std::byte*>(std::ranges::data(r));
    }
  }

  std::size_t usize() const noexcept { return static_cast<std::size_t>(size()); }

  [[noreturn]] void invalid(std::string_view coll, const std::string& msg) const {
    throw error(errc::invalid_argument, coll, rank(), error::no_rank, msg);
  }

  void check_sizes(std::string_view coll, std::size_t in, std::size_t out, std::size_t in_mult,
                   std::size_t out_mult) const {
    // in * out_mult == out * in_mult, computed without overflow.
    const bool ok = (in_mult == 1 && out_mult == 1) ? in == out
                    : in_mult == 1                  ? out % out_mult == 0 && out / out_mult == in
                                                    : in % in_mult == 0 && in / in_mult == out;
    if (!ok) {
      std::string want = coll == "all_gather"       ? "output size = input size x ranks ("
                         : coll == "reduce_scatter" ? "input size = output size x ranks ("
                                                    : "input size = output size (";
      invalid(coll, want + std::to_string(size()) + " ranks), got input " + std::to_string(in) +
                        " and output " + std::to_string(out) + " elements");
    }
  }

  std::size_t block_of(std::string_view coll, std::size_t total) const {
    if (total % usize() != 0) {
      invalid(coll, "in-place buffer of " + std::to_string(total) + " elements is not a multiple of " +
                        std::to_string(size()) + " ranks");
    }
    return total / usize();
  }

  // The side of a rooted call that only the root uses (broadcast's and scatter's input,
  // reduce's and gather's output): n elements (what the other side's size asks for), or
  // empty (null) on another rank.
  template <class R>
  auto* rooted_side(std::string_view coll, R&& r, std::size_t n, int root) const {
    const std::size_t got = std::ranges::size(r);
    if (got != n && (got != 0 || root == rank())) {
      const bool input = coll == "broadcast" || coll == "scatter";
      invalid(coll, std::string(input ? "input" : "output") + " must have " + std::to_string(n) +
                        " elements (from the other buffer's size" +
                        (n != 0 && rooted_blocks(coll) ? " x ranks" : "") +
                        "; on ranks other than the root it may be empty), got " + std::to_string(got));
    }
    return got == 0 ? nullptr : data_of(r);
  }
  static bool rooted_blocks(std::string_view coll) { return coll == "gather" || coll == "scatter"; }

  // A failed communicator refuses every call.
  static void check_healthy(detail::comm_state& s, std::string_view name) {
    s.failed.check(name, s.rank, "create a new one over a new transport");
  }

  // Everything that can be known locally is checked here, before any byte moves.
  detail::call check(collective coll, const void* in, void* out, std::size_t count, dtype t, reduce_op op,
                     const options& o, int root) const {
    check_healthy(*s_, to_string(coll));
    const detail::checked_call k =
        detail::check_call(coll, in, out, count, t, op, o, rank(), size(), true, root);
    detail::call c;
    c.coll = coll;
    c.count = count;
    c.type = t;
    c.op = op;
    c.opt = o;
    c.in_place = k.in_place;
    c.root = root;
    c.in = k.in;
    c.out = k.out;
    return c;
  }

  // all_to_all_v's typed form: the ranges hold what the counts add up to.
  template <class In, class Out>
  detail::call check_v(const In& in, std::span<const std::size_t> in_counts, Out& out,
                       std::span<const std::size_t> out_counts, const options& o) const {
    detail::call c = check_exchange(collective::all_to_all_v, data_of(in), in_counts, data_of(out),
                                    out_counts, dtype_of_range<Out>(), o);
    const std::size_t out_n = std::accumulate(out_counts.begin(), out_counts.end(), std::size_t{0});
    if (c.count != std::ranges::size(in) || out_n != std::ranges::size(out)) {
      invalid("all_to_all_v", "the counts add up to " + std::to_string(c.count) + " to send and " +
                                  std::to_string(out_n) + " to receive, but input has " +
                                  std::to_string(std::ranges::size(in)) + " elements and output " +
                                  std::to_string(std::ranges::size(out)));
    }
    return c;
  }

  // The exchanges sized per peer, checked before any byte moves.
  detail::call check_exchange(collective coll, const void* in, std::span<const std::size_t> send_counts,
                              void* out, std::span<const std::size_t> recv_counts, dtype t, const options& o,
                              int dst = -1, int src = -1) const {
    check_healthy(*s_, to_string(coll));
    detail::check_exchange(coll, in, send_counts, out, recv_counts, t, o, rank(), size());
    detail::call c;
    c.coll = coll;
    c.in = static_cast<const std::byte*>(in);
    c.out = static_cast<std::byte*>(out);
    c.count = std::accumulate(send_counts.begin(), send_counts.end(), std::size_t{0});
    c.type = t;
    c.opt = o;
    c.send_counts.assign(send_counts.begin(), send_counts.end());
    c.recv_counts.assign(recv_counts.begin(), recv_counts.end());
    c.dst = dst;
    c.src = src;
    return c;
  }

  // send_recv: send_n elements to dst and recv_n from src (-1: none). The count it is
  // described by is what it sends, or, a receive alone, what it receives.
  detail::call check_send_recv(const void* in, std::size_t send_n, int dst, void* out, std::size_t recv_n,
                               int src, dtype t, std::uint32_t tag, const options& o) const {
    detail::check_peers(dst, send_n, src, recv_n, rank(), size());
    options with_tag = o;
    if (tag != 0) {
      if (o.tag != 0 && o.tag != tag) {
        invalid("send_recv",
                "tag " + std::to_string(tag) + " differs from options::tag " + std::to_string(o.tag));
      }
      with_tag.tag = tag;
    }
    std::vector<std::size_t> sc(usize(), 0);
    std::vector<std::size_t> rc(usize(), 0);
    if (dst >= 0) sc[static_cast<std::size_t>(dst)] = send_n;
    if (src >= 0) rc[static_cast<std::size_t>(src)] = recv_n;
    detail::call c = check_exchange(collective::send_recv, in, sc, out, rc, t, with_tag, dst, src);
    c.count = dst >= 0 ? send_n : recv_n;
    return c;
  }

  request submit(collective coll, const void* in, void* out, std::size_t count, dtype t, reduce_op op,
                 const options& o, int root = 0) {
    return submit(check(coll, in, out, count, t, op, o, root));
  }

  // A send_recv carries the number of the next numbered call without taking it: only the
  // ranks it names make it.
  static std::uint64_t take_seq(detail::comm_state& s, collective coll) {
    return point_to_point(coll) ? s.next_seq : s.next_seq++;
  }

  request submit(detail::call c) {
    auto st = std::make_shared<detail::request_state>();
    c.done = st;
    {
      std::lock_guard lock(s_->qm);
      // Start the worker first: if that throws, nothing was queued behind the caller's back.
      if (!s_->worker.joinable()) s_->worker = std::thread([s = s_.get()] { worker_loop(*s); });
      c.seq = take_seq(*s_, c.coll);
      s_->queue.push_back(std::move(c));
    }
    s_->qcv.notify_all();
    return request(std::move(st));
  }

  // A blocking call runs on the caller's thread once the calls issued before it have
  // run: no hand-off to the worker and back, which is most of a small call's latency.
  void run_now(collective coll, const void* in, void* out, std::size_t count, dtype t, reduce_op op,
               const options& o, int root = 0) {
    run_now(check(coll, in, out, count, t, op, o, root));
  }
  void run_now(detail::call c) {
    auto& s = *s_;
    {
      std::unique_lock lock(s.qm);
      s.qcv.wait(lock, [&] { return s.queue.empty() && !s.busy; });
      s.busy = true;
      c.seq = take_seq(s, c.coll);
    }
    struct release {
      detail::comm_state& s;
      ~release() {
        {
          std::lock_guard lock(s.qm);
          s.busy = false;
        }
        s.qcv.notify_all();
      }
    } guard{s};
    execute(s, c);
  }

  static void worker_loop(detail::comm_state& s) {
    std::unique_lock lock(s.qm);
    for (;;) {
      s.qcv.wait(lock, [&] { return (!s.queue.empty() && !s.busy) || (s.stopping && s.queue.empty()); });
      if (s.queue.empty()) return;
      detail::call c = std::move(s.queue.front());
      s.queue.pop_front();
      s.busy = true;
      lock.unlock();
      std::exception_ptr failure;
      try {
        execute(s, c);
      } catch (...) {
        failure = std::current_exception();
      }
      lock.lock();
      s.busy = false;
      s.qcv.notify_all();
      lock.unlock();
      c.done->complete(failure);
      lock.lock();
    }
  }

  static std::shared_ptr<const plan> plan_for(detail::comm_state& s, const detail::call& c, algorithm a,
                                              std::size_t segment) {
    const detail::call_shape key{c.coll,        a,     c.count, segment, c.in_place, c.root, c.send_counts,
                                 c.recv_counts, c.dst, c.src};
    auto& v = s.plans;
    for (std::size_t i = 0; i < v.size(); ++i) {
      if (v[i].first == key) {
        std::rotate(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(i),
                    v.begin() + static_cast<std::ptrdiff_t>(i) + 1);
        return v.front().second;
      }
    }
    auto p = std::make_shared<const plan>(detail::schedule_for(key, s.rank, s.size, s.cfg.node_of));
    if (v.size() == detail::comm_state::plan_cache_size) v.pop_back();
    v.insert(v.begin(), {key, p});
    if (detail::debug_info()) log_choice(s, c, a, segment);
    return p;
  }

  // COLLX_DEBUG=INFO, a call shape's first run: the algorithm, and what the model predicted
  // for it where the automatic choice took it.
  static void log_choice(const detail::comm_state& s, const detail::call& c, algorithm a,
                         std::size_t segment) {
    const bool automatic =
        (c.opt.algo == algorithm::automatic ? s.cfg.algo : c.opt.algo) == algorithm::automatic;
    const double es = static_cast<double>(size_of(c.type));
    std::string line = "rank " + std::to_string(s.rank) + "/" + std::to_string(s.size) + ": " +
                       std::string(to_string(c.coll)) + "(" + std::string(to_string(c.type)) +
                       ", count=" + std::to_string(c.count) + (c.in_place ? ", in place" : "") + ") runs " +
                       std::string(to_string(a));
    if (automatic) {
      const double t =
          algorithms::predicted_on_nodes(a, c.coll, s.size, static_cast<double>(c.count) * es, s.cfg.model,
                                         s.nodes, static_cast<double>(segment) * es);
      line += ", the automatic choice (predicted " + std::to_string(static_cast<long long>(t * 1e6)) + " us)";
    } else {
      line += ", as asked";
    }
    detail::log_info(line);
  }

  static void execute(detail::comm_state& s, const detail::call& c) {
    const std::string_view name = to_string(c.coll);
    check_healthy(s, name);  // again: a call queued before a failure must not run after it
    const std::size_t es = size_of(c.type);
    const detail::resolved_call r = detail::resolve(c.coll, c.count, c.type, c.op, c.opt, s.cfg, s.size,
                                                    c.seq, detail::no_message_limit, c.root, s.nodes);
    exec_call ec;
    ec.type = c.type;
    ec.op = c.op;
    ec.env = r.env;
    ec.timeout = r.timeout;
    std::chrono::milliseconds grace{0};
    if (s.notes && ec.timeout < std::chrono::hours(24 * 365)) {
      grace = std::min<std::chrono::milliseconds>(ec.timeout / 10, std::chrono::seconds(2));
      ec.timeout -= grace;
    }
    ec.start = std::chrono::steady_clock::now();
    const std::uint64_t traced =
        s.rec ? s.rec->begin({c.seq, c.count, c.count * es, c.coll, c.type, c.op, r.algo, c.root}, ec.start)
              : 0;
    try {
      const auto p = plan_for(s, c, r.algo, r.segment);
      s.core->run(*p, {c.in, c.out, nullptr}, ec);
    } catch (const error& e) {
      if (auto x = asked_around(s, e, grace)) {
        fail(s, x->kind(), x->what(), true);
        trace_failure(s, traced, *x);
        throw *x;
      }
      fail(s, e.kind(), e.what(), s.notes != nullptr);
      trace_failure(s, traced, e);
      throw;
    } catch (const std::exception& e) {
      fail(s, errc::transport, e.what());
      trace_failure(s, traced, error(errc::transport, to_string(c.coll), s.rank, error::no_rank, e.what()));
      throw;
    }
    if (s.rec) s.rec->end(traced, detail::trace_state::done);
    s.failed.settle(to_string(c.coll), s.rank, c.seq, !point_to_point(c.coll));
    if (c.op == reduce_op::avg && reduces(c.coll)) {
      const region res = result_region(c.coll, s.rank, c.count, c.in_place, s.size, c.root);
      if (res.count != 0) finish_avg(c.type, c.out + res.offset * es, res.count, s.size);
    }
  }

  // A failed call: its entry, the error, and the recorder's file where one is asked for.
  static void trace_failure(detail::comm_state& s, std::uint64_t traced, const error& e) {
    if (!s.rec) return;
    s.rec->end(traced, detail::trace_state::failed);
    s.rec->failed(e.kind(), e.what());
    s.rec->dump(e.kind() == errc::timeout ? "timeout" : "error");
  }

  // e's culprit, asked around (failure_notes) where notes are kept: this rank notes whom
  // it blames, and where that is a peer it waited for (within the grace) or lost (within
  // 250 ms), follows the notes. The error to throw instead of e, if the chain ends
  // elsewhere.
  static std::optional<error> asked_around(detail::comm_state& s, const error& e,
                                           std::chrono::milliseconds grace) {
    if (!s.notes) return std::nullopt;
    using blame = failure_notes::blame;
    const bool waited = e.kind() == errc::timeout && grace.count() > 0;
    const bool lost = e.kind() == errc::peer_failure;
    const int peer = e.peer();
    if ((!waited && !lost) || peer < 0 || peer >= s.size || peer == s.rank) {
      s.notes->note(s.rank, blame::began);
      return std::nullopt;
    }
    s.notes->note(peer, waited ? blame::waiting : blame::lost);
    const auto ask = waited ? grace : std::chrono::milliseconds(250);
    const auto [culprit, story] = s.notes->follow(peer, std::chrono::steady_clock::now() + ask);
    if (culprit == peer) return std::nullopt;
    return error(e.kind(), e.collective(), e.rank(), culprit, e.detail() + story);
  }

  // The peers learn which call this rank gave up on: the first it did not finish. Noted
  // first (unless the caller has), so that a peer that loses this rank finds the note.
  static void fail(detail::comm_state& s, errc kind, const std::string& why, bool noted = false) {
    std::uint64_t first_unfinished = 0;
    if (!s.failed.set(why, &first_unfinished)) return;
    if (s.notes && !noted) s.notes->note(s.rank, failure_notes::blame::began);
    s.core->abort(kind, why, first_unfinished);
  }
  void fail(errc kind, const std::string& why) { fail(*s_, kind, why); }

  void shutdown() noexcept {
    if (!s_) return;
    {
      std::lock_guard lock(s_->qm);
      s_->stopping = true;
    }
    s_->qcv.notify_all();
    if (s_->worker.joinable()) s_->worker.join();
  }

  std::unique_ptr<detail::comm_state> s_;
};

}  // namespace collx
