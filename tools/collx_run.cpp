// collx-run: start N ranks of a program on this machine, like `torchrun --standalone`.
//
//   collx-run -n N [--timeout SECONDS] [--grace SECONDS] [--] prog args...
//
// Each rank gets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR,
// MASTER_PORT, COLLX_JOB_ID, COLLX_LAUNCHER and COLLX_AUTH_TOKEN (a fresh random one unless
// set: the rendezvous store admits only clients that know it). Every line a rank prints is prefixed with
// "[rank] ". The first rank to fail stops the job: the others get 2 s (--grace) to say what
// they saw of it (a survivor's "peer R failed" is often the clearest account) and end by
// themselves, then SIGTERM, then SIGKILL.
// Exit code: 0 when every rank exits 0; 1 when a rank exits non-zero, 128+signal when one is
// killed by a signal (or the launcher is); 124 after --timeout; 2 for bad usage.

#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

namespace {

using clock_type = std::chrono::steady_clock;

constexpr std::chrono::seconds kill_grace{3};
// After a rank fails, how long the others may run on before SIGTERM (--grace): collx's
// survivors notice a dead peer within a poll slice (50 ms) and print their error, which
// SIGTERM used to cut off. Bounded and short: a survivor busy elsewhere is stopped soon after.
constexpr double default_report_grace_s = 2;
// A rank that prints without newlines must not make the launcher buffer without bound.
constexpr std::size_t max_partial_line = 64 * 1024;

int usage(const char* msg) {
  if (msg) std::fprintf(stderr, "collx-run: %s\n", msg);
  std::fprintf(stderr, "usage: collx-run -n N [--timeout SECONDS] [--grace SECONDS] [--] prog args...\n");
  return 2;
}

void write_all(int fd, std::string_view data) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n > 0) {
      data.remove_prefix(static_cast<std::size_t>(n));
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && errno == EAGAIN) {
      // Our stdout may be a non-blocking descriptor shared with someone else.
      pollfd p{fd, POLLOUT, 0};
      ::poll(&p, 1, -1);
    } else {
      return;  // a closed stdout (EPIPE) is not a reason to abandon the ranks
    }
  }
}

std::optional<long> parse_long(const char* s) {
  char* end = nullptr;
  errno = 0;
  const long v = std::strtol(s, &end, 10);
  if (end == s || *end != '\0' || errno != 0) return std::nullopt;
  return v;
}

// Resolved the way execvp does, so that a typo is a usage error (exit 2) reported once,
// not N identical failures from the ranks.
bool findable(const std::string& prog) {
  auto runnable = [](const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(path.c_str(), X_OK) == 0;
  };
  if (prog.find('/') != std::string::npos) return runnable(prog);
  const char* path_env = std::getenv("PATH");
  const std::string path = path_env ? path_env : "/bin:/usr/bin";
  std::size_t start = 0;
  while (start <= path.size()) {
    std::size_t end = path.find(':', start);
    if (end == std::string::npos) end = path.size();
    const std::string dir = end == start ? "." : path.substr(start, end - start);
    if (runnable(dir + "/" + prog)) return true;
    start = end + 1;
  }
  return false;
}

// Rank 0 will listen on this port, so the launcher only borrows it to learn it is free.
std::optional<int> free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return std::nullopt;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof addr;
  std::optional<int> port;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0)
    port = ntohs(addr.sin_port);
  ::close(fd);
  return port;
}

bool valid_job_id(std::string_view id) {
  if (id.empty()) return false;
  for (char c : id)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')) return false;
  return true;
}

// Signals reach the poll loop through a pipe, so that no work happens in a handler.
int signal_pipe[2] = {-1, -1};

extern "C" void on_signal(int sig) {
  const int saved = errno;
  const unsigned char b = static_cast<unsigned char>(sig);
  [[maybe_unused]] const ssize_t n = ::write(signal_pipe[1], &b, 1);
  errno = saved;
}

struct stream {
  std::string prefix;  // "[rank] "
  int fd = -1;         // read end of the rank's pipe; -1 once at EOF
  int out_fd;          // where its lines go: 1 or 2
  std::string partial;
};

