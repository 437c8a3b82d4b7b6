"""Opens N idle client connections (startup + trust login + one query each) to a proxy and
reports its resident memory per idle client. Usage: idle_clients.py PORT PID USER DB N"""
import socket
import struct
import sys
import time

port, pid, user, db, n = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])


def rss_kib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def read_until_ready(s):
    buf = b""
    while True:
        data = s.recv(65536)
        if not data:
            raise RuntimeError("closed")
        buf += data
        while len(buf) >= 5:
            tag, length = buf[0:1], struct.unpack("!i", buf[1:5])[0]
            if len(buf) < length + 1:
                break
            buf = buf[length + 1:]
            if tag == b"E":
                raise RuntimeError("error from server")
            if tag == b"Z":
                return


def connect():
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    body = struct.pack("!i", 196608) + b"user\0" + user.encode() + b"\0database\0" + db.encode() + b"\0\0"
    s.sendall(struct.pack("!i", len(body) + 4) + body)
    read_until_ready(s)
    q = b"SELECT 1\0"
    s.sendall(b"Q" + struct.pack("!i", len(q) + 4) + q)
    read_until_ready(s)
    return s


name = open(f"/proc/{pid}/comm").read().strip()
warm = [connect() for _ in range(10)]
time.sleep(0.5)
before = rss_kib()
try:
    socks = [connect() for _ in range(n)]
except (OSError, RuntimeError) as e:
    sys.exit(f"{name}: failed to open {n} idle clients: {e}")
time.sleep(1)
after = rss_kib()
print(f"{name}: {n} idle clients, RSS {before} KiB -> {after} KiB, {(after - before) / n:.1f} KiB per idle client")
for s in socks + warm:
    s.close()
