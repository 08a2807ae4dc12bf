#!/usr/bin/env bash
# The main job: the OpenAI-compatible server on the bundled default model at 127.0.0.1:8000.
# Extra arguments go to `inferd serve` (e.g. --port 9000 --api-key KEY).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh runtime
exec .venv/bin/inferd serve --model smollm2-135m --host 127.0.0.1 --port 8000 "$@"
