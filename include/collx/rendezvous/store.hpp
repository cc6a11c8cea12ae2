#pragma once

// Rendezvous: the key-value store through which ranks find each other before any
// transport exists (who listens where, which shared-memory segment is whose). Two
// stores, one interface:
//   tcp_store   served by rank 0 at MASTER_ADDR:MASTER_PORT, torchrun's env:// convention
//   file_store  a directory every rank can see (one host, or a shared file system)
// Under mpirun, launch/init_mpi.hpp (init_from_mpi) starts a tcp_store and tells the ranks where it is.
//
// get() waits for a key that another rank has yet to set, always up to a deadline.
//
// Access: a tcp_store client opens with a hello carrying the job's token
// (COLLX_AUTH_TOKEN, which collx-run draws for each job; empty when unset). The server
// drops, and logs on stderr, a connection whose hello is missing, malformed or carries
// another token, and any request that is malformed or larger than its bounds (keys of
// 4 KiB, values of 64 MiB), so a stranger can neither join nor exhaust its memory.

#include <fcntl.h>
#include <poll.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "collx/config.hpp"
#include "collx/core/error.hpp"
#include "collx/net/socket.hpp"

namespace collx {

class store {
 public:
  virtual ~store() = default;
  virtual void set(std::string_view key, std::string_view value) = 0;
  // The value of `key`, waiting until some rank has set it; errc::timeout after `timeout`.
  virtual std::string get(std::string_view key, std::chrono::milliseconds timeout) = 0;
  // Adds delta to the integer at key (0 when unset) and returns the new value.
  virtual std::int64_t add(std::string_view key, std::int64_t delta) = 0;

  // Returns once `ranks` ranks have called barrier with this name.
  void barrier(const std::string& name, int ranks, std::chrono::milliseconds timeout) {
    const auto deadline = detail::clock::now() + timeout;
    const std::string key = name + "/arrived";
    if (add(key, 1) == ranks) set(name + "/open", "1");
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - detail::clock::now());
    get(name + "/open", std::max(left, std::chrono::milliseconds(1)));
  }
};

// A store seen through a key prefix (Gloo's and PyTorch's PrefixStore): key k of the
// view is "prefix/k" of the store under it. Each user of a shared store (a transport,
// the launcher, node discovery) takes its own view, so nobody joins keys by hand and
// two users cannot collide. The store under it must outlive the view.
class prefix_store final : public store {
 public:
  prefix_store(store& under, std::string prefix) : under_(under), prefix_(std::move(prefix) + "/") {}

  void set(std::string_view key, std::string_view value) override { under_.set(full(key), value); }
  std::string get(std::string_view key, std::chrono::milliseconds timeout) override {
    return under_.get(full(key), timeout);
  }
  std::int64_t add(std::string_view key, std::int64_t delta) override { return under_.add(full(key), delta); }

  // The view of this view's keys under `sub`: key k of it is "prefix/sub/k".
  prefix_store view(std::string_view sub) const { return prefix_store(under_, prefix_ + std::string(sub)); }

 private:
  std::string full(std::string_view key) const {
    std::string k = prefix_;
    k += key;
    return k;
  }

  store& under_;
  std::string prefix_;
};

