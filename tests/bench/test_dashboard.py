"""The live dashboard: routes serve the page and assets; headless Chromium shows it charting a
fake /metrics (driven with prometheus_client, using the server's metric names) that changes on
every scrape. Set INFERD_SAVE_SCREENSHOT=1 to also copy the screenshot to docs/dashboard.png.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.responses import Response
from fastapi.testclient import TestClient
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from inferd.serve.dashboard import router

from .fake_openai import serve_app

REPO = Path(__file__).resolve().parents[2]
CHARTS = ("ttft", "itl", "tps", "requests", "kv", "e2e")
# Series line colours (see static/dashboard.js) and how many charts use each: every chart that
# uses a colour also draws a 10x10 legend square in it, which must not pass for a line.
SERIES_COLOURS = {
    "mean (TTFT, ITL, E2E)": ((0xE4, 0x57, 0x2E), 3),
    "generation / running": ((0x2E, 0x86, 0xDE), 2),
    "KV usage": ((0x8E, 0x44, 0xAD), 1),
    "waiting": ((0xF3, 0x9C, 0x12), 1),
}


class FakeInferdMetrics:
    """A registry with inferd's metric names; each scrape simulates one more second of load."""

    def __init__(self) -> None:
        self.registry = reg = CollectorRegistry()
        m = ["model"]
        self.ttft = Histogram(
            "inferd_time_to_first_token_seconds",
            "TTFT",
            m,
            registry=reg,
            buckets=(0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0),
        )
        self.itl = Histogram(
            "inferd_inter_token_latency_seconds",
            "ITL",
            m,
            registry=reg,
            buckets=(0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1),
        )
        self.tpot = Histogram("inferd_time_per_output_token_seconds", "TPOT", m, registry=reg)
        self.e2e = Histogram("inferd_e2e_request_latency_seconds", "E2E", m, registry=reg)
        self.prompt = Counter("inferd_prompt_tokens", "prompt tokens", m, registry=reg)
        self.gen = Counter("inferd_generation_tokens", "generated tokens", m, registry=reg)
        self.requests = Counter(
            "inferd_requests", "finished requests", [*m, "finish_reason"], registry=reg
        )
        self.preempt = Counter("inferd_num_preemptions", "preemptions", m, registry=reg)
        self.running = Gauge("inferd_num_requests_running", "running", m, registry=reg)
        self.waiting = Gauge("inferd_num_requests_waiting", "waiting", m, registry=reg)
        self.kv = Gauge("inferd_kv_cache_usage_ratio", "KV use", m, registry=reg)
        self.hit = Gauge("inferd_prefix_cache_hit_rate", "prefix hits", m, registry=reg)
        self.scrapes = 0

    def step(self) -> None:
        i = self.scrapes
        self.scrapes += 1
        for model, scale in (("smollm2-135m", 1.0), ("gemma-3-270m", 0.3)):
            for j in range(4):
                self.ttft.labels(model).observe(0.05 + 0.03 * math.sin(i / 2) + 0.004 * j)
                self.itl.labels(model).observe(0.015 + 0.007 * math.sin(i / 3) + 0.001 * j)
                self.tpot.labels(model).observe(0.016 + 0.005 * math.sin(i / 3))
                self.e2e.labels(model).observe(0.9 + 0.3 * math.sin(i / 4))
            self.gen.labels(model).inc(scale * (220 + 60 * math.sin(i / 2)))
            self.prompt.labels(model).inc(scale * 900)
            self.requests.labels(model, "length").inc(3)
            self.preempt.labels(model).inc(i % 2)
            self.running.labels(model).set(round(scale * (5 + 3 * math.sin(i / 2))))
            self.waiting.labels(model).set(round(scale * max(0.0, 3 * math.sin(i / 3))))
            self.kv.labels(model).set(0.35 + 0.25 * math.sin(i / 5))
            self.hit.labels(model).set(0.6)

    def app(self) -> FastAPI:
        app = FastAPI()
        app.include_router(router)

        @app.get("/metrics")
        def metrics() -> Response:
            self.step()
            return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

        return app


