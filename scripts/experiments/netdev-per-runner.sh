#!/usr/bin/env bash
# Issue 16: where does one VXLAN netdev per runner (the host's vxkr<id>) stop scaling on the
# kernel side, and what does one VXLAN device with per-runner entries cost instead?
#
#   sudo scripts/experiments/netdev-per-runner.sh            N = 255 1000 4000
#   sudo N="100 200" scripts/experiments/netdev-per-runner.sh   (or: ... netdev-per-runner.sh 100 200)
#
# Models, each built from nothing in a fresh namespace for every N:
#   A  one VXLAN netdev per runner, as Weir's host builds them: vxkr<i>, id 100+i, remote
#      198.18.x.y, local 10.255.0.1, dstport 4789, nolearning, mtu 1450, alias, the host's
#      10.<..>.254/20 of runner i's subnet on it (its prefix route reaches the subnet), up.
#   A′ the same with IPv6 off in the namespace (net.ipv6.conf.{all,default}.disable_ipv6 = 1).
#   B  one VXLAN device vx0 (one VNI), flannel's vxlan backend: per runner the host's .254/32,
#      a route <subnet> via <runner .1> dev vx0 onlink, a permanent neighbour <runner .1> lladdr
#      <mac>, and an FDB entry <mac> dst <runner physical ip>.
#   C  one "vxlan external" device vxe0 and per runner a route <subnet> encap ip id 100+i dst
#      <runner physical ip> dev vxe0 (control plane only: see docs/architecture.md).
# Plan: 10.0.0.0/8 with 12 node bits, runner i's subnet is 10.0.0.0 + i<<12 (/20), i = 1..N.
#
# Everything happens inside one network namespace, weir-exp-ndpr-<pid>, removed on exit, error
# and interrupt. The underlay is an empty bridge with 10.255.0.1 inside that namespace and no
# route to 198.18.0.0/15: no packet leaves the namespace (what a device sends on its own, such
# as IPv6 DAD, is dropped at its route lookup).
#
# Timing. All kernel work is sent to one long-running `ip -batch -` and one `bridge -batch -` per
# namespace (fed through FIFOs), so a measurement is the kernel's and not process start-up: the
# clock stops when the batch answers a marker command sent after the measured lines. The clock
# is bash's $EPOCHREALTIME (µs), not `date +%s%N`: each `$(date +%s%N)` forks, about 1 ms here,
# more than a whole slice of model B or C costs. The dumps are fresh `ip`/`bridge` processes
# (output to /dev/null), as a restarting host's first read is; their floor (an empty namespace)
# is printed with the results. Memory is the machine-wide /proc/meminfo delta of SUnreclaim +
# Percpu around the creation (MemAvailable moves with the page cache and is useless here):
# anything else running on the machine at the same time shows up in it.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "netdev-per-runner: run as root (it builds a network namespace)" >&2
  exit 2
fi
for tool in ip bridge awk; do
  command -v "$tool" >/dev/null 2>&1 || { echo "netdev-per-runner: $tool missing" >&2; exit 2; }
done

if [ $# -gt 0 ]; then N_LIST="$*"; else N_LIST=${N:-"255 1000 4000"}; fi
for n in $N_LIST; do
  case $n in ''|*[!0-9]*) echo "netdev-per-runner: N must be numbers, got '$n'" >&2; exit 2;; esac
  if [ "$n" -lt 10 ] || [ "$n" -gt 4095 ]; then
    echo "netdev-per-runner: N must be 10..4095 (the plan has 12 node bits), got $n" >&2; exit 2
  fi
done

NS=weir-exp-ndpr-$$
TMP=$(mktemp -d /tmp/weir-exp-ndpr.XXXXXX)
GROUP=4711   # device group of model A's links: only to tear them down in one request
BATCH_PIDS=()
cleanup() {
  local p
  for p in "${BATCH_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$TMP"
}
on_signal() {
  echo "netdev-per-runner: interrupted" >&2
  exit 130   # runs cleanup (the EXIT trap)
}
on_pipe() {
  echo "netdev-per-runner: an ip or bridge batch process ended unexpectedly" >&2
  exit 1
}
trap cleanup EXIT
trap on_signal INT TERM HUP
trap on_pipe PIPE

