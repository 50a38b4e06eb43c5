#!/usr/bin/env bash
# Ledger benchmark (durable appends/s, lone-append latency, verification
# speed, proof timings). Extra arguments go to the bench, e.g.
#   bench/ledger/run.sh --records 500000 --dir /path/on/the/real/disk
set -euo pipefail
cd "$(dirname "$0")/../.."
exec cargo run --release -p gavel-ledger-sqlite --example ledger_bench -- "$@"
