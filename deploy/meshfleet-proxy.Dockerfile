# syntax=docker/dockerfile:1
# meshfleet-proxy: the mesh's sidecar proxy (mTLS between workloads; flags name its listeners)
# Build from the repository's root (the whole workspace is the context):
#   docker build -f deploy/meshfleet-proxy.Dockerfile -t meshfleet/meshfleet-proxy:0.1.0 .
# Multi-stage: the release binary is built with the workspace's lock file, then copied alone
# onto a distroless base (glibc and CA certificates, no shell), run as the non-root user 65532.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p meshfleet-mesh --bin meshfleet-proxy \
    && install -D target/release/meshfleet-proxy /out/meshfleet-proxy

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/meshfleet-proxy"]
