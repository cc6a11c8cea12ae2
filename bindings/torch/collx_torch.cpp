// collx_torch: collx as a torch.distributed backend.
//
//   import collx_torch
//   torch.distributed.init_process_group("collx", ...)
//
// Importing the module registers the backend "collx". Its creator gets the group's
// store (PyTorch's PrefixStore over its TCPStore), rank, size and timeout, and builds a
// collx::communicator that meets through that store: shm when the group's ranks are on
// one host, tcp otherwise (COLLX_TRANSPORT overrides). Every operation returns a Work at
// once; one worker thread per group runs them in issue order, as collx requires the
// same order on every rank. A failure (a mismatch, a dead rank, a timeout) is collx's
// error, raised from wait() and set on the future, on every rank.
//
// Torch 1.x: the group is a c10d::ProcessGroup (Debian 12 ships 1.13, what this is built
// and tested against). Torch 2.x splits it into c10d::Backend: not built here yet.

#include <pybind11/chrono.h>
#include <torch/extension.h>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>
#include <torch/csrc/distributed/c10d/Types.hpp>

#include <collx/launch/init.hpp>
#include <collx/version.hpp>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#if TORCH_VERSION_MAJOR >= 2
#error "collx_torch is written for torch 1.x (c10d::ProcessGroup); torch 2.x's c10d::Backend is not done yet"
#endif

namespace collx_torch {

using collx::dtype;
using collx::reduce_op;

// PyTorch's store seen as collx's: set, get with a deadline, add.
class torch_store final : public collx::store {
 public:
  explicit torch_store(c10::intrusive_ptr<c10d::Store> s) : s_(std::move(s)) {}
  void set(std::string_view key, std::string_view value) override {
    s_->set(std::string(key), std::vector<std::uint8_t>(value.begin(), value.end()));
  }
  std::string get(std::string_view key, std::chrono::milliseconds timeout) override {
    const std::string k(key);
    try {
      s_->wait({k}, timeout);
    } catch (const std::exception& e) {
      throw collx::error(collx::errc::timeout, "rendezvous", collx::error::no_rank, collx::error::no_rank,
                         "no value for '" + k + "' in torch's store within " +
                             std::to_string(timeout.count()) + " ms (" + e.what() + ")");
    }
    const auto v = s_->get(k);
    return {v.begin(), v.end()};
  }
  std::int64_t add(std::string_view key, std::int64_t delta) override {
    return s_->add(std::string(key), delta);
  }

