#!/usr/bin/env bash
# Builds the base image the Dockerfile names (wallet-base:bookworm) without any registry: a minimal
# Debian 12 made with debootstrap from Debian's package mirror, loaded with `docker import`.
# Where a registry is available, `docker build --build-arg BASE=debian:bookworm-slim .` skips this.
set -euo pipefail
IMAGE=${1:-wallet-base:bookworm}
if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "$IMAGE exists"
  exit 0
fi
command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null; }
ROOTFS=$(mktemp -d /tmp/wallet-rootfs.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT
debootstrap --variant=minbase bookworm "$ROOTFS" http://deb.debian.org/debian >/dev/null
tar -C "$ROOTFS" -c . | docker import - "$IMAGE" >/dev/null
echo "built $IMAGE"
