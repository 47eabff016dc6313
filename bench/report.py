#!/usr/bin/env python3
"""Helpers of bench/run.sh: reads fio's JSON and turns the raw measurements into the report.

  report.py fio FILE CAP EXTRA      one line: seconds mib_r mib_w iops mbps lat_mean lat_p99 capped
  report.py written FILE...         bytes written by the first readable fio result
  report.py report RAW META OUTDIR  results.md, results.csv and results.png in OUTDIR
"""
import csv
import json
import os
import statistics
import subprocess
import sys

SYSTEMS = [
    "s3block-local-4K", "s3block-local-1M", "s3block-s3-4K", "s3block-s3-1M",
    "nbdkit-memory", "nbdkit-file", "nbdkit-S3-4K", "nbdkit-S3-64K",
    "s3backer-4K", "s3backer-1M",
    # This project built from another commit (BENCH_BASELINE_PLUGIN): before and after a change.
    "base-local-4K", "base-local-1M", "base-s3-4K", "base-s3-1M",
]
CEILINGS = ["raw-S3-4K", "raw-S3-64K", "raw-S3-1M"]
S3_SYSTEMS = ["s3block-s3-4K", "s3block-s3-1M", "nbdkit-S3-4K", "nbdkit-S3-64K",
              "s3backer-4K", "s3backer-1M", "base-s3-4K", "base-s3-1M"]
OURS = ["s3block-local-4K", "s3block-local-1M", "s3block-s3-4K", "s3block-s3-1M"]
WORKLOADS = ["seqwrite", "seqread-cold", "seqread-warm", "randread", "randread-warm",
             "randwrite", "randrw", "mkfs", "smallfiles"]
SEQ = ["seqwrite", "seqread-cold", "seqread-warm"]
RAND = ["randread", "randread-warm", "randwrite", "randrw"]
EXT4 = ["mkfs", "smallfiles"]
COLS = ["rep", "system", "workload", "seconds", "mib_read", "mib_written", "iops", "mbps",
        "lat_mean_ms", "lat_p99_ms", "s3_get", "s3_put", "s3_head", "s3_delete", "s3_post",
        "s3_cpu_s", "capped"]
NUM = COLS[3:]


