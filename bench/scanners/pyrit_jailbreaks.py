"""A second jailbreak corpus for the scanner bench, for validation only: Microsoft PyRIT's
jailbreak templates (MIT), taken from the PyRIT wheel on PyPI (downloaded with --no-deps and read
as a zip: nothing is installed), each filled with one AdvBench goal that PyRIT ships
(seed_datasets/local/adv_bench.prompt), chosen by a hash of the template's path.

Why: the detector was tuned on the training split of inthewild_jailbreaks.json and its held-out
split has been looked at several times. A corpus collected by other people, never used for tuning,
says more about how the detector generalises. Templates that repeat an inthewild prompt (half or
more of their word 8-grams appear in one) are left out and counted, so that the figure does not
rest on prompts the detector was tuned on.

Writes pyrit_jailbreaks.json into --out: a JSON list of {"text", "group", "template"}, where
group is the template's folder (in_the_wild, pliny, Arth_Singh, ..., or top-level).
"""

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import zipfile

import jinja2
import yaml

PYRIT = "pyrit==1.1.0"
TEMPLATES = "pyrit/datasets/jailbreak/templates/"
GOALS = "pyrit/datasets/seed_datasets/local/adv_bench.prompt"
OVERLAP = 0.5
NGRAM = 8


def wheel(cache):
    os.makedirs(cache, exist_ok=True)
    found = [f for f in os.listdir(cache) if f.startswith("pyrit-") and f.endswith(".whl")]
    if not found:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
             "--no-deps", "--only-binary", ":all:", "-d", cache, PYRIT],
            check=True,
        )
        found = [f for f in os.listdir(cache) if f.startswith("pyrit-") and f.endswith(".whl")]
    return os.path.join(cache, sorted(found)[-1])


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

    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    out, skipped, repeats, duplicates = [], {}, 0, 0
    texts = set()
    for name, t in templates:
        rel = name[len(TEMPLATES):]
        group = rel.split("/")[0] if "/" in rel else "top-level"
        params = t.get("parameters") or []
        if params != ["prompt"]:
            skipped["need parameters other than `prompt`"] = skipped.get("need parameters other than `prompt`", 0) + 1
            continue
        goal = goals[stable_index(rel, len(goals))]
        try:
            text = env.from_string(t["value"]).render(prompt=goal)
        except jinja2.TemplateError:
            skipped["do not render"] = skipped.get("do not render", 0) + 1
            continue
        grams = ngrams(text)
        if grams and len(grams & seen) / len(grams) >= OVERLAP:
            repeats += 1
            continue
        if text in texts:
            duplicates += 1
            continue
        texts.add(text)
        out.append({"text": text, "group": group, "template": rel})

    path = os.path.join(args.out, "pyrit_jailbreaks.json")
    with open(path, "w") as f:
        json.dump(out, f)
    by_group = {}
    for r in out:
        by_group[r["group"]] = by_group.get(r["group"], 0) + 1
    print(
        f"pyrit_jailbreaks.json: {len(out)} prompts from {len(templates)} templates of {os.path.basename(whl)} "
        f"({', '.join(f'{g} {n}' for g, n in sorted(by_group.items()))}); left out: {repeats} that repeat "
        f"an inthewild prompt, {duplicates} duplicates"
        + "".join(f", {n} that {why}" for why, n in sorted(skipped.items())),
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
