#pragma once

// Test helpers: run p ranks as threads over the local transport, with a watchdog that
// turns a hang into a test failure (and ends the process) instead of a stuck CI job.

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <collx/collx.hpp>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <functional>
#include <map>
#include <mutex>
#include <new>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace test {

using namespace std::chrono_literals;

// Fresh pages are expensive on the virtual machines CI runs on (first touch of 512 MiB
// costs over a second, a second touch 25 ms), and the collective tests allocate and free
// hundreds of MiB per case. This pool keeps freed blocks and hands them out again, so
// each test process faults its peak footprint once instead of once per run.
class block_pool {
 public:
  static block_pool& instance() {
    static block_pool* pool = new block_pool;  // never destroyed: blocks outlive statics
    return *pool;
  }
  void* get(std::size_t bytes) {
    std::lock_guard lock(m_);
    auto it = free_.lower_bound(bytes);
    if (it != free_.end() && it->first <= 2 * bytes + 4096) {
      void* p = it->second;
      live_[p] = it->first;
      free_.erase(it);
      return p;
    }
    void* p = ::operator new (bytes, std::align_val_t{64});
    live_[p] = bytes;
    return p;
  }
  void put(void* p) {
    std::lock_guard lock(m_);
    auto it = live_.find(p);
    free_.emplace(it->second, p);
    live_.erase(it);
  }

 private:
  std::mutex m_;
  std::multimap<std::size_t, void*> free_;
  std::map<void*, std::size_t> live_;
};

template <class T>
struct pool_allocator {
  using value_type = T;
  pool_allocator() = default;
  template <class U>
  pool_allocator(const pool_allocator<U>&) noexcept {}
  T* allocate(std::size_t n) {
    return static_cast<T*>(block_pool::instance().get(std::max<std::size_t>(n, 1) * sizeof(T)));
  }
  void deallocate(T* p, std::size_t) noexcept { block_pool::instance().put(p); }
  template <class U>
  bool operator==(const pool_allocator<U>&) const noexcept {
    return true;
  }
};

template <class T>
using pvector = std::vector<T, pool_allocator<T>>;

// Sets an environment variable (empty: unsets it) for a scope, then restores it.
class scoped_env {
 public:
  scoped_env(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (*value == '\0') {
      ::unsetenv(name);
    } else {
      ::setenv(name, value, 1);
    }
  }
  ~scoped_env() {
    if (old_) {
      ::setenv(name_, old_->c_str(), 1);
    } else {
      ::unsetenv(name_);
    }
  }
  scoped_env(const scoped_env&) = delete;
  scoped_env& operator=(const scoped_env&) = delete;

 private:
  const char* name_;
  std::optional<std::string> old_;
};

// Runs f(make(r)) for ranks r = 0..p-1, each on its own thread, and returns each rank's
// exception (null if it returned). If the ranks are not all back within `bound`, the
// process ends: a hang is a failure.
inline std::vector<std::exception_ptr> run_ranks_over(int p,
                                                      const std::function<collx::communicator(int)>& make,
                                                      const std::function<void(collx::communicator&)>& f,
                                                      std::chrono::seconds bound = 120s) {
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(p));
  std::atomic<int> finished{0};
  std::vector<std::thread> threads;
  for (int r = 0; r < p; ++r) {
    threads.emplace_back([&, r] {
      try {
        collx::communicator comm = make(r);
        f(comm);
      } catch (...) {
        errors[static_cast<std::size_t>(r)] = std::current_exception();
      }
      finished.fetch_add(1);
    });
  }
  const auto deadline = std::chrono::steady_clock::now() + bound;
  while (finished.load() < p) {
    if (std::chrono::steady_clock::now() > deadline) {
      std::fprintf(stderr, "FATAL: %d of %d ranks still running after %lld s: a hang\n", p - finished.load(),
                   p, static_cast<long long>(bound.count()));
      std::fflush(stderr);
      std::_Exit(3);
    }
    std::this_thread::sleep_for(1ms);
  }
  for (auto& t : threads) t.join();
  return errors;
}

// run_ranks_over the world's transports.
inline std::vector<std::exception_ptr> run_ranks(collx::local_world& world,
                                                 const std::function<void(collx::communicator&)>& f,
                                                 collx::communicator_config cfg = {},
                                                 std::chrono::seconds bound = 120s) {
  return run_ranks_over(
      world.size(), [&](int r) { return collx::communicator(world.transport(r), cfg); }, f, bound);
}

inline std::vector<std::exception_ptr> run_ranks(int p, const std::function<void(collx::communicator&)>& f,
                                                 collx::communicator_config cfg = {},
                                                 std::chrono::seconds bound = 120s) {
  collx::local_world world(p);
  return run_ranks(world, f, cfg, bound);
}

// Rethrows the first rank's exception, if any.
inline void expect_ok(const std::vector<std::exception_ptr>& errors) {
  for (auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

// The collx::error a rank ended with; fails the test if it ended with anything else.
inline std::optional<collx::error> as_error(const std::exception_ptr& e) {
  if (!e) return std::nullopt;
  try {
    std::rethrow_exception(e);
  } catch (const collx::error& x) {
    return x;
  } catch (const std::exception& x) {
    FAIL("expected collx::error, got: " << x.what());
  }
  return std::nullopt;
}

}  // namespace test
