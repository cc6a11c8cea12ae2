#!/bin/sh
# Fails when a function under include/collx is longer than 80 lines (lambdas count as
# part of the function they are in). Universal Ctags finds each function's first and
# last line. Exit 77 (a ctest skip) when it is not installed: tools/ensure-deps.sh
# installs it for `make test`.
#
# usage: check-function-length.sh [INCLUDE_DIR] [LIMIT]   (default: the repository's include/, 80)
set -u
dir=${1:-$(dirname "$0")/../include}
limit=${2:-80}
if ! ctags --version 2>/dev/null | grep -q 'Universal Ctags'; then
  echo "check-function-length: skipped: Universal Ctags is not installed (apt-get install universal-ctags)"
  exit 77
fi
[ -d "$dir/collx" ] || { echo "check-function-length: no $dir/collx"; exit 2; }
long=$(cd "$dir" && ctags -R --languages=C++ --langmap=C++:+.cuh --kinds-C++=f --fields=+ne -f - collx |
  awk -F'\t' -v limit="$limit" '{
    first = ""; last = ""
    for (i = 4; i <= NF; i++) {
      if ($i ~ /^line:/) first = substr($i, 6)
      if ($i ~ /^end:/) last = substr($i, 5)
    }
    if (first != "" && last != "" && last - first + 1 > limit)
      printf "%s:%s: %s is %d lines (over %d)\n", $2, first, $1, last - first + 1, limit
  }' | sort)
count=$(cd "$dir" && ctags -R --languages=C++ --langmap=C++:+.cuh --kinds-C++=f -f - collx | wc -l)
if [ -n "$long" ]; then
  echo "$long"
  exit 1
fi
echo "check-function-length: $count functions, none over $limit lines"
