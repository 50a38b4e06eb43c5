#!/usr/bin/env bash
# Gateway load benchmark: gavel serve against LiteLLM proxy and Portkey gateway, all in front of
# the same fast fake upstream (nginx returning a fixed chat.completion), loaded by oha at fixed
# rates and at saturation, with the same request body. One command:
#
#   bench/gateway/run.sh
#
# Everything runs in a scratch folder (mktemp), on 127.0.0.1 only, bounded in time; every process
# it starts is stopped by PID on exit. Tools are installed once into a cache folder:
#   nginx (Debian package), oha (crates.io, cargo install --locked), LiteLLM (PyPI, a venv),
#   Portkey gateway (npm). gavel is built with cargo build --release -p gavel-cli.
# Raw oha JSON stays in the scratch folder (printed at the end); the report is printed and
# written to bench/gateway/results.md.
#
# Options (environment):
#   RATES="30 50 500 2000 max"   rates (req/s) for direct, gavel and Portkey; `max` = no rate limit
#                             (30 and 50 are also LiteLLM's, so gavel is compared with it at each)
#   LITELLM_RATES="30 50 max" rates for LiteLLM (it saturates well below 500 req/s here)
#   DURATION=10s              length of each measured run (oha -z)
#   MIN_SAMPLES=1000          fixed-rate runs last long enough for this many requests (30 req/s:
#                             34 s), so that a p99 rests on ten requests, not three
#   CONCURRENCY=50            oha -c
#   PEERS=0                   skip LiteLLM and Portkey
#   TARGETS="direct gavel litellm portkey"   which targets, in this order
#   WARMUP=3s                 warm-up before each target's runs (Portkey: twice as long)
#   GAVEL_BUILD=0             do not build gavel; use target/release/gavel as it is
#   GAVEL=path/to/gavel       measure this gavel binary instead (with GAVEL_BUILD=0; see ab.sh)
#   FLOOR_SAMPLES=600         fdatasyncs timed in gavel's data folder at the lowest fixed rate,
#                             before gavel's runs (fsync_floor.py; 0 = skip): every decision waits
#                             for one, so it bounds gavel's added latency from below on this disk
#   CACHE=~/.cache/gavel-bench   where oha, the LiteLLM venv and Portkey are installed
#   KEEP=1                    keep the scratch folder (it is kept anyway; KEEP=0 removes it)
#   RESULTS=bench/gateway/results.md   where the report is written ("" = do not write)
#   QUIET_PCT=15 QUIET_MAX=120   before each run, wait (at most QUIET_MAX s) while other
#                             processes keep more than QUIET_PCT% of the machine busy
# A soak (memory and latency over time at one rate): TARGETS=gavel RATES="200 200 200 200 200" DURATION=60s
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
CACHE="${CACHE:-$HOME/.cache/gavel-bench}"
RATES="${RATES:-30 50 500 2000 max}"
LITELLM_RATES="${LITELLM_RATES:-30 50 max}"
DURATION="${DURATION:-10s}"
MIN_SAMPLES="${MIN_SAMPLES:-1000}"
FLOOR_SAMPLES="${FLOOR_SAMPLES:-600}"
CONCURRENCY="${CONCURRENCY:-50}"
PEERS="${PEERS:-1}"
WARMUP="${WARMUP:-3s}"
GAVEL_BUILD="${GAVEL_BUILD:-1}"
KEEP="${KEEP:-1}"
RESULTS="${RESULTS-$here/results.md}"
if [ -z "${TARGETS:-}" ]; then
  if [ "$PEERS" = "0" ]; then TARGETS="direct gavel"; else TARGETS="direct gavel litellm portkey"; fi
fi

secs() { # 10s -> 10, 2m -> 120, 15 -> 15
  local d="$1"
  case "$d" in
    *ms) echo 1 ;;
    *s) echo "${d%s}" ;;
    *m) echo $(( ${d%m} * 60 )) ;;
    *) echo "$d" ;;
  esac
}
DUR_S="$(secs "$DURATION")"

say() { printf '[gateway-bench %s] %s\n' "$(date +%T)" "$*" >&2; }

scratch="$(mktemp -d -t gavel-gateway-bench.XXXXXX)"
LOAD_START="$(cut -d' ' -f1-3 /proc/loadavg)"
BUSY_START="$(ps -eo pcpu=,ni=,comm= --sort=-pcpu | head -n 3 | awk '{printf "%s%s (%s%% CPU, nice %s)", sep, $3, $1, $2; sep=", "}')"
mkdir -p "$scratch/raw"
PIDS=()