namespace detail {

enum class store_cmd : std::uint8_t { set = 1, get = 2, add = 3 };

inline constexpr std::uint32_t store_hello_magic = 0x54534c43;  // "CLST"
inline constexpr std::size_t store_max_token = 256;
inline constexpr std::size_t store_max_key = 4096;
inline constexpr std::size_t store_max_value = std::size_t{64} << 20;

inline std::string auth_token_from_env() {
  const char* v = std::getenv("COLLX_AUTH_TOKEN");
  return v == nullptr ? std::string() : std::string(v);
}

// Compares without stopping at the first difference, so timing says nothing of the token.
inline bool same_token(std::string_view a, std::string_view b) {
  unsigned diff = a.size() == b.size() ? 0u : 1u;
  for (std::size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned>(a[i] ^ (i < b.size() ? b[i] : 0));
  return diff == 0;
}

// The store's wire protocol, apart from sockets so that a fuzzer can drive it from a
// byte buffer. A client opens with a hello: magic u32, token length u32, token. Then
// requests: cmd u8, key length u32, key, then set: value length u64 + value;
// get: timeout ms u64; add: delta i64. Integers are in the host's byte order.
inline constexpr std::size_t store_hello_head = 2 * sizeof(std::uint32_t);
inline constexpr std::size_t store_request_head = 1 + sizeof(std::uint32_t);
// The longest request: a set of the longest key and value.
inline constexpr std::size_t store_max_request = store_request_head + store_max_key + 8 + store_max_value;

// One request as it lies in the client's buffer: key and value are views into it.
struct store_request {
  store_cmd cmd = store_cmd::get;
  std::string_view key;
  std::uint64_t arg = 0;   // set: the value's length; get: the timeout in ms; add: the delta's bits
  std::string_view value;  // set only
};

struct store_parsed {
  parse_status status = parse_status::need_more;
  std::size_t used = 0;  // done: the message's length, to drop from the buffer
  std::string why;       // bad: what the server logs
  store_request request;
};

inline store_parsed store_refusal(std::string why) {
  store_parsed r;
  r.status = parse_status::bad;
  r.why = std::move(why);
  return r;
}

// The hello at the front of `in`, checked against the job's token.
inline store_parsed parse_store_hello(std::string_view in, std::string_view token) {
  if (in.size() < store_hello_head) return {};
  std::uint32_t magic = 0;
  std::uint32_t len = 0;
  std::memcpy(&magic, in.data(), sizeof magic);
  std::memcpy(&len, in.data() + 4, sizeof len);
  if (magic != store_hello_magic || len > store_max_token) return store_refusal("not a collx store client");
  if (in.size() < store_hello_head + len) return {};
  if (!same_token(in.substr(store_hello_head, len), token)) {
    return store_refusal("wrong job token (COLLX_AUTH_TOKEN)");
  }
  store_parsed r;
  r.status = parse_status::done;
  r.used = store_hello_head + len;
  return r;
}

// The request at the front of `in`. Bounds are checked as soon as the length fields
// are in, so a huge length is refused before its bytes are waited for.
inline store_parsed parse_store_request(std::string_view in) {
  if (in.size() < store_request_head) return {};
  std::uint32_t klen = 0;
  std::memcpy(&klen, in.data() + 1, sizeof klen);
  const auto cmd = static_cast<store_cmd>(in[0]);
  if (cmd != store_cmd::set && cmd != store_cmd::get && cmd != store_cmd::add) {
    return store_refusal("malformed request (command " + std::to_string(static_cast<int>(in[0])) + ")");
  }
  if (klen > store_max_key) return store_refusal("a key of " + std::to_string(klen) + " bytes");
  const std::size_t need = store_request_head + klen + 8;
  if (in.size() < need) return {};
  store_parsed r;
  r.request.cmd = cmd;
  r.request.key = in.substr(store_request_head, klen);
  std::memcpy(&r.request.arg, in.data() + store_request_head + klen, 8);
  r.used = need;
  if (cmd == store_cmd::set) {
    if (r.request.arg > store_max_value)
      return store_refusal("a value of " + std::to_string(r.request.arg) + " bytes");
    if (in.size() - need < r.request.arg) return {};
    r.request.value = in.substr(need, r.request.arg);
    r.used += r.request.arg;
  }
  r.status = parse_status::done;
  return r;
}

// What a client sends: the hello (a token over store_max_token is cut), and a request's
// head (a set's value follows it).
inline std::string encode_store_hello(std::string_view token) {
  token = token.substr(0, std::min(token.size(), store_max_token));
  const std::uint32_t magic = store_hello_magic;
  const auto len = static_cast<std::uint32_t>(token.size());
  std::string m(store_hello_head, '\0');
  std::memcpy(m.data(), &magic, 4);
  std::memcpy(m.data() + 4, &len, 4);
  m.append(token);
  return m;
}

inline std::string encode_store_request(store_cmd cmd, std::string_view key, std::uint64_t arg) {
  std::string m(1, static_cast<char>(cmd));
  const auto klen = static_cast<std::uint32_t>(key.size());
  m.append(reinterpret_cast<const char*>(&klen), sizeof klen);
  m.append(key);
  m.append(reinterpret_cast<const char*>(&arg), sizeof arg);
  return m;
}

// add: the integer held at a key (empty: 0) plus delta, wrapping; stored back as text.
// Nothing when the key holds something other than a number.
inline std::optional<std::int64_t> store_add(std::string& v, std::int64_t delta) {
  std::int64_t cur = 0;
  if (!v.empty()) {
    // The whole value must be the number: strtoll stopped at an embedded NUL and took
    // "12\0x" for 12, and saturated on overflow.
    const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), cur);
    if (ec != std::errc() || end != v.data() + v.size()) return std::nullopt;
  }
  cur = static_cast<std::int64_t>(static_cast<std::uint64_t>(cur) + static_cast<std::uint64_t>(delta));
  v = std::to_string(cur);
  return cur;
}

