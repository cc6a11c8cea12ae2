#pragma once

// A request is the handle of an operation in flight: move-only, and [[nodiscard]] because
// dropping it is nearly always a bug. Its destructor waits for the operation (its bounded
// timeout included) because the operation still reads and writes the caller's buffers.

#include <chrono>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <utility>

namespace collx {

namespace detail {
struct request_state {
  std::mutex m;
  std::condition_variable cv;
  bool done = false;
  std::exception_ptr failure;

  void complete(std::exception_ptr e) {
    {
      std::lock_guard lock(m);
      failure = std::move(e);
      done = true;
    }
    cv.notify_all();
  }
};
}  // namespace detail

class [[nodiscard]] request {
 public:
  request() = default;
  explicit request(std::shared_ptr<detail::request_state> s) noexcept : state_(std::move(s)) {}
  request(request&&) noexcept = default;
  request& operator=(request&& other) noexcept {
    if (this != &other) {
      finish_quietly();
      state_ = std::move(other.state_);
    }
    return *this;
  }
  request(const request&) = delete;
  request& operator=(const request&) = delete;
  ~request() { finish_quietly(); }

  bool valid() const noexcept { return state_ != nullptr; }

  // Blocks until the operation ends; rethrows its collx::error. The operation's own
  // timeout bounds this wait. After wait() the request is empty.
  void wait() {
    if (!state_) return;
    auto s = std::move(state_);
    std::unique_lock lock(s->m);
    s->cv.wait(lock, [&] { return s->done; });
    if (s->failure) std::rethrow_exception(s->failure);
  }

  // True when the operation has ended (then it behaves as wait(): errors are thrown).
  bool test() {
    if (!state_) return true;
    {
      std::lock_guard lock(state_->m);
      if (!state_->done) return false;
    }
    wait();
    return true;
  }

  template <class Rep, class Period>
  bool wait_for(std::chrono::duration<Rep, Period> d) {
    if (!state_) return true;
    {
      std::unique_lock lock(state_->m);
      if (!state_->cv.wait_for(lock, d, [&] { return state_->done; })) return false;
    }
    wait();
    return true;
  }

 private:
  void finish_quietly() noexcept {
    if (!state_) return;
    std::unique_lock lock(state_->m);
    state_->cv.wait(lock, [&] { return state_->done; });
    lock.unlock();
    state_.reset();
  }

  std::shared_ptr<detail::request_state> state_;
};

}  // namespace collx
