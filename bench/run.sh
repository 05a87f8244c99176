#!/usr/bin/env bash
# bench/run.sh: dotgate beside dnsdist, measured in one run on one machine,
# reported as ratios. See bench/README.md.
#
#   bench/run.sh [--dotgate PATH] [--rounds N] [--duration S] [--idle-count N]
#                [--fe-quota PCT] [--out DIR] [...]   (--help lists them all)
#
# Layout: the frontend under test (dotgate or dnsdist) runs on CPU 1; the load
# (dnsperf, the Python clients) and the backend (NSD, authoritative for
# bench.test.) run on CPU 0. Everything is on 127.0.0.1, every command has a
# time limit, and every process started here is stopped by its PID on exit.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export PYTHONDONTWRITEBYTECODE=1  # dohclients.py imports dotclients.py: leave no bytecode in bench/
root=$(dirname "$here")
# shellcheck source=bench/nsd-conf.sh
. "$here/nsd-conf.sh"

dotgate=$root/target/release/dotgate
rounds=3
duration=10
hs_seconds=5
hs_concurrency=64
idle_count=15000
fe_quota=0
latency_pct=80
clients=16
outstanding=128
dnsdist_threads=2
dnsdist_inflight=0
port_base=18530
quiet_wait=30
doh=auto
doh_clients=16
doh_streams=32
out=""
keep=0

usage() {
  cat <<EOF
usage: bench/run.sh [options]
  --dotgate PATH        dotgate binary (default: target/release/dotgate of this repository)
  --rounds N            alternating rounds of every timed test (default $rounds)
  --duration S          seconds per dnsperf run (default $duration)
  --hs-seconds S        seconds per handshake run (default $hs_seconds; 0 skips it)
  --hs-concurrency N    handshakes in progress at once (default $hs_concurrency)
  --idle-count N        idle TLS connections held per frontend (default $idle_count; 0 skips it)
  --fe-quota PCT        also measure with the frontend capped at PCT% of a core (needs root, cgroups)
  --latency-pct P       offered load of the latency test, in % of dnsdist's QPS (default $latency_pct; 0 skips it)
  --clients N           dnsperf's TLS connections (default $clients)
  --outstanding N       dnsperf's queries in flight, over all connections (default $outstanding)
  --dnsdist-threads N   dnsdist's TCP worker threads (default $dnsdist_threads)
  --dnsdist-inflight N  dnsdist's maxInFlight per connection (default $dnsdist_inflight: in order)
  --port-base P         NSD on P, DoT: dotgate on P+1, dnsdist on P+2; DoH: dotgate on P+3,
                        dnsdist on P+4, unbound on P+5 (default $port_base)
  --doh MODE            DNS over HTTPS tests: auto (also run them when h2load is installed),
                        on (also, h2load required), only (no DoT tests), off (default $doh)
  --doh-clients N       h2load's HTTP/2 connections (default $doh_clients)
  --doh-streams N       h2load's streams in flight per connection (default $doh_streams)
  --quiet-wait S        before each timed run, wait up to S s for an idle machine (default $quiet_wait)
  --out DIR             write results.jsonl, table.txt and the logs into DIR
  --keep                keep the temporary directory
EOF
}

while [ $# -gt 0 ]; do
  case $1 in
    --dotgate) dotgate=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --hs-seconds) hs_seconds=$2; shift 2 ;;
    --hs-concurrency) hs_concurrency=$2; shift 2 ;;
    --idle-count) idle_count=$2; shift 2 ;;
    --fe-quota) fe_quota=$2; shift 2 ;;
    --latency-pct) latency_pct=$2; shift 2 ;;
    --clients) clients=$2; shift 2 ;;
    --outstanding) outstanding=$2; shift 2 ;;
    --dnsdist-threads) dnsdist_threads=$2; shift 2 ;;
    --dnsdist-inflight) dnsdist_inflight=$2; shift 2 ;;
    --port-base) port_base=$2; shift 2 ;;
    --quiet-wait) quiet_wait=$2; shift 2 ;;
    --doh) doh=$2; shift 2 ;;
    --doh-clients) doh_clients=$2; shift 2 ;;
    --doh-streams) doh_streams=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done