def test_dashboard_routes_serve_page_and_assets() -> None:
    client = TestClient(FakeInferdMetrics().app())
    page = client.get("/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'src="/dashboard/static/linechart.js"' in page.text and "{{ROOT}}" not in page.text
    for name, kind in (
        ("dashboard.js", "javascript"),
        ("linechart.js", "javascript"),
        ("dashboard.css", "css"),
    ):
        asset = client.get(f"/dashboard/static/{name}")
        assert asset.status_code == 200 and kind in asset.headers["content-type"]
    assert client.get("/dashboard/static/dashboard.html").status_code == 404
    assert client.get("/dashboard/static/..%2F..%2Fdashboard.py").status_code == 404
    # no external resources: the page must work on machines without internet
    for name in ("dashboard.js", "linechart.js", "dashboard.css"):
        assert "http://" not in client.get(f"/dashboard/static/{name}").text.replace(
            "http://host", ""
        )
    assert "https://" not in page.text and "http://" not in page.text


def test_dashboard_respects_root_path() -> None:
    client = TestClient(FakeInferdMetrics().app(), root_path="/inferd")
    page = client.get("/dashboard")
    assert (
        'src="/inferd/dashboard/static/dashboard.js"' in page.text
        and 'data-root="/inferd"' in page.text
    )


def _chromium(binary: str, tmp: Path, url: str, *mode: str) -> subprocess.CompletedProcess[str]:
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    cmd = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=8000",
        "--window-size=1200,900",
        *mode,
        url,
    ]
    env = {**os.environ, "HOME": str(tmp)}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.slow
def test_dashboard_draws_live_charts_in_headless_chromium(chromium: str, tmp_path: Path) -> None:
    from PIL import Image

    fake = FakeInferdMetrics()
    with serve_app(fake.app()) as base:
        url = f"{base}/dashboard"
        dom = _chromium(chromium, tmp_path, url, "--dump-dom")
        assert dom.returncode == 0, dom.stderr[-2000:]
        shot_path = tmp_path / "dashboard.png"
        shot = _chromium(chromium, tmp_path, url, f"--screenshot={shot_path}")
        assert shot.returncode == 0, shot.stderr[-2000:]

    html_tag = re.search(r"<html[^>]*>", dom.stdout).group(0)
    assert 'data-ready="true"' in html_tag, f"charts never filled: {html_tag}"
    assert int(re.search(r'data-polls="(\d+)"', html_tag).group(1)) >= 3
    for chart in CHARTS:
        tag = re.search(rf'<canvas id="chart-{chart}"[^>]*>', dom.stdout)
        assert tag, f"chart {chart} missing"
        assert int(re.search(r'data-points="(\d+)"', tag.group(0)).group(1)) >= 2, tag.group(0)
    assert "gemma-3-270m" in dom.stdout and "smollm2-135m" in dom.stdout  # model picker filled
    assert fake.scrapes >= 6  # both browser runs polled the endpoint repeatedly

    assert shot_path.exists() and shot_path.read_bytes().startswith(b"\x89PNG")
    img = Image.open(shot_path).convert("RGB")
    assert img.size == (1200, 900)
    charts_area = img.crop((0, 120, 1200, 650))  # below header and tiles
    colours = charts_area.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 300, "chart area looks blank"
    pixels = np.asarray(charts_area, dtype=np.int16)
    for name, (rgb, charts) in SERIES_COLOURS.items():
        hits = int((np.abs(pixels - np.array(rgb)) <= 40).all(axis=-1).sum())
        assert hits > charts * 100 + 150, f"no {name} line drawn ({hits} pixels of that colour)"

    if os.environ.get("INFERD_SAVE_SCREENSHOT"):
        docs = REPO / "docs"
        docs.mkdir(exist_ok=True)
        shutil.copyfile(shot_path, docs / "dashboard.png")
