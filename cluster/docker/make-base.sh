#!/usr/bin/env bash
# Builds the base image the Dockerfile names (wallet-base:bookworm) without any registry: a minimal
# Debian 12 made with debootstrap from Debian's package mirror, loaded with `docker import`.
# It carries what the chaos harness needs inside a node: iptables (network partitions) and
# libfaketime (clock skew of the whole node process).
# Where a registry is available, build FROM debian:bookworm-slim and apt-get install the same packages.
set -euo pipefail
IMAGE=${1:-wallet-base:bookworm}
PACKAGES=iptables,libfaketime
if docker image inspect "$IMAGE" >/dev/null 2>&1 &&
  docker run --rm "$IMAGE" sh -c 'command -v iptables && ls /usr/lib/*/faketime/libfaketime.so.1' >/dev/null 2>&1; then
  echo "$IMAGE exists"
  exit 0
fi
command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null; }
ROOTFS=$(mktemp -d /tmp/wallet-rootfs.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT
debootstrap --variant=minbase --include="$PACKAGES" bookworm "$ROOTFS" http://deb.debian.org/debian >/dev/null
tar -C "$ROOTFS" -c . | docker import - "$IMAGE" >/dev/null
echo "built $IMAGE"
