"""/metrics: an own registry per app, the observer's arithmetic, engine gauges read at scrape
time, speculative-decoding counters when a speculator exposes them, vLLM-named copies, and every
series documented in the README."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from inferd.config import CacheConfig
from inferd.engine.engine import EngineStats
from inferd.engine.sequence import Request, Sequence
from inferd.sampling_params import SamplingParams
from inferd.serve.metrics import ServerMetrics

from .helpers import metric_value

METRICS_MD = Path(__file__).resolve().parents[2] / "README.md"


def fake_engine(speculator=None, running=3, waiting=2):
    stats = EngineStats(num_running=running, num_waiting=waiting, kv_cache_usage=0.25,
                        prefix_cache_hit_rate=0.5, num_preemptions=4, num_blocks=100, block_size=16,
                        kv_cache_bytes=3 * 2**20)
    inner = SimpleNamespace(observer=None, speculator=speculator, pool=SimpleNamespace(hits=30, queries=60),
                            loaded=SimpleNamespace(device=torch.device("cpu")))
    return SimpleNamespace(engine=inner, stats=lambda: stats, config=SimpleNamespace(cache=CacheConfig()))


def finished_request(n_out: int, reason: str = "stop") -> Request:
    req = Request("r", None, [1, 2, 3, 4], SamplingParams(max_tokens=n_out))
    seq = Sequence(0, req, 0)
    seq.token_ids += [5] * n_out
    seq.finish_reason = reason
    req.seqs.append(seq)
    t0 = time.monotonic()
    req.timing.arrival, req.timing.first_scheduled, req.timing.first_token = t0, t0 + 0.5, t0 + 1.0
    return req, t0


def render(metrics: ServerMetrics) -> str:
    return metrics.render()[0].decode()


def test_observer_records_one_request():
    metrics = ServerMetrics()
    engine = fake_engine()
    metrics.attach("m", engine)
    obs = engine.engine.observer
    req, t0 = finished_request(5)
    obs.on_first_token(req, t0 + 1.0)
    for _ in range(4):
        obs.on_token(req, req.seqs[0], 0.25)
    obs.on_step(prompt_tokens=4, generation_tokens=5)
    obs.on_finished(req, t0 + 2.0)
    text = render(metrics)
    assert metric_value(text, "inferd_time_to_first_token_seconds_sum", model="m") == 1.0
    assert metric_value(text, "inferd_request_queue_time_seconds_sum", model="m") == 0.5
    assert metric_value(text, "inferd_inter_token_latency_seconds_count", model="m") == 4
    assert metric_value(text, "inferd_time_per_output_token_seconds_sum", model="m") == 0.25
    assert metric_value(text, "inferd_e2e_request_latency_seconds_sum", model="m") == 2.0
    assert metric_value(text, "inferd_prompt_tokens_total", model="m") == 4
    assert metric_value(text, "inferd_generation_tokens_total", model="m") == 5
    assert metric_value(text, "inferd_requests_total", model="m", finish_reason="stop") == 1
    aborted, t1 = finished_request(1)
    aborted.aborted = True
    obs.on_finished(aborted, t1 + 3)
    assert metric_value(render(metrics), "inferd_requests_total", model="m", finish_reason="abort") == 1


def test_gauges_come_from_the_engine_at_scrape_time():
    metrics = ServerMetrics()
    metrics.attach("a", fake_engine(running=3, waiting=2))
    metrics.attach("b", fake_engine(running=0, waiting=7))
    text = render(metrics)
    assert metric_value(text, "inferd_num_requests_running", model="a") == 3
    assert metric_value(text, "inferd_num_requests_waiting", model="b") == 7
    assert metric_value(text, "inferd_kv_cache_usage_ratio", model="a") == 0.25
    assert metric_value(text, "inferd_prefix_cache_hit_rate", model="a") == 0.5
    assert metric_value(text, "inferd_num_preemptions_total", model="b") == 4
    # no speculator: no speculative series
    assert "spec_decode" not in text


def test_spec_decode_counters_when_the_engine_has_them():
    metrics = ServerMetrics(compat="vllm")
    metrics.attach("m", fake_engine(speculator=SimpleNamespace(num_draft_tokens=40, num_accepted_tokens=31)))
    metrics.attach("plain", fake_engine(speculator=SimpleNamespace()))  # no counters: nothing for it
    text = render(metrics)
    assert metric_value(text, "inferd_spec_decode_num_draft_tokens_total", model="m") == 40
    assert metric_value(text, "inferd_spec_decode_num_accepted_tokens_total", model="m") == 31
    assert metric_value(text, "vllm:spec_decode_num_accepted_tokens_total", model_name="m") == 31
    spec_lines = [ln for ln in text.splitlines() if "spec_decode" in ln and not ln.startswith("#")]
    assert spec_lines and not any('"plain"' in ln for ln in spec_lines)


def test_each_app_has_its_own_registry():
    a, b = ServerMetrics(), ServerMetrics()
    ea, eb = fake_engine(), fake_engine()
    a.attach("m", ea)
    b.attach("m", eb)
    req, t0 = finished_request(2)
    ea.engine.observer.on_finished(req, t0 + 1)
    assert metric_value(render(a), "inferd_requests_total") == 1
    assert metric_value(render(b), "inferd_requests_total") == 0


def test_vllm_compat_names():
    metrics = ServerMetrics(compat="vllm")
    engine = fake_engine()
    metrics.attach("m", engine)
    req, t0 = finished_request(3, reason="length")
    engine.engine.observer.on_first_token(req, t0 + 1)
    engine.engine.observer.on_finished(req, t0 + 2)
    text = render(metrics)
    for name in ("vllm:time_to_first_token_seconds_count", "vllm:e2e_request_latency_seconds_count",
                 "vllm:time_per_output_token_seconds_count", "vllm:prompt_tokens_total"):
        assert metric_value(text, name, model_name="m") >= 1, name
    assert metric_value(text, "vllm:request_success_total", model_name="m", finished_reason="length") == 1
    assert metric_value(text, "vllm:kv_cache_usage_perc", model_name="m") == 0.25
    assert metric_value(text, "vllm:num_requests_running", model_name="m") == 3
    assert metric_value(text, "vllm:prefix_cache_hits_total", model_name="m") == 30
    assert metric_value(text, "vllm:prefix_cache_queries_total", model_name="m") == 60
    assert metric_value(text, "vllm:num_preemptions_total", model_name="m") == 4


def test_vllm_request_and_step_families():
    """The families vLLM dashboards query beyond the basics: per-request token and phase
    histograms, tokens per step, and the cache configuration."""
    metrics = ServerMetrics(compat="vllm")
    engine = fake_engine()
    metrics.attach("m", engine)
    req, t0 = finished_request(3)
    req.timing.last_token = t0 + 1.75
    obs = engine.engine.observer
    obs.on_first_token(req, t0 + 1)
    obs.on_step(prompt_tokens=4, generation_tokens=1)
    obs.on_step(prompt_tokens=0, generation_tokens=2)
    obs.on_finished(req, t0 + 2)
    text = render(metrics)
    for prefix in ("vllm:", "inferd_"):
        assert metric_value(text, f"{prefix}request_prompt_tokens_sum") == 4
        assert metric_value(text, f"{prefix}request_generation_tokens_sum") == 3
        assert metric_value(text, f"{prefix}request_prefill_time_seconds_sum") == pytest.approx(0.5)
        assert metric_value(text, f"{prefix}request_decode_time_seconds_sum") == pytest.approx(0.75)
    assert metric_value(text, "vllm:iteration_tokens_total_count", model_name="m") == 2
    assert metric_value(text, "vllm:iteration_tokens_total_sum", model_name="m") == 7
    assert metric_value(text, "vllm:cache_config_info", model_name="m", block_size="16", num_cpu_blocks="100",
                        enable_prefix_caching="True") == 1
    assert metric_value(text, "inferd_kv_cache_capacity_tokens", model="m") == 1600


def test_every_series_is_documented():
    metrics = ServerMetrics(compat="vllm")
    metrics.attach("m", fake_engine(speculator=SimpleNamespace(num_draft_tokens=1, num_accepted_tokens=1)))
    doc = METRICS_MD.read_text()
    names = {f.name + ("_total" if f.type == "counter" else "") for f in metrics.registry.collect()}
    assert len(names) >= 30
    missing = sorted(n for n in names if f"`{n}`" not in doc)
    assert not missing, f"not documented in README.md: {missing}"
