#pragma once

// What every fuzz target shares: a check that stops the run with a message (libFuzzer
// keeps the input that made it abort), and a probe of the largest single allocation
// made while it is armed (alloc_probe.cpp replaces operator new to watch).

#include <cstddef>
#include <cstdio>
#include <cstdlib>

#define COLLX_FUZZ_CHECK(cond)                                                               \
  do {                                                                                       \
    if (!(cond)) {                                                                           \
      std::fprintf(stderr, "%s:%d: fuzz invariant broken: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                          \
    }                                                                                        \
  } while (0)

namespace collx_fuzz {

// Arms the probe for its lifetime; largest() is the biggest block allocated meanwhile.
class alloc_probe {
 public:
  alloc_probe();
  ~alloc_probe();
  alloc_probe(const alloc_probe&) = delete;
  alloc_probe& operator=(const alloc_probe&) = delete;
  std::size_t largest() const;
};

}  // namespace collx_fuzz
