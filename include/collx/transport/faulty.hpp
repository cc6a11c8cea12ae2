#pragma once

// Fault injection for any transport: faulty<T> wraps a transport and, on the ranks a
// fault plan names, delays messages, makes a rank slow, or, after a given number of
// sends (so in the middle of a collective), kills the process, drops or resets its
// connections, stalls it, or makes it abort. It is how the tests prove that every
// other rank then gets a collx::error within its timeout, naming the failed peer, and
// that nothing hangs or leaks.
//
// A plan is written as faults separated by ';', each a kind and its settings:
//
//   COLLX_FAULT="reset:rank=1,after=40"            rank 1 resets its connections at its 41st send
//   COLLX_FAULT="delay:time=200us,jitter=1ms"      every rank holds each send 200 us + up to 1 ms
//   COLLX_FAULT="slow:rank=2,time=5ms; kill:rank=0,after=100"
//
//   kind    what the rank does                                  settings
//   delay   holds each message it sends (order kept per peer)   time, jitter
//   slow    starts each collective call late (a straggler)      time
//   kill    SIGKILLs itself                                     after
//   drop    closes its connections (tcp: FIN; shm: lets go of   after
//           its liveness lock, so it looks dead)
//   reset   resets its connections (tcp: RST); shm as drop      after
//   stall   stops making progress for a while, then goes on     after, for (default 30s)
//   abort   aborts its transport, as a failing rank does        after
//
// rank: the rank it strikes (default: every rank); after: sends before it strikes
// (default 0); durations take ns, us, ms or s. init_from_env (and init_from_mpi) wrap
// the transport when COLLX_FAULT is set; a malformed plan is an invalid_argument error.

#include <signal.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <exception>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "collx/core/error.hpp"
#include "collx/transport/concept.hpp"

namespace collx {

struct fault {
  enum class kind { delay, slow, kill, drop, reset, stall, abort };
  kind what = kind::delay;
  int rank = -1;  // -1: every rank
  std::uint64_t after = 0;
  std::chrono::nanoseconds time{0};
  std::chrono::nanoseconds jitter{0};
  std::chrono::nanoseconds stall_for{std::chrono::seconds(30)};

  // Strikes once, when the rank starts a send with this many sends behind it.
  bool one_shot() const noexcept { return what != kind::delay && what != kind::slow; }
};

struct fault_plan {
  std::vector<fault> faults;

  bool empty() const noexcept { return faults.empty(); }

  // The plan a COLLX_FAULT string describes; throws invalid_argument when malformed.
  static fault_plan parse(std::string_view text) {
    fault_plan plan;
    for (std::string_view item : split(text, ';')) {
      item = trim(item);
      if (item.empty()) continue;
      const auto colon = item.find(':');
      const std::string_view name = trim(item.substr(0, colon));
      fault f;
      f.what = kind_of(name, text);
      if (colon != std::string_view::npos) {
        for (std::string_view kv : split(item.substr(colon + 1), ',')) {
          kv = trim(kv);
          if (kv.empty()) continue;
          const auto eq = kv.find('=');
          if (eq == std::string_view::npos) bad(text, "'" + std::string(kv) + "' is not key=value");
          const std::string_view key = trim(kv.substr(0, eq));
          const std::string_view value = trim(kv.substr(eq + 1));
          if (!applies(f.what, key)) {
            bad(text, "'" + std::string(key) + "' does not apply to " + std::string(name));
          }
          if (key == "rank") {
            if (value == "*") {
              f.rank = -1;
            } else {
              const std::uint64_t r = number(value, text);
              if (r > 1'000'000) bad(text, "rank " + std::string(value) + " is out of range");
              f.rank = static_cast<int>(r);
            }
          } else if (key == "after") {
            f.after = number(value, text);
          } else if (key == "time") {
            f.time = duration(value, text);
          } else if (key == "jitter") {
            f.jitter = duration(value, text);
          } else if (key == "for") {
            f.stall_for = duration(value, text);
          } else {
            bad(text, "unknown setting '" + std::string(key) + "'");
          }
        }
      }
      plan.faults.push_back(f);
    }
    return plan;
  }

  // COLLX_FAULT's plan, if it is set and not empty.
  static std::optional<fault_plan> from_env() {
    const char* v = std::getenv("COLLX_FAULT");
    if (v == nullptr) return std::nullopt;
    fault_plan p = parse(v);
    if (p.empty()) return std::nullopt;
    return p;
  }