log() { printf '%s %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

for v in rounds duration hs_seconds hs_concurrency idle_count fe_quota latency_pct clients \
         outstanding dnsdist_threads dnsdist_inflight port_base quiet_wait doh_clients doh_streams; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "--${v//_/-} wants a whole number, got '${!v}'"
done
((rounds >= 1 && duration >= 1)) || die "--rounds and --duration must be at least 1"
((fe_quota <= 100)) || die "--fe-quota is a percentage of one core (1-100)"
((doh_clients >= 1 && doh_streams >= 1)) || die "--doh-clients and --doh-streams must be at least 1"
case $doh in
  auto) if command -v h2load >/dev/null 2>&1; then doh=on; else doh=off; fi ;;
  on|only) command -v h2load >/dev/null 2>&1 || die "--doh $doh needs h2load (Debian: apt-get install nghttp2-client)" ;;
  off) ;;
  *) die "--doh wants auto, on, only or off, got '$doh'" ;;
esac
dot=1
[ "$doh" != only ] || dot=0

missing=()
for tool in dnsperf dnsdist nsd python3 openssl taskset timeout; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
((${#missing[@]} == 0)) || die "missing: ${missing[*]} (Debian: apt-get install dnsperf dnsdist nsd python3 openssl)"
[ -x "$dotgate" ] || die "no dotgate binary at $dotgate: build it (cargo build --release) or pass --dotgate PATH"
dotgate=$(cd "$(dirname "$dotgate")" && pwd)/$(basename "$dotgate")
[ -d /sys/devices/system/cpu/cpu1 ] || die "needs two CPUs (0 for the load, 1 for the frontend)"

nsd_port=$port_base
declare -A port=([dotgate]=$((port_base + 1)) [dnsdist]=$((port_base + 2)))
declare -A doh_port=([dotgate]=$((port_base + 3)) [dnsdist]=$((port_base + 4)) [unbound]=$((port_base + 5)))
declare -A pid=()
frontends=(dotgate dnsdist)
# DoH beside dnsdist's and, when Debian's unbound is built with libnghttp2 (it has https-port), unbound's
doh_frontends=(dotgate dnsdist)
if [ "$doh" != off ] && command -v unbound >/dev/null 2>&1 && unbound -V 2>&1 | grep -q libnghttp2; then
  doh_frontends+=(unbound)
fi
[ "$doh" != off ] || doh_frontends=()
hz=$(getconf CLK_TCK)

# ------------------------------------------------------------------ processes
work=$(mktemp -d -t dotgate-bench.XXXXXX)
results=$work/results.jsonl
declare -A running=()  # PIDs started here and not yet stopped
cgroups=()

stop() {  # PID: SIGTERM, then SIGKILL after 5 s (it is our child: a zombie until waited for)
  local p=$1
  [ -n "${running[$p]:-}" ] || return 0
  kill -TERM "$p" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
  unset "running[$p]"
}

cleanup() {
  local rc=$? p cg
  set +e
  for p in "${!running[@]}"; do stop "$p"; done
  for cg in "${cgroups[@]}"; do rmdir "$cg" 2>/dev/null; done
  if ((keep)); then log "kept $work"; else rm -rf "$work"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

launch() {  # NAME CPU CMD...: run CMD on CPU (in NAME's cgroup, if any); sets pid[NAME]
  local name=$1 cpu=$2
  shift 2
  if [ -n "${cgroup[$name]:-}" ]; then
    bash -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "${cgroup[$name]}" \
      taskset -c "$cpu" "$@" > "$work/$name.log" 2>&1 < /dev/null &
  else
    taskset -c "$cpu" "$@" > "$work/$name.log" 2>&1 < /dev/null &
  fi
  pid[$name]=$!
  running[$!]=1
}

alive() {  # NAME: fail the run if the process is gone
  kill -0 "${pid[$1]}" 2>/dev/null || die "$1 exited; the end of its log:
$(tail -n 20 "$work/$1.log")"
}

port_free() {  # PORT: nothing listens on it over TCP or UDP
  python3 - "$1" <<'EOF'
import socket, sys
for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
    with socket.socket(socket.AF_INET, kind) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no conflict
        try:
            s.bind(("127.0.0.1", int(sys.argv[1])))
        except OSError:
            sys.exit(1)
EOF
}

# ------------------------------------------------------------------ CPU caps
declare -A cgroup=()
cg_version=""

setup_cgroups() {  # one cgroup per frontend, uncapped until set_quota
  local base name
  [ "$(id -u)" -eq 0 ] || die "--fe-quota needs root (it creates cgroups)"
  if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    base=/sys/fs/cgroup
    cg_version=2
    grep -qw cpu "$base/cgroup.controllers" || die "--fe-quota: the cgroup v2 cpu controller is not available"
    grep -qw cpu "$base/cgroup.subtree_control" || echo +cpu > "$base/cgroup.subtree_control" \
      || die "--fe-quota: cannot enable the cpu controller in $base"
  else
    for base in /sys/fs/cgroup/cpu /sys/fs/cgroup/cpu,cpuacct ""; do
      [ -n "$base" ] && [ -f "$base/cpu.cfs_quota_us" ] && break
    done
    [ -n "$base" ] || die "--fe-quota: no cgroup v2 and no cgroup v1 cpu controller"
    cg_version=1
  fi
  for name in "${frontends[@]}"; do
    cgroup[$name]=$base/dotgate-bench.$$.$name
    mkdir "${cgroup[$name]}"
    cgroups+=("${cgroup[$name]}")
    set_quota "$name" 0
  done
  log "cgroup v$cg_version under $base; the frontends are capped at ${fe_quota}% for the capped runs"
}

set_quota() {  # NAME PCT (0 = uncapped), in periods of 10 ms so throttling stalls are short
  local cg=${cgroup[$1]} pct=$2
  if [ "$cg_version" = 2 ]; then
    if ((pct)); then echo "$((pct * 100)) 10000" > "$cg/cpu.max"; else echo "max 10000" > "$cg/cpu.max"; fi
  else
    echo -1 > "$cg/cpu.cfs_quota_us"
    echo 10000 > "$cg/cpu.cfs_period_us"
    ((pct == 0)) || echo $((pct * 100)) > "$cg/cpu.cfs_quota_us"
  fi
}

# ------------------------------------------------------------------ measuring
ticks() {  # PID: CPU ticks of the process (all its threads, its reaped children) and its live descendants
  local p=$1 stat f total=0 kid
  stat=$(cat "/proc/$p/stat" 2>/dev/null) || { echo 0; return; }
  read -ra f <<< "${stat##*) }"  # after "pid (comm) ": state ppid ... utime(11) stime cutime cstime
  total=$((f[11] + f[12] + f[13] + f[14]))
  for kid in $(pgrep -P "$p"); do
    total=$((total + $(ticks "$kid")))
  done
  echo "$total"
}

core_ticks() {  # CPU: "tasks irq total" ticks of that core from /proc/stat: time spent running
  # processes (user, nice, system), handling interrupts (irq, softirq), and in all
  awk -v c="cpu$1" '$1 == c { t = 0; for (i = 2; i <= 9; i++) t += $i; print $2 + $3 + $4, $7 + $8, t }' /proc/stat
}

machine_busy_pct() {  # the whole machine's busy share over one second
  local a b
  a=$(awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6 }' /proc/stat)
  sleep 1
  b=$(awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6 }' /proc/stat)
  awk -v a="$a" -v b="$b" 'BEGIN { split(a, x); split(b, y); busy = y[1] - x[1]; idle = y[2] - x[2]
    print int(100 * busy / (busy + idle + 1)) }'
}

wait_quiet() {  # until the machine is nearly idle (others' builds skew every number), at most quiet_wait s
  local deadline=$((SECONDS + quiet_wait)) busy
  while ((quiet_wait > 0)); do
    busy=$(machine_busy_pct)
    ((busy > 10)) || return 0
    if ((SECONDS >= deadline)); then
      log "  the machine is still ${busy}% busy; measuring anyway (see other% in the results)"
      return 0
    fi
    sleep 1
  done
}

# timed NAME OUTPUT CMD...: run CMD on CPU 0 (output to OUTPUT) while counting NAME's CPU time
# (CMD's own `timeout --foreground` keeps it in our process group, so Ctrl-C reaches it);
# sets fe_cpu_s (frontend CPU seconds), wall_s, other_pct (the share of core 1 that other
# processes used) and irq_pct (the share of core 1 spent in interrupts and softirqs)
timed() {
  local name=$1 output=$2 c0 c1 t0 t1 k0 k1 rc=0
  shift 2
  wait_quiet
  c0=$(ticks "${pid[$name]}"); k0=$(core_ticks 1); t0=$(date +%s%N)
  taskset -c 0 "$@" > "$output" 2>&1 || rc=$?
  t1=$(date +%s%N); k1=$(core_ticks 1); c1=$(ticks "${pid[$name]}")
  alive "$name"
  local figures
  figures=$(awk -v c="$((c1 - c0))" -v hz="$hz" -v t="$((t1 - t0))" -v k0="$k0" -v k1="$k1" 'BEGIN {
    split(k0, a); split(k1, b); all = b[3] - a[3] + 1; other = b[1] - a[1] - c; if (other < 0) other = 0
    printf "%.2f %.3f %.1f %.1f\n", c / hz, t / 1e9, 100 * other / all, 100 * (b[2] - a[2]) / all }')
  read -r fe_cpu_s wall_s other_pct irq_pct <<< "$figures"
  [ -n "$irq_pct" ] || die "could not account the CPU time of $name"
  return "$rc"
}

dnsperf_num() {  # FIELD FILE: a number from dnsperf's summary
  awk -v k="$1:" 'index($0, k) { sub(/.*: */, ""); print $1 + 0; exit }' "$2"
}

p99_ms() {  # FILE: 99th percentile latency of the queries dnsperf -v listed ("> RCODE name type secs")
  awk '$1 == ">" && $2 != "T" && NF == 5 { print $5 }' "$1" | sort -g \
    | awk '{ v[NR] = $1 } END { i = int(0.99 * NR); if (i < 0.99 * NR) i++; if (NR) printf "%.3f\n", 1000 * v[i]; else print "null" }'
}

record() {  # JSON object body: one line in results.jsonl
  printf '{%s}\n' "$1" >> "$results"
}

# ------------------------------------------------------------------ set-up
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true  # idle connections: the frontends and the clients inherit this
(($(ulimit -n) >= idle_count + 200)) || die "the descriptor limit ($(ulimit -n)) is too low for --idle-count $idle_count"
for p in "$nsd_port" "${port[dotgate]}" "${port[dnsdist]}" "${doh_port[@]}"; do
  port_free "$p" || die "port $p on 127.0.0.1 is in use: pick others with --port-base"
done
((fe_quota == 0)) || setup_cgroups
log "work directory $work"

# A throwaway CA and an EC P-256 certificate for dot.bench.test (and 127.0.0.1).
tls=$work/tls
mkdir "$tls"
{
  timeout 30 openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj "/CN=dotgate bench throwaway CA" -keyout "$tls/ca.key" -out "$tls/ca.pem" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign"
  timeout 30 openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=dot.bench.test" -keyout "$tls/key.pem" -out "$tls/leaf.csr"
  printf '%s\n' "subjectAltName=DNS:dot.bench.test,IP:127.0.0.1" "basicConstraints=CA:FALSE" \
    "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" > "$tls/leaf.ext"
  timeout 30 openssl x509 -req -in "$tls/leaf.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" \
    -CAcreateserial -days 30 -extfile "$tls/leaf.ext" -out "$tls/cert.pem"
} > "$tls/openssl.log" 2>&1 || die "openssl failed: $(tail -n 5 "$tls/openssl.log")"

# The backend: NSD, authoritative for bench.test. (TTL 0), on CPU 0.
timeout 60 python3 "$here/zone.py" "$work/zone"
queries=$work/zone/queries.txt
nsd_conf "$work" "$nsd_port" > "$work/nsd.conf"
launch nsd 0 nsd -d -c "$work/nsd.conf"
timeout 30 python3 "$here/dotclients.py" check --udp --port "$nsd_port" --wait 20 \
  || die "NSD did not answer on 127.0.0.1:$nsd_port: $(tail -n 5 "$work/nsd.log" 2>/dev/null)"

# The frontends, forwarding to NSD without caching, each with room for the idle test.
cat > "$work/dnsdist.conf" <<EOF
setSecurityPollSuffix("")                 -- no security-status query to the outside
setACL({"127.0.0.0/8"})
addTLSLocal("127.0.0.1:${port[dnsdist]}", "$tls/cert.pem", "$tls/key.pem",
            {provider="openssl", maxInFlight=$dnsdist_inflight})
newServer({address="127.0.0.1:$nsd_port", name="nsd"}):setUp()   -- always up: no health checks
setMaxTCPClientThreads($dnsdist_threads)
setMaxTCPQueuedConnections(20000)
setTCPRecvTimeout(300)                    -- keep idle clients, as dotgate's --idle-timeout 300s
setTCPSendTimeout(300)
EOF
if [ "$doh" != off ]; then
  # DoH: h2o in its own thread, queries to the backend over UDP; idle clients kept as over DoT
  cat >> "$work/dnsdist.conf" <<EOF
addDOHLocal("127.0.0.1:${doh_port[dnsdist]}", "$tls/cert.pem", "$tls/key.pem", "/dns-query",
            {idleTimeout=300})
EOF
fi
# unbound, for DoH only: a resolver forwarding everything to NSD without caching (TTL 0, no cache).
# It wants a descriptor for each of its TCP slots (and outgoing-range) at start, and shortens the
# idle timeout of new connections once over half the slots are busy: so its slots are what the
# descriptor limit allows, and its idle test holds at most half of them.
unbound_slots=$(($(ulimit -n) - 1024 - 500))
unbound_idle=$((idle_count < unbound_slots / 2 - 100 ? idle_count : unbound_slots / 2 - 100))
cat > "$work/unbound.conf" <<EOF
server:
  interface: 127.0.0.1@${doh_port[unbound]}
  https-port: ${doh_port[unbound]}
  http-endpoint: "/dns-query"
  tls-service-key: "$tls/key.pem"
  tls-service-pem: "$tls/cert.pem"
  do-ip6: no
  do-udp: no
  num-threads: 1
  so-reuseport: no
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "$work"
  pidfile: ""
  use-syslog: no
  logfile: ""
  verbosity: 0
  module-config: "iterator"
  do-not-query-localhost: no
  access-control: 127.0.0.0/8 allow
  incoming-num-tcp: $unbound_slots
  tcp-idle-timeout: 300000
  http-max-streams: 128
  num-queries-per-thread: 1024
  outgoing-range: 1024
  local-zone: "test." nodefault
  cache-max-ttl: 0
  cache-max-negative-ttl: 0
  prefetch: no
forward-zone:
  name: "."
  forward-addr: 127.0.0.1@$nsd_port
  forward-no-cache: yes
EOF

start_frontend() {  # NAME
  local doh_args=()
  [ "$doh" = off ] || doh_args=(--doh-listen "127.0.0.1:${doh_port[dotgate]}")
  case $1 in
    dotgate)
      launch dotgate 1 "$dotgate" serve --listen "127.0.0.1:${port[dotgate]}" "${doh_args[@]}" \
        --cert "$tls/cert.pem" --key "$tls/key.pem" --upstream "127.0.0.1:$nsd_port" \
        --max-connections 20000 --max-connections-per-ip 20000 --idle-timeout 300s ;;
    dnsdist)
      launch dnsdist 1 dnsdist --supervised --disable-syslog -C "$work/dnsdist.conf" ;;
    unbound)  # DoH only (unbound is not in the DoT tests)
      launch unbound 1 unbound -d -c "$work/unbound.conf" ;;
  esac
  if [ "$1" != unbound ]; then
    timeout 30 python3 "$here/dotclients.py" check --port "${port[$1]}" --ca "$tls/ca.pem" --wait 20 \
      || die "$1 did not answer over TLS on 127.0.0.1:${port[$1]}; the end of its log:
$(tail -n 20 "$work/$1.log")"
  fi
  if [ "$doh" != off ]; then
    timeout 30 python3 "$here/dohclients.py" check --port "${doh_port[$1]}" --ca "$tls/ca.pem" --wait 20 \
      || die "$1 did not answer over DoH on https://127.0.0.1:${doh_port[$1]}/dns-query; the end of its log:
$(tail -n 20 "$work/$1.log")"
  fi
}