descendants() { # PID -> PID and all its descendants, parents first
  local p="$1" c
  echo "$p"
  for c in $(pgrep -P "$p" 2>/dev/null || true); do descendants "$c"; done
}

stop_pid() { # stop a process we started and its descendants, by PID
  local p="$1" all q i
  kill -0 "$p" 2>/dev/null || return 0
  all="$(descendants "$p")"
  for q in $all; do kill -TERM "$q" 2>/dev/null || true; done
  for i in $(seq 1 50); do
    kill -0 "$p" 2>/dev/null || break
    sleep 0.1
  done
  for q in $all; do kill -KILL "$q" 2>/dev/null || true; done
  wait "$p" 2>/dev/null || true
}

cleanup() {
  local p
  for p in "${PIDS[@]}"; do stop_pid "$p"; done
  if [ "$KEEP" = "0" ]; then rm -rf "$scratch"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

rss_kb() { # resident memory of PID and its descendants, kB
  local total=0 q v
  for q in $(descendants "$1"); do
    v="$(awk '/^VmRSS:/ {print $2}' "/proc/$q/status" 2>/dev/null || true)"
    total=$(( total + ${v:-0} ))
  done
  echo "$total"
}

cpu_ticks() { # user+system CPU time of PID and its descendants, in clock ticks
  local total=0 q v
  for q in $(descendants "$1"); do
    v="$(awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$q/stat" 2>/dev/null || true)"
    total=$(( total + ${v:-0} ))
  done
  echo "$total"
}

NCPU="$(nproc)"
CLK="$(getconf CLK_TCK)"
QUIET_PCT="${QUIET_PCT:-15}"
QUIET_MAX="${QUIET_MAX:-120}"

machine_busy_ticks() { # busy CPU time of the whole machine (all cores), in ticks
  awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat
}

children_ticks() { # CPU time of this shell's finished children (the load generator), in ticks.
  # `times` must run in this shell, not in a $(...) subshell: hence the file.
  times > "$scratch/times.txt"
  tail -n 1 "$scratch/times.txt" | awk -v clk="$CLK" '
    function sec(x, a) { split(x, a, "m"); sub(/s$/, "", a[2]); return a[1] * 60 + a[2] }
    { printf "%d\n", (sec($1) + sec($2)) * clk }'
}

# Before each measured run: if other processes keep more than QUIET_PCT% of the machine busy
# (between runs nothing of ours is working), wait for them in 5 s steps, at most QUIET_MAX s, and
# then measure anyway (the report shows how busy the machine was during every run).
wait_quiet() {
  local waited=0 a b pct
  while :; do
    a="$(machine_busy_ticks)"; sleep 1; b="$(machine_busy_ticks)"
    pct=$(( (b - a) * 100 / (CLK * NCPU) ))
    [ "$pct" -le "$QUIET_PCT" ] && return 0
    if [ "$waited" -ge "$QUIET_MAX" ]; then
      say "the machine is still ${pct}% busy with other work after ${waited}s; measuring anyway"
      return 0
    fi
    [ "$waited" -eq 0 ] && say "the machine is ${pct}% busy with other work; waiting for it (at most ${QUIET_MAX}s)"
    sleep 4; waited=$(( waited + 5 ))
  done
}

wait_http() { # URL SECONDS PID [any]: wait for a 200 (or, with `any`, any HTTP answer)
  local url="$1" limit="$2" pid="$3" mode="${4:-200}" code i
  for i in $(seq 1 $(( limit * 5 ))); do
    kill -0 "$pid" 2>/dev/null || return 1
    code="$(curl -s -o /dev/null -w '%{http_code}' -m 2 "$url" || true)"
    if [ "$code" = "200" ] || { [ "$mode" = "any" ] && [ "$code" != "000" ]; }; then return 0; fi
    sleep 0.2
  done
  return 1
}

# targets.tsv: target, status ("ok" or what went wrong), idle RSS kB, version, note
set_status() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "${3:-}" "${4:-}" "${5:-}" >> "$scratch/targets.tsv"; }

