#!/usr/bin/env bash
# Soak: dotgate under a steady load plus idle and hostile clients, against a
# real resolver on loopback, for a bounded time (default 10 minutes).
#
#   scripts/soak.sh [--seconds N] [--qps N] [--idle N] [--binary PATH]
#
# What runs, all on 127.0.0.1 and all stopped when the script exits:
#   * unbound, authoritative-only from local data (`local-zone: "." static`:
#     it never sends a query anywhere) for soak.test: 500 hosts with A and
#     TXT records;
#   * dotgate (the release binary) in front of it;
#   * dnsperf over TLS at a steady rate: the normal clients, whose lost
#     queries must be 0;
#   * scripts/soak_clients.py: idle connections, half ClientHellos, dribbled
#     messages, garbage, clients that never read, plaintext.
# The report: dnsperf's totals, dotgate's RSS and open descriptors over time
# (they must stay flat), its connection counters, and every warning or error
# it logged. Needs dnsperf, unbound and python3 (installed with apt-get on
# Debian when missing and run as root). Not a CI test: it takes minutes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds=600
qps=2000
idle=1000
binary=target/release/dotgate
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds=$2; shift 2 ;;
    --qps) qps=$2; shift 2 ;;
    --idle) idle=$2; shift 2 ;;
    --binary) binary=$2; shift 2 ;;
    *) echo "usage: $0 [--seconds N] [--qps N] [--idle N] [--binary PATH]" >&2; exit 2 ;;
  esac
done

need=()
command -v dnsperf >/dev/null 2>&1 || need+=(dnsperf)
command -v unbound >/dev/null 2>&1 || need+=(unbound)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then echo "soak: needs ${need[*]}" >&2; exit 2; fi
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
if [ ! -x "$binary" ]; then
  echo "--- building $binary"
  cargo build --release --locked
fi

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ub_port=$(free_port)
dot_port=$(free_port)
metrics_port=$(free_port)

# The resolver: local data only, so no query ever leaves the machine.
{
  echo "server:"
  echo "  interface: 127.0.0.1@$ub_port"
  echo "  port: $ub_port"
  echo "  do-daemonize: no"
  echo "  chroot: \"\""
  echo "  username: \"\""
  echo "  directory: \"$work\""
  echo "  pidfile: \"$work/unbound.pid\""
  echo "  use-syslog: no"
  echo "  logfile: \"$work/unbound.log\""
  echo "  num-threads: 1"
  echo "  access-control: 127.0.0.0/8 allow"
  echo "  ratelimit: 0"
  echo "  ip-ratelimit: 0"
  echo "  module-config: \"iterator\""
  echo "  local-zone: \".\" static"
  echo "  local-zone: \"soak.test.\" static"
  txt=$(printf 'soak%.0s' {1..50})
  for i in $(seq 0 499); do
    echo "  local-data: \"host$i.soak.test. 60 IN A 10.53.$((i / 250)).$((i % 250))\""
    echo "  local-data: 'host$i.soak.test. 60 IN TXT \"$txt\"'"
  done
  echo "remote-control:"
  echo "  control-enable: no"
} > "$work/unbound.conf"
unbound -d -c "$work/unbound.conf" &
pids+=($!)

# dnsperf's queries: answers, NODATA and NXDOMAIN.
for i in $(seq 0 499); do
  echo "host$i.soak.test A"
  [ $((i % 5)) -eq 0 ] && echo "host$i.soak.test AAAA"
  [ $((i % 10)) -eq 0 ] && echo "missing$i.soak.test A"
done > "$work/queries"

# Idle connections need descriptors; raise the limit for this run only.
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
"$binary" serve --listen "127.0.0.1:$dot_port" --self-signed dns.soak.test \
  --upstream "127.0.0.1:$ub_port" --metrics-listen "127.0.0.1:$metrics_port" \
  --max-connections-per-ip 100000 --handshake-timeout 5s --read-timeout 5s \
  --log-level info 2> "$work/dotgate.log" &
dotgate=$!
pids+=($dotgate)
for _ in $(seq 50); do
  kdig_ok=$(python3 - "$dot_port" <<'EOF' || true
import socket, sys
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.2).close(); print("up")
except OSError:
    pass
EOF
)
  [ "$kdig_ok" = up ] && break
  sleep 0.2
done

sample() {
  local rss fds
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$dotgate/status")
  fds=$(ls "/proc/$dotgate/fd" | wc -l)
  echo "$1 rss_kib=$rss fds=$fds"
}

echo "=== soak: ${seconds}s, dnsperf at ${qps} QPS, ${idle} idle connections, hostile clients"
echo "=== dotgate $("$binary" --version 2>/dev/null || echo '?') on 127.0.0.1:$dot_port, unbound on 127.0.0.1:$ub_port"
sample "start"
python3 scripts/soak_clients.py --port "$dot_port" --seconds "$seconds" --idle "$idle" \
  > "$work/clients.txt" 2>&1 &
clients=$!
pids+=($clients)
dnsperf -m dot -s 127.0.0.1 -p "$dot_port" -d "$work/queries" -l "$seconds" \
  -Q "$qps" -c 8 -q 100 -S 60 > "$work/dnsperf.txt" 2>&1 &
perf=$!
pids+=($perf)
elapsed=0
while kill -0 "$perf" 2>/dev/null; do
  sleep 30
  elapsed=$((elapsed + 30))
  kill -0 "$dotgate" 2>/dev/null || { echo "dotgate died"; break; }
  sample "t=${elapsed}s"
done
wait "$clients" || true
sleep 6
sample "end (6 s after the load)"

echo "=== dnsperf (the normal clients)"
grep -E "Queries sent|Queries completed|Queries lost|Response codes|Queries per second|Average Latency" "$work/dnsperf.txt" || cat "$work/dnsperf.txt"
echo "=== hostile and idle clients"
cat "$work/clients.txt"
echo "=== dotgate counters"
python3 - "$metrics_port" <<'EOF'
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read().decode()
for line in text.splitlines():
    if line.startswith(("dotgate_connections_", "dotgate_tls_handshake_failures_total",
                        "dotgate_synthesized", "dotgate_message_budget", "dotgate_upstream_timeouts",
                        "dotgate_upstream_udp_resends", "dotgate_queries_total")):
        print(line)
EOF
echo "=== dotgate warnings and errors"
grep -E "WARN|ERROR" "$work/dotgate.log" | sed 's/\x1b\[[0-9;]*m//g' | sort | uniq -c | sort -rn | head -20 || true
echo "(end of warnings)"
lost=$(awk '/Queries lost/ {print $3}' "$work/dnsperf.txt")
echo "=== normal queries lost: ${lost:-unknown}"
[ "${lost:-1}" = "0" ]