stop_frontend() {  # NAME
  stop "${pid[$1]}"
}

{
  printf '"test":"meta","date":"%s","kernel":"%s","cpu":"%s"' "$(date -u +%FT%TZ)" "$(uname -r)" \
    "$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo | tr -d '"')"
  printf ',"dotgate":"%s","dnsdist":"%s","dnsperf":"%s","nsd":"%s","openssl":"%s"' \
    "$("$dotgate" --version 2>&1 | head -n 1)" "$(dnsdist --version 2>&1 | head -n 1 | cut -d' ' -f2)" \
    "$(dnsperf -h 2>&1 | awk '/^Version/ { print $2 }')" "$(nsd -v 2>&1 | awk 'NR == 1 { print $3 }')" \
    "$(openssl version | cut -d' ' -f2)"
  printf ',"rounds":%d,"duration":%d,"clients":%d,"outstanding":%d,"fe_quota":%d' \
    "$rounds" "$duration" "$clients" "$outstanding" "$fe_quota"
  printf ',"hs_seconds":%d,"hs_concurrency":%d,"idle_count":%d,"latency_pct":%d' \
    "$hs_seconds" "$hs_concurrency" "$idle_count" "$latency_pct"
  printf ',"dnsdist_threads":%d,"dnsdist_inflight":%d' "$dnsdist_threads" "$dnsdist_inflight"
  printf ',"doh":"%s","doh_clients":%d,"doh_streams":%d,"dot":%d' "$doh" "$doh_clients" "$doh_streams" "$dot"
  if [ "$doh" != off ]; then
    printf ',"h2load":"%s","unbound":"%s"' "$(h2load --version 2>&1 | awk '{ print $NF; exit }')" \
      "$( ((${#doh_frontends[@]} > 2)) && unbound -V 2>&1 | awk 'NR == 1 { print $2 }')"
  fi
} > "$work/meta"
record "$(cat "$work/meta")"

