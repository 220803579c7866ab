# syntax=docker/dockerfile:1
# One image for the whole system: the four services (orchestrator, inventory, payment, shipping), sagactl and
# saga-topics, all in /usr/local/bin. docker-compose.yml runs each service from this image with its own command.
#   docker build -t saga-orchestrator:local .        (or: make compose-up)

# ---- builder: the release binaries -------------------------------------------------------------------------
ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS builder
# librdkafka is built from source by the rdkafka crate (configure + make, with zlib); aws-lc (TLS, JWT) by cc.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake pkg-config zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The registry and target caches survive between builds (BuildKit); the binaries are copied out of the cache.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p orchestrator -p participants -p platform --bins \
 && mkdir -p /out \
 && for bin in orchestrator sagactl inventory payment shipping saga-topics; do cp "target/release/$bin" /out/; done

# ---- runtime: the binaries on a slim Debian (same release as the builder, so glibc matches) ---------------
FROM debian:bookworm-slim AS runtime
# ca-certificates for TLS to Kafka or MongoDB when configured; curl for the compose healthchecks (GET /ready).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin saga
COPY --from=builder /out/ /usr/local/bin/
USER saga
# Listen on every interface inside a container; compose sets HTTP_ADDR per service (8080 ... 8083).
ENV HTTP_ADDR=0.0.0.0:8080 \
    SAGA_ENV=development
EXPOSE 8080 8081 8082 8083
CMD ["orchestrator"]
