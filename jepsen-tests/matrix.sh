#!/usr/bin/env bash
# Every nemesis alone, then all of them together, against the bank workload on the Docker backend,
# then all of them together once more with --extremes (credit limits and amounts near i64::MAX),
# and once each against the holds and the payments workloads (captures and chains counted where
# transfers are):
# one line per run (verdict, operation counts, store directory). Exits 1 if any run is invalid.
# Needs the image wallet:dev (README § Containers). TIME and SEED may be set in the environment.
set -uo pipefail
cd "$(dirname "$0")/.."
TIME=${TIME:-90}
SEED=${SEED:-31}
BACKEND=${BACKEND:-docker}
cargo build -q --release -p wallet-jepsen || exit 2
failed=0
all=kill,leader,pause,partition,clock,router,wipe,corrupt
for run in kill leader pause partition clock router wipe corrupt "$all" "$all --extremes" \
  "$all --workload holds" "$all --workload payments"; do
  nemesis=${run%% *}
  extra=${run#"$nemesis"}
  log=$(mktemp)
  # shellcheck disable=SC2086 # $extra is a flag or nothing
  ./target/release/wallet-jepsen run --backend "$BACKEND" --nemesis "$nemesis" --time "$TIME" \
    --concurrency 10 --seed "$SEED" --store store $extra >"$log" 2>&1
  status=$?
  verdict=$(grep -E '^valid|^INVALID' "$log" | head -1)
  transfers=$(awk '$1 == "transfer" || $1 == "capture" || $1 == "chain" {print $2 " ok / " $3 " fail / " $4 " info"}' "$log")
  faults=$(grep -c 'nemesis: .* start' "$log")
  store=$(sed -n 's/^store: //p' "$log")
  recovery=$(sed -n 's/^served again \([0-9.]*\) s.*/\1 s/p' "$log")
  printf '%-58s %-22s transfers %-28s faults %-3s recovery %-7s %s\n' "$run" \
    "${verdict:-error (exit $status)}" "$transfers" "$faults" "${recovery:--}" "$store"
  [ "$status" -eq 0 ] || { failed=1; tail -20 "$log"; }
  rm -f "$log"
done
exit $failed
