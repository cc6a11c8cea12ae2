#pragma once

// A test case that cannot run here (no IPv6, too little memory, one GPU) says why and
// returns. The marker makes ctest count it as skipped (SKIP_REGULAR_EXPRESSION
// "collx-test-skipped:" on the tests that may skip), where a bare return passed silently.
// Such a case runs as a ctest test of its own (doctest_discover_tests, or --test-case), so
// its skip hides no other case.

#include <doctest/doctest.h>

#define COLLX_SKIP_CASE(why)                \
  do {                                      \
    MESSAGE("collx-test-skipped: " << why); \
    return;                                 \
  } while (false)
