# The image holding the binaries a cluster runs: wallet-node, wallet-router, the wallet CLI and
# wallet-cluster (the chaos harness, wallet-jepsen, runs on the host and drives the containers).
# The binaries are built on the host first (`cargo build --release --workspace`, or just
# `-p wallet-cluster -p wallet-node -p wallet-router -p wallet-client`; the host is Debian 12 like the base), because this
# environment has no registry to pull a Rust toolchain image from. The base is a minimal Debian
# made locally by cluster/docker/make-base.sh; with a registry, pass
# `--build-arg BASE=debian:bookworm-slim` and nothing else changes.
ARG BASE=wallet-base:bookworm
FROM ${BASE}
COPY target/release/wallet-node target/release/wallet-router target/release/wallet \
     target/release/wallet-cluster /usr/local/bin/
RUN mkdir -p /data /etc/wallet
ENV RUST_LOG=info,raft=warn
EXPOSE 7000 7001
CMD ["wallet-node", "--help"]