# ------------------------------------------------------------------ the tests
qps_run() {  # NAME ROUND QUOTA RATE: one dnsperf run over DoT; RATE 0 = as fast as it goes
  local name=$1 round=$2 quota=$3 rate=$4 test=qps extra=() out qps completed lost p99=null
  if ((rate)); then test=latency; extra=(-Q "$rate" -v); fi
  out=$work/dnsperf-$test-$name-cap$quota-r$round.txt
  timed "$name" "$out" timeout --foreground -k 5 $((duration + 30)) dnsperf -m dot -s 127.0.0.1 -p "${port[$name]}" \
    -d "$queries" -l "$duration" -c "$clients" -q "$outstanding" "${extra[@]}" \
    || die "dnsperf failed against $name: $(tail -n 5 "$out")"
  qps=$(dnsperf_num "Queries per second" "$out")
  completed=$(dnsperf_num "Queries completed" "$out")
  lost=$(dnsperf_num "Queries lost" "$out")
  [[ -n $qps && -n $completed && -n $lost ]] || die "no summary in dnsperf's output: $(tail -n 5 "$out")"
  if ((rate)); then
    p99=$(p99_ms "$out")
    ((keep)) || rm -f "$out"  # the per-query lines are large
  fi
  record "$(printf '"test":"%s","frontend":"%s","round":%d,"quota_pct":%d,"offered":%d,"qps":%s,"completed":%s,"lost":%s,"p99_ms":%s,"fe_cpu_s":%s,"wall_s":%s,"other_pct":%s,"irq_pct":%s' \
    "$test" "$name" "$round" "$quota" "$rate" "$qps" "$completed" "$lost" "$p99" "$fe_cpu_s" "$wall_s" "$other_pct" "$irq_pct")"
  log "  $(printf '%-10s %-7s %6.0f QPS  lost %s  p99 %s ms  frontend %.1f%% of a core (cap %s)  core 1: other processes %s%%, irq %s%%' \
    "$test" "$name" "$qps" "$lost" "$p99" "$(awk -v c="$fe_cpu_s" -v w="$wall_s" 'BEGIN { print 100 * c / w }')" \
    "$( ((quota)) && echo "$quota%" || echo none)" "$other_pct" "$irq_pct")"
  if [ "$test" = qps ] && ((quota == 0)); then echo "$qps" >> "$work/saturated-$name"; fi
}

