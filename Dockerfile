# syntax=docker/dockerfile:1
#
# dotgate in a container: a multi-stage build, a small non-root runtime, for
# amd64 and arm64 (Raspberry Pi 4/5 with a 64-bit OS, ARM servers).
#
#   docker build -t dotgate .                       # this machine's architecture
#   docker buildx build --platform linux/amd64,linux/arm64 -t NAME --push .
#   docker run -d --name dotgate -p 853:853 \
#     -v "$PWD/certs/out:/etc/dotgate:ro" -e DOTGATE_UPSTREAM=192.0.2.53 dotgate
#
# The default command expects /etc/dotgate/fullchain.pem (leaf first, then
# intermediates) and /etc/dotgate/server.key, readable by uid 10001. Every
# flag can also be set as DOTGATE_<FLAG> (see docs/configuration.md).

# --- build ------------------------------------------------------------------
# The builder runs on the machine that builds ($BUILDPLATFORM) whatever the
# target is, and cross-compiles for $TARGETARCH: compiling under emulation
# (QEMU) would take many times as long. Only the runtime stage below is of
# the target's architecture.
FROM --platform=$BUILDPLATFORM rust:1-bookworm AS builder
# Set by BuildKit (docker build, docker buildx) and buildah to the
# architecture of the image being built; empty means this machine's.
ARG TARGETARCH
# The cross toolchain: rustup's standard library for the target's
# *-linux-gnu triple and Debian's cross gcc and glibc (aws-lc-sys, rustls'
# crypto, is C). Both are bookworm's, as the runtime base is, so the binary
# links against the glibc it runs on; no other tool or download is needed.
# (packaging/build.sh builds static musl binaries with zig instead, for
# hosts whose libc is unknown; here the libc is the runtime's own.)
# A native build (target = builder) installs nothing: the image's gcc does.
# The choices go to /etc/dotgate-target.env for the build step below.
# hadolint ignore=DL3008
RUN set -eu; \
    build_arch=$(dpkg --print-architecture); \
    arch=${TARGETARCH:-$build_arch}; \
    case "$arch" in \
      amd64) triple=x86_64-unknown-linux-gnu; gnu=x86_64-linux-gnu; \
             gcc_package=gcc-x86-64-linux-gnu; libc_package=libc6-dev-amd64-cross; \
             cargo_var=X86_64_UNKNOWN_LINUX_GNU; cc_var=x86_64_unknown_linux_gnu ;; \
      arm64) triple=aarch64-unknown-linux-gnu; gnu=aarch64-linux-gnu; \
             gcc_package=gcc-aarch64-linux-gnu; libc_package=libc6-dev-arm64-cross; \
             cargo_var=AARCH64_UNKNOWN_LINUX_GNU; cc_var=aarch64_unknown_linux_gnu ;; \
      *) echo "dotgate's image is built for amd64 and arm64, not $arch" >&2; exit 1 ;; \
    esac; \
    echo "export CARGO_BUILD_TARGET=$triple" > /etc/dotgate-target.env; \
    if [ "$arch" != "$build_arch" ]; then \
      apt-get update; \
      apt-get install -y --no-install-recommends "$gcc_package" "$libc_package"; \
      rm -rf /var/lib/apt/lists/*; \
      printf 'export CARGO_TARGET_%s_LINKER=%s\nexport CC_%s=%s\nexport AR_%s=%s\n' \
        "$cargo_var" "$gnu-gcc" "$cc_var" "$gnu-gcc" "$cc_var" "$gnu-ar" >> /etc/dotgate-target.env; \
    fi; \
    rustup target add "$triple"
# The commit `dotgate --version` names: the build context has no .git
# (.dockerignore), so build.rs cannot ask git; pass
# --build-arg DOTGATE_GIT_COMMIT=$(git rev-parse --short=12 HEAD), or the
# version says "commit unknown".
ARG DOTGATE_GIT_COMMIT=""
WORKDIR /src
COPY . .
# The registry and target caches only speed up rebuilds; the binary is copied
# out of the cached target directory within the same step. Both
# architectures share them: with --target, cargo keeps what runs on the
# builder (build scripts, proc macros) apart from the target's code, so a
# second architecture compiles only its own code.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    . /etc/dotgate-target.env \
    && cargo build --release --locked \
    && install -m 755 "target/$CARGO_BUILD_TARGET/release/dotgate" /usr/local/bin/dotgate

# --- run --------------------------------------------------------------------
# The target's architecture, picked from debian:bookworm-slim's manifest
# list. Building for another architecture runs this stage's apt-get under
# QEMU: Docker Desktop has it; on Linux, install qemu-user-static (binfmt)
# first. It installs, it compiles nothing.
# The --platform is BuildKit's default, but buildah 1.28 (Debian 12's, which
# CI builds with) carries the builder's --platform over to this stage
# without it, and would make an "arm64" image of the amd64 base.
# hadolint ignore=DL3065
FROM --platform=$TARGETPLATFORM debian:bookworm-slim
# ca-certificates: the system roots `dotgate query` verifies servers against.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 dotgate \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin dotgate \
    && mkdir -p /etc/dotgate
COPY --from=builder /usr/local/bin/dotgate /usr/local/bin/dotgate

# Port 853 as a non-root user: Docker (20.10 and later) lets any user of a
# container bind low ports in the container's own network namespace. Where a
# runtime does not (host networking, some other runtimes), listen on a high
# port instead and map it: -e DOTGATE_LISTEN='[::]:8853' -p 853:8853 (and
# override the health check's port to match).
USER 10001:10001
EXPOSE 853/tcp
STOPSIGNAL SIGTERM

# Liveness: a real DoT query against this instance. It passes on any reply,
# SERVFAIL included (a failing upstream does not make dotgate unhealthy).
# --insecure because the check talks to itself by address, not by name.
HEALTHCHECK --interval=30s --timeout=5s --start-period=5s --retries=3 \
    CMD ["dotgate", "query", "--insecure", "--timeout", "3s", "@127.0.0.1:853", ".", "NS"]

ENTRYPOINT ["dotgate"]
CMD ["serve", "--cert", "/etc/dotgate/fullchain.pem", "--key", "/etc/dotgate/server.key"]