# ---------------------------------------------------------------------------------------------
# 1. Installs (each once, into $CACHE), with progress lines.
# ---------------------------------------------------------------------------------------------
mkdir -p "$CACHE"
declare -A PROBLEM=()
want() { case " $TARGETS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

NGINX="$(command -v nginx || true)"
[ -z "$NGINX" ] && [ -x /usr/sbin/nginx ] && NGINX=/usr/sbin/nginx
if [ -z "$NGINX" ]; then
  say "installing nginx (apt-get install -y nginx)"
  if [ "$(id -u)" = "0" ]; then
    nice -n 10 apt-get install -y nginx > "$scratch/nginx-install.log" 2>&1 \
      || { nice -n 10 apt-get update > /dev/null 2>&1 && nice -n 10 apt-get install -y nginx >> "$scratch/nginx-install.log" 2>&1; } || true
  else
    sudo -n apt-get install -y nginx > "$scratch/nginx-install.log" 2>&1 || true
  fi
  NGINX="$(command -v nginx || true)"
  [ -z "$NGINX" ] && [ -x /usr/sbin/nginx ] && NGINX=/usr/sbin/nginx
  [ -z "$NGINX" ] && { say "nginx could not be installed (see $scratch/nginx-install.log); it is the upstream of every target, stopping"; exit 1; }
fi
say "nginx: $("$NGINX" -v 2>&1 | sed 's/^nginx version: //')"

OHA="$CACHE/oha/bin/oha"
if [ ! -x "$OHA" ]; then
  say "installing oha into $CACHE/oha (cargo install oha --locked; about 6 minutes on 2 cores)"
  if ! timeout 3600 nice -n 10 cargo install oha --locked --root "$CACHE/oha" > "$scratch/oha-install.log" 2>&1; then
    say "oha could not be installed (see $scratch/oha-install.log); it is the load generator, stopping"
    exit 1
  fi
fi
say "oha: $("$OHA" --version)"

LITELLM="$CACHE/litellm-venv/bin/litellm"
if want litellm && [ ! -x "$LITELLM" ]; then
  say "installing LiteLLM proxy into $CACHE/litellm-venv (pip install 'litellm[proxy]')"
  if ! { python3 -m venv "$CACHE/litellm-venv" && timeout 1800 nice -n 10 "$CACHE/litellm-venv/bin/pip" install -q 'litellm[proxy]'; } > "$scratch/litellm-install.log" 2>&1; then
    PROBLEM[litellm]="not installed: pip install 'litellm[proxy]' failed (see $scratch/litellm-install.log)"
  fi
  [ -x "$LITELLM" ] || PROBLEM[litellm]="${PROBLEM[litellm]:-not installed: no litellm executable after pip install}"
fi
want litellm && [ -z "${PROBLEM[litellm]:-}" ] && say "LiteLLM: $("$CACHE/litellm-venv/bin/pip" show litellm 2>/dev/null | awk '/^Version:/ {print $2}')"

PORTKEY_JS="$CACHE/portkey/node_modules/@portkey-ai/gateway/build/start-server.js"
if want portkey && [ ! -f "$PORTKEY_JS" ]; then
  say "installing Portkey gateway into $CACHE/portkey (npm install @portkey-ai/gateway)"
  mkdir -p "$CACHE/portkey"
  if ! (cd "$CACHE/portkey" && timeout 1800 nice -n 10 npm install --no-audit --no-fund @portkey-ai/gateway) > "$scratch/portkey-install.log" 2>&1; then
    PROBLEM[portkey]="not installed: npm install @portkey-ai/gateway failed (see $scratch/portkey-install.log)"
  fi
  [ -f "$PORTKEY_JS" ] || PROBLEM[portkey]="${PROBLEM[portkey]:-not installed: no start-server.js after npm install}"
fi
PORTKEY_VERSION=""
if want portkey && [ -z "${PROBLEM[portkey]:-}" ]; then
  PORTKEY_VERSION="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["version"])' "$CACHE/portkey/node_modules/@portkey-ai/gateway/package.json")"
  say "Portkey gateway: $PORTKEY_VERSION (node $(node --version))"
fi

GAVEL_GIVEN="${GAVEL:-}"
GAVEL="${GAVEL:-$root/target/release/gavel}"
GAVEL_VERSION=""
if want gavel; then
  if ! grep -Eq '\bServe\b' "$root/crates/gavel-cli/src/cli.rs"; then
    PROBLEM[gavel]="not built yet: no \`gavel serve\` in crates/gavel-cli/src/cli.rs"
  else
    if [ "$GAVEL_BUILD" != "0" ]; then
      say "building gavel (cargo build --release -p gavel-cli)"
      if ! (cd "$root" && CARGO_TARGET_DIR="$root/target" timeout 3600 nice -n 10 cargo build --release -p gavel-cli) > "$scratch/gavel-build.log" 2>&1; then
        PROBLEM[gavel]="not built: cargo build --release -p gavel-cli failed (see $scratch/gavel-build.log)"
      fi
    fi
    if [ -z "${PROBLEM[gavel]:-}" ]; then
      if [ ! -x "$GAVEL" ]; then
        PROBLEM[gavel]="not built: no $GAVEL"
      elif ! "$GAVEL" serve --help > /dev/null 2>&1; then
        PROBLEM[gavel]="not built yet: $GAVEL has no working \`serve\` command"
      else
        if [ -n "$GAVEL_GIVEN" ]; then
          GAVEL_VERSION="(binary $GAVEL_GIVEN)"
        else
          GAVEL_VERSION="@$(cd "$root" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(cd "$root" && git diff --quiet HEAD -- crates Cargo.toml Cargo.lock 2>/dev/null || echo ' with uncommitted changes in crates/')"
        fi
        say "gavel: $GAVEL (source $GAVEL_VERSION)"
      fi
    fi
  fi
  [ -n "${PROBLEM[gavel]:-}" ] && say "gavel: ${PROBLEM[gavel]}"
fi

# ---------------------------------------------------------------------------------------------
# 2. The upstream and the request body.
# ---------------------------------------------------------------------------------------------
UP_PORT="$(free_port)"
mkdir -p "$scratch/nginx"
cat > "$scratch/nginx/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
pid $scratch/nginx/nginx.pid;
error_log $scratch/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
  client_body_temp_path $scratch/nginx/client_body;
  proxy_temp_path $scratch/nginx/proxy;
  fastcgi_temp_path $scratch/nginx/fastcgi;
  uwsgi_temp_path $scratch/nginx/uwsgi;
  scgi_temp_path $scratch/nginx/scgi;
  client_body_buffer_size 64k;
  server {
    listen 127.0.0.1:$UP_PORT;
    location = /v1/chat/completions {
      default_type application/json;
      return 200 '{"id":"chatcmpl-bench0001","object":"chat.completion","created":1767225600,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"The current guide is the wiki page Remote access setup in the IT section. Install the company VPN client first; access comes with your account. See also the page Travelling with company equipment, owned by the IT service team."},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":312,"completion_tokens":48,"total_tokens":360},"system_fingerprint":"fp_bench"}';
    }
    location / { return 404; }
  }
}
EOF
"$NGINX" -p "$scratch/nginx" -e "$scratch/nginx/error.log" -c "$scratch/nginx/nginx.conf" > "$scratch/nginx/stdout.log" 2>&1 &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
UPSTREAM="http://127.0.0.1:$UP_PORT/v1"
if ! wait_http "$UPSTREAM/chat/completions" 10 "$NGINX_PID" any; then
  say "nginx did not start: $(tail -n 3 "$scratch/nginx/error.log" 2>/dev/null)"
  exit 1
