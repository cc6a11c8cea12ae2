#pragma once

// The socket plumbing that the TCP store and the TCP transport share: an owned file
// descriptor, name resolution for IPv4 and IPv6, listening, connecting with retries,
// and whole-buffer reads and writes that give up at a deadline. Every blocking call
// here is bounded: a peer that never answers becomes a collx::error, not a hang.

#include <arpa/inet.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <utility>

#include "collx/core/error.hpp"

namespace collx::detail {

using clock = std::chrono::steady_clock;

class fd_t {
 public:
  fd_t() = default;
  explicit fd_t(int fd) noexcept : fd_(fd) {}
  fd_t(fd_t&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  fd_t& operator=(fd_t&& o) noexcept {
    if (this != &o) reset(std::exchange(o.fd_, -1));
    return *this;
  }
  ~fd_t() { reset(); }
  int get() const noexcept { return fd_; }
  explicit operator bool() const noexcept { return fd_ >= 0; }
  void reset(int fd = -1) noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

// What a wire parser makes of the bytes it has so far: one whole message (done), not
// enough bytes to judge yet (need_more: nothing is consumed), or a message to refuse.
enum class parse_status { done, need_more, bad };

inline std::string errno_text(int e) { return std::string(std::strerror(e)); }

[[noreturn]] inline void throw_sys(errc kind, std::string_view what, int e) {
  throw error(kind, {}, error::no_rank, error::no_rank, std::string(what) + ": " + errno_text(e));
}

// An endpoint as text: "1.2.3.4:5" or "[::1]:5".
inline std::string endpoint_text(const sockaddr* sa) {
  char host[INET6_ADDRSTRLEN] = {};
  std::uint16_t port = 0;
  if (sa->sa_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(sa);
    ::inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
    port = ntohs(a->sin6_port);
    return "[" + std::string(host) + "]:" + std::to_string(port);
  }
  const auto* a = reinterpret_cast<const sockaddr_in*>(sa);
  ::inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
  port = ntohs(a->sin_port);
  return std::string(host) + ":" + std::to_string(port);
}

// Splits "host:port" or "[v6]:port".
inline std::pair<std::string, std::string> split_endpoint(std::string_view ep) {
  if (!ep.empty() && ep.front() == '[') {
    const auto close = ep.find(']');
    if (close != std::string_view::npos && close + 1 < ep.size() && ep[close + 1] == ':') {
      return {std::string(ep.substr(1, close - 1)), std::string(ep.substr(close + 2))};
    }
  }
  const auto colon = ep.rfind(':');
  if (colon == std::string_view::npos) return {std::string(ep), {}};
  return {std::string(ep.substr(0, colon)), std::string(ep.substr(colon + 1))};
}

struct addrinfo_list {
  addrinfo* head = nullptr;
  ~addrinfo_list() {
    if (head != nullptr) ::freeaddrinfo(head);
  }
};

inline void resolve(addrinfo_list& out, const std::string& host, const std::string& port, bool passive) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = passive ? AI_PASSIVE : 0;
  const int rc = ::getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &out.head);
  if (rc != 0) {
    throw error(errc::invalid_argument, {}, error::no_rank, error::no_rank,
                "cannot resolve '" + host + ":" + port + "': " + ::gai_strerror(rc));
  }
}

inline void set_nonblocking(int fd) {
  const int flags = ::fcntl(fd, F_GETFL, 0);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) throw_sys(errc::transport, "fcntl", errno);
}

// Data sockets: no Nagle delay on the small envelope that heads each message, and
// buffers large enough that a segment does not stall on the kernel's default window.
inline void tune_data_socket(int fd, int buffer_bytes) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (buffer_bytes > 0) {
    ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buffer_bytes, sizeof buffer_bytes);
    ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buffer_bytes, sizeof buffer_bytes);
  }
}

// Listens on host:port (port "0": any free port). An empty host means every interface.
inline fd_t listen_on(const std::string& host, const std::string& port, int backlog = 512) {
  addrinfo_list ai;
  resolve(ai, host, port, true);
  int last = 0;
  for (addrinfo* a = ai.head; a != nullptr; a = a->ai_next) {
    fd_t fd(::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol));
    if (!fd) {
      last = errno;
      continue;
    }
    int one = 1;
    ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(fd.get(), a->ai_addr, a->ai_addrlen) == 0 && ::listen(fd.get(), backlog) == 0) return fd;
    last = errno;
  }
  throw_sys(errc::transport, "cannot listen on '" + host + ":" + port + "'", last);
}

inline std::string local_endpoint(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0)
    throw_sys(errc::transport, "getsockname", errno);
  return endpoint_text(reinterpret_cast<sockaddr*>(&ss));
}

inline int ms_until(clock::time_point deadline) {
  const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - clock::now()).count();
  return left <= 0 ? 0 : static_cast<int>(std::min<long long>(left, 1 << 30));
}

