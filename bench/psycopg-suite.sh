#!/usr/bin/env bash
# Runs psycopg 3's own test suite twice against one sandbox (`shardwire demo`: a PostgreSQL
# primary with a streaming replica, shardwire in front with its default configuration, i.e.
# transaction pooling and read/write splitting): directly on the primary, then through
# shardwire; prints the tests that fail only through shardwire. docs/drivers.md lists them with
# their reasons.
#
#   bench/psycopg-suite.sh PSYCOPG_CHECKOUT [extra pytest args]
#   e.g. bench/psycopg-suite.sh ~/src/psycopg -m "not slow"     (about 2 min instead of 30)
#
# PSYCOPG_CHECKOUT is a clone of https://github.com/psycopg/psycopg (the suite is not in the
# packages on PyPI). The driver under test is that checkout's pure-Python psycopg, installed with
# pytest, anyio, pproxy and pytest-timeout from PyPI into a virtualenv under the work folder.
# Skipped: tests/pool (psycopg_pool, another package), tests/crdb (CockroachDB) and
# tests/test_typing.py (mypy runs, no database). Needs python3 with venv, the PostgreSQL server
# packages and cargo.
set -euo pipefail
SRC=$(cd "${1:?usage: bench/psycopg-suite.sh PSYCOPG_CHECKOUT [pytest args]}" && pwd)
shift
cd "$(dirname "$0")/.."
cargo build --release --quiet
SW=$PWD/target/release/shardwire

WORK=$(mktemp -d /tmp/shardwire-psycopg.XXXXXX)
DEMO_PID=
cleanup() {
    # The demo stops its servers and removes its folder on SIGINT.
    if [ -n "$DEMO_PID" ]; then
        kill -INT "$DEMO_PID" 2>/dev/null || true
        wait "$DEMO_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap "exit 130" INT TERM

echo "installing the suite's requirements into $WORK/venv ..."
python3 -m venv "$WORK/venv"
# Not editable: the checkout's own folder named psycopg would shadow an editable install.
"$WORK/venv/bin/pip" install -q "$SRC/psycopg" pytest anyio pproxy pytest-timeout

"$SW" demo >"$WORK/demo.log" 2>&1 &
DEMO_PID=$!
for _ in $(seq 1 120); do
    grep -q "shardwire is up" "$WORK/demo.log" && break
    kill -0 "$DEMO_PID" 2>/dev/null || { cat "$WORK/demo.log"; exit 1; }
    sleep 1
done
PORT=$(grep -o 'app:app@127.0.0.1:[0-9]*' "$WORK/demo.log" | head -1 | cut -d: -f3)
CONFIG=$(grep -o 'Config: [^ ]*' "$WORK/demo.log" | cut -d' ' -f2)
PRIMARY_PORT=$(grep -o 'primary = "postgres://postgres@127.0.0.1:[0-9]*' "$CONFIG" | head -1 | grep -o '[0-9]*$')
[ -n "$PORT" ] && [ -n "$PRIMARY_PORT" ] || { cat "$WORK/demo.log"; exit 1; }
# Let the replica enter the read rotation before the first run.
sleep 2

run() {
    local name=$1 dsn=$2
    shift 2
    echo "== $name: $dsn"
    (cd "$SRC" && PSYCOPG_TEST_DSN="$dsn" timeout 3600 "$WORK/venv/bin/pytest" tests \
        --ignore=tests/pool --ignore=tests/crdb --ignore=tests/test_typing.py \
        -p no:randomly -o cache_dir="$WORK/pytest-cache" -q --timeout 60 -rfE "$@" >"$WORK/$name.txt" 2>&1) || true
    tail -1 "$WORK/$name.txt"
    grep -E '^(FAILED|ERROR) ' "$WORK/$name.txt" | sed -E 's/^(FAILED|ERROR) //; s/ - .*//' | sort -u >"$WORK/$name.failed" || true
}

run direct "host=127.0.0.1 port=$PRIMARY_PORT user=postgres dbname=app" "$@"
run shardwire "host=127.0.0.1 port=$PORT user=app password=app dbname=app" "$@"

echo "== failing through shardwire only:"
comm -13 "$WORK/direct.failed" "$WORK/shardwire.failed" | tee "$WORK/lost.txt"
echo "== $(wc -l <"$WORK/lost.txt") lost; failing directly too: $(comm -12 "$WORK/direct.failed" "$WORK/shardwire.failed" | wc -l)"
