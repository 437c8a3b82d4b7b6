#!/usr/bin/env bash
# Sharding overhead, in one run, alternating targets:
#   point:   SELECT by primary key. PostgreSQL direct (one unsharded database), shardwire in front
#            of that database (no shard map), and shardwire over 4 shards (hash map, 64 partitions)
#            where each statement is routed to its shard.
#   scatter: SELECT ... WHERE aid > :aid ORDER BY aid LIMIT 10 over the 4 shards (merged), against
#            the same query on the unsharded database direct.
#   runfirst: SELECT count(*) ... WHERE aid IN (SELECT aid ... ORDER BY abalance, aid LIMIT 5): a
#            subquery the shards cannot answer alone (its LIMIT), run first as a merged read of
#            its own, its five keys then put into the statement as an IN list (routed by key);
#            against the same query on the unsharded database direct.
#   tx:      BEGIN; two UPDATEs by key; COMMIT. tx-one: both rows on one shard (plain COMMIT);
#            tx-two: the rows on two shards (the transaction joins the second shard; COMMIT is
#            two-phase with the decision record); direct-tx: the same on the unsharded database.
# pgbench custom scripts at 16 clients in the simple protocol (literals differ per statement, so
# every one is parsed) and the extended protocol (same text: the shape cache answers). Medians of
# throughput, latency and shardwire's CPU microseconds per statement (utime+stime from /proc).
# The shards are four databases on one PostgreSQL server: on a 2-core machine separate servers
# would only add noise; the proxy's work is the same. Everything listens on 127.0.0.1.
#
#   bench/sharding.sh [seconds-per-run] [rounds]        (defaults: 5 s, 3 rounds)
#   BASE_BIN=path/to/older/shardwire adds a second sharded proxy from that binary, measured as
#   the targets base-point and base-scatter in the same rounds (a change's effect, alternating).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
ROUNDS=${2:-3}
CLIENTS=${CLIENTS:-16}
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
cargo build --release --quiet
SW=$PWD/target/release/shardwire
ROWS=400000

WORK=$(mktemp -d /tmp/shardwire-shbench.XXXXXX)
chmod 755 "$WORK"
AS=()
if [ "$(id -u)" = 0 ]; then chown postgres: "$WORK"; AS=(runuser -u postgres --); fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PG_PORT=$(free_port); PLAIN_PORT=$(free_port); SHARD_PORT=$(free_port); BASE_PORT=$(free_port)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    "${AS[@]}" "$BIN/pg_ctl" -D "$WORK/pg" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap "exit 130" INT TERM

"${AS[@]}" "$BIN/initdb" -D "$WORK/pg" -U postgres --auth=trust --no-sync --locale=C >/dev/null
"${AS[@]}" "$BIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg.log" -w \
    -o "-p $PG_PORT -k $WORK -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off -c shared_buffers=128MB -c max_prepared_transactions=20" start >/dev/null
psql() { "$BIN/psql" -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres "$@"; }
TABLE="CREATE TABLE pgbench_accounts (aid bigint PRIMARY KEY, bid int, abalance int, filler char(84))"
EVENTS="CREATE TABLE bench_events (id bigint, v int)"
TXTABLE="CREATE TABLE bench_tx (id bigint PRIMARY KEY, v int)"
# The partition of a key as shardwire computes it (PostgreSQL's hash partitioning, modulus 64).
PART="((hashint8extended(aid, 8816678312871386365)::numeric + 5305509591434766563 + 18446744073709551616) % 18446744073709551616 % 64)"
psql -c "CREATE DATABASE plain"
psql -d plain -c "$TXTABLE" -c "INSERT INTO bench_tx SELECT g * 1000000 + i, 0 FROM generate_series(0, 3) g, generate_series(1, 10000) i"
psql -d plain -c "$TABLE" -c "INSERT INTO pgbench_accounts SELECT aid, 1, aid % 1000, '' FROM generate_series(1, $ROWS) aid" -c "VACUUM ANALYZE pgbench_accounts"
for s in 0 1 2 3; do
    psql -c "CREATE DATABASE s$s"
    psql -d "s$s" -c "$EVENTS"
    psql -d "s$s" -c "$TXTABLE" -c "INSERT INTO bench_tx SELECT $s * 1000000 + i, 0 FROM generate_series(1, 10000) i"
    psql -d "s$s" -c "$TABLE" \
        -c "INSERT INTO pgbench_accounts SELECT aid, 1, aid % 1000, '' FROM generate_series(1, $ROWS) aid WHERE $PART BETWEEN $((s * 16)) AND $((s * 16 + 15))" \
        -c "VACUUM ANALYZE pgbench_accounts"
