#pragma once

// What an executor needs from a two-sided transport. A transport moves byte spans
// between ranks, matched first-in first-out per (sender, receiver) pair, each message
// carrying an envelope: the signature of the collective call it belongs to. A receive
// names the envelope it expects, and the transport refuses a message whose envelope
// differs (before a byte of it lands in the caller's memory), which is how ranks that
// called different collectives find out instead of hanging or computing garbage.
//
// Operations are started with an `op` object that the caller keeps in place until
// the operation completes or is cancelled (like an MPI_Request it owns). test() is
// non-blocking and throws collx::error when the operation failed; poll() is the only
// blocking call, and it is bounded by its argument.

#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "collx/core/envelope.hpp"
#include "collx/core/error.hpp"

namespace collx {

template <class T>
concept transport = std::movable<T> && std::default_initializable<typename T::op> &&
    requires(T& t, const T& ct, int peer, const envelope& env, std::span<const std::byte> out,
             std::span<std::byte> in, typename T::op& o, std::chrono::nanoseconds d, errc kind,
             std::string_view why, std::uint64_t seq) {
  { ct.rank() } -> std::convertible_to<int>;
  { ct.size() } -> std::convertible_to<int>;
  // Start sending `out` to `peer`; the bytes must stay valid until test() says done.
  t.send(peer, env, out, o);
  // Start receiving exactly in.size() bytes from `peer`, in a message with envelope env.
  t.recv(peer, env, in, o);
  // True once done; throws collx::error if the operation failed.
  { t.test(o) } -> std::same_as<bool>;
  // Withdraw an operation that has not completed (after another one failed).
  t.cancel(o);
  // Wait at most d for any operation of this rank to make progress.
  t.poll(d);
  // This rank gives up on call #seq (the first call it did not complete) and every later
  // one: every peer's pending and future operations with it fail.
  t.abort(kind, why, seq);
  // Every step of call #seq has completed on this rank: throws collx::error when a peer
  // has given up on that call and its abort has reached this rank, so that a call does
  // not succeed here on data a peer sent before it failed the call. Never blocks.
  t.confirm(seq);
};

// The one-sided face of a transport that maps its peers' memory (shared memory, CUDA
// IPC): a receive can complete with a view of the message where it already lies, so
// the executor reduces straight out of it instead of copying it into a staging slot
// first. The view stays valid until release(); views of at most max_view_bytes().
template <class T>
concept one_sided_transport = transport<T> &&
    requires(T& t, const T& ct, int peer, const envelope& env, std::size_t bytes, typename T::op& o) {
  t.recv_view(peer, env, bytes, o);
  { ct.view(o) } -> std::same_as<const std::byte*>;
  t.release(o);
  { ct.max_view_bytes() } -> std::convertible_to<std::size_t>;
};

}  // namespace collx
