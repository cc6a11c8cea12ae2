#pragma once

// The TCP transport: ranks on any hosts, one full mesh of connections, several per
// peer pair when asked (a large message is striped across them: on loopback and on
// fast NICs one stream is bounded by one core's kernel copies, several are not).
//
// Everything is non-blocking and progressed from the caller's thread by one loop over
// the active connections; epoll is only how an idle rank sleeps. Each message is a
// fixed header (the envelope and the byte count) on the pair's first stream, then the
// payload, striped. A receive reads the header first and refuses a message whose
// envelope or size differs before a byte of it lands in the caller's memory; the other
// stripes are read only after that check. Payloads go straight from the socket into
// the destination: no staging copy in user space.
//
// A peer that dies shows as end of stream or a reset on its connections; a peer that
// aborts first sends a frame with its reason, so its peers report the root cause.

#include <sys/epoll.h>
#include <sys/uio.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <limits>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "collx/config.hpp"
#include "collx/core/error.hpp"
#include "collx/net/socket.hpp"
#include "collx/rendezvous/store.hpp"
#include "collx/transport/concept.hpp"

namespace collx {

struct tcp_options {
  // Connections per peer pair; COLLX_SOCKETS_PER_PEER overrides. Two saturate loopback
  // on the project's 2-core VM (docs/performance.md), one is what a 1-core rank wants.
  int streams = 0;  // 0: the environment's value, else 2
  // Messages below this size ride on one stream: striping a small message costs a
  // wake-up per stream and saves nothing.
  std::size_t stripe_min_bytes = 128 * 1024;
  // Nor are the messages of a call of this many bytes per rank (envelope count times the
  // element size: for reduce-scatter, the block each rank gets) or more: there the copies
  // are bound by memory, not by one core, and one stream per pair measured faster on
  // the 2-core VM (2.0-2.3 GB/s against 1.4-1.6 at 32-64 MiB; docs/performance.md).
  // 0: no limit.
  std::size_t stripe_max_call_bytes = 16 << 20;
  int socket_buffer_bytes = 4 << 20;
  // Interface to listen on, as NCCL_SOCKET_IFNAME; empty: COLLX_SOCKET_IFNAME, else the
  // one that routes to the store's host.
  std::string ifname;
  std::chrono::milliseconds timeout = detail::timeout_from_env(defaults::timeout);
  // The peers this transport connects to, by rank (size() entries); empty: every one.
  // The others are reached some other way (routed_transport: ranks of this node over
  // shared memory), and an operation with one of them is refused.
  std::vector<bool> reach;
};

namespace detail {

inline constexpr std::uint32_t tcp_magic = 0x78636f6c;  // "locx"
inline constexpr std::uint32_t tcp_hello_magic = 0x6f6c6c68;

struct tcp_header {
  std::uint32_t magic = tcp_magic;
  std::uint32_t kind = 0;  // 0 data, 1 abort (env.seq is then the call given up on)
  envelope_wire env;
  std::uint64_t size = 0;  // data: the message's bytes; abort: the reason's

