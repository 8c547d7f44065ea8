# Firebreak's two images, from one multi-stage build:
#   docker build --target firebreak       -t firebreak .        # every service; no demo, no simulator
#   docker build --target firebreak-agent -t firebreak-agent .  # the node agent, a static binary
# deploy/kustomization.yaml names them `firebreak` and `firebreak-agent`.

FROM rust:1-bookworm AS build
# librdkafka is built from source (rdkafka-sys): a C toolchain; musl for the static agent.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
# The service binary: the production build links neither fleet-sim nor the mock broker.
RUN cargo build --release --locked -p firebreak --no-default-features --bin firebreak
# The agent: statically linked (musl), without kube, sqlx or axum in its tree.
RUN cargo build --release --locked -p firebreak-agent --bin firebreak-agent --target x86_64-unknown-linux-musl

# Services run as a non-root user on a distroless base (glibc, CA certificates, nothing else).
FROM gcr.io/distroless/cc-debian12:nonroot AS firebreak
COPY --from=build /src/target/release/firebreak /usr/local/bin/firebreak
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/firebreak"]

# The agent needs `nsenter` to reach the host's systemd for reboots and restarts; busybox's
# static build gives it in about a megabyte.
FROM busybox:1.37-musl AS firebreak-agent
COPY --from=build /src/target/x86_64-unknown-linux-musl/release/firebreak-agent /usr/local/bin/firebreak-agent
ENTRYPOINT ["/usr/local/bin/firebreak-agent"]