 private:
  c10::intrusive_ptr<c10d::Store> s_;
};

[[noreturn]] void refuse(const std::string& what) { throw std::invalid_argument("collx: " + what); }

dtype dtype_of(const at::Tensor& t, bool reduces) {
  switch (t.scalar_type()) {
    case at::kFloat: return dtype::f32;
    case at::kDouble: return dtype::f64;
    case at::kHalf: return dtype::f16;
    case at::kBFloat16: return dtype::bf16;
    case at::kChar: return dtype::i8;
    case at::kByte: return dtype::u8;
    case at::kInt: return dtype::i32;
    case at::kLong: return dtype::i64;
    case at::kBool:
      if (reduces) refuse("collx does not support reductions of bool tensors (use uint8 with MIN or MAX)");
      return dtype::u8;
    default: break;
  }
  refuse(std::string("collx does not support tensors of ") + c10::toString(t.scalar_type()));
}

reduce_op op_of(const c10d::ReduceOp& op) {
  switch (op) {
    case c10d::ReduceOp::SUM: return reduce_op::sum;
    case c10d::ReduceOp::AVG: return reduce_op::avg;
    case c10d::ReduceOp::PRODUCT: return reduce_op::prod;
    case c10d::ReduceOp::MIN: return reduce_op::min;
    case c10d::ReduceOp::MAX: return reduce_op::max;
    case c10d::ReduceOp::BAND: refuse("collx does not support ReduceOp.BAND");
    case c10d::ReduceOp::BOR: refuse("collx does not support ReduceOp.BOR");
    case c10d::ReduceOp::BXOR: refuse("collx does not support ReduceOp.BXOR");
    case c10d::ReduceOp::PREMUL_SUM: refuse("collx does not support ReduceOp.PREMUL_SUM");
    default: break;
  }
  refuse("collx does not support this ReduceOp");
}

// Dense, contiguous, on the CPU: what collx reads and writes in place.
void check_tensor(const at::Tensor& t, const char* what) {
  if (!t.device().is_cpu()) refuse(std::string(what) + " is not on the CPU: collx_torch takes CPU tensors");
  if (t.layout() != at::kStrided)
    refuse(std::string(what) + " is not dense (sparse tensors are not supported)");
  if (!t.is_contiguous()) refuse(std::string(what) + " is not contiguous");
}

const at::Tensor& single(const std::vector<at::Tensor>& ts, const char* what) {
  if (ts.size() != 1)
    refuse(std::string(what) + ": collx_torch takes one tensor per call (one device), got " +
           std::to_string(ts.size()));
  check_tensor(ts[0], what);
  return ts[0];
}

// Every tensor of a list: checked, of one dtype and numel.
void check_list(const std::vector<at::Tensor>& ts, const at::Tensor& like, std::size_t n, const char* what) {
  if (ts.size() != n)
    refuse(std::string(what) + " must hold " + std::to_string(n) + " tensors, got " +
           std::to_string(ts.size()));
  for (const auto& t : ts) {
    check_tensor(t, what);
    if (t.scalar_type() != like.scalar_type() || t.numel() != like.numel())
      refuse(std::string(what) + ": every tensor must have the input's dtype and number of elements");
  }
}

std::size_t elems(const at::Tensor& t) { return static_cast<std::size_t>(t.numel()); }

class collx_work;

// What a waiting Work asks of its group: run it now on the waiting thread, if it is the
// next to run and nothing is running (a blocking call then costs no hand-off to the
// worker thread and back).
class task_runner : public c10::intrusive_ptr_target {
 public:
  virtual void run_if_next(const collx_work* w) = 0;
};

// A Work that completes with the operation's outputs (DDP's hook waits on its future).
class collx_work final : public c10d::Work {
 public:
  collx_work(c10d::OpType type, std::vector<at::Tensor> outputs, c10::weak_intrusive_ptr<task_runner> runner)
      : c10d::Work(-1, type),
        outputs_(std::move(outputs)),
        future_(c10::make_intrusive<c10::ivalue::Future>(c10::ListType::create(c10::TensorType::get()))),
        runner_(std::move(runner)) {}

  std::vector<at::Tensor> result() override { return outputs_; }
  c10::intrusive_ptr<c10::ivalue::Future> getFuture() override { return future_; }

  bool wait(std::chrono::milliseconds timeout) override {
    if (!isCompleted()) {
      if (auto r = runner_.lock()) r->run_if_next(this);
    }
    return c10d::Work::wait(timeout);
  }

  void done(const std::exception_ptr& e) {
    finish(e);
    if (e) {
      future_->setError(e);
    } else {
      future_->markCompleted(c10::IValue(outputs_));
    }
  }

