"""psycopg 3 through shardwire (transaction pooling, a primary and a replica): what the driver's own
test suite expects of one server about process ids, signals, FATAL errors and read-only checks.

Usage: psycopg_conformance.py APP_URL OTHER_USER_URL. Prints "ok" when every check passed; any
failed check raises (non-zero exit)."""

import faulthandler
import sys
import threading
import time

import psycopg
from psycopg import errors

app_url, other_url = sys.argv[1], sys.argv[2]
# A check that hangs says where, before the test's own timeout kills the script.
faulthandler.dump_traceback_later(90, exit=True)


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def admin_shutdown(e):
    """The server's 57P01. psycopg 3.2+ raises AdminShutdown; 3.1 (Debian 12) reports the FATAL
    message, read just before the connection closed, in an OperationalError."""
    return isinstance(e, errors.AdminShutdown) or "terminating connection due to administrator command" in str(e)


def terminates_itself(conn, run, what):
    """`run` terminates `conn`'s own session: 57P01 at once, and the connection is closed."""
    try:
        run()
        raise AssertionError(f"terminating oneself {what} did not raise")
    except psycopg.OperationalError as e:
        check(admin_shutdown(e), f"57P01 {what}: {e}")
    check(conn.closed, f"the connection is closed after terminating itself {what}")


# pg_terminate_backend of one's own pid (the one BackendKeyData gave), in the extended protocol.
conn = psycopg.connect(app_url, autocommit=True)
terminates_itself(conn, lambda: conn.execute("select pg_terminate_backend(%s)", [conn.info.backend_pid]), "")

# The same inside a transaction block (psycopg's default), where the answers wait for the server.
conn = psycopg.connect(app_url)
conn.execute("select 1")
terminates_itself(
    conn, lambda: conn.execute("select pg_terminate_backend(%s)", [conn.info.backend_pid]), "in a transaction"
)

# The same in the simple protocol, with the pid written in the text.
conn = psycopg.connect(app_url, autocommit=True)
cur = psycopg.ClientCursor(conn)
terminates_itself(
    conn, lambda: cur.execute(f"select pg_terminate_backend({conn.info.backend_pid})"), "in the simple protocol"
)

# One client terminates another: true, and the other is closed at its next statement.
a = psycopg.connect(app_url, autocommit=True)
# The other is idle in a transaction holding a lock: the lock goes at once, as on the server.
b = psycopg.connect(app_url)
b.execute("select pg_advisory_xact_lock(4242)")
check(a.execute("select pg_try_advisory_xact_lock(4242)").fetchone()[0] is False, "b holds the lock")
got = a.execute("select pg_terminate_backend(%s::int)", [b.info.backend_pid]).fetchone()[0]
check(got is True, f"pg_terminate_backend of another client answers true, got {got!r}")
for _ in range(100):
    if a.execute("select pg_try_advisory_xact_lock(4242)").fetchone()[0]:
        break
    time.sleep(0.02)
else:
    raise AssertionError("the terminated client's transaction still holds its lock")
try:
    for _ in range(50):
        b.execute("select 1")
        time.sleep(0.05)
    raise AssertionError("the terminated client went on")
except psycopg.OperationalError as e:
    check(admin_shutdown(e), f"57P01: {e}")
check(b.closed, "the terminated client is closed")
check(a.execute("select 2").fetchone()[0] == 2, "the terminating client goes on")

# pg_cancel_backend of another client's pid cancels its running statement.
b = psycopg.connect(app_url, autocommit=True)
outcome = []


def sleeper():
    try:
        b.execute("select pg_sleep(20)")
        outcome.append("finished")
    except errors.QueryCanceled:
        outcome.append("cancelled")


t = threading.Thread(target=sleeper)
started = time.monotonic()
t.start()
time.sleep(0.5)
got = a.execute("select pg_cancel_backend(%s)", [b.info.backend_pid]).fetchone()[0]
t.join(25)
check(got is True, f"pg_cancel_backend answers true, got {got!r}")
check(outcome == ["cancelled"], f"the sleeping statement was cancelled: {outcome}")
check(time.monotonic() - started < 10, "cancelled well before it would have finished")
check(b.execute("select 3").fetchone()[0] == 3, "the cancelled client goes on")

