"""`inferd bench` against a real inferd server: its figures agree with the server's own
/metrics and with the per-request timestamps."""

from __future__ import annotations

import httpx

from inferd.bench import BenchConfig, WorkloadConfig, run_benchmark

from .helpers import API_KEY, metric_value


def test_bench_figures_agree_with_server_metrics(tiny_server):
    def scrape() -> str:
        return httpx.get(tiny_server.url + "/metrics", timeout=10).text

    before = scrape()
    cfg = BenchConfig(base_url=tiny_server.v1, model="tiny", api_key=API_KEY, endpoint="completions",
                      workload=WorkloadConfig(kind="random", input_len=24, output_len=12),
                      concurrency=(4,), num_requests=12, seed=3, timeout=120)
    run = run_benchmark(cfg).runs[0]
    after = scrape()
    s = run.summary
    assert s["completed"] == 12 and s["failed"] == 0
    for r in run.records:
        assert r.success and r.send_time <= r.first_token_time <= r.end_time
        assert r.ttft <= r.e2e
        assert r.output_tokens == 12 and r.output_token_source == "usage"
        assert len(r.token_times) == r.output_tokens  # one SSE event per generated token
    gen = (metric_value(after, "inferd_generation_tokens_total", model="tiny")
           - metric_value(before, "inferd_generation_tokens_total", model="tiny"))
    prompt = (metric_value(after, "inferd_prompt_tokens_total", model="tiny")
              - metric_value(before, "inferd_prompt_tokens_total", model="tiny"))
    ttft_count = (metric_value(after, "inferd_time_to_first_token_seconds_count", model="tiny")
                  - metric_value(before, "inferd_time_to_first_token_seconds_count", model="tiny"))
    assert gen == s["output_tokens"] == 12 * 12
    assert prompt == s["prompt_tokens"]
    assert ttft_count == 12
    # Server-side TTFT excludes HTTP and queueing on the client side, so it is never larger.
    server_ttft = ((metric_value(after, "inferd_time_to_first_token_seconds_sum", model="tiny")
                    - metric_value(before, "inferd_time_to_first_token_seconds_sum", model="tiny")) / 12)
    assert server_ttft <= s["ttft_ms"]["mean"] / 1000 + 1e-3
