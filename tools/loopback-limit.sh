#!/bin/sh
# The loopback TCP limit of this machine, measured by iperf3 beside collx-bench's tcp
# rows: one stream, and two streams each way at once (what a 2-rank all-reduce does).
# Prints comment lines in collx-bench's style; exits 0 without iperf3, saying so.
set -u
if ! command -v iperf3 >/dev/null 2>&1; then
  echo "# loopback limit: skipped (iperf3 not installed: apt-get install iperf3)"
  exit 0
fi
port=$((20000 + $$ % 20000))
gbps() { # iperf3 JSON on stdin -> received GB/s (10^9 bytes per second)
  /usr/bin/python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 8e9))'
}
iperf3 -s -p "$port" -D -1 >/dev/null 2>&1 && sleep 0.3
one=$(iperf3 -c 127.0.0.1 -p "$port" -t 3 -l 1M -J 2>/dev/null | gbps) || one="?"
iperf3 -s -p "$port" -D -1 >/dev/null 2>&1 && sleep 0.3
both=$(iperf3 -c 127.0.0.1 -p "$port" -t 3 -l 1M --bidir -J 2>/dev/null |
  /usr/bin/python3 -c 'import json,sys; e=json.load(sys.stdin)["end"]; print("%.2f %.2f" % (e["sum_received"]["bits_per_second"]/8e9, e["sum_received_bidir_reverse"]["bits_per_second"]/8e9))' 2>/dev/null) || both="? ?"
echo "# loopback limit (iperf3 -c 127.0.0.1 -t 3 -l 1M): one stream $one GB/s; both directions at once (--bidir) $(echo "$both" | awk '{print $1 " + " $2}') GB/s"
