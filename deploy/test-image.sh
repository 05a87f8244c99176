#!/usr/bin/env bash
# Builds the container image from ./Dockerfile, unchanged, for amd64 and
# arm64 into one manifest list, on a machine with no Docker engine and no
# access to a container registry, then runs each architecture's image and
# checks what a user of `docker run` relies on: the non-root user, the
# binary starting on the runtime base, DoT answers to `dotgate query` and
# kdig, the image's own HEALTHCHECK, and SIGTERM draining to exit status 0.
# The arm64 image runs under qemu-aarch64-static (Debian's qemu-user-static,
# registered with binfmt_misc here when it is not yet), as it would on an
# amd64 host with Docker and QEMU; its binary comes from the Dockerfile's
# builder stage, cross-compiled on this machine's architecture.
# CI runs it from .ci/run; it needs root (buildah's storage, debootstrap,
# binfmt_misc).
#
# What stands in for what (say so wherever its results are quoted):
#   debian:bookworm-slim  NOT the official image: a manifest list of two
#                         `debootstrap --variant=minbase bookworm` from the
#                         apt mirror this machine uses, amd64 and arm64 (the
#                         arm64 one's second stage run under QEMU), with
#                         documentation, man pages and locales left out as
#                         the official slim image does. Tagged
#                         docker.io/library/debian:bookworm-slim (the list),
#                         docker.io/amd64/debian:bookworm-slim and
#                         docker.io/arm64v8/debian:bookworm-slim (the images),
#                         as Docker Hub names them.
#   rust:1-bookworm       NOT the official image: amd64's base above plus
#                         Debian's gcc, libc6-dev and ca-certificates, and this
#                         machine's Rust toolchain (rustc --print sysroot,
#                         with the aarch64-unknown-linux-gnu standard library,
#                         and rustup when there is one) copied to the official
#                         image's paths, with its CARGO_HOME=/usr/local/cargo,
#                         RUSTUP_HOME=/usr/local/rustup and PATH. This
#                         machine's CA bundle replaces Debian's inside it, so
#                         cargo reaches the crate registry the way the host
#                         does (through a TLS-inspecting proxy, if any).
#                         Tagged docker.io/library/rust:1-bookworm (amd64
#                         only: the Dockerfile's builder runs on the build
#                         platform).
#   docker buildx build --platform linux/amd64,linux/arm64
#                         buildah bud --isolation chroot --format docker
#                         --pull=never --platform linux/ARCH --manifest LIST,
#                         once per architecture (the same Dockerfile and
#                         context; one after the other, as 2 cores would run
#                         them anyway, and so each is timed). BuildKit
#                         predefines BUILDPLATFORM, the builder stage's
#                         `FROM --platform`; buildah 1.28 (Debian 12's) does
#                         not, so it is passed as a build argument.
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
# when the host's toolchain changes). DOTGATE_REBUILD_BASES=1 remakes them.
#
# Environment: DOTGATE_IMAGE (the manifest list, default
# localhost/dotgate:ci; each architecture's image is tagged IMAGE-amd64 and
# IMAGE-arm64), DOTGATE_BIN (the host's dotgate for `dotgate query`, default
# target/debug/dotgate, built when missing), DEBIAN_MIRROR (default: apt's
# configured bookworm mirror).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

image=${DOTGATE_IMAGE:-localhost/dotgate:ci}
arches=(amd64 arm64)
slim=docker.io/library/debian:bookworm-slim
rust=docker.io/library/rust:1-bookworm
label=org.dotgate.stand-in

die() { echo "test-image: FAIL: $*" >&2; exit 1; }
step() { echo "--- image: $*"; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }

[ "$(id -u)" -eq 0 ] || die "needs root (buildah's storage, debootstrap, binfmt_misc)"
for tool in buildah debootstrap kdig python3 openssl ss file qemu-aarch64-static; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed (.ci/run installs it)"
done
host_arch=$(dpkg --print-architecture)
[ "$host_arch" = amd64 ] || die "the stand-ins are made for an amd64 host, not $host_arch"