 private:
  std::vector<at::Tensor> outputs_;
  c10::intrusive_ptr<c10::ivalue::Future> future_;
  c10::weak_intrusive_ptr<task_runner> runner_;
};

// One queued operation: a collective, or a send or a receive with its peer and tag. In
// a batch (batch_isend_irecv: startCoalescing ... endCoalescing) a send and a receive
// next to each other become one task, run as one send_recv: pipeline parallelism's
// ranks all send first, and would otherwise meet each other's wait for a receipt
// (collx's send waits for its receive).
struct task {
  c10::intrusive_ptr<collx_work> work;
  std::function<void(collx::communicator&, const collx::options&)> run;
  struct p2p {
    bool send;
    at::Tensor tensor;
    int peer;
    int tag;
  };
  std::optional<p2p> point;
  std::optional<p2p> partner;  // the other direction, in a batch
  c10::intrusive_ptr<collx_work> partner_work;
  std::chrono::milliseconds timeout{0};
};

collx::communicator make_communicator(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                                      std::chrono::milliseconds timeout) {
  collx::communicator_config cfg;
  cfg.timeout = timeout;
  if (size == 1) {
    collx::local_world world(1);
    return collx::communicator(world.transport(0), cfg);
  }
  auto st = std::make_shared<torch_store>(store);
  collx::launch_info li;
  li.rank = rank;
  li.size = size;
  li.local_size = 0;  // unknown for a group: "auto" compares host names through the store
  li.master_addr = collx::detail::env_str("MASTER_ADDR");
  li.launcher = "torch";
  std::string transport = collx::detail::env_str("COLLX_TRANSPORT");
  if (transport.empty()) transport = "auto";
  // The group's shared-memory segments need names of their own: the world group and a
  // new_group of the same job share COLLX_JOB_ID. Rank 0 draws one for this group.
  collx::prefix_store keys(*st, "collx_torch");
  if (rank == 0) {
    std::random_device rd;
    keys.set("job", collx::detail::env_str("COLLX_JOB_ID") + "t" + std::to_string(::getpid()) + "-" +
                        std::to_string(rd()));
  }
  const std::string job = keys.get("job", timeout);
  return collx::make_communicator(st, li, transport, cfg, "collx", job);
}

// One send or receive, or a send and a receive of a batch, as one send_recv.
void run_point(collx::communicator& c, const task::p2p& a, const task::p2p* b) {
  const task::p2p* s = a.send ? &a : (b != nullptr && b->send ? b : nullptr);
  const task::p2p* r = !a.send ? &a : (b != nullptr && !b->send ? b : nullptr);
  const int tag = s != nullptr ? s->tag : r->tag;
  c.send_recv(s != nullptr ? s->tensor.data_ptr() : nullptr, s != nullptr ? elems(s->tensor) : 0,
              s != nullptr ? s->peer : -1, r != nullptr ? r->tensor.data_ptr() : nullptr,
              r != nullptr ? elems(r->tensor) : 0, r != nullptr ? r->peer : -1,
              dtype_of((s != nullptr ? s : r)->tensor, false), static_cast<std::uint32_t>(tag));
}

// Whether two sends or receives of a batch run as one send_recv: one of each, the same
// tag and dtype.
bool pairs(const task::p2p& a, const task::p2p& b) {
  return a.send != b.send && a.tag == b.tag && a.tensor.scalar_type() == b.tensor.scalar_type();
}

// A group's operations in issue order and the communicator that runs them, one at a
// time: the group's worker thread runs each in turn, unless a thread that waits for the
// next one runs it itself first (run_if_next).
class op_queue final : public task_runner {
 public:
  explicit op_queue(collx::communicator comm) : comm_(std::move(comm)) {}

  c10::intrusive_ptr<c10d::Work> push(task k) {
    c10::intrusive_ptr<c10d::Work> w = k.work;
    {
      std::lock_guard lock(m_);
      if (batch_ && k.point) {
        batch_->push_back(std::move(k));
        return w;
      }
      queue_.push_back(std::move(k));
    }
    cv_.notify_all();
    return w;
  }

  // batch_isend_irecv's bracket: its sends and receives are held, then queued with each
  // send and receive next to each other (same tag and dtype) paired into one send_recv.
  void start_batch() {
    std::lock_guard lock(m_);
    batch_.emplace();
  }
  void end_batch() {
    {
      std::lock_guard lock(m_);
      if (!batch_) return;
      std::vector<task> held = std::move(*batch_);
      batch_.reset();
      for (std::size_t i = 0; i < held.size(); ++i) {
        if (i + 1 < held.size() && pairs(*held[i].point, *held[i + 1].point)) {
          held[i].partner = held[i + 1].point;
          held[i].partner_work = held[i + 1].work;
          queue_.push_back(std::move(held[i++]));
        } else {
          queue_.push_back(std::move(held[i]));
        }
      }
    }
    cv_.notify_all();
  }