  static tcp_header of(const envelope& e, std::uint64_t bytes) {
    tcp_header h;
    h.env = envelope_wire::of(e);
    h.size = bytes;
    return h;
  }
};

struct tcp_hello {
  std::uint32_t magic = tcp_hello_magic;
  std::int32_t rank = 0;
  std::int32_t stream = 0;
  std::uint32_t pad = 0;    // must be zero: a hello is exactly what connect_mesh sends
  std::uint64_t nonce = 0;  // the job's: a stray connection from another job is refused
};

// The frames a rank reads, apart from sockets so that a fuzzer can drive them from a
// byte buffer. Both are fixed-size; fewer bytes than a frame are need_more.
inline constexpr std::size_t tcp_max_reason = 1 << 16;  // of an abort frame, the part that is read

struct tcp_hello_parsed {
  parse_status status = parse_status::need_more;
  const char* why = nullptr;  // bad: what the listener logs
  tcp_hello hello;
};

// The hello of a connection accepted by rank `rank` of `size`, with `streams` per peer:
// only a higher rank of this job (its nonce) connects here. Whether that rank's stream
// is already connected is the caller's to check.
inline tcp_hello_parsed parse_tcp_hello(std::span<const std::byte> in, std::uint64_t nonce, int rank,
                                        int size, int streams) {
  tcp_hello_parsed r;
  if (in.size() < sizeof(tcp_hello)) return r;
  std::memcpy(&r.hello, in.data(), sizeof r.hello);
  r.status = parse_status::bad;
  const tcp_hello& h = r.hello;
  if (h.magic != tcp_hello_magic || h.nonce != nonce || h.pad != 0) {
    r.why = "not a rank of this job";
  } else if (h.rank <= rank || h.rank >= size || h.stream < 0 || h.stream >= streams) {
    r.why = "a rank or stream that is not expected here";
  } else {
    r.status = parse_status::done;
  }
  return r;
}

struct tcp_header_parsed {
  parse_status status = parse_status::need_more;
  bool abort = false;            // done: an abort frame, whose reason follows
  std::size_t reason_bytes = 0;  // abort: how much of the reason to read (at most tcp_max_reason)
  errc kind = errc::transport;   // bad: the error peer q's operations fail with
  std::string message;           // bad: and its text
  tcp_header header;
};

// The header at the front of a receive from peer q: an abort frame, or a message that
// must match what this rank expects (envelope and byte count).
inline tcp_header_parsed parse_tcp_header(std::span<const std::byte> in, const envelope& expect,
                                          std::size_t expect_size, int q) {
  tcp_header_parsed r;
  if (in.size() < sizeof(tcp_header)) return r;
  std::memcpy(&r.header, in.data(), sizeof r.header);
  const tcp_header& h = r.header;
  r.status = parse_status::bad;
  if (h.magic != tcp_magic) {
    r.message = "corrupt stream from peer " + std::to_string(q) + " (bad magic)";
    return r;
  }
  if (h.kind > 1 || (h.kind == 0 && h.env.spare != 0)) {
    r.message = "corrupt stream from peer " + std::to_string(q) + " (frame kind " + std::to_string(h.kind) +
                ", spare word " + std::to_string(h.env.spare) + ")";
    return r;
  }
  if (h.kind == 1) {
    r.status = parse_status::done;
    r.abort = true;
    r.reason_bytes = static_cast<std::size_t>(std::min<std::uint64_t>(h.size, tcp_max_reason));
    return r;
  }
  const envelope got = h.env.decoded();
  if (!(got == expect)) {
    r.kind = errc::mismatch;
    r.message = "this rank called " + expect.describe() + " but peer " + std::to_string(q) + " called " +
                got.describe();
  } else if (h.size != expect_size) {
    r.kind = errc::mismatch;
    r.message = "peer " + std::to_string(q) + " sent " + std::to_string(h.size) +
                " bytes where this rank expects " + std::to_string(expect_size) + " for " + expect.describe();
  } else {
    r.status = parse_status::done;
  }
  return r;
}

struct tcp_op {
  enum : int { idle, pending, done, failed };
  int state = idle;
  int peer = -1;
  bool sending = false;
  bool header_ok = false;
  int parts_left = 0;
  envelope expect;
  std::byte* buf = nullptr;
  std::size_t size = 0;
  tcp_header hdr;
  errc kind = errc::transport;
  std::string message;
};

// A contiguous part of one message on one stream: [begin, end) of the op's bytes,
// preceded by the header on the first stream.
struct tcp_piece {
  tcp_op* op;
  std::size_t begin;
  std::size_t end;
  std::size_t done = 0;  // header bytes first (when `header`), then payload bytes
  bool header = false;
};

struct tcp_stream {
  fd_t fd;
  std::deque<tcp_piece> sendq;
  bool sent_partly = false;  // a failure dropped a message half written: the stream is out of step
  std::deque<tcp_piece> recvq;
  std::uint32_t interest = 0;
  bool eof = false;  // the peer shut its side; what it sent is still readable
};

struct tcp_peer {
  std::vector<tcp_stream> streams;
  bool failed = false;
  // Told by the peer's abort frame: the first call it did not complete.
  std::uint64_t gave_up_at = std::numeric_limits<std::uint64_t>::max();
  errc kind = errc::peer_failure;
  std::string why;
};

}  // namespace detail

class tcp_transport {
 public:
  using op = detail::tcp_op;

  tcp_transport() = default;

  // Connects rank `rank` of `size` to every other rank, finding them through the
  // store. `host_hint` is the store's host: the interface that reaches it is the one
  // this rank listens on, unless tcp_options::ifname or COLLX_SOCKET_IFNAME names one.
  tcp_transport(store& st, int rank, int size, const std::string& host_hint = "127.0.0.1",
                tcp_options opt = {}, const std::string& prefix = "collx/tcp")
      : rank_(rank), opt_(std::move(opt)) {
    if (size < 1 || rank < 0 || rank >= size) {
      throw error(errc::invalid_argument, "tcp_transport", rank, error::no_rank,
                  "rank " + std::to_string(rank) + " of " + std::to_string(size));
    }
    if (opt_.streams <= 0) opt_.streams = streams_from_env();
    if (opt_.streams > 64) {
      throw error(errc::invalid_argument, "tcp_transport", rank, error::no_rank,
                  "at most 64 streams per peer, asked for " + std::to_string(opt_.streams));
    }
    peers_.resize(static_cast<std::size_t>(size));
    for (auto& p : peers_) p.streams.resize(static_cast<std::size_t>(opt_.streams));
    leave_out_unreached(size);
    prefix_store job(st, prefix);
    connect_mesh(job, size, host_hint);
  }

