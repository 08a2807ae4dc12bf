#!/usr/bin/env bash
# Fuzz the server against its own OpenAPI document (issue 20 item 1): builds the tests' tiny
# random-weight checkpoint, serves it behind an API key, runs
#   schemathesis run http://127.0.0.1:PORT/openapi.json --checks all
# from the repository root (so schemathesis.toml and its hook apply), stops the server and exits
# with schemathesis' status. Extra arguments go to schemathesis, e.g. --seed 7 -n 200.
#
# schemathesis lives in its own venv ($ST_VENV, default /tmp/inferd-schemathesis; pinned below).
# inferd's Python is .venv/bin/python after scripts/setup.sh test, or $INFERD_PYTHON.
#
# The deployment is sized so that the costliest schema-valid request stays within schemathesis'
# default 10 s response-time check (max_response_time, on under --checks all) on a small shared
# CPU: the document bounds max_tokens by the window and n, best_of and the prompt count by the
# waiting queue, so a request generates at most 8 sequences x 63 tokens here. A bigger window
# or queue is as valid, only slower per request.
set -euo pipefail
cd "$(dirname "$0")/.."
SCHEMATHESIS_VERSION=4.32.5
st_venv=${ST_VENV:-/tmp/inferd-schemathesis}
examples=${N:-50}

if [ -z "${INFERD_PYTHON:-}" ]; then
  bash scripts/setup.sh test
  INFERD_PYTHON=.venv/bin/python
fi
if ! "$st_venv/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  python3 -m venv "$st_venv"
  "$st_venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

work=$(mktemp -d)
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
"$INFERD_PYTHON" scripts/tiny_checkpoint.py "$work/tiny" >/dev/null 2>&1
port=$("$INFERD_PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
key="sk-schemathesis-$RANDOM$RANDOM"
# The bundled embedding model too, so /v1/embeddings is fuzzed; its queue bounds a request's
# inputs to 64 in the document, which keeps the costliest schema-valid request short.
INFERD_API_KEY=$key "$INFERD_PYTHON" -m inferd.cli serve --model "$work/tiny" --model all-minilm-l6-v2 \
  --host 127.0.0.1 --port "$port" --max-waiting-embedding-inputs 64 \
  --dtype float32 --kv-cache-memory 0.1 --max-model-len 64 --max-waiting-requests 8 --max-num-seqs 8 \
  --disable-access-log --log-level warning >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 180); do
  curl -fs "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
  if ! kill -0 "$server_pid" 2>/dev/null; then cat "$work/server.log"; exit 1; fi
  sleep 1
done

status=0
"$st_venv/bin/schemathesis" run "http://127.0.0.1:$port/openapi.json" --checks all -n "$examples" \
  --request-timeout 60 --workers 1 -H "Authorization: Bearer $key" "$@" || status=$?
if [ "$status" != 0 ]; then echo "--- server log ---"; tail -50 "$work/server.log"; fi
exit "$status"
