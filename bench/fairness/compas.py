#!/usr/bin/env python3
"""COMPAS through gavel's fairness monitoring, checked against the same rates computed here.

Builds gavel, starts a real `gavel serve` in a scratch folder, governs ProPublica's COMPAS
two-year data as a scoring deployment (prediction: score_text Medium or High; label:
two_year_recid; group: race), decides every row, then reports every outcome, and compares
what /v1/status reports per group with rates computed from the CSV in plain Python. It also
checks that the four-fifths threshold breached: the next decide is refused with
contract.breach.fairness, the on-call webhook got exactly one alert, the ledger holds the breach.

Exit status 0 when every check passed, 1 otherwise. Python 3 standard library only.
See bench/fairness/README.md.
"""

import argparse
import collections
import concurrent.futures
import csv
import http.client
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DEFAULT_CSV = os.path.join(os.path.dirname(REPO), "shared", "corpora", "fairness", "compas-two-years.csv")

DEPLOYMENT = "compas-recid-v1"
USE_CASE = "pretrial-risk"
OWNER = "pia@acme.example"
RUNBOOK = "https://wiki.acme.example/runbooks/pretrial-risk"
MIN_GROUP_SIZE = 30
FAIRNESS_LIMIT = 0.8
TOLERANCE = 1e-9

failures = []


def check(ok, what):
    """Records a failed check (the run goes on so that every failure is shown)."""
    if not ok:
        failures.append(what)
        print(f"FAIL: {what}", file=sys.stderr)
    return ok


# ---------------------------------------------------------------------------------------------
# The data, and the rates computed independently of gavel.


