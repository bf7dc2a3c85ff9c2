#!/usr/bin/env bash
# The fuzz part of `make bench`: `bentoml serve` MODEL on loopback; schemathesis against the
# service's OpenAPI document (/docs.json) with EXAMPLES examples per operation and phase
# (tests/schemathesis.toml: every check but positive_data_acceptance, plus clear_errors from
# tests/schemathesis_hooks.py); then the broken files and abusive requests of tests/abuse.py;
# then /readyz. A section with the counts is appended to OUT either way; the exit status is 1 if
# anything failed. Pass: no 5xx, every refusal a clear 4xx, the service healthy after.
# About a minute on 2 cores with EXAMPLES=300. SEED=n repeats a run (default: a new one, recorded).
# usage: bash scripts/fuzz_http.sh PYTHON MODEL OUT [EXAMPLES=300]
set -euo pipefail
py=${1:?python} model=${2:?model} out=${3:?output markdown file} examples=${4:-300}
port=${PORT:-3018} seed=${SEED:-$RANDOM$RANDOM}
url=http://127.0.0.1:$port
tmp=${TMPDIR:-/tmp}/fuzz-http  # the server's log and schemathesis's full output are kept here
mkdir -p "$tmp"
TIN_MODEL=$model "$py" -m bentoml serve --host 127.0.0.1 --port "$port" > "$tmp/serve.log" 2>&1 &
server=$!
# SIGTERM to BentoML's arbiter stops its workers too (each runs in a session of its own).
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 120); do curl -sf "$url/readyz" > /dev/null && break; sleep 1; done
curl -sf "$url/readyz" > /dev/null || { tail -30 "$tmp/serve.log"; exit 1; }

start=$(date +%s)
st=(--config-file tests/schemathesis.toml --no-color run "$url/docs.json")
st+=(--max-examples "$examples" --seed "$seed")
st_rc=0
"$(dirname "$py")/schemathesis" "${st[@]}" > "$tmp/st.txt" 2>&1 || st_rc=$?
st_seconds=$(($(date +%s) - start))
tail -25 "$tmp/st.txt"
abuse_rc=0
"$py" -m tests.abuse "$url" "$tmp/abuse.md" || abuse_rc=$?
ready=$(curl -s -o /dev/null -w '%{http_code}' "$url/readyz" || true)

cases=$(grep -Eo '[0-9]+ generated.*' "$tmp/st.txt" | head -1 || echo "no summary (see its output)")
ops=$(grep -Eo 'Tested: +[0-9]+' "$tmp/st.txt" | grep -Eo '[0-9]+' || echo "?")
verdict=PASS
[ "$st_rc" -eq 0 ] && [ "$abuse_rc" -eq 0 ] && [ "$ready" = 200 ] || verdict=FAIL
{
  printf '\n## HTTP fuzz, %s UTC\n\n' "$(date -u '+%Y-%m-%d %H:%M')"
  printf -- '- command: `bash scripts/fuzz_http.sh %s %s %s %s` with SEED=%s\n' \
    "$py" "$model" "$out" "$examples" "$seed"
  printf -- '- machine: %s, %s cores; schemathesis %s\n' \
    "$(sed -n 's/^model name\t*: //p' /proc/cpuinfo | head -1)" "$(nproc)" \
    "$("$(dirname "$py")/schemathesis" --version | grep -Eo '[0-9.]+$')"
  printf -- '- schemathesis on `/docs.json`: %s operations, %s examples per operation and phase,' \
    "$ops" "$examples"
  printf ' all checks but positive_data_acceptance, plus clear_errors: %s; %s s, exit %s\n' \
    "$cases" "$st_seconds" "$st_rc"
  cat "$tmp/abuse.md" 2> /dev/null || echo "- tests.abuse failed to run, exit $abuse_rc"
  printf -- '- after: /readyz %s. Result: **%s** (pass: no 5xx, every refusal a 4xx with a JSON' \
    "$ready" "$verdict"
  printf ' error code, the service healthy after)\n'
} >> "$out"
echo "# appended to $out: $verdict (logs in $tmp)"
[ "$verdict" = PASS ]
