"""Labelled PII and secrets sets for the scanner bench, generated with Faker (seeded).

PII: realistic short texts (support tickets, HR notes, invoices, server logs) with labelled
entity spans, plus unlabelled numbers that are not PII (order ids, prices, dates without a
birth cue, times, versions, ZIP codes, tracking numbers) so that precision means something.
Names and postal addresses appear in the texts but are not labelled: gavel does not detect them
(see docs/scanners.md), and neither do the peers' pattern recognizers.

Secrets: fake keys in the formats vendors document, built here from random characters, each in
the kind of text it turns up in (config files, shell, code, HTTP headers).

Writes pii.jsonl and secrets.jsonl into --out.
"""

import argparse
import base64
import json
import os
import random
import string

from faker import Faker

SEED = 20261122
N_PII = 2000
N_SECRETS_PER_KIND = 40


def pii_set(rng):
    us = Faker("en_US")
    locales = {
        "en_GB": Faker("en_GB"),
        "de_DE": Faker("de_DE"),
        "fr_FR": Faker("fr_FR"),
        "nl_NL": Faker("nl_NL"),
        "es_ES": Faker("es_ES"),
    }
    for i, f in enumerate([us, *locales.values()]):
        f.seed_instance(SEED + i)

    def card():
        kind = rng.choice(["visa16", "mastercard", "amex", "discover", "jcb"])
        num = us.credit_card_number(card_type=kind)
        style = rng.random()
        if style < 0.4:
            return num
        sep = " " if style < 0.8 else "-"
        if len(num) == 15:
            return sep.join([num[:4], num[4:10], num[10:]])
        return sep.join(num[i : i + 4] for i in range(0, len(num), 4))

    def iban():
        f = rng.choice(list(locales.values()))
        raw = f.iban()
        if rng.random() < 0.5:
            return " ".join(raw[i : i + 4] for i in range(0, len(raw), 4))
        return raw

    def phone():
        if rng.random() < 0.75:
            return us.phone_number()
        return rng.choice(list(locales.values())).phone_number()

    def dob():
        d = us.date_of_birth(minimum_age=18, maximum_age=90)
        fmt = rng.choice(["%Y-%m-%d", "%m/%d/%Y", "%d.%m.%Y", "%B %d, %Y", "%d %B %Y"])
        return d.strftime(fmt)

    makers = {
        "EMAIL": lambda: rng.choice([us.email(), us.company_email(), us.free_email()]),
        "PHONE": phone,
        "CARD": card,
        "IBAN": iban,
        "SSN": us.ssn,
        "IPV4": lambda: rng.choice([us.ipv4(), us.ipv4_private(), us.ipv4_public()]),
        "IPV6": us.ipv6,
        "DOB": dob,
    }

    def distractor():
        return rng.choice(
            [
                f"order #{rng.randint(100000, 99999999)}",
                f"${rng.randint(1, 99999):,}.{rng.randint(0, 99):02d}",
                us.date(pattern=rng.choice(["%Y-%m-%d", "%m/%d/%Y", "%d %B %Y"])),
                us.time(pattern="%H:%M"),
                f"v{rng.randint(0, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 99)}",
                f"ZIP {us.zipcode()}",
                f"ticket INC{rng.randint(1000000, 9999999)}",
                f"tracking 1Z{''.join(rng.choices(string.ascii_uppercase + string.digits, k=16))}",
                f"{rng.randint(2, 99)}% of {rng.randint(100, 5000)} users",
                f"invoice INV-{rng.randint(2019, 2026)}-{rng.randint(1, 9999):04d}",
                f"room {rng.randint(100, 999)}",
                f"{rng.randint(1, 9)}.{rng.randint(0, 9)} GB",
            ]
        )

    templates = [
        ("Hi, this is {name}. Please call me back at {PHONE} or write to {EMAIL} about {d}.", ["PHONE", "EMAIL"]),
        ("Customer {name} ({EMAIL}) reported a failed payment with card {CARD} on {d}.", ["EMAIL", "CARD"]),
        ("Employee record: {name}, SSN {SSN}, date of birth {DOB}, {d}.", ["SSN", "DOB"]),
        ("Please wire the refund to IBAN {IBAN} (account holder {name}), reference {d}.", ["IBAN"]),
        ("{d}: login for {EMAIL} from {IPV4} blocked after 5 attempts.", ["EMAIL", "IPV4"]),
        ("sshd[{pid}]: Accepted publickey for deploy from {IPV6} port {port} ssh2 ({d})", ["IPV6"]),
        ("Patient {name}, born {DOB}, contact number {PHONE}. Next visit: {d}.", ["DOB", "PHONE"]),
        ("Ship to {name}, {address}. Questions: {PHONE}. Ref {d}.", ["PHONE"]),
        ("Card on file: {CARD}. Billing email {EMAIL}. Amount due {d}.", ["CARD", "EMAIL"]),
        ("Upstream {IPV4} returned 502 at {d}; fallback to {IPV6}.", ["IPV4", "IPV6"]),
        ("New hire {name}: DOB {DOB}; SSN: {SSN}; phone {PHONE}.", ["DOB", "SSN", "PHONE"]),
        ("Meeting notes ({d}): {name} will send the contract to {EMAIL} by Friday.", ["EMAIL"]),
        ("Payout account {IBAN}, contact {EMAIL}, {d}.", ["IBAN", "EMAIL"]),
        ("Our office at {address} is open until 6pm; {d}.", []),
        ("Deployment {d} finished; {d2} and no errors.", []),
    ]

    rows = []
    for _ in range(N_PII):
        tmpl, kinds = rng.choice(templates)
        values = {k: makers[k]() for k in kinds}
        fields = {
            "name": us.name(),
            "address": us.address().replace("\n", ", "),
            "d": distractor(),
            "d2": distractor(),
            "pid": rng.randint(1000, 65000),
            "port": rng.randint(1024, 65535),
        }
        text = ""
        entities = []
        rest = tmpl
        while "{" in rest:
            pre, _, after = rest.partition("{")
            key, _, rest = after.partition("}")
            text += pre
            if key in values:
                start = len(text.encode())
                text += values[key]
                entities.append({"type": key, "start": start, "end": len(text.encode())})
            else:
                text += str(fields[key])
        text += rest
        rows.append({"text": text, "entities": entities})
    return rows


