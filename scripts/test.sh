#!/usr/bin/env bash
# The whole test suite, on a fresh machine: set-up (venv, test deps, Chromium for the dashboard
# test when running as root) and pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: could not install chromium; the dashboard screenshot test will say why it skips"
fi
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
