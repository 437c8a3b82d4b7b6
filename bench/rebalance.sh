#!/usr/bin/env bash
# A partition move under write load, measured: two PostgreSQL servers (logical replication
# needs two: a subscription to its own server cannot make its slot), shardwire in front with a
# 16-partition map whose partitions are all on s0, ROWS rows of users (about 1/16 per
# partition), pgbench updating random users through shardwire (simple protocol) while
# `shardwire rebalance move` takes partitions 0..MOVES-1 to s1, one after another.
# Reported per move: rows, copy time and rate (rows/s, MB/s of the partition's heap), lag at
# catch-up, the hold (statements on the partition waiting), and from pgbench's per-transaction
# log the longest statement and p99 over the whole run (the pause clients saw).
#
#   bench/rebalance.sh [rows] [moves] [clients]          (defaults: 1000000, 2, 8)
# Loopback only; the servers and folders go away at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-1000000}
MOVES=${2:-2}
CLIENTS=${3:-8}
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
cargo build --release --quiet
SW=$PWD/target/release/shardwire

WORK=$(mktemp -d /tmp/shardwire-rbbench.XXXXXX)
chmod 755 "$WORK"
AS=()
if [ "$(id -u)" = 0 ]; then chown postgres: "$WORK"; AS=(runuser -u postgres --); fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
P0=$(free_port); P1=$(free_port); SW_PORT=$(free_port)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for s in 0 1; do "${AS[@]}" "$BIN/pg_ctl" -D "$WORK/pg$s" -m immediate stop >/dev/null 2>&1 || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap "exit 130" INT TERM

for s in 0 1; do
    port=$P0; [ $s = 1 ] && port=$P1
    "${AS[@]}" "$BIN/initdb" -D "$WORK/pg$s" -U postgres --auth=trust --no-sync --locale=C >/dev/null
    "${AS[@]}" "$BIN/pg_ctl" -D "$WORK/pg$s" -l "$WORK/pg$s.log" -w \
        -o "-p $port -k $WORK -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off -c shared_buffers=128MB \
            -c wal_level=logical -c max_replication_slots=10 -c max_wal_senders=10 -c wal_retrieve_retry_interval=200ms" start >/dev/null
    "${AS[@]}" "$BIN/psql" -X -q -h 127.0.0.1 -p "$port" -U postgres -c "CREATE DATABASE app"
done
psql0() { "$BIN/psql" -X -q -h 127.0.0.1 -p "$P0" -U postgres -d app "$@"; }
psql1() { "$BIN/psql" -X -q -h 127.0.0.1 -p "$P1" -U postgres -d app "$@"; }
psql0 -c "CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL, score int NOT NULL, filler text)" \
      -c "INSERT INTO users SELECT g, 'user ' || g, 0, repeat('x', 80) FROM generate_series(1, $ROWS) g" \
      -c "VACUUM ANALYZE users"

cat > "$WORK/map.toml" <<TOML
version = 1
shards = ["s0", "s1"]
default_shard = "s0"
[groups.users]
key_type = "bigint"
partitioning = { kind = "hash", partitions = 16 }
assignment = { s0 = "0-15" }
[tables.users]
group = "users"
key = "id"
TOML
cat > "$WORK/sw.toml" <<TOML
[server]
listen = "127.0.0.1:$SW_PORT"
[pool]
max_size = 20
[[users]]
name = "postgres"
auth = "trust"
[[users]]
name = "admin"
password = "admin"
admin = true
[sharding]
map = "map.toml"
[[shards]]
name = "s0"
primary = "postgres://postgres@127.0.0.1:$P0/app"
[[shards]]
name = "s1"
primary = "postgres://postgres@127.0.0.1:$P1/app"
TOML
RUST_LOG=warn "$SW" serve --config "$WORK/sw.toml" 2>"$WORK/sw.log" & PIDS+=($!)
sleep 1
ADMIN="postgres://admin:admin@127.0.0.1:$SW_PORT/shardwire"

printf '\\set id random(1, %s)\nUPDATE users SET score = score + 1 WHERE id = :id;\n' "$ROWS" > "$WORK/update.sql"
# Long enough for the moves; stopped when they are done.
"$BIN/pgbench" -h 127.0.0.1 -p "$SW_PORT" -U postgres -n -f "$WORK/update.sql" -M simple \
    -c "$CLIENTS" -j 2 -T 3600 -l --log-prefix="$WORK/tx" app >"$WORK/pgbench.out" 2>&1 & BENCH=$!
