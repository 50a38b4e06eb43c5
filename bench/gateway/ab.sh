#!/usr/bin/env bash
# A/B of two gavel binaries through run.sh, in alternating rounds (A, B, A, B, ...), because on a
# shared VM the machine's state can move more between runs minutes apart than a change moves the
# figures: only pairs measured side by side, several times, say anything.
#
#   bench/gateway/ab.sh A_BINARY B_BINARY [ROUNDS]     (ROUNDS defaults to 2)
#
# e.g. build both first:  git stash; cargo build --release -p gavel-cli; cp target/release/gavel /tmp/gavel-a
#                         git stash pop; cargo build --release -p gavel-cli; cp target/release/gavel /tmp/gavel-b
# Options (environment): RATES (default "30 2000 max"), DURATION (15s), MIN_SAMPLES (600); the
# other run.sh options pass through. Direct nginx is measured in every run, so added latency is
# always against the same run's baseline. Each run's full report stays in the printed folder.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [ $# -lt 2 ]; then
  echo "usage: bench/gateway/ab.sh A_BINARY B_BINARY [ROUNDS]" >&2
  exit 2
fi
a="$(realpath "$1")"
b="$(realpath "$2")"
rounds="${3:-2}"
for bin in "$a" "$b"; do
  [ -x "$bin" ] || { echo "ab.sh: $bin is not an executable gavel binary" >&2; exit 2; }
done
out="$(mktemp -d "${TMPDIR:-/tmp}/gavel-ab.XXXXXX")"
echo "A = $a"
echo "B = $b"
echo "reports: $out"
for round in $(seq 1 "$rounds"); do
  for side in A B; do
    if [ "$side" = A ]; then bin="$a"; else bin="$b"; fi
    echo "[$(date -u +%H:%M:%S)] round $round, $side"
    GAVEL="$bin" GAVEL_BUILD=0 PEERS=0 TARGETS="direct gavel" RESULTS="" \
      RATES="${RATES:-30 2000 max}" DURATION="${DURATION:-15s}" MIN_SAMPLES="${MIN_SAMPLES:-600}" \
      "$here/run.sh" > "$out/$side-$round.md" 2>&1 || echo "  run.sh failed: see $out/$side-$round.md"
  done
done
echo
echo "| build | round | rate (req/s) | added p50 ms | added p99 ms | achieved req/s | CPU ms/req |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for round in $(seq 1 "$rounds"); do
  for side in A B; do
    f="$out/$side-$round.md"
    # The gavel rows of the main table (rate, achieved, CPU) and of the added-latency table.
    awk -v side="$side" -v round="$round" -F'|' '
      /^\| gavel serve \| [0-9a-z]+ \| [0-9.]+ \| (yes|\*\*no\*\*|sat\.) \|/ {
        gsub(/ /, "", $3); gsub(/ /, "", $4); gsub(/ /, "", $11)
        achieved[$3] = $4; cpu[$3] = $11
      }
      /^## Added latency/ { added = 1 }
      added && /^\| gavel serve \|/ {
        gsub(/ /, "", $3); gsub(/ /, "", $4); gsub(/ /, "", $5)
        p50[$3] = $4; p99[$3] = $5
      }
      END {
        for (r in achieved) {
          printf "| %s | %s | %s | %s | %s | %s | %s |\n", side, round, r,
            (r in p50 ? p50[r] : "-"), (r in p99 ? p99[r] : "-"), achieved[r], cpu[r]
        }
      }' "$f" | sort -t'|' -k4,4n
  done
done