fi
say "upstream: nginx (pid $NGINX_PID) on $UPSTREAM"

# gavel init writes the example contract; its prompts/kb.txt is the system prompt. Without gavel,
# the same file from the source tree gives the same body.
GAVEL_DIR="$scratch/gavel"
KB_PROMPT="$root/crates/gavel-contract/example/prompts/kb.txt"
if want gavel && [ -z "${PROBLEM[gavel]:-}" ]; then
  mkdir -p "$GAVEL_DIR"
  as() { local key="$1"; shift; (cd "$GAVEL_DIR" && GAVEL_KEY="$key" "$GAVEL" "$@"); }
  # The raised USD budget puts kb-search-v1 above the example's spend tier, whose approvals need
  # an extra approver role (budget_owner): while `approve` says another role is still needed, a
  # key with that role is made and signs off too.
  cosign_pending() {
    local role key n
    for n in 1 2 3; do
      cat "$scratch/approve.log" >> "$scratch/gavel-setup.log"
      role="$(sed -n 's/.*still needed: an approver with role `\([A-Za-z0-9_-]*\)`.*/\1/p' "$scratch/approve.log" | head -n 1)"
      [ -z "$role" ] && return 0
      key="$(as "$admin" keys create --principal "approver-$role" --role approver --approver-role "$role" 2>>"$scratch/gavel-setup.log")" || return 1
      as "$key" approve kb-search-v1 > "$scratch/approve.log" 2>&1 || return 1
    done
  }
  say "gavel: init, keys, contract pointed at the upstream, apply, approve"
  if ! {
    admin="$(cd "$GAVEL_DIR" && "$GAVEL" init . 2>>"$scratch/gavel-setup.log")" &&
    python3 "$here/prepare_contract.py" "$GAVEL_DIR/gavel.yaml" "$UPSTREAM" kb-search-v1 >> "$scratch/gavel-setup.log" 2>&1 &&
    operator="$(as "$admin" keys create --principal olga --role operator 2>>"$scratch/gavel-setup.log")" &&
    risk="$(as "$admin" keys create --principal rita --role approver --approver-role risk 2>>"$scratch/gavel-setup.log")" &&
    service="$(as "$admin" keys create --principal svc --role service 2>>"$scratch/gavel-setup.log")" &&
    auditor="$(as "$admin" keys create --principal audrey --role auditor 2>>"$scratch/gavel-setup.log")" &&
    as "$operator" check >> "$scratch/gavel-setup.log" 2>&1 &&
    as "$operator" apply >> "$scratch/gavel-setup.log" 2>&1 &&
    as "$risk" approve kb-search-v1 --population "Acme employees" --expires 90d --on-breach cooldown:15m > "$scratch/approve.log" 2>&1 &&
    cosign_pending
  }; then
    PROBLEM[gavel]="setup failed (init/keys/apply/approve): $(tail -n 2 "$scratch/gavel-setup.log" | tr '\n\t' '  ')"
    say "gavel: ${PROBLEM[gavel]}"
  else
    KB_PROMPT="$GAVEL_DIR/prompts/kb.txt"
    grep -h "^deployment " "$scratch/gavel-setup.log" >&2 || true
  fi