struct rank_proc {
  pid_t pid = -1;
  bool running = false;
  stream out{{}, -1, 1, {}};
  stream err{{}, -1, 2, {}};
};

class launcher {
 public:
  launcher(int n, std::optional<double> timeout, clock_type::duration report_grace, std::vector<char*> argv)
      : ranks_(static_cast<std::size_t>(n)),
        timeout_(timeout),
        report_grace_(report_grace),
        argv_(std::move(argv)) {}

  int run() {
    if (::pipe2(signal_pipe, O_CLOEXEC | O_NONBLOCK) != 0) return fail_setup("pipe");
    for (int sig : {SIGINT, SIGTERM, SIGCHLD, SIGPIPE}) {
      struct sigaction sa {};
      sa.sa_handler = sig == SIGPIPE ? SIG_IGN : on_signal;
      sigemptyset(&sa.sa_mask);
      sa.sa_flags = SA_RESTART;
      ::sigaction(sig, &sa, &saved_actions_[sig]);
    }
    if (const int rc = setup_environment(); rc != 0) return rc;
    if (timeout_) {
      // Past 1e8 s (three years) means "never", and it keeps the nanosecond clock from overflowing.
      const std::chrono::duration<double> t(std::min(*timeout_, 1e8));
      deadline_ = clock_type::now() + std::chrono::duration_cast<clock_type::duration>(t);
    }
    for (std::size_t r = 0; r < ranks_.size(); ++r) {
      if (!spawn(static_cast<int>(r))) {
        stop(SIGTERM);
        exit_code_ = 1;
        break;
      }
    }
    loop();
    for (auto& rank : ranks_) {
      drain(rank.out, true);
      drain(rank.err, true);
    }
    remove_segments();
    return exit_code_;
  }

 private:
  int fail_setup(const char* what) {
    std::fprintf(stderr, "collx-run: %s: %s\n", what, std::strerror(errno));
    return 1;
  }

  // Returns the exit code of a failure, or 0.
  int setup_environment() {
    if (const char* id = std::getenv("COLLX_JOB_ID")) {
      job_id_ = id;
      if (!valid_job_id(job_id_)) {
        std::fprintf(stderr, "collx-run: COLLX_JOB_ID '%s' may hold only a-z, 0-9 and '-'\n", id);
        return 2;
      }
    } else {
      std::random_device rd;
      char buf[64];
      std::snprintf(buf, sizeof buf, "%d-%08x", static_cast<int>(::getpid()), rd());
      job_id_ = buf;
    }
    std::string port;
    if (const char* p = std::getenv("MASTER_PORT")) {
      port = p;
    } else if (auto found = free_port()) {
      port = std::to_string(*found);
    } else {
      return fail_setup("cannot find a free TCP port on 127.0.0.1");
    }
    const std::string n = std::to_string(ranks_.size());
    // Set once in the launcher, inherited by every rank; only the rank numbers differ.
    ::setenv("WORLD_SIZE", n.c_str(), 1);
    ::setenv("LOCAL_WORLD_SIZE", n.c_str(), 1);
    ::setenv("GROUP_RANK", "0", 1);
    ::setenv("MASTER_ADDR", "127.0.0.1", 1);
    ::setenv("MASTER_PORT", port.c_str(), 1);
    ::setenv("COLLX_JOB_ID", job_id_.c_str(), 1);
    ::setenv("COLLX_LAUNCHER", "collx-run", 1);
    // The job's secret: the store admits only clients that know it. Drawn here unless
    // the caller chose one.
    if (const char* t = std::getenv("COLLX_AUTH_TOKEN"); t == nullptr || *t == '\0') {
      std::random_device rd;
      char token[33];
      std::snprintf(token, sizeof token, "%08x%08x%08x%08x", rd(), rd(), rd(), rd());
      ::setenv("COLLX_AUTH_TOKEN", token, 1);
    }
    return 0;
  }

