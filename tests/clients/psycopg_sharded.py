"""psycopg 3 against shardwire over three shards, as applications use it: executemany (one
pipeline, one Sync), a failing row in the middle of one, a transaction block across shards, and
explicit pipeline mode. Run by tests/it/drivers.rs with the proxy's URL and the keys to use, one
per shard; exits non-zero on the first surprise."""

import sys

import psycopg

url = sys.argv[1]
a, b, c = (int(k) for k in sys.argv[2:5])

with psycopg.connect(url, autocommit=True) as conn:
    cur = conn.cursor()
    # executemany: rows for three shards in one pipeline, committed together.
    cur.executemany(
        "INSERT INTO users (id, name, score) VALUES (%s, %s, %s)",
        [(a, "a", 1), (b, "b", 1), (c, "c", 1)],
    )
    cur.execute("SELECT count(*) FROM users WHERE id IN (%s, %s, %s)", (a, b, c))
    assert cur.fetchone()[0] == 3, "executemany did not insert every row"

    # A failing row in the middle: nothing of the pipeline stays.
    try:
        cur.executemany(
            "INSERT INTO users (id, name, score) VALUES (%s, %s, %s)",
            [(a + 1000000, "x", 1), (b, "duplicate", 1), (c + 1000000, "y", 1)],
        )
        raise AssertionError("the duplicate key did not fail the executemany")
    except psycopg.errors.UniqueViolation:
        pass
    cur.execute("SELECT count(*) FROM users WHERE id IN (%s, %s)", (a + 1000000, c + 1000000))
    assert cur.fetchone()[0] == 0, "a failed executemany left rows behind"

    # A transaction block across shards (psycopg's transaction() context).
    with conn.transaction():
        cur.execute("UPDATE users SET score = score - 5 WHERE id = %s", (a,))
        cur.execute("UPDATE users SET score = score + 5 WHERE id = %s", (b,))
        cur.execute("SELECT sum(score) FROM users WHERE id IN (%s, %s, %s)", (a, b, c))
        assert cur.fetchone()[0] == 3, "the transaction does not see its own writes"
    # One rolled back by an exception.
    try:
        with conn.transaction():
            cur.execute("UPDATE users SET score = 100 WHERE id = %s", (a,))
            cur.execute("UPDATE users SET score = 100 WHERE id = %s", (c,))
            raise RuntimeError("roll back")
    except RuntimeError:
        pass
    cur.execute("SELECT id, score FROM users WHERE id IN (%s, %s, %s) ORDER BY id", (a, b, c))
    scores = dict(cur.fetchall())
    assert scores == {a: -4, b: 6, c: 1}, scores

    # Explicit pipeline mode: statements for several shards, results read after the Sync.
    with conn.pipeline():
        cur.execute("UPDATE users SET name = 'p' WHERE id = %s", (a,))
        cur.execute("UPDATE users SET name = 'p' WHERE id = %s", (c,))
        count = conn.execute("SELECT count(*) FROM users WHERE name = 'p'")
    assert count.fetchone()[0] == 2, "the pipeline's writes are not all there"

print("ok")