fi

BODY="$scratch/body.json"
python3 - "$KB_PROMPT" "$here/question.txt" "$BODY" <<'PY'
import json, sys
system = open(sys.argv[1]).read()
question = " ".join(open(sys.argv[2]).read().split())
body = {"model": "kb-search-v1", "messages": [{"role": "system", "content": system},
                                               {"role": "user", "content": question}]}
open(sys.argv[3], "w").write(json.dumps(body))
PY
say "body: $(wc -c < "$BODY") bytes ($BODY)"

# ---------------------------------------------------------------------------------------------
# 3. Measuring: one target at a time, started, verified by hand, warmed up, loaded, stopped.
# ---------------------------------------------------------------------------------------------
oha_run() { # NAME RATE SECONDS URL OUT [HEADER...]
  local name="$1" rate="$2" dur="$3" url="$4" out="$5"; shift 5
  local args=(-z "$dur" -c "$CONCURRENCY" --no-tui --output-format json -m POST -T application/json -D "$BODY"
              --wait-ongoing-requests-after-deadline)
  if [ "$rate" != "max" ]; then args+=(-q "$rate" --latency-correction); fi
  local h
  for h in "$@"; do args+=(-H "$h"); done
  timeout $(( $(secs "$dur") + 90 )) "$OHA" "${args[@]}" "$url" > "$out" 2> "${out%.json}.err" || true
}

summary_line() { # oha json -> "200s=N non200=N p50=..ms p99=..ms"
  python3 - "$1" <<'PY'
import json, sys
try:
    d = json.load(open(sys.argv[1]))
except Exception as e:
    print("no oha output (%s)" % e); sys.exit(0)
c = d.get("statusCodeDistribution") or {}
ok = int(c.get("200", 0)); n = sum(int(v) for v in c.values()); e = sum(int(v) for v in (d.get("errorDistribution") or {}).values())
s = d.get("summary", {}); p = d.get("latencyPercentiles", {})
t = float(s.get("total") or 0) or 1
f = lambda x: "%.2f" % (x * 1000) if x is not None else "-"
print("%.1f req/s of 200s, 200s=%d non-200=%d errors=%d p50=%sms p99=%sms" % (ok / t, ok, n - ok, e, f(p.get("p50")), f(p.get("p99"))))
PY
}