// The server half of tcp_store: one thread, one poll() loop over all clients, so a
// get that must wait parks its client instead of holding a thread.
class store_server {
 public:
  // `grace`: how long the server outlives its owner while other ranks' clients are still
  // connected (they may be in the barrier that rank 0 has just left); tcp_store passes
  // defaults::store_linger, or its timeout when shorter.
  store_server(fd_t listener, std::chrono::milliseconds grace, std::string token)
      : listen_(std::move(listener)), grace_(grace), token_(std::move(token)) {
    int p[2];
    if (::pipe2(p, O_CLOEXEC | O_NONBLOCK) != 0) throw_sys(errc::transport, "pipe", errno);
    wake_r_.reset(p[0]);
    wake_w_.reset(p[1]);
    set_nonblocking(listen_.get());
    thread_ = std::thread([this] { loop(); });
  }
  store_server(const store_server&) = delete;
  store_server& operator=(const store_server&) = delete;
  ~store_server() {
    stop_at_.store((clock::now() + grace_).time_since_epoch().count(), std::memory_order_release);
    stop_ = true;
    const char c = 0;
    [[maybe_unused]] auto n = ::write(wake_w_.get(), &c, 1);
    thread_.join();
  }

 private:
  struct client {
    fd_t fd;
    std::string from;    // the peer's address, for the log
    bool hello = false;  // its hello has been checked
    std::string in;
    std::string out;
    bool waiting = false;  // parked on a get
    std::string wait_key;
    clock::time_point wait_until;
  };

  void loop() {
    std::vector<pollfd> fds;
    // Once the owner has gone, serve until every client has hung up or the grace ends.
    while (!stop_ || (!clients_.empty() && clock::now().time_since_epoch().count() < stop_at_.load())) {
      fds.clear();
      fds.push_back({listen_.get(), POLLIN, 0});
      fds.push_back({wake_r_.get(), POLLIN, 0});
      int timeout = stop_ ? 10 : 1000;
      for (auto& c : clients_) {
        fds.push_back({c.fd.get(), static_cast<short>(POLLIN | (c.out.empty() ? 0 : POLLOUT)), 0});
        if (c.waiting) timeout = std::min(timeout, ms_until(c.wait_until));
      }
      if (::poll(fds.data(), fds.size(), timeout) < 0 && errno != EINTR) return;
      if (fds[0].revents & POLLIN) accept_all();
      if (fds[1].revents & POLLIN) {
        char drain[16];
        while (::read(wake_r_.get(), drain, sizeof drain) > 0) {
        }
      }
      std::size_t k = 2;
      for (auto it = clients_.begin(); it != clients_.end(); ++k) {
        const short ev = k < fds.size() ? fds[k].revents : 0;
        if (!serve(*it, ev)) {
          it = clients_.erase(it);
        } else {
          ++it;
        }
      }
      // Answer parked gets whose key appeared or whose time ran out.
      for (auto& c : clients_) {
        if (!c.waiting) continue;
        auto v = data_.find(c.wait_key);
        if (v != data_.end()) {
          reply_value(c, 0, v->second);
        } else if (clock::now() >= c.wait_until) {
          reply_value(c, 1, {});
        }
        if (!c.waiting) serve(c, 0);
      }
    }
    // Rank 0 may leave right after a barrier that others are still being told about:
    // what is owed to clients goes out before their connections close.
    const auto until = clock::now() + std::chrono::seconds(1);
    for (auto& c : clients_) {
      if (c.out.empty()) continue;
      try {
        write_all(c.fd.get(), std::as_bytes(std::span(c.out.data(), c.out.size())), until, "a store client");
      } catch (const error&) {
      }
    }
  }