hs_run() {  # NAME ROUND [--resume]: new connections with a full (or resumed) handshake and one query each
  local name=$1 round=$2 resume=${3:-} test=handshakes
  [ -z "$resume" ] || test=resumed
  local out=$work/$test-$1-r$2.json
  ((hs_seconds > 0)) || return 0
  # shellcheck disable=SC2086 # $resume is one flag or nothing
  timed "$name" "$out" timeout --foreground -k 5 $((hs_seconds + 30)) python3 "$here/dotclients.py" handshakes \
    --port "${port[$name]}" --seconds "$hs_seconds" --concurrency "$hs_concurrency" $resume \
    || die "the handshake client failed against $name: $(tail -n 5 "$out")"
  record "$(printf '"test":"%s","frontend":"%s","round":%d,"fe_cpu_s":%s,"wall_s":%s,"other_pct":%s,"irq_pct":%s,%s' \
    "$test" "$name" "$round" "$fe_cpu_s" "$wall_s" "$other_pct" "$irq_pct" "$(sed 's/^{//; s/}$//' "$out")")"
  log "  $(python3 -c 'import json, sys; d = json.loads(sys.argv[1])
print("%-10s %-7s %6.0f/s   failed %d  client %.0f%% of a core  frontend %.1f%% of a core"
      "  core 1: other processes %s%%, irq %s%%" % (sys.argv[7], sys.argv[2], d["rate"], d["failed"],
      d["client_cpu_pct"], 100 * float(sys.argv[3]) / float(sys.argv[4]), sys.argv[5], sys.argv[6]))' \
    "$(cat "$out")" "$name" "$fe_cpu_s" "$wall_s" "$other_pct" "$irq_pct" "$test")"
}