# measure NAME PID URL "RATES" WARMUP_SECONDS WARMUP_RATE [HEADER...]
measure() {
  local name="$1" pid="$2" url="$3" rates="$4" wdur="$5" wrate="$6"; shift 6
  local idle before after rate out cpu0 cpu1 up0 up1 gen0 gen1 sys0 sys1 other run_s
  idle="$(rss_kb "$pid")"
  say "$name: idle RSS $(( idle / 1024 )) MB; warm-up $wdur at $wrate req/s"
  oha_run "$name" "$wrate" "$wdur" "$url" "$scratch/raw/$name-warmup.json" "$@"
  say "$name: warm-up: $(summary_line "$scratch/raw/$name-warmup.json")"
  printf '%s\t%s\t%s\t%s\n' "$name" "$wrate" "$wdur" "$scratch/raw/$name-warmup.json" >> "$scratch/warmups.tsv"
  for rate in $rates; do
    kill -0 "$pid" 2>/dev/null || { say "$name: the process died (pid $pid)"; NOTE[$name]="${NOTE[$name]:-}process died before rate $rate. "; break; }
    out="$scratch/raw/$name-$rate.json"
    [ -e "$out" ] && out="$scratch/raw/$name-$rate-$(date +%s%N).json"   # the same rate twice
    wait_quiet
    before="$(rss_kb "$pid")"; cpu0="$(cpu_ticks "$pid")"
    up0="$(cpu_ticks "$NGINX_PID")"; children_ticks > "$scratch/gen0"; sys0="$(machine_busy_ticks)"
    run_s="$DUR_S"
    if [ "$rate" != "max" ] && [ $(( (MIN_SAMPLES + rate - 1) / rate )) -gt "$run_s" ]; then
      run_s=$(( (MIN_SAMPLES + rate - 1) / rate ))
    fi
    say "$name: $rate req/s for ${run_s}s (-c $CONCURRENCY)"
    # gavel's own histograms before and after, for where its time goes (report.py).
    [ -n "${METRICS_URL:-}" ] && curl -s -m 10 "$METRICS_URL" > "${out%.json}.metrics0" 2>/dev/null || true
    oha_run "$name" "$rate" "${run_s}s" "$url" "$out" "$@"
    [ -n "${METRICS_URL:-}" ] && curl -s -m 10 "$METRICS_URL" > "${out%.json}.metrics1" 2>/dev/null || true
    sys1="$(machine_busy_ticks)"; children_ticks > "$scratch/gen1"; up1="$(cpu_ticks "$NGINX_PID")"
    gen0="$(cat "$scratch/gen0")"; gen1="$(cat "$scratch/gen1")"
    after="$(rss_kb "$pid")"; cpu1="$(cpu_ticks "$pid")"
    # CPU used by everything else on the machine meanwhile: all busy time less the target's,
    # the upstream's (when it is not the target) and the load generator's.
    other=$(( (sys1 - sys0) - (cpu1 - cpu0) - (gen1 - gen0) ))
    [ "$pid" != "$NGINX_PID" ] && other=$(( other - (up1 - up0) ))
    [ "$other" -lt 0 ] && other=0
    say "$name: $rate: $(summary_line "$out"); RSS $(( before / 1024 )) -> $(( after / 1024 )) MB; other processes used $(( other * 100 / (CLK * NCPU * run_s) ))% of the machine"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$rate" "$out" "$before" "$after" "$run_s" "$(( cpu1 - cpu0 ))" "$other" >> "$scratch/runs.tsv"
    sleep 1
  done
  IDLE[$name]="$idle"
}

declare -A IDLE=() NOTE=() VERSION=()
VERSION[direct]="nginx $("$NGINX" -v 2>&1 | sed 's/^nginx version: nginx\///')"

show_response() { # NAME FILE CODE: print the hand-made request's answer
  say "$1: one request by hand -> HTTP $3:"
  if [ "$1" = "gavel" ]; then cat "$2" >&2; else head -c 600 "$2" >&2; fi
  echo >&2
}

verify() { # NAME URL [HEADER...] -> 0 when HTTP 200
  local name="$1" url="$2"; shift 2
  local hargs=() h code
  for h in "$@"; do hargs+=(-H "$h"); done
  code="$(curl -s -m 30 -o "$scratch/$name-verify.json" -w '%{http_code}' -X POST -H 'Content-Type: application/json' "${hargs[@]}" --data-binary "@$BODY" "$url" || echo 000)"
  show_response "$name" "$scratch/$name-verify.json" "$code"
  [ "$code" = "200" ]
}

# After gavel's load (serve stopped): does the ledger hold a decision for every request the load
# generator sent, and does it verify? Requests sent = every response oha saw (200s or not).
gavel_ledger_check() { # DATA_FOLDER_KB_BEFORE -> one sentence
  local kb0="$1" kb1 sent kinds verify
  kb1="$(du -sk "$GAVEL_DIR" | cut -f1)"
  sent="$(python3 - "$scratch"/raw/gavel-*.json <<'PY'
import json, sys
n = 0
for p in sys.argv[1:]:
    try:
        n += sum(int(v) for v in (json.load(open(p)).get("statusCodeDistribution") or {}).values())
    except Exception:
        pass
print(n + 1)  # + the request made by hand
PY
)"
  kinds="$(as "$auditor" audit export 2>/dev/null | python3 -c '