# A session cancelling itself cancels that very statement (57014), as on the server.
try:
    a.execute("select pg_cancel_backend(%s)", [a.info.backend_pid])
    raise AssertionError("cancelling oneself did not cancel")
except errors.QueryCanceled:
    pass
check(a.execute("select 5").fetchone()[0] == 5, "the client goes on after cancelling itself")

# Another user's session may not be signalled (42501), as on the server.
other = psycopg.connect(other_url, autocommit=True)
try:
    a.execute("select pg_terminate_backend(%s)", [other.info.backend_pid])
    raise AssertionError("terminating another user's session was allowed")
except errors.InsufficientPrivilege:
    pass
check(other.execute("select 4").fetchone()[0] == 4, "the other user's session is untouched")

# A pid that is no client of the proxy is the server's: the server answers (false, a warning).
got = a.execute("select pg_cancel_backend(%s)", [2147483000]).fetchone()[0]
check(got is False, f"an unknown pid is the server's to answer, got {got!r}")

# The server process serving a statement terminated under it: FATAL, the client closed (as the
# server and PgBouncer close it), not left open on a FATAL it was sent.
c = psycopg.connect(app_url, autocommit=True)
try:
    c.execute("select pg_terminate_backend(pg_backend_pid())")
    raise AssertionError("terminating the serving backend did not raise")
except psycopg.OperationalError as e:
    check(admin_shutdown(e), f"57P01: {e}")
check(c.closed, "closed after its server process was terminated")

# A NOTIFY the session sent itself names the pid the client was given.
c = psycopg.connect(app_url, autocommit=True)
heard = []
c.add_notify_handler(heard.append)
c.execute("listen conformance_chan")
c.execute("notify conformance_chan, 'n1'")
c.execute("select 1")
check(len(heard) == 1, f"one notification: {heard}")
n = heard[0]
check(n.channel == "conformance_chan" and n.payload == "n1", f"notification {n}")
check(n.pid == c.info.backend_pid, f"own notification pid {n.pid} == {c.info.backend_pid}")

# A NOTIFY of another client names that client's pid.
other_n = psycopg.connect(app_url, autocommit=True)
other_n.execute("notify conformance_chan, 'n2'")
other_n.execute("select 1")
c.execute("select 1")
check(len(heard) == 2 and heard[1].payload == "n2", f"two notifications: {heard}")
check(heard[1].pid == other_n.info.backend_pid, f"sender pid {heard[1].pid} == {other_n.info.backend_pid}")

# The server ends a transaction idle for too long: the client gets its FATAL error at the next
# statement and is closed, as with one server (not left in a transaction that is gone).
c = psycopg.connect(app_url)
c.execute("SET SESSION idle_in_transaction_session_timeout = 100")
time.sleep(1)
try:
    c.execute("select 1")
    raise AssertionError("the statement after the idle timeout ran")
except psycopg.OperationalError as e:
    check(
        isinstance(e, errors.IdleInTransactionSessionTimeout) or "idle-in-transaction timeout" in str(e),
        f"25P03: {e!r}",
    )
check(c.closed, "closed after the idle-in-transaction timeout")

# Outside a transaction the database accepts writes: transaction_read_only is off, as on the
# primary (a replica would say on), and read_only=True in autocommit changes nothing.
c = psycopg.connect(app_url, autocommit=True)
check(c.execute("show transaction_read_only").fetchone()[0] == "off", "SHOW transaction_read_only")
c.read_only = True
row = c.execute(
    "select current_setting('transaction_read_only'), current_setting('default_transaction_read_only')"
).fetchone()
check(row == ("off", "off"), f"current_setting('transaction_read_only') in autocommit: {row}")
# The same with the names as parameters, as psycopg's own suite asks; another setting named by
# a parameter is still read on the replica.
row = c.execute(
    "select current_setting(%s), current_setting(%s)", ["transaction_read_only", "default_transaction_read_only"]
).fetchone()
check(row == ("off", "off"), f"current_setting(%s) of transaction_read_only in autocommit: {row}")
row = c.execute("select current_setting(%s), pg_is_in_recovery()", ["work_mem"]).fetchone()
check(row[1] is True, f"current_setting(%s) of another setting is read on the replica: {row}")
c.autocommit = False
check(
    c.execute("select current_setting('transaction_read_only')").fetchone()[0] == "on",
    "a READ ONLY transaction is read only",
)
c.rollback()

print("ok")