log() { echo "netdev-per-runner: $*" >&2; }
export LC_ALL=C   # $EPOCHREALTIME with a '.'
new_ns() {
  ip netns del "$NS" 2>/dev/null || true
  ip netns add "$NS"
  ip -n "$NS" link set lo up
  ip -n "$NS" link add ul0 type bridge
  ip -n "$NS" addr add 10.255.0.1/24 dev ul0
  ip -n "$NS" link set ul0 up
}

# One `ip -batch -` and one `bridge -batch -` inside the namespace, fed through FIFOs.
start_batches() {
  rm -f "$TMP/ip.in" "$TMP/ip.out" "$TMP/br.in" "$TMP/br.out"
  mkfifo "$TMP/ip.in" "$TMP/ip.out" "$TMP/br.in" "$TMP/br.out"
  stdbuf -o0 -e0 ip -n "$NS" -force -batch - <"$TMP/ip.in" >"$TMP/ip.out" 2>&1 &
  BATCH_PIDS+=("$!")
  stdbuf -o0 -e0 bridge -n "$NS" -force -batch - <"$TMP/br.in" >"$TMP/br.out" 2>&1 &
  BATCH_PIDS+=("$!")
  exec {IPW}>"$TMP/ip.in" {IPR}<"$TMP/ip.out" {BRW}>"$TMP/br.in" {BRR}<"$TMP/br.out"
}
stop_batches() {
  local p
  exec {IPW}>&- {BRW}>&-
  for p in "${BATCH_PIDS[@]}"; do wait "$p" || true; done
  exec {IPR}<&- {BRR}<&-
  BATCH_PIDS=()
}

