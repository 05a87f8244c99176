#!/usr/bin/env bash
# Builds the container image from ./Dockerfile, unchanged, on a machine with
# no Docker engine and no access to a container registry, then runs it and
# checks what a user of `docker run` relies on: the non-root user, the
# binary starting on the runtime base, DoT answers to `dotgate query` and
# kdig, the image's own HEALTHCHECK, and SIGTERM draining to exit status 0.
# CI runs it from .ci/run; it needs root (buildah's storage, debootstrap).
#
# What stands in for what (say so wherever its results are quoted):
#   debian:bookworm-slim  NOT the official image: a `debootstrap
#                         --variant=minbase bookworm` from the apt mirror
#                         this machine uses, with documentation, man pages
#                         and locales left out as the official slim image
#                         does. Tagged docker.io/library/debian:bookworm-slim.
#   rust:1-bookworm       NOT the official image: that base plus Debian's
#                         gcc, libc6-dev and ca-certificates, and this
#                         machine's Rust toolchain (rustc --print sysroot, and
#                         rustup when there is one) copied to the official
#                         image's paths, with its CARGO_HOME=/usr/local/cargo,
#                         RUSTUP_HOME=/usr/local/rustup and PATH. This
#                         machine's CA bundle replaces Debian's inside it, so
#                         cargo reaches the crate registry the way the host
#                         does (through a TLS-inspecting proxy, if any).
#                         Tagged docker.io/library/rust:1-bookworm.
#   docker build          buildah bud --isolation chroot --format docker
#                         --pull=never (the same Dockerfile and context).
#   docker run            buildah run --isolation chroot: the image's
#                         filesystem, user, entrypoint and command, but the
#                         host's network and no cgroup limits. So dotgate
#                         listens on a high port of 127.0.0.1
#                         (DOTGATE_LISTEN) rather than 853 in a namespace of
#                         its own, and the HEALTHCHECK command is run as the
#                         image's config has it with its port changed to that
#                         one (the Dockerfile tells users to do the same).
#
# The stand-in bases are kept in buildah's store and reused by later runs on
# the same machine (labelled org.dotgate.stand-in; the Rust one is remade
# when the host's toolchain changes). DOTGATE_REBUILD_BASES=1 remakes both.
#
# Environment: DOTGATE_IMAGE (default localhost/dotgate:ci), DOTGATE_BIN
# (the host's dotgate for `dotgate query`, default target/debug/dotgate,
# built when missing), DEBIAN_MIRROR (default: apt's configured bookworm
# mirror).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

image=${DOTGATE_IMAGE:-localhost/dotgate:ci}
slim=docker.io/library/debian:bookworm-slim
rust=docker.io/library/rust:1-bookworm
label=org.dotgate.stand-in

die() { echo "test-image: FAIL: $*" >&2; exit 1; }
step() { echo "--- image: $*"; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }

[ "$(id -u)" -eq 0 ] || die "needs root (buildah's storage, debootstrap)"
for tool in buildah debootstrap kdig python3 openssl ss; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed (.ci/run installs it)"
done

work=$(mktemp -d -t dotgate-image.XXXXXX)
containers=()
pids=()
pid=""
cleanup() {
  # dotgate itself first: a failed check can leave it running.
  [ -z "$pid" ] || kill "$pid" 2>/dev/null || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for c in "${containers[@]}"; do
    buildah umount "$c" >/dev/null 2>&1 || true
    buildah rm "$c" >/dev/null 2>&1 || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

# The label's value of an image, empty when the image or the label is absent.
label_of() {
  buildah inspect --type image --format "{{index .Docker.Config.Labels \"$label\"}}" "$1" 2>/dev/null || true
}

# ---------- the stand-in base images ----------

mirror=${DEBIAN_MIRROR:-$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 'Identifier: Packages' 2>/dev/null |
  awk '$2 == "bookworm" { print $1; exit }')}
