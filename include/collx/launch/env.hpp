#pragma once

// What the launch layer reads from the environment: integers and strings of variables,
// and the host's name.

#include <unistd.h>

#include <cstdlib>
#include <optional>
#include <string>

#include "collx/config.hpp"
#include "collx/core/error.hpp"

namespace collx {

namespace detail {

inline std::optional<long> env_int(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return std::nullopt;
  char* end = nullptr;
  const long n = std::strtol(v, &end, 10);
  if (*end != '\0') {
    throw error(errc::invalid_argument, "init", error::no_rank, error::no_rank,
                std::string(name) + "='" + v + "' is not an integer");
  }
  return n;
}

inline std::string this_host() {
  char name[256] = {};
  ::gethostname(name, sizeof name - 1);
  return name;
}

}  // namespace detail

}  // namespace collx
