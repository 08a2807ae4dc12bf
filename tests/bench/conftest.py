"""Fixtures for bench and dashboard tests: the fake OpenAI server and a headless Chromium.

`chromium` finds the browser, installing the Debian package once when it is missing and we are
root with apt available; otherwise the dashboard browser test is skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from .fake_openai import FakeServerState, fake_openai_server

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None


@pytest.fixture(scope="session")
def chromium() -> str:
    path = _find_chromium()
    if path:
        return path
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(
            "headless Chromium not found and cannot install it (needs root and apt-get): "
            "apt-get install -y chromium"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update"], check=True, capture_output=True, timeout=600, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "chromium"],
            check=True,
            capture_output=True,
            timeout=900,
            env=env,
        )
    except (subprocess.SubprocessError, OSError) as e:
        pytest.skip(f"installing chromium with apt-get failed: {e}")
    path = _find_chromium()
    if not path:
        pytest.skip("apt-get install chromium succeeded but no chromium binary was found")
    return path


@pytest.fixture
def fake_server() -> Iterator[tuple[str, FakeServerState]]:
    """(API root URL, state) of a fresh fake OpenAI server with default timing."""
    with fake_openai_server() as served:
        yield served
