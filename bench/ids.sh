#!/usr/bin/env bash
# Raw ID generator throughput: one generator (one worker id) issuing IDs as fast as it can, one
# at a time and in batches, for a few seconds, three times; prints each run.
#   bench/ids.sh [seconds]        (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
for i in 1 2 3; do
    ./target/release/shardwire id bench --seconds "${1:-2}"
done
