#!/usr/bin/env bash
# Checks the artifacts packaging/build.sh left in dist/, as a user would
# meet them (CI runs it from .ci/run, as root):
#
#   every tarball   holds what packaging/README.md lists; its binary is an ELF
#                   for its architecture, statically linked, names the commit
#                   in --version, and serves DoT to kdig (+tls-ca, the name
#                   verified) in front of a loopback upstream: natively on
#                   x86_64, under Debian's qemu-aarch64-static and
#                   qemu-arm-static on aarch64 and armv7
#   every .deb      lintian, no error (warnings shown)
#   the amd64 .deb  installed with dpkg into a chroot of the stand-in
#                   debian:bookworm-slim that deploy/test-image.sh debootstraps
#                   (kept in buildah's store, reused here); its maintainer
#                   scripts make the user and /var/lib/dotgate and leave the
#                   service disabled while the config names no certificate;
#                   with the test's certificate in /etc/dotgate the shipped
#                   config passes --check-config and a reconfigure enables the
#                   service; remove keeps /var/lib/dotgate, purge deletes it
#
# Needs: file, kdig, python3, qemu-user-static, lintian, buildah (root).
# Environment: DOTGATE_DIST (default dist); DOTGATE_GIT_COMMIT, the commit
# --version must name (default: HEAD, as build.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

dist=${DOTGATE_DIST:-dist}
slim=docker.io/library/debian:bookworm-slim
die() { echo "packaging test: FAIL: $*" >&2; exit 1; }
step() { echo "--- packaging test: $*"; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }

[ -f "$dist/SHA256SUMS" ] || die "no $dist/SHA256SUMS: run packaging/build.sh first"
for tool in file kdig python3; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed (.ci/run installs it)"
done

work=$(mktemp -d -t dotgate-pkgtest.XXXXXX)
pids=()
containers=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for c in "${containers[@]}"; do buildah rm "$c" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT

step "SHA256SUMS"
(cd "$dist" && sha256sum --quiet -c SHA256SUMS) || die "a checksum does not match"
commit=${DOTGATE_GIT_COMMIT:-$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)}
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)

# One loopback upstream and one certificate for every run below.
python3 deploy/test-upstream.py "$work/upstream.port" "$work/upstream.log" &
pids+=($!)
for _ in $(seq 50); do [ -s "$work/upstream.port" ] && break; sleep 0.1; done
[ -s "$work/upstream.port" ] || die "the test upstream did not start"
upstream=127.0.0.1:$(cat "$work/upstream.port")
certs/gen-test-certs.sh dns.test "$work/certs" 127.0.0.1 >/dev/null
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# ---------- the tarballs ----------