import collections, json, sys
c = collections.Counter(json.loads(l).get("kind", "?") for l in sys.stdin if l.strip())
print(", ".join("%s %d" % kv for kv in sorted(c.items())))' || echo "export failed")"
  if timeout 300 env GAVEL_KEY="$auditor" sh -c 'cd "$1" && "$2" audit verify' _ "$GAVEL_DIR" "$GAVEL" > "$scratch/gavel-audit-verify.log" 2>&1; then
    verify="audit verify: ok"
  else
    verify="audit verify: FAILED (see $scratch/gavel-audit-verify.log)"
  fi
  printf 'after the load: %s requests answered; ledger records by kind: %s; %s; data folder %s MB -> %s MB.' \
    "$sent" "$kinds" "$verify" "$(( kb0 / 1024 ))" "$(( kb1 / 1024 ))"
}

for target in $TARGETS; do
  if [ -n "${PROBLEM[$target]:-}" ]; then
    set_status "$target" "${PROBLEM[$target]}"
    continue
  fi
  case "$target" in
    direct)
      url="$UPSTREAM/chat/completions"
      if verify direct "$url" 'Authorization: Bearer x'; then
        measure direct "$NGINX_PID" "$url" "$RATES" "$WARMUP" 200 'Authorization: Bearer x'
        set_status direct ok "${IDLE[direct]}" "${VERSION[direct]}" "${NOTE[direct]:-}"
      else
        set_status direct "upstream did not answer 200"
      fi
      ;;

    gavel)
      port="$(free_port)"
      (cd "$GAVEL_DIR" && GAVEL_KEY="$operator" exec "$GAVEL" serve --listen "127.0.0.1:$port") > "$scratch/gavel-serve.log" 2>&1 &
      pid=$!; PIDS+=("$pid")
      if ! wait_http "http://127.0.0.1:$port/readyz" 60 "$pid"; then
        set_status gavel "did not become ready (/readyz): $(tail -n 2 "$scratch/gavel-serve.log" | tr '\n\t' '  ')"
        stop_pid "$pid"; continue
      fi
      say "gavel: serving on 127.0.0.1:$port (pid $pid)"
      url="http://127.0.0.1:$port/v1/chat/completions"
      if verify gavel "$url" "Authorization: Bearer $service"; then
        db0="$(du -sk "$GAVEL_DIR" | cut -f1)"
        floor_rate="$(printf '%s\n' $RATES | grep -E '^[0-9]+$' | sort -n | head -n 1 || true)"
        if [ -n "$floor_rate" ] && [ "$FLOOR_SAMPLES" -gt 0 ]; then
          wait_quiet
          say "gavel: durability floor: $FLOOR_SAMPLES fdatasyncs in $GAVEL_DIR at $floor_rate/s"
          python3 "$here/fsync_floor.py" "$GAVEL_DIR" "$floor_rate" "$FLOOR_SAMPLES" > "$scratch/fsync-floor.json" \
            || say "gavel: the durability floor probe failed"
        fi
        METRICS_URL="http://127.0.0.1:$port/metrics" measure gavel "$pid" "$url" "$RATES" "$WARMUP" 200 "Authorization: Bearer $service"
        kill -0 "$pid" 2>/dev/null || NOTE[gavel]="${NOTE[gavel]:-}gavel serve was no longer running after the load. "
        stop_pid "$pid"
        NOTE[gavel]="${NOTE[gavel]:-}$(gavel_ledger_check "$db0")"
        set_status gavel ok "${IDLE[gavel]}" "gavel $GAVEL_VERSION" "${NOTE[gavel]:-}"
      else
        set_status gavel "the request made by hand was not answered 200 (see $scratch/gavel-verify.json)"
      fi
      stop_pid "$pid"
      ;;

    litellm)
      port="$(free_port)"
      master="sk-bench-$(python3 -c 'import secrets; print(secrets.token_hex(12))')"
      cat > "$scratch/litellm.yaml" <<EOF
model_list:
  - model_name: kb-search-v1
    litellm_params:
      model: openai/fake
      api_base: $UPSTREAM
      api_key: x
litellm_settings:
  telemetry: false