  void accept_all() {
    for (;;) {
      sockaddr_storage sa{};
      socklen_t len = sizeof sa;
      const int fd =
          ::accept4(listen_.get(), reinterpret_cast<sockaddr*>(&sa), &len, SOCK_CLOEXEC | SOCK_NONBLOCK);
      if (fd < 0) return;
      clients_.push_back({});
      clients_.back().fd.reset(fd);
      clients_.back().from = endpoint_text(reinterpret_cast<const sockaddr*>(&sa));
    }
  }

  static void reply_value(client& c, std::uint8_t status, std::string_view v) {
    c.waiting = false;
    const std::uint64_t len = v.size();
    c.out.push_back(static_cast<char>(status));
    c.out.append(reinterpret_cast<const char*>(&len), sizeof len);
    c.out.append(v);
  }

  // False when the client is gone.
  bool serve(client& c, short ev) {
    bool eof = false;
    if (ev & (POLLIN | POLLHUP | POLLERR)) {
      char buf[64 * 1024];
      for (;;) {
        const ssize_t n = ::recv(c.fd.get(), buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0) {
          c.in.append(buf, static_cast<std::size_t>(n));
          // Parse as it comes, so a flood is refused before it piles up.
          if (!parse_all(c)) return false;
          // What is left is less than one request, unless the client sends on while its
          // get waits: a real client never does, so a flood is dropped, not buffered.
          if (c.in.size() > store_max_request)
            return refuse(c, "more than a request sent while its get waits");
          continue;
        }
        if (n == 0) {
          eof = true;  // what came before the end is still parsed (and refused, if bad)
          break;
        }
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) break;
        return false;
      }
    }
    if (!parse_all(c) || eof) return false;
    while (!c.out.empty()) {
      const ssize_t n = ::send(c.fd.get(), c.out.data(), c.out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        c.out.erase(0, static_cast<std::size_t>(n));
        continue;
      }
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) break;
      return false;
    }
    return true;
  }

  // Handles every whole request buffered, up to a parked get; false: drop the client.
  bool parse_all(client& c) {
    while (!c.waiting) {
      const store_parsed r = c.hello ? parse_store_request(c.in) : parse_store_hello(c.in, token_);
      if (r.status == parse_status::bad) return refuse(c, r.why);
      if (r.status == parse_status::need_more) break;
      if (!c.hello) {
        c.hello = true;
      } else if (!execute(c, r.request)) {
        return false;
      }
      c.in.erase(0, r.used);  // after execute: the request's views point into c.in
    }
    return true;
  }

  // Drops a client, saying why on stderr: the job's operator sees who knocked.
  static bool refuse(const client& c, const std::string& why) {
    std::fprintf(stderr, "collx: the store refused %s: %s\n", c.from.c_str(), why.c_str());
    return false;
  }

  bool execute(client& c, const store_request& r) {
    switch (r.cmd) {
      case store_cmd::set:
        data_[std::string(r.key)] = std::string(r.value);
        c.out.push_back(0);
        return true;
      case store_cmd::get: {
        auto v = data_.find(r.key);
        if (v != data_.end()) {
          reply_value(c, 0, v->second);
        } else {
          c.waiting = true;
          c.wait_key = std::string(r.key);
          c.wait_until = clock::now() + std::chrono::milliseconds(std::min<std::uint64_t>(r.arg, 1ull << 40));
        }
        return true;
      }
      case store_cmd::add: {
        std::int64_t delta = 0;
        std::memcpy(&delta, &r.arg, 8);
        auto& v = data_[std::string(r.key)];
        const auto cur = store_add(v, delta);
        if (!cur) return refuse(c, "add on key '" + std::string(r.key) + "', which does not hold a number");
        c.out.append(reinterpret_cast<const char*>(&*cur), sizeof *cur);
        return true;
      }
    }
    return false;
  }

  fd_t listen_;
  std::chrono::milliseconds grace_;
  std::string token_;
  std::atomic<clock::rep> stop_at_{0};
  fd_t wake_r_;
  fd_t wake_w_;
  std::atomic<bool> stop_{false};
  std::list<client> clients_;
  std::map<std::string, std::string, std::less<>> data_;
  std::thread thread_;
};

}  // namespace detail