idle_run() {  # NAME: a fresh frontend holding idle_count idle connections
  local name=$1 out=$work/idle-$1.json
  start_frontend "$name"
  sleep 1
  wait_quiet
  timeout --foreground -k 5 300 taskset -c 0 python3 "$here/dotclients.py" idle --port "${port[$name]}" \
    --count "$idle_count" --pid "${pid[$name]}" > "$out" 2>&1 \
    || die "the idle client failed against $name: $(tail -n 5 "$out")"
  alive "$name"
  stop_frontend "$name"
  record "$(printf '"test":"idle","frontend":"%s",%s' "$name" "$(sed 's/^{//; s/}$//' "$out")")"
  log "  $(python3 -c 'import json, sys; d = json.loads(sys.argv[1])
print("idle     %-7s %d of %d connections alive, RSS %d -> %d KiB: %s KiB each" % (sys.argv[2],
    d["alive"], d["count"], d["rss_before_kib"], d["rss_after_kib"], d["kib_per_conn"]))' "$(cat "$out")" "$name")"
}

# ------------------------------------------------------------------ the DoH tests
doh_query=$work/doh-query.bin
timeout 10 python3 "$here/dohclients.py" query --out "$doh_query"

h2load_num() {  # FIELD FILE: "requests: N total, N started, N done, N succeeded, N failed, ..." -> N of FIELD
  awk -v k="$1" '/^requests:/ { for (i = 2; i < NF; i++) if ($(i + 1) ~ "^" k) { print $i + 0; exit } }' "$2"
}