run_tarball() {
  local tarball=$1 arch name dir bin runner=() elf t0 port pid out
  t0=$(now)
  name=$(basename "$tarball" .tar.gz)
  arch=${name#dotgate-"$version"-}
  arch=${arch%-linux}
  case $arch in
    x86_64) elf="x86-64" ;;
    aarch64) elf="ARM aarch64"; runner=(qemu-aarch64-static) ;;
    armv7) elf="ARM, EABI5"; runner=(qemu-arm-static) ;;
    *) die "$tarball: unknown architecture $arch" ;;
  esac
  step "$name"
  tar -C "$work" -xzf "$tarball"
  dir=$work/$name
  for f in dotgate README.md LICENSE-MIT LICENSE-APACHE dotgate.service dotgate.toml \
    man/dotgate.1 man/dotgate-serve.1 completions/dotgate.bash completions/_dotgate completions/dotgate.fish; do
    [ -f "$dir/$f" ] || die "$name lacks $f"
  done
  bin=$dir/dotgate
  local what
  what=$(file -b "$bin")
  echo "file: $what"
  grep -q "$elf" <<<"$what" || die "$name: not an $elf binary: $what"
  grep -Eq 'statically linked|static-pie linked' <<<"$what" || die "$name: not static: $what"
  if [ ${#runner[@]} -gt 0 ]; then
    command -v "${runner[0]}" >/dev/null 2>&1 || die "${runner[0]} is not installed (Debian's qemu-user-static)"
  fi
  out=$("${runner[@]}" "$bin" --version) || die "$name: --version failed"
  [ "$out" = "dotgate $version (commit $commit)" ] || die "$name: --version says '$out', not commit $commit"
  echo "$out"
  port=$(free_port)
  "${runner[@]}" "$bin" serve --cert "$work/certs/fullchain.pem" --key "$work/certs/server.key" \
    --listen "127.0.0.1:$port" --upstream "$upstream" --log-level info >"$work/$name.log" 2>&1 &
  pid=$!
  pids+=("$pid")
  local up=""
  for _ in $(seq 300); do
    kill -0 "$pid" 2>/dev/null || { cat "$work/$name.log"; die "$name: dotgate exited at start"; }
    if python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.2)' "$port" 2>/dev/null; then
      up=1
      break
    fi
    sleep 0.1
  done
  [ -n "$up" ] || { cat "$work/$name.log"; die "$name: not listening within 30 s"; }
  out=$(kdig "+tls-ca=$work/certs/ca.pem" +tls-hostname=dns.test +time=5 +retry=1 \
    @127.0.0.1 -p "$port" "$arch.release.test" A 2>&1) || { cat "$work/$name.log"; die "$name: kdig failed: $out"; }
  grep -q 'status: NOERROR' <<<"$out" && grep -q '192\.0\.2\.53' <<<"$out" ||
    die "$name: kdig got no answer: $out"
  kill "$pid"
  wait "$pid" || die "$name: exit status $? after SIGTERM"
  echo "$name: kdig +tls answered (${runner[*]:-native}); exit 0 on SIGTERM; $(since "$t0") s"
}

for tarball in "$dist"/dotgate-*-linux.tar.gz; do run_tarball "$tarball"; done

