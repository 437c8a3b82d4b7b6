"""Medians per (mode, clients, target) from bench/run.sh results, as a Markdown table."""
import csv
import statistics
import sys
from collections import defaultdict

rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
groups = defaultdict(list)
for r in rows:
    groups[(r["mode"], int(r["clients"]), r["target"])].append(r)


def med(rs, key):
    vals = [float(r[key]) for r in rs if r[key]]
    return statistics.median(vals) if vals else None


print("| protocol | clients | target | tps (median) | latency ms | vs direct | vs PgBouncer | proxy CPU µs/tx |")
print("|---|---|---|---|---|---|---|---|")
for mode, clients in sorted({(m, c) for m, c, _ in groups}):
    direct = med(groups[(mode, clients, "direct")], "tps")
    bouncer = med(groups[(mode, clients, "pgbouncer")], "tps")
    for target in ["direct", "pgbouncer", "shardwire"]:
        rs = groups[(mode, clients, target)]
        tps, lat, cpu = med(rs, "tps"), med(rs, "latency_ms"), med(rs, "cpu_us_per_tx")
        vs_d = f"{tps / direct:.2f}" if tps and direct else ""
        vs_b = f"{tps / bouncer:.2f}" if tps and bouncer and target != "direct" else ""
        cpu_s = f"{cpu:.1f}" if cpu is not None else ""
        print(f"| {mode} | {clients} | {target} | {tps:.0f} | {lat:.3f} | {vs_d} | {vs_b} | {cpu_s} |")