  bool spawn(int r) {
    rank_proc& rank = ranks_[static_cast<std::size_t>(r)];
    int out[2], err[2];
    if (::pipe2(out, O_CLOEXEC) != 0) return fail_setup("pipe") == 0;
    if (::pipe2(err, O_CLOEXEC) != 0) {
      ::close(out[0]);
      ::close(out[1]);
      return fail_setup("pipe") == 0;
    }
    const pid_t parent = ::getpid();
    // A signal caught between fork and exec would run our handler in the child and write to
    // the launcher's signal pipe, as if the launcher itself had been signalled.
    sigset_t all, old;
    sigfillset(&all);
    ::sigprocmask(SIG_BLOCK, &all, &old);
    const pid_t pid = ::fork();
    if (pid == 0) exec_rank(r, parent, out[1], err[1], old);
    ::sigprocmask(SIG_SETMASK, &old, nullptr);
    ::close(out[1]);
    ::close(err[1]);
    if (pid < 0) {
      ::close(out[0]);
      ::close(err[0]);
      return fail_setup("fork") == 0;
    }
    // Non-blocking, because a rank's own children may keep a pipe open after it exits.
    ::fcntl(out[0], F_SETFL, O_NONBLOCK);
    ::fcntl(err[0], F_SETFL, O_NONBLOCK);
    rank.pid = pid;
    rank.running = true;
    rank.out.fd = out[0];
    rank.err.fd = err[0];
    // Built with append, not operator+, which trips a false -Wrestrict in g++ 12.
    rank.out.prefix.append("[").append(std::to_string(r)).append("] ");
    rank.err.prefix = rank.out.prefix;
    ++running_;
    return true;
  }

  [[noreturn]] void exec_rank(int r, pid_t parent, int out, int err, const sigset_t& mask) {
    // A rank must not outlive the launcher, even one killed with SIGKILL.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(1);
    for (int sig : {SIGINT, SIGTERM, SIGCHLD, SIGPIPE}) ::sigaction(sig, &saved_actions_[sig], nullptr);
    ::sigprocmask(SIG_SETMASK, &mask, nullptr);
    ::dup2(out, 1);
    ::dup2(err, 2);
    const std::string rs = std::to_string(r);
    ::setenv("RANK", rs.c_str(), 1);
    ::setenv("LOCAL_RANK", rs.c_str(), 1);
    ::execvp(argv_[0], argv_.data());
    const std::string msg =
        std::string("collx-run: cannot run '") + argv_[0] + "': " + std::strerror(errno) + "\n";
    write_all(2, msg);
    ::_exit(127);
  }

  void loop() {
    while (running_ > 0) {
      std::vector<pollfd> fds{{signal_pipe[0], POLLIN, 0}};
      for (auto& rank : ranks_)
        for (stream* s : {&rank.out, &rank.err})
          if (s->fd >= 0) fds.push_back({s->fd, POLLIN, 0});
      const int rc = ::poll(fds.data(), fds.size(), poll_timeout_ms());
      if (rc < 0 && errno != EINTR) {
        fail_setup("poll");
        stop(SIGKILL);
      }
      handle_signals();
      for (auto& rank : ranks_) {
        drain(rank.out, false);
        drain(rank.err, false);
      }
      reap();
      check_deadlines();
    }
  }