  void run_if_next(const collx_work* w) override {
    std::unique_lock lock(m_);
    if (running_ || queue_.empty()) return;
    const task& next = queue_.front();
    if (next.work.get() != w && next.partner_work.get() != w) return;
    run_front(lock);
  }

  // The worker thread: until stop(), and the queue is empty.
  void work() {
    std::unique_lock lock(m_);
    for (;;) {
      cv_.wait(lock, [&] { return !running_ && (!queue_.empty() || stopping_); });
      if (queue_.empty()) return;
      run_front(lock);
    }
  }

  void stop() {
    {
      std::lock_guard lock(m_);
      stopping_ = true;
    }
    cv_.notify_all();
  }

 private:
  // Runs the queue's first task with m_ released; `lock` holds m_ before and after.
  void run_front(std::unique_lock<std::mutex>& lock) {
    task k = std::move(queue_.front());
    queue_.pop_front();
    running_ = true;
    lock.unlock();
    std::exception_ptr failure;
    try {
      if (k.point) {
        run_point(comm_, *k.point, k.partner ? &*k.partner : nullptr);
      } else {
        collx::options o;  // torch's per-call timeout, when it gives one; else the group's
        if (k.timeout != c10d::kUnsetTimeout && k.timeout.count() > 0) o.timeout = k.timeout;
        k.run(comm_, o);
      }
    } catch (...) {
      failure = std::current_exception();
    }
    k.work->done(failure);
    if (k.partner_work) k.partner_work->done(failure);
    lock.lock();
    running_ = false;
    cv_.notify_all();
  }

  collx::communicator comm_;
  std::mutex m_;
  std::condition_variable cv_;
  std::deque<task> queue_;
  std::optional<std::vector<task>> batch_;  // between start_batch and end_batch
  bool running_ = false;
  bool stopping_ = false;
};

class process_group final : public c10d::ProcessGroup {
 public:
  process_group(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                std::chrono::milliseconds timeout)
      : c10d::ProcessGroup(rank, size),
        q_(c10::make_intrusive<op_queue>(make_communicator(store, rank, size, timeout))) {
    worker_ = std::thread([q = q_] { q->work(); });
  }

  ~process_group() override {
    q_->stop();
    if (worker_.joinable()) worker_.join();
  }

  const std::string getBackendName() const override { return "collx"; }

  // batch_isend_irecv's bracket (op_queue::end_batch).
  void startCoalescing() override { q_->start_batch(); }
  void endCoalescing(std::vector<c10::intrusive_ptr<c10d::Work>>& /* reqs: torch fills them */) override {
    q_->end_batch();
  }

  c10::intrusive_ptr<c10d::Work> allreduce(std::vector<at::Tensor>& tensors,
                                           const c10d::AllreduceOptions& opts) override {
    const at::Tensor t = single(tensors, "allreduce");
    const reduce_op op = op_of(opts.reduceOp);
    const dtype ty = dtype_of(t, true);
    return enqueue(c10d::OpType::ALLREDUCE, {t}, opts.timeout,
                   [t, op, ty](collx::communicator& c, const collx::options& o) {
                     c.all_reduce(t.data_ptr(), t.data_ptr(), elems(t), ty, op, o);
                   });
  }

  c10::intrusive_ptr<c10d::Work> allreduce_coalesced(std::vector<at::Tensor>& tensors,
                                                     const c10d::AllreduceCoalescedOptions& opts) override {
    const reduce_op op = op_of(opts.reduceOp);
    for (const auto& t : tensors) {
      check_tensor(t, "allreduce_coalesced");
      (void)dtype_of(t, true);
    }
    return enqueue(c10d::OpType::ALLREDUCE_COALESCED, tensors, opts.timeout,
                   [tensors, op](collx::communicator& c, const collx::options& o) {
                     for (const auto& t : tensors)
                       c.all_reduce(t.data_ptr(), t.data_ptr(), elems(t), dtype_of(t, true), op, o);
                   });
  }

