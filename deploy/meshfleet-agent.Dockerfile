# syntax=docker/dockerfile:1
# meshfleet-agent: the in-cluster agent (dials out to the gateway; health and metrics on 9090)
# Build from the repository's root (the whole workspace is the context):
#   docker build -f deploy/meshfleet-agent.Dockerfile -t meshfleet/meshfleet-agent:0.1.0 .
# Multi-stage: the release binary is built with the workspace's lock file, then copied alone
# onto a distroless base (glibc and CA certificates, no shell), run as the non-root user 65532.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p meshfleet-agent --bin meshfleet-agent \
    && install -D target/release/meshfleet-agent /out/meshfleet-agent

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
EXPOSE 9090
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/meshfleet-agent"]
