"""Peers on the same data as gavel's scanbench: Presidio (PII) and detect-secrets (secrets).

Reads pii.jsonl, secrets.jsonl and gavel.json (written by scanbench) from --data, and the
arena-hard prompts from --corpora. Prints precision / recall per entity and throughput for each
tool, and gavel's figures and ratios next to them. Run through bench/scanners/run.sh.

Presidio runs with its pattern and checksum recognizers on a blank spaCy pipeline (no spaCy
model can be downloaded here), so name and location entities are out for it as for gavel.
"""

import argparse
import json
import os
import time

ENTITY_MAP = {
    "EMAIL_ADDRESS": "EMAIL",
    "PHONE_NUMBER": "PHONE",
    "CREDIT_CARD": "CARD",
    "IBAN_CODE": "IBAN",
    "US_SSN": "SSN",
    "DATE_TIME": "DOB",
}


def load_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def presidio_analyzer():
    import spacy
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import SpacyNlpEngine

    class BlankSpacy(SpacyNlpEngine):
        def load(self):
            self.nlp = {"en": spacy.blank("en")}

    engine = BlankSpacy(models=[{"lang_code": "en", "model_name": "blank"}])
    engine.load()
    return AnalyzerEngine(nlp_engine=engine, supported_languages=["en"])


def byte_span(text, start, end):
    return len(text[:start].encode()), len(text[:end].encode())


def prf(tp, fp, fn):
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return p, r


def run_presidio(rows):
    analyzer = presidio_analyzer()
    entities = ["EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "IP_ADDRESS", "DATE_TIME"]
    analyzer.analyze(text="warm up jane@example.com 4111 1111 1111 1111", language="en", entities=entities)
    stats = {}
    started = time.perf_counter()
    results = [analyzer.analyze(text=r["text"], language="en", entities=entities) for r in rows]
    elapsed = time.perf_counter() - started
    for row, res in zip(rows, results):
        text = row["text"]
        pred = []
        for r in res:
            s, e = byte_span(text, r.start, r.end)
            if r.entity_type == "IP_ADDRESS":
                ty = "IPV6" if ":" in text[r.start : r.end] else "IPV4"
            else:
                ty = ENTITY_MAP.get(r.entity_type)
            if ty:
                pred.append((ty, s, e))
        gold = [(g["type"], g["start"], g["end"]) for g in row["entities"]]
        for ty, s, e in pred:
            st = stats.setdefault(ty, [0, 0, 0])
            if any(gt == ty and s < ge and gs < e for gt, gs, ge in gold):
                st[0] += 1
            else:
                st[1] += 1
        for gt, gs, ge in gold:
            if not any(ty == gt and s < ge and gs < e for ty, s, e in pred):
                stats.setdefault(gt, [0, 0, 0])[2] += 1
    return stats, elapsed * 1e6 / len(rows)


def detect_secrets_values(text, plugins, scratch):
    """Secret values detect-secrets finds in `text`, scanned as a file (what its CLI and
    pre-commit hook do). Its ad-hoc `scan_line` treats every word of free text as a candidate
    value and flags ordinary words with the entropy plugins, so it is not used here."""
    from detect_secrets import SecretsCollection
    from detect_secrets.settings import transient_settings

    path = os.path.join(scratch, "sample.txt")
    with open(path, "w") as f:
        f.write(text)
    with transient_settings({"plugins_used": plugins}):
        collection = SecretsCollection()
        collection.scan_file(path)
    return [secret.secret_value for _, secret in collection if secret.secret_value]


def run_detect_secrets(rows, arena, with_entropy, scratch):
    from detect_secrets.settings import default_settings

    with default_settings() as settings:
        plugins = [{"name": name} for name in settings.plugins]
    if not with_entropy:
        plugins = [p for p in plugins if "HighEntropy" not in p["name"]]
    per_kind = {}
    started = time.perf_counter()
    for r in rows:
        values = detect_secrets_values(r["text"], plugins, scratch)
        gold = r["text"].encode()[r["start"] : r["end"]].decode()
        hit = any(v in gold or gold in v for v in values)
        k = per_kind.setdefault(r["kind"], [0, 0])
        k[0] += int(hit)
        k[1] += 1
    elapsed = time.perf_counter() - started
    fp_prompts = sum(1 for p in arena if detect_secrets_values(p, plugins, scratch))
    return per_kind, fp_prompts, elapsed * 1e6 / len(rows)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--corpora", required=True)
    args = ap.parse_args()
    rows = load_jsonl(os.path.join(args.data, "pii.jsonl"))
    secrets = load_jsonl(os.path.join(args.data, "secrets.jsonl"))
    arena = [r["prompt"] for r in load_jsonl(os.path.join(args.corpora, "benign/arena_hard_v0.1_questions.jsonl"))]
    gavel = json.load(open(os.path.join(args.data, "gavel.json")))

    scratch = os.path.join(args.data, "detect-secrets")
    os.makedirs(scratch, exist_ok=True)
    stats, us_per_text = run_presidio(rows)
    gavel_us = gavel["pii_us_per_text"]
    print(f"\n## PII: Presidio (pattern recognizers, blank spaCy) vs gavel, {len(rows)} Faker texts")
    print("| entity | Presidio P | Presidio R | gavel P | gavel R |")
    print("|---|---|---|---|---|")
    for ty in sorted(set(stats) | set(gavel["pii"])):
        p, r = prf(*stats.get(ty, [0, 0, 0]))
        g = gavel["pii"].get(ty, {"precision": 0.0, "recall": 0.0})
        note = " (Presidio: any DATE_TIME)" if ty == "DOB" else ""
        print(f"| {ty}{note} | {p:.3f} | {r:.3f} | {g['precision']:.3f} | {g['recall']:.3f} |")
    print(
        f"throughput: Presidio {us_per_text:.0f} us/text, gavel {gavel_us:.2f} us/text (full scan), "
        f"gavel is {us_per_text / gavel_us:.0f}x faster"
    )

    print(f"\n## Secrets: detect-secrets vs gavel ({len(secrets)} generated fakes; arena-hard false positives)")
    g = gavel["secrets"]
    for with_entropy in (True, False):
        per_kind, fp, us = run_detect_secrets(secrets, arena, with_entropy, scratch)
        hit = sum(v[0] for v in per_kind.values())
        total = sum(v[1] for v in per_kind.values())
        label = "with" if with_entropy else "without"
        print(f"detect-secrets (file scan, includes writing the file) {label} entropy plugins: recall {100 * hit / total:.1f}% ({hit}/{total}), "
              f"arena-hard prompts flagged {fp}/{len(arena)}, {us:.0f} us/text")
        print("  per kind: " + ", ".join(f"{k} {v[0]}/{v[1]}" for k, v in sorted(per_kind.items())))
    print(f"gavel: recall {g['recall']:.1f}%, arena-hard prompts flagged {g['arena_fp_prompts']}/{len(arena)}, "
          f"{g['us_per_text']:.2f} us/text (first pass, cold)")


if __name__ == "__main__":
    main()