  c10::intrusive_ptr<c10d::Work> broadcast(std::vector<at::Tensor>& tensors,
                                           const c10d::BroadcastOptions& opts) override {
    const at::Tensor t = single(tensors, "broadcast");
    const int root = root_of(opts.rootRank, opts.rootTensor);
    const dtype ty = dtype_of(t, false);
    return enqueue(c10d::OpType::BROADCAST, {t}, opts.timeout,
                   [t, root, ty](collx::communicator& c, const collx::options& o) {
                     c.broadcast(t.data_ptr(), t.data_ptr(), elems(t), ty, root, o);
                   });
  }

  c10::intrusive_ptr<c10d::Work> reduce(std::vector<at::Tensor>& tensors,
                                        const c10d::ReduceOptions& opts) override {
    const at::Tensor t = single(tensors, "reduce");
    const int root = root_of(opts.rootRank, opts.rootTensor);
    const reduce_op op = op_of(opts.reduceOp);
    const dtype ty = dtype_of(t, true);
    return enqueue(c10d::OpType::REDUCE, {t}, opts.timeout,
                   [t, root, op, ty](collx::communicator& c, const collx::options& o) {
                     c.reduce(t.data_ptr(), t.data_ptr(), elems(t), ty, op, root, o);
                   });
  }

  c10::intrusive_ptr<c10d::Work> allgather(std::vector<std::vector<at::Tensor>>& outputs,
                                           std::vector<at::Tensor>& inputs,
                                           const c10d::AllgatherOptions& opts) override {
    const at::Tensor in = single(inputs, "allgather input");
    if (outputs.size() != 1) refuse("allgather: one output list per call (one device)");
    check_list(outputs[0], in, usize(), "allgather output list");
    const dtype ty = dtype_of(in, false);
    std::vector<at::Tensor> outs = outputs[0];
    return enqueue(
        c10d::OpType::ALLGATHER, outs, opts.timeout,
        [in, outs, ty](collx::communicator& c, const collx::options& o) {
          at::Tensor flat = at::empty({static_cast<std::int64_t>(outs.size()) * in.numel()}, in.options());
          c.all_gather(in.data_ptr(), flat.data_ptr(), elems(in), ty, o);
          for (std::size_t j = 0; j < outs.size(); ++j)
            outs[j].view({-1}).copy_(flat.narrow(0, static_cast<std::int64_t>(j) * in.numel(), in.numel()));
        });
  }

  c10::intrusive_ptr<c10d::Work> _allgather_base(at::Tensor& output, at::Tensor& input,
                                                 const c10d::AllgatherOptions& opts) override {
    check_tensor(input, "all_gather_into_tensor input");
    check_tensor(output, "all_gather_into_tensor output");
    same_type(input, output, "all_gather_into_tensor");
    if (output.numel() != input.numel() * size_)
      refuse("all_gather_into_tensor: the output must have world size x the input's elements");
    const dtype ty = dtype_of(input, false);
    at::Tensor in = input, out = output;
    return enqueue(c10d::OpType::_ALLGATHER_BASE, {out}, opts.timeout,
                   [in, out, ty](collx::communicator& c, const collx::options& o) {
                     c.all_gather(in.data_ptr(), out.data_ptr(), elems(in), ty, o);
                   });
  }

  c10::intrusive_ptr<c10d::Work> reduce_scatter(std::vector<at::Tensor>& outputs,
                                                std::vector<std::vector<at::Tensor>>& inputs,
                                                const c10d::ReduceScatterOptions& opts) override {
    const at::Tensor out = single(outputs, "reduce_scatter output");
    if (inputs.size() != 1) refuse("reduce_scatter: one input list per call (one device)");
    check_list(inputs[0], out, usize(), "reduce_scatter input list");
    const reduce_op op = op_of(opts.reduceOp);
    const dtype ty = dtype_of(out, true);
    std::vector<at::Tensor> ins = inputs[0];
    return enqueue(c10d::OpType::REDUCE_SCATTER, {out}, opts.timeout,
                   [out, ins, op, ty](collx::communicator& c, const collx::options& o) {
                     std::vector<at::Tensor> flat_ins;
                     for (const auto& t : ins) flat_ins.push_back(t.view({-1}));
                     const at::Tensor flat = at::cat(flat_ins);
                     c.reduce_scatter(flat.data_ptr(), out.data_ptr(), elems(out), ty, op, o);
                   });
  }