# Each architecture's stand-in slim image, by Docker Hub's per-architecture
# names; the Rust triple the Dockerfile builds for it; what `file` calls it.
slim_of() {
  case $1 in
    amd64) echo docker.io/amd64/debian:bookworm-slim ;;
    arm64) echo docker.io/arm64v8/debian:bookworm-slim ;;
  esac
}
elf_of() {
  case $1 in
    amd64) echo x86-64 ;;
    arm64) echo "ARM aarch64" ;;
  esac
}
machine_of() {
  case $1 in
    amd64) echo x86_64 ;;
    arm64) echo aarch64 ;;
  esac
}
cross_triple=aarch64-unknown-linux-gnu

work=$(mktemp -d -t dotgate-image.XXXXXX)
containers=()
pids=()
pid=""
cleanup() {
  # dotgate itself first: a failed check can leave it running.
  [ -z "$pid" ] || kill "$pid" 2>/dev/null || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for c in "${containers[@]}"; do
    [ -n "$c" ] || continue
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
arch_of() {
  buildah inspect --type image --format '{{.OCIv1.Architecture}}' "$1" 2>/dev/null || true
}
is_list() { buildah manifest inspect "$1" >/dev/null 2>&1; }

# ---------- running arm64 code: QEMU through binfmt_misc ----------

# The arm64 stand-in's debootstrap, the image's RUN steps for arm64 and the
# arm64 image's dotgate all execute aarch64 binaries, child processes
# included, so the kernel must hand them to qemu-aarch64-static: binfmt_misc,
# mounted here if the machine has not (a fresh container often has not), and
# Debian's registration of qemu-user-static. Its F flag opens the
# interpreter once, now, so it also runs inside chroots that have no QEMU.
binfmt=/proc/sys/fs/binfmt_misc
if ! [ -e "$binfmt/register" ]; then
  mount -t binfmt_misc binfmt_misc "$binfmt" || die "cannot mount binfmt_misc on $binfmt"
fi
if ! [ -e "$binfmt/qemu-aarch64" ]; then
  conf=/usr/lib/binfmt.d/qemu-aarch64.conf
  [ -f "$conf" ] || die "no $conf (Debian's qemu-user-static)"
  grep -v '^#' "$conf" >"$binfmt/register" || die "registering $conf with binfmt_misc failed"
  echo "binfmt_misc: registered qemu-aarch64 ($conf)"
fi
[ "$(head -1 "$binfmt/qemu-aarch64")" = enabled ] || echo 1 >"$binfmt/qemu-aarch64"
grep -q '^flags: .*F' "$binfmt/qemu-aarch64" ||
  die "binfmt_misc's qemu-aarch64 lacks the F flag (it would not run in a chroot): $(grep flags "$binfmt/qemu-aarch64")"
echo "binfmt_misc: qemu-aarch64 $(head -1 "$binfmt/qemu-aarch64"), $(grep '^interpreter' "$binfmt/qemu-aarch64")"

# ---------- the stand-in base images ----------

mirror=${DEBIAN_MIRROR:-$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 'Identifier: Packages' 2>/dev/null |
  awk '$2 == "bookworm" { print $1; exit }')}
