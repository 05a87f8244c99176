# syntax=docker/dockerfile:1
#
# dotgate in a container: a multi-stage build, a small non-root runtime.
#
#   docker build -t dotgate .
#   docker run -d --name dotgate -p 853:853 \
#     -v "$PWD/certs/out:/etc/dotgate:ro" -e DOTGATE_UPSTREAM=192.0.2.53 dotgate
#
# The default command expects /etc/dotgate/fullchain.pem (leaf first, then
# intermediates) and /etc/dotgate/server.key, readable by uid 10001. Every
# flag can also be set as DOTGATE_<FLAG> (see docs/configuration.md).

# --- build ------------------------------------------------------------------
# aws-lc-sys (rustls' default crypto provider) builds with the C compiler the
# image already has; no cmake or clang is needed on Linux x86_64 or aarch64.
FROM rust:1-bookworm AS builder
# The commit `dotgate --version` names: the build context has no .git
# (.dockerignore), so build.rs cannot ask git; pass
# --build-arg DOTGATE_GIT_COMMIT=$(git rev-parse --short=12 HEAD), or the
# version says "commit unknown".
ARG DOTGATE_GIT_COMMIT=""
WORKDIR /src
COPY . .
# The registry and target caches only speed up rebuilds; the binary is copied
# out of the cached target directory within the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && install -m 755 target/release/dotgate /usr/local/bin/dotgate

# --- run --------------------------------------------------------------------
FROM debian:bookworm-slim
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
