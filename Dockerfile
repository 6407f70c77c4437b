# syntax=docker/dockerfile:1
# Build: docker build -t genosdb-fallback .
# Run:   docker run -p 3000:3000 -v genosdb-data:/app/data -e DB_NAME=my-app-db genosdb-fallback

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, from the manifests alone, so this layer is cached until they change.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && echo 'fn main() {}' > benches/store.rs \
 && cargo build --release --locked \
 && rm -rf src benches
COPY src ./src
COPY benches ./benches
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin genosdb-fallback

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
