#!/usr/bin/env python3
"""Turn the raw oha JSON files and memory readings of one bench/gateway/run.sh run into a
markdown report (stdout). Standard library only.

Usage: report.py SCRATCH_DIR
Reads SCRATCH_DIR/targets.tsv (target, status, idle RSS kB, version, note),
SCRATCH_DIR/runs.tsv (target, rate, oha json path, RSS kB before, RSS kB after, seconds asked)
and SCRATCH_DIR/meta.txt (key=value lines about the machine and the run).
"""
import json
import os
import sys

LABELS = {
    "direct": "direct (nginx)",
    "gavel": "gavel serve",
    "litellm": "LiteLLM proxy",
    "portkey": "Portkey gateway",
}


def read_tsv(path):
    rows = []
    if not os.path.exists(path):
        return rows
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if line:
                rows.append(line.split("\t"))
    return rows


def load_run(path):
    """Figures from one oha JSON output, or None with the reason."""
    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, ValueError) as e:
        return None, "no oha output (%s)" % e.__class__.__name__
    s = d.get("summary", {})
    lat = d.get("latencyPercentiles", {})
    codes = {str(k): int(v) for k, v in (d.get("statusCodeDistribution") or {}).items()}
    errors = {str(k): int(v) for k, v in (d.get("errorDistribution") or {}).items()}
    ok = codes.get("200", 0)
    responses = sum(codes.values())
    elapsed = float(s.get("total") or 0.0)
    p50, p99 = lat.get("p50"), lat.get("p99")
    return {
        "ok": ok,
        "non200": responses - ok,
        "non200_codes": {k: v for k, v in codes.items() if k != "200"},
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "elapsed": elapsed,
        "achieved": ok / elapsed if elapsed > 0 else 0.0,
        "p50": p50 * 1000 if p50 is not None else None,
        "p99": p99 * 1000 if p99 is not None else None,
    }, None


# gavel's histograms whose means over a run say where its time went (sum and count deltas).
STAGES = [
    ("gavel_decision_seconds", "decision, durable (ms)", 1000.0),
    ("gavel_ledger_wait_seconds", "of which the ledger wait (ms)", 1000.0),
    ("gavel_ledger_commit_seconds", "ledger commit + sync (ms)", 1000.0),
    ("gavel_ledger_batch_records", "records per commit", 1.0),
    ("gavel_upstream_seconds", "upstream call (ms)", 1000.0),
]


def read_metrics(path):
    """Sums and counts of every histogram in one Prometheus text dump, labels summed over."""
    totals = {}
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("#") or " " not in line:
                    continue
                name, value = line.rsplit(" ", 1)
                base = name.split("{", 1)[0]
                for suffix in ("_sum", "_count"):
                    if base.endswith(suffix):
                        key = (base[: -len(suffix)], suffix)
                        totals[key] = totals.get(key, 0.0) + float(value)
    except (OSError, ValueError):
        return None
    return totals


def stage_means(json_path):
    """Means of gavel's stage histograms over one run, from the dumps beside its oha JSON."""
    stem = json_path[: -len(".json")] if json_path.endswith(".json") else json_path
    before, after = read_metrics(stem + ".metrics0"), read_metrics(stem + ".metrics1")
    if before is None or after is None:
        return None
    means = {}
    for name, _, scale in STAGES:
        n = after.get((name, "_count"), 0.0) - before.get((name, "_count"), 0.0)
        total = after.get((name, "_sum"), 0.0) - before.get((name, "_sum"), 0.0)
        means[name] = total / n * scale if n > 0 else None
    return means


def ms(x):
    if x is None:
        return "-"
    if x >= 100:
        return "%.0f" % x
    if x >= 10:
        return "%.1f" % x
    return "%.2f" % x


def mb(kb):
    try:
        return "%.1f" % (int(kb) / 1024.0)
    except (TypeError, ValueError):
        return "-"


def rate_key(r):
    return (1, 0) if r == "max" else (0, float(r))


