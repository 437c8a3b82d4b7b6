#!/usr/bin/env bash
# What read-your-writes costs: a primary with one streaming replica, two shardwire instances in
# front of it (read_your_writes on, the default, and off), pgbench TPC-B (every transaction
# writes, then the next one's reads wait for or avoid a lagging replica) and -S (no writes), 16
# clients, alternating the instances each round. Reports median tps, latency and proxy CPU per
# transaction per instance, and the on/off ratio per round. All servers on 127.0.0.1.
#
#   bench/ryw.sh [seconds-per-run] [rounds]        (defaults: 5 s, 5 rounds)
#
# Needs: the PostgreSQL server packages (initdb, pg_basebackup, pgbench), python3, cargo.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
ROUNDS=${2:-5}
CLIENTS=${CLIENTS:-16}
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
cargo build --release --quiet
SW=$PWD/target/release/shardwire

WORK=$(mktemp -d /tmp/shardwire-ryw.XXXXXX)
chmod 755 "$WORK"
AS=()
if [ "$(id -u)" = 0 ]; then chown postgres: "$WORK"; AS=(runuser -u postgres --); fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PG_PORT=$(free_port); REPLICA_PORT=$(free_port); ON_PORT=$(free_port); OFF_PORT=$(free_port)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    "${AS[@]}" "$BIN/pg_ctl" -D "$WORK/replica" -m immediate stop >/dev/null 2>&1 || true
    "${AS[@]}" "$BIN/pg_ctl" -D "$WORK/pg" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap "exit 130" INT TERM

OPTS="-c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off -c shared_buffers=128MB -c wal_level=replica -c max_wal_senders=5"
"${AS[@]}" "$BIN/initdb" -D "$WORK/pg" -U postgres --auth=trust --no-sync >/dev/null
echo "host replication all 127.0.0.1/32 trust" >> "$WORK/pg/pg_hba.conf"
"${AS[@]}" "$BIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg.log" -w -o "-p $PG_PORT -k $WORK $OPTS" start >/dev/null
"$BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres bench
"$BIN/pgbench" -h 127.0.0.1 -p "$PG_PORT" -U postgres -i -s 10 -q bench >/dev/null 2>&1
"${AS[@]}" "$BIN/pg_basebackup" -h 127.0.0.1 -p "$PG_PORT" -U postgres -D "$WORK/replica" -R -X stream >/dev/null
"${AS[@]}" "$BIN/pg_ctl" -D "$WORK/replica" -l "$WORK/replica.log" -w -o "-p $REPLICA_PORT -k $WORK $OPTS -c hot_standby=on" start >/dev/null

for which in on off; do
    port=$ON_PORT; ryw=true
    [ "$which" = off ] && { port=$OFF_PORT; ryw=false; }
    cat > "$WORK/shardwire-$which.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
database = "bench"
[pool]
max_size = 20
[routing]
read_your_writes = $ryw
[[users]]
name = "postgres"
auth = "trust"
[[shards]]
name = "main"
primary = "postgres://postgres@127.0.0.1:$PG_PORT/bench"
replicas = ["postgres://postgres@127.0.0.1:$REPLICA_PORT/bench"]
TOML
    RUST_LOG=warn "$SW" serve --config "$WORK/shardwire-$which.toml" 2>"$WORK/shardwire-$which.log" &
    PIDS+=($!)
done
sleep 2
ON_PID=$(pgrep -f "^$SW serve --config $WORK/shardwire-on.toml" | head -1)
OFF_PID=$(pgrep -f "^$SW serve --config $WORK/shardwire-off.toml" | head -1)
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }

RESULTS=$WORK/results.tsv
echo -e "workload\ttarget\tround\ttps\tlatency_ms\tcpu_us_per_tx" > "$RESULTS"
for round in $(seq 1 "$ROUNDS"); do
    for workload in tpcb select-only; do
        flag=""; [ "$workload" = select-only ] && flag="-S"
        order="on off"; [ $((round % 2)) = 0 ] && order="off on"
        for target in $order; do
            port=$ON_PORT; pid=$ON_PID
            [ "$target" = off ] && { port=$OFF_PORT; pid=$OFF_PID; }
            before=$(cpu_ticks "$pid")
            out=$("$BIN/pgbench" -h 127.0.0.1 -p "$port" -U postgres -n $flag -M extended -c "$CLIENTS" -j 2 -T "$SECS" bench 2>&1)
            after=$(cpu_ticks "$pid")
            tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
            lat=$(echo "$out" | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p')
            txs=$(echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')
            cpu=$(python3 -c "import os; t=$after-$before; n=${txs:-0}; print(round(t*1e6/os.sysconf('SC_CLK_TCK')/n,1) if n else '')")
            echo -e "$workload\t$target\t$round\t$tps\t$lat\t$cpu" >> "$RESULTS"
            echo "round $round $workload ryw=$target: tps=$tps lat=${lat}ms cpu/tx=${cpu}us" >&2
        done
    done
done
python3 - "$RESULTS" <<'PY'
import csv, statistics, sys
from collections import defaultdict
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
g = defaultdict(list)
for r in rows:
    g[(r["workload"], r["target"])].append(r)
med = lambda rs, k: statistics.median(float(r[k]) for r in rs if r[k])
print("| workload | read_your_writes | tps (median) | latency ms | proxy CPU µs/tx |")
print("|---|---|---|---|---|")
for (w, t), rs in sorted(g.items()):
    print(f"| {w} | {t} | {med(rs, 'tps'):.0f} | {med(rs, 'latency_ms'):.3f} | {med(rs, 'cpu_us_per_tx'):.1f} |")
print()
print("| workload | on/off tps per round | median |")
print("|---|---|---|")
for w in sorted({w for w, _ in g}):
    on = {r["round"]: float(r["tps"]) for r in g[(w, "on")]}
    off = {r["round"]: float(r["tps"]) for r in g[(w, "off")]}
    ratios = [on[k] / off[k] for k in sorted(on) if k in off and off[k]]
    print(f"| {w} | {' '.join(f'{x:.2f}' for x in ratios)} | {statistics.median(ratios):.2f} |")
PY