  tcp_transport(tcp_transport&&) noexcept = default;
  tcp_transport& operator=(tcp_transport&&) noexcept = default;
  ~tcp_transport() = default;

  int rank() const noexcept { return rank_; }
  int size() const noexcept { return static_cast<int>(peers_.size()); }
  int streams() const noexcept { return opt_.streams; }

  void send(int peer, const envelope& env, std::span<const std::byte> data, op& o) {
    start(peer, o, true);
    o.hdr = detail::tcp_header::of(env, data.size());
    o.buf = const_cast<std::byte*>(data.data());  // only read: the op is a send
    o.size = data.size();
    queue(peer, o, &detail::tcp_stream::sendq);
    // Eager first write: a small message is usually gone before the call returns.
    for (int s = 0; s < opt_.streams; ++s) {
      auto& st = stream(peer, s);
      if (!st.sendq.empty() && st.sendq.front().op == &o) pump_send(peer, st);
    }
  }

  void recv(int peer, const envelope& env, std::span<std::byte> data, op& o) {
    start(peer, o, false);
    o.expect = env;
    o.buf = data.data();
    o.size = data.size();
    queue(peer, o, &detail::tcp_stream::recvq);
    auto& st0 = stream(peer, 0);
    if (st0.recvq.front().op == &o) pump_recv(peer, 0);
  }

  bool test(op& o) {
    if (o.state == op::failed) throw error(o.kind, {}, rank_, o.peer, o.message);
    return o.state == op::done;
  }

  void cancel(op& o) {
    if (o.state != op::pending) return;
    // A message half on the wire cannot be taken back: the pair's streams are out of
    // step from here on, so the peer is written off (cancel follows a failure anyway).
    auto& p = peer_of(o.peer);
    bool started = false;
    for (auto& st : p.streams) {
      for (auto* q : {&st.sendq, &st.recvq}) {
        for (auto it = q->begin(); it != q->end();) {
          if (it->op == &o) {
            started = started || it->done != 0;
            it = q->erase(it);
          } else {
            ++it;
          }
        }
      }
    }
    o.state = op::idle;
    if (started) fail_peer(o.peer, errc::aborted, "an operation with this peer was cancelled midway");
  }

  void poll(std::chrono::nanoseconds d) {
    if (progress()) return;
    update_interest();
    std::array<epoll_event, 64> ev{};
    const auto ms = std::chrono::ceil<std::chrono::milliseconds>(d).count();
    const int n = ::epoll_wait(epoll_.get(), ev.data(), static_cast<int>(ev.size()),
                               static_cast<int>(std::clamp<long long>(ms, 0, 1 << 30)));
    for (int i = 0; i < n; ++i) {
      if (ev[static_cast<std::size_t>(i)].events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
        const auto id = ev[static_cast<std::size_t>(i)].data.u64;
        auto& st = stream(static_cast<int>(id >> 8), static_cast<int>(id & 0xff));
        st.eof = true;
      }
    }
    progress();
  }

  // This rank gives up: tell each peer why (where its first stream is between
  // messages, so the frame cannot land inside a payload: nothing queued, or the next
  // message not begun), then close everything.
  void abort(errc kind, std::string_view why, std::uint64_t seq) {
    if (aborted_) return;
    aborted_ = true;
    detail::tcp_header h;
    h.kind = 1;
    h.env.seq = seq;
    h.env.spare = static_cast<std::uint32_t>(kind);  // an abort frame's spare word: the errc
    h.size = why.size();
    for (int q = 0; q < size(); ++q) {
      if (q == rank_) continue;
      auto& p = peer_of(q);
      auto& st = p.streams[0];
      // A peer failed for a mismatch sent a header this rank refused; the connection is
      // whole, and that peer above all must learn why the call ends.
      const bool reachable = !p.failed || p.kind == errc::mismatch;
      if (st.fd && !st.sent_partly && (st.sendq.empty() || st.sendq.front().done == 0) && reachable) {
        std::array<iovec, 2> iov{iovec{&h, sizeof h}, iovec{const_cast<char*>(why.data()), why.size()}};
        msghdr m{};
        m.msg_iov = iov.data();
        m.msg_iovlen = iov.size();
        [[maybe_unused]] auto n = ::sendmsg(st.fd.get(), &m, MSG_NOSIGNAL | MSG_DONTWAIT);
      }
      fail_peer(q, kind, "this rank aborted: " + std::string(why), true);
      for (auto& s : p.streams) {
        if (s.fd) ::shutdown(s.fd.get(), SHUT_RDWR);
        s.fd.reset();
      }
    }
  }