  c10::intrusive_ptr<c10d::Work> _reduce_scatter_base(at::Tensor& output, at::Tensor& input,
                                                      const c10d::ReduceScatterOptions& opts) override {
    check_tensor(input, "reduce_scatter_tensor input");
    check_tensor(output, "reduce_scatter_tensor output");
    same_type(input, output, "reduce_scatter_tensor");
    if (input.numel() != output.numel() * size_)
      refuse("reduce_scatter_tensor: the input must have world size x the output's elements");
    const reduce_op op = op_of(opts.reduceOp);
    const dtype ty = dtype_of(output, true);
    at::Tensor in = input, out = output;
    return enqueue(c10d::OpType::_REDUCE_SCATTER_BASE, {out}, opts.timeout,
                   [in, out, op, ty](collx::communicator& c, const collx::options& o) {
                     c.reduce_scatter(in.data_ptr(), out.data_ptr(), elems(out), ty, op, o);
                   });
  }

  c10::intrusive_ptr<c10d::Work> alltoall_base(at::Tensor& output, at::Tensor& input,
                                               std::vector<std::int64_t>& output_splits,
                                               std::vector<std::int64_t>& input_splits,
                                               const c10d::AllToAllOptions& opts) override {
    check_tensor(input, "all_to_all_single input");
    check_tensor(output, "all_to_all_single output");
    same_type(input, output, "all_to_all_single");
    const dtype ty = dtype_of(input, false);
    at::Tensor in = input, out = output;
    if (output_splits.empty() && input_splits.empty()) {
      if (in.numel() != out.numel() || in.numel() % size_ != 0)
        refuse(
            "all_to_all_single: input and output must have one number of elements, a multiple of world size");
      const std::size_t block = elems(in) / usize();
      return enqueue(c10d::OpType::ALLTOALL_BASE, {out}, opts.timeout,
                     [in, out, ty, block](collx::communicator& c, const collx::options& o) {
                       c.all_to_all(in.data_ptr(), out.data_ptr(), block, ty, o);
                     });
    }
    const std::vector<std::size_t> send = counts_of(input_splits, in, "input_split_sizes");
    const std::vector<std::size_t> recv = counts_of(output_splits, out, "output_split_sizes");
    return enqueue(c10d::OpType::ALLTOALL_BASE, {out}, opts.timeout,
                   [in, out, ty, send, recv](collx::communicator& c, const collx::options& o) {
                     c.all_to_all_v(in.data_ptr(), send, out.data_ptr(), recv, ty, o);
                   });
  }

  c10::intrusive_ptr<c10d::Work> alltoall(std::vector<at::Tensor>& outputs, std::vector<at::Tensor>& inputs,
                                          const c10d::AllToAllOptions& opts) override {
    if (outputs.size() != usize() || inputs.size() != usize())
      refuse("all_to_all: one input and one output tensor per rank");
    std::vector<std::size_t> send, recv;
    for (std::size_t j = 0; j < usize(); ++j) {
      check_tensor(inputs[j], "all_to_all input");
      check_tensor(outputs[j], "all_to_all output");
      same_type(inputs[j], inputs[0], "all_to_all");
      same_type(outputs[j], inputs[0], "all_to_all");
      send.push_back(elems(inputs[j]));
      recv.push_back(elems(outputs[j]));
    }
    const dtype ty = dtype_of(inputs[0], false);
    std::vector<at::Tensor> ins = inputs, outs = outputs;
    return enqueue(
        c10d::OpType::ALLTOALL, outs, opts.timeout,
        [ins, outs, ty, send, recv](collx::communicator& c, const collx::options& o) {
          std::vector<at::Tensor> flat_ins;
          for (const auto& t : ins) flat_ins.push_back(t.view({-1}));
          const at::Tensor in = at::cat(flat_ins);
          at::Tensor out = at::empty(
              {static_cast<std::int64_t>(std::accumulate(recv.begin(), recv.end(), std::size_t{0}))},
              ins[0].options());
          c.all_to_all_v(in.data_ptr(), send, out.data_ptr(), recv, ty, o);
          std::int64_t at = 0;
          for (std::size_t j = 0; j < outs.size(); ++j) {
            const auto n = static_cast<std::int64_t>(recv[j]);
            outs[j].view({-1}).copy_(out.narrow(0, at, n));
            at += n;
          }
        });
  }

