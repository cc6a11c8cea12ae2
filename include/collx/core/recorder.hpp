#pragma once

// The flight recorder, as PyTorch keeps one for NCCL: each communicator holds its last N
// calls (COLLX_TRACE_ENTRIES, default 4096; 0 turns it off) in a ring allocated once, so
// that a call allocates nothing: sequence number, collective, type, reduction, count and
// bytes, algorithm, root, start and end (system clock, comparable between ranks), and
// state (running, done, failed). It writes them as one JSON file per communicator into
// COLLX_TRACE_DIR when a call fails (a timeout included), when the process gets SIGUSR1
// (the usual "dump now" of a hung job, which then goes on), and when the communicator
// goes if COLLX_TRACE_AT_EXIT=1. A file is written whole and then renamed into place: a
// reader never sees part of one. tools/collx-doctor reads a job's files.

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "collx/core/dtype.hpp"
#include "collx/core/error.hpp"
#include "collx/core/options.hpp"
#include "collx/core/reduce.hpp"

namespace collx::detail {

enum class trace_state : std::uint8_t { running, done, failed };

constexpr std::string_view to_string(trace_state s) noexcept {
  switch (s) {
    case trace_state::running: return "running";
    case trace_state::done: return "done";
    case trace_state::failed: return "failed";
  }
  return "?";
}

// A call, as the recorder keeps it (with its start, end and state).
struct trace_entry {
  std::uint64_t seq = 0;
  std::uint64_t count = 0;  // elements, as the call gave them
  std::uint64_t bytes = 0;  // count times the element size
  collective coll = collective::all_reduce;
  dtype type = dtype::f32;
  reduce_op op = reduce_op::sum;
  algorithm algo = algorithm::ring;
  int root = 0;
};

inline std::int64_t wall_ns() noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// s as a JSON string, quotes included.
inline std::string json_quoted(std::string_view s) {
  std::string out = "\"";
  for (const char ch : s) {
    const auto u = static_cast<unsigned char>(ch);
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += ch;
    } else if (u < 0x20) {
      char esc[8];
      std::snprintf(esc, sizeof esc, "\\u%04x", static_cast<unsigned>(u));
      out += esc;
    } else {
      out += ch;
    }
  }
  return out + "\"";
}

class flight_recorder;

// The recorders of a process, and the thread that dumps them on SIGUSR1. The handler only
// writes a byte to a pipe (what a handler may do); the thread reads it and writes the
// files. Started by the first recorder that has a directory to write to, so that a
// process that asked for no dumps keeps SIGUSR1's default.
class trace_watch {
 public:
  static trace_watch& get() {
    static trace_watch* const w = new trace_watch;  // never destroyed: its thread may outlive main
    return *w;
  }
  void add(flight_recorder* r) {
    std::lock_guard lock(m_);
    live_.push_back(r);
    if (!started_) start();
  }
  void remove(flight_recorder* r) {
    std::lock_guard lock(m_);
    live_.erase(std::remove(live_.begin(), live_.end(), r), live_.end());
  }

 private:
  trace_watch() = default;
  static std::atomic<int>& signal_fd() {
    static std::atomic<int> fd{-1};
    return fd;
  }
  static void on_signal(int) {
    const int saved = errno;
    const char c = 1;
    const int fd = signal_fd().load(std::memory_order_relaxed);
    if (fd >= 0 && ::write(fd, &c, 1) < 0) {
      // Full (a dump is already due) or gone: nothing a handler can do.
    }
    errno = saved;
  }
  void start() {
    int fds[2];
    if (::pipe(fds) != 0) return;
    ::fcntl(fds[0], F_SETFD, FD_CLOEXEC);
    ::fcntl(fds[1], F_SETFD, FD_CLOEXEC);
    ::fcntl(fds[1], F_SETFL, O_NONBLOCK);  // a flood of signals never blocks the handler
    signal_fd().store(fds[1]);
    struct sigaction sa {};
    sa.sa_handler = &trace_watch::on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    ::sigaction(SIGUSR1, &sa, nullptr);
    started_ = true;
    std::thread([this, fd = fds[0]] { loop(fd); }).detach();
  }
  void loop(int fd);

  std::mutex m_;
  std::vector<flight_recorder*> live_;
  bool started_ = false;
};

class flight_recorder {
 public:
  // `entries` calls kept (at least 1); `dir`: where failures and SIGUSR1 write (empty: nowhere).
  flight_recorder(std::size_t entries, int rank, int size, std::string dir)
      : cap_(std::max<std::size_t>(entries, 1)),
        ring_(std::make_unique<slot[]>(cap_)),
        rank_(rank),
        size_(size),
        dir_(std::move(dir)),
        id_(next_id()) {
    if (!dir_.empty()) trace_watch::get().add(this);
  }
  flight_recorder(const flight_recorder&) = delete;
  flight_recorder& operator=(const flight_recorder&) = delete;
  ~flight_recorder() {
    if (dir_.empty()) return;
    trace_watch::get().remove(this);
    const char* v = std::getenv("COLLX_TRACE_AT_EXIT");
    if (v != nullptr && std::string_view(v) == "1") dump("exit");
  }

