#!/bin/sh
# An emulated cluster on this machine: H network namespaces ("hosts") joined through a
# bridge by veth links, each host's link limited with tc (tbf to RATE; netem DELAY when
# the kernel has netem), then R ranks per host of a program, with torchrun's
# environment (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR = host 0).
# Everything it made is removed when it ends, however it ends; what an earlier run that
# was killed with SIGKILL left under its name is removed first. Exits 77 (skipped) when
# namespaces are refused (no root, no CAP_NET_ADMIN), unless CI is set and this runs as
# root: there a refusal is a broken machine, and fails (exit 1). Any other failure to set
# up the cluster fails too.
#
#   cluster.sh HOSTS RANKS_PER_HOST RATE DELAY -- prog args...
#   e.g. cluster.sh 2 2 1gbit 100us -- build/tests/multiprocess/mp_worker collectives 1
#
# COLLX_CLUSTER_LAUNCH=mpirun launches with Open MPI's mpirun from this machine instead,
# as on a cluster: a host file of the namespaces, an rsh agent that enters a namespace
# with a host name of its own (Open MPI's shared-memory files are named after the host,
# and collx names nodes by it when COLLX_NODE_ID is unset), mpirun's
# and the ranks' traffic on the namespaces' subnet (the bridge gets an address), and
# COLLX_INIT=mpi, so that the ranks meet through MPI (init_from_mpi) with their store on
# eth0 (COLLX_SOCKET_IFNAME). Each line of output is tagged [job,rank] by mpirun.
#
# RANKS_PER_HOST may be a list, one count per host: "3,2" puts ranks 0-2 on host 0 and
# 3-4 on host 1 (nodes of unequal sizes).
#
# Each rank's output goes to stdout prefixed with "[rank] "; the exit status is 0 when
# every rank exits 0, 124 when the job outlives COLLX_CLUSTER_TIMEOUT (default 240 s).
set -u
hosts=$1 per=$2 rate=$3 delay=$4
shift 4
[ "${1:-}" = "--" ] && shift
tmp=$(mktemp -d)
locks=${TMPDIR:-/tmp}

# Every name this script makes starts with "cx<id>-" (id 0 to 249, which also picks the
# subnet and the store's port); it holds the lock $locks/collx-netns-cx<id>.lock while it
# runs. COLLX_NETNS_ID chooses the first id to try (tests).
claim() { # claim ID: true when this run now holds ID's lock (flock is util-linux's)
  command -v flock >/dev/null || return 0
  exec 9>"$locks/collx-netns-cx$1.lock" && flock -n 9
}
# Names of prefix $1 left by a run that was killed before its cleanup: nobody holds its
# lock (claim) and no process runs in its namespaces.
remove_stale() {
  for ns in $(ip netns list 2>/dev/null | sed -n "s/^\($1-h[0-9]*\).*/\1/p"); do
    [ -z "$(ip netns pids "$ns" 2>/dev/null)" ] || return 1
  done
  for ns in $(ip netns list 2>/dev/null | sed -n "s/^\($1-h[0-9]*\).*/\1/p"); do
    echo "# cluster: removing $ns, left by an earlier run that was killed"
    ip netns del "$ns" || return 1
  done
  for dev in $(ip -o link show 2>/dev/null | sed -n "s/^[0-9]*: \($1-[a-z0-9]*\)[@:].*/\1/p"); do
    ip link del "$dev" 2>/dev/null
  done
  return 0
}
refused() { # the reason in $tmp/err is a permission refusal
  grep -qiE 'not permitted|permission denied' "$tmp/err"
}
first=${COLLX_NETNS_ID:-$(($$ % 250))}
tries=0
while :; do
  id=$(((first + tries) % 250))
  pre="cx$id"
  if claim "$id" && remove_stale "$pre" && ip netns add "$pre-h0" 2>"$tmp/err"; then break; fi
  if [ -s "$tmp/err" ] && refused; then
    if [ -n "${CI:-}" ] && [ "$(id -u)" = 0 ]; then
      echo "FAIL: network namespaces are refused to root under CI: $(cat "$tmp/err")"
      rm -rf "$tmp"
      exit 1
    fi
    echo "SKIPPED: network namespaces are refused here: $(cat "$tmp/err")"
    rm -rf "$tmp"
    exit 77
  fi
  : >"$tmp/err"
  tries=$((tries + 1))
  if [ "$tries" -ge 20 ]; then
    echo "FAIL: no free cluster name after 20 tries (cx$first to cx$id in use or not removable)"
    rm -rf "$tmp"
    exit 1
  fi
done
net="10.231.$id"