done

cat > "$WORK/map.toml" <<TOML
version = 1
shards = ["s0", "s1", "s2", "s3"]
default_shard = "s0"
[groups.accounts]
key_type = "bigint"
partitioning = { kind = "hash", partitions = 64 }
assignment = { s0 = "0-15", s1 = "16-31", s2 = "32-47", s3 = "48-63" }
[tables.pgbench_accounts]
group = "accounts"
key = "aid"
[groups.tx]
key_type = "bigint"
partitioning = { kind = "range" }
ranges = [{ to = 1000000, shard = "s0" }, { from = 1000000, to = 2000000, shard = "s1" }, { from = 2000000, to = 3000000, shard = "s2" }, { from = 3000000, shard = "s3" }]
[tables.bench_tx]
group = "tx"
key = "id"
[tables.bench_events]
group = "accounts"
key = "id"
id_column = "id"
TOML
# SHARD_POOL: backend connections per shard in the sharded proxy (default 20, as the unsharded
# one); 4 gives both proxies the same total of 16 for 16 clients.
common() {
    cat <<TOML
[server]
listen = "127.0.0.1:$1"
database = "bench"
workers = 1
[pool]
max_size = ${2:-20}
[[users]]
name = "postgres"
auth = "trust"
TOML
}
{ common "$PLAIN_PORT"; printf '[[shards]]\nname = "main"\nprimary = "postgres://postgres@127.0.0.1:%s/plain"\n' "$PG_PORT"; } > "$WORK/plain.toml"
{ common "$SHARD_PORT" "${SHARD_POOL:-20}"; printf '[sharding]\nmap = "map.toml"\n[ids]\nworker_id = 1\n'; for s in 0 1 2 3; do
    printf '[[shards]]\nname = "s%s"\nprimary = "postgres://postgres@127.0.0.1:%s/s%s"\n' "$s" "$PG_PORT" "$s"; done; } > "$WORK/sharded.toml"
"$SW" check "$WORK/sharded.toml" >/dev/null
if [ -n "${BASE_BIN:-}" ]; then
    sed "s/127.0.0.1:$SHARD_PORT/127.0.0.1:$BASE_PORT/" "$WORK/sharded.toml" > "$WORK/base.toml"
    RUST_LOG=warn "$BASE_BIN" serve --config "$WORK/base.toml" 2>"$WORK/base.log" & PIDS+=($!)
fi
RUST_LOG=warn "$SW" serve --config "$WORK/plain.toml" 2>"$WORK/plain.log" & PIDS+=($!)
RUST_LOG=warn "$SW" serve --config "$WORK/sharded.toml" 2>"$WORK/sharded.log" & PIDS+=($!)
sleep 1
PLAIN_PID=$(pgrep -f "^$SW serve --config $WORK/plain.toml" | head -1)
SHARD_PID=$(pgrep -f "^$SW serve --config $WORK/sharded.toml" | head -1)
BASE_PID=""
[ -n "${BASE_BIN:-}" ] && BASE_PID=$(pgrep -f "^$BASE_BIN serve --config $WORK/base.toml" | head -1)
cpu_ticks() { [ -n "$1" ] && awk '{print $14+$15}' "/proc/$1/stat" || echo 0; }

