#pragma once

#define COLLX_VERSION_MAJOR 0
#define COLLX_VERSION_MINOR 1
#define COLLX_VERSION_PATCH 0
#define COLLX_VERSION_STRING "0.1.0"

namespace collx {
inline constexpr int version_major = COLLX_VERSION_MAJOR;
inline constexpr int version_minor = COLLX_VERSION_MINOR;
inline constexpr int version_patch = COLLX_VERSION_PATCH;
inline constexpr const char* version_string = COLLX_VERSION_STRING;
}  // namespace collx