cleanup() {
  for p in $(cat "$tmp/pids" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
  h=0
  while [ "$h" -lt "$hosts" ]; do
    ip netns del "$pre-h$h" 2>/dev/null
    ip link del "$pre-v$h" 2>/dev/null
    h=$((h + 1))
  done
  ip link del "$pre-br" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

ip link add "$pre-br" type bridge || exit 1
ip link set "$pre-br" up || exit 1
netem=yes
shape() { # shape NAMESPACE DEVICE: netem delay and rate, else tbf rate alone
  if [ -n "$1" ]; then set -- "tc -n $1" "$2"; else set -- tc "$2"; fi
  # shellcheck disable=SC2086
  if [ "$delay" != 0 ] && [ "$netem" = yes ] &&
    $1 qdisc add dev "$2" root netem delay "$delay" rate "$rate" 2>/dev/null; then
    return 0
  fi
  netem=no
  # shellcheck disable=SC2086
  $1 qdisc replace dev "$2" root tbf rate "$rate" burst 256kb latency 50ms
}
h=0
while [ "$h" -lt "$hosts" ]; do
  ns="$pre-h$h"
  [ "$h" -eq 0 ] || ip netns add "$ns" || exit 1
  ip link add "$pre-v$h" type veth peer name eth0 netns "$ns" || exit 1
  ip link set "$pre-v$h" master "$pre-br" up || exit 1
  ip -n "$ns" link set lo up
  ip -n "$ns" addr add "$net.$((h + 1))/24" dev eth0 || exit 1
  ip -n "$ns" link set eth0 up || exit 1
  # Both directions of the host's link: its egress inside the namespace, its ingress as
  # the bridge side's egress.
  shape "$ns" eth0 || exit 1
  shape "" "$pre-v$h" || exit 1
  h=$((h + 1))
done
if [ "$delay" != 0 ] && [ "$netem" = no ]; then
  echo "# cluster: this kernel has no netem: links limited to $rate by tbf, without the $delay delay"
fi
echo "# cluster: $hosts hosts, ranks per host $per, $net.0/24, links $rate"

per_host() { # ranks on host $1
  case $per in
    *,*) echo "$per" | cut -d, -f$(($1 + 1)) ;;
    *) echo "$per" ;;
  esac
}
world=0
h=0
while [ "$h" -lt "$hosts" ]; do
  n=$(per_host "$h")
  [ -n "$n" ] || { echo "FAIL: RANKS_PER_HOST '$per' names no count for host $h"; exit 1; }
  world=$((world + n))
  h=$((h + 1))
done
port=$((29000 + id))
limit=${COLLX_CLUSTER_TIMEOUT:-240}
if [ "${COLLX_CLUSTER_LAUNCH:-env}" = mpirun ]; then
  ip addr add "$net.254/24" dev "$pre-br" || exit 1
  printf '%s\n' '#!/bin/sh' '# mpirun'"'"'s rsh agent: HOST COMMAND..., COMMAND run in the namespace HOST' \
    'host=$1' 'shift' 'exec ip netns exec "$host" unshare --uts sh -c "hostname $host && $*"' >"$tmp/agent"
  chmod +x "$tmp/agent"
  : >"$tmp/hosts"
  h=0
  while [ "$h" -lt "$hosts" ]; do
    echo "$pre-h$h slots=$(per_host "$h")" >>"$tmp/hosts"
    h=$((h + 1))
  done
  export COLLX_INIT=mpi COLLX_SOCKET_IFNAME=eth0 COLLX_JOB_ID="$pre-$$" OMPI_MCA_mpi_yield_when_idle=1
  set -- -x OMPI_MCA_mpi_yield_when_idle "$@"
  for v in $(env | sed -n 's/^\(COLLX_[A-Z0-9_]*\)=.*/\1/p' | sort -u); do
    case $v in COLLX_CLUSTER_*) ;; *) set -- -x "$v" "$@" ;; esac
  done
  timeout "$limit" mpirun --allow-run-as-root --hostfile "$tmp/hosts" -np "$world" --tag-output \
    --mca plm_rsh_agent "$tmp/agent" --mca oob_tcp_if_include "$net.0/24" \
    --mca btl_tcp_if_include "$net.0/24" "$@"
  exit $?
fi
r=0
h=0
: >"$tmp/pids"
while [ "$h" -lt "$hosts" ]; do
  l=0
  n=$(per_host "$h")
  while [ "$l" -lt "$n" ]; do
    ip netns exec "$pre-h$h" env RANK=$r WORLD_SIZE=$world LOCAL_RANK=$l LOCAL_WORLD_SIZE=$n \
      GROUP_RANK=$h COLLX_NODE_ID="host$h" MASTER_ADDR="$net.1" MASTER_PORT=$port COLLX_JOB_ID="$pre-$$" \
      COLLX_AUTH_TOKEN="$pre-$$-token" "$@" >"$tmp/out.$r" 2>&1 &
    echo $! >>"$tmp/pids"
    r=$((r + 1))
    l=$((l + 1))
  done
  h=$((h + 1))
done
status=0
start=$(date +%s)
for p in $(cat "$tmp/pids"); do
  while kill -0 "$p" 2>/dev/null; do
    if [ $(($(date +%s) - start)) -ge "$limit" ]; then status=124; break 2; fi
    sleep 0.1
  done
  wait "$p" || status=1
done
r=0
while [ "$r" -lt "$world" ]; do
  sed "s/^/[$r] /" "$tmp/out.$r"
  r=$((r + 1))
done
exit $status