def load_rows(path):
    """ProPublica's filter (compas-analysis, "Compas_Analysis.ipynb"): screening within 30 days
    of the arrest, a known recidivism flag, no ordinary traffic offence, a score."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    kept = []
    for r in rows:
        days = r["days_b_screening_arrest"].strip()
        if days == "" or not -30 <= int(days) <= 30:
            continue
        if r["is_recid"] == "-1" or r["c_charge_degree"] == "O" or r["score_text"] == "N/A":
            continue
        kept.append(
            {
                "id": r["id"],
                "group": r["race"],
                "prediction": r["score_text"] in ("Medium", "High"),
                "label": {"0": False, "1": True}[r["two_year_recid"]],
            }
        )
    return len(rows), kept


def expected_rates(rows):
    counts = collections.defaultdict(lambda: collections.Counter())
    for r in rows:
        c = counts[r["group"]]
        p, y = r["prediction"], r["label"]
        c["n"] += 1
        c["selected"] += p
        c["tp"] += p and y
        c["fp"] += p and not y
        c["tn"] += (not p) and (not y)
        c["fn"] += (not p) and y

    def rate(a, b):
        return a / b if b else None

    groups = {}
    for g, c in counts.items():
        groups[g] = {
            "n": c["n"],
            "selection_rate": rate(c["selected"], c["n"]),
            "false_positive_rate": rate(c["fp"], c["fp"] + c["tn"]),
            "false_negative_rate": rate(c["fn"], c["fn"] + c["tp"]),
            "true_positive_rate": rate(c["tp"], c["tp"] + c["fn"]),
            "compared": c["n"] >= MIN_GROUP_SIZE,
        }
    compared = [v for v in groups.values() if v["compared"]]
    sel = [v["selection_rate"] for v in compared]
    tpr = [v["true_positive_rate"] for v in compared if v["true_positive_rate"] is not None]
    return {
        "groups": groups,
        "demographic_parity_ratio": min(sel) / max(sel) if len(sel) >= 2 else None,
        "demographic_parity_difference": max(sel) - min(sel) if len(sel) >= 2 else None,
        "equal_opportunity_difference": max(tpr) - min(tpr) if len(tpr) >= 2 else None,
    }


# ---------------------------------------------------------------------------------------------
# gavel: build, scratch folder, contract, keys, approval, server.


def gavel_binary():
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
    if not os.path.isabs(target):
        target = os.path.join(REPO, target)
    return os.path.join(target, "release", "gavel")


def build():
    print("building: cargo build --release -p gavel-cli", flush=True)
    subprocess.run(["cargo", "build", "--release", "-p", "gavel-cli"], cwd=REPO, check=True)
    binary = gavel_binary()
    if not os.access(binary, os.X_OK):
        sys.exit(f"no gavel binary at {binary}")
    return binary


class Gavel:
    def __init__(self, binary, folder):
        self.binary = binary
        self.folder = folder
        self.env = {k: v for k, v in os.environ.items() if k not in ("GAVEL_KEY", "GAVEL_DB", "GAVEL_CONTRACT")}

    def run(self, key, *args):
        env = dict(self.env)
        if key:
            env["GAVEL_KEY"] = key
        done = subprocess.run([self.binary, *args], cwd=self.folder, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"gavel {' '.join(args[:2])} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout.strip()

    def key(self, admin, principal, role, approver_role=None):
        args = ["keys", "create", "--principal", principal, "--role", role]
        if approver_role:
            args += ["--approver-role", approver_role]
        key = self.run(admin, *args)
        assert key.startswith("gvl_"), key
        return key


def replace_once(text, old, new):
    if text.count(old) != 1:
        sys.exit(f"the example contract changed: expected exactly one `{old.strip()}`")
    return text.replace(old, new)


def edit_contract(path, webhook):
    """Adds the scoring deployment (a high-risk use case: law enforcement), a 1 h monitoring
    window with groups of 30, and lifts the per-principal request budget out of the way."""
    with open(path) as f:
        yaml = f.read()
    yaml = replace_once(
        yaml,
        "\nendpoints:\n",
        "\nendpoints:\n"
        '  scoring-onprem: { url: "http://10.0.0.9:9000/v1", location: self_hosted, region: us }\n',
    )
    yaml = replace_once(
        yaml,
        "\nuse_cases:\n",
        "\nuse_cases:\n"
        f"  {USE_CASE}:\n"
        "    domain: law_enforcement\n"
        "    description: Scores defendants' risk of recidivism for the pre-trial release hearing (COMPAS replay).\n"
        f"    owner: {OWNER}\n"
        f'    oncall: {{ webhook: "{webhook}", runbook: "{RUNBOOK}" }}\n'
        '    population: "Defendants screened pre-trial in Broward County, FL, 2013-2014"\n'
        "    data_classes: [pii]\n",
    )
    yaml = replace_once(
        yaml,
        "\ndeployments:\n",
        "\ndeployments:\n"
        f"  {DEPLOYMENT}:\n"
        f"    use_case: {USE_CASE}\n"
        "    endpoint: scoring-onprem\n"
        "    model: { name: compas-core, snapshot: compas-core-2013 }\n",
    )
    # A scoring model spends nothing per token, but the use-case USD budget wants a price.
    yaml = replace_once(yaml, "\nprices:", "\nprices:\n  compas-core-2013: { input: 0, output: 0 }")
    yaml = replace_once(yaml, "window: 1m, requests: 120 }", "window: 1m, requests: 1000000 }")
    monitoring, n = re.subn(
        r"(?m)^  monitoring:\s*\{[^}\n]*\}",
        "  monitoring:  { window: 1h, bucket: 10s, min_samples: 20, drift_bins: 10, "
        f"drift_min_samples: 50, min_group_size: {MIN_GROUP_SIZE}, probe_percent: 10 }}",
        yaml,
    )
    if n != 1:
        sys.exit("the example contract changed: expected one `monitoring:` line")
    with open(path, "w") as f:
        f.write(monitoring)


class Server:
    def __init__(self, gavel, operator):
        env = dict(gavel.env, GAVEL_KEY=operator)
        self.log = open(os.path.join(gavel.folder, "serve.log"), "w")
        self.proc = subprocess.Popen(
            [gavel.binary, "serve", "--listen", "127.0.0.1:0"],
            cwd=gavel.folder,
            env=env,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        line = self.proc.stdout.readline().strip()
        m = re.match(r"gavel serve: listening on http://(\S+):(\d+)$", line)
        if not m:
            self.stop()
            sys.exit(f"gavel serve did not start: {line!r} (see {self.log.name})")
        self.host, self.port = m.group(1), int(m.group(2))
        self.local = threading.local()

    def request(self, method, path, key, body=None):
        """(status, parsed JSON or text). One keep-alive connection per thread."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        for attempt in range(2):
            conn = getattr(self.local, "conn", None)
            if conn is None:
                conn = self.local.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
            try:
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                text = resp.read().decode()
                break
            except (ConnectionError, http.client.HTTPException, OSError):
                conn.close()
                self.local.conn = None
                if attempt == 1:
                    raise
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, text

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def webhook_receiver():
    """An on-call webhook on loopback that keeps every JSON body posted to it."""
    received = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                received.append(json.loads(body))
            except ValueError:
                received.append({"unparsed": body.decode(errors="replace")})
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/hook/pretrial", received


