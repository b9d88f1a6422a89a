# The image holding every binary of the wallet store: wallet-node, wallet-router, the wallet CLI,
# wallet-cluster and wallet-jepsen. The binaries are built on the host first
# (`cargo build --release --workspace`; the host is Debian 12 like the base), because this
# environment has no registry to pull a Rust toolchain image from. The base is a minimal Debian
# made locally by cluster/docker/make-base.sh; with a registry, pass
# `--build-arg BASE=debian:bookworm-slim` and nothing else changes.
ARG BASE=wallet-base:bookworm
FROM ${BASE}
COPY target/release/wallet-node target/release/wallet-router target/release/wallet \
     target/release/wallet-cluster target/release/wallet-jepsen /usr/local/bin/
RUN mkdir -p /data /etc/wallet
ENV RUST_LOG=info,raft=warn
EXPOSE 7000 7001
CMD ["wallet-node", "--help"]
