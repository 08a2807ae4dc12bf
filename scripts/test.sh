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
# The ARM kernels are compiled (and their tile kernels run under qemu) by tests/kernels/test_arm_cross_compile.py.
if ! command -v aarch64-linux-gnu-g++ >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++-aarch64-linux-gnu qemu-user >/dev/null) \
    || echo "warning: could not install the aarch64 cross compiler / qemu; the ARM kernel tests will say why they skip"
fi
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
