#pragma once

// One slack factor for the tests' tight deadlines: COLLX_TEST_SLACK, a whole number (default
// 1), which tools/sanitize.sh raises (sanitizers on a loaded 2-core machine run several
// times slower). A test multiplies by it both the times it gives the code (a call's
// timeout, a peer's sleep that must outlast it) and the bounds it checks them against,
// so a slow machine moves every deadline together. The same variable scales the shell
// tests' bounds (tests/multiprocess/run.sh) and ctest's TIMEOUT of quick checks.

#include <chrono>
#include <cstdlib>

namespace test {

inline int slack_factor() {
  static const int factor = [] {
    const char* v = std::getenv("COLLX_TEST_SLACK");
    const long n = v != nullptr ? std::strtol(v, nullptr, 10) : 1;
    return n >= 1 && n <= 100 ? static_cast<int>(n) : 1;
  }();
  return factor;
}

// d stretched by the slack factor.
template <class Rep, class Period>
constexpr auto with_slack(std::chrono::duration<Rep, Period> d) {
  return d * slack_factor();
}

}  // namespace test
