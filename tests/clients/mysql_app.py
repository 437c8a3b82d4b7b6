"""A Python MySQL driver against shardwire's MySQL port, as applications use it: PyMySQL or
mysqlclient (MySQLdb, on MariaDB Connector/C). Their default autocommit off (every statement in a
transaction until commit), commit and rollback, executemany, a unique key error inside a
transaction, and (when a CA file is given) TLS with the certificate checked against it. Run by
tests/it/mysql_clients.rs with the driver, host, port and the CA file; exits non-zero on the
first surprise."""

import sys

driver, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
ca = sys.argv[4] if len(sys.argv) > 4 else None
if driver == "pymysql":
    import pymysql as db
    from pymysql.err import IntegrityError
else:
    import MySQLdb as db
    from MySQLdb import IntegrityError

table = "py_t_" + driver.lower()


def connect(**kw):
    return db.connect(host=host, port=port, user="app", password="app", database="app", **kw)


conn = connect()
cur = conn.cursor()
cur.execute(f"CREATE TABLE IF NOT EXISTS {table} (id INT PRIMARY KEY, v VARCHAR(20))")
cur.execute(f"DELETE FROM {table}")
conn.commit()

# autocommit is off: uncommitted rows are invisible to another session, then committed.
cur.executemany(f"INSERT INTO {table} (id, v) VALUES (%s, %s)", [(1, "a"), (2, "b"), (3, "c")])
other = connect(autocommit=True)
ocur = other.cursor()
ocur.execute(f"SELECT COUNT(*) FROM {table} /* shardwire: primary */")
assert ocur.fetchone()[0] == 0, "uncommitted rows seen by another session"
conn.commit()
ocur.execute(f"SELECT COUNT(*) FROM {table} /* shardwire: primary */")
assert ocur.fetchone()[0] == 3, "committed rows not seen"

# Rollback.
cur.execute(f"UPDATE {table} SET v = 'changed' WHERE id = 1")
conn.rollback()
cur.execute(f"SELECT v FROM {table} WHERE id = 1")
assert cur.fetchone()[0] == "a", "rollback did not undo"
conn.commit()

# A duplicate key inside a transaction: the error, then the transaction still usable.
cur.execute(f"INSERT INTO {table} VALUES (10, 'x')")
try:
    cur.execute(f"INSERT INTO {table} VALUES (1, 'dup')")
    raise AssertionError("duplicate accepted")
except IntegrityError as e:
    assert e.args[0] == 1062, e
conn.commit()
cur.execute(f"SELECT COUNT(*) FROM {table}")
assert cur.fetchone()[0] == 4, "the row before the error was lost"
conn.commit()

# Reads in autocommit mode, many times (pooled connections in turn).
for i in range(50):
    ocur.execute(f"SELECT v FROM {table} WHERE id = %s", (1 + i % 3,))
    assert ocur.fetchone()[0] in ("a", "b", "c")

if ca:
    t = connect(ssl={"ca": ca, "check_hostname": False} if driver == "pymysql" else {"ca": ca})
    tc = t.cursor()
    tc.execute("SELECT 'tls ok'")
    assert tc.fetchone()[0] == "tls ok"
    t.close()

conn.close()
other.close()
print("ok")
