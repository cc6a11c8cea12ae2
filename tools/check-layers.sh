#!/bin/sh
# The layering check: reads the #include "collx/..." lines of every header under
# include/collx and fails when one includes a header of a higher layer. The layers,
# lowest first (docs/design-notes.md says why each sits where it does):
#
#   0 core/, config.hpp, version.hpp   dtypes, reductions, errors, options, envelope
#   1 schedule/                        the IR, builder, verifier, cost model
#   2 net/                             sockets and their wire parsing
#   3 rendezvous/                      stores and the prefixed view
#   4 transport/                       the concept and the two-sided transports
#   5 exec/                            executors: they run schedules, know no algorithm
#   6 algorithms/                      schedules built (pure functions of the call)
#   7 front/, communicator.hpp, ipc.hpp, calibrate.hpp   the front end and its entries
#   8 launch/                          init from the environment or MPI, node discovery,
#                                      the GPU hierarchy's levels
#   9 cuda/                            the GPU entries
#  10 collx.hpp                        everything
#
# usage: check-layers.sh [INCLUDE_DIR]   (default: the repository's include/)
set -u
dir=${1:-$(dirname "$0")/../include}
[ -d "$dir/collx" ] || { echo "check-layers: no $dir/collx"; exit 2; }

layer() {
  case $1 in
    collx/core/* | collx/config.hpp | collx/version.hpp) echo 0 ;;
    collx/schedule/*) echo 1 ;;
    collx/net/*) echo 2 ;;
    collx/rendezvous/*) echo 3 ;;
    collx/transport/*) echo 4 ;;
    collx/exec/*) echo 5 ;;
    collx/algorithms/*) echo 6 ;;
    collx/front/* | collx/communicator.hpp | collx/ipc.hpp | collx/calibrate.hpp) echo 7 ;;
    collx/launch/*) echo 8 ;;
    collx/cuda/*) echo 9 ;;
    collx/collx.hpp) echo 10 ;;
    *) echo unknown ;;
  esac
}

bad=0
checked=0
for file in $(cd "$dir" && find collx -type f \( -name '*.hpp' -o -name '*.cuh' \) | sort); do
  mine=$(layer "$file")
  if [ "$mine" = unknown ]; then
    echo "check-layers: $file belongs to no layer: add it to tools/check-layers.sh"
    bad=1
    continue
  fi
  checked=$((checked + 1))
  for inc in $(sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"\(collx\/[^"]*\)".*/\1/p' "$dir/$file"); do
    theirs=$(layer "$inc")
    if [ "$theirs" = unknown ]; then
      echo "check-layers: $file includes $inc, which belongs to no layer"
      bad=1
    elif [ "$theirs" -gt "$mine" ]; then
      echo "check-layers: $file (layer $mine) includes $inc (layer $theirs): a lower layer reaches up"
      bad=1
    fi
  done
done
[ "$bad" -eq 0 ] || exit 1
echo "check-layers: $checked headers, every include at its own layer or lower"