  c10::intrusive_ptr<c10d::Work> gather(std::vector<std::vector<at::Tensor>>& outputs,
                                        std::vector<at::Tensor>& inputs,
                                        const c10d::GatherOptions& opts) override {
    const at::Tensor in = single(inputs, "gather input");
    const int root = root_of(opts.rootRank, 0);
    std::vector<at::Tensor> outs;
    if (getRank() == root) {
      if (outputs.size() != 1) refuse("gather: the root passes one output list (one device)");
      check_list(outputs[0], in, usize(), "gather output list");
      outs = outputs[0];
    } else if (!outputs.empty() && !outputs[0].empty()) {
      refuse("gather: only the root passes an output list");
    }
    const dtype ty = dtype_of(in, false);
    return enqueue(
        c10d::OpType::GATHER, outs, opts.timeout,
        [in, outs, root, ty](collx::communicator& c, const collx::options& o) {
          at::Tensor flat;
          if (!outs.empty())
            flat = at::empty({static_cast<std::int64_t>(outs.size()) * in.numel()}, in.options());
          c.gather(in.data_ptr(), outs.empty() ? nullptr : flat.data_ptr(), elems(in), ty, root, o);
          for (std::size_t j = 0; j < outs.size(); ++j)
            outs[j].view({-1}).copy_(flat.narrow(0, static_cast<std::int64_t>(j) * in.numel(), in.numel()));
        });
  }

  c10::intrusive_ptr<c10d::Work> scatter(std::vector<at::Tensor>& outputs,
                                         std::vector<std::vector<at::Tensor>>& inputs,
                                         const c10d::ScatterOptions& opts) override {
    const at::Tensor out = single(outputs, "scatter output");
    const int root = root_of(opts.rootRank, 0);
    std::vector<at::Tensor> ins;
    if (getRank() == root) {
      if (inputs.size() != 1) refuse("scatter: the root passes one input list (one device)");
      check_list(inputs[0], out, usize(), "scatter input list");
      ins = inputs[0];
    } else if (!inputs.empty() && !inputs[0].empty()) {
      refuse("scatter: only the root passes an input list");
    }
    const dtype ty = dtype_of(out, false);
    return enqueue(c10d::OpType::SCATTER, {out}, opts.timeout,
                   [ins, out, root, ty](collx::communicator& c, const collx::options& o) {
                     at::Tensor flat;
                     if (!ins.empty()) {
                       std::vector<at::Tensor> flat_ins;
                       for (const auto& t : ins) flat_ins.push_back(t.view({-1}));
                       flat = at::cat(flat_ins);
                     }
                     c.scatter(ins.empty() ? nullptr : flat.data_ptr(), out.data_ptr(), elems(out), ty, root,
                               o);
                   });
  }

  c10::intrusive_ptr<c10d::Work> send(std::vector<at::Tensor>& tensors, int dst, int tag) override {
    return point_to_point(true, single(tensors, "send"), dst, tag);
  }
  c10::intrusive_ptr<c10d::Work> recv(std::vector<at::Tensor>& tensors, int src, int tag) override {
    return point_to_point(false, single(tensors, "recv"), src, tag);
  }
  c10::intrusive_ptr<c10d::Work> recvAnysource(std::vector<at::Tensor>&, int) override {
    refuse("collx does not support receiving from any source: name the peer");
  }

  c10::intrusive_ptr<c10d::Work> barrier(const c10d::BarrierOptions& opts) override {
    return enqueue(c10d::OpType::BARRIER, {}, opts.timeout,
                   [](collx::communicator& c, const collx::options& o) { c.barrier(o); });
  }