  int poll_timeout_ms() const {
    std::optional<clock_type::time_point> deadline;
    if (stopping_ && !killed_)
      deadline = stop_time_ + kill_grace;
    else if (failed_ && !stopping_)
      deadline = fail_time_ + report_grace_;
    else if (!stopping_ && timeout_)
      deadline = deadline_;
    if (!deadline) return -1;
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(*deadline - clock_type::now()).count();
    return static_cast<int>(std::max<long long>(0, std::min<long long>(left, 60'000)));
  }

  void check_deadlines() {
    const auto now = clock_type::now();
    if (!stopping_ && failed_ && now - fail_time_ >= report_grace_) stop(SIGTERM);
    if (!stopping_ && !failed_ && timeout_ && now >= deadline_) {
      std::fprintf(stderr, "collx-run: the job is still running after %g seconds (--timeout); stopping it\n",
                   *timeout_);
      exit_code_ = 124;
      stop(SIGTERM);
    }
    if (stopping_ && !killed_ && now - stop_time_ >= kill_grace) stop(SIGKILL);
  }

  void handle_signals() {
    unsigned char sigs[64];
    ssize_t n;
    while ((n = ::read(signal_pipe[0], sigs, sizeof sigs)) > 0) {
      for (ssize_t i = 0; i < n; ++i) {
        const int sig = sigs[i];
        if (sig != SIGINT && sig != SIGTERM) continue;  // SIGCHLD only wakes poll; reap() follows
        if (stopping_) {
          // A second interrupt means the user will not wait for the grace period.
          stop(SIGKILL);
        } else {
          std::fprintf(stderr, "collx-run: got %s; forwarding it to the ranks\n", strsignal(sig));
          exit_code_ = 128 + sig;
          stop(sig);
        }
      }
    }
  }

  void stop(int sig) {
    if (!stopping_) stop_time_ = clock_type::now();
    stopping_ = true;
    if (sig == SIGKILL) killed_ = true;
    for (auto& rank : ranks_)
      if (rank.running) ::kill(rank.pid, sig);
  }

  void reap() {
    int status = 0;
    pid_t pid;
    while ((pid = ::waitpid(-1, &status, WNOHANG)) > 0) {
      for (std::size_t r = 0; r < ranks_.size(); ++r) {
        rank_proc& rank = ranks_[r];
        if (rank.pid != pid || !rank.running) continue;
        rank.running = false;
        --running_;
        // Its last words are already in the pipe; print them before the verdict.
        drain(rank.out, false);
        drain(rank.err, false);
        const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        if (!ok && !stopping_ && !failed_) report_failure(static_cast<int>(r), status);
      }
    }
  }

  void report_failure(int r, int status) {
    std::string what;
    if (WIFSIGNALED(status)) {
      const int sig = WTERMSIG(status);
      what = "signal " + std::to_string(sig) + " (" + strsignal(sig) + ")";
      exit_code_ = 128 + sig;
    } else {
      what = "code " + std::to_string(WEXITSTATUS(status));
      exit_code_ = 1;
    }
    std::fprintf(stderr, "collx-run: rank %d exited with %s%s\n", r, what.c_str(),
                 running_ > 0 ? "; stopping the other ranks" : "");
    // The others are stopped after report_grace_ (check_deadlines), unless they end first.
    failed_ = true;
    fail_time_ = clock_type::now();
  }

  // Reads what is available without blocking and prints the complete lines; at_exit also
  // prints a last line that has no newline.
  void drain(stream& s, bool at_exit) {
    char buf[65536];
    while (s.fd >= 0) {
      const ssize_t n = ::read(s.fd, buf, sizeof buf);
      if (n > 0) {
        s.partial.append(buf, static_cast<std::size_t>(n));
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n == 0 || errno != EAGAIN) {
        ::close(s.fd);
        s.fd = -1;
        at_exit = true;
      }
      break;
    }
    std::string lines;
    std::size_t begin = 0, nl;
    while ((nl = s.partial.find('\n', begin)) != std::string::npos) {
      lines += s.prefix;
      lines.append(s.partial, begin, nl + 1 - begin);
      begin = nl + 1;
    }
    s.partial.erase(0, begin);
    if (!s.partial.empty() && (at_exit || s.partial.size() > max_partial_line)) {
      lines.append(s.prefix).append(s.partial).append("\n");
      s.partial.clear();
    }
    if (at_exit && s.fd >= 0) {
      // The rank is gone; whoever still holds its pipe (a stray grandchild) is not waited for.
      ::close(s.fd);
      s.fd = -1;
    }
    // Only whole lines are written, so the ranks' lines never interleave mid-line.
    write_all(s.out_fd, lines);
  }

  // collx's shm transport unlinks its segments itself; this catches those of crashed ranks.
  void remove_segments() const {
    const std::string prefix = "collx-" + job_id_ + "-";
    DIR* dir = ::opendir("/dev/shm");
    if (!dir) return;
    int removed = 0;
    while (const dirent* e = ::readdir(dir)) {
      if (std::string_view(e->d_name).starts_with(prefix) &&
          ::unlink((std::string("/dev/shm/") + e->d_name).c_str()) == 0)
        ++removed;
    }
    ::closedir(dir);
    if (removed > 0)
      std::fprintf(stderr, "collx-run: removed %d leftover shared-memory segment%s /dev/shm/%s*\n", removed,
                   removed == 1 ? "" : "s", prefix.c_str());
  }

  std::vector<rank_proc> ranks_;
  std::optional<double> timeout_;
  clock_type::duration report_grace_;
  std::vector<char*> argv_;
  std::string job_id_;
  struct sigaction saved_actions_[NSIG] {};
  clock_type::time_point deadline_, stop_time_, fail_time_;
  int running_ = 0;
  bool stopping_ = false, killed_ = false;
  bool failed_ = false;  // a rank has failed: the others are stopped after report_grace_
  int exit_code_ = 0;
};

// The launcher's options, and where the program's arguments start.
struct options {
  std::optional<long> n;
  std::optional<double> timeout;
  double grace = default_report_grace_s;
  int prog = 0;
};

// Sets the value of option a ("-n", "--timeout", "--grace"); returns an error, or nullptr.
const char* set_option(options& o, std::string_view a, const char* v) {
  if (a == "-n") {
    o.n = parse_long(v);
    // Each rank holds two pipes in the launcher; past a few thousand, the fd limit is near.
    if (!o.n || *o.n < 1 || *o.n > 4096) return "-n wants a number of ranks from 1 to 4096";
    return nullptr;
  }
  char* end = nullptr;
  const double t = std::strtod(v, &end);
  if (a == "--grace") {
    if (end == v || *end != '\0' || !(t >= 0) || t > 3600) return "--grace wants 0 to 3600 seconds";
    o.grace = t;
    return nullptr;
  }
  if (end == v || *end != '\0' || !(t > 0)) return "--timeout wants a positive number of seconds";
  o.timeout = t;
  return nullptr;
}

// Parses argv up to the program; returns an exit code when the launcher must stop here.
std::optional<int> parse(int argc, char** argv, options& o) {
  int i = 1;
  for (; i < argc; ++i) {
    std::string_view a = argv[i];
    if (a == "--") {
      ++i;
      break;
    }
    if (a == "-h" || a == "--help") {
      std::printf("usage: collx-run -n N [--timeout SECONDS] [--grace SECONDS] [--] prog args...\n");
      return 0;
    }
    // Accepted spellings: -n 4, -n4, --timeout 60, --timeout=60 (--grace alike).
    const char* v = nullptr;
    if (a.starts_with("--timeout=") || a.starts_with("--grace=")) {
      v = argv[i] + a.find('=') + 1;
      a = a.substr(0, a.find('='));
    } else if (a.starts_with("-n") && a.size() > 2) {
      v = argv[i] + 2;
      a = "-n";
    } else if (a == "-n" || a == "--timeout" || a == "--grace") {
      if (i + 1 >= argc) return usage((std::string(a) + " needs a value").c_str());
      v = argv[++i];
    } else if (a.size() > 1 && a[0] == '-') {
      return usage(("unknown option " + std::string(a)).c_str());
    } else {
      break;
    }
    if (const char* why = set_option(o, a, v)) return usage(why);
  }
  if (!o.n) return usage("-n N is required");
  if (i >= argc) return usage("no program to run");
  o.prog = i;
  return std::nullopt;
}

}  // namespace

int main(int argc, char** argv) {
  options o;
  if (const auto rc = parse(argc, argv, o)) return *rc;
  if (!findable(argv[o.prog])) {
    std::fprintf(stderr, "collx-run: cannot run '%s': not found or not executable\n", argv[o.prog]);
    return 2;
  }
  std::vector<char*> prog(argv + o.prog, argv + argc);
  prog.push_back(nullptr);
  const auto grace = std::chrono::duration_cast<clock_type::duration>(std::chrono::duration<double>(o.grace));
  return launcher(static_cast<int>(*o.n), o.timeout, grace, std::move(prog)).run();
}
