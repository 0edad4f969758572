"""Plots a soak run's samples (target/soak/soak.csv) into a PNG: the daemon's RSS,
descriptors and threads over time, and the work done, so growth (or its absence) is seen
at a glance. Usage: plot.py CSV PNG (needs matplotlib)."""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

rows = list(csv.DictReader(open(sys.argv[1])))
minutes = [int(r["seconds"]) / 60 for r in rows]
col = lambda name: [int(r[name]) for r in rows]

fig, axes = plt.subplots(4, 1, figsize=(9, 10), sharex=True)
rss = [v / 1024 for v in col("rss_kib")]
axes[0].plot(minutes, rss, color="tab:red")
axes[0].set_ylabel("daemon RSS (MiB)")
axes[0].set_ylim(0, max(rss) * 1.25)
axes[1].plot(minutes, col("fds"), label="open descriptors")
axes[1].plot(minutes, col("idle_open"), label="idle WebSockets open", linestyle="--")
axes[1].set_ylabel("count")
axes[1].set_ylim(0, max(col("fds")) * 1.25)
axes[1].legend(loc="lower right")
axes[2].plot(minutes, col("threads"), color="tab:green")
axes[2].set_ylabel("daemon threads")
axes[2].set_ylim(0, max(col("threads")) * 1.5)
rate = lambda name: [
    (b - a) / ((int(r2["seconds"]) - int(r1["seconds"])) or 1)
    for a, b, r1, r2 in zip(col(name), col(name)[1:], rows, rows[1:])
]
axes[3].plot(minutes[1:], rate("echo_messages"), label="echo messages/s")
axes[3].plot(minutes[1:], rate("churn_connections"), label="churn connections/s")
axes[3].set_ylabel("per second")
axes[3].set_ylim(bottom=0)
axes[3].legend(loc="lower right")
axes[3].set_xlabel("minutes")
errors = col("errors")[-1]
fig.suptitle("switchyard soak: %.0f minutes, %d errors" % (minutes[-1], errors))
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=80)

# A Markdown table of the samples every five minutes (and the last), for RESULTS.md.
print("| time | RSS (MiB) | descriptors | threads | idle open | echo messages | churn connections | tunnel MiB | h2c requests | bad requests answered | panics | reloads | errors |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
picked = [r for r in rows if int(r["seconds"]) % 300 == 0 or int(r["seconds"]) == 10] + [rows[-1]]
seen = set()
for r in picked:
    if r["seconds"] in seen:
        continue
    seen.add(r["seconds"])
    s = int(r["seconds"])
    print(
        "| %d:%02d | %.1f | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |"
        % (s // 60, s % 60, int(r["rss_kib"]) / 1024, r["fds"], r["threads"], f"{int(r['idle_open']):,}",
           f"{int(r['echo_messages']):,}", f"{int(r['churn_connections']):,}", f"{int(r['tunnel_mib']):,}",
           f"{int(r['h2c_requests']):,}", r["malformed_answered"], r["panics_provoked"], r["reloads"], r["errors"])
    )