 private:
  std::size_t usize() const { return static_cast<std::size_t>(size_); }

  int root_of(std::int64_t rank, std::int64_t tensor) const {
    if (tensor != 0) refuse("collx_torch takes one tensor per call: root tensor must be 0");
    if (rank < 0 || rank >= size_)
      refuse("root " + std::to_string(rank) + " is not a rank of this group of " + std::to_string(size_));
    return static_cast<int>(rank);
  }

  static void same_type(const at::Tensor& a, const at::Tensor& b, const char* what) {
    if (a.scalar_type() != b.scalar_type()) refuse(std::string(what) + ": input and output differ in dtype");
  }

  // Split sizes count rows (first dimension); collx counts elements.
  std::vector<std::size_t> counts_of(const std::vector<std::int64_t>& splits, const at::Tensor& t,
                                     const char* what) const {
    const std::int64_t rows = t.dim() == 0 ? 1 : t.size(0);
    const std::int64_t per_row = rows == 0 ? 0 : t.numel() / rows;
    std::vector<std::size_t> out;
    if (splits.empty()) {  // this side even
      if (rows % size_ != 0) refuse(std::string(what) + " not given and the rows do not divide evenly");
      out.assign(usize(), static_cast<std::size_t>(rows / size_ * per_row));
      return out;
    }
    if (splits.size() != usize()) refuse(std::string(what) + " needs one size per rank");
    std::int64_t total = 0;
    for (auto s : splits) {
      if (s < 0) refuse(std::string(what) + " must not be negative");
      total += s;
      out.push_back(static_cast<std::size_t>(s * per_row));
    }
    if (total != rows) refuse(std::string(what) + " must add up to the tensor's first dimension");
    return out;
  }

  c10::intrusive_ptr<c10d::Work> point_to_point(bool is_send, const at::Tensor& t, int peer, int tag) {
    if (peer < 0 || peer >= size_) refuse("peer " + std::to_string(peer) + " is not a rank of this group");
    (void)dtype_of(t, false);
    task k;
    k.work = c10::make_intrusive<collx_work>(is_send ? c10d::OpType::SEND : c10d::OpType::RECV,
                                             std::vector<at::Tensor>{t}, runner());
    k.point = task::p2p{is_send, t, peer, tag};
    return q_->push(std::move(k));
  }

  c10::intrusive_ptr<c10d::Work> enqueue(
      c10d::OpType type, std::vector<at::Tensor> outputs, std::chrono::milliseconds timeout,
      std::function<void(collx::communicator&, const collx::options&)> run) {
    task k;
    k.work = c10::make_intrusive<collx_work>(type, std::move(outputs), runner());
    k.run = std::move(run);
    k.timeout = timeout;
    return q_->push(std::move(k));
  }

  c10::weak_intrusive_ptr<task_runner> runner() const {
    return c10::weak_intrusive_ptr<task_runner>(c10::intrusive_ptr<task_runner>(q_));
  }

  c10::intrusive_ptr<op_queue> q_;
  std::thread worker_;
};

c10::intrusive_ptr<c10d::ProcessGroup> create(const c10::intrusive_ptr<c10d::Store>& store, int rank,
                                              int size, std::chrono::milliseconds timeout) {
  return c10::make_intrusive<process_group>(store, rank, size, timeout);
}

}  // namespace collx_torch

PYBIND11_MODULE(collx_torch, m) {
  namespace py = pybind11;
  py::module_::import("torch.distributed");
  py::class_<collx_torch::process_group, c10d::ProcessGroup, c10::intrusive_ptr<collx_torch::process_group>>(
      m, "ProcessGroupCollx");
  m.def("create_process_group", &collx_torch::create, py::arg("store"), py::arg("rank"), py::arg("size"),
        py::arg("timeout"), py::call_guard<py::gil_scoped_release>(),
        "The creator torch.distributed calls for backend 'collx'.");
  m.attr("__version__") = COLLX_VERSION_STRING;
  py::module_::import("torch.distributed")
      .attr("Backend")
      .attr("register_backend")("collx", m.attr("create_process_group"));
}