  // Between calls each peer's first stream holds, next, either a later call's message
  // or the abort frame the peer sent when it gave up: a peek tells which, one system
  // call per peer.
  void confirm(std::uint64_t seq) {
    for (int q = 0; q < size(); ++q) {
      if (q == rank_) continue;
      auto& p = peer_of(q);
      if (!p.failed) read_waiting_abort(q);
      if (p.failed && p.gave_up_at <= seq) throw error(errc::peer_failure, {}, rank_, q, p.why);
    }
  }

  // Fault injection (collx/transport/faulty.hpp): close every connection without a
  // word, as a crashed host or a broken network would; `reset` sends an RST (a zero
  // linger), otherwise a FIN. This rank's own pending and later operations fail too.
  void inject_disconnect(bool reset) {
    for (int q = 0; q < size(); ++q) {
      if (q == rank_) continue;
      auto& p = peer_of(q);
      for (auto& s : p.streams) {
        if (!s.fd) continue;
        if (reset) {
          const linger l{1, 0};
          ::setsockopt(s.fd.get(), SOL_SOCKET, SO_LINGER, &l, sizeof l);
        } else {
          ::shutdown(s.fd.get(), SHUT_RDWR);
        }
        ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, s.fd.get(), nullptr);
        s.interest = 0;
        s.fd.reset();
      }
      fail_peer(q, errc::transport,
                std::string("this rank's connections were ") + (reset ? "reset" : "dropped") +
                    " by fault injection");
    }
  }

 private:
  static int streams_from_env() {
    if (const char* v = std::getenv("COLLX_SOCKETS_PER_PEER"); v != nullptr && *v != '\0') {
      const int n = std::atoi(v);
      if (n >= 1) return n;
    }
    return 2;
  }

  detail::tcp_peer& peer_of(int q) { return peers_[static_cast<std::size_t>(q)]; }

  bool reaches(int q) const {
    return q != rank_ && (opt_.reach.empty() || opt_.reach[static_cast<std::size_t>(q)]);
  }

  // Peers outside tcp_options::reach: never connected, and an operation with one fails.
  void leave_out_unreached(int size) {
    if (opt_.reach.empty()) return;
    if (opt_.reach.size() != static_cast<std::size_t>(size)) {
      throw error(errc::invalid_argument, "tcp_transport", rank_, error::no_rank,
                  "tcp_options::reach has " + std::to_string(opt_.reach.size()) + " entries for " +
                      std::to_string(size) + " ranks");
    }
    for (int q = 0; q < size; ++q) {
      if (q == rank_ || reaches(q)) continue;
      auto& p = peer_of(q);
      p.failed = true;
      p.kind = errc::invalid_argument;
      p.why = "this tcp transport does not reach peer " + std::to_string(q) + " (tcp_options::reach)";
    }
  }
  detail::tcp_stream& stream(int q, int s) { return peer_of(q).streams[static_cast<std::size_t>(s)]; }

  void check_peer(int peer) const {
    if (peer < 0 || peer >= size() || peer == rank_) {
      throw error(errc::invalid_argument, {}, rank_, peer, "no such peer");
    }
  }

  void start(int peer, op& o, bool sending) {
    check_peer(peer);
    auto& p = peer_of(peer);
    if (p.failed) throw error(p.kind, {}, rank_, peer, p.why);
    o.state = op::pending;
    o.peer = peer;
    o.sending = sending;
    o.header_ok = sending;
    o.message.clear();
  }

  // Stripe s of a message of `bytes` bytes in the call `env`: all on the first stream
  // when the message is small or the call large (tcp_options). Both ends decide alike:
  // they hold the same envelope.
  std::pair<std::size_t, std::size_t> stripe(std::size_t bytes, const envelope& env, int s) const {
    const auto n = static_cast<std::size_t>(opt_.streams);
    const std::uint64_t call = env.count * size_of(env.type);
    if (n == 1 || bytes < opt_.stripe_min_bytes ||
        (opt_.stripe_max_call_bytes != 0 && call >= opt_.stripe_max_call_bytes))
      return s == 0 ? std::pair{std::size_t{0}, bytes} : std::pair{bytes, bytes};
    const auto k = static_cast<std::size_t>(s);
    return {bytes * k / n, bytes * (k + 1) / n};
  }