# feed ip|br: sends the lines of the array L (ip) or F (bridge), then a marker command that
# fails with a known message, and returns when that message comes back: by then every line
# before it was carried out. Any other output is an error.
ERRS=()
feed() {
  local w r mark cmd line
  if [ "$1" = ip ]; then
    w=$IPW r=$IPR cmd='link show dev weir-mark' mark='Device "weir-mark" does not exist.'
    if [ ${#L[@]} -gt 0 ]; then printf '%s\n' "${L[@]}" >&"$w"; fi
  else
    w=$BRW r=$BRR cmd='fdb show dev weir-mark' mark='Cannot find device "weir-mark"'
    if [ ${#F[@]} -gt 0 ]; then printf '%s\n' "${F[@]}" >&"$w"; fi
  fi
  echo "$cmd" >&"$w"
  while IFS= read -r -u "$r" line; do
    if [ "$line" = "$mark" ]; then
      IFS= read -r -u "$r" line   # "Command failed -:<n>" of the marker
      return 0
    fi
    ERRS+=("$1: $line")
  done
  echo "netdev-per-runner: the $1 batch ended unexpectedly" >&2
  exit 1
}
# timed ip|br FILE: loads the batch (not timed), runs it, sets T (µs) less the marker's own
# round trip (MARK_IP, MARK_BR).
timed() {
  local t0 t1
  if [ "$1" = ip ]; then mapfile -t L < "$2"; else mapfile -t F < "$2"; fi
  t0=${EPOCHREALTIME/./}
  feed "$1"
  t1=${EPOCHREALTIME/./}
  if [ "$1" = ip ]; then T=$(( t1 - t0 - MARK_IP )); else T=$(( t1 - t0 - MARK_BR )); fi
  if [ "$T" -lt 0 ]; then T=0; fi
}
med() {
  local t0 t1
  mapfile -t L < "$2"
  if [ "$1" = ipbr ]; then mapfile -t F < "$3"; fi
  t0=${EPOCHREALTIME/./}
  feed ip
  if [ "$1" = ipbr ]; then feed br; fi
  t1=${EPOCHREALTIME/./}
  T=$(( t1 - t0 - MARK_IP ))
  if [ "$1" = ipbr ]; then T=$(( T - MARK_BR )); fi
  if [ "$T" -lt 0 ]; then T=0; fi
}
med() { printf '%s\n' "$@" | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
marker_round_trips() {
  local r t0 a=() b=()
  L=() F=()
  for r in 1 2 3 4 5 6 7; do
    t0=${EPOCHREALTIME/./}; feed ip; a+=($(( ${EPOCHREALTIME/./} - t0 )))
    t0=${EPOCHREALTIME/./}; feed br; b+=($(( ${EPOCHREALTIME/./} - t0 )))
  done
  MARK_IP=$(med "${a[@]}") MARK_BR=$(med "${b[@]}")
}
# dump CMD...: median of 3 runs of a fresh process (output discarded), sets T (µs).
dump() {
  local r t0 v=()
  for r in 1 2 3; do
    t0=${EPOCHREALTIME/./}
    "$@" >/dev/null 2>"$TMP/dump.err"
    v+=($(( ${EPOCHREALTIME/./} - t0 )))
    if grep -q . "$TMP/dump.err"; then INTR="$INTR $(head -c 200 "$TMP/dump.err" | tr '\n' ' ')"; fi
  done
  T=$(med "${v[@]}")
}

# Addresses of runner i (1..4095).
sub() { echo "10.$(( $1 >> 4 )).$(( ($1 & 15) << 4 ))"; }      # first three octets of its /20
phys() { echo "198.18.$(( $1 >> 8 )).$(( $1 & 255 ))"; }
mac() { printf '02:57:00:00:%02x:%02x' $(( $1 >> 8 )) $(( $1 & 255 )); }

mem() { awk '/^SUnreclaim:|^Percpu:/ {k += $2} /^MemAvailable:/ {a = $2} END {print k, a}' /proc/meminfo; }

ms() { awk -v us="$1" 'BEGIN {v = us / 1e3; if (v >= 100) printf "%.0f ms", v; else if (v >= 10) printf "%.1f ms", v; else printf "%.2f ms", v}'; }
us() { awk -v us="$1" 'BEGIN {v = us; if (v >= 1000) printf "%.2f ms", v / 1e3; else if (v >= 100) printf "%.0f µs", v; else printf "%.1f µs", v}'; }
kib() { awk -v k="$1" 'BEGIN {if (k >= 10240 || k <= -10240) printf "%.1f MiB", k / 1024; else printf "%d KiB", k}'; }
per_kib() { awk -v k="$1" -v n="$2" 'BEGIN {printf "%.2f KiB", k / n}'; }

# Batch generators: runners lo..hi.
gen_a() {
  local i s
  for (( i = $1; i <= $2; i++ )); do
    s=$(sub "$i")
    echo "link add vxkr$i mtu 1450 group $GROUP type vxlan id $(( 100 + i )) remote $(phys "$i") local 10.255.0.1 dstport 4789 nolearning"
    echo "link set vxkr$i alias weir-net:default"
    echo "addr add $s.254/20 dev vxkr$i"
    echo "link set vxkr$i up"
  done
}
gen_a_del() { local i; for (( i = $1; i <= $2; i++ )); do echo "link del vxkr$i"; done; }
gen_b_addr() { local i; for (( i = $1; i <= $2; i++ )); do echo "addr add $(sub "$i").254/32 dev vx0"; done; }
gen_b_route() { local i s; for (( i = $1; i <= $2; i++ )); do s=$(sub "$i"); echo "route add $s.0/20 via $s.1 dev vx0 onlink"; done; }
gen_b_neigh() { local i; for (( i = $1; i <= $2; i++ )); do echo "neigh add $(sub "$i").1 lladdr $(mac "$i") dev vx0 nud permanent"; done; }
gen_b_fdb() { local i; for (( i = $1; i <= $2; i++ )); do echo "fdb add $(mac "$i") dev vx0 dst $(phys "$i") self permanent"; done; }
gen_b_ip_del() {
  local i s
  for (( i = $1; i <= $2; i++ )); do
    s=$(sub "$i")
    echo "route del $s.0/20 via $s.1 dev vx0"
    echo "neigh del $s.1 dev vx0"
    echo "addr del $s.254/32 dev vx0"
  done
}
gen_b_fdb_del() { local i; for (( i = $1; i <= $2; i++ )); do echo "fdb del $(mac "$i") dev vx0 self"; done; }
gen_c() {
  local i
  for (( i = $1; i <= $2; i++ )); do
    echo "route add $(sub "$i").0/20 encap ip id $(( 100 + i )) dst $(phys "$i") dev vxe0"
  done
}
gen_c_del() { local i; for (( i = $1; i <= $2; i++ )); do echo "route del $(sub "$i").0/20 dev vxe0"; done; }

TIMES=()     # rows of the timing table
READS=()     # rows of the read table
MEMS=()      # rows of the memory table
MARKS=()     # marker round trips, for the note
PARTS=()     # model B, entry by entry
NOTES=()     # what the dumps printed on stderr

# measure MODEL N: build in ten slices, read, remove a sample one runner at a time, remove the
# rest at once.
measure() {
  local model=$1 n=$2 k lo hi total=0 first=0 last=0 m0 m1 m2 sample parts part tool what t
  new_ns
  case $model in
    A) parts="ip:link" ;;
    A6) parts="ip:link"
       ip netns exec "$NS" sh -c 'echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6; echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6' ;;
    B) parts="ip:addr ip:route ip:neigh br:fdb"
       ip -n "$NS" link add vx0 mtu 1450 type vxlan id 100 local 10.255.0.1 dstport 4789 nolearning
       ip -n "$NS" link set vx0 up ;;
    C) parts="ip:route"
       ip -n "$NS" link add vxe0 mtu 1450 type vxlan external dstport 4789
       ip -n "$NS" link set vxe0 up ;;
  esac
  # Every batch file is written before the clock starts.
  for (( k = 0; k < 10; k++ )); do
    lo=$(( n * k / 10 + 1 )) hi=$(( n * (k + 1) / 10 ))
    case $model in
      A|A6) gen_a "$lo" "$hi" > "$TMP/c$k.link" ;;
      B) gen_b_addr "$lo" "$hi" > "$TMP/c$k.addr"; gen_b_route "$lo" "$hi" > "$TMP/c$k.route"
         gen_b_neigh "$lo" "$hi" > "$TMP/c$k.neigh"; gen_b_fdb "$lo" "$hi" > "$TMP/c$k.fdb" ;;
      C) gen_c "$lo" "$hi" > "$TMP/c$k.route" ;;
    esac
  done
  sample=$(( n / 10 < 100 ? n / 10 : 100 ))
  case $model in
    A|A6) gen_a_del $(( n - sample + 1 )) "$n" > "$TMP/d"; : > "$TMP/df"; echo "link del group $GROUP" > "$TMP/all" ;;
    B) gen_b_ip_del $(( n - sample + 1 )) "$n" > "$TMP/d"; gen_b_fdb_del $(( n - sample + 1 )) "$n" > "$TMP/df"
       echo "link del vx0" > "$TMP/all" ;;
    C) gen_c_del $(( n - sample + 1 )) "$n" > "$TMP/d"; : > "$TMP/df"; echo "link del vxe0" > "$TMP/all" ;;
  esac
  start_batches
  marker_round_trips
  MARKS+=("$model/$n: ip $(us "$MARK_IP"), bridge $(us "$MARK_BR")")
  if [ -z "${FLOOR_LINK:-}" ]; then
    dump ip -n "$NS" -d link show; FLOOR_LINK=$T
    dump ip -n "$NS" addr show; FLOOR_ADDR=$T
  fi
  local -A ptot=() pfirst=() plast=()
  sleep 1
  read -r m0 _ < <(mem)
  for (( k = 0; k < 10; k++ )); do
    lo=$(( n * k / 10 + 1 )) hi=$(( n * (k + 1) / 10 ))
    t=0
    for part in $parts; do
      tool=${part%%:*} what=${part#*:}
      timed "$tool" "$TMP/c$k.$what"
      t=$(( t + T ))
      ptot[$what]=$(( ${ptot[$what]:-0} + T ))
      if [ "$k" -eq 0 ]; then pfirst[$what]=$(( T / (hi - lo + 1) )); fi
      if [ "$k" -eq 9 ]; then plast[$what]=$(( T / (hi - lo + 1) )); fi
    done
    total=$(( total + t ))
    if [ "$k" -eq 0 ]; then first=$(( t / (hi - lo + 1) )); fi
    if [ "$k" -eq 9 ]; then last=$(( t / (hi - lo + 1) )); fi
  done
  # Let what the new devices start on their own (IPv6 DAD, MLD reports) settle before reading.
  sleep 3
  read -r m1 _ < <(mem)

  # What a restarting host reads (fresh processes, median of 3), and a walk over every device.
  local tl ta tr tn tf tw
  INTR=""
  dump ip -n "$NS" -d link show; tl=$T
  dump ip -n "$NS" addr show; ta=$T
  dump ip -n "$NS" route show; tr=$T
  dump ip -n "$NS" neigh show; tn=$T
  dump bridge -n "$NS" fdb show; tf=$T
  if [ -n "$INTR" ]; then NOTES+=("$model/$n dumps said:$INTR"); fi
  # shellcheck disable=SC2016
  WALK='t0=${EPOCHREALTIME/./}; echo 1 > /proc/sys/net/ipv4/ip_forward; echo 0 > /proc/sys/net/ipv4/ip_forward; echo $(( ${EPOCHREALTIME/./} - t0 ))'
  tw=$(ip netns exec "$NS" bash -c "$WALK")

  # Removing runners one at a time (the last `sample` of them), then everything left at once.
  local td tall
  timed ip "$TMP/d"; td=$T
  if [ -s "$TMP/df" ]; then timed br "$TMP/df"; td=$(( td + T )); fi
  timed ip "$TMP/all"; tall=$T
  stop_batches
  sleep 2
  read -r m2 _ < <(mem)

  if [ ${#ERRS[@]} -gt 0 ]; then
    echo "netdev-per-runner: model $model N=$n: the kernel refused ${#ERRS[@]} line(s), the first:" >&2
    printf '  %s\n' "${ERRS[@]:0:10}" >&2
    exit 1
  fi

  local name
  case $model in
    A) name="A: \`vxkr<id>\` per runner" ;;
    A6) name="A′: the same, IPv6 off" ;;
    B) name="B: one \`vx0\`, flannel-style" ;;
    C) name="C: \`vxlan external\` + encap routes" ;;
  esac
  TIMES+=("| $name | $n | $(ms "$total") | $(us "$first") | $(us "$last") | $(us $(( td / sample ))) | $(ms "$tall") |")
  READS+=("| $name | $n | $(ms "$tl") | $(ms "$ta") | $(ms "$tr") | $(ms "$tn") | $(ms "$tf") | $(us "$tw") |")
  MEMS+=("| $name | $n | $(kib $(( m1 - m0 ))) | $(per_kib $(( m1 - m0 )) "$n") | $(kib $(( m1 - m2 ))) |")
  if [ "$model" = B ]; then
    for part in $parts; do
      what=${part#*:}
      PARTS+=("| $n | $what | $(ms "${ptot[$what]}") | $(us "${pfirst[$what]}") | $(us "${plast[$what]}") |")
    done
  fi
  log "model $model N=$n: create $(ms "$total"), first/last 10 % $(us "$first")/$(us "$last") per runner, kernel memory $(kib $(( m1 - m0 )))"
  ip netns del "$NS"
}

