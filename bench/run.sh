#!/usr/bin/env bash
# Compares PostgreSQL direct, PgBouncer and shardwire in one run, alternating, with pgbench -S
# (select-only) at 1, 16 and 64 clients in the simple and extended protocol, the targets' order
# turning each round. Reports median throughput and latency per target, the proxies' CPU
# microseconds per transaction (utime+stime from /proc), and shardwire/PgBouncer per round.
# All servers listen on 127.0.0.1 and are stopped at the end.
#
#   bench/run.sh [seconds-per-run] [rounds]        (defaults: 5 s, 3 rounds)
#   CLIENTS="16" MODES="extended" TARGETS="pgbouncer shardwire" narrow the matrix.
#
# Needs: the PostgreSQL server packages (initdb, pgbench), pgbouncer, python3, cargo.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
ROUNDS=${2:-3}
CLIENTS=${CLIENTS:-"1 16 64"}
MODES=${MODES:-"simple extended"}
TARGETS=${TARGETS:-"direct pgbouncer shardwire"}
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
PGBOUNCER=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
cargo build --release --quiet
SW=$PWD/target/release/shardwire

WORK=$(mktemp -d /tmp/shardwire-bench.XXXXXX)
chmod 755 "$WORK"
AS=()
if [ "$(id -u)" = 0 ]; then chown postgres: "$WORK"; AS=(runuser -u postgres --); fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PG_PORT=$(free_port); BOUNCER_PORT=$(free_port); SW_PORT=$(free_port)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    "${AS[@]}" "$BIN/pg_ctl" -D "$WORK/pg" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap "exit 130" INT TERM

"${AS[@]}" "$BIN/initdb" -D "$WORK/pg" -U postgres --auth=trust --no-sync >/dev/null
"${AS[@]}" "$BIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg.log" -w \
    -o "-p $PG_PORT -k $WORK -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off -c shared_buffers=128MB" start >/dev/null
"$BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres bench
"$BIN/pgbench" -h 127.0.0.1 -p "$PG_PORT" -U postgres -i -s 10 -q bench >/dev/null 2>&1

cat > "$WORK/pgbouncer.ini" <<INI
[databases]
bench = host=127.0.0.1 port=$PG_PORT dbname=bench user=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = trust
auth_file = $WORK/userlist.txt
pool_mode = transaction
default_pool_size = 20
max_client_conn = 2000
logfile = $WORK/pgbouncer.log
INI
echo '"postgres" ""' > "$WORK/userlist.txt"
[ "$(id -u)" = 0 ] && chown postgres: "$WORK"/pgbouncer.ini "$WORK"/userlist.txt
# The postgres user's default of 1024 descriptors would cap PgBouncer below 1000 clients.
"${AS[@]}" bash -c "ulimit -n 8192 2>/dev/null || ulimit -n \$(ulimit -Hn); exec $PGBOUNCER $WORK/pgbouncer.ini" >/dev/null 2>&1 &
PIDS+=($!)
cat > "$WORK/shardwire.toml" <<TOML
[server]
listen = "127.0.0.1:$SW_PORT"
database = "bench"
max_client_connections = 2000
[pool]
max_size = 20
[[users]]
name = "postgres"
auth = "trust"
[[shards]]
name = "main"
primary = "postgres://postgres@127.0.0.1:$PG_PORT/bench"
TOML
RUST_LOG=warn "$SW" serve --config "$WORK/shardwire.toml" 2>"$WORK/shardwire.log" &
PIDS+=($!)
sleep 1
BOUNCER_PID=$(pgrep -f "^$PGBOUNCER $WORK/pgbouncer.ini" | head -1)
SW_PID=$(pgrep -f "^$SW serve --config $WORK/shardwire.toml" | head -1)
cpu_ticks() { [ -n "$1" ] && awk '{print $14+$15}' "/proc/$1/stat" || echo 0; }

RESULTS=$WORK/results.tsv
echo -e "target\tmode\tclients\tround\ttps\tlatency_ms\tcpu_us_per_tx" > "$RESULTS"
for round in $(seq 1 "$ROUNDS"); do
    for mode in $MODES; do
        for c in $CLIENTS; do
            j=$(( c < 2 ? 1 : 2 ))
            # The order turns each round, so neither proxy always runs right after the other.
            read -ra order <<< "$TARGETS"
            k=$(( (round - 1) % ${#order[@]} ))
            for target in "${order[@]:k}" "${order[@]:0:k}"; do
                case $target in
                    direct) port=$PG_PORT; pid="" ;;
                    pgbouncer) port=$BOUNCER_PORT; pid=$BOUNCER_PID ;;
                    shardwire) port=$SW_PORT; pid=$SW_PID ;;
                esac
                before=$(cpu_ticks "$pid")
                out=$("$BIN/pgbench" -h 127.0.0.1 -p "$port" -U postgres -n -S -M "$mode" -c "$c" -j "$j" -T "$SECS" bench 2>&1)
                after=$(cpu_ticks "$pid")
                tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
                lat=$(echo "$out" | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p')
                txs=$(echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')
                cpu=$(python3 -c "import os; t=$after-$before; n=${txs:-0}; print(round(t*1e6/os.sysconf('SC_CLK_TCK')/n,1) if n and '$pid' else '')")
                echo -e "$target\t$mode\t$c\t$round\t$tps\t$lat\t$cpu" >> "$RESULTS"
                echo "round $round $mode c=$c $target: tps=$tps lat=${lat}ms cpu/tx=${cpu}us" >&2
            done
        done
    done
done
python3 bench/summarize.py "$RESULTS"
echo
echo "idle clients:"
python3 bench/idle_clients.py "$SW_PORT" "$SW_PID" postgres bench 1000
python3 bench/idle_clients.py "$BOUNCER_PORT" "$BOUNCER_PID" postgres bench 1000