  void queue(int peer, op& o, std::deque<detail::tcp_piece> detail::tcp_stream::*q) {
    o.parts_left = 0;
    for (int s = 0; s < opt_.streams; ++s) {
      const auto [b, e] = stripe(o.size, o.sending ? o.hdr.env.decoded() : o.expect, s);
      if (s != 0 && b == e) continue;
      (stream(peer, s).*q).push_back({&o, b, e, 0, s == 0});
      ++o.parts_left;
    }
  }

  void finish_part(op& o) {
    if (--o.parts_left == 0 && o.state == op::pending) o.state = op::done;
  }

  // One pass over every stream with work; true when anything moved.
  bool progress() {
    bool moved = false;
    for (int q = 0; q < size(); ++q) {
      if (q == rank_) continue;
      for (int s = 0; s < opt_.streams; ++s) {
        auto& st = stream(q, s);
        if (!st.sendq.empty()) moved = pump_send(q, st) || moved;
        if (!st.recvq.empty()) moved = pump_recv(q, s) || moved;
      }
    }
    return moved;
  }

  bool pump_send(int q, detail::tcp_stream& st) {
    bool moved = false;
    while (!st.sendq.empty()) {
      auto& pc = st.sendq.front();
      op& o = *pc.op;
      const std::size_t hbytes = pc.header ? sizeof(detail::tcp_header) : 0;
      const std::size_t total = hbytes + (pc.end - pc.begin);
      std::array<iovec, 2> iov{};
      int n = 0;
      if (pc.done < hbytes) {
        iov[0] = {reinterpret_cast<std::byte*>(&o.hdr) + pc.done, hbytes - pc.done};
        n = 1;
      }
      const std::size_t pdone = pc.done > hbytes ? pc.done - hbytes : 0;
      if (pc.end - pc.begin > pdone) {
        iov[static_cast<std::size_t>(n++)] = {o.buf + pc.begin + pdone, pc.end - pc.begin - pdone};
      }
      if (n > 0) {
        msghdr m{};
        m.msg_iov = iov.data();
        m.msg_iovlen = static_cast<std::size_t>(n);
        const ssize_t w = ::sendmsg(st.fd.get(), &m, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
          if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return moved;
          const int e = errno;
          // A peer that aborted may have said why before it closed: that is the root
          // cause, not the broken pipe.
          if (!salvage_abort_reason(q)) fail_peer(q, errc::peer_failure, lost(q, "sending", e));
          return true;
        }
        pc.done += static_cast<std::size_t>(w);
        moved = moved || w > 0;
      }
      if (pc.done < total) return moved;
      st.sendq.pop_front();
      finish_part(o);
      moved = true;
    }
    return moved;
  }

  bool pump_recv(int q, int s) {
    auto& st = stream(q, s);
    bool moved = false;
    while (!st.recvq.empty()) {
      auto& pc = st.recvq.front();
      op& o = *pc.op;
      if (!o.header_ok && !pc.header) return moved;  // its header, on stream 0, is not checked yet
      const std::size_t hbytes = pc.header ? sizeof(detail::tcp_header) : 0;
      if (pc.done < hbytes) {
        const ssize_t r = read_some(q, st, reinterpret_cast<std::byte*>(&o.hdr) + pc.done, hbytes - pc.done);
        if (r <= 0) return moved || r < 0;
        pc.done += static_cast<std::size_t>(r);
        moved = true;
        if (pc.done < hbytes) return moved;
        if (!check_header(q, o)) return true;
        // The other streams' stripes of this message may now be read.
        if (opt_.streams > 1) {
          for (int k = 1; k < opt_.streams; ++k) pump_recv(q, k);
        }
        if (st.recvq.empty() || &st.recvq.front() != &pc) return true;
      }
      const std::size_t len = pc.end - pc.begin;
      const std::size_t pdone = pc.done - hbytes;
      if (pdone < len) {
        const ssize_t r = read_some(q, st, o.buf + pc.begin + pdone, len - pdone);
        if (r <= 0) return moved || r < 0;
        pc.done += static_cast<std::size_t>(r);
        moved = true;
        if (pc.done - hbytes < len) return moved;
      }
      st.recvq.pop_front();
      finish_part(o);
      moved = true;
    }
    return moved;
  }

