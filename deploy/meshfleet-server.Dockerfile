# syntax=docker/dockerfile:1
# meshfleet-server: the hosted service (HTTP API and dashboard on 8080, agent gateway on 8443)
# Build from the repository's root (the whole workspace is the context):
#   docker build -f deploy/meshfleet-server.Dockerfile -t meshfleet/meshfleet-server:0.1.0 .
# Multi-stage: the release binary is built with the workspace's lock file, then copied alone
# onto a distroless base (glibc and CA certificates, no shell), run as the non-root user 65532.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p meshfleet-server --bin meshfleet-server \
    && install -D target/release/meshfleet-server /out/meshfleet-server
RUN install -d -o 65532 -g 65532 /out-data/var/lib/meshfleet

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
COPY --from=build /out-data/ /
# Embedded SQLite and the local sealing key go here unless MESHFLEET_DATABASE_URL and
# MESHFLEET_SEALING_KEY are given (as they must be with several replicas).
ENV MESHFLEET_LISTEN=0.0.0.0:8080 MESHFLEET_GATEWAY_LISTEN=0.0.0.0:8443 MESHFLEET_DATA_DIR=/var/lib/meshfleet
VOLUME /var/lib/meshfleet
EXPOSE 8080 8443
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/meshfleet-server"]