def chars(rng, alphabet, n):
    return "".join(rng.choice(alphabet) for _ in range(n))


def secrets_set(rng):
    upper_digit = string.ascii_uppercase + "234567"
    alnum = string.ascii_letters + string.digits
    urlsafe = alnum + "-_"
    b64 = alnum + "+/"
    hexd = "0123456789abcdef"

    def jwt():
        header = base64.urlsafe_b64encode(b'{"alg":"RS256","typ":"JWT"}').rstrip(b"=").decode()
        payload = base64.urlsafe_b64encode(
            json.dumps({"sub": chars(rng, alnum, 12), "iat": rng.randint(1_600_000_000, 1_800_000_000)}).encode()
        ).rstrip(b"=").decode()
        return f"{header}.{payload}.{chars(rng, urlsafe, 86)}"

    def pem():
        body = "\n".join(chars(rng, b64, 64) for _ in range(rng.randint(4, 12)))
        kind = rng.choice(["RSA ", "EC ", "OPENSSH ", ""])
        return f"-----BEGIN {kind}PRIVATE KEY-----\n{body}\n-----END {kind}PRIVATE KEY-----"

    kinds = {
        "aws_access_key_id": (lambda: "AKIA" + chars(rng, upper_digit, 16), ["aws_access_key_id = {s}", "export AWS_ACCESS_KEY_ID={s}", "key: {s}"]),
        "aws_secret_access_key": (lambda: chars(rng, b64, 40), ["aws_secret_access_key = {s}", "AWS_SECRET_ACCESS_KEY=\"{s}\""]),
        "gcp_api_key": (lambda: "AIza" + chars(rng, urlsafe, 35), ["const apiKey = \"{s}\";", "https://maps.googleapis.com/maps/api/js?key={s}"]),
        "github_token": (lambda: rng.choice(["ghp_", "gho_", "ghs_"]) + chars(rng, alnum, 36), ["GITHUB_TOKEN={s}", "git clone https://{s}@github.com/acme/app.git", "token: {s}"]),
        "gitlab_token": (lambda: "glpat-" + chars(rng, urlsafe, 20), ["export GITLAB_TOKEN={s}", "private_token={s}"]),
        "slack_token": (lambda: "xoxb-" + chars(rng, string.digits, 12) + "-" + chars(rng, string.digits, 13) + "-" + chars(rng, alnum, 24), ["SLACK_BOT_TOKEN={s}", "slack_token: \"{s}\""]),
        "stripe_key": (lambda: "sk_live_" + chars(rng, alnum, 24), ["Stripe.api_key = '{s}'", "STRIPE_SECRET_KEY={s}"]),
        "openai_api_key": (lambda: "sk-proj-" + chars(rng, urlsafe, 120), ["OPENAI_API_KEY={s}", "client = OpenAI(api_key=\"{s}\")"]),
        "anthropic_api_key": (lambda: "sk-ant-api03-" + chars(rng, urlsafe, 93) + "AA", ["ANTHROPIC_API_KEY={s}", "x-api-key: {s}"]),
        "azure_storage_key": (lambda: chars(rng, b64, 86) + "==", ["DefaultEndpointsProtocol=https;AccountName=acme;AccountKey={s};EndpointSuffix=core.windows.net"]),
        "private_key": (pem, ["{s}", "key = \"\"\"\n{s}\n\"\"\""]),
        "jwt": (jwt, ["Authorization: Bearer {s}", "document.cookie = \"session={s}\""]),
        "password_assignment": (lambda: chars(rng, alnum, rng.randint(10, 16)) + rng.choice("!#%&*") + chars(rng, string.digits, 2), ["DB_PASSWORD=\"{s}\"", "password: '{s}'", "\"password\": \"{s}\""]),
        "generic_api_key": (lambda: chars(rng, hexd, 32), ["api_key = \"{s}\"", "\"apiKey\": \"{s}\"", "SECRET_TOKEN={s}"]),
        "url_credentials": (lambda: chars(rng, alnum, 14), ["DATABASE_URL=postgres://app:{s}@db.internal:5432/app", "redis://default:{s}@cache:6379/0"]),
    }
    rows = []
    for kind, (make, contexts) in kinds.items():
        for _ in range(N_SECRETS_PER_KIND):
            s = make()
            ctx = rng.choice(contexts)
            pre, _, post = ctx.partition("{s}")
            text = pre + s + post
            start = len(pre.encode())
            rows.append({"kind": kind, "text": text, "start": start, "end": start + len(s.encode())})
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = random.Random(SEED)
    Faker.seed(SEED)
    for name, rows in [("pii.jsonl", pii_set(rng)), ("secrets.jsonl", secrets_set(rng))]:
        with open(os.path.join(args.out, name), "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        print(f"wrote {len(rows)} rows to {os.path.join(args.out, name)}")


if __name__ == "__main__":
    main()
