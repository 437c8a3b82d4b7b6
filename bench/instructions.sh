#!/usr/bin/env bash
# Counts shardwire's user-space instructions per transaction, which unlike the timings of
# bench/run.sh do not depend on the machine's noise. shardwire runs under
# `valgrind --tool=callgrind` in front of one throwaway PostgreSQL (fsync off, pgbench -i -s 1),
# transaction pooling, [pool] max_size = 20. For each protocol mode it warms up with
# `pgbench -S -c 4 -t 250`, zeroes the counters (`callgrind_control -z`), runs
# `pgbench -S -c 4 -j 2 -t TX` (4 x TX transactions), dumps them (`callgrind_control -d`) and
# prints the dump's total Ir divided by the number of transactions.
# All servers listen on 127.0.0.1 and are stopped at the end.
#
#   bench/instructions.sh [transactions-per-client]     (default 2500: 10,000 per mode)
#   MODES="extended" narrows the modes (default: simple extended prepared).
#   REPLICA=1 adds a streaming replica (pg_basebackup) that the reads go to: the replica path
#   (rotation, the read kept for a second try) instead of the primary's. Checks every 30 s, so
#   the monitor's queries stay out of the count.
#
# Needs: valgrind (callgrind_control), the PostgreSQL server packages (initdb, pgbench, psql),
# python3, cargo.
set -euo pipefail
cd "$(dirname "$0")/.."
TX=${1:-2500}
MODES=${MODES:-"simple extended prepared"}
CLIENTS=4
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
cargo build --release --quiet
SW=${CARGO_TARGET_DIR:-$PWD/target}/release/shardwire

WORK=$(mktemp -d /tmp/shardwire-instr.XXXXXX)
chmod 755 "$WORK"
AS=()
if [ "$(id -u)" = 0 ]; then chown postgres: "$WORK"; AS=(runuser -u postgres --); fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PG_PORT=$(free_port); SW_PORT=$(free_port); REP_PORT=$(free_port)
REPLICA=${REPLICA:-0}
VG_PID=""
cleanup() {
    if [ -n "$VG_PID" ]; then
        kill "$VG_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$VG_PID" 2>/dev/null || break; sleep 0.2; done
        kill -9 "$VG_PID" 2>/dev/null || true
    fi
    "${AS[@]}" "$BIN/pg_ctl" -D "$WORK/rep" -m immediate stop >/dev/null 2>&1 || true
    "${AS[@]}" "$BIN/pg_ctl" -D "$WORK/pg" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap "exit 130" INT TERM

"${AS[@]}" "$BIN/initdb" -D "$WORK/pg" -U postgres --auth=trust --no-sync >/dev/null
"${AS[@]}" "$BIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg.log" -w \
    -o "-p $PG_PORT -k $WORK -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
"$BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres bench
"$BIN/pgbench" -h 127.0.0.1 -p "$PG_PORT" -U postgres -i -s 1 -q bench >/dev/null 2>&1

REPLICAS=""
if [ "$REPLICA" = 1 ]; then
    "${AS[@]}" "$BIN/pg_basebackup" -h 127.0.0.1 -p "$PG_PORT" -U postgres -D "$WORK/rep" -R -X stream -c fast >/dev/null
    "${AS[@]}" "$BIN/pg_ctl" -D "$WORK/rep" -l "$WORK/rep.log" -w \
        -o "-p $REP_PORT -k $WORK -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
    REPLICAS="replicas = [\"postgres://postgres@127.0.0.1:$REP_PORT/bench\"]
[routing]
lag_check_interval = \"30s\""
fi

cat > "$WORK/shardwire.toml" <<TOML
[server]
listen = "127.0.0.1:$SW_PORT"
database = "bench"
[pool]
max_size = 20
[[users]]
name = "postgres"
auth = "trust"
[[shards]]
name = "main"
primary = "postgres://postgres@127.0.0.1:$PG_PORT/bench"
$REPLICAS
TOML
RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.out" \
    "$SW" serve --config "$WORK/shardwire.toml" 2>"$WORK/shardwire.log" &
VG_PID=$!   # valgrind runs the program in its own process: this is the pid callgrind_control wants
for i in $(seq 120); do
    kill -0 "$VG_PID" 2>/dev/null || { echo "shardwire exited:" >&2; tail -20 "$WORK/shardwire.log" >&2; exit 1; }
    "$BIN/psql" -h 127.0.0.1 -p "$SW_PORT" -U postgres -d bench -Atqc 'select 1' >/dev/null 2>&1 && break
    [ "$i" = 120 ] && { echo "shardwire did not accept connections within 60 s" >&2; exit 1; }
    sleep 0.5
done

if [ "$REPLICA" = 1 ]; then
    for i in $(seq 60); do
        [ "$("$BIN/psql" -h 127.0.0.1 -p "$SW_PORT" -U postgres -d bench -Atqc 'select pg_is_in_recovery()')" = t ] && break
        [ "$i" = 60 ] && { echo "reads never reached the replica" >&2; exit 1; }
        sleep 0.5
    done
fi

pgb() { timeout 900 "$BIN/pgbench" -h 127.0.0.1 -p "$SW_PORT" -U postgres -n -S "$@" bench 2>&1; }
# The total Ir of a dump: its `totals:` line (or `summary:`, the same count, in the header).
total_ir() { awk '/^totals:/ {t=$2} /^summary:/ {s=$2} END {print (t != "" ? t : s)}' "$1"; }
n=$(( CLIENTS * TX ))
for mode in $MODES; do
    pgb -M "$mode" -c "$CLIENTS" -t 250 >/dev/null
    timeout 120 callgrind_control -z "$VG_PID" >/dev/null
    out=$(pgb -M "$mode" -c "$CLIENTS" -j 2 -t "$TX")
    done_tx=$(echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')
    failed=$(echo "$out" | sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p')
    before=$(ls "$WORK"/cg.out* 2>/dev/null | wc -l)
    timeout 120 callgrind_control -d "$VG_PID" >/dev/null
    for _ in $(seq 100); do [ "$(ls "$WORK"/cg.out* 2>/dev/null | wc -l)" -gt "$before" ] && break; sleep 0.2; done
    dump=$(ls -t "$WORK"/cg.out* | head -1)
    ir=$(total_ir "$dump")
    [ "${done_tx:-0}" = "$n" ] || echo "warning: $mode: $done_tx of $n transactions processed, ${failed:-?} failed" >&2
    echo "$mode: $(python3 -c "print(round($ir / $n))") instructions per transaction" \
        "(Ir $ir over $n transactions, $(basename "$dump"))"
done