log "namespace $NS, N = $N_LIST"
START=${EPOCHREALTIME/./}
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
for n in $N_LIST; do
  for model in A A6 B C; do
    measure "$model" "$n"
  done
done
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)

cat <<TABLES
Kernel $(uname -r), $(nproc) cores, $(date -u '+%Y-%m-%d %H:%M UTC'); load average before $LOAD0, after $LOAD1; took $(ms $(( ${EPOCHREALTIME/./} - START ))).

| model | N | create all | per runner, first 10 % | per runner, last 10 % | remove one runner (last min(N/10, 100), one by one) | remove the rest at once |
|---|---|---|---|---|---|---|
$(printf '%s\n' "${TIMES[@]}")

Reads (fresh processes, as a restarting host; an empty namespace takes $(ms "$FLOOR_LINK") for \`ip -d link show\`, $(ms "$FLOOR_ADDR") for \`ip addr show\`):

| model | N | \`ip -d link show\` | \`ip addr show\` | \`ip route show\` | \`ip neigh show\` | \`bridge fdb show\` | \`ip_forward\` 0→1→0 (each walks every device) |
|---|---|---|---|---|---|---|---|
$(printf '%s\n' "${READS[@]}")

| model | N | kernel memory added (SUnreclaim + Percpu) | per runner | given back after removal |
|---|---|---|---|---|
$(printf '%s\n' "${MEMS[@]}")

Model B entry by entry (the slices of the first table, split by kind):

| N | entry | all N | per runner, first 10 % | per runner, last 10 % |
|---|---|---|---|---|
$(printf '%s\n' "${PARTS[@]}")

$(if [ ${#NOTES[@]} -gt 0 ]; then printf '%s\n' "${NOTES[@]}"; else echo "No dump printed a warning."; fi)

Marker round trips subtracted from the batch times: $(IFS=';'; echo "${MARKS[*]}").
TABLES