printf '\\set aid random(1, %s)\nSELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n' "$ROWS" > "$WORK/point.sql"
printf '\\set aid random(1, %s)\nSELECT aid, abalance FROM pgbench_accounts WHERE aid > :aid ORDER BY aid LIMIT 10;\n' "$ROWS" > "$WORK/scatter.sql"
printf '\\set aid random(1, %s)\nSELECT count(*) FROM pgbench_accounts WHERE aid IN (SELECT aid FROM pgbench_accounts WHERE aid BETWEEN :aid AND :aid + 19 ORDER BY abalance, aid LIMIT 5);\n' "$((ROWS - 20))" > "$WORK/runfirst.sql"
# Two rows per transaction, the lower id first (so no two transactions wait on each other).
printf '\\set a random(1, 5000)\n\\set b :a + 5000\nBEGIN;\nUPDATE bench_tx SET v = v + 1 WHERE id = :a;\nUPDATE bench_tx SET v = v - 1 WHERE id = :b;\nCOMMIT;\n' > "$WORK/tx-one.sql"
printf '\\set a random(1, 10000)\n\\set b :a + 1000000\nBEGIN;\nUPDATE bench_tx SET v = v + 1 WHERE id = :a;\nUPDATE bench_tx SET v = v - 1 WHERE id = :b;\nCOMMIT;\n' > "$WORK/tx-two.sql"
# INSERT with the ID given by the client vs left out (shardwire generates it, then routes).
printf '\\set id random(1, 1000000000)\nINSERT INTO bench_events (id, v) VALUES (:id, 1);\n' > "$WORK/insert-given.sql"
printf 'INSERT INTO bench_events (v) VALUES (1);\n' > "$WORK/insert-filled.sql"

# PROFILE=1: record both proxies with perf during one simple-protocol run each of the point
# script (PROFILE=scatter, PROFILE=runfirst: that script, on the sharded proxy only), then stop.
if [ -n "${PROFILE:-}" ]; then
    script=point; targets="plain:$PLAIN_PORT:$PLAIN_PID sharded:$SHARD_PORT:$SHARD_PID"
    if [ "$PROFILE" != 1 ]; then script=$PROFILE; targets="sharded:$SHARD_PORT:$SHARD_PID"; fi
    for t in $targets; do
        IFS=: read -r name port pid <<<"$t"
        perf record -F 2000 -g -p "$pid" -o "/tmp/shardwire-$name.perf" -- sleep "$SECS" >/dev/null 2>&1 &
        perf_pid=$!
        "$BIN/pgbench" -h 127.0.0.1 -p "$port" -U postgres -n -f "$WORK/$script.sql" -M simple -c "$CLIENTS" -j 2 -T "$SECS" bench 2>&1 | grep '^tps'
        wait "$perf_pid" || true
        echo "perf data: /tmp/shardwire-$name.perf" >&2
    done
    exit 0