def until(seconds, done):
    deadline = time.monotonic() + seconds
    while True:
        value = done()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def records(server, key, kind):
    status, body = server.request("GET", f"/v1/audit/records?kind={kind}", key)
    if status != 200:
        sys.exit(f"/v1/audit/records answered {status}: {body}")
    if isinstance(body, dict):
        return [body]
    return [json.loads(line) for line in body.splitlines() if line.strip()]


def fairness_of(status_body):
    for d in status_body.get("deployments", []):
        if d.get("deployment") == DEPLOYMENT:
            return d, (d.get("signals") or {}).get("fairness")
    return None, None


# ---------------------------------------------------------------------------------------------
# The run.


def fmt(x, digits=4):
    return "—" if x is None else f"{x:.{digits}f}"


def diff(a, b):
    if a is None and b is None:
        return 0.0
    if a is None or b is None:
        return float("inf")
    return abs(a - b)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--csv", default=DEFAULT_CSV, help="compas-two-years.csv (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=8, help="concurrent HTTP clients (default: %(default)s)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = ap.parse_args()

    started = time.monotonic()
    binary = build()
    built = time.monotonic()

    total, rows = load_rows(args.csv)
    expected = expected_rates(rows)
    print(f"rows: {total} in the CSV, {len(rows)} after ProPublica's filter (ProPublica: 6,172)")
    check(len(rows) == 6172, f"{len(rows)} rows after the filter, not 6,172")

    hook_server, hook_url, alerts = webhook_receiver()
    folder = tempfile.mkdtemp(prefix="gavel-compas-")
    server = None
    try:
        g = Gavel(binary, folder)
        admin = g.run(None, "init", ".").splitlines()[-1].strip()
        edit_contract(os.path.join(folder, "gavel.yaml"), hook_url)
        operator = g.key(admin, "olga", "operator")
        risk = g.key(admin, "rita", "approver", "risk")
        engineering = g.key(admin, "emil", "approver", "engineering")
        service = g.key(admin, "svc-pretrial", "service")
        auditor = g.key(admin, "audrey", "auditor")
        g.run(operator, "apply")
        with open(os.path.join(folder, "oversight.md"), "w") as f:
            f.write("A judge sees the score next to the case file and decides release; the score never decides alone.\n")
        # High tier: two approvers (risk, engineering), evidence of eval, bias and human
        # oversight, thresholds on accuracy, drift and fairness. No drift baseline is recorded,
        # so drift stays "insufficient"; accuracy 0.5 is "better than a coin".
        g.run(
            risk, "approve", DEPLOYMENT,
            "--population", "Defendants screened pre-trial in Broward County, FL, 2013-2014",
            "--expires", "90d", "--on-breach", "block",
            "--threshold", f"fairness={FAIRNESS_LIMIT}", "--threshold", "accuracy=0.5", "--threshold", "drift=0.25",
            "--evidence", f"eval={os.path.abspath(args.csv)}", "--evidence", f"bias={os.path.abspath(args.csv)}",
            "--evidence", "human_oversight=oversight.md",
        )
        g.run(engineering, "approve", DEPLOYMENT)
        server = Server(g, operator)
        ready = time.monotonic()
        print(f"gavel serve on {server.host}:{server.port}, scratch folder {folder}")

        # 1. Decide every row: the breach refuses decisions, so none may come after an outcome.
        def decide(row):
            request = {"deployment": DEPLOYMENT, "action": {"type": "task"}, "idempotency_key": f"compas-{row['id']}"}
            status, body = server.request("POST", "/v1/decide", service, request)
            return status, body

        with concurrent.futures.ThreadPoolExecutor(args.threads) as pool:
            decided = list(pool.map(decide, rows))
        verdicts = collections.Counter(b.get("verdict") if isinstance(b, dict) else s for s, b in decided)
        allowed = all(s == 200 and b.get("verdict") == "ALLOW" for s, b in decided)
        if not check(allowed, f"every row must be ALLOW before any outcome: {dict(verdicts)}"):
            bad = next((s, b) for s, b in decided if s != 200 or b.get("verdict") != "ALLOW")
            print(f"first refusal: {bad}", file=sys.stderr)
            raise SystemExit(1)
        t_decided = time.monotonic()
        check(not alerts, "an alert before any outcome")

        # 2. Report every outcome.
        def report(pair):
            row, (_, decision) = pair
            outcome = {
                "decision_id": decision["decision_id"],
                "deployment": DEPLOYMENT,
                "usage": {"prompt_tokens": 0, "completion_tokens": 0},
                "success": True,
                "prediction": row["prediction"],
                "label": 1 if row["label"] else 0,
                "group": row["group"],
            }
            return server.request("POST", "/v1/outcome", service, outcome)

        with concurrent.futures.ThreadPoolExecutor(args.threads) as pool:
            reported = list(pool.map(report, zip(rows, decided)))
        bad = [(s, b) for s, b in reported if s != 200]
        check(not bad, f"{len(bad)} outcome(s) refused, first: {bad[:1]}")
        t_reported = time.monotonic()

        # 3. What gavel reports, once every outcome is in the stored rollups (written each second).
        snapshot = {}

        def complete():
            status, body = server.request("GET", "/v1/status", auditor)
            if status != 200:
                return False
            d, f = fairness_of(body)
            snapshot.update(deployment=d, fairness=f)
            return f is not None and sum(grp["n"] for grp in f["groups"]) == len(rows)

        check(until(15, complete), "/v1/status never counted every outcome")
        got = snapshot.get("fairness") or {"groups": []}
        got_groups = {grp["group"]: grp for grp in got["groups"]}

        print()
        print(f"## COMPAS two-year, {len(rows)} defendants: gavel's /v1/status against the CSV")
        print()
        print("prediction = score_text Medium or High; label = two_year_recid; group = race; "
              f"groups of fewer than {MIN_GROUP_SIZE} are reported, not compared")
        print()
        print("| group | n gavel | n csv | compared | selection gavel | selection csv | FPR gavel | FPR csv | FNR gavel | FNR csv | max abs diff |")
        print("|---|---:|---:|:---:|---:|---:|---:|---:|---:|---:|---:|")
        names = sorted(set(expected["groups"]) | set(got_groups), key=lambda g: -expected["groups"].get(g, {"n": 0})["n"])
        for name in names:
            e = expected["groups"].get(name)
            a = got_groups.get(name)
            if e is None or a is None:
                check(False, f"group {name!r} only in {'gavel' if e is None else 'the CSV'}")
                continue
            worst = max(
                diff(a["n"], e["n"]),
                *(diff(a[k], e[k]) for k in ("selection_rate", "false_positive_rate", "false_negative_rate")),
            )
            check(worst <= TOLERANCE, f"group {name}: gavel and the CSV differ by {worst}")
            check(a["compared"] == e["compared"], f"group {name}: compared {a['compared']} but n = {e['n']}")
            print(
                f"| {name} | {a['n']} | {e['n']} | {'yes' if a['compared'] else 'no'} "
                f"| {fmt(a['selection_rate'])} | {fmt(e['selection_rate'])} "
                f"| {fmt(a['false_positive_rate'])} | {fmt(e['false_positive_rate'])} "
                f"| {fmt(a['false_negative_rate'])} | {fmt(e['false_negative_rate'])} | {worst:.1e} |"
            )
        print()
        print("| across compared groups | gavel | csv | abs diff |")
        print("|---|---:|---:|---:|")
        for key, label in (
            ("demographic_parity_ratio", "demographic-parity ratio (min / max selection rate)"),
            ("demographic_parity_difference", "demographic-parity difference (max - min)"),
            ("equal_opportunity_difference", "equal-opportunity difference (max - min TPR)"),
        ):
            a, e = got.get(key), expected[key]
            d = diff(a, e)
            check(d <= TOLERANCE, f"{key}: gavel {a}, CSV {e}")
            print(f"| {label} | {fmt(a, 6)} | {fmt(e, 6)} | {d:.1e} |")
        ratio = expected["demographic_parity_ratio"]
        print()
        print(f"four-fifths rule: ratio {ratio:.4f} {'<' if ratio < FAIRNESS_LIMIT else '>='} {FAIRNESS_LIMIT} "
              f"-> {'breach expected' if ratio < FAIRNESS_LIMIT else 'no breach expected'}")
        check(ratio < FAIRNESS_LIMIT, "the data should breach the four-fifths rule")

        # 4. The breach: in the ledger, in force on the next decide, alerted once.
        breaches = until(10, lambda: [r for r in records(server, auditor, "breach")
                                      if (r.get("body") or {}).get("deployment") == DEPLOYMENT])
        check(len(breaches) == 1, f"{len(breaches)} breach record(s) in the ledger, expected 1")
        status, refused = server.request("POST", "/v1/decide", service,
                                         {"deployment": DEPLOYMENT, "action": {"type": "task"}, "idempotency_key": "compas-after"})
        code = (refused.get("reasons") or [{}])[0].get("code") if isinstance(refused, dict) else None
        check(status == 403 and refused.get("verdict") == "BLOCK" and code == "contract.breach.fairness",
              f"the next decide got {status} {code}, expected 403 BLOCK contract.breach.fairness")
        _, after = server.request("GET", "/v1/status", auditor)
        state = (fairness_of(after)[0] or {}).get("state")
        check(state == "blocked", f"/v1/status says {state}, expected blocked")

        until(10, lambda: alerts)
        time.sleep(2)  # a second alert would come within the next tick or two
        check(len(alerts) == 1, f"{len(alerts)} webhook alert(s), expected exactly 1")
        alert = alerts[0] if alerts else {}
        want = {"deployment": DEPLOYMENT, "signal": "fairness", "threshold": "fairness", "limit": FAIRNESS_LIMIT,
                "approved_by": ["rita", "emil"], "owner": OWNER, "runbook": RUNBOOK}
        for k, v in want.items():
            check(alert.get(k) == v, f"alert {k} = {alert.get(k)!r}, expected {v!r}")
        value = alert.get("value")
        check(isinstance(value, (int, float)) and value < FAIRNESS_LIMIT, f"alert value {value!r} not below {FAIRNESS_LIMIT}")
        breach = breaches[0] if breaches else {}
        check(breach.get("id") == alert.get("breach_id"), "the alert and the ledger name different breaches")
        delivered = until(10, lambda: [r for r in records(server, auditor, "admin")
                                       if (r.get("body") or {}).get("action") == "alert_delivered"])
        check(len(delivered or []) >= 1, "no alert_delivered record in the ledger")

        print()
        print("## The breach")
        print()
        print(f"- next decide: HTTP {status}, {refused.get('verdict')} `{code}`: {(refused.get('reasons') or [{}])[0].get('message')}")
        print(f"- /v1/status state: {state}")
        print(f"- webhook alerts received: {len(alerts)}; "
              + ", ".join(f"{k}={json.dumps(alert.get(k))}" for k in ("deployment", "signal", "value", "limit", "samples", "approved_by", "owner", "on_breach")))
        print(f"- alert summary: {alert.get('summary')}")
        print(f"- ledger: {len(breaches)} `breach` record ({breach.get('id')}), "
              f"{len(delivered or [])} `admin` alert_delivered record")
        print(f"- the value in the alert is the ratio when the breach was found, on the {alert.get('samples')} "
              "outcomes of compared groups counted by then; the table above is over all outcomes")

        # Decisions and outcomes are in the ledger too, and it verifies.
        verify_status, verified = server.request("POST", "/v1/audit/verify", auditor)
        check(verify_status == 200, f"/v1/audit/verify answered {verify_status}: {verified}")
    finally:
        if server:
            server.stop()
        hook_server.shutdown()
        if args.keep or failures:
            print(f"scratch folder kept: {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)

    end = time.monotonic()
    print()
    print(f"wall time: {end - started:.1f} s (build {built - started:.1f} s, setup {ready - built:.1f} s, "
          f"{len(rows)} decides {t_decided - ready:.1f} s = {len(rows) / (t_decided - ready):.0f}/s, "
          f"{len(rows)} outcomes {t_reported - t_decided:.1f} s = {len(rows) / (t_reported - t_decided):.0f}/s, "
          f"checks {end - t_reported:.1f} s; {args.threads} threads)")
    if failures:
        print(f"\n{len(failures)} check(s) FAILED:")
        for f in failures:
            print(f"- {f}")
        return 1
    print("\nall checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
