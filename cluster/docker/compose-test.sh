#!/usr/bin/env bash
# Brings cluster/docker-compose.yml up (3 nodes × 3 shards + router, one container each, TLS with
# the certificates `wallet-cluster certs` writes), checks that it serves — accounts, a deposit,
# transfers, an audit — also with one node stopped, and that a plaintext client is not served,
# then takes it down. Skipped (exit 0) when no Docker engine answers.
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! docker info >/dev/null 2>&1; then
  echo "no Docker engine: compose test skipped"
  exit 0
fi
cluster/docker/make-base.sh
# The packages the image needs, and no more: with the chaos harness in the build, cargo unifies
# some dependencies' features differently (its PNG encoder's), and the README's demo command that
# CI runs next would rebuild tonic and every crate of ours (2–3 minutes of CI).
cargo build --release --quiet -p wallet-cluster -p wallet-node -p wallet-router -p wallet-client
docker build -q -t wallet:dev . >/dev/null
./target/release/wallet-cluster certs --dir cluster/docker/certs --nodes 3 >/dev/null
project="walletci$$"
# A test that was itself killed leaves its network holding the subnet: remove such leftovers
# (docker refuses to remove a network still in use).
docker network ls --format '{{.Name}}' | grep '^walletci.*_wallet$' | xargs -r docker network rm >/dev/null 2>&1 || true
compose() { docker-compose -f cluster/docker-compose.yml -p "$project" "$@"; }
trap 'compose down -v >/dev/null 2>&1 || true' EXIT
compose up -d >/dev/null 2>&1
wallet() { WALLET_TLS_CA=cluster/docker/certs/ca.crt ./target/release/wallet --endpoint 127.0.0.1:7700 --timeout 5 "$@"; }
for _ in $(seq 1 60); do
  if wallet audit >/dev/null 2>&1; then break; fi
  sleep 1
done
wallet account create ci-alice --currency USD >/dev/null
wallet account create ci-bob --currency USD >/dev/null
wallet account create ci-carol --currency USD >/dev/null
wallet deposit ci-alice 1000 --id ci-d1 >/dev/null
wallet transfer ci-alice ci-bob 300 --id ci-t1 >/dev/null
wallet transfer ci-alice ci-carol 200 --id ci-t2 >/dev/null
docker stop -t 20 "${project}_node1_1" >/dev/null
wallet transfer ci-bob ci-carol 50 --id ci-t3 >/dev/null
balances=$(for a in ci-alice ci-bob ci-carol; do wallet --json account get "$a"; done | sed -n 's/.*"balance":\([0-9-]*\).*/\1/p' | tr '\n' ' ')
[ "$balances" = "500 250 250 " ] || { echo "unexpected balances: $balances"; compose logs --tail 20; exit 1; }
wallet audit
if env -u WALLET_TLS_CA ./target/release/wallet --endpoint 127.0.0.1:7700 --timeout 2 audit >/dev/null 2>&1; then
  echo "a plaintext client was served by a TLS router"; exit 1
fi
echo "compose cluster served (balances $balances) with a node stopped"
