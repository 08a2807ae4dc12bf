"""The README's quick start is two commands; CI runs the test one, this runs the serve one
exactly as written and talks to it."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent


def quick_start_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start\s+```bash\n(.*?)```", text, re.S).group(1)
    return [line.split("#")[0].strip() for line in block.strip().splitlines()]


def test_quick_start_is_two_commands_and_ci_runs_the_test_one():
    serve, test = quick_start_commands()
    assert serve == "bash scripts/serve.sh" and test == "bash scripts/test.sh"
    assert "exec bash scripts/test.sh" in (ROOT / ".ci/run").read_text()


@pytest.mark.slow
def test_serve_command_serves_the_default_model_on_port_8000():
    serve, _ = quick_start_commands()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", 8000)) != 0, "port 8000 is already in use"
    proc = subprocess.Popen(serve, shell=True, cwd=ROOT, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        deadline = time.time() + 600
        while time.time() < deadline:
            assert proc.poll() is None, proc.stdout.read().decode(errors="replace")[-3000:]
            try:
                if httpx.get("http://127.0.0.1:8000/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        r = httpx.post("http://127.0.0.1:8000/v1/chat/completions", timeout=120, json={
            "model": "smollm2-135m", "max_tokens": 16, "temperature": 0,
            "messages": [{"role": "user", "content": "What is the capital city of Germany?"}]})
        assert r.status_code == 200
        assert "Berlin" in r.json()["choices"][0]["message"]["content"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
