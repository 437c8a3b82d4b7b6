"""PyMySQL against shardwire's MySQL port, as applications use it: its default autocommit off
(every statement in a transaction until commit), commit and rollback, executemany, a unique key
error inside a transaction, and (when a CA file is given) TLS with the certificate verified. Run
by tests/it/mysql_clients.rs with host, port and the CA file; exits non-zero on the first
surprise."""

import sys

import pymysql

host, port = sys.argv[1], int(sys.argv[2])
ca = sys.argv[3] if len(sys.argv) > 3 else None


def connect(**kw):
    return pymysql.connect(host=host, port=port, user="app", password="app", database="app", **kw)


conn = connect()
cur = conn.cursor()
cur.execute("CREATE TABLE IF NOT EXISTS py_t (id INT PRIMARY KEY, v VARCHAR(20))")
cur.execute("DELETE FROM py_t")
conn.commit()

# autocommit is off: uncommitted rows are invisible to another session, then committed.
cur.executemany("INSERT INTO py_t (id, v) VALUES (%s, %s)", [(1, "a"), (2, "b"), (3, "c")])
other = connect(autocommit=True)
ocur = other.cursor()
ocur.execute("SELECT COUNT(*) FROM py_t /* shardwire: primary */")
assert ocur.fetchone()[0] == 0, "uncommitted rows seen by another session"
conn.commit()
ocur.execute("SELECT COUNT(*) FROM py_t /* shardwire: primary */")
assert ocur.fetchone()[0] == 3, "committed rows not seen"

# Rollback.
cur.execute("UPDATE py_t SET v = 'changed' WHERE id = 1")
conn.rollback()
cur.execute("SELECT v FROM py_t WHERE id = 1")
assert cur.fetchone()[0] == "a", "rollback did not undo"
conn.commit()

# A duplicate key inside a transaction: the error, then the transaction still usable.
cur.execute("INSERT INTO py_t VALUES (10, 'x')")
try:
    cur.execute("INSERT INTO py_t VALUES (1, 'dup')")
    raise AssertionError("duplicate accepted")
except pymysql.err.IntegrityError as e:
    assert e.args[0] == 1062, e
conn.commit()
cur.execute("SELECT COUNT(*) FROM py_t")
assert cur.fetchone()[0] == 4, "the row before the error was lost"
conn.commit()

# Reads in autocommit mode, many times (pooled connections in turn).
for i in range(50):
    ocur.execute("SELECT v FROM py_t WHERE id = %s", (1 + i % 3,))
    assert ocur.fetchone()[0] in ("a", "b", "c")

if ca:
    t = connect(ssl={"ca": ca, "check_hostname": False})
    tc = t.cursor()
    tc.execute("SELECT 'tls ok'")
    assert tc.fetchone()[0] == "tls ok"
    t.close()

conn.close()
other.close()
print("ok")