mirror=${mirror:-http://deb.debian.org/debian/}

slim_id="debootstrap minbase bookworm, slimmed v2"

make_slim() {
  step "making the stand-in $slim (debootstrap from $mirror)"
  local t0 c mnt
  t0=$(now)
  c=$(buildah from scratch)
  containers+=("$c")
  mnt=$(buildah mount "$c")
  debootstrap --variant=minbase bookworm "$mnt" "$mirror" >"$work/debootstrap.log" 2>&1 ||
    { tail -20 "$work/debootstrap.log"; die "debootstrap failed"; }
  # As the official slim image: no documentation, man pages or locales, now
  # or in packages installed later; no apt caches.
  cat >"$mnt/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
EOF
  find "$mnt/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$mnt/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$mnt"/usr/share/{groff,info,linda,lintian,locale,man}/*
  rm -rf "$mnt"/var/cache/apt/archives/*.deb "$mnt"/var/lib/apt/lists/* "$mnt"/var/log/*.log
  # As the official images' apt settings: no package caches kept after an
  # install or an update (without this, every `apt-get update` in a
  # Dockerfile leaves some 80 MB of /var/cache/apt/*.bin in its layer).
  cat >"$mnt/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  echo 'Acquire::Languages "none";' >"$mnt/etc/apt/apt.conf.d/docker-no-languages"
  echo 'Acquire::GzipIndexes "true";' >"$mnt/etc/apt/apt.conf.d/docker-gzip-indexes"
  rm -f "$mnt"/var/cache/apt/*.bin
  buildah umount "$c" >/dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd bash --label "$label=$slim_id" "$c"
  buildah commit --quiet --format docker --rm "$c" "$slim" >/dev/null
  containers=("${containers[@]/$c/}")
  echo "stand-in $slim made in $(since "$t0") s"
}

sysroot=$(rustc --print sysroot)
toolchain=$(basename "$sysroot")
rust_id="$toolchain $(rustc --version | cut -d' ' -f2) $(cargo --version | cut -d' ' -f2)"

make_rust() {
  step "making the stand-in $rust (Debian's gcc + this machine's $toolchain)"
  local t0 c mnt
  t0=$(now)
  c=$(buildah from --pull=never "$slim")
  containers+=("$c")
  buildah run --isolation chroot "$c" -- sh -c \
    'apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends ca-certificates gcc libc6-dev && rm -rf /var/lib/apt/lists/*' \
    >"$work/rust-apt.log" 2>&1 || { tail -20 "$work/rust-apt.log"; die "installing gcc in the builder failed"; }
  mnt=$(buildah mount "$c")
  mkdir -p "$mnt/usr/local/rustup/toolchains" "$mnt/usr/local/cargo/bin"
  # The toolchain without its documentation (share/doc is most of its size).
  tar -C "$(dirname "$sysroot")" --exclude "$toolchain/share/doc" -cf - "$toolchain" |
    tar -C "$mnt/usr/local/rustup/toolchains" -xf -
  if command -v rustup >/dev/null 2>&1; then
    install -m 755 "$(command -v rustup)" "$mnt/usr/local/cargo/bin/rustup"
    for proxy in cargo rustc rustdoc; do ln -sf rustup "$mnt/usr/local/cargo/bin/$proxy"; done
    printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\n' "$toolchain" \
      >"$mnt/usr/local/rustup/settings.toml"
  else
    for tool in cargo rustc rustdoc; do
      ln -sf "/usr/local/rustup/toolchains/$toolchain/bin/$tool" "$mnt/usr/local/cargo/bin/$tool"
    done
  fi
  install -m 644 /etc/ssl/certs/ca-certificates.crt "$mnt/etc/ssl/certs/ca-certificates.crt"
  buildah umount "$c" >/dev/null
  buildah config --env RUSTUP_HOME=/usr/local/rustup --env CARGO_HOME=/usr/local/cargo \
    --env PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --label "$label=$rust_id" "$c"
  buildah commit --quiet --format docker --rm "$c" "$rust" >/dev/null
  containers=("${containers[@]/$c/}")
  echo "stand-in $rust made in $(since "$t0") s"
}

if [ "${DOTGATE_REBUILD_BASES:-0}" = 1 ] || [ "$(label_of "$slim")" != "$slim_id" ]; then
  make_slim
  make_rust
elif [ "$(label_of "$rust")" != "$rust_id" ]; then
  make_rust
else
  echo "stand-in bases already in buildah's store: $(label_of "$slim"); $(label_of "$rust")"
fi

# ---------- the build ----------

step "build: buildah bud --isolation chroot --format docker --pull=never -f Dockerfile ."
t0=$(now)
previous=$(buildah images --quiet --no-trunc "$image" 2>/dev/null || true)
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
if ! buildah bud --isolation chroot --format docker --pull=never \
  --build-arg "DOTGATE_GIT_COMMIT=$commit" \
  -t "$image" -f Dockerfile . >"$work/build.log" 2>&1; then
  tail -40 "$work/build.log"
  die "the image did not build"
fi
grep -q 'cargo build --release --locked' "$work/build.log" ||
  die "the build did not run cargo build --release --locked"
grep -E 'Finished `release`' "$work/build.log" || true
build_s=$(since "$t0")
echo "image built in $build_s s"
# The image this one replaced, now untagged, is not kept.
if [ -n "$previous" ] && [ "$previous" != "$(buildah images --quiet --no-trunc "$image")" ]; then
  buildah rmi "$previous" >/dev/null 2>&1 || true
fi

buildah inspect --type image "$image" |
  python3 -c 'import json, sys; json.dump(json.load(sys.stdin)["Docker"]["config"], sys.stdout)' >"$work/config.json"
# One line per field: user, stop signal, health check timeout, then the
# entrypoint, command and health check as NUL-free argument lists.
config() {
  python3 - "$work/config.json" "$1" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
field = sys.argv[2]
if field == "user":
    print(c.get("User", ""))
elif field == "stopsignal":
    print(c.get("StopSignal", "") or "SIGTERM")
elif field == "ports":
    print(" ".join(sorted(c.get("ExposedPorts") or {})))
elif field == "entrypoint":
    print("\n".join(c.get("Entrypoint") or []))
elif field == "cmd":
    print("\n".join(c.get("Cmd") or []))
elif field == "healthcheck":
    print("\n".join((c.get("Healthcheck") or {}).get("Test") or []))
elif field == "healthcheck-timeout":
    print(max(1, int((c.get("Healthcheck") or {}).get("Timeout", 30 * 10**9)) // 10**9))
PY
}
user=$(config user)
[ "$user" = "10001:10001" ] || die "the image's user is '$user', not 10001:10001"
[ "$(config ports)" = "853/tcp" ] || die "the image exposes '$(config ports)', not 853/tcp"
mapfile -t entrypoint < <(config entrypoint)
mapfile -t cmd < <(config cmd)
mapfile -t healthcheck < <(config healthcheck)
stopsignal=$(config stopsignal)
hc_timeout=$(config healthcheck-timeout)
[ "${healthcheck[0]:-}" = CMD ] || die "the HEALTHCHECK is not an exec-form CMD: ${healthcheck[*]:-none}"
echo "image config: user $user, entrypoint ${entrypoint[*]}, command ${cmd[*]}, stop signal $stopsignal"
echo "image HEALTHCHECK: ${healthcheck[*]:1} (timeout ${hc_timeout}s)"

size=$(buildah images --format '{{.Size}}' "$image")
base_size=$(buildah images --format '{{.Size}}' "$slim")
c=$(buildah from --pull=never "$image")
containers+=("$c")
mnt=$(buildah mount "$c")
bin_size=$(stat -c %s "$mnt/usr/local/bin/dotgate")
buildah umount "$c" >/dev/null
version=$(buildah run --isolation chroot "$c" -- dotgate --version 2>&1) || die "dotgate --version failed: $version"
[ "$version" = "dotgate $(cargo pkgid | sed 's/.*[#@]//') (commit $commit)" ] ||
  die "the image's dotgate --version says '$version', not commit $commit"
echo "image's $version"
echo "image size: $size (buildah images): the stand-in debian:bookworm-slim $base_size," \
  "the dotgate binary $(awk -v b="$bin_size" 'BEGIN { printf "%.1f", b / 1e6 }') MB, ca-certificates and the user the rest"

# ---------- the image, run ----------

bin=${DOTGATE_BIN:-target/debug/dotgate}
[ -x "$bin" ] || cargo build --quiet --bin dotgate
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# The loopback upstream (deploy/test-upstream.py): answers every A query
# with 192.0.2.53, anything else with an empty NOERROR; names starting with
# "slow" after 1.5 s (for the drain at SIGTERM). Each query's name is logged.
python3 deploy/test-upstream.py "$work/upstream.port" "$work/upstream.log" &
pids+=($!)
for _ in $(seq 50); do [ -s "$work/upstream.port" ] && break; sleep 0.1; done
[ -s "$work/upstream.port" ] || die "the test upstream did not start"
upstream=127.0.0.1:$(cat "$work/upstream.port")

# Certificates made here, the key readable by the image's user only, the
# directory mounted read-only where the default command looks.
certs/gen-test-certs.sh dns.test "$work/certs" 127.0.0.1 >/dev/null
chmod 755 "$work/certs"
chown 10001:10001 "$work/certs/server.key"

port=$(free_port)
step "run: ${entrypoint[*]} ${cmd[*]} with DOTGATE_LISTEN=127.0.0.1:$port DOTGATE_UPSTREAM=$upstream"
buildah run --isolation chroot -v "$work/certs:/etc/dotgate:ro" \
  -e "DOTGATE_LISTEN=127.0.0.1:$port" -e "DOTGATE_UPSTREAM=$upstream" \
  "$c" -- "${entrypoint[@]}" "${cmd[@]}" >"$work/dotgate.log" 2>&1 &
run_pid=$!
pids+=("$run_pid")
for _ in $(seq 150); do
  pid=$(ss -Hltnp "sport = :$port" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2 || true)
  [ -n "$pid" ] && break
  kill -0 "$run_pid" 2>/dev/null || { cat "$work/dotgate.log"; die "dotgate exited at start"; }
  sleep 0.1
done
[ -n "$pid" ] || { cat "$work/dotgate.log"; die "dotgate did not listen on 127.0.0.1:$port within 15 s"; }
uids=$(awk '/^Uid:/ { print $2, $3, $4, $5 }' "/proc/$pid/status")
gids=$(awk '/^Gid:/ { print $2, $3, $4, $5 }' "/proc/$pid/status")
[ "$uids" = "10001 10001 10001 10001" ] && [ "$gids" = "10001 10001 10001 10001" ] ||
  die "dotgate runs with uids $uids, gids $gids, not 10001"
echo "running: pid $pid, uid/gid 10001 (real, effective, saved, fs), $(readlink "/proc/$pid/exe")"

out=$("$bin" query --ca "$work/certs/ca.pem" --tls-name dns.test --timeout 5s \
  "@127.0.0.1:$port" query.image.test A 2>&1) || die "dotgate query failed: $out"
grep -q '192\.0\.2\.53' <<<"$out" || die "dotgate query: no answer in: $out"
echo "dotgate query from the host: answered"
out=$(kdig "+tls-ca=$work/certs/ca.pem" +tls-hostname=dns.test +time=3 +retry=0 \
  @127.0.0.1 -p "$port" kdig.image.test A 2>&1) || die "kdig failed: $out"
grep -q 'status: NOERROR' <<<"$out" && grep -q '192\.0\.2\.53' <<<"$out" ||
  die "kdig: no answer in: $out"
echo "kdig +tls from the host: answered"

# The image's HEALTHCHECK, its port changed from 853 to the one served.
hc=()
changed=0
for arg in "${healthcheck[@]:1}"; do
  if [[ $arg =~ ^@(.*):853$ ]]; then
    arg="@${BASH_REMATCH[1]}:$port"
    changed=$((changed + 1))
  fi
  hc+=("$arg")
done
[ "$changed" = 1 ] || die "the HEALTHCHECK does not name one server on port 853: ${healthcheck[*]}"
health() { timeout "$hc_timeout" buildah run --isolation chroot "$c" -- "${hc[@]}" >"$work/health.log" 2>&1; }
health || { cat "$work/health.log"; die "the HEALTHCHECK failed against the running server"; }
echo "HEALTHCHECK (${hc[*]}): passes"

# SIGTERM with a query in flight: answered, then exit 0.
"$bin" query --ca "$work/certs/ca.pem" --tls-name dns.test --timeout 8s \
  "@127.0.0.1:$port" slow.image.test A >"$work/slow.out" 2>&1 &
slow_pid=$!
pids+=("$slow_pid")
for _ in $(seq 50); do grep -q '^slow\.image\.test$' "$work/upstream.log" && break; sleep 0.1; done
grep -q '^slow\.image\.test$' "$work/upstream.log" || die "the slow query did not reach the upstream"
t0=$(now)
kill -s "${stopsignal#SIG}" "$pid"
rc=0
wait "$run_pid" || rc=$?
stop_s=$(since "$t0")
slow_rc=0
wait "$slow_pid" || slow_rc=$?
[ "$rc" = 0 ] || { cat "$work/dotgate.log"; die "exit status $rc after $stopsignal"; }
python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) < 5 else 1)" "$stop_s" ||
  die "$stop_s s from $stopsignal to exit (Docker kills after 10 s)"
[ "$slow_rc" = 0 ] && grep -q '192\.0\.2\.53' "$work/slow.out" ||
  die "the query in flight at $stopsignal was not answered: $(cat "$work/slow.out")"
echo "$stopsignal: the query in flight answered, exit status 0 after $stop_s s"

if health; then die "the HEALTHCHECK passed with the server stopped"; fi
echo "HEALTHCHECK with the server stopped: fails ($(head -1 "$work/health.log"))"

echo "image: ok (built in $build_s s; $size)"
