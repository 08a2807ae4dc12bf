"""End-to-end runs against the fake streaming server: timestamps, counts, load shapes, failures."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from inferd.bench import BenchConfig, WorkloadConfig, run_benchmark
from inferd.bench.loadgen import poisson_arrivals

from .fake_openai import fake_openai_server


def config(url: str, **kw) -> BenchConfig:
    kw.setdefault("num_requests", 6)
    kw.setdefault("workload", WorkloadConfig(kind="random", input_len=40, output_len=6))
    kw.setdefault("timeout", 10.0)
    return BenchConfig(base_url=url, model="fake", **kw)


def dataset(tmp_path: Path, prompts: list[str], max_tokens: int = 6) -> WorkloadConfig:
    path = tmp_path / "prompts.jsonl"
    path.write_text(
        "".join(json.dumps({"prompt": p, "max_tokens": max_tokens}) + "\n" for p in prompts)
    )
    return WorkloadConfig(dataset=str(path))


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_records_agree_with_timestamps(fake_server, endpoint: str) -> None:
    url, state = fake_server
    result = run_benchmark(config(url, endpoint=endpoint, concurrency=(2,)))
    (run,) = result.runs
    assert len(run.records) == 6 and all(r.success for r in run.records)
    assert [r.index for r in run.records] == list(range(6))
    for r in run.records:
        assert r.output_tokens == 6 and r.output_token_source == "usage"
        assert r.prompt_token_source == "usage" and r.prompt_tokens > 20
        assert len(r.token_times) == 6 and len(r.itls) == 5
        assert r.first_token_time == r.token_times[0]
        assert r.token_times == sorted(r.token_times)
        assert r.send_time < r.first_token_time <= r.end_time
        assert r.ttft >= state.ttft  # the server waits that long before the first token
        assert r.ttft <= r.e2e
        assert r.tpot == pytest.approx((r.e2e - r.ttft) / 5)
        assert r.finish_reason == "length"
    s = run.summary
    assert s["completed"] == 6 and s["failed"] == 0 and s["output_tokens"] == 36
    assert s["itl_ms"]["count"] == 30 and s["ttft_ms"]["count"] == 6
    assert s["ttft_ms"]["min"] >= state.ttft * 1000
    assert s["output_throughput"] == pytest.approx(36 / run.duration)
    body = state.bodies[0]
    assert (
        body["stream"] and body["stream_options"] == {"include_usage": True} and body["ignore_eos"]
    )
    assert ("messages" in body) == (endpoint == "chat")


def test_concurrency_is_respected(fake_server) -> None:
    url, state = fake_server
    result = run_benchmark(config(url, concurrency=(1, 3), num_requests=9))
    one, three = result.runs
    assert one.summary["peak_in_flight"] == 1
    assert three.summary["peak_in_flight"] == 3
    assert state.max_in_flight == 3  # never more than asked for, as the server saw it
    assert [r.label for r in result.runs] == ["concurrency=1", "concurrency=3"]
    # a sweep replays the same requests at every level
    prompts = [b["messages"][0]["content"] for b in state.bodies]
    assert sorted(prompts[:9]) == sorted(prompts[9:])


def test_poisson_arrivals_follow_seeded_schedule(fake_server) -> None:
    url, state = fake_server
    cfg = config(url, request_rates=(40.0,), num_requests=8, seed=7)
    first = run_benchmark(cfg).runs[0]
    expected = poisson_arrivals(40.0, seed=7, num_requests=8)
    assert [r.scheduled_time for r in first.records] == expected
    for r in first.records:
        assert r.send_time >= r.scheduled_time - 1e-3
    bodies_first = sorted(json.dumps(b, sort_keys=True) for b in state.bodies)
    state.bodies.clear()
    second = run_benchmark(cfg).runs[0]
    assert [r.scheduled_time for r in second.records] == expected
    assert sorted(json.dumps(b, sort_keys=True) for b in state.bodies) == bodies_first
    assert first.label == "rate=40/s" and first.load["mode"] == "rate"


def test_open_loop_max_concurrency_caps_in_flight(fake_server) -> None:
    url, state = fake_server
    run = run_benchmark(
        config(url, request_rates=(float("inf"),), max_concurrency=2, num_requests=6)
    ).runs[0]
    assert run.summary["completed"] == 6
    assert state.max_in_flight <= 2 and run.summary["peak_in_flight"] <= 2


def test_failures_are_counted_with_reasons_and_bounded(fake_server, tmp_path: Path) -> None:
    url, _ = fake_server
    wl = dataset(
        tmp_path, ["fine one", "FAIL500", "FAIL429", "CLOSE_EARLY", "TRUNCATE", "HANG", "fine two"]
    )
    start = time.monotonic()
    run = run_benchmark(
        config(url, workload=wl, concurrency=(7,), num_requests=7, timeout=1.0)
    ).runs[0]
    assert time.monotonic() - start < 8  # the hanging request is cut at its timeout
    s = run.summary
    assert s["completed"] == 2 and s["failed"] == 5
    assert s["failure_reasons"] == {
        "HTTP 500": 1,
        "HTTP 429": 1,
        "stream interrupted": 1,
        "stream ended early": 1,
        "timeout": 1,
    }
    by_kind = {r.error_kind: r for r in run.records if not r.success}
    assert "internal boom" in by_kind["HTTP 500"].error
    assert by_kind["HTTP 429"].http_status == 429
    assert len(by_kind["stream ended early"].token_times) == 3  # partial data kept for inspection
    assert s["output_tokens"] == 12  # failed requests' partial tokens do not count


def test_unreachable_server_fails_fast() -> None:
    with fake_openai_server() as (url, _):
        pass  # the port is closed again now
    run = run_benchmark(config(url, num_requests=3, timeout=5.0)).runs[0]
    assert run.summary["failed"] == 3
    assert run.summary["failure_reasons"] == {"connect error": 3}


def test_duration_bounds_a_run(fake_server) -> None:
    url, _ = fake_server
    start = time.monotonic()
    run = run_benchmark(config(url, num_requests=None, duration=0.5, concurrency=(2,))).runs[0]
    assert time.monotonic() - start < 3
    assert run.summary["completed"] >= 2
    assert max(r.send_time for r in run.records) < 0.5 + 0.05


def test_warmup_is_not_counted(fake_server) -> None:
    url, state = fake_server
    run = run_benchmark(config(url, num_requests=4, warmup=3)).runs[0]
    assert len(run.records) == 4 and len(state.bodies) == 7


def test_token_count_fallbacks(fake_server, tmp_path: Path) -> None:
    url, _ = fake_server
    wl = dataset(tmp_path, ["NOUSAGE alpha beta"], max_tokens=5)
    run = run_benchmark(config(url, workload=wl, num_requests=2, endpoint="completions")).runs[0]
    for r in run.records:
        assert (r.output_tokens, r.output_token_source) == (5, "sse-events")
        assert r.prompt_token_source == "estimate"
    assert run.summary["token_sources"]["output"] == {"sse-events": 2}

    tok_dir = tiny_tokenizer(tmp_path / "tok")
    run = run_benchmark(
        config(url, workload=wl, num_requests=2, endpoint="completions", tokenizer=str(tok_dir))
    ).runs[0]
    for r in run.records:
        assert (r.output_tokens, r.output_token_source) == (5, "tokenizer")
        assert (r.prompt_tokens, r.prompt_token_source) == (3, "tokenizer")


def tiny_tokenizer(path: Path) -> Path:
    """A word-level tokenizer that knows the fake server's tokens: one word, one token."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, **{f"tok{i}": i + 1 for i in range(64)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    path.mkdir()
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "[UNK]"})
    )
    return path


def test_spec_decode_acceptance_from_metrics(fake_server) -> None:
    url, _ = fake_server
    run = run_benchmark(config(url, num_requests=4)).runs[0]
    assert run.server["spec_acceptance_rate"] == pytest.approx(0.7)
    assert run.server["spec_draft_tokens"] == 40


def test_missing_metrics_endpoint_is_fine() -> None:
    with fake_openai_server(metrics=False) as (url, _):
        run = run_benchmark(config(url, num_requests=2)).runs[0]
    assert run.server == {} and run.summary["completed"] == 2
