#!/usr/bin/env bash
# The wallet store beside PostgreSQL on this machine, same workload, back to back.
#
#   bash bench/compare.sh                         # ~10 minutes: 16 and 64 clients, every pair mode
#   DURATION=10 CLIENTS_LIST=64 PAIRS=same-shard ACCOUNTS=10000 bash bench/compare.sh   # CI smoke
#
# Workload (both sides): ACCOUNTS accounts funded with 1 000 000; each transaction moves 1..=100
# between two accounts with a unique idempotency key, durably (PostgreSQL: fsync=on,
# synchronous_commit=on; the store: 3 replicas, each fsyncs before it acknowledges).
# PostgreSQL 15 comes from Debian's packages when missing and runs under $BASE on 127.0.0.1:$PG_PORT;
# the store is a `wallet-cluster up` playground (3 nodes x 3 shards x 3 replicas) under $BASE.
# Both are stopped on exit. The last lines are one table: figures and ratios store / PostgreSQL.
#
# Env: DURATION (s per run, 20), CLIENTS_LIST ("16 64"), PAIRS ("same-shard random merchant"),
#      ACCOUNTS (100000), BATCH (transfers per request for extra batched rows, one per pair mode,
#      with BATCH_CLIENTS (4) clients; 0 = none; their ratio is to PostgreSQL's figure at that
#      client count when it was measured, else "-"),
#      IN_PROCESS (1: each single-call row again with the router embedded in wallet-bench,
#      `--in-process`, label "... emb": no router hop, the bench's CPU counted; 0 = none),
#      BASE (/tmp/wallet-compare), PG_PORT (55433).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-20}
CLIENTS_LIST=${CLIENTS_LIST:-"16 64"}
PAIRS=${PAIRS:-"same-shard random merchant"}
ACCOUNTS=${ACCOUNTS:-100000}
BATCH=${BATCH:-0}
BATCH_CLIENTS=${BATCH_CLIENTS:-4}
IN_PROCESS=${IN_PROCESS:-1}
BASE=${BASE:-/tmp/wallet-compare}
PG_PORT=${PG_PORT:-55433}
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

# ---------- PostgreSQL ----------
if [ ! -x /usr/lib/postgresql/15/bin/pgbench ]; then
  log "installing postgresql from Debian's packages"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-contrib >/dev/null
fi
PGBIN=/usr/lib/postgresql/15/bin
PGDATA=$BASE/pg
as_pg() { runuser -u postgres -- "$@"; }
STORE_PID=
cleanup() {
  if [ -f "$PGDATA/postmaster.pid" ]; then as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null 2>&1 || true; fi
  if [ -n "$STORE_PID" ]; then kill -TERM "$STORE_PID" 2>/dev/null || true; wait "$STORE_PID" 2>/dev/null || true; fi
  rm -rf "$BASE"
}
trap cleanup EXIT
rm -rf "$BASE"; mkdir -p "$BASE"; chown postgres:postgres "$BASE"
as_pg "$PGBIN/initdb" -D "$PGDATA" -A trust -E UTF8 --no-locale >/dev/null
cat >> "$PGDATA/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$BASE'
max_connections = 200
shared_buffers = 2GB
max_wal_size = 8GB
checkpoint_timeout = 30min
fsync = on
synchronous_commit = on
full_page_writes = on
CONF
as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$BASE/pg.log" -w -t 60 start >/dev/null
PSQL=("$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres)
"${PSQL[@]}" -c "CREATE DATABASE bank"
"${PSQL[@]}" -d bank <<SQL
CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0));
CREATE TABLE transfers (idem_key uuid PRIMARY KEY, from_id bigint NOT NULL, to_id bigint NOT NULL,
  amount bigint NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
INSERT INTO accounts SELECT g, 1000000 FROM generate_series(1, $ACCOUNTS) g;
VACUUM ANALYZE accounts;
SQL
cat > "$BASE/transfer.sql" <<SQL
\set from random(1, $ACCOUNTS)
\set to random(1, $((ACCOUNTS - 1)))
\if :to >= :from
\set to :to + 1
\endif
\set amount random(1, 100)
BEGIN;
UPDATE accounts SET balance = balance - :amount WHERE id = :from AND balance >= :amount;
UPDATE accounts SET balance = balance + :amount WHERE id = :to;
INSERT INTO transfers (idem_key, from_id, to_id, amount) VALUES (gen_random_uuid(), :from, :to, :amount);
END;
SQL
chmod a+r "$BASE/transfer.sql"
log "PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}') loaded with $ACCOUNTS accounts"

declare -A PG_TPS PG_P99
for c in $CLIENTS_LIST; do
  "${PSQL[@]}" -d bank -c "VACUUM" -c "CHECKPOINT" >/dev/null
  jobs=$(( c < 2 ? c : 2 ))
  out=$(cd "$BASE" && "$PGBIN/pgbench" -h 127.0.0.1 -p "$PG_PORT" -U postgres -n -c "$c" -j "$jobs" \
        -T "$DURATION" --log --log-prefix="$BASE/pglat" -f "$BASE/transfer.sql" bank 2>&1)
  PG_TPS[$c]=$(sed -n "s/^tps = \([0-9]*\).*/\1/p" <<<"$out" | head -1)
  PG_P99[$c]=$(cat "$BASE"/pglat.* | awk '$3 ~ /^[0-9]+$/ {print $3}' | sort -n \
        | awk '{a[NR]=$1} END {if (NR) printf "%.2f", a[int(0.99*(NR-1)+0.5)+1]/1000; else print "nan"}')
  rm -f "$BASE"/pglat.*
  log "PostgreSQL, $c clients: ${PG_TPS[$c]} TPS, p99 ${PG_P99[$c]} ms"
done
"${PSQL[@]}" -d bank -tA -c "SELECT 'PostgreSQL money conserved: ' || (sum(balance) = $ACCOUNTS::bigint * 1000000) FROM accounts" >&2
as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null

# ---------- the wallet store ----------
cargo build --release -q -p wallet-cluster
./target/release/wallet-cluster up --dir "$BASE/store" --port 0 > "$BASE/store.log" 2>&1 &
STORE_PID=$!
for _ in $(seq 1 120); do grep -q '^ready' "$BASE/store.log" 2>/dev/null && break; sleep 0.5; done
grep -q '^ready' "$BASE/store.log" || { cat "$BASE/store.log" >&2; echo "the store did not start" >&2; exit 1; }
ENDPOINT=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["router"]["grpc"])' "$BASE/store/endpoints.json")
# The playground speaks TLS (README § TLS); the router's certificate also serves --in-process
# rows, whose embedded router dials the nodes as a member.
CERTS="$BASE/store/certs"
BENCH=(./target/release/wallet-bench --endpoint "$ENDPOINT" --cluster "$BASE/store/cluster.toml"
       --tls-ca "$CERTS/ca.crt" --tls-cert "$CERTS/router.crt" --tls-key "$CERTS/router.key"
       --accounts "$ACCOUNTS" --prefix cmp --seconds "$DURATION" --json)