fi
RESULTS=$WORK/results.tsv
echo -e "target\tmode\tclients\tround\ttps\tlatency_ms\tcpu_us_per_tx" > "$RESULTS"
for round in $(seq 1 "$ROUNDS"); do
    for mode in simple extended; do
        for target in ${TARGETS:-direct-point plain-point sharded-point direct-scatter sharded-scatter direct-runfirst sharded-runfirst insert-given insert-filled direct-tx tx-one tx-two}; do
            case $target in
                direct-point) port=$PG_PORT; db=plain; pid=""; script=point ;;
                plain-point) port=$PLAIN_PORT; db=bench; pid=$PLAIN_PID; script=point ;;
                sharded-point) port=$SHARD_PORT; db=bench; pid=$SHARD_PID; script=point ;;
                direct-scatter) port=$PG_PORT; db=plain; pid=""; script=scatter ;;
                sharded-scatter) port=$SHARD_PORT; db=bench; pid=$SHARD_PID; script=scatter ;;
                direct-runfirst) port=$PG_PORT; db=plain; pid=""; script=runfirst ;;
                sharded-runfirst) port=$SHARD_PORT; db=bench; pid=$SHARD_PID; script=runfirst ;;
                base-point) port=$BASE_PORT; db=bench; pid=$BASE_PID; script=point ;;
                base-scatter) port=$BASE_PORT; db=bench; pid=$BASE_PID; script=scatter ;;
                insert-given) port=$SHARD_PORT; db=bench; pid=$SHARD_PID; script=insert-given ;;
                insert-filled) port=$SHARD_PORT; db=bench; pid=$SHARD_PID; script=insert-filled ;;
                direct-tx) port=$PG_PORT; db=plain; pid=""; script=tx-two ;;
                tx-one) port=$SHARD_PORT; db=bench; pid=$SHARD_PID; script=tx-one ;;
                tx-two) port=$SHARD_PORT; db=bench; pid=$SHARD_PID; script=tx-two ;;
            esac
            before=$(cpu_ticks "$pid")
            out=$("$BIN/pgbench" -h 127.0.0.1 -p "$port" -U postgres -n -f "$WORK/$script.sql" -M "$mode" -c "$CLIENTS" -j 2 -T "$SECS" "$db" 2>&1)
            after=$(cpu_ticks "$pid")
            tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
            lat=$(echo "$out" | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p')
            txs=$(echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')
            cpu=$(python3 -c "import os; t=$after-$before; n=${txs:-0}; print(round(t*1e6/os.sysconf('SC_CLK_TCK')/n,1) if n and '$pid' else '')")
            echo -e "$target\t$mode\t$CLIENTS\t$round\t$tps\t$lat\t$cpu" >> "$RESULTS"
            echo "round $round $mode $target: tps=$tps lat=${lat}ms cpu/stmt=${cpu}us" >&2
        done
    done
done
python3 - "$RESULTS" <<'PY'
import csv, statistics, sys
from collections import defaultdict
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
g = defaultdict(list)
for r in rows:
    g[(r["mode"], r["target"])].append(r)
def med(rs, k):
    v = [float(r[k]) for r in rs if r[k]]
    return statistics.median(v) if v else None
print("| protocol | target | tps (median) | latency ms | proxy CPU µs/stmt |")
print("|---|---|---|---|---|")
for mode in ["simple", "extended"]:
    for t in ["direct-point", "plain-point", "base-point", "sharded-point", "direct-scatter", "base-scatter", "sharded-scatter", "direct-runfirst", "sharded-runfirst", "insert-given", "insert-filled", "direct-tx", "tx-one", "tx-two"]:
        rs = g[(mode, t)]
        if not rs:
            continue
        tps, lat, cpu = med(rs, "tps"), med(rs, "latency_ms"), med(rs, "cpu_us_per_tx")
        print(f"| {mode} | {t} | {tps:.0f} | {lat:.3f} | {'' if cpu is None else f'{cpu:.1f}'} |")
    p, s = med(g[(mode, "plain-point")], "cpu_us_per_tx"), med(g[(mode, "sharded-point")], "cpu_us_per_tx")
    if p and s:
        print(f"\n{mode}: single-shard routing CPU per statement vs the unsharded proxy path: {s / p:.2f}x")
    b, n = med(g[(mode, "base-scatter")], "cpu_us_per_tx"), med(g[(mode, "sharded-scatter")], "cpu_us_per_tx")
    if b and n:
        print(f"{mode}: scatter CPU per statement, BASE_BIN vs this build: {b:.1f} vs {n:.1f} µs ({b / n:.2f}x lower)")
    b, n = med(g[(mode, "base-point")], "cpu_us_per_tx"), med(g[(mode, "sharded-point")], "cpu_us_per_tx")
    if b and n:
        print(f"{mode}: routed point CPU per statement, BASE_BIN vs this build: {b:.1f} vs {n:.1f} µs ({n / b:.2f}x)")
    gv, fl = med(g[(mode, "insert-given")], "cpu_us_per_tx"), med(g[(mode, "insert-filled")], "cpu_us_per_tx")
    if gv and fl:
        print(f"{mode}: INSERT with a generated ID vs the ID given: {fl:.1f} vs {gv:.1f} µs proxy CPU per statement ({fl / gv:.2f}x)\n")
    one, two = g[(mode, "tx-one")], g[(mode, "tx-two")]
    if one and two:
        print(f"{mode}: two-shard vs one-shard transaction: {med(two, 'tps') / med(one, 'tps'):.2f}x throughput, "
              f"{med(two, 'latency_ms'):.2f} vs {med(one, 'latency_ms'):.2f} ms, "
              f"{med(two, 'cpu_us_per_tx'):.1f} vs {med(one, 'cpu_us_per_tx'):.1f} µs proxy CPU per transaction\n")
PY