// torchrun's env:// store: rank 0 serves it at host:port, every rank (rank 0 too) is a
// client. The server lives as long as rank 0's tcp_store, so rank 0 keeps it until the
// job's communicators are gone, then lingers at most defaults::store_linger for clients
// still connected.
class tcp_store final : public store {
 public:
  // serve: this process runs the server, listening on host:port; port 0 takes a free
  // one (port() says which), and an empty host listens on every interface.
  // token: the job's secret, COLLX_AUTH_TOKEN by default; client and server must agree.
  tcp_store(const std::string& host, std::uint16_t port, bool serve, std::chrono::milliseconds timeout,
            const std::string& token = detail::auth_token_from_env())
      : port_(port), timeout_(timeout) {
    if (serve) {
      auto listener = detail::listen_on(host, std::to_string(port));
      if (port == 0) {
        port_ = static_cast<std::uint16_t>(
            std::stoi(detail::split_endpoint(detail::local_endpoint(listener.get())).second));
      }
      const auto linger = std::min(timeout, defaults::store_linger);
      server_ = std::make_unique<detail::store_server>(std::move(listener), linger, token);
    }
    const std::string to = host.empty() ? std::string("127.0.0.1") : host;
    who_ = "the store at " + to + ":" + std::to_string(port_);
    fd_ = detail::connect_to(to, std::to_string(port_), detail::clock::now() + timeout);
    const std::string hello = detail::encode_store_hello(token);
    detail::write_all(fd_.get(), std::as_bytes(std::span(hello.data(), hello.size())), deadline(), who_);
  }

  std::uint16_t port() const { return port_; }

  void set(std::string_view key, std::string_view value) override {
    guarded([&] {
      request(detail::store_cmd::set, key, value.size());
      detail::write_all(fd_.get(), std::as_bytes(std::span(value.data(), value.size())), deadline(), who_);
      (void)detail::read_pod<std::uint8_t>(fd_.get(), deadline(), who_);
    });
  }

  std::string get(std::string_view key, std::chrono::milliseconds timeout) override {
    std::uint8_t status = 0;
    std::string v;
    guarded([&] {
      request(detail::store_cmd::get, key, static_cast<std::uint64_t>(timeout.count()));
      const auto until = detail::clock::now() + timeout + timeout_;
      status = detail::read_pod<std::uint8_t>(fd_.get(), until, who_);
      const auto len = detail::read_pod<std::uint64_t>(fd_.get(), until, who_);
      if (len > detail::store_max_value) {
        throw error(errc::transport, "rendezvous", error::no_rank, error::no_rank,
                    who_ + " answered with a value of " + std::to_string(len) + " bytes: not a collx store?");
      }
      v.assign(len, '\0');
      detail::read_all(fd_.get(), std::as_writable_bytes(std::span(v.data(), v.size())), until, who_);
    });
    if (status != 0) {
      throw error(errc::timeout, "rendezvous", error::no_rank, error::no_rank,
                  "key '" + std::string(key) + "' did not appear in " + who_ + " within " +
                      std::to_string(timeout.count()) + " ms: did every rank start?");
    }
    return v;
  }

  std::int64_t add(std::string_view key, std::int64_t delta) override {
    std::uint64_t bits = 0;
    std::memcpy(&bits, &delta, 8);
    std::int64_t v = 0;
    guarded([&] {
      request(detail::store_cmd::add, key, bits);
      v = detail::read_pod<std::int64_t>(fd_.get(), deadline(), who_);
    });
    return v;
  }

 private:
  detail::clock::time_point deadline() const { return detail::clock::now() + timeout_; }

  // Errors of the exchange, as rendezvous errors; a store that hangs up says the likely why.
  // One exchange at a time (communicators may share a store across threads), and one
  // that failed partway closes the connection: a reply still owed would put every later
  // exchange out of step.
  template <class F>
  void guarded(F&& f) {
    std::lock_guard lock(m_);
    try {
      f();
    } catch (const error& e) {
      if (e.kind() != errc::invalid_argument) fd_.reset();  // refused before a byte went: still in step
      std::string why = e.detail();
      if (e.kind() == errc::peer_failure) {
        why +=
            " (the store hangs up on a request too large, or on a client whose COLLX_AUTH_TOKEN differs from "
            "rank 0's: its log says which)";
      }
      throw error(e.kind(), "rendezvous", error::no_rank, error::no_rank, why);
    }
  }

