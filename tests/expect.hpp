#pragma once

// expect_error(f): runs f, which must throw a collx::error, and returns it for the test
// to examine; a doctest failure otherwise.

#include <doctest/doctest.h>

#include <collx/core/error.hpp>

#include <stdexcept>

namespace test {

template <class F>
collx::error expect_error(F&& f) {
  try {
    f();
  } catch (const collx::error& e) {
    return e;
  }
  FAIL("expected a collx::error");
  throw std::logic_error("unreachable");
}

}  // namespace test
