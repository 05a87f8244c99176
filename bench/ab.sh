#!/usr/bin/env bash
# bench/ab.sh: two dotgate builds back to back under the same DoH load, for
# a change's effect on queries per core (see docs/performance.md).
#
#   bench/ab.sh BINARY_A BINARY_B [ROUNDS] [SECONDS]
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
(($# >= 2)) || { echo "usage: bench/ab.sh BINARY_A BINARY_B [ROUNDS] [SECONDS]" >&2; exit 2; }
bins=("$1" "$2")
rounds=${3:-3}
seconds=${4:-8}
for tool in nsd h2load openssl python3 taskset timeout; do
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
    --upstream "127.0.0.1:$nsd_port" > "$work/frontend-$i.log" 2>&1 &
  pids+=($!)
  fe_pid+=($!)
done
sleep 1

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
for ((round = 1; round <= rounds; round++)); do
  for i in 0 1; do
    c0=$(cpu_ticks "${fe_pid[$i]}")
    t0=$(date +%s.%N)
    out=$(timeout --foreground -k 5 $((seconds + 30)) taskset -c 0 h2load -t 1 -c 16 -m 32 \
      -D "$seconds" -d "$work/query.bin" -H "content-type: application/dns-message" \
      "https://127.0.0.1:${doh_port[$i]}/dns-query" 2>&1)
    c1=$(cpu_ticks "${fe_pid[$i]}")
    t1=$(date +%s.%N)
    qps=$(awk '/^finished in/ { sub(/,$/, "", $4); print $4 + 0; exit }' <<< "$out")
    failed=$(awk '/^requests:/ { for (f = 1; f <= NF; f++) if ($(f + 1) ~ /^failed/) print $f }' <<< "$out")
    awk -v r="$round" -v n="$([ "$i" = 0 ] && echo A || echo B)" -v q="$qps" -v f="${failed:-?}" \
      -v c0="$c0" -v c1="$c1" -v t0="$t0" -v t1="$t1" -v hz="$hz" 'BEGIN {
        cpu = (c1 - c0) / hz / (t1 - t0)
        printf "round %d  %s  %7d QPS  failed %s  frontend %.2f of a core  %7d QPS per core\n", r, n, q, f, cpu, q / cpu
      }'
  done
done