PIDS+=("$BENCH")
sleep 3
HEAP=$(psql0 -At -c "SELECT pg_relation_size('users')")
printf '%-9s %8s %9s %10s %8s %9s %8s\n' partition rows copy_s rows/s MB/s lag_ms hold_ms
for p in $(seq 0 $((MOVES - 1))); do
    t0=$(date +%s.%N)
    out=$(NO_COLOR=1 RUST_LOG=info "$SW" rebalance move --config "$WORK/sw.toml" --admin "$ADMIN" --group users --partition "$p" --to s1 2>&1 \
        | sed 's/\x1b\[[0-9;]*m//g')
    t1=$(date +%s.%N)
    echo "$out" >>"$WORK/moves.log"
    # Copy: from the step `syncing` to `caught_up` (the copy plus catching up with the writes).
    syncing=$(echo "$out" | grep 'step="syncing"' | head -1 | cut -c1-27)
    caught=$(echo "$out" | grep 'step="caught_up"' | head -1 | cut -c1-27)
    copy_s=$(python3 -c "import datetime as d,sys; f=lambda s: d.datetime.fromisoformat(s.replace('Z','+00:00')); print(round((f('$caught')-f('$syncing')).total_seconds(),2))")
    read -r rows lag <<<"$(psql1 -At -F ' ' -c "SELECT rows_total, lag_ms FROM shardwire_moves WHERE partition = $p")"
    hold=$(echo "$out" | sed -n 's/.*held \([0-9]*\) ms.*/\1/p')
    python3 -c "
rows, s, heap = $rows, $copy_s, $HEAP
print('%-9s %8d %9.2f %10.0f %8.1f %9s %8s' % ($p, rows, s, rows / s, heap / 16 / s / 1e6, '$lag', '$hold'))"
done
# Catch-up rate: one more move, paused once caught up (the tool's test hook), then one
# transaction straight on s0 adding 1000 to every row of that partition; the time until the
# target has applied it is the rate the subscription works off a backlog at (while pgbench goes
# on). Then the paused tool is killed and the move resumed to its end.
p=$MOVES
SHARDWIRE_MOVE_PAUSE_AT=caught_up RUST_LOG=warn "$SW" rebalance move --config "$WORK/sw.toml" --admin "$ADMIN" \
    --group users --partition "$p" --to s1 >"$WORK/paused.log" 2>&1 & PAUSED=$!
PIDS+=("$PAUSED")
disown "$PAUSED"
for _ in $(seq 1 1200); do grep -q "paused at caught_up" "$WORK/paused.log" && break; sleep 0.1; done
F="((((hashint8extended(id::int8, 8816678312871386365)) % 16 + 16) % 16 + 3) % 16 = $p)"
t0=$(date +%s.%N)
n=$(psql0 -At -c "WITH u AS (UPDATE users SET score = score + 1000 WHERE $F RETURNING 1) SELECT count(*) FROM u")
t1=$(date +%s.%N)
until [ "$(psql1 -At -c "SELECT count(*) FROM users WHERE $F AND score < 1000")" = 0 ]; do sleep 0.02; done
t2=$(date +%s.%N)
python3 -c "n, a, b, c = $n, $t0, $t1, $t2; print('catch-up: %d row updates in one transaction (%.2f s on the source) applied on the target %.2f s after its commit: %.0f rows/s' % (n, b - a, c - b, n / (c - b)))"
kill -9 "$PAUSED" 2>/dev/null || true
out=$(NO_COLOR=1 RUST_LOG=warn "$SW" rebalance move --config "$WORK/sw.toml" --admin "$ADMIN" --group users --partition "$p" --to s1 2>&1)
echo "resumed after SIGKILL: ${out##*$'\n'}"
sleep 2
kill -TERM "$BENCH" 2>/dev/null || true
wait "$BENCH" 2>/dev/null || true
# pgbench's log: client, tx, latency (us), script, epoch s, epoch us.
cat "$WORK"/tx.* | python3 -c "
import sys
# The last lines may be cut short by the stop.
lat = sorted(int(f[2]) for f in (l.split() for l in sys.stdin) if len(f) >= 6)
n = len(lat)
print('client transactions: %d, p50 %.1f ms, p99 %.1f ms, p100 %.1f ms' % (n, lat[n//2]/1000, lat[int(n*0.99)]/1000, lat[-1]/1000))"
grep -E '^(number of failed|tps)' "$WORK/pgbench.out" || true
echo "errors in pgbench output: $(grep -ciE 'error|abort' "$WORK/pgbench.out" || true)"
