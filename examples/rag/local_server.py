"""Starts `inferd serve --model smollm2-135m --model all-minilm-l6-v2` on a free loopback port
behind a fresh API key, for a run that was given no --url; stopped with SIGTERM on exit."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def local_server(models: list[str], timeout: float = 300.0) -> Iterator[tuple[str, str]]:
    """(base URL of /v1, API key) of a server running for the duration of the block."""
    port, key = _free_port(), "sk-rag-" + secrets.token_hex(8)
    args = [sys.executable, "-m", "inferd.cli", "serve", "--port", str(port), "--disable-access-log"]
    for model in models:
        args += ["--model", model]
    env = {**os.environ, "INFERD_API_KEY": key, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    log = tempfile.NamedTemporaryFile("w+", prefix="inferd-rag-server-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"inferd serve exited with {proc.returncode}; log: {log.name}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"inferd serve did not become healthy in {timeout:g} s; log: {log.name}")
            time.sleep(0.3)
        yield url + "/v1", key
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()