 private:
  [[noreturn]] static void bad(std::string_view text, const std::string& why) {
    throw error(errc::invalid_argument, "fault plan", error::no_rank, error::no_rank,
                "COLLX_FAULT='" + std::string(text) + "': " + why);
  }
  static std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
  }
  static std::vector<std::string_view> split(std::string_view s, char sep) {
    std::vector<std::string_view> out;
    for (;;) {
      const auto at = s.find(sep);
      out.push_back(s.substr(0, at));
      if (at == std::string_view::npos) return out;
      s.remove_prefix(at + 1);
    }
  }
  // Which settings each kind takes; any other is refused rather than ignored.
  static bool applies(fault::kind k, std::string_view key) {
    using f = fault::kind;
    if (key == "rank") return true;
    if (key == "after") return k != f::delay && k != f::slow;
    if (key == "time") return k == f::delay || k == f::slow;
    if (key == "jitter") return k == f::delay;
    if (key == "for") return k == f::stall;
    return true;  // unknown keys are refused below, with their own message
  }
  static fault::kind kind_of(std::string_view name, std::string_view text) {
    using k = fault::kind;
    static constexpr std::pair<std::string_view, k> kinds[] = {
        {"delay", k::delay}, {"slow", k::slow},   {"kill", k::kill},  {"drop", k::drop},
        {"reset", k::reset}, {"stall", k::stall}, {"abort", k::abort}};
    for (const auto& [n, v] : kinds) {
      if (n == name) return v;
    }
    bad(text, "unknown fault '" + std::string(name) + "' (delay, slow, kill, drop, reset, stall or abort)");
  }
  static std::uint64_t number(std::string_view v, std::string_view text) {
    std::uint64_t n = 0;
    const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
    if (ec != std::errc() || end != v.data() + v.size())
      bad(text, "'" + std::string(v) + "' is not a number");
    return n;
  }
  static std::chrono::nanoseconds duration(std::string_view v, std::string_view text) {
    std::uint64_t n = 0;
    const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
    const std::string_view unit(end, static_cast<std::size_t>(v.data() + v.size() - end));
    std::uint64_t scale = 0;
    if (unit == "ns") scale = 1;
    if (unit == "us") scale = 1'000;
    if (unit == "ms") scale = 1'000'000;
    if (unit == "s") scale = 1'000'000'000;
    if (ec != std::errc() || scale == 0 || n > (std::uint64_t{1} << 62) / scale) {
      bad(text, "'" + std::string(v) + "' is not a duration such as 200us, 5ms or 2s");
    }
    return std::chrono::nanoseconds(static_cast<std::int64_t>(n * scale));
  }
};

// T wrapped so that the plan's faults strike on this rank. It is a transport (and a
// one-sided one when T is), so every executor runs over it unchanged. Connections are
// dropped or reset through T::inject_disconnect(bool reset), which the shm and tcp
// transports have; a plan that asks it of a transport without one is refused.
template <transport T>
class faulty {
 public:
  struct op {
    typename T::op inner;
    bool held = false;  // a delayed send, not yet handed to the transport
    int peer = -1;
    envelope env;
    std::span<const std::byte> data;
    std::chrono::steady_clock::time_point due;
    std::exception_ptr failed;  // handing it over failed; test() says so
  };

  faulty() = default;
  faulty(T t, fault_plan plan) : t_(std::move(t)) {
    for (const fault& f : plan.faults) {
      if (f.rank != -1 && (f.rank < 0 || f.rank >= size())) {
        throw error(errc::invalid_argument, "fault plan", rank(), error::no_rank,
                    "a fault for rank " + std::to_string(f.rank) + " of " + std::to_string(size()));
      }
      const bool disconnects = f.what == fault::kind::drop || f.what == fault::kind::reset;
      if constexpr (!requires(T & x) { x.inject_disconnect(true); }) {
        if (disconnects) {
          throw error(errc::invalid_argument, "fault plan", rank(), error::no_rank,
                      "this transport has no connections to drop or reset");
        }
      }
      if (f.rank == -1 || f.rank == rank()) faults_.push_back(f);
    }
    held_.resize(static_cast<std::size_t>(std::max(size(), 0)));
    std::random_device rd;
    rng_.seed(rd());
  }

  int rank() const { return static_cast<int>(t_.rank()); }
  int size() const { return static_cast<int>(t_.size()); }