if ! ls "$dist"/*.deb >/dev/null 2>&1; then
  echo "note: no .deb in $dist (DOTGATE_TARGETS without x86_64 and aarch64): package checks skipped"
  echo "packaging test: ok (tarballs only)"
  exit 0
fi

# ---------- lintian ----------

for deb in "$dist"/*.deb; do
  step "lintian $(basename "$deb")"
  command -v lintian >/dev/null 2>&1 || die "lintian is not installed"
  t0=$(now)
  lintian --fail-on error --display-info "$deb" || die "lintian reports errors in $deb"
  echo "lintian: no error ($(since "$t0") s)"
done

# ---------- the packaged unit ----------

if command -v systemd-analyze >/dev/null 2>&1; then
  step "systemd-analyze verify (the packaged unit)"
  deb=$(ls "$dist"/dotgate_*_amd64.deb | head -1)
  dpkg-deb --fsys-tarfile "$deb" | tar -xOf - ./lib/systemd/system/dotgate.service |
    sed "s#/usr/bin/dotgate#$work/dotgate-$version-x86_64-linux/dotgate#" >"$work/dotgate.service"
  # --man=no: the unit's Documentation= names a page this host has not installed.
  systemd-analyze verify --man=no "$work/dotgate.service" || die "systemd-analyze verify failed"
  echo "systemd-analyze verify: ok"
else
  echo "note: systemd-analyze not found: the packaged unit not verified"
fi

# ---------- the amd64 package in a Debian chroot ----------

deb=$(ls "$dist"/dotgate_*_amd64.deb 2>/dev/null | head -1)
[ -n "$deb" ] || die "no amd64 .deb in $dist"
step "$(basename "$deb") in a debootstrapped bookworm (buildah's stand-in $slim)"
command -v buildah >/dev/null 2>&1 || die "buildah is not installed"
buildah inspect --type image "$slim" >/dev/null 2>&1 ||
  die "no $slim in buildah's store: deploy/test-image.sh makes it (run it first)"
t0=$(now)
c=$(buildah from --pull=never "$slim")
containers+=("$c")
in_chroot() { buildah run --isolation chroot "$c" -- "$@"; }
buildah copy "$c" "$deb" /tmp/dotgate.deb >/dev/null
out=$(in_chroot dpkg -i /tmp/dotgate.deb 2>&1) || { echo "$out"; die "dpkg -i failed"; }
echo "$out" | sed 's/^/  dpkg: /'
grep -q 'installed, not started' <<<"$out" || die "the postinst did not say the service waits for a certificate"
in_chroot getent passwd dotgate >/dev/null || die "no user dotgate after install"
[ "$(in_chroot stat -c '%U:%G %a' /var/lib/dotgate)" = "dotgate:dotgate 750" ] ||
  die "/var/lib/dotgate is $(in_chroot stat -c '%U:%G %a' /var/lib/dotgate)"
[ "$(in_chroot stat -c '%U:%G %a' /etc/dotgate)" = "root:dotgate 750" ] ||
  die "/etc/dotgate is $(in_chroot stat -c '%U:%G %a' /etc/dotgate)"
wants=/etc/systemd/system/multi-user.target.wants/dotgate.service
if in_chroot test -e "$wants" 2>/dev/null; then die "the service was enabled without a certificate"; fi
out=$(in_chroot dotgate --version)
[ "$out" = "dotgate $version (commit $commit)" ] || die "installed --version: $out"
listing=$(dpkg-deb -c "$deb")
# The stand-in is slimmed as the official image is (dpkg leaves man pages
# out), so the pages are looked for in the package itself.
for f in usr/share/man/man1/dotgate.1.gz usr/share/man/man1/dotgate-serve.1.gz \
  usr/share/bash-completion/completions/dotgate usr/share/zsh/vendor-completions/_dotgate \
  usr/share/fish/vendor_completions.d/dotgate.fish; do
  grep -q " \./$f\$" <<<"$listing" || die "the package lacks /$f"
done
in_chroot test -f /usr/share/bash-completion/completions/dotgate || die "bash completion not installed"
echo "installed: user dotgate, /var/lib/dotgate and /etc/dotgate as expected, service left disabled; $out"

# The shipped config, with the certificate it names put in place.
buildah copy --chown 0:0 "$c" "$work/certs/fullchain.pem" /etc/dotgate/fullchain.pem >/dev/null
buildah copy --chown 0:0 "$c" "$work/certs/server.key" /etc/dotgate/privkey.pem >/dev/null
in_chroot chgrp dotgate /etc/dotgate/privkey.pem
in_chroot chmod 640 /etc/dotgate/privkey.pem
printf 'nameserver 127.0.0.1\n' >"$work/resolv.conf"
out=$(buildah run --isolation chroot -v "$work/resolv.conf:/etc/resolv.conf:ro" "$c" -- \
  dotgate serve --config /etc/dotgate/dotgate.toml --check-config 2>&1) ||
  { echo "$out"; die "--check-config fails on the shipped config with a certificate"; }
echo "--check-config on the shipped /etc/dotgate/dotgate.toml: $(tail -1 <<<"$out")"
out=$(buildah run --isolation chroot -v "$work/resolv.conf:/etc/resolv.conf:ro" "$c" -- \
  dpkg-reconfigure -fnoninteractive dotgate 2>&1) || { echo "$out"; die "dpkg-reconfigure failed"; }
in_chroot test -L "$wants" || { echo "$out"; die "configured, but the service was not enabled"; }
echo "reconfigured with a certificate: the service is enabled"

in_chroot sh -c 'echo state > /var/lib/dotgate/keep'
in_chroot dpkg -r dotgate >/dev/null 2>&1 || die "dpkg -r failed"
in_chroot test -f /var/lib/dotgate/keep || die "remove deleted /var/lib/dotgate"
in_chroot test -f /etc/dotgate/dotgate.toml || die "remove deleted the conffile"
in_chroot dpkg -P dotgate >/dev/null 2>&1 || die "dpkg -P failed"
if in_chroot test -e /var/lib/dotgate 2>/dev/null; then die "purge left /var/lib/dotgate"; fi
if in_chroot test -e /etc/dotgate/dotgate.toml 2>/dev/null; then die "purge left the conffile"; fi
if in_chroot test -e "$wants" 2>/dev/null; then die "purge left the service enabled"; fi
echo "remove kept /var/lib/dotgate and the conffile; purge deleted both ($(since "$t0") s)"

echo "packaging test: ok"
