# syntax=docker/dockerfile:1
# Build: docker build -t genosdb-fallback .
# Run:   docker compose up   (docker-compose.yml; or see docs/OPERATIONS.md, "Docker")
# WebRTC carries the data over UDP, which `-p 3000:3000` does not publish: run with
# --network host (as docker-compose.yml does), or give browsers a TURN server.
# CI runs the build stages below as a script: .ci/docker-steps.

FROM rust:1.95-slim-bookworm AS chef
# cargo-chef turns the manifests into a recipe and builds the dependencies from it, so
# that layer stays cached until Cargo.toml or Cargo.lock change, whatever targets
# Cargo.toml declares.
RUN cargo install --locked cargo-chef --version 0.1.78
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS build
COPY --from=planner /src/recipe.json recipe.json
# The patched rtc crates ([patch.crates-io] in Cargo.toml, patches/PATCH.md) are path
# dependencies: the recipe names them, so cook needs their sources.
COPY patches patches
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin genosdb-fallback
COPY . .
RUN cargo build --release --locked --bin genosdb-fallback

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin genosdb \
 && mkdir -p /app/data \
 && chown -R genosdb:genosdb /app
COPY --from=build /src/target/release/genosdb-fallback /usr/local/bin/genosdb-fallback
WORKDIR /app
USER genosdb
ENV DATA_DIR=/app/data \
    PORT=3000 \
    HOST=0.0.0.0
VOLUME ["/app/data"]
EXPOSE 3000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD curl -fsS "http://127.0.0.1:${PORT}/health" || exit 1
# SIGTERM flushes the journal and exits 0 within 10 s.
STOPSIGNAL SIGTERM
CMD ["genosdb-fallback"]