def main():
    scratch = sys.argv[1]
    meta = {}
    if os.path.exists(os.path.join(scratch, "meta.txt")):
        with open(os.path.join(scratch, "meta.txt")) as f:
            for line in f:
                if "=" in line:
                    k, v = line.rstrip("\n").split("=", 1)
                    meta[k] = v
    targets = read_tsv(os.path.join(scratch, "targets.tsv"))
    runs = read_tsv(os.path.join(scratch, "runs.tsv"))

    results = {}  # (target, rate) -> figures of the first run at that rate (for comparisons)
    in_order = []  # (target, rate, figures) of every run, in the order they ran
    problems = []
    clk = float(meta.get("clk_tck") or 100)
    ncpu = float(meta.get("ncpu") or 1)
    for row in runs:
        target, rate, path, rss_before, rss_after = row[:5]
        fig, why = load_run(path)
        if fig is None:
            problems.append("%s at %s: %s" % (LABELS.get(target, target), rate, why))
            continue
        fig["rss_before"], fig["rss_after"] = rss_before, rss_after
        answered = fig["ok"] + fig["non200"]
        try:
            fig["cpu_ms"] = int(row[6]) * 1000.0 / clk / answered if answered else None
        except (IndexError, ValueError):
            fig["cpu_ms"] = None
        try:
            fig["other_pct"] = int(row[7]) * 100.0 / (clk * ncpu * float(row[5]))
        except (IndexError, ValueError, ZeroDivisionError):
            fig["other_pct"] = None
        results.setdefault((target, rate), fig)
        in_order.append((target, rate, fig))

    out = []
    w = out.append
    w("# Gateway load benchmark")
    w("")
    w("Run: %s. Machine: %s. %s" % (meta.get("date", "?"), meta.get("machine", "?"), meta.get("load", "")))
    w("")
    w("Load: oha, %s per run (fixed-rate runs longer where needed for at least %s requests), -c %s, "
      "fixed rate with `--latency-correction` (latency counted "
      "from when each request was due, so queueing shows), `max` = no rate limit (saturation). "
      "One target at a time; load generator, target and nginx share the same cores. Same body "
      "(%s bytes: the kb-search-v1 system prompt and a ~1 KB question) and the same nginx upstream "
      "returning a fixed chat.completion for every target. CPU ms/req: the target's own user+system "
      "CPU time during the run (its process and children, from /proc) divided by the responses; "
      "for direct it is nginx's. Other load %%: CPU used during the run by processes outside the "
      "bench (machine busy time less the target, nginx and oha), as %% of all cores; 10 or more "
      "(bold) means the run shared the machine with other work. Versions: %s."
      % (meta.get("duration", "?"), meta.get("min_samples", "?"), meta.get("concurrency", "?"), meta.get("body_bytes", "?"),
         meta.get("versions", "?")))
    w("")
    w("| target | rate asked (req/s) | achieved (200/s) | kept up | 200s | non-200 | errors | p50 ms | p99 ms | CPU ms/req | other load % | RSS idle MB | RSS before → after MB |")
    w("|---|---:|---:|:-:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for t in targets:
        target, status, idle = t[0], t[1], t[2] if len(t) > 2 else ""
        label = LABELS.get(target, target)
        trs = [(r, f) for (tt, r, f) in in_order if tt == target]
        if status != "ok" and not trs:
            w("| %s | **%s** | | | | | | | | | | | |" % (label, status))
            continue
        for r, f in trs:
            if r == "max":
                kept = "sat."
            else:
                kept = "yes" if f["achieved"] >= 0.95 * float(r) else "**no**"
            other = "-" if f["other_pct"] is None else (("**%.0f**" if f["other_pct"] >= 10 else "%.0f") % f["other_pct"])
            w("| %s | %s | %.1f | %s | %d | %s | %s | %s | %s | %s | %s | %s | %s → %s |" % (
                label, r, f["achieved"], kept, f["ok"],
                ("**%d**" % f["non200"]) if f["non200"] else "0",
                ("**%d**" % f["errors"]) if f["errors"] else "0",
                ms(f["p50"]), ms(f["p99"]), ms(f["cpu_ms"]), other, mb(idle), mb(f["rss_before"]), mb(f["rss_after"])))
        if status != "ok":
            w("| %s | **%s** | | | | | | | | | | | |" % (label, status))
    w("")

    # Added latency over direct at the same asked rate (not for `max`: different throughputs).
    w("## Added latency over direct nginx at the same rate")
    w("")
    w("| target | rate (req/s) | added p50 ms | added p99 ms |")
    w("|---|---:|---:|---:|")
    for t in targets:
        target = t[0]
        if target == "direct":
            continue
        for (tt, r) in sorted(results, key=lambda k: rate_key(k[1])):
            if tt != target or r == "max" or ("direct", r) not in results:
                continue
            f, d = results[(tt, r)], results[("direct", r)]
            if None in (f["p50"], f["p99"], d["p50"], d["p99"]):
                continue
            w("| %s | %s | %s | %s |" % (LABELS.get(target, target), r,
                                         ms(f["p50"] - d["p50"]), ms(f["p99"] - d["p99"])))
    w("")

    # Where gavel's time went, from its own /metrics around each run.
    stages = []
    for target, rate, path, *_ in read_tsv(os.path.join(scratch, "runs.tsv")):
        means = stage_means(path) if target == "gavel" else None
        if means:
            stages.append("| %s | %s |" % (rate, " | ".join(
                ("%.3f" % means[name] if scale > 1 else "%.2f" % means[name]) if means[name] is not None else "-"
                for name, _, scale in STAGES)))
    if stages:
        w("## Where gavel's time goes (means over each run, from its /metrics)")
        w("")
        w("| rate (req/s) | %s |" % " | ".join(label for _, label, _ in STAGES))
        w("|---:|%s" % ("---:|" * len(STAGES)))
        out.extend(stages)
        w("")

    # What one fdatasync costs on this disk: every decision waits for at least one.
    floor_path = os.path.join(scratch, "fsync-floor.json")
    if os.path.exists(floor_path):
        try:
            with open(floor_path) as f:
                floor = json.load(f)
            w("## Durability floor (one fdatasync in gavel's data folder, nothing else running)")
            w("")
            w("- %d fdatasyncs of a WAL-frame-shaped write at %g/s (`bench/gateway/fsync_floor.py`, "
              "before gavel's runs): p50 %s ms, p99 %s ms, max %s ms. Each of gavel's decisions waits "
              "for at least one such sync before the upstream is called, so at that rate gavel's added "
              "latency cannot be below it on this disk."
              % (floor["samples"], floor["rate"], ms(floor["p50_ms"]), ms(floor["p99_ms"]), ms(floor["max_ms"])))
            w("")
        except (OSError, ValueError, KeyError, TypeError) as e:
            problems.append("durability floor: unreadable %s (%s)" % (floor_path, e))

    # gavel's added p99 against LiteLLM's, at rates LiteLLM was asked for (not `max`).
    lines = []
    for (tt, r) in sorted(results, key=lambda k: rate_key(k[1])):
        if tt != "gavel" or r == "max":
            continue
        if ("litellm", r) in results and ("direct", r) in results:
            g, l, d = results[("gavel", r)], results[("litellm", r)], results[("direct", r)]
            ga, la = g["p99"] - d["p99"], l["p99"] - d["p99"]
            ratio = ("%.3f" % (ga / la)) if la > 0 else "n/a (LiteLLM added p99 <= 0)"
            lines.append("- at %s req/s: gavel added p99 %s ms, LiteLLM added p99 %s ms, ratio gavel/LiteLLM = %s"
                         % (r, ms(ga), ms(la), ratio))
    w("## gavel vs LiteLLM (added p99)")
    w("")
    if lines:
        out.extend(lines)
    else:
        w("- not available in this run (needs gavel, LiteLLM and direct measured at the same rate).")
    w("")

    # Saturation points.
    w("## Saturation (no rate limit, -c %s)" % meta.get("concurrency", "?"))
    w("")
    for t in targets:
        f = results.get((t[0], "max"))
        if f:
            w("- %s: %.0f req/s of 200s, p50 %s ms, p99 %s ms" % (LABELS.get(t[0], t[0]), f["achieved"], ms(f["p50"]), ms(f["p99"])))
    w("")

    # Warm-ups: not measured, but a slow first second after start is worth seeing.
    warm = []
    for target, wrate, wdur, path in read_tsv(os.path.join(scratch, "warmups.tsv")):
        f, _ = load_run(path)
        if f:
            warm.append("- %s: %s at %s req/s right after start: p50 %s ms, p99 %s ms, %d 200s, %d non-200, %d errors"
                        % (LABELS.get(target, target), wdur, wrate, ms(f["p50"]), ms(f["p99"]), f["ok"], f["non200"], f["errors"]))
    if warm:
        w("## Warm-up runs (not in the table)")
        w("")
        out.extend(warm)
        w("")

    # Anything that was not a clean 200.
    notes = []
    for tt, r, f in in_order:
        if f["non200"] or f["errors"]:
            notes.append("- %s at %s: non-200 %s, errors %s" % (LABELS.get(tt, tt), r,
                                                                json.dumps(f["non200_codes"]), json.dumps(f["error_kinds"])))
    for t in targets:
        if len(t) > 4 and t[4]:
            notes.append("- %s: %s" % (LABELS.get(t[0], t[0]), t[4]))
    notes.extend("- " + p for p in problems)
    if notes:
        w("## Notes")
        w("")
        out.extend(notes)
        w("")
    print("\n".join(out))


if __name__ == "__main__":
    main()
