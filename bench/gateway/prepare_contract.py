#!/usr/bin/env python3
"""Edit the gavel.yaml that `gavel init` wrote, for the load benchmark only:
- point the endpoint used by deployment DEPLOYMENT at the local fake upstream (keeping its
  location and region);
- raise the budgets a sustained load would hit (principal requests per window, use-case tokens
  and USD), so that the benchmark measures ruling and forwarding, not refusals.
Line-based edits, so the rest of the file (and its comments) stays as written. Fails loudly when
a pattern is not found, rather than benchmarking a contract it did not mean to.

Usage: prepare_contract.py GAVEL_YAML UPSTREAM_URL [DEPLOYMENT]
"""
import re
import sys

PRINCIPAL_REQUESTS = "10000000"
USE_CASE_TOKENS = "1000000000"
USE_CASE_USD = "1000000"


def fail(msg):
    sys.stderr.write("prepare_contract.py: %s\n" % msg)
    sys.exit(1)


def indent(line):
    return len(line) - len(line.lstrip(" "))


def block_after(lines, i):
    """Indices of the lines nested under line i (more indented, or blank)."""
    base = indent(lines[i])
    j = i + 1
    out = []
    while j < len(lines):
        s = lines[j]
        if s.strip() and not s.lstrip().startswith("#") and indent(s) <= base:
            break
        out.append(j)
        j += 1
    return out


def main():
    path, url = sys.argv[1], sys.argv[2]
    deployment = sys.argv[3] if len(sys.argv) > 3 else "kb-search-v1"
    lines = open(path).read().split("\n")

    # 1. the deployment's endpoint name (block form `endpoint: NAME` or flow form `{ ..., endpoint: NAME, ... }`)
    endpoint = None
    for i, s in enumerate(lines):
        m = re.match(r"^\s+%s:\s*(\{.*)?$" % re.escape(deployment), s)
        if not m:
            continue
        texts = [s] + [lines[j] for j in block_after(lines, i)]
        for t in texts:
            e = re.search(r"\bendpoint:\s*([A-Za-z0-9_.-]+)", t)
            if e:
                endpoint = e.group(1)
                break
        if endpoint:
            break
    if not endpoint:
        fail("no `endpoint:` found for deployment %s" % deployment)

    # 2. that endpoint becomes an OpenAI-compatible HTTP endpoint at the upstream's url, with its
    #    location and region kept. In flow form (`NAME: { ... }` on one line, as in the example)
    #    the line is rebuilt, which also drops `kind: mock`, `mock: {...}` and `api_key_env`
    #    (the fake upstream needs no key); in block form only an existing `url:` is replaced.
    done = False
    for i, s in enumerate(lines):
        m = re.match(r"^(\s+%s:\s*)(\{.*)?$" % re.escape(endpoint), s)
        if not m:
            continue
        if m.group(2):
            loc = re.search(r"\blocation:\s*([A-Za-z_]+)", s)
            reg = re.search(r'\bregion:\s*("[^"]*"|[^,}\s]+)', s)
            if not (loc and reg):
                fail("endpoint %s: no location/region on its line: %s" % (endpoint, s.strip()))
            lines[i] = '%s{ url: "%s", location: %s, region: %s }' % (m.group(1), url, loc.group(1), reg.group(1))
            done = True
            break
        for j in block_after(lines, i):
            if re.match(r"^\s+(kind:\s*mock|mock:)", lines[j]):
                fail("endpoint %s is a block-form mock endpoint; rewrite it by hand" % endpoint)
        for j in block_after(lines, i):
            if re.match(r"^\s+url:", lines[j]):
                lines[j] = re.sub(r'url:\s*("[^"]*"|\S+)', 'url: "%s"' % url, lines[j], count=1)
                done = True
                break
        if done:
            break
    if not done:
        fail("no url found for endpoint %s" % endpoint)

    # 3. budgets (flow-form budget lines, as in the example contract)
    counts = {"principal requests": 0, "use_case tokens": 0, "use_case usd": 0}
    for i, s in enumerate(lines):
        if not re.search(r"\bscope:\s*principal\b", s) and not re.search(r"\bscope:\s*use_case\b", s):
            continue
        if re.search(r"\bscope:\s*principal\b", s) and re.search(r"\brequests:\s*\d", s):
            lines[i] = re.sub(r"\brequests:\s*[\d_.]+", "requests: " + PRINCIPAL_REQUESTS, s)
            counts["principal requests"] += 1
        if re.search(r"\bscope:\s*use_case\b", s):
            t = lines[i]
            if re.search(r"\btokens:\s*\d", t):
                t = re.sub(r"\btokens:\s*[\d_.]+", "tokens: " + USE_CASE_TOKENS, t)
                counts["use_case tokens"] += 1
            if re.search(r"\busd:\s*\d", t):
                t = re.sub(r"\busd:\s*[\d_.]+", "usd: " + USE_CASE_USD, t)
                counts["use_case usd"] += 1
            lines[i] = t
    if counts["principal requests"] == 0:
        fail("no `scope: principal` budget with `requests:` found to raise")
    open(path, "w").write("\n".join(lines))
    print("deployment %s -> endpoint %s -> %s; raised: %s" % (
        deployment, endpoint, url, ", ".join("%s x%d" % kv for kv in counts.items())))


if __name__ == "__main__":
    main()