p99_log_ms() {  # FILE: 99th percentile of h2load --log-file's third column (microseconds to the end of the response)
  awk -F'\t' 'NF >= 3 && $2 >= 200 && $2 < 300 { print $3 }' "$1" | sort -g \
    | awk '{ v[NR] = $1 } END { i = int(0.99 * NR); if (i < 0.99 * NR) i++; if (NR) printf "%.3f\n", v[i] / 1000; else print "null" }'
}

doh_run() {  # NAME ROUND RATE: one h2load run of DoH POSTs; RATE 0 = as fast as it goes
  local name=$1 round=$2 rate=$3 test=doh_qps extra=() out qps completed failed errored timeouts p99=null
  out=$work/h2load-$name-r$round-$rate.txt
  if ((rate)); then
    test=doh_latency
    # --rps is per connection; the log has one line per request, for the percentile
    extra=(--rps "$(awk -v r="$rate" -v c="$doh_clients" 'BEGIN { printf "%.1f", r / c }')" --log-file "$out.log")
  fi
  timed "$name" "$out" timeout --foreground -k 5 $((duration + 30)) h2load -t 1 -c "$doh_clients" \
    -m "$doh_streams" -D "$duration" -d "$doh_query" -H "content-type: application/dns-message" \
    -H "accept: application/dns-message" "${extra[@]}" "https://127.0.0.1:${doh_port[$name]}/dns-query" \
    || die "h2load failed against $name: $(tail -n 5 "$out")"
  qps=$(awk '/^finished in/ { sub(/,$/, "", $4); print $4 + 0; exit }' "$out")
  completed=$(h2load_num succeeded "$out")
  failed=$(h2load_num failed "$out")
  errored=$(h2load_num errored "$out")
  timeouts=$(h2load_num timeout "$out")
  [[ -n $qps && -n $completed && -n $failed && -n $errored && -n $timeouts ]] \
    || die "no summary in h2load's output: $(tail -n 5 "$out")"
  if ((rate)); then
    p99=$(p99_log_ms "$out.log")
    ((keep)) || rm -f "$out.log"
  fi
  record "$(printf '"test":"%s","frontend":"%s","round":%d,"offered":%d,"qps":%s,"completed":%s,"failed":%s,"errored":%s,"timeouts":%s,"p99_ms":%s,"fe_cpu_s":%s,"wall_s":%s,"other_pct":%s,"irq_pct":%s' \
    "$test" "$name" "$round" "$rate" "$qps" "$completed" "$failed" "$errored" "$timeouts" "$p99" "$fe_cpu_s" "$wall_s" "$other_pct" "$irq_pct")"
  log "  $(printf '%-11s %-7s %6.0f QPS  failed %s, errored %s  p99 %s ms  frontend %.1f%% of a core  core 1: other processes %s%%, irq %s%%' \
    "$test" "$name" "$qps" "$failed" "$errored" "$p99" "$(awk -v c="$fe_cpu_s" -v w="$wall_s" 'BEGIN { print 100 * c / w }')" \
    "$other_pct" "$irq_pct")"
  if ((rate == 0)); then echo "$qps" >> "$work/doh-saturated-$name"; fi
}

