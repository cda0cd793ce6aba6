# syntax=docker/dockerfile:1
#
# One image with every ECS binary: ecs-broker, ecs-cloud, ecs-edge-agent, ecs-simulator.
# Which one runs is chosen by the command, e.g. `docker run --rm ecs:local ecs-cloud --help`;
# docker-compose.yml runs the whole system from it.
#
# Build (BuildKit is required for the cache mounts; it is Docker's default builder):
#   docker build -t ecs:local .
#
# Nothing secret is baked in: tokens, passwords and the PKI come at run time from the environment
# or from files named by it (see docker-compose.yml).

# Builder and runtime must be the same Debian release (the binaries link against its glibc):
# change both together, e.g. rust:1-slim-trixie with debian:trixie-slim.
ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# --- builder -------------------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS builder

# The slim Rust image already has gcc and libc6-dev, which is all the C code here needs: ring and
# SQLite (rusqlite `bundled`) are compiled with the `cc` crate; TLS is rustls, so no OpenSSL, and
# the bundled SQLite needs no pkg-config. Nothing else to install.

WORKDIR /app
# SQLX_OFFLINE: the image build never talks to a database (sqlx's compile-time query checks, if
# ever used, must then come from a committed .sqlx/ directory).
ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0 \
    SQLX_OFFLINE=true

# The whole workspace: cargo needs every member's manifest (tests/ included), and ecs-cloud
# embeds migrations/ at compile time. .dockerignore keeps target/, .git/ and local data out.
COPY . .

# CARGO_HOME is /usr/local/cargo in the Rust images, so that is where the registry cache lives.
# target/ is a cache mount too: it is not part of the image, so the binaries are copied out of it
# in the same RUN, into /out.
RUN --mount=type=cache,id=ecs-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=ecs-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=ecs-target,target=/app/target,sharing=locked \
    cargo build --release --locked \
        --bin ecs-broker --bin ecs-cloud --bin ecs-edge-agent --bin ecs-simulator \
 && mkdir -p /out \
 && cp target/release/ecs-broker target/release/ecs-cloud \
       target/release/ecs-edge-agent target/release/ecs-simulator /out/

# --- runtime -------------------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS runtime

LABEL org.opencontainers.image.title="Empathic Credit System" \
      org.opencontainers.image.description="ecs-broker, ecs-cloud, ecs-edge-agent and ecs-simulator" \
      org.opencontainers.image.licenses="Apache-2.0"

# ca-certificates: for any outbound TLS to public services; tini: PID 1 that forwards signals
# (the binaries shut down cleanly on SIGTERM) and reaps zombies.
# Versions are left to the Debian suite (bookworm only gets security fixes), not pinned.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates tini \
 && rm -rf /var/lib/apt/lists/*

# A fixed, non-root uid/gid (10001), so volume ownership is the same on every host and
# orchestrators can check runAsNonRoot. /secrets, /pki and /data exist in the image, owned by it:
# Docker gives a new, empty named volume the owner and mode of the directory it is mounted on,
# so the volumes in docker-compose.yml are writable by this user without running anything as root.
RUN groupadd --system --gid 10001 ecs \
 && useradd --system --uid 10001 --gid ecs --home-dir /home/ecs --create-home \
            --shell /usr/sbin/nologin ecs \
 && install -d -o ecs -g ecs -m 0700 /secrets /pki /data

COPY --from=builder /out/ /usr/local/bin/

WORKDIR /home/ecs
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd (this is `ecs`).
USER 10001:10001

# Logs: one JSON object per line on stdout (`pretty` for humans).
ENV ECS_LOG_FORMAT=json

# 8080 cloud HTTP API, 8883 broker device listener (MQTT over mTLS), 1884 broker service
# listener (plain MQTT with password: keep it on a private network, never publish it),
# 8090 model server (`ecs-cloud model-server`).
EXPOSE 8080 8883 1884 8090

# No HEALTHCHECK on purpose: this image runs four different programs, and no single check fits
# them all (the broker speaks MQTT, not HTTP; the simulators and the edge agent listen on no port).
# Each deployment checks the program it runs: docker-compose.yml has a healthcheck per service,
# and Kubernetes ignores HEALTHCHECK anyway in favour of its own probes (/healthz, /readyz).

ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["ecs-cloud", "--help"]
