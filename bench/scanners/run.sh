#!/usr/bin/env bash
# Scanner quality bench, one command: builds the labelled sets with Faker (seeded), runs gavel's
# scanbench on them and on the third-party corpora, then runs Presidio and detect-secrets on the
# same data and prints the side-by-side table with ratios to gavel.
#
#   bench/scanners/run.sh            (from the repository root)
#
# Needs: python3 (3.10+), PyPI access for the first run (installs into bench/.venv), cargo.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
venv="$root/bench/.venv"
data="$root/target/scanbench"
mkdir -p "$data"

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c "import faker, presidio_analyzer, detect_secrets, spacy, jinja2, yaml" 2>/dev/null; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r bench/scanners/requirements.txt
fi

"$venv/bin/python" bench/scanners/gen_data.py --out "$data"
# A second jailbreak corpus (PyRIT's templates, from its wheel on PyPI; see the script).
"$venv/bin/python" bench/scanners/pyrit_jailbreaks.py --out "$data" --corpora ../shared/corpora
cargo run --quiet --release -p gavel-scan --example scanbench -- --data "$data" --corpora ../shared/corpora
# Presidio's e-mail recognizer would fetch the public-suffix list: keep it offline.
TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS="" TLDEXTRACT_CACHE="$data/tldextract" \
  "$venv/bin/python" bench/scanners/peers.py --data "$data" --corpora ../shared/corpora
