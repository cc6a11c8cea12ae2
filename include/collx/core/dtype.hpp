#pragma once

// Element types. f16 and bf16 are storage types: the host computes in float and
// rounds back to nearest-even, so a reduction of f16 data costs one rounding per hop.

#include <bit>
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <type_traits>

namespace collx {

enum class dtype : std::uint8_t { i8, u8, i32, i64, f16, bf16, f32, f64 };

inline constexpr dtype all_dtypes[] = {dtype::i8,  dtype::u8,   dtype::i32, dtype::i64,
                                       dtype::f16, dtype::bf16, dtype::f32, dtype::f64};

constexpr std::size_t size_of(dtype t) noexcept {
  switch (t) {
    case dtype::i8:
    case dtype::u8: return 1;
    case dtype::f16:
    case dtype::bf16: return 2;
    case dtype::i32:
    case dtype::f32: return 4;
    case dtype::i64:
    case dtype::f64: return 8;
  }
  return 0;
}

constexpr bool is_floating(dtype t) noexcept {
  return t == dtype::f16 || t == dtype::bf16 || t == dtype::f32 || t == dtype::f64;
}

constexpr std::string_view to_string(dtype t) noexcept {
  switch (t) {
    case dtype::i8: return "i8";
    case dtype::u8: return "u8";
    case dtype::i32: return "i32";
    case dtype::i64: return "i64";
    case dtype::f16: return "f16";
    case dtype::bf16: return "bf16";
    case dtype::f32: return "f32";
    case dtype::f64: return "f64";
  }
  return "?";
}

// IEEE 754 binary16, stored as its bits.
struct half {
  std::uint16_t bits = 0;

  half() = default;
  explicit half(float f) noexcept : bits(from_float(f)) {}
  explicit operator float() const noexcept { return to_float(bits); }

  static constexpr half from_bits(std::uint16_t b) noexcept {
    half h;
    h.bits = b;
    return h;
  }

  static std::uint16_t from_float(float f) noexcept {
    const std::uint32_t x = std::bit_cast<std::uint32_t>(f);
    const auto sign = static_cast<std::uint16_t>((x >> 16) & 0x8000u);
    std::uint32_t mant = x & 0x7fffffu;
    const int exp = static_cast<int>((x >> 23) & 0xffu);
    if (exp == 0xff) {  // inf stays inf; NaN stays a (quiet) NaN
      return static_cast<std::uint16_t>(sign | 0x7c00u | (mant != 0 ? 0x200u | (mant >> 13) : 0u));
    }
    const int e = exp - 127 + 15;
    if (e >= 0x1f) return static_cast<std::uint16_t>(sign | 0x7c00u);
    if (e <= 0) {
      if (e < -10) return sign;  // below half the smallest subnormal: rounds to zero
      mant |= 0x800000u;
      const auto shift = static_cast<unsigned>(14 - e);
      std::uint32_t h = mant >> shift;
      const std::uint32_t rem = mant & ((1u << shift) - 1u);
      const std::uint32_t halfway = 1u << (shift - 1u);
      if (rem > halfway || (rem == halfway && (h & 1u) != 0)) ++h;
      return static_cast<std::uint16_t>(sign | h);
    }
    std::uint32_t h = (static_cast<std::uint32_t>(e) << 10) | (mant >> 13);
    const std::uint32_t rem = mant & 0x1fffu;
    // A carry out of the mantissa bumps the exponent, which is exactly right (up to inf).
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u) != 0)) ++h;
    return static_cast<std::uint16_t>(sign | h);
  }

  static float to_float(std::uint16_t h) noexcept {
    const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
    const std::uint32_t exp = (h >> 10) & 0x1fu;
    const std::uint32_t mant = h & 0x3ffu;
    if (exp == 0) {
      // Subnormal (or zero): mant * 2^-24, exact in float.
      const float v = static_cast<float>(mant) * 5.9604644775390625e-8f;
      return sign != 0 ? -v : v;
    }
    if (exp == 0x1f) return std::bit_cast<float>(sign | 0x7f800000u | (mant << 13));
    return std::bit_cast<float>(sign | ((exp + 112u) << 23) | (mant << 13));
  }
};

// bfloat16: the upper half of a float, rounded to nearest-even.
struct bfloat16 {
  std::uint16_t bits = 0;

  bfloat16() = default;
  explicit bfloat16(float f) noexcept : bits(from_float(f)) {}
  explicit operator float() const noexcept { return std::bit_cast<float>(std::uint32_t{bits} << 16); }

  static constexpr bfloat16 from_bits(std::uint16_t b) noexcept {
    bfloat16 h;
    h.bits = b;
    return h;
  }

  static std::uint16_t from_float(float f) noexcept {
    std::uint32_t x = std::bit_cast<std::uint32_t>(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((x >> 16) | 0x40u);
    x += 0x7fffu + ((x >> 16) & 1u);
    return static_cast<std::uint16_t>(x >> 16);
  }
};

template <class T>
struct dtype_of;  // no primary definition: an unsupported element type fails to compile
template <>
struct dtype_of<std::int8_t> : std::integral_constant<dtype, dtype::i8> {};
template <>
struct dtype_of<std::uint8_t> : std::integral_constant<dtype, dtype::u8> {};
template <>
struct dtype_of<std::int32_t> : std::integral_constant<dtype, dtype::i32> {};
template <>
struct dtype_of<std::int64_t> : std::integral_constant<dtype, dtype::i64> {};
template <>
struct dtype_of<half> : std::integral_constant<dtype, dtype::f16> {};
template <>
struct dtype_of<bfloat16> : std::integral_constant<dtype, dtype::bf16> {};
template <>
struct dtype_of<float> : std::integral_constant<dtype, dtype::f32> {};
template <>
struct dtype_of<double> : std::integral_constant<dtype, dtype::f64> {};

template <class T>
inline constexpr dtype dtype_v = dtype_of<std::remove_cv_t<T>>::value;

template <class T>
concept element = requires {
  dtype_of<std::remove_cv_t<T>>::value;
};

}  // namespace collx
