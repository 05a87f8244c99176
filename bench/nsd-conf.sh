# bench/nsd-conf.sh: sourced by run.sh and ab.sh, so that both benchmarks
# run the same backend.

nsd_conf() {  # WORK PORT: NSD's configuration, authoritative for bench.test. (zone.py's files in WORK/zone), on 127.0.0.1@PORT
  cat <<EOF
server:
  ip-address: 127.0.0.1@$2
  server-count: 1
  username: ""
  chroot: ""
  zonesdir: "$1/zone"
  zonelistfile: "$1/zone.list"
  database: ""
  xfrdfile: "$1/xfrd.state"
  xfrdir: "$1"
  pidfile: "$1/nsd.pid"
  tcp-count: 18000
  tcp-timeout: 300
  rrl-ratelimit: 0
  rrl-whitelist-ratelimit: 0
remote-control:
  control-enable: no
zone:
  name: bench.test.
  zonefile: bench.test.zone
EOF
}