  void request(detail::store_cmd cmd, std::string_view key, std::uint64_t arg) {
    if (!fd_) {
      throw error(
          errc::transport, "rendezvous", error::no_rank, error::no_rank,
          "an earlier exchange with " + who_ + " failed partway, so this client closed its connection");
    }
    if (key.size() > detail::store_max_key ||
        (cmd == detail::store_cmd::set && arg > detail::store_max_value)) {
      throw error(errc::invalid_argument, "rendezvous", error::no_rank, error::no_rank,
                  "a store key holds at most " + std::to_string(detail::store_max_key) +
                      " bytes and a value " + std::to_string(detail::store_max_value));
    }
    const std::string msg = detail::encode_store_request(cmd, key, arg);
    detail::write_all(fd_.get(), std::as_bytes(std::span(msg.data(), msg.size())), deadline(), who_);
  }

  std::uint16_t port_;
  std::string who_;
  std::chrono::milliseconds timeout_;
  std::unique_ptr<detail::store_server> server_;  // rank 0 only; declared before fd_: outlives it
  detail::fd_t fd_;
  std::mutex m_;
};

// A store in a directory: a key is a file, written whole and renamed into place so a
// reader never sees half a value; add() holds an flock on the key's lock file.
class file_store final : public store {
 public:
  explicit file_store(std::string dir) : dir_(std::move(dir)) {
    if (::mkdir(dir_.c_str(), 0700) != 0 && errno != EEXIST) {
      detail::throw_sys(errc::invalid_argument, "cannot create the store directory '" + dir_ + "'", errno);
    }
  }

  void set(std::string_view key, std::string_view value) override {
    const std::string path = path_of(key);
    const std::string tmp = path + ".tmp." + std::to_string(::getpid());
    write_file(tmp, value);
    if (::rename(tmp.c_str(), path.c_str()) != 0) detail::throw_sys(errc::transport, "rename " + tmp, errno);
  }

  std::string get(std::string_view key, std::chrono::milliseconds timeout) override {
    const auto deadline = detail::clock::now() + timeout;
    auto pause = std::chrono::microseconds(100);
    for (;;) {
      if (auto v = read_file(path_of(key))) return *v;
      if (detail::clock::now() >= deadline) {
        throw error(errc::timeout, "rendezvous", error::no_rank, error::no_rank,
                    "key '" + std::string(key) + "' did not appear in the file store " + dir_ + " within " +
                        std::to_string(timeout.count()) + " ms: did every rank start?");
      }
      std::this_thread::sleep_for(pause);
      pause = std::min(pause * 2, std::chrono::microseconds(10000));
    }
  }

  std::int64_t add(std::string_view key, std::int64_t delta) override {
    const std::string path = path_of(key);
    detail::fd_t lock(::open((path + ".lock").c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0600));
    if (!lock || ::flock(lock.get(), LOCK_EX) != 0) detail::throw_sys(errc::transport, "lock " + path, errno);
    const auto v = read_file(path);
    const std::int64_t cur = (v && !v->empty() ? std::stoll(*v) : 0) + delta;
    set(key, std::to_string(cur));
    return cur;
  }

  const std::string& directory() const noexcept { return dir_; }

 private:
  // Keys may hold '/', file names may not.
  std::string path_of(std::string_view key) const {
    std::string p = dir_ + "/";
    for (char c : key) {
      if (std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.') {
        p.push_back(c);
      } else {
        char hex[4];
        std::snprintf(hex, sizeof hex, "%%%02X", static_cast<unsigned char>(c));
        p += hex;
      }
    }
    return p;
  }

  static void write_file(const std::string& path, std::string_view value) {
    detail::fd_t fd(::open(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0600));
    if (!fd) detail::throw_sys(errc::transport, "cannot write " + path, errno);
    std::size_t done = 0;
    while (done < value.size()) {
      const ssize_t n = ::write(fd.get(), value.data() + done, value.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) detail::throw_sys(errc::transport, "cannot write " + path, errno);
      done += static_cast<std::size_t>(n);
    }
  }

  static std::optional<std::string> read_file(const std::string& path) {
    detail::fd_t fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) return std::nullopt;
    std::string v;
    char buf[4096];
    for (;;) {
      const ssize_t n = ::read(fd.get(), buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      v.append(buf, static_cast<std::size_t>(n));
    }
    return v;
  }

  std::string dir_;
};

}  // namespace collx