// Connects to host:port, retrying refused connections until the deadline: the peer
// (the store's server, a lower rank) may not be listening yet.
inline fd_t connect_to(const std::string& host, const std::string& port, clock::time_point deadline) {
  auto pause = std::chrono::milliseconds(1);
  for (;;) {
    addrinfo_list ai;
    resolve(ai, host, port, false);
    int last = ETIMEDOUT;
    for (addrinfo* a = ai.head; a != nullptr; a = a->ai_next) {
      fd_t fd(::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol));
      if (!fd) {
        last = errno;
        continue;
      }
      if (::connect(fd.get(), a->ai_addr, a->ai_addrlen) != 0) {
        if (errno != EINPROGRESS) {
          last = errno;
          continue;
        }
        pollfd p{fd.get(), POLLOUT, 0};
        if (::poll(&p, 1, ms_until(deadline)) <= 0) {
          last = ETIMEDOUT;
          continue;
        }
        int err = 0;
        socklen_t len = sizeof err;
        ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0) {
          last = err;
          continue;
        }
      }
      const int flags = ::fcntl(fd.get(), F_GETFL, 0);
      ::fcntl(fd.get(), F_SETFL, flags & ~O_NONBLOCK);
      return fd;
    }
    if (clock::now() + pause >= deadline) {
      throw error(errc::timeout, {}, error::no_rank, error::no_rank,
                  "cannot connect to " + host + ":" + port + " before the timeout: " + errno_text(last));
    }
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::milliseconds(100));
  }
}

// Writes all of `data`, waiting at most until the deadline. Works on blocking and
// non-blocking sockets alike.
inline void write_all(int fd, std::span<const std::byte> data, clock::time_point deadline,
                      std::string_view who) {
  std::size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::send(fd, data.data() + done, data.size() - done, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      done += static_cast<std::size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
      throw_sys(errc::peer_failure, "sending to " + std::string(who), errno);
    }
    pollfd p{fd, POLLOUT, 0};
    if (::poll(&p, 1, ms_until(deadline)) == 0) {
      throw error(errc::timeout, {}, error::no_rank, error::no_rank,
                  "timed out sending to " + std::string(who));
    }
  }
}

// Reads exactly data.size() bytes, waiting at most until the deadline.
inline void read_all(int fd, std::span<std::byte> data, clock::time_point deadline, std::string_view who) {
  std::size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::recv(fd, data.data() + done, data.size() - done, MSG_DONTWAIT);
    if (n > 0) {
      done += static_cast<std::size_t>(n);
      continue;
    }
    if (n == 0) {
      throw error(errc::peer_failure, {}, error::no_rank, error::no_rank,
                  std::string(who) + " closed the connection");
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK)
      throw_sys(errc::peer_failure, "receiving from " + std::string(who), errno);
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, ms_until(deadline)) == 0) {
      throw error(errc::timeout, {}, error::no_rank, error::no_rank,
                  "timed out receiving from " + std::string(who));
    }
  }
}

template <class T>
void write_pod(int fd, const T& v, clock::time_point deadline, std::string_view who) {
  write_all(fd, std::as_bytes(std::span(&v, 1)), deadline, who);
}

template <class T>
T read_pod(int fd, clock::time_point deadline, std::string_view who) {
  T v{};
  read_all(fd, std::as_writable_bytes(std::span(&v, 1)), deadline, who);
  return v;
}

// The address of interface `name` (COLLX_SOCKET_IFNAME, as NCCL_SOCKET_IFNAME), IPv4
// first unless only IPv6 is configured. Empty when there is no such interface.
inline std::string interface_address(const std::string& name) {
  ifaddrs* list = nullptr;
  if (::getifaddrs(&list) != 0) return {};
  std::string v4;
  std::string v6;
  for (ifaddrs* i = list; i != nullptr; i = i->ifa_next) {
    if (i->ifa_addr == nullptr || name != i->ifa_name) continue;
    char host[INET6_ADDRSTRLEN] = {};
    if (i->ifa_addr->sa_family == AF_INET && v4.empty()) {
      ::inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(i->ifa_addr)->sin_addr, host, sizeof host);
      v4 = host;
    } else if (i->ifa_addr->sa_family == AF_INET6 && v6.empty()) {
      const auto* a6 = reinterpret_cast<sockaddr_in6*>(i->ifa_addr);
      if (IN6_IS_ADDR_LINKLOCAL(&a6->sin6_addr)) continue;  // would need a scope id
      ::inet_ntop(AF_INET6, &a6->sin6_addr, host, sizeof host);
      v6 = host;
    }
  }
  ::freeifaddrs(list);
  return v4.empty() ? v6 : v4;
}

// The local address this host uses to reach `host`: the interface that routes to the
// store's server is the one the other ranks can reach us on (a UDP connect sends nothing).
inline std::string route_address(const std::string& host) {
  addrinfo_list ai;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_DGRAM;
  if (::getaddrinfo(host.c_str(), "9", &hints, &ai.head) != 0) return {};
  for (addrinfo* a = ai.head; a != nullptr; a = a->ai_next) {
    fd_t fd(::socket(a->ai_family, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (!fd || ::connect(fd.get(), a->ai_addr, a->ai_addrlen) != 0) continue;
    const std::string ep = local_endpoint(fd.get());
    return split_endpoint(ep).first;
  }
  return {};
}

}  // namespace collx::detail