SETUP=()   # the first run opens and funds the accounts, later runs reuse them
ROWS=()
run_store() { # label pairs clients [extra args]
  local label=$1 pairs=$2 clients=$3; shift 3
  local json
  json=$("${BENCH[@]}" "${SETUP[@]}" --pairs "$pairs" --clients "$clients" "$@" | tee -a "$BASE/bench.log" | tail -1)
  SETUP=(--no-setup)
  ROWS+=("$label|$clients|$(python3 -c 'import json,sys; j=json.loads(sys.argv[1]); print("%.0f|%.2f|%.0f|%.0f|%d" % (j["transfers_per_s"], j["p99_ms"], j["cpu_ms_per_1000_ops"] or 0, j["rss_bytes_max"]/1048576, sum(j["refusals"].values())))' "$json")")
  log "store, $label, $clients clients: ${ROWS[-1]}"
}
for pairs in $PAIRS; do
  for c in $CLIENTS_LIST; do run_store "$pairs" "$pairs" "$c"; done
  if [ "$IN_PROCESS" != 0 ]; then
    for c in $CLIENTS_LIST; do run_store "$pairs emb" "$pairs" "$c" --in-process; done
  fi
done
if [ "$BATCH" != 0 ]; then
  for pairs in $PAIRS; do run_store "$pairs x$BATCH" "$pairs" "$BATCH_CLIENTS" --batch "$BATCH"; done
fi

# ---------- the table ----------
echo
echo "wallet store vs PostgreSQL 15 on $(nproc) cores, $(date -u '+%Y-%m-%d %H:%M UTC'), ${DURATION}s per run, $ACCOUNTS accounts"
printf '%-18s %7s %12s %9s %8s %9s %8s %10s %8s %8s\n' workload clients "store ops/s" "p99 ms" "PG TPS" "PG p99" ratio "CPU ms/1k" "RSS MB" refused
PG_BEST=0
for c in $CLIENTS_LIST; do PG_BEST=$(awk -v a="$PG_BEST" -v b="${PG_TPS[$c]:-0}" 'BEGIN { print (b > a ? b : a) }'); done
for row in "${ROWS[@]}"; do
  IFS='|' read -r label clients tps p99 cpu rss refused <<<"$row"
  # Batched rows (other client counts) are compared with PostgreSQL's best figure.
  pg=${PG_TPS[$clients]:-$PG_BEST}
  ratio=$(awk -v a="$tps" -v b="$pg" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }')
  printf '%-18s %7s %12s %9s %8s %9s %8s %10s %8s %8s\n' "$label" "$clients" "$tps" "$p99" "$pg" "${PG_P99[$clients]:--}" "$ratio" "$cpu" "$rss" "$refused"
done
echo "(one playground for all runs, in this order: memory grows from run to run; xN rows: batches of N transfers per call, ratio to PostgreSQL's best TPS; emb rows: the router embedded in the client process, whose CPU is counted)"