EOF
      (cd "$scratch" && LITELLM_MASTER_KEY="$master" LITELLM_LOCAL_MODEL_COST_MAP=True \
        LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS=True LITELLM_LOCAL_AUTOROUTER_PRESETS=True \
        LITELLM_LOCAL_BLOG_POSTS=True LITELLM_LOCAL_POLICY_TEMPLATES=True LITELLM_TELEMETRY=False \
        NO_PROXY='*' no_proxy='*' \
        exec "$LITELLM" --config "$scratch/litellm.yaml" --port "$port" --host 127.0.0.1) > "$scratch/litellm.log" 2>&1 &
      pid=$!; PIDS+=("$pid")
      if ! wait_http "http://127.0.0.1:$port/health/liveliness" 120 "$pid"; then
        set_status litellm "did not start: $(tail -n 2 "$scratch/litellm.log" | tr '\n\t' '  ')"
        stop_pid "$pid"; continue
      fi
      say "LiteLLM: serving on 127.0.0.1:$port (pid $pid)"
      url="http://127.0.0.1:$port/v1/chat/completions"
      if verify litellm "$url" "Authorization: Bearer $master"; then
        measure litellm "$pid" "$url" "$LITELLM_RATES" "$WARMUP" 20 "Authorization: Bearer $master"
        set_status litellm ok "${IDLE[litellm]}" "litellm $("$CACHE/litellm-venv/bin/pip" show litellm 2>/dev/null | awk '/^Version:/ {print $2}')" "${NOTE[litellm]:-}"
      else
        set_status litellm "the request made by hand was not answered 200 (see $scratch/litellm-verify.json)"
      fi
      stop_pid "$pid"
      ;;

    portkey)
      port="$(free_port)"
      (cd "$scratch" && exec node --require "$here/loopback.cjs" "$PORTKEY_JS" --port="$port" --headless) > "$scratch/portkey.log" 2>&1 &
      pid=$!; PIDS+=("$pid")
      if ! wait_http "http://127.0.0.1:$port/" 30 "$pid" any; then
        set_status portkey "did not start: $(tail -c 300 "$scratch/portkey.log" | tr '\n\t' '  ')"
        stop_pid "$pid"; continue
      fi
      say "Portkey: serving on 127.0.0.1:$port (pid $pid)"
      url="http://127.0.0.1:$port/v1/chat/completions"
      hdrs=("x-portkey-provider: openai" "x-portkey-custom-host: $UPSTREAM" "Authorization: Bearer x")
      if verify portkey "$url" "${hdrs[@]}"; then
        measure portkey "$pid" "$url" "$RATES" "$(( $(secs "$WARMUP") * 2 ))s" 200 "${hdrs[@]}"
        set_status portkey ok "${IDLE[portkey]}" "@portkey-ai/gateway $PORTKEY_VERSION" "${NOTE[portkey]:-}"
      else
        set_status portkey "the request made by hand was not answered 200 (see $scratch/portkey-verify.json)"
      fi
      stop_pid "$pid"
      ;;

    *) say "unknown target $target (known: direct gavel litellm portkey)" ;;
  esac
done

# ---------------------------------------------------------------------------------------------
# 4. Report.
# ---------------------------------------------------------------------------------------------
versions="$(awk -F'\t' '$4 != "" {printf "%s%s", sep, $4; sep="; "}' "$scratch/targets.tsv"); oha $("$OHA" --version | awk '{print $2}')"
cpu="$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
{
  echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "machine=$(nproc) cores (${cpu:-unknown CPU}), $(awk '/^MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), Linux $(uname -r)"
  echo "load=Load average at the start: $LOAD_START, at the end: $(cut -d' ' -f1-3 /proc/loadavg); busiest processes at the start (ps, lifetime average): $BUSY_START."
  echo "duration=$DURATION"
  echo "min_samples=$MIN_SAMPLES"
  echo "concurrency=$CONCURRENCY"
  echo "body_bytes=$(wc -c < "$BODY")"
  echo "clk_tck=$CLK"
  echo "ncpu=$NCPU"
  echo "versions=$versions"
} > "$scratch/meta.txt"

python3 "$here/report.py" "$scratch" > "$scratch/report.md"
echo
cat "$scratch/report.md"
echo
if [ -n "$RESULTS" ]; then
  {
    cat "$scratch/report.md"
    echo
    echo "Produced by \`bench/gateway/run.sh\` (RATES=\"$RATES\" LITELLM_RATES=\"$LITELLM_RATES\" TARGETS=\"$TARGETS\")."
  } > "$RESULTS"
  say "report written to $RESULTS"
fi
say "raw oha JSON and logs: $scratch/raw, $scratch"
