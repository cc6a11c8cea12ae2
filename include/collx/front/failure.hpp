#pragma once

// The failure latch every entry shares: a communicator's first failure, kept, so that
// every later call is refused with it (a failed communicator is not reused: make a new
// one). Thread-safe: abort() may come from any thread while a call runs.

#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>

#include "collx/core/error.hpp"

namespace collx::detail {

class failure_latch {
 public:
  // Records `why` unless a failure is already recorded. Returns whether this one was
  // the first, and hands out the number of calls finished so far (the first call this
  // rank did not complete, which its peers must learn).
  bool set(std::string why, std::uint64_t* finished_so_far = nullptr) {
    std::lock_guard lock(m_);
    if (!why_.empty()) return false;
    why_ = why.empty() ? std::string("failed") : std::move(why);
    if (finished_so_far != nullptr) *finished_so_far = finished_;
    return true;
  }

  // Empty while healthy; after a failure, why.
  std::string why() const {
    std::lock_guard lock(m_);
    return why_;
  }

  // A call starts: refused with errc::aborted once the latch is set. `advice`: what to
  // do instead ("create a new one over a new transport").
  void check(std::string_view coll, int rank, std::string_view advice) const {
    std::lock_guard lock(m_);
    if (!why_.empty()) {
      throw error(errc::aborted, coll, rank, error::no_rank,
                  "this communicator failed earlier (" + why_ + "); " + std::string(advice));
    }
  }

  // Call #seq ran to its end on this rank. Counted as done unless the latch was set
  // meanwhile (abort() from another thread): the peers were then told that this rank
  // gave up on this call, so it must not succeed here either. A call that is not one of
  // the numbered ones (a send_recv, numbered = false) is not counted.
  void settle(std::string_view coll, int rank, std::uint64_t seq, bool numbered = true) {
    std::lock_guard lock(m_);
    if (!why_.empty()) {
      throw error(errc::aborted, coll, rank, error::no_rank,
                  "this communicator failed while the call ran (" + why_ + ")");
    }
    if (numbered) finished_ = seq + 1;
  }

 private:
  mutable std::mutex m_;
  std::string why_;
  std::uint64_t finished_ = 0;  // calls that succeeded: the next call's number, or the failed one's
};

}  // namespace collx::detail
