# syntax=docker/dockerfile:1
# meshfleet-controller: the mesh's controller, the cluster's identity CA (flags name its listeners)
# Build from the repository's root (the whole workspace is the context):
#   docker build -f deploy/meshfleet-controller.Dockerfile -t meshfleet/meshfleet-controller:0.1.0 .
# Multi-stage: the release binary is built with the workspace's lock file, then copied alone
# onto a distroless base (glibc and CA certificates, no shell), run as the non-root user 65532.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p meshfleet-mesh --bin meshfleet-controller \
    && install -D target/release/meshfleet-controller /out/meshfleet-controller

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/meshfleet-controller"]