  // >0 bytes read; 0 nothing yet; -1 the peer is gone (its ops have failed).
  ssize_t read_some(int q, detail::tcp_stream& st, std::byte* dst, std::size_t len) {
    for (;;) {
      const ssize_t r = ::recv(st.fd.get(), dst, len, MSG_DONTWAIT);
      if (r > 0) return r;
      if (r == 0) {
        fail_peer(q, errc::peer_failure,
                  "peer " + std::to_string(q) +
                      " closed its connection in the middle of a collective (it exited, was killed, or its "
                      "host is gone)");
        return -1;
      }
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
      fail_peer(q, errc::peer_failure, lost(q, "receiving", errno));
      return -1;
    }
  }

  // When q's first stream is between messages and an abort frame is next on it: read
  // it and fail q with its reason.
  void read_waiting_abort(int q) {
    auto& st = stream(q, 0);
    if (!st.fd || !st.recvq.empty()) return;
    detail::tcp_header h;
    if (::recv(st.fd.get(), &h, sizeof h, MSG_PEEK | MSG_DONTWAIT) != static_cast<ssize_t>(sizeof h)) return;
    if (h.magic != detail::tcp_magic || h.kind != 1) return;
    ::recv(st.fd.get(), &h, sizeof h, MSG_DONTWAIT);  // peeked whole: cannot come short
    peer_gave_up(q, h, read_reason(q, h));
  }

  // The reason after an abort frame's header, read within a second.
  std::string read_reason(int q, const detail::tcp_header& h) {
    std::string why(static_cast<std::size_t>(std::min<std::uint64_t>(h.size, detail::tcp_max_reason)), '\0');
    try {
      detail::read_all(stream(q, 0).fd.get(), std::as_writable_bytes(std::span(why.data(), why.size())),
                       detail::clock::now() + std::chrono::seconds(1), "peer " + std::to_string(q));
    } catch (const error&) {
      why = "(reason lost)";
    }
    return why;
  }

  void peer_gave_up(int q, const detail::tcp_header& h, const std::string& why) {
    fail_peer(q, as_seen_by_peers(static_cast<errc>(h.env.spare)),
              "peer " + std::to_string(q) + " failed: " + (why.empty() ? "(reason lost)" : why));
    peer_of(q).gave_up_at = std::min(peer_of(q).gave_up_at, h.env.seq);
  }

  // After a failed send to q: when q's first stream is between messages, read what q
  // sent before it went (messages no receive was posted for yet, skipped) looking for
  // an abort frame, and fail q with the reason in it. True when it found one.
  bool salvage_abort_reason(int q) {
    auto& st = stream(q, 0);
    if (!st.fd || (!st.recvq.empty() && st.recvq.front().done != 0)) return false;
    std::vector<std::byte> skip(1 << 16);
    for (int messages = 0; messages < 64; ++messages) {
      std::array<std::byte, sizeof(detail::tcp_header)> bytes{};
      if (::recv(st.fd.get(), bytes.data(), bytes.size(), MSG_DONTWAIT) != static_cast<ssize_t>(bytes.size()))
        return false;
      // Classified as a receive would, expecting whatever data message it is.
      detail::tcp_header h;
      std::memcpy(&h, bytes.data(), sizeof h);
      const auto r = detail::parse_tcp_header(bytes, h.env.decoded(), h.size, q);
      if (r.status != detail::parse_status::done) return false;  // corrupt: nothing to learn
      if (r.abort) {
        std::string why(r.reason_bytes, '\0');
        const ssize_t n = ::recv(st.fd.get(), why.data(), why.size(), MSG_DONTWAIT);
        why.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
        peer_gave_up(q, h, why);
        return true;
      }
      // A data message: its first stripe rides on this stream.
      for (std::size_t left = stripe(h.size, h.env.decoded(), 0).second; left > 0;) {
        const ssize_t n = ::recv(st.fd.get(), skip.data(), std::min(left, skip.size()), MSG_DONTWAIT);
        if (n <= 0) return false;
        left -= static_cast<std::size_t>(n);
      }
    }
    return false;
  }

  std::string lost(int q, const char* what, int e) const {
    return "lost the connection to peer " + std::to_string(q) + " while " + what + " (" +
           detail::errno_text(e) + "): it exited, was killed, or its host is gone";
  }

  // The header of a receive has arrived: an abort frame, or a message that must match
  // what this rank expects.
  bool check_header(int q, op& o) {
    const auto r = detail::parse_tcp_header(std::as_bytes(std::span(&o.hdr, 1)), o.expect, o.size, q);
    if (r.status == detail::parse_status::done && r.abort) {
      peer_gave_up(q, o.hdr, read_reason(q, o.hdr));
      return false;
    }
    if (r.status != detail::parse_status::done) {
      if (r.kind == errc::mismatch) {
        // The payload behind the header is unread, so the stream is out of step: the
        // communicator fails as a whole, as it does on any error.
        o.state = op::failed;
        o.kind = r.kind;
        o.message = r.message;
      }
      fail_peer(q, r.kind, r.message);
      return false;
    }
    o.header_ok = true;
    return true;
  }