mirror=${mirror:-http://deb.debian.org/debian/}

slim_id="debootstrap minbase bookworm, slimmed v2"

make_slim() {
  local arch=$1 name t0 c mnt
  name=$(slim_of "$arch")
  step "making the stand-in $name (debootstrap --arch $arch from $mirror)"
  t0=$(now)
  c=$(buildah from scratch)
  containers+=("$c")
  mnt=$(buildah mount "$c")
  if [ "$arch" = "$host_arch" ]; then
    debootstrap --variant=minbase bookworm "$mnt" "$mirror" >"$work/debootstrap-$arch.log" 2>&1 ||
      { tail -20 "$work/debootstrap-$arch.log"; die "debootstrap failed"; }
  else
    # Unpacked here, configured by its own (emulated) dpkg in a chroot.
    { debootstrap --arch "$arch" --foreign --variant=minbase bookworm "$mnt" "$mirror" &&
      chroot "$mnt" /debootstrap/debootstrap --second-stage; } >"$work/debootstrap-$arch.log" 2>&1 ||
      { tail -20 "$work/debootstrap-$arch.log"; die "debootstrap --arch $arch failed"; }
  fi
  # As the official slim image: no documentation, man pages or locales, now
  # or in packages installed later; no apt caches.
  cat >"$mnt/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOT'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
EOT
  find "$mnt/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$mnt/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$mnt"/usr/share/{groff,info,linda,lintian,locale,man}/*
  rm -rf "$mnt"/var/cache/apt/archives/*.deb "$mnt"/var/lib/apt/lists/* "$mnt"/var/log/*.log
  # As the official images' apt settings: no package caches kept after an
  # install or an update (without this, every `apt-get update` in a
  # Dockerfile leaves some 80 MB of /var/cache/apt/*.bin in its layer).
  cat >"$mnt/etc/apt/apt.conf.d/docker-clean" <<'EOT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOT
  echo 'Acquire::Languages "none";' >"$mnt/etc/apt/apt.conf.d/docker-no-languages"
  echo 'Acquire::GzipIndexes "true";' >"$mnt/etc/apt/apt.conf.d/docker-gzip-indexes"
  rm -f "$mnt"/var/cache/apt/*.bin
  buildah umount "$c" >/dev/null
  buildah config --os linux --arch "$arch" \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd bash --label "$label=$slim_id" "$c"
  buildah commit --quiet --format docker --rm "$c" "$name" >/dev/null
  containers=("${containers[@]/$c/}")
  echo "stand-in $name made in $(since "$t0") s"
}

sysroot=$(rustc --print sysroot)
toolchain=$(basename "$sysroot")
rust_id="$toolchain $(rustc --version | cut -d' ' -f2) $(cargo --version | cut -d' ' -f2) + $cross_triple"
[ -d "$sysroot/lib/rustlib/$cross_triple/lib" ] ||
  die "this machine's Rust has no $cross_triple standard library (rustup target add $cross_triple; .ci/run does)"

make_rust() {
  step "making the stand-in $rust (Debian's gcc + this machine's $toolchain)"
  local t0 c mnt
  t0=$(now)
  c=$(buildah from --pull=never "$(slim_of "$host_arch")")
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
    # The Dockerfile's `rustup target add`, for the targets copied above.
    cat >"$mnt/usr/local/cargo/bin/rustup" <<EOT
#!/bin/sh
[ "\$1 \$2" = "target add" ] && [ -d "/usr/local/rustup/toolchains/$toolchain/lib/rustlib/\$3" ] && exit 0
echo "stand-in rustup: only 'target add' of a target copied from the host" >&2
exit 1
EOT
    chmod 755 "$mnt/usr/local/cargo/bin/rustup"
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

# An earlier version of this script kept the amd64 stand-in as a plain image
# under the list's name: it becomes the amd64 image, and the name is freed.
if [ -n "$(label_of "$slim")" ] && ! is_list "$slim"; then
  if [ -z "$(label_of "$(slim_of amd64)")" ] && [ "$(arch_of "$slim")" = amd64 ]; then
    buildah tag "$slim" "$(slim_of amd64)"
  fi
  buildah rmi "$slim" >/dev/null || die "cannot free the name $slim for the manifest list"
fi
remade=0
for arch in "${arches[@]}"; do
  if [ "${DOTGATE_REBUILD_BASES:-0}" = 1 ] || [ "$(label_of "$(slim_of "$arch")")" != "$slim_id" ]; then
    make_slim "$arch"
    [ "$arch" != "$host_arch" ] || remade=1
  fi
done
if [ "$remade" = 1 ] || [ "$(label_of "$rust")" != "$rust_id" ]; then
  make_rust
fi
# debian:bookworm-slim as Docker Hub has it: a manifest list, from which
# `FROM debian:bookworm-slim` takes the build's target architecture (and
# `buildah from` this machine's, as packaging/test.sh relies on).
! is_list "$slim" || buildah manifest rm "$slim" >/dev/null
buildah manifest create "$slim" >/dev/null
for arch in "${arches[@]}"; do
  buildah manifest add --os linux --arch "$arch" "$slim" "containers-storage:$(slim_of "$arch")" >/dev/null
done
echo "stand-in bases: $slim (${arches[*]}): $slim_id; $rust: $(label_of "$rust")"

# ---------- the build: one image per architecture, one manifest list ----------

commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
# The list is made anew; each architecture's image replaces its predecessor.
if is_list "$image"; then
  buildah manifest rm "$image" >/dev/null
elif buildah inspect --type image "$image" >/dev/null 2>&1; then
  buildah rmi "$image" >/dev/null || die "cannot free the name $image for the manifest list"
fi
declare -A build_s
for arch in "${arches[@]}"; do
  step "build $arch: buildah bud --isolation chroot --format docker --pull=never --platform linux/$arch --manifest $image -f Dockerfile ."
  t0=$(now)
  previous=$(buildah images --quiet --no-trunc "$image-$arch" 2>/dev/null || true)
  if ! buildah bud --isolation chroot --format docker --pull=never --platform "linux/$arch" \
    --build-arg "BUILDPLATFORM=linux/$host_arch" --build-arg "BUILDOS=linux" --build-arg "BUILDARCH=$host_arch" \
    --build-arg "DOTGATE_GIT_COMMIT=$commit" \
    --manifest "$image" -t "$image-$arch" -f Dockerfile . >"$work/build-$arch.log" 2>&1; then
    tail -40 "$work/build-$arch.log"
    die "the $arch image did not build"
  fi
  grep -q 'cargo build --release --locked' "$work/build-$arch.log" ||
    die "the $arch build did not run cargo build --release --locked"
  grep -E 'Finished `release`' "$work/build-$arch.log" || true
  build_s[$arch]=$(since "$t0")
  echo "$arch image built in ${build_s[$arch]} s"
  [ "$(arch_of "$image-$arch")" = "$arch" ] || die "the $arch image's architecture is $(arch_of "$image-$arch")"
  # The image this one replaced, now untagged, is not kept.
  if [ -n "$previous" ] && [ "$previous" != "$(buildah images --quiet --no-trunc "$image-$arch")" ]; then
    buildah rmi "$previous" >/dev/null 2>&1 || true
  fi
done

# The list names one image per platform, the ones just built.
buildah manifest inspect "$image" >"$work/list.json"
platforms=$(python3 - "$work/list.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
print(" ".join(sorted(f'{d["platform"]["os"]}/{d["platform"]["architecture"]}' for d in m["manifests"])))
PY
)
expected=$(printf 'linux/%s\n' "${arches[@]}" | sort | paste -sd' ')
[ "$platforms" = "$expected" ] || die "the manifest list $image names '$platforms', not '$expected'"
echo "manifest list $image: $platforms"

# ---------- each image, checked and run ----------

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

sizes=()
check_image() {
  local arch=$1 img size bin_size binary machine version run_pid slow_pid rc slow_rc stop_s t0 port
  img=$image-$arch
  step "$arch: $img"
  buildah inspect --type image "$img" |
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
  local user stopsignal hc_timeout
  local -a entrypoint cmd healthcheck
  user=$(config user)
  [ "$user" = "10001:10001" ] || die "$arch: the image's user is '$user', not 10001:10001"
  [ "$(config ports)" = "853/tcp" ] || die "$arch: the image exposes '$(config ports)', not 853/tcp"
  mapfile -t entrypoint < <(config entrypoint)
  mapfile -t cmd < <(config cmd)
  mapfile -t healthcheck < <(config healthcheck)
  stopsignal=$(config stopsignal)
  hc_timeout=$(config healthcheck-timeout)
  [ "${healthcheck[0]:-}" = CMD ] || die "$arch: the HEALTHCHECK is not an exec-form CMD: ${healthcheck[*]:-none}"
  echo "image config: user $user, entrypoint ${entrypoint[*]}, command ${cmd[*]}, stop signal $stopsignal"
  echo "image HEALTHCHECK: ${healthcheck[*]:1} (timeout ${hc_timeout}s)"

  size=$(buildah images --format '{{.Size}}' "$img")
  c=$(buildah from --pull=never --platform "linux/$arch" "$img")
  containers+=("$c")
  local mnt
  mnt=$(buildah mount "$c")
  bin_size=$(stat -c %s "$mnt/usr/local/bin/dotgate")
  binary=$(file -b "$mnt/usr/local/bin/dotgate")
  buildah umount "$c" >/dev/null
  grep -q "$(elf_of "$arch")" <<<"$binary" || die "$arch: the image's dotgate is not $(elf_of "$arch"): $binary"
  echo "the image's /usr/local/bin/dotgate: $binary"
  # The runtime base is the target's too (not only the binary): its own
  # uname, under QEMU for arm64, names the machine the image is for.
  machine=$(buildah run --isolation chroot "$c" -- uname -m 2>&1) || die "$arch: uname -m failed: $machine"
  [ "$machine" = "$(machine_of "$arch")" ] || die "$arch: the image's base runs as $machine, not $(machine_of "$arch")"
  echo "the image's uname -m: $machine"
  version=$(buildah run --isolation chroot "$c" -- dotgate --version 2>&1) || die "$arch: dotgate --version failed: $version"
  [ "$version" = "dotgate $(cargo pkgid | sed 's/.*[#@]//') (commit $commit)" ] ||
    die "$arch: the image's dotgate --version says '$version', not commit $commit"
  echo "image's $version"
  sizes+=("$arch $size (binary $(awk -v b="$bin_size" 'BEGIN { printf "%.1f", b / 1e6 }') MB)")
  echo "image size: $size (buildah images): the stand-in $(slim_of "$arch") $(buildah images --format '{{.Size}}' "$(slim_of "$arch")")," \
    "the dotgate binary $(awk -v b="$bin_size" 'BEGIN { printf "%.1f", b / 1e6 }') MB, ca-certificates and the user the rest"

  port=$(free_port)
  step "$arch: run: ${entrypoint[*]} ${cmd[*]} with DOTGATE_LISTEN=127.0.0.1:$port DOTGATE_UPSTREAM=$upstream"
  buildah run --isolation chroot -v "$work/certs:/etc/dotgate:ro" \
    -e "DOTGATE_LISTEN=127.0.0.1:$port" -e "DOTGATE_UPSTREAM=$upstream" \
    "$c" -- "${entrypoint[@]}" "${cmd[@]}" >"$work/dotgate-$arch.log" 2>&1 &
  run_pid=$!
  pids+=("$run_pid")
  pid=""
  for _ in $(seq 150); do
    pid=$(ss -Hltnp "sport = :$port" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2 || true)
    [ -n "$pid" ] && break
    kill -0 "$run_pid" 2>/dev/null || { cat "$work/dotgate-$arch.log"; die "$arch: dotgate exited at start"; }
    sleep 0.1
  done
  [ -n "$pid" ] || { cat "$work/dotgate-$arch.log"; die "$arch: dotgate did not listen on 127.0.0.1:$port within 15 s"; }
  local uids gids
  uids=$(awk '/^Uid:/ { print $2, $3, $4, $5 }' "/proc/$pid/status")
  gids=$(awk '/^Gid:/ { print $2, $3, $4, $5 }' "/proc/$pid/status")
  [ "$uids" = "10001 10001 10001 10001" ] && [ "$gids" = "10001 10001 10001 10001" ] ||
    die "$arch: dotgate runs with uids $uids, gids $gids, not 10001"
  # For arm64, the process is QEMU running the image's aarch64 dotgate.
  echo "running: pid $pid, uid/gid 10001 (real, effective, saved, fs), $(readlink "/proc/$pid/exe")"

  local out
  out=$("$bin" query --ca "$work/certs/ca.pem" --tls-name dns.test --timeout 5s \
    "@127.0.0.1:$port" "query.$arch.image.test" A 2>&1) || die "$arch: dotgate query failed: $out"
  grep -q '192\.0\.2\.53' <<<"$out" || die "$arch: dotgate query: no answer in: $out"
  echo "dotgate query from the host: answered"
  out=$(kdig "+tls-ca=$work/certs/ca.pem" +tls-hostname=dns.test +time=3 +retry=0 \
    @127.0.0.1 -p "$port" "kdig.$arch.image.test" A 2>&1) || die "$arch: kdig failed: $out"
  grep -q 'status: NOERROR' <<<"$out" && grep -q '192\.0\.2\.53' <<<"$out" ||
    die "$arch: kdig: no answer in: $out"
  echo "kdig +tls from the host: answered"

  # The image's HEALTHCHECK, its port changed from 853 to the one served.
  local -a hc=()
  local changed=0 arg
  for arg in "${healthcheck[@]:1}"; do
    if [[ $arg =~ ^@(.*):853$ ]]; then
      arg="@${BASH_REMATCH[1]}:$port"
      changed=$((changed + 1))
    fi
    hc+=("$arg")
  done
  [ "$changed" = 1 ] || die "$arch: the HEALTHCHECK does not name one server on port 853: ${healthcheck[*]}"
  health() { timeout "$hc_timeout" buildah run --isolation chroot "$c" -- "${hc[@]}" >"$work/health.log" 2>&1; }
  health || { cat "$work/health.log"; die "$arch: the HEALTHCHECK failed against the running server"; }
  echo "HEALTHCHECK (${hc[*]}): passes"

  # SIGTERM with a query in flight: answered, then exit 0.
  "$bin" query --ca "$work/certs/ca.pem" --tls-name dns.test --timeout 8s \
    "@127.0.0.1:$port" "slow.$arch.image.test" A >"$work/slow.out" 2>&1 &
  slow_pid=$!
  pids+=("$slow_pid")
  for _ in $(seq 50); do grep -q "^slow\.$arch\.image\.test$" "$work/upstream.log" && break; sleep 0.1; done
  grep -q "^slow\.$arch\.image\.test$" "$work/upstream.log" || die "$arch: the slow query did not reach the upstream"
  t0=$(now)
  kill -s "${stopsignal#SIG}" "$pid"
  rc=0
  wait "$run_pid" || rc=$?
  stop_s=$(since "$t0")
  slow_rc=0
  wait "$slow_pid" || slow_rc=$?
  [ "$rc" = 0 ] || { cat "$work/dotgate-$arch.log"; die "$arch: exit status $rc after $stopsignal"; }
  python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) < 5 else 1)" "$stop_s" ||
    die "$arch: $stop_s s from $stopsignal to exit (Docker kills after 10 s)"
  [ "$slow_rc" = 0 ] && grep -q '192\.0\.2\.53' "$work/slow.out" ||
    die "$arch: the query in flight at $stopsignal was not answered: $(cat "$work/slow.out")"
  echo "$stopsignal: the query in flight answered, exit status 0 after $stop_s s"
  pid=""

  if health; then die "$arch: the HEALTHCHECK passed with the server stopped"; fi
  echo "HEALTHCHECK with the server stopped: fails ($(head -1 "$work/health.log"))"
}

for arch in "${arches[@]}"; do
  t0=$(now)
  check_image "$arch"
  echo "$arch image checked in $(since "$t0") s"
done

echo "image: ok: $image ($(printf 'linux/%s ' "${arches[@]}")); built in" \
  "$(for a in "${arches[@]}"; do printf '%s %s s, ' "$a" "${build_s[$a]}"; done)sizes: $(printf '%s; ' "${sizes[@]}")"