  // A call starts at `start` (the monotonic clock the executor's deadline counts from):
  // its number in the recorder, for end(). One thread at a time (a communicator's calls
  // run one after another); a dump may read at once from another thread.
  std::uint64_t begin(const trace_entry& e, std::chrono::steady_clock::time_point start) noexcept {
    const std::uint64_t n = next_.load(std::memory_order_relaxed);
    write(ring_[n % cap_], e.seq, e.count, e.bytes, ns(start), 0, meta(e, trace_state::running),
          static_cast<std::uint64_t>(static_cast<std::int64_t>(e.root)));
    next_.store(n + 1, std::memory_order_release);
    return n;
  }
  // The call ends: its state, and the time from the coarse clock (a few ms of resolution
  // and 6 ns a read, against 25-40 for the precise one: a tenth of an 8 B call over shm).
  void end(std::uint64_t n, trace_state st) noexcept {
    if (next_.load(std::memory_order_relaxed) - n > cap_) return;  // already overwritten
    slot& x = ring_[n % cap_];
    const std::uint64_t end_ns = std::max(coarse_ns(), x.w[start_at].load(std::memory_order_relaxed));
    const std::uint64_t v = x.ver.load(std::memory_order_relaxed);
    x.ver.store(v + 1, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_release);
    x.w[end_at].store(end_ns, std::memory_order_relaxed);
    x.w[meta_at].store((x.w[meta_at].load(std::memory_order_relaxed) & ~(0xffull << 32)) |
                           (static_cast<std::uint64_t>(st) << 32),
                       std::memory_order_relaxed);
    x.ver.store(v + 2, std::memory_order_release);
  }
  void failed(errc kind, std::string why) {
    std::lock_guard lock(m_);
    error_kind_ = kind;
    error_ = std::move(why);
  }

  const std::string& dir() const noexcept { return dir_; }
  std::size_t capacity() const noexcept { return cap_; }

  // The kept calls, oldest first, with who wrote them and why, as one JSON object. Times
  // are the system clock's: the monotonic clock's readings moved by the offset between
  // the two now.
  std::string json(std::string_view reason) const {
    char host[256] = {};
    ::gethostname(host, sizeof host - 1);
    const std::int64_t wall = wall_ns();
    const std::int64_t to_wall = wall - static_cast<std::int64_t>(ns(std::chrono::steady_clock::now()));
    auto at = [&](std::uint64_t t) {
      return t == 0 ? std::int64_t{0} : static_cast<std::int64_t>(t) + to_wall;
    };
    const std::uint64_t calls = next_.load(std::memory_order_acquire);
    const std::uint64_t kept = std::min<std::uint64_t>(calls, cap_);
    std::string out;
    {
      std::lock_guard lock(m_);
      out = "{\"collx_trace\": 1, \"rank\": " + std::to_string(rank_) +
            ", \"size\": " + std::to_string(size_) + ", \"pid\": " + std::to_string(::getpid()) +
            ", \"host\": " + json_quoted(host) + ", \"reason\": " + json_quoted(reason) +
            ", \"time_ns\": " + std::to_string(wall) + ", \"calls\": " + std::to_string(calls) +
            ", \"capacity\": " + std::to_string(cap_) + ", \"error_kind\": " +
            (error_.empty() ? std::string("null") : json_quoted(to_string(error_kind_))) +
            ", \"error\": " + (error_.empty() ? std::string("null") : json_quoted(error_)) +
            ",\n \"entries\": [";
    }
    std::int64_t last = 0;
    bool first = true;
    for (std::uint64_t n = calls - kept; n < calls; ++n) {
      std::uint64_t w[words];
      if (!read(ring_[n % cap_], w)) continue;  // being rewritten by a call that began since
      const auto m = w[meta_at];
      const std::int64_t start = at(w[start_at]), end = at(w[end_at]);
      last = std::max({last, start, end});
      out += first ? "\n  " : ",\n  ";
      first = false;
      out += "{\"seq\": " + std::to_string(w[seq_at]) + ", \"coll\": \"" +
             std::string(to_string(static_cast<collective>(m & 0xff))) + "\", \"type\": \"" +
             std::string(to_string(static_cast<dtype>((m >> 8) & 0xff))) + "\", \"op\": \"" +
             std::string(to_string(static_cast<reduce_op>((m >> 16) & 0xff))) + "\", \"algo\": \"" +
             std::string(to_string(static_cast<algorithm>((m >> 24) & 0xff))) +
             "\", \"count\": " + std::to_string(w[count_at]) + ", \"bytes\": " + std::to_string(w[bytes_at]) +
             ", \"root\": " + std::to_string(static_cast<std::int64_t>(w[root_at])) +
             ", \"start_ns\": " + std::to_string(start) + ", \"end_ns\": " + std::to_string(end) +
             ", \"state\": \"" + std::string(to_string(static_cast<trace_state>((m >> 32) & 0xff))) + "\"}";
    }
    out += "],\n \"last_activity_ns\": " + std::to_string(last) + "}\n";
    return out;
  }

