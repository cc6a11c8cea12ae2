#pragma once

// collx::error: every failure a user can see. It derives from std::system_error so
// that code which already handles system errors keeps working, and it carries what a
// person needs to act: the collective, the rank that saw the failure, the peer involved.

#include <string>
#include <string_view>
#include <system_error>

namespace collx {

enum class errc {
  invalid_argument = 1,  // bad input, caught before any byte moved
  mismatch,              // ranks called different collectives, counts, types or algorithms
  timeout,               // a bounded wait ran out
  peer_failure,          // a peer died, was killed, or failed its own part
  aborted,               // the communicator was aborted or failed earlier
  transport,             // the transport itself failed (socket, mapping, ...)
  unsupported,           // a valid request that this build cannot serve
};

// The kind's name as the enumerator is spelled ("mismatch"), for logs and trace files.
constexpr std::string_view to_string(errc e) noexcept {
  switch (e) {
    case errc::invalid_argument: return "invalid_argument";
    case errc::mismatch: return "mismatch";
    case errc::timeout: return "timeout";
    case errc::peer_failure: return "peer_failure";
    case errc::aborted: return "aborted";
    case errc::transport: return "transport";
    case errc::unsupported: return "unsupported";
  }
  return "unknown";
}

namespace detail {
class error_category_impl final : public std::error_category {
 public:
  const char* name() const noexcept override { return "collx"; }
  std::string message(int ev) const override {
    switch (static_cast<errc>(ev)) {
      case errc::invalid_argument: return "invalid argument";
      case errc::mismatch: return "mismatched collective calls across ranks";
      case errc::timeout: return "timed out";
      case errc::peer_failure: return "peer failure";
      case errc::aborted: return "communicator aborted";
      case errc::transport: return "transport failure";
      case errc::unsupported: return "unsupported";
    }
    return "unknown collx error";
  }
};
}  // namespace detail

inline const std::error_category& error_category() noexcept {
  static const detail::error_category_impl instance;
  return instance;
}

inline std::error_code make_error_code(errc e) noexcept { return {static_cast<int>(e), error_category()}; }

class error : public std::system_error {
 public:
  static constexpr int no_rank = -1;

  error(errc code, std::string_view collective, int rank, int peer, std::string_view message)
      : std::system_error(make_error_code(code)),
        what_(compose(collective, rank, peer, message)),
        collective_(collective),
        detail_(message),
        rank_(rank),
        peer_(peer) {}

  // The message alone: std::system_error would append the code's generic text.
  const char* what() const noexcept override { return what_.c_str(); }
  errc kind() const noexcept { return static_cast<errc>(code().value()); }
  const std::string& collective() const noexcept { return collective_; }
  const std::string& detail() const noexcept { return detail_; }
  int rank() const noexcept { return rank_; }
  int peer() const noexcept { return peer_; }

 private:
  static std::string compose(std::string_view coll, int rank, int peer, std::string_view msg) {
    std::string s = "collx";
    if (!coll.empty()) s.append(": ").append(coll);
    if (rank != no_rank) s.append(" on rank ").append(std::to_string(rank));
    if (peer != no_rank) s.append(" (peer ").append(std::to_string(peer)).append(")");
    s.append(": ").append(msg);
    return s;
  }

  std::string what_;
  std::string collective_;
  std::string detail_;
  int rank_;
  int peer_;
};

// What a rank's failure is to the peers that learn of it through its abort: a mismatch
// stays one (the call was mismatched, whichever rank saw it, and every rank says so);
// anything else is that peer's failure.
constexpr errc as_seen_by_peers(errc kind) noexcept {
  return kind == errc::mismatch ? errc::mismatch : errc::peer_failure;
}

}  // namespace collx

template <>
struct std::is_error_code_enum<collx::errc> : std::true_type {};
