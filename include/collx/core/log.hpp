#pragma once

// COLLX_DEBUG, as NCCL_DEBUG: WARN (the default) keeps collx silent unless something
// degrades; INFO makes each communicator say, once, what it chose and why (the launch,
// the nodes, the transport to each peer, the cost model's source) and, the first time
// each call shape runs (while its plan is cached), the algorithm the automatic choice
// took with its predicted time. Lines go to stderr, each written whole, prefixed
// "collx INFO ".

#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

namespace collx::detail {

// Whether COLLX_DEBUG asks for INFO (any case), read once per process.
inline bool debug_info() {
  static const bool on = [] {
    const char* v = std::getenv("COLLX_DEBUG");
    if (v == nullptr) return false;
    std::string s(v);
    for (auto& ch : s) ch = static_cast<char>(ch >= 'a' && ch <= 'z' ? ch - 'a' + 'A' : ch);
    return s == "INFO" || s == "TRACE";
  }();
  return on;
}

// One line, "collx INFO <line>\n", in one write so that ranks' lines do not interleave.
inline void log_info(std::string_view line) {
  std::string out = "collx INFO ";
  out.append(line);
  out.push_back('\n');
  std::fwrite(out.data(), 1, out.size(), stderr);
  std::fflush(stderr);
}

}  // namespace collx::detail