def load_fio(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    # fio's nbd engine prints "fio: connected to NBD server" before the JSON.
    return json.loads(text[text.index("{"):])


def cmd_fio(path, cap, extra):
    job = load_fio(path)["jobs"][0]
    if job.get("error"):
        sys.exit("fio reported error %s" % job["error"])
    r, w = job["read"], job["write"]
    # fio's job runtime includes the final flush (--end_fsync=1); extra is the time the system
    # still needed after it to have every written block in S3 (see durable_wait in run.sh).
    fio_seconds = job.get("job_runtime", max(r["runtime"], w["runtime"])) / 1000.0
    seconds = fio_seconds + float(extra)
    rb, wb = r["io_bytes"], w["io_bytes"]
    if seconds <= 0 or rb + wb == 0:
        sys.exit("fio did no I/O")
    ios = r["total_ios"] + w["total_ios"]
    iops = ios / seconds
    mbps = (rb + wb) / seconds / 1e6
    lat_sum, lat_n, p99 = 0.0, 0, 0.0
    for d in (r, w):
        if d["total_ios"]:
            lat_sum += d["lat_ns"]["mean"] * d["total_ios"]
            lat_n += d["total_ios"]
            pct = d["clat_ns"].get("percentile", {})
            p99 = max(p99, pct.get("99.000000", 0))
    lat_mean = lat_sum / lat_n / 1e6 if lat_n else 0
    # Stopped by the time cap: fewer bytes than the job's size (sizes are given in bytes).
    opts = job.get("job options", {})
    capped = 0
    # (A time-based job is given a runtime other than the cap: fio leaves time_based out.)
    if str(opts.get("runtime", cap)) == str(cap) and str(opts.get("size", "")).isdigit():
        capped = 1 if rb + wb < int(opts["size"]) else 0
    print("%.3f %.3f %.3f %.1f %.2f %.3f %.3f %d" % (
        seconds, rb / 1048576, wb / 1048576, iops, mbps, lat_mean, p99 / 1e6, capped))


def cmd_written(paths):
    for p in paths:
        try:
            job = load_fio(p)["jobs"][0]
        except (OSError, ValueError, KeyError, IndexError):
            continue
        print(job["write"]["io_bytes"])
        return
    sys.exit(1)


def median(xs):
    return statistics.median(xs) if xs else None


def fmt(x, digits=None):
    if x is None:
        return "-"
    if digits is not None:
        return "%.*f" % (digits, x)
    ax = abs(x)
    if ax >= 1000:
        return "%.0f" % x
    if ax >= 100:
        return "%.0f" % x
    if ax >= 10:
        return "%.1f" % x
    if ax >= 1:
        return "%.2f" % x
    return "%.3f" % x


def cmd_report(raw, meta_path, outdir):
    meta = {}
    with open(meta_path, encoding="utf-8") as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition("=")
            meta[k] = v
    rows, rss = {}, {}
    with open(raw, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) == 4 and parts[2] == "_rss":
                rss.setdefault(parts[1], []).append(int(parts[3]) / 1024.0)
                continue
            if len(parts) != len(COLS):
                continue
            rec = dict(zip(COLS, parts))
            for k in NUM:
                rec[k] = float(rec[k])
            rows.setdefault((rec["system"], rec["workload"]), []).append(rec)

    # Medians of every column over the repeats; a ceiling is the best of its measurements (it is
    # measured at the start and at the end of every repeat: what the server can do at most).
    med = {}
    # The ceiling's measurements as they came (MB/s), for their spread and median.
    ceiling_mbps = {key: sorted(r["mbps"] for r in recs)
                    for key, recs in rows.items() if key[0] in CEILINGS}
    for key, recs in rows.items():
        if key[0] in CEILINGS:
            recs = [max(recs, key=lambda r: r["mbps"])]
        m = {k: median([r[k] for r in recs]) for k in NUM}
        m["n"] = len(recs)
        m["capped"] = max(r["capped"] for r in recs)
        req = m["s3_get"] + m["s3_put"] + m["s3_head"] + m["s3_delete"] + m["s3_post"]
        m["s3_requests"] = req
        mib = m["mib_read"] + m["mib_written"]
        m["req_per_mib"] = req / mib if mib > 0 else None
        med[key] = m
    rss_med = {s: median(v) for s, v in rss.items()}

    def get(system, workload, field):
        m = med.get((system, workload))
        return None if m is None else m.get(field)

    def headline(system, workload):
        """The figure a workload is judged by: MB/s, IOPS or seconds."""
        if workload in SEQ:
            return get(system, workload, "mbps")
        if workload in RAND:
            return get(system, workload, "iops")
        return get(system, workload, "seconds")

    systems = [s for s in SYSTEMS if any((s, w) in med for w in WORKLOADS)]
    os.makedirs(outdir, exist_ok=True)

    # ---- CSV: one row per system and workload, medians.
    with open(os.path.join(outdir, "results.csv"), "w", newline="", encoding="utf-8") as f:
        wr = csv.writer(f)
        wr.writerow(["system", "workload", "runs", "seconds", "mib_read", "mib_written", "iops",
                     "mb_per_s", "lat_mean_ms", "lat_p99_ms", "s3_get", "s3_put", "s3_head",
                     "s3_delete", "s3_post", "s3_requests_per_mib", "s3_server_cpu_s",
                     "hit_time_cap", "peak_rss_mib"])
        for s in systems + CEILINGS:
            for w in WORKLOADS + ["put", "get"]:
                m = med.get((s, w))
                if not m:
                    continue
                wr.writerow([s, w, m["n"], fmt(m["seconds"], 3), fmt(m["mib_read"], 2),
                             fmt(m["mib_written"], 2), fmt(m["iops"], 1), fmt(m["mbps"], 2),
                             fmt(m["lat_mean_ms"], 3), fmt(m["lat_p99_ms"], 3),
                             int(m["s3_get"]), int(m["s3_put"]), int(m["s3_head"]),
                             int(m["s3_delete"]), int(m["s3_post"]),
                             "" if m["req_per_mib"] is None else "%.2f" % m["req_per_mib"],
                             fmt(m["s3_cpu_s"], 2), int(m["capped"]),
                             "" if s not in rss_med else "%.0f" % rss_med[s]])

    L = []
    L.append("# Benchmark results")
    L.append("")
    L.append("Produced by `bench/run.sh` on %s (commit %s)%s. Medians of %s run(s) of every system "
             "and workload; every figure below comes from the same run, on the same machine, "
             "against the same S3 server." % (meta.get("date"), meta.get("commit"),
                                            ", **quick mode**" if meta.get("quick") == "1" else "",
                                            meta.get("repeats")))
    L.append("")
    L.append("- machine: %s cores (`nproc`), %s memory, kernel %s, CPU %s" % (
        meta.get("nproc"), meta.get("memory"), meta.get("kernel"), meta.get("cpu")))
    L.append("- load average (1, 5, 15 min; other work on the machine shows here): %s" %
             meta.get("load"))
    L.append("- S3 server: %s, sharing the cores with the system under test; its daemons' peak "
             "RSS %s MiB" % (meta.get("s3server"), meta.get("s3server_rss_mib")))
    L.append("- peers: %s" % meta.get("versions"))
    L.append("- working set (and export size) %s, this project's `cache-size=%s` (s3backer's "
             "block cache the same in blocks), at most %s s per fio workload, warm reads for %s s "
             "over a hot set of half the cache, ext4 export %s, small-files tree of %s files "
             "(%s MiB); measuring took %s s" % (
                 meta.get("size"), meta.get("cache"), meta.get("cap"), meta.get("warm_secs"),
                 meta.get("ext4_size"), meta.get("files"), meta.get("tree_mib"),
                 meta.get("elapsed_s")))
    L.append("")
    L.append("![throughput, latency and wall time per workload and system](results.png)")
    L.append("")

    # ---- Main table.
    L.append("## Throughput and wall time")
    L.append("")
    L.append("MB/s (10^6 bytes) for sequential workloads, IOPS for random 4 KiB ones, seconds of wall "
             "time for the ext4 ones (lower is better). `*` marks a run stopped by the time cap "
             "(the rate is over what it did).")
    L.append("")
    heads = ["seq write MB/s", "seq read cold MB/s", "seq read warm MB/s", "rand read IOPS",
             "rand read warm IOPS", "rand write IOPS", "70/30 mix IOPS", "mkfs.ext4 s",
             "small files s"]
    L.append("| system | " + " | ".join(heads) + " |")
    L.append("|---|" + "---|" * len(heads))
    for s in systems:
        cells = []
        for w in WORKLOADS:
            v = headline(s, w)
            c = fmt(v)
            if v is not None and get(s, w, "capped"):
                c += "*"
            cells.append(c)
        L.append("| %s | %s |" % (s, " | ".join(cells)))
    L.append("")
    L.append("The S3 server's ceiling (`bench/s3ceiling.cc`: %s threads of parallel PUTs, then GETs "
             "of the same objects, with the project's S3 client and no block device), measured at "
             "the start and at the end of every repeat; the best of those measurements, and the "
             "median and range of all of them (MB/s), which show how much the machine's other "
             "work moved it:" % meta.get("ceiling_threads"))
    L.append("")
    L.append("| object size | PUT objects/s | PUT MB/s | GET objects/s | GET MB/s | S3 server CPU s "
             "| PUT MB/s median (range) | GET MB/s median (range) |")
    L.append("|---|---|---|---|---|---|---|---|")

    def spread(key):
        v = ceiling_mbps.get(key)
        return "-" if not v else "%s (%s-%s)" % (fmt(median(v)), fmt(v[0]), fmt(v[-1]))
    for c in CEILINGS:
        if (c, "put") not in med:
            continue
        L.append("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
            c.split("-")[-1], fmt(get(c, "put", "iops")), fmt(get(c, "put", "mbps")),
            fmt(get(c, "get", "iops")), fmt(get(c, "get", "mbps")), fmt(get(c, "put", "s3_cpu_s")),
            spread((c, "put")), spread((c, "get"))))
    L.append("")

    # ---- Latency.
    L.append("## Latency")
    L.append("")
    L.append("fio's completion latency, mean / 99th percentile, in milliseconds (the mix: the mean "
             "over all requests, the higher of the read and write percentiles).")
    L.append("")
    fw = SEQ + RAND
    L.append("| system | " + " | ".join(fw) + " |")
    L.append("|---|" + "---|" * len(fw))
    for s in systems:
        cells = []
        for w in fw:
            a, b = get(s, w, "lat_mean_ms"), get(s, w, "lat_p99_ms")
            cells.append("-" if a is None else "%s / %s" % (fmt(a), fmt(b)))
        L.append("| %s | %s |" % (s, " | ".join(cells)))
    L.append("")

    # ---- S3 requests and CPU.
    L.append("## S3 requests and the S3 server's CPU")
    L.append("")
    L.append("Requests counted in the gateway's own access log during each workload, per MiB the "
             "client wrote (write workloads, mkfs and the small files: MiB written through the "
             "loop device) or read, and the CPU seconds the S3 server's daemons used meanwhile.")
    L.append("")
    L.append("| system | " + " | ".join("%s req/MiB (CPU s)" % w for w in WORKLOADS) + " |")
    L.append("|---|" + "---|" * len(WORKLOADS))
    for s in [x for x in systems if x in S3_SYSTEMS]:
        cells = []
        for w in WORKLOADS:
            m = med.get((s, w))
            if not m:
                cells.append("-")
            else:
                cells.append("%s (%s)" % (fmt(m["req_per_mib"]), fmt(m["s3_cpu_s"])))
        L.append("| %s | %s |" % (s, " | ".join(cells)))
    L.append("")

    # ---- Memory.
    L.append("## Peak memory")
    L.append("")
    L.append("Peak RSS (VmHWM) of each system's server processes, summed (s3backer: s3backer and "
             "the nbdkit that serves its file), the highest over the system's restarts.")
    L.append("")
    L.append("| system | peak RSS MiB |")
    L.append("|---|---|")
    for s in systems:
        L.append("| %s | %s |" % (s, fmt(rss_med.get(s))))
    L.append("")

    # ---- Goals.
    L.append("## Goals (issue 10): ratios in this run")
    L.append("")
    L.append("| goal | measured | verdict |")
    L.append("|---|---|---|")
    verdicts = []

    def ratio(a, b):
        return None if a is None or b is None or b == 0 else a / b

    def goal(text, value, target, higher=True, detail="", ceiling=False):
        if value is None:
            v = "not measured"
        else:
            ok = value >= target if higher else value <= target
            v = "met" if ok else "**missed**"
            if ceiling and value > 1.05:
                # The device went faster than the "ceiling": the ceiling client was the limit.
                v = "inconclusive: the ceiling client was slower than the device"
        L.append("| %s | %s%s | %s |" % (text, "-" if value is None else "%.2fx" % value,
                                         detail, v))
        verdicts.append((text, value, v))

    for bs in ("4K", "1M"):
        ours = "s3block-s3-" + bs
        ceil = "raw-S3-" + bs
        for wl, op, text in (("seqwrite", "put", "sequential write + flush vs raw PUT ceiling"),
                             ("seqread-cold", "get", "cold sequential read vs raw GET ceiling")):
            mine = get(ours, wl, "mbps")
            all_ceil = ceiling_mbps.get((ceil, op))
            vs_median = ""
            if mine is not None and all_ceil and median(all_ceil) > 0:
                vs_median = "; %.2fx of the ceiling's median, %s MB/s" % (
                    mine / median(all_ceil), fmt(median(all_ceil)))
            goal("S3 %s: %s (>= 0.9x)" % (bs, text), ratio(mine, get(ceil, op, "mbps")), 0.9,
                 ceiling=True, detail=" (%s vs %s MB/s%s)" % (fmt(mine), fmt(get(ceil, op, "mbps")),
                                                              vs_median))
    mem = get("nbdkit-memory", "randread-warm", "iops")
    for s in OURS:
        goal("%s: warm random 4K reads vs nbdkit memory (>= 0.8x)" % s,
             ratio(get(s, "randread-warm", "iops"), mem), 0.8,
             detail=" (%s vs %s IOPS)" % (fmt(get(s, "randread-warm", "iops")), fmt(mem)))
    goal("S3 1M blocks: random 4K writes + flush vs s3backer 1M (>= 2x)",
         ratio(get("s3block-s3-1M", "randwrite", "iops"), get("s3backer-1M", "randwrite", "iops")),
         2.0, detail=" (%s vs %s IOPS)" % (fmt(get("s3block-s3-1M", "randwrite", "iops")),
                                          fmt(get("s3backer-1M", "randwrite", "iops"))))
    peers = [p for p in S3_SYSTEMS if not p.startswith("s3block")]
    for bs in ("4K", "1M"):
        ours = "s3block-s3-" + bs
        for w in EXT4:
            mine = get(ours, w, "seconds")
            best = [(get(p, w, "seconds"), p) for p in peers if get(p, w, "seconds") is not None]
            if mine is None or not best:
                goal("S3 %s: %s wall time below every S3 peer" % (bs, w), None, 1.0)
                continue
            t, p = min(best)
            # ratio < 1 means faster than the fastest peer.
            goal("S3 %s: %s wall time below every S3 peer (ours / fastest peer < 1x)" % (bs, w),
                 mine / t, 0.9999, higher=False,
                 detail=" (%s s vs %s %s s)" % (fmt(mine), p, fmt(t)))
            rq = get(ours, w, "req_per_mib")
            rb = get("s3backer-" + bs, w, "req_per_mib")
            goal("S3 %s: %s S3 requests per MiB written vs s3backer %s (<= 0.5x)" % (bs, w, bs),
                 ratio(rq, rb), 0.5, higher=False,
                 detail=" (%s vs %s)" % (fmt(rq), fmt(rb)))
    for bs in ("4K", "1M"):
        ours = "s3block-local-" + bs
        for w in ("seqwrite", "seqread-cold"):
            goal("local %s: %s vs nbdkit file (>= 0.5x)" % (bs, w),
                 ratio(get(ours, w, "mbps"), get("nbdkit-file", w, "mbps")), 0.5,
                 detail=" (%s vs %s MB/s)" % (fmt(get(ours, w, "mbps")),
                                              fmt(get("nbdkit-file", w, "mbps"))))
    cache_mib = parse_size(meta.get("cache", "0")) / 1048576
    for s in OURS:
        r = rss_med.get(s)
        goal("%s: peak RSS within cache-size + 64 MiB (%s MiB)" % (s, fmt(cache_mib + 64)),
             ratio(r, cache_mib + 64), 1.0, higher=False,
             detail=" (%s MiB)" % fmt(r))
    L.append("")
    missed = [t for t, v, verdict in verdicts if verdict != "met"]
    if missed:
        L.append("Goals missed, inconclusive or not measured in this run: %d of %d." % (
            len(missed), len(verdicts)))
    else:
        L.append("Every goal was met in this run.")
    L.append("")

    with open(os.path.join(outdir, "results.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(L) + "\n")
    chart(med, systems, outdir, meta)


def parse_size(s):
    s = s.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(s[-1:], 1)
    return float(s.rstrip("KMG") or 0) * mult


def chart(med, systems, outdir, meta):
    """results.png with gnuplot: throughput, p99 latency and ext4 wall time."""
    def val(s, w, f):
        m = med.get((s, w))
        v = None if m is None else m.get(f)
        return "?" if v is None or v <= 0 else "%g" % v

    tmp = os.path.join(outdir, ".chart")
    os.makedirs(tmp, exist_ok=True)
    names = systems + ["raw-S3-4K", "raw-S3-1M"]

    def table(path, workloads, field, extra=None):
        """Writes one panel's data; returns the data file's columns that hold a figure (a subset
        of systems or workloads may leave some empty, and gnuplot warns about a column with no
        figure and refuses a panel with none)."""
        columns = set()
        with open(path, "w", encoding="utf-8") as f:
            f.write("workload " + " ".join(n for n in names) + "\n")
            for w in workloads:
                cells = []
                for n in names:
                    if n.startswith("raw-"):
                        cells.append(extra(n, w) if extra else "?")
                    else:
                        cells.append(val(n, w, field))
                columns.update(i + 2 for i, c in enumerate(cells) if c != "?")
                f.write(w + " " + " ".join(cells) + "\n")
        return sorted(columns)

    def raw_seq(n, w):
        return val(n, "put" if w == "seqwrite" else "get", "mbps")

    def raw_rand(n, w):
        if not n.endswith("4K") or w == "randrw":
            return "?"
        return val(n, "put" if w == "randwrite" else "get", "iops")

    has = {
        "seq": table(os.path.join(tmp, "seq.dat"), SEQ, "mbps", raw_seq),
        "rand": table(os.path.join(tmp, "rand.dat"), RAND, "iops", raw_rand),
        "lat": table(os.path.join(tmp, "lat.dat"), SEQ + RAND, "lat_p99_ms"),
        "ext4": table(os.path.join(tmp, "ext4.dat"), EXT4, "seconds"),
    }
    n = len(names)
    palette = {
        "s3block-local-4K": "#1f77b4", "s3block-local-1M": "#6baed6",
        "s3block-s3-4K": "#2ca02c", "s3block-s3-1M": "#98df8a",
        "nbdkit-memory": "#7f7f7f", "nbdkit-file": "#c7c7c7",
        "nbdkit-S3-4K": "#d62728", "nbdkit-S3-64K": "#ff9896",
        "s3backer-4K": "#ff7f0e", "s3backer-1M": "#ffbb78",
        "raw-S3-4K": "#000000", "raw-S3-1M": "#555555",
    }
    colors = " ".join(palette.get(x, "#9467bd") for x in names)
    title = "nbd-s3-backend benchmark, %s, %s cores, %s%s" % (
        meta.get("date"), meta.get("nproc"), meta.get("s3server", "").split(",")[0],
        " (quick mode)" if meta.get("quick") == "1" else "")
    panels = [
        ("seq", "Sequential 1 MiB, queue depth 8 (MB/s, higher is better; raw-S3 = PUT/GET ceiling)",
         "MB/s"),
        ("rand", "Random 4 KiB, queue depth 32 (IOPS, higher is better)", "IOPS"),
        ("lat", "99th percentile completion latency (ms, lower is better)", "ms"),
        ("ext4", "ext4 through nbdfuse + loop: wall time (s, lower is better)", "seconds"),
    ]
    panels = [p for p in panels if has[p[0]]]
    if not panels:
        return
    script = """
set terminal pngcairo size 1600,%(height)d font ",10"
set output '%(out)s'
set datafile missing '?'
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set logscale y
set grid ytics
set key outside right top vertical
set xtics nomirror
colors = "%(colors)s"
set multiplot layout %(rows)d,1 title "%(title)s"
""" % {"out": os.path.join(outdir, "results.png"), "title": title, "colors": colors,
       "rows": len(panels), "height": 500 * len(panels)}
    for name, ptitle, ylabel in panels:
        # Only the columns with a figure: each keeps its system's colour.
        script += """set title "%s"
set ylabel "%s"
plot for [c in "%s"] '%s/%s.dat' using int(c):xtic(1) title columnheader(int(c)) lc rgb word(colors, int(c)-1)
""" % (ptitle, ylabel, " ".join(str(c) for c in has[name]), tmp, name)
    script += "unset multiplot\n"
    with open(os.path.join(tmp, "chart.gp"), "w", encoding="utf-8") as f:
        f.write(script)
    subprocess.run(["gnuplot", os.path.join(tmp, "chart.gp")], check=True)
    for name in os.listdir(tmp):
        os.remove(os.path.join(tmp, name))
    os.rmdir(tmp)


def main():
    if len(sys.argv) >= 5 and sys.argv[1] == "fio":
        cmd_fio(sys.argv[2], sys.argv[3], sys.argv[4])
    elif len(sys.argv) >= 3 and sys.argv[1] == "written":
        cmd_written(sys.argv[2:])
    elif len(sys.argv) == 5 and sys.argv[1] == "report":
        cmd_report(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