  void send(int peer, const envelope& env, std::span<const std::byte> data, op& o) {
    before(env);
    strike();
    ++sends_;
    o.held = false;
    o.failed = nullptr;
    const auto delay = send_delay();
    if (peer < 0 || peer >= size() || (delay.count() == 0 && held_[static_cast<std::size_t>(peer)].empty())) {
      t_.send(peer, env, data, o.inner);
      return;
    }
    // Held back; what goes to one peer stays in order.
    auto& q = held_[static_cast<std::size_t>(peer)];
    o.held = true;
    o.peer = peer;
    o.env = env;
    o.data = data;
    o.due = std::chrono::steady_clock::now() + delay;
    if (!q.empty()) o.due = std::max(o.due, q.back()->due);
    q.push_back(&o);
  }

  void recv(int peer, const envelope& env, std::span<std::byte> data, op& o) {
    before(env);
    o.held = false;
    o.failed = nullptr;
    t_.recv(peer, env, data, o.inner);
  }

  bool test(op& o) {
    release_due();
    if (o.held) return false;
    if (o.failed) std::rethrow_exception(std::exchange(o.failed, nullptr));
    return t_.test(o.inner);
  }

  void cancel(op& o) {
    o.failed = nullptr;
    if (o.held) {
      std::erase(held_[static_cast<std::size_t>(o.peer)], &o);
      o.held = false;
      return;
    }
    t_.cancel(o.inner);
  }

  void poll(std::chrono::nanoseconds d) {
    release_due();
    const auto now = std::chrono::steady_clock::now();
    for (const auto& q : held_) {
      if (!q.empty()) d = std::min<std::chrono::nanoseconds>(d, std::max(q.front()->due - now, {}));
    }
    t_.poll(d);
  }

  void abort(errc kind, std::string_view why, std::uint64_t seq) { t_.abort(kind, why, seq); }
  void confirm(std::uint64_t seq) { t_.confirm(seq); }

  // The one-sided face, when T has it.
  void recv_view(int peer, const envelope& env, std::size_t bytes, op& o) requires one_sided_transport<T> {
    before(env);
    o.held = false;
    o.failed = nullptr;
    t_.recv_view(peer, env, bytes, o.inner);
  }
  const std::byte* view(const op& o) const requires one_sided_transport<T> { return t_.view(o.inner); }
  void release(op& o) requires one_sided_transport<T> { t_.release(o.inner); }
  std::size_t max_view_bytes() const requires one_sided_transport<T> { return t_.max_view_bytes(); }

 private:
  // A slow rank starts each call late: the first message of a new call waits.
  void before(const envelope& env) {
    if (started_ && env.seq == seq_) return;
    started_ = true;
    seq_ = env.seq;
    for (const fault& f : faults_) {
      if (f.what == fault::kind::slow) std::this_thread::sleep_for(f.time);
    }
  }

  std::chrono::nanoseconds send_delay() {
    std::chrono::nanoseconds d{0};
    for (const fault& f : faults_) {
      if (f.what != fault::kind::delay) continue;
      d += f.time;
      if (f.jitter.count() > 0) {
        d += std::chrono::nanoseconds(std::uniform_int_distribution<std::int64_t>(0, f.jitter.count())(rng_));
      }
    }
    return d;
  }

  void strike() {
    for (const fault& f : faults_) {
      if (!f.one_shot() || f.after != sends_) continue;
      switch (f.what) {
        case fault::kind::kill: ::raise(SIGKILL); break;
        case fault::kind::drop:
        case fault::kind::reset:
          if constexpr (requires(T & x) { x.inject_disconnect(true); }) {
            t_.inject_disconnect(f.what == fault::kind::reset);
          }
          break;
        case fault::kind::stall: std::this_thread::sleep_for(f.stall_for); break;
        case fault::kind::abort:
          t_.abort(errc::aborted,
                   "fault injection: rank " + std::to_string(rank()) + " aborted after " +
                       std::to_string(sends_) + " sends",
                   seq_);
          break;
        default: break;
      }
    }
  }

  // Hands every held send whose time has come to the transport, in order per peer.
  void release_due() {
    const auto now = std::chrono::steady_clock::now();
    for (auto& q : held_) {
      while (!q.empty() && q.front()->due <= now) {
        op& o = *q.front();
        q.pop_front();
        o.held = false;
        try {
          t_.send(o.peer, o.env, o.data, o.inner);
        } catch (...) {
          o.failed = std::current_exception();
        }
      }
    }
  }

  T t_;
  std::vector<fault> faults_;  // those that strike this rank
  std::vector<std::deque<op*>> held_;
  std::mt19937_64 rng_;
  std::uint64_t sends_ = 0;
  std::uint64_t seq_ = 0;
  bool started_ = false;
};

}  // namespace collx
