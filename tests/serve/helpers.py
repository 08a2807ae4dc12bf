"""Helpers for the server tests: real `inferd serve` processes on free loopback ports, an
in-process uvicorn thread, and Prometheus text parsing."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import httpx

API_KEY = "sk-test-0123456789"
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    url: str  # http://127.0.0.1:PORT
    log: Path

    @property
    def v1(self) -> str:
        return self.url + "/v1"

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


def start_server(args: list[str], log: Path, env: dict[str, str] | None = None,
                 timeout: float = 180.0) -> ServerProcess:
    """Run `python -m inferd.cli serve ARGS` and wait until /health answers 200."""
    port = free_port()
    cmd = [sys.executable, "-m", "inferd.cli", "serve", "--port", str(port), "--disable-access-log", *args]
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env or {})}
    out = open(log, "w")  # noqa: SIM115 (closed with the process)
    proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=out, stderr=subprocess.STDOUT)
    server = ServerProcess(proc, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(server.url + "/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"server did not become healthy in {timeout} s:\n{log.read_text()}")


def make_engine(loaded, tiny_llama, **scheduler):
    """An AsyncEngine over the already-loaded tiny model (no second load)."""
    from inferd.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
    from inferd.engine.async_engine import AsyncEngine

    config = EngineConfig(model=ModelConfig(model=str(tiny_llama), dtype="float32"),
                          cache=CacheConfig(kv_cache_memory_gib=0.05),
                          scheduler=replace(SchedulerConfig(), **scheduler))
    return AsyncEngine(config, loaded=loaded)


class ThreadedServer:
    """uvicorn serving an app from a background thread, on a free port (no signal handlers)."""

    def __init__(self, app, **config):
        """config: more uvicorn.Config settings (e.g. http=, timeout_keep_alive=)."""
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="off", timeout_graceful_shutdown=1, **config)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("in-process server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (0 when none)."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
