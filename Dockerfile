# readyd container image: a release build on Debian bookworm, run as an
# unprivileged user on bookworm-slim.
#
#   docker build -t readyd .
#   docker run --rm -p 50051:50051 \
#     -e DATABASE_URL=postgres://readyd:secret@db:5432/readyd readyd
#
# In a container readyd talks to the PostgreSQL named by DATABASE_URL: the
# image has no PostgreSQL server, so the private database (used when
# DATABASE_URL is unset) is not available here.

# ---------------------------------------------------------------------------
# Build stage
# ---------------------------------------------------------------------------
FROM rust:1.95-bookworm AS build
WORKDIR /src

# 1. Dependencies only, so that changing readyd's sources does not rebuild
#    them. The manifest, the lock file, the build script and the protobuf
#    files are what the dependency build needs; protoc itself comes from a
#    crate (protoc-bin-vendored), so nothing else is installed. The sources
#    are stand-ins, and benches/ must exist because Cargo.toml declares a
#    bench target.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > benches/flag_eval.rs \
    && cargo build --release --locked \
    && rm -rf src

# 2. readyd itself. The migrations are embedded in the binary at compile
#    time. COPY keeps the files' modification times, which can be older than
#    the stand-in build above, so touch the crate roots to make cargo rebuild.
COPY src ./src
COPY migrations ./migrations
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && install -D -m 0755 target/release/readyd /out/readyd

# ---------------------------------------------------------------------------
# Runtime stage
# ---------------------------------------------------------------------------
FROM debian:bookworm-slim

# ca-certificates is left unpinned on purpose: it should follow the
# distribution's updates.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# A fixed numeric uid/gid, so that Kubernetes' runAsNonRoot can verify it and
# volumes can be prepared for it.
RUN groupadd --system --gid 10001 readyd \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /var/lib/readyd --shell /usr/sbin/nologin readyd \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/readyd

COPY --from=build /out/readyd /usr/local/bin/readyd

WORKDIR /var/lib/readyd
USER 10001:10001

# Listen on every interface: other containers, the published port and the
# kubelet's gRPC probes (which connect to the pod IP) must reach readyd.
ENV READYD_LISTEN=0.0.0.0:50051 \
    READYD_METRICS_LISTEN=0.0.0.0:9464 \
    READYD_DATA_DIR=/var/lib/readyd

# 50051 gRPC: grpc.health.v1, readyd.v1.*, reflection. 9464 Prometheus /metrics.
EXPOSE 50051 9464

# `readyd health` exits 0 iff the name is SERVING. It connects to
# 127.0.0.1:50051 (READYD_ADDR); change both if READYD_LISTEN uses another port.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/readyd", "health", "--service", "readiness", "--timeout", "2s"]

# On SIGTERM readyd turns NOT_SERVING, drains for up to READYD_SHUTDOWN_TIMEOUT
# (20s by default) and exits 0. `docker stop` waits only 10s by default: give
# it more (docker stop -t 30, or stop_grace_period: 30s in Compose).
STOPSIGNAL SIGTERM

ENTRYPOINT ["/usr/local/bin/readyd"]
CMD ["serve"]
