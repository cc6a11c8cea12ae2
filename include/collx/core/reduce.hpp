#pragma once

// Reductions. Schedules work on bytes and a dtype, so the element type and the
// reduction meet here, once: a switch picks a typed loop the compiler vectorizes.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <type_traits>

#include "collx/core/dtype.hpp"

namespace collx {

// avg is sum divided by the rank count, for floating types only (as in NCCL): an
// integer average would silently truncate.
enum class reduce_op : std::uint8_t { sum, prod, min, max, avg };

inline constexpr reduce_op all_reduce_ops[] = {reduce_op::sum, reduce_op::prod, reduce_op::min,
                                               reduce_op::max, reduce_op::avg};

constexpr std::string_view to_string(reduce_op op) noexcept {
  switch (op) {
    case reduce_op::sum: return "sum";
    case reduce_op::prod: return "prod";
    case reduce_op::min: return "min";
    case reduce_op::max: return "max";
    case reduce_op::avg: return "avg";
  }
  return "?";
}

constexpr bool supports(dtype t, reduce_op op) noexcept { return op != reduce_op::avg || is_floating(t); }

namespace detail {

// Host arithmetic type for each storage type. Signed integers compute in the unsigned
// type of the same width so that sum and prod wrap modulo 2^n (defined, and the same
// on every rank whatever the order of reduction) instead of overflowing (undefined).
template <class T>
struct compute {
  using type = T;
};
template <>
struct compute<half> {
  using type = float;
};
template <>
struct compute<bfloat16> {
  using type = float;
};
template <>
struct compute<std::int8_t> {
  using type = std::uint8_t;
};
template <>
struct compute<std::int32_t> {
  using type = std::uint32_t;
};
template <>
struct compute<std::int64_t> {
  using type = std::uint64_t;
};

template <class T>
inline auto load(T v) noexcept {
  using C = typename compute<T>::type;
  if constexpr (std::is_same_v<T, half> || std::is_same_v<T, bfloat16>) {
    return static_cast<float>(v);
  } else {
    return static_cast<C>(v);
  }
}

template <class T, class C>
inline T store(C v) noexcept {
  if constexpr (std::is_same_v<T, half> || std::is_same_v<T, bfloat16>) {
    return T(v);
  } else {
    return static_cast<T>(v);
  }
}

template <class T, reduce_op Op>
inline T apply(T a, T b) noexcept {
  if constexpr (Op == reduce_op::min) {
    return static_cast<float>(b) < static_cast<float>(a) ? b : a;
  } else if constexpr (Op == reduce_op::max) {
    return static_cast<float>(a) < static_cast<float>(b) ? b : a;
  } else {
    using C = typename compute<T>::type;
    const C x = load(a);
    const C y = load(b);
    if constexpr (Op == reduce_op::prod) {
      return store<T>(static_cast<C>(x * y));
    } else {  // sum and avg (the division comes once, at the end)
      return store<T>(static_cast<C>(x + y));
    }
  }
}

// min/max compare in the element's own type where it has one; the float detour above
// is only for the storage types, so specialise the arithmetic types here.
template <class T, reduce_op Op>
requires(std::is_arithmetic_v<T> && (Op == reduce_op::min || Op == reduce_op::max)) inline T
    apply(T a, T b) noexcept {
  if constexpr (Op == reduce_op::min) {
    return b < a ? b : a;
  } else {
    return a < b ? b : a;
  }
}

template <class T, reduce_op Op>
void reduce_loop(void* dst, const void* a, const void* b, std::size_t n) noexcept {
  auto* d = static_cast<T*>(dst);
  const auto* x = static_cast<const T*>(a);
  const auto* y = static_cast<const T*>(b);
  for (std::size_t i = 0; i < n; ++i) d[i] = apply<T, Op>(x[i], y[i]);
}

// The one switch from a reduction named at run time to one known at compile time:
// calls f(std::integral_constant<reduce_op, op>{}). Every executor and kernel launch
// dispatches through it (avg included: the caller decides how avg reduces).
template <class F>
constexpr decltype(auto) visit_reduce_op(reduce_op op, F&& f) {
  using enum reduce_op;
  switch (op) {
    case sum: return f(std::integral_constant<reduce_op, sum>{});
    case prod: return f(std::integral_constant<reduce_op, prod>{});
    case min: return f(std::integral_constant<reduce_op, min>{});
    case max: return f(std::integral_constant<reduce_op, max>{});
    case avg: return f(std::integral_constant<reduce_op, avg>{});
  }
  return f(std::integral_constant<reduce_op, sum>{});
}

// How a reduction combines two contributions: avg as sum (its division comes last).
template <reduce_op Op>
inline constexpr reduce_op combining = Op == reduce_op::avg ? reduce_op::sum : Op;

template <class T>
void reduce_typed(reduce_op op, void* dst, const void* a, const void* b, std::size_t n) noexcept {
  visit_reduce_op(
      op, [&](auto reduction) { reduce_loop<T, combining<decltype(reduction)::value>>(dst, a, b, n); });
}

template <class F>
decltype(auto) visit_dtype(dtype t, F&& f) {
  switch (t) {
    case dtype::i8: return f(std::int8_t{});
    case dtype::u8: return f(std::uint8_t{});
    case dtype::i32: return f(std::int32_t{});
    case dtype::i64: return f(std::int64_t{});
    case dtype::f16: return f(half{});
    case dtype::bf16: return f(bfloat16{});
    case dtype::f32: return f(float{});
    case dtype::f64: return f(double{});
  }
  return f(std::uint8_t{});
}

}  // namespace detail

// dst[i] = a[i] op b[i] for n elements of type t; dst may alias a or b exactly.
// avg reduces as sum; finish_avg divides once the sum is complete.
inline void reduce(dtype t, reduce_op op, void* dst, const void* a, const void* b, std::size_t n) noexcept {
  detail::visit_dtype(t, [&](auto tag) { detail::reduce_typed<decltype(tag)>(op, dst, a, b, n); });
}

// data[i] /= divisor, for the floating types (avg's final step).
inline void finish_avg(dtype t, void* data, std::size_t n, int divisor) noexcept {
  detail::visit_dtype(t, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_floating_point_v<T>) {
      auto* d = static_cast<T*>(data);
      const T div = static_cast<T>(divisor);
      for (std::size_t i = 0; i < n; ++i) d[i] /= div;
    } else if constexpr (std::is_same_v<T, half> || std::is_same_v<T, bfloat16>) {
      auto* d = static_cast<T*>(data);
      const float div = static_cast<float>(divisor);
      for (std::size_t i = 0; i < n; ++i) d[i] = T(static_cast<float>(d[i]) / div);
    }
  });
}

}  // namespace collx