  // Every pending operation with peer q fails; later ones fail at once.
  void fail_peer(int q, errc kind, const std::string& why, bool self = false) {
    auto& p = peer_of(q);
    if (!p.failed) {
      p.failed = true;
      p.kind = self ? errc::aborted : kind;
      p.why = why;
    }
    for (auto& st : p.streams) {
      if (!st.sendq.empty() && st.sendq.front().done != 0) st.sent_partly = true;
      for (auto* dq : {&st.sendq, &st.recvq}) {
        for (auto& pc : *dq) {
          if (pc.op->state != op::pending) continue;
          pc.op->state = op::failed;
          pc.op->kind = p.kind;
          pc.op->message = p.why;
        }
        dq->clear();
      }
    }
  }

  void update_interest() {
    for (int q = 0; q < size(); ++q) {
      if (q == rank_) continue;
      for (int s = 0; s < opt_.streams; ++s) {
        auto& st = stream(q, s);
        if (!st.fd) continue;
        std::uint32_t want = st.eof ? 0u : static_cast<std::uint32_t>(EPOLLRDHUP);
        if (!st.recvq.empty() && (s == 0 || st.recvq.front().op->header_ok)) want |= EPOLLIN;
        if (!st.sendq.empty()) want |= EPOLLOUT;
        if (want == st.interest) continue;
        epoll_event ev{};
        ev.events = want;
        ev.data.u64 = (static_cast<std::uint64_t>(q) << 8) | static_cast<std::uint64_t>(s);
        ::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, st.fd.get(), &ev);
        st.interest = want;
      }
    }
  }

  // Every pair connected by opt_.streams sockets, met through `job` (this transport's
  // view of the store), each socket watched by epoll.
  void connect_mesh(store& job, int size, const std::string& host_hint) {
    const auto deadline = detail::clock::now() + opt_.timeout;
    detail::fd_t listener = detail::listen_on(listen_host(host_hint), "0");
    agree_with_rank0(job);
    job.set(std::to_string(rank_), detail::local_endpoint(listener.get()));
    // Higher ranks connect to lower ones; the kernel completes a connection before
    // accept(), so connecting everything first and accepting after cannot deadlock.
    connect_to_lower(job, deadline);
    accept_from_higher(listener, size, deadline);
    watch_streams(size);
  }

  // The address to listen on: the interface tcp_options::ifname or COLLX_SOCKET_IFNAME
  // names, else the one that routes to the store's host.
  std::string listen_host(const std::string& host_hint) const {
    std::string ifname = opt_.ifname;
    if (ifname.empty()) {
      if (const char* v = std::getenv("COLLX_SOCKET_IFNAME")) ifname = v;
    }
    if (ifname.empty()) {
      const std::string host = detail::route_address(host_hint);
      return host.empty() ? "127.0.0.1" : host;
    }
    std::string host = detail::interface_address(ifname);
    if (host.empty()) {
      throw error(errc::invalid_argument, "tcp_transport", rank_, error::no_rank,
                  "COLLX_SOCKET_IFNAME names '" + ifname + "', which has no usable address here");
    }
    return host;
  }

  // The job's nonce (rank 0 draws it) and striping: both ends of a pair decide alike how
  // to stripe a message only if their options agree, so rank 0's are the job's and a
  // rank with others refuses to start.
  void agree_with_rank0(store& job) {
    if (rank_ == 0) {
      std::random_device rd;
      const std::uint64_t nonce = (static_cast<std::uint64_t>(rd()) << 32) | rd();
      job.set("nonce", std::to_string(nonce));
    }
    nonce_ = std::stoull(job.get("nonce", opt_.timeout));
    const std::string stripes = std::to_string(opt_.streams) + " " + std::to_string(opt_.stripe_min_bytes) +
                                " " + std::to_string(opt_.stripe_max_call_bytes);
    if (rank_ == 0) job.set("stripes", stripes);
    if (const std::string rank0 = job.get("stripes", opt_.timeout); rank0 != stripes) {
      throw error(errc::invalid_argument, "tcp_transport", rank_, 0,
                  "this rank's streams, stripe_min_bytes and stripe_max_call_bytes are " + stripes +
                      ", rank 0's are " + rank0 + " (COLLX_SOCKETS_PER_PEER and tcp_options must agree)");
    }
  }

  void connect_to_lower(store& job, detail::clock::time_point deadline) {
    for (int q = 0; q < rank_; ++q) {
      if (!reaches(q)) continue;
      const auto [h, port] = detail::split_endpoint(job.get(std::to_string(q), left(deadline)));
      for (int s = 0; s < opt_.streams; ++s) {
        detail::fd_t fd = detail::connect_to(h, port, deadline);
        detail::tcp_hello hello;
        hello.rank = rank_;
        hello.stream = s;
        hello.nonce = nonce_;
        detail::write_pod(fd.get(), hello, deadline, "peer " + std::to_string(q));
        stream(q, s).fd = std::move(fd);
      }
    }
  }

  void accept_from_higher(const detail::fd_t& listener, int size, detail::clock::time_point deadline) {
    int expected = 0;
    for (int q = rank_ + 1; q < size; ++q) expected += reaches(q) ? opt_.streams : 0;
    while (expected > 0) {
      pollfd pf{listener.get(), POLLIN, 0};
      if (::poll(&pf, 1, detail::ms_until(deadline)) <= 0) {
        throw error(errc::timeout, "tcp_transport", rank_, error::no_rank,
                    "timed out waiting for " + std::to_string(expected) +
                        " connections from higher ranks: did every rank start?");
      }
      if (accept_one(listener, size, deadline)) --expected;
    }
  }

  // Accepts one connection and keeps it if it is a higher rank of this job opening a
  // stream not yet open; anything else is dropped and logged.
  bool accept_one(const detail::fd_t& listener, int size, detail::clock::time_point deadline) {
    sockaddr_storage sa{};
    socklen_t salen = sizeof sa;
    detail::fd_t fd(::accept4(listener.get(), reinterpret_cast<sockaddr*>(&sa), &salen, SOCK_CLOEXEC));
    if (!fd) return false;
    const std::string from = detail::endpoint_text(reinterpret_cast<const sockaddr*>(&sa));
    auto drop = [&](const char* why) {
      std::fprintf(stderr, "collx: tcp_transport rank %d refused a connection from %s: %s\n", rank_,
                   from.c_str(), why);
      return false;
    };
    // A peer sends its hello at once; a stranger gets a short window, not the timeout.
    const auto hello_by = std::min(deadline, detail::clock::now() + std::chrono::seconds(2));
    std::array<std::byte, sizeof(detail::tcp_hello)> bytes{};
    try {
      detail::read_all(fd.get(), bytes, hello_by, "a connecting peer");
    } catch (const error&) {
      return drop("no hello");
    }
    const auto r = detail::parse_tcp_hello(bytes, nonce_, rank_, size, opt_.streams);
    if (r.status != detail::parse_status::done) return drop(r.why != nullptr ? r.why : "no hello");
    const detail::tcp_hello& hello = r.hello;
    if (!reaches(hello.rank) || stream(hello.rank, hello.stream).fd) {
      return drop("a rank or stream that is not expected here");
    }
    stream(hello.rank, hello.stream).fd = std::move(fd);
    return true;
  }

  void watch_streams(int size) {
    epoll_.reset(::epoll_create1(EPOLL_CLOEXEC));
    if (!epoll_) detail::throw_sys(errc::transport, "epoll_create1", errno);
    for (int q = 0; q < size; ++q) {
      if (!reaches(q)) continue;
      for (int s = 0; s < opt_.streams; ++s) {
        auto& sk = stream(q, s);
        detail::set_nonblocking(sk.fd.get());
        detail::tune_data_socket(sk.fd.get(), opt_.socket_buffer_bytes);
        epoll_event ev{};
        ev.events = EPOLLRDHUP;
        ev.data.u64 = (static_cast<std::uint64_t>(q) << 8) | static_cast<std::uint64_t>(s);
        if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, sk.fd.get(), &ev) != 0) {
          detail::throw_sys(errc::transport, "epoll_ctl", errno);
        }
        sk.interest = EPOLLRDHUP;
      }
    }
  }

  static std::chrono::milliseconds left(detail::clock::time_point deadline) {
    return std::max(std::chrono::milliseconds(1),
                    std::chrono::duration_cast<std::chrono::milliseconds>(deadline - detail::clock::now()));
  }

  int rank_ = 0;
  tcp_options opt_;
  std::vector<detail::tcp_peer> peers_;
  detail::fd_t epoll_;
  std::uint64_t nonce_ = 0;
  bool aborted_ = false;
};

static_assert(transport<tcp_transport>);

}  // namespace collx
