#!/usr/bin/env bash
# The MySQL front end against MariaDB direct, in one run, alternating targets:
#   sysbench oltp_point_select (one SELECT by primary key per transaction) and oltp_read_only
#   (BEGIN, 14 reads, COMMIT), prepared statements on (--db-ps-mode=auto) and off (disable),
#   at $THREADS client threads, against MariaDB direct and shardwire in front of it (one shard,
#   no replica: every statement on the same server both ways).
# Medians of throughput, latency and shardwire's CPU microseconds per transaction (utime+stime
# from /proc; MariaDB's CPU is not counted). Everything listens on 127.0.0.1.
#
#   bench/mysql.sh [seconds-per-run] [rounds]        (defaults: 5 s, 3 rounds)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
ROUNDS=${2:-3}
THREADS=${THREADS:-16}
cargo build --release --quiet
SW=$PWD/target/release/shardwire

WORK=$(mktemp -d /tmp/shardwire-mybench.XXXXXX)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
DB_PORT=$(free_port); SW_PORT=$(free_port)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 0.5
    rm -rf "$WORK"
}
trap cleanup EXIT
trap "exit 130" INT TERM

ROOT=(); [ "$(id -u)" = 0 ] && ROOT=(--user=root)
mariadb-install-db --no-defaults --datadir="$WORK/db" --auth-root-authentication-method=normal --skip-test-db "${ROOT[@]}" >/dev/null
mariadbd --no-defaults --datadir="$WORK/db" --socket="$WORK/db.sock" --port="$DB_PORT" --bind-address=127.0.0.1 \
    --skip-name-resolve --innodb-buffer-pool-size=128M --innodb-flush-log-at-trx-commit=0 --max-connections=300 \
    --log-error="$WORK/db.log" "${ROOT[@]}" >/dev/null 2>&1 & PIDS+=($!)
for _ in $(seq 100); do mariadb --no-defaults --socket="$WORK/db.sock" -uroot -e 'SELECT 1' >/dev/null 2>&1 && break; sleep 0.1; done
mariadb --no-defaults --socket="$WORK/db.sock" -uroot -e "CREATE DATABASE app; CREATE USER 'app'@'127.0.0.1' IDENTIFIED BY 'app'; GRANT ALL ON *.* TO 'app'@'127.0.0.1'"

cat > "$WORK/shardwire.toml" <<TOML
[server]
listen = "127.0.0.1:0"
mysql_listen = "127.0.0.1:$SW_PORT"
workers = 1
[pool]
max_size = 20
[[users]]
name = "app"
password = "app"
[[shards]]
name = "main"
primary = "mysql://app:app@127.0.0.1:$DB_PORT/app"
TOML
RUST_LOG=warn "$SW" serve --config "$WORK/shardwire.toml" 2>"$WORK/shardwire.log" & PIDS+=($!)
SW_PID=$!
sleep 1
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
sb() {
    sysbench "$1" --db-driver=mysql --mysql-host=127.0.0.1 --mysql-port="$2" --mysql-user=app --mysql-password=app \
        --mysql-db=app --tables=4 --table-size=20000 --threads="$THREADS" "${@:3}"
}
sb oltp_read_only "$DB_PORT" prepare >/dev/null

RESULTS=$WORK/results.tsv
echo -e "test\tps\ttarget\tround\ttps\tlatency_ms\tcpu_us_per_tx" > "$RESULTS"
HZ=$(getconf CLK_TCK)
for round in $(seq 1 "$ROUNDS"); do
    for test in oltp_point_select oltp_read_only; do
        for ps in auto disable; do
            for target in direct shardwire; do
                port=$DB_PORT; [ "$target" = shardwire ] && port=$SW_PORT
                before=$(cpu_ticks "$SW_PID")
                out=$(sb "$test" "$port" run --time="$SECS" --db-ps-mode="$ps" --report-interval=0)
                after=$(cpu_ticks "$SW_PID")
                tps=$(echo "$out" | awk '/transactions:/ {gsub(/[()]/,"",$3); print $3}')
                tx=$(echo "$out" | awk '/transactions:/ {print $2}')
                lat=$(echo "$out" | awk '/avg:/ {print $2; exit}')
                cpu=$(awk -v d=$((after - before)) -v hz="$HZ" -v tx="$tx" 'BEGIN { printf "%.1f", d * 1e6 / hz / tx }')
                [ "$target" = direct ] && cpu=0
                echo -e "$test\t$ps\t$target\t$round\t$tps\t$lat\t$cpu" >> "$RESULTS"
                echo -e "$test\t$ps\t$target\t$round\t$tps tps\t$lat ms\t$cpu us/tx" >&2
            done
        done
    done
done
python3 - "$RESULTS" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
keys = sorted({(r["test"], r["ps"]) for r in rows})
print("| test | prepared | target | tps (median) | latency ms | vs direct | proxy CPU µs/tx |")
print("|---|---|---|---|---|---|---|")
for test, ps in keys:
    med = {}
    for target in ("direct", "shardwire"):
        rs = [r for r in rows if (r["test"], r["ps"], r["target"]) == (test, ps, target)]
        med[target] = (
            statistics.median(float(r["tps"]) for r in rs),
            statistics.median(float(r["latency_ms"]) for r in rs),
            statistics.median(float(r["cpu_us_per_tx"]) for r in rs),
        )
    ratios = [
        float(s["tps"]) / float(d["tps"])
        for d in rows for s in rows
        if (d["test"], d["ps"], d["target"]) == (test, ps, "direct")
        and (s["test"], s["ps"], s["target"], s["round"]) == (test, ps, "shardwire", d["round"])
    ]
    for target in ("direct", "shardwire"):
        tps, lat, cpu = med[target]
        ratio = "1.00" if target == "direct" else f"**{statistics.median(ratios):.2f}**"
        cpu_text = "" if target == "direct" else f"{cpu:.1f}"
        print(f"| {test} | {ps} | {target} | {tps:.0f} | {lat:.2f} | {ratio} | {cpu_text} |")
PY
