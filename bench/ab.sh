#!/usr/bin/env bash
# bench/ab.sh: two dotgate builds back to back under the same DoH load, for
# a change's effect on queries per core (see docs/performance.md).
#
#   bench/ab.sh [--dot [--clients N] [--outstanding N]] [--flame PREFIX] BINARY_A BINARY_B [ROUNDS] [SECONDS]
#
# --dot: DoT instead, as run.sh measures it: dnsperf over TLS with run.sh's
# query file (2% of its answers truncated, so retried over TCP), N
# connections (default 16) and N queries outstanding (default 128).
# --flame: profile each build in round 1 (perf, DWARF call graphs, 999 Hz)
# and draw PREFIX-A.svg and PREFIX-B.svg with inferno (`cargo install
# inferno`); that round's figures include perf's own cost.
#
# NSD (authoritative for bench.test., on CPU 0) behind both builds, each on
# CPU 1 with its own DoH port; h2load (16 connections x 32 POST streams, on
# CPU 0) runs against A then B, ROUNDS times (default 3) for SECONDS each
# (default 8). Per core: QPS over the frontend's CPU time (user and system,
# from /proc) during its run. Loopback only; every command has a time limit;
# everything started here is stopped on exit.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export PYTHONDONTWRITEBYTECODE=1
# shellcheck source=bench/nsd-conf.sh
. "$here/nsd-conf.sh"
usage="usage: bench/ab.sh [--dot [--clients N] [--outstanding N]] [--flame PREFIX] BINARY_A BINARY_B [ROUNDS] [SECONDS]"
dot=0
flame=""
clients=16
outstanding=128
while [[ ${1:-} == --* ]]; do
  case $1 in
    --dot) dot=1; shift ;;
    --clients) clients=${2:-}; shift 2 ;;
    --outstanding) outstanding=${2:-}; shift 2 ;;
    --flame) flame=${2:-}; shift 2 ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done
(($# >= 2)) || { echo "$usage" >&2; exit 2; }
[[ $clients =~ ^[1-9][0-9]*$ && $outstanding =~ ^[1-9][0-9]*$ ]] || { echo "$usage" >&2; exit 2; }
bins=("$1" "$2")
rounds=${3:-3}
seconds=${4:-8}
client_tool=h2load
((dot)) && client_tool=dnsperf
profilers=()
[ -z "$flame" ] || profilers=(perf inferno-collapse-perf inferno-flamegraph)
for tool in nsd "$client_tool" openssl python3 taskset timeout "${profilers[@]}"; do
  command -v "$tool" >/dev/null || { echo "bench/ab.sh: $tool is missing" >&2; exit 2; }
done

work=$(mktemp -d /tmp/dotgate-ab.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

nsd_port=19530
timeout 60 python3 "$here/zone.py" "$work/zone" >/dev/null
timeout 30 openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=ab.bench.test -addext "subjectAltName=IP:127.0.0.1" \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
nsd_conf "$work" "$nsd_port" > "$work/nsd.conf"
taskset -c 0 nsd -d -c "$work/nsd.conf" > "$work/nsd.log" 2>&1 &
pids+=($!)
timeout 30 python3 "$here/dotclients.py" check --udp --port "$nsd_port" --wait 20 \
  || { echo "bench/ab.sh: NSD did not answer: $(tail -n 5 "$work/nsd.log")" >&2; exit 1; }
# The query every request POSTs: run.sh's (n1.bench.test. A, ID 0).
timeout 10 python3 "$here/dohclients.py" query --out "$work/query.bin"

doh_port=(19531 19532)
fe_pid=()
for i in 0 1; do
  taskset -c 1 "${bins[$i]}" serve --listen "127.0.0.1:$((19540 + i))" \
    --doh-listen "127.0.0.1:${doh_port[$i]}" --cert "$work/cert.pem" --key "$work/key.pem" \
    --upstream "127.0.0.1:$nsd_port" --max-connections 20000 --max-connections-per-ip 20000 \
    > "$work/frontend-$i.log" 2>&1 &
  pids+=($!)
  fe_pid+=($!)
done
sleep 1

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
for ((round = 1; round <= rounds; round++)); do
  for i in 0 1; do
    name=$([ "$i" = 0 ] && echo A || echo B)
    profiler=""
    if [ -n "$flame" ] && ((round == 1 && seconds > 3)); then
      timeout $((seconds + 30)) perf record -F 999 --call-graph dwarf,16384 -p "${fe_pid[$i]}" \
        -o "$work/perf-$name.data" -- sleep $((seconds - 2)) > "$work/perf-$name.log" 2>&1 &
      profiler=$!
    fi
    c0=$(cpu_ticks "${fe_pid[$i]}")
    t0=$(date +%s.%N)
    if ((dot)); then
      out=$(timeout --foreground -k 5 $((seconds + 30)) taskset -c 0 dnsperf -m dot -s 127.0.0.1 \
        -p $((19540 + i)) -d "$work/zone/queries.txt" -l "$seconds" -c "$clients" -q "$outstanding" 2>&1)
    else
      out=$(timeout --foreground -k 5 $((seconds + 30)) taskset -c 0 h2load -t 1 -c 16 -m 32 \
        -D "$seconds" -d "$work/query.bin" -H "content-type: application/dns-message" \
        "https://127.0.0.1:${doh_port[$i]}/dns-query" 2>&1)
    fi
    c1=$(cpu_ticks "${fe_pid[$i]}")
    t1=$(date +%s.%N)
    if ((dot)); then
      qps=$(awk '/Queries per second:/ { print $4 + 0; exit }' <<< "$out")
      failed=$(awk '/Queries lost:/ { print $3; exit }' <<< "$out")
    else
      qps=$(awk '/^finished in/ { sub(/,$/, "", $4); print $4 + 0; exit }' <<< "$out")
      failed=$(awk '/^requests:/ { for (f = 1; f <= NF; f++) if ($(f + 1) ~ /^failed/) print $f }' <<< "$out")
    fi
    if [ -n "$profiler" ]; then
      wait "$profiler" || true
      title="$([ "$dot" = 1 ] && echo "DoT, $clients connections, $outstanding outstanding" || echo "DoH, 16 connections x 32 streams"): ${bins[$i]}"
      timeout 600 perf script -i "$work/perf-$name.data" 2>/dev/null | inferno-collapse-perf \
        | inferno-flamegraph --title "$title" --minwidth 0.5 > "$flame-$name.svg" \
        || echo "bench/ab.sh: no flame graph for $name: $(tail -n 3 "$work/perf-$name.log")" >&2
    fi
    awk -v r="$round" -v n="$name" -v q="$qps" -v f="${failed:-?}" \
      -v c0="$c0" -v c1="$c1" -v t0="$t0" -v t1="$t1" -v hz="$hz" 'BEGIN {
        cpu = (c1 - c0) / hz / (t1 - t0)
        printf "round %d  %s  %7d QPS  failed %s  frontend %.2f of a core  %7d QPS per core\n", r, n, q, f, cpu, q / cpu
      }'
  done
done