  // Writes dir/collx-trace.rank<R>.<pid>.<n>.json, whole, then renamed into place; a later
  // dump replaces an earlier one. The path, or empty where the file could not be written.
  std::string dump(std::string_view reason, const std::string& dir) const {
    const std::string name = dir + "/collx-trace.rank" + std::to_string(rank_) + "." +
                             std::to_string(::getpid()) + "." + std::to_string(id_) + ".json";
    const std::string tmp = name + ".tmp";
    const std::string text = json(reason);
    std::FILE* f = std::fopen(tmp.c_str(), "w");
    if (f == nullptr) return {};
    const bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size();
    if (std::fclose(f) != 0 || !ok || std::rename(tmp.c_str(), name.c_str()) != 0) {
      std::remove(tmp.c_str());
      return {};
    }
    return name;
  }
  std::string dump(std::string_view reason) const {
    return dir_.empty() ? std::string() : dump(reason, dir_);
  }

 private:
  // An entry as words written under a version count (a seqlock): odd while its one
  // writer changes it, so that a dump running at once skips, rather than tears, it.
  enum : std::size_t { seq_at, count_at, bytes_at, start_at, end_at, meta_at, root_at, words };
  struct slot {
    std::atomic<std::uint64_t> ver{0};
    std::atomic<std::uint64_t> w[words] = {};
  };

  static std::uint64_t ns(std::chrono::steady_clock::time_point t) noexcept {
    return static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count());
  }
  // The monotonic clock at its tick's resolution (CLOCK_MONOTONIC_COARSE, the timeline of
  // steady_clock's CLOCK_MONOTONIC), or the precise one where there is none.
  static std::uint64_t coarse_ns() noexcept {
#ifdef CLOCK_MONOTONIC_COARSE
    timespec ts{};
    if (::clock_gettime(CLOCK_MONOTONIC_COARSE, &ts) == 0) {
      return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<std::uint64_t>(ts.tv_nsec);
    }
#endif
    return ns(std::chrono::steady_clock::now());
  }
  static std::uint64_t meta(const trace_entry& e, trace_state st) noexcept {
    return static_cast<std::uint64_t>(e.coll) | static_cast<std::uint64_t>(e.type) << 8 |
           static_cast<std::uint64_t>(e.op) << 16 | static_cast<std::uint64_t>(e.algo) << 24 |
           static_cast<std::uint64_t>(st) << 32;
  }
  static void write(slot& x, std::uint64_t seq, std::uint64_t count, std::uint64_t bytes, std::uint64_t start,
                    std::uint64_t end, std::uint64_t m, std::uint64_t root) noexcept {
    const std::uint64_t v = x.ver.load(std::memory_order_relaxed);
    x.ver.store(v + 1, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_release);
    const std::uint64_t w[words] = {seq, count, bytes, start, end, m, root};
    for (std::size_t i = 0; i < words; ++i) x.w[i].store(w[i], std::memory_order_relaxed);
    x.ver.store(v + 2, std::memory_order_release);
  }
  static bool read(const slot& x, std::uint64_t (&w)[words]) noexcept {
    for (int attempt = 0; attempt < 100; ++attempt) {
      const std::uint64_t v = x.ver.load(std::memory_order_acquire);
      if (v % 2 != 0) continue;
      for (std::size_t i = 0; i < words; ++i) w[i] = x.w[i].load(std::memory_order_relaxed);
      std::atomic_thread_fence(std::memory_order_acquire);
      if (x.ver.load(std::memory_order_relaxed) == v) return true;
    }
    return false;
  }
  static unsigned next_id() {
    static std::atomic<unsigned> n{0};
    return n++;
  }

  std::size_t cap_;
  std::unique_ptr<slot[]> ring_;
  std::atomic<std::uint64_t> next_{0};
  mutable std::mutex m_;  // the error, written once, read by dumps
  errc error_kind_ = errc::aborted;
  std::string error_;
  int rank_;
  int size_;
  std::string dir_;
  unsigned id_;
};

inline void trace_watch::loop(int fd) {
  char buf[64];
  for (;;) {
    const auto n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    std::lock_guard lock(m_);
    for (const flight_recorder* r : live_) r->dump("SIGUSR1");
  }
}

}  // namespace collx::detail