doh_idle_run() {  # NAME: a fresh frontend holding idle_count idle HTTP/2 connections, one POST each
  local name=$1 out=$work/doh-idle-$1.json count=$idle_count
  [ "$name" != unbound ] || count=$unbound_idle
  start_frontend "$name"
  sleep 1
  wait_quiet
  timeout --foreground -k 5 300 taskset -c 0 python3 "$here/dohclients.py" idle --port "${doh_port[$name]}" \
    --count "$count" --pid "${pid[$name]}" > "$out" 2>&1 \
    || die "the DoH idle client failed against $name: $(tail -n 5 "$out")"
  alive "$name"
  stop_frontend "$name"
  record "$(printf '"test":"doh_idle","frontend":"%s",%s' "$name" "$(sed 's/^{//; s/}$//' "$out")")"
  log "  $(python3 -c 'import json, sys; d = json.loads(sys.argv[1])
print("doh_idle %-7s %d of %d connections alive, RSS %d -> %d KiB: %s KiB each" % (sys.argv[2],
    d["alive"], d["count"], d["rss_before_kib"], d["rss_after_kib"], d["kib_per_conn"]))' "$(cat "$out")" "$name")"
}

doh_order() {  # ROUND: the DoH frontends, rotated by one each round
  local n=${#doh_frontends[@]} i
  for ((i = 0; i < n; i++)); do printf '%s ' "${doh_frontends[$(((i + $1 - 1) % n))]}"; done
}

# ------------------------------------------------------------------ the runs
if ((dot)); then
for name in "${frontends[@]}"; do start_frontend "$name"; done
log "NSD on 127.0.0.1:$nsd_port, dotgate on :${port[dotgate]}, dnsdist on :${port[dnsdist]}"

order() {  # ROUND: dotgate first in odd rounds, dnsdist first in even ones
  if (($1 % 2)); then echo dotgate dnsdist; else echo dnsdist dotgate; fi
}

for ((round = 1; round <= rounds; round++)); do
  log "round $round of $rounds: throughput and handshakes"
  for name in $(order "$round"); do
    qps_run "$name" "$round" 0 0
    if ((fe_quota)); then
      set_quota "$name" "$fe_quota"
      qps_run "$name" "$round" "$fe_quota" 0
      set_quota "$name" 0
    fi
    hs_run "$name" "$round"
    hs_run "$name" "$round" --resume
  done
done

if ((latency_pct > 0)); then
  rate=$(sort -g "$work/saturated-dnsdist" | awk -v p="$latency_pct" '{ v[NR] = $1 } END { print int(v[int((NR + 1) / 2)] * p / 100) }')
  ((rate > 0)) || die "no dnsdist QPS to base the latency test on"
  for ((round = 1; round <= rounds; round++)); do
    log "round $round of $rounds: latency at $rate QPS ($latency_pct% of dnsdist's median)"
    for name in $(order "$round"); do qps_run "$name" "$round" 0 "$rate"; done
  done
fi

for name in "${frontends[@]}"; do stop_frontend "$name"; done

if ((idle_count > 0)); then
  log "idle connections: $idle_count per frontend, each frontend started afresh"
  for name in "${frontends[@]}"; do idle_run "$name"; done
fi
fi  # dot

if ((${#doh_frontends[@]})); then
  for name in "${doh_frontends[@]}"; do start_frontend "$name"; done
  log "DoH: dotgate on https://127.0.0.1:${doh_port[dotgate]}/dns-query, dnsdist on :${doh_port[dnsdist]}$(
    [ -z "${doh_port[unbound]:-}" ] || ((${#doh_frontends[@]} < 3)) || echo ", unbound on :${doh_port[unbound]}")"
  for ((round = 1; round <= rounds; round++)); do
    log "round $round of $rounds: DoH throughput (h2load, $doh_clients connections, $doh_streams streams each, POST)"
    for name in $(doh_order "$round"); do doh_run "$name" "$round" 0; done
  done
  if ((latency_pct > 0)); then
    rate=$(sort -g "$work/doh-saturated-dnsdist" | awk -v p="$latency_pct" '{ v[NR] = $1 } END { print int(v[int((NR + 1) / 2)] * p / 100) }')
    ((rate > 0)) || die "no dnsdist DoH QPS to base the latency test on"
    for ((round = 1; round <= rounds; round++)); do
      log "round $round of $rounds: DoH latency at $rate QPS ($latency_pct% of dnsdist's median)"
      for name in $(doh_order "$round"); do doh_run "$name" "$round" "$rate"; done
    done
  fi
  for name in "${doh_frontends[@]}"; do stop_frontend "$name"; done
  if ((idle_count > 0)); then
    log "idle HTTP/2 connections: $idle_count per frontend, each frontend started afresh"
    for name in "${doh_frontends[@]}"; do doh_idle_run "$name"; done
  fi
fi

python3 "$here/report.py" "$results" | tee "$work/table.txt"
if [ -n "$out" ]; then
  mkdir -p "$out"
  cp "$results" "$work/table.txt" "$work"/*.log "$out/"
  log "results in $out"
fi
