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
        if not rs:
            continue
        tps, lat, cpu = med(rs, "tps"), med(rs, "latency_ms"), med(rs, "cpu_us_per_tx")
        vs_d = f"{tps / direct:.2f}" if tps and direct else ""
        vs_b = f"{tps / bouncer:.2f}" if tps and bouncer and target != "direct" else ""
        cpu_s = f"{cpu:.1f}" if cpu is not None else ""
        print(f"| {mode} | {clients} | {target} | {tps:.0f} | {lat:.3f} | {vs_d} | {vs_b} | {cpu_s} |")

# Each round runs the targets back to back, so the ratio within a round cancels most of the
# shared machine's slow and fast phases; its median is steadier than the ratio of medians.
print()
print("| protocol | clients | rounds | shardwire/PgBouncer tps, per round | median | CPU/tx ratio, median |")
print("|---|---|---|---|---|---|")
for mode, clients in sorted({(m, c) for m, c, _ in groups}):
    by_round = defaultdict(dict)
    for target in ["pgbouncer", "shardwire"]:
        for r in groups[(mode, clients, target)]:
            by_round[r["round"]][target] = r
    tps_ratios, cpu_ratios = [], []
    for pair in by_round.values():
        if len(pair) == 2 and pair["pgbouncer"]["tps"] and pair["shardwire"]["tps"]:
            tps_ratios.append(float(pair["shardwire"]["tps"]) / float(pair["pgbouncer"]["tps"]))
            if pair["pgbouncer"]["cpu_us_per_tx"] and pair["shardwire"]["cpu_us_per_tx"]:
                cpu_ratios.append(float(pair["shardwire"]["cpu_us_per_tx"]) / float(pair["pgbouncer"]["cpu_us_per_tx"]))
    if tps_ratios:
        listed = " ".join(f"{x:.2f}" for x in tps_ratios)
        cpu = f"{statistics.median(cpu_ratios):.2f}" if cpu_ratios else ""
        print(f"| {mode} | {clients} | {len(tps_ratios)} | {listed} | {statistics.median(tps_ratios):.2f} | {cpu} |")
