#!/usr/bin/env python3
"""`gavel status` for 1,000 deployments with live windows: how long it takes.

One command, from the repository root:

    python3 bench/monitoring/status.py [--deployments 1000]

Builds the release binary, makes a folder with the example contract plus N extra deployments
(each approved with four thresholds and a drift baseline), fills every deployment's window with
stored buckets (a real bucket written by the gateway for 300 decisions and outcomes, copied to
every deployment and every bucket of the window), then times `gavel status --json` and
`GET /v1/status` several times and prints a table. Python standard library only.
"""

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(gavel, cwd, key, *args, stdin=None):
    env = dict(os.environ, GAVEL_KEY=key or "")
    out = subprocess.run([gavel, *args], cwd=cwd, env=env, input=stdin, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"gavel {' '.join(args)} failed ({out.returncode}): {out.stderr.strip()}")
    return out.stdout


def http(addr, method, path, key, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://{addr}{path}", data=data, method=method)
    req.add_header("Authorization", f"Bearer {key}")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.read()
    except urllib.error.HTTPError as e:
        sys.exit(f"{method} {path}: HTTP {e.code}: {e.read().decode(errors='replace')}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--deployments", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    subprocess.run(["cargo", "build", "--quiet", "--release", "-p", "gavel-cli"], cwd=ROOT, check=True)
    gavel = os.path.join(target, "release", "gavel")
    folder = tempfile.mkdtemp(prefix="gavel-status-bench.")
    admin = run(gavel, folder, None, "init", ".").strip()
    key = lambda p, r, *extra: run(gavel, folder, admin, "keys", "create", "--principal", p, "--role", r, *extra).strip()
    operator, risk = key("olga", "operator"), key("rita", "approver", "--approver-role", "risk")
    service, auditor = key("svc", "service"), key("audrey", "auditor")

    names = [f"bench-{i:04d}" for i in range(args.deployments)]
    with open(os.path.join(folder, "gavel.yaml")) as f:
        yaml = f.read()
    extra = "".join(
        f"  {n}:\n    use_case: knowledge-search\n    endpoint: demo\n"
        f"    model: {{ name: gpt-4o-mini, snapshot: gpt-4o-mini-2024-07-18 }}\n"
        f"    params: {{ max_tokens: {100 + i % 200} }}\n"
        for i, n in enumerate(names)
    )
    yaml = yaml.replace("deployments:\n", "deployments:\n" + extra, 1)
    yaml = yaml.replace("window: 1m, requests: 120", "window: 1m, requests: 1000000")
    with open(os.path.join(folder, "gavel.yaml"), "w") as f:
        f.write(yaml)
    run(gavel, folder, operator, "apply")
    server = subprocess.Popen([gavel, "serve", "--listen", "127.0.0.1:0"], cwd=folder,
                              env=dict(os.environ, GAVEL_KEY=operator), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    addr = server.stdout.readline().strip().split("://", 1)[1]
    try:
        measure(args, gavel, folder, names, addr, risk, service, auditor)
    finally:
        server.terminate()
        server.wait()


def measure(args, gavel, folder, names, addr, risk, service, auditor):
    baseline = [{"prompt_tokens": 50 + (i * 7) % 400, "output_tokens": 20 + (i * 13) % 300, "topic": f"t{i % 7}"} for i in range(500)]
    started = time.time()
    for n in names:
        http(addr, "POST", "/v1/admin/approvals", risk, {
            "deployment": n, "population": "bench", "expires": "30d", "on_breach": "cooldown:5m",
            "thresholds": ["latency=2000", "error=0.05", "abuse=0.2", "drift=0.25"]})
        http(addr, "POST", "/v1/admin/baselines", risk, {"deployment": n, "rows": baseline, "label": "bench"})
    print(f"approved {len(names)} deployments and recorded their baselines in {time.time() - started:.1f} s", file=sys.stderr)

    # One real bucket: the gateway's own record of 300 decisions and outcomes on one deployment.
    for i in range(300):
        request = {"deployment": names[0], "messages": [{"role": "user", "content": f"question {i}"}]}
        decided = json.loads(http(addr, "POST", "/v1/decide", service, request))
        if decided["verdict"] != "ALLOW":
            sys.exit(f"unexpected decision: {decided}")
        http(addr, "POST", "/v1/outcome", service, {
            "decision_id": decided["decision_id"], "deployment": names[0],
            "usage": {"prompt_tokens": 50 + (i * 11) % 400, "completion_tokens": 20 + (i * 17) % 300},
            "latency_ms": 100 + (i * 29) % 900, "success": i % 50 != 0, "features": {"topic": f"t{i % 7}"}})
    time.sleep(1.5)
    db = sqlite3.connect(os.path.join(folder, "gavel.db"))
    template = db.execute("SELECT body FROM rollups WHERE deployment = ? ORDER BY length(body) DESC LIMIT 1", (names[0],)).fetchone()[0]
    bucket_ms, window_ms = 10_000, 300_000
    now_ms = int(time.time() * 1000)
    first = (now_ms - window_ms) // bucket_ms * bucket_ms + bucket_ms
    starts = list(range(first, now_ms + 1, bucket_ms))
    db.executemany("INSERT OR REPLACE INTO rollups (start_ms, deployment, writer, body) VALUES (?, ?, 'bench', ?)",
                   [(s, n, template) for n in names for s in starts])
    db.commit()
    print(f"{len(names) * len(starts)} stored buckets ({len(starts)} per deployment, {len(template)} bytes each)", file=sys.stderr)

    def timed(fn):
        times = []
        for _ in range(args.runs):
            t = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t)
        return times, out

    cli_times, cli_out = timed(lambda: run(gavel, folder, auditor, "status", "--json"))
    api_times, api_out = timed(lambda: http(addr, "GET", "/v1/status", auditor))
    status = json.loads(cli_out)
    rows_with_checks = sum(1 for d in status["deployments"] if d["checks"])
    sample = next(d for d in status["deployments"] if d["deployment"] == names[1])
    print(f"\n`gavel status` with {len(status['deployments'])} deployments ({rows_with_checks} with thresholds checked), "
          f"{len(starts)} buckets each, {args.runs} runs:\n")
    print("| what | min | median | max | share of the 1 s target (median) |")
    print("|---|---|---|---|---|")
    for name, times in [("`gavel status --json` (process start to exit)", cli_times), ("`GET /v1/status` (gateway running)", api_times)]:
        med = statistics.median(times)
        print(f"| {name} | {min(times)*1000:.0f} ms | {med*1000:.0f} ms | {max(times)*1000:.0f} ms | {med*100:.0f}% |")
    print(f"\none deployment's row: state {sample['state']}, decisions {sample['signals']['decisions']}, "
          f"checks {[(c['threshold'], c['state']) for c in sample['checks']]}")


if __name__ == "__main__":
    main()
