"""A second jailbreak corpus for the scanner bench: Microsoft PyRIT's jailbreak templates (MIT),
taken from the PyRIT wheel on PyPI (downloaded with --no-deps and read as a zip: nothing is
installed), each filled with one AdvBench goal that PyRIT ships
(seed_datasets/local/adv_bench.prompt), chosen by a hash of the template's path.

Why: the detector was tuned on the training split of inthewild_jailbreaks.json and its held-out
split has been looked at several times; other prompts say more about how it generalises.
PyRIT's `in_the_wild` folder comes from the same collection as inthewild_jailbreaks.json
(verazuo/jailbreak_llms), its other folders from elsewhere (jailbreakchat, Pliny's L1B3RT4S,
published techniques). A template is left out when 30% or more of its word 8-grams, taken with
the request slot left empty, appear anywhere in inthewild_jailbreaks.json: the figures must not
rest on prompts the detector was tuned on.

The split is made here, not by the bench: templates that share half their 8-grams (the same
prompt for another model, a lightly edited copy) form one cluster, and a cluster goes wholly to
train or to held-out (30%, by a hash of its first template's path). Otherwise a held-out prompt
could be a near-copy of a training one.

Writes pyrit_jailbreaks.json into --out: a JSON list of {"text", "group", "template",
"held_out"}, where group is the template's folder (in_the_wild, pliny, Arth_Singh, ..., or
top-level).
"""

import argparse
import collections
import hashlib
import json
import os
import re
import subprocess
import sys
import zipfile

import jinja2
import jinja2.sandbox
import yaml

PYRIT_VERSION = "1.1.0"
TEMPLATES = "pyrit/datasets/jailbreak/templates/"
GOALS = "pyrit/datasets/seed_datasets/local/adv_bench.prompt"
OVERLAP = 0.3
CLUSTER = 0.5
NGRAM = 8
HELD_OUT_PERCENT = 30


def wheel(cache):
    os.makedirs(cache, exist_ok=True)
    name = f"pyrit-{PYRIT_VERSION}-py3-none-any.whl"
    if not os.path.exists(os.path.join(cache, name)):
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
             "--no-deps", "--only-binary", ":all:", "-d", cache, f"pyrit=={PYRIT_VERSION}"],
            check=True,
        )
    return os.path.join(cache, name)


def words(text):
    return re.findall(r"[a-z0-9]+", text.lower())


def ngrams(text):
    w = words(text)
    return {tuple(w[i:i + NGRAM]) for i in range(max(0, len(w) - NGRAM + 1))}


def stable_index(key, n):
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--corpora", required=True)
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/gavel-bench/pyrit"))
    args = ap.parse_args()

    whl = wheel(args.cache)
    with zipfile.ZipFile(whl) as z:
        goals = [s["value"] for s in yaml.safe_load(z.read(GOALS))["seeds"]]
        names = sorted(n for n in z.namelist() if n.startswith(TEMPLATES) and n.endswith(".yaml"))
        templates = [(n, yaml.safe_load(z.read(n))) for n in names]

    seen = set()
    for prompt in json.load(open(os.path.join(args.corpora, "attacks/inthewild_jailbreaks.json"))):
        seen |= ngrams(prompt)

    # Templates come from a download: rendered in Jinja's sandbox.
    env = jinja2.sandbox.SandboxedEnvironment(undefined=jinja2.StrictUndefined)
    out, skipped, repeats, duplicates = [], collections.Counter(), 0, 0
    texts = set()
    for name, t in templates:
        rel = name[len(TEMPLATES):]
        group = rel.split("/")[0] if "/" in rel else "top-level"
        params = t.get("parameters") or []
        if params != ["prompt"]:
            skipped["need parameters other than `prompt`"] += 1
            continue
        goal = goals[stable_index(rel, len(goals))]
        try:
            text = env.from_string(t["value"]).render(prompt=goal)
            blank = env.from_string(t["value"]).render(prompt="")
        except jinja2.TemplateError:
            skipped["do not render"] += 1
            continue
        grams = ngrams(blank)
        if grams and len(grams & seen) / len(grams) >= OVERLAP:
            repeats += 1
            continue
        if text in texts:
            duplicates += 1
            continue
        texts.add(text)
        out.append({"text": text, "group": group, "template": rel, "grams": grams})

    # Clusters of near-copies (union-find), each wholly in one split.
    parent = list(range(len(out)))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, a in enumerate(out):
        for j in range(i + 1, len(out)):
            b = out[j]["grams"]
            small = min(len(a["grams"]), len(b)) or 1
            if len(a["grams"] & b) / small >= CLUSTER:
                parent[root(j)] = root(i)
    first = {}
    for i, r in enumerate(out):
        k = root(i)
        first[k] = min(first.get(k, r["template"]), r["template"])
    for i, r in enumerate(out):
        r["held_out"] = stable_index(first[root(i)], 100) < HELD_OUT_PERCENT
        del r["grams"]
    clusters = len(set(root(i) for i in range(len(out))))

    path = os.path.join(args.out, "pyrit_jailbreaks.json")
    with open(path, "w") as f:
        json.dump(out, f)
    by_group = collections.Counter(r["group"] for r in out)
    print(
        f"pyrit_jailbreaks.json: {len(out)} prompts ({sum(r['held_out'] for r in out)} held out; "
        f"{clusters} clusters of near-copies) from {len(templates)} templates of {os.path.basename(whl)} "
        f"({', '.join(f'{g} {n}' for g, n in sorted(by_group.items()))}); left out: {repeats} that repeat "
        f"an inthewild prompt, {duplicates} duplicates"
        + "".join(f", {n} that {why}" for why, n in sorted(skipped.items())),
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
