"""Workloads are deterministic, shaped as their names promise, and become the right request bodies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inferd.bench.client import build_body
from inferd.bench.config import BenchConfig, WorkloadConfig
from inferd.bench.records import RequestSpec
from inferd.bench.workloads import RequestSource, load_dataset

EXAMPLE = (
    Path(__file__).resolve().parents[2] / "inferd" / "data" / "workloads" / "example_prompts.jsonl"
)


def specs(kind: str, n: int = 20, seed: int = 0, **kw) -> list[RequestSpec]:
    src = RequestSource(WorkloadConfig(kind=kind, **kw), seed)
    return [src(i) for i in range(n)]


@pytest.mark.parametrize("kind", ["random", "chat", "shared-prefix", "long-context", "repetitive"])
def test_same_seed_same_requests(kind: str) -> None:
    kw = {"input_len": 300} if kind == "long-context" else {}
    assert specs(kind, 8, seed=3, **kw) == specs(kind, 8, seed=3, **kw)
    assert specs(kind, 8, seed=3, **kw) != specs(kind, 8, seed=4, **kw)


def test_index_lookup_is_order_independent() -> None:
    src = RequestSource(WorkloadConfig(kind="random"), seed=1)
    late = src(5)
    assert late == specs("random", 6, seed=1)[5]


def test_random_lengths_follow_spread() -> None:
    got = specs("random", 60, input_len=100, output_len=40, input_spread=0.5, output_spread=0.25)
    outs = [s.max_tokens for s in got]
    assert all(30 <= o <= 50 for o in outs) and len(set(outs)) > 5
    ins = [s.estimated_prompt_tokens for s in got]
    assert all(50 <= n <= 150 for n in ins) and len(set(ins)) > 10
    # the prose is sized by estimate: word counts track the requested token counts
    for s in got:
        words = len(s.prompt.split())
        assert 0.5 * s.estimated_prompt_tokens <= words <= 1.2 * s.estimated_prompt_tokens


def test_random_fixed_lengths_without_spread() -> None:
    assert {s.max_tokens for s in specs("random", 10, output_len=17)} == {17}


def test_shared_prefix_shares_exact_system_prompt() -> None:
    got = specs("shared-prefix", 12, prefix_len=400, num_prefixes=3)
    systems = [s.messages[0]["content"] for s in got]
    assert len(set(systems)) == 3
    assert systems[0] == systems[3] == systems[6] and systems[1] == systems[4]
    assert len(systems[0].split()) > 200
    users = [s.messages[1]["content"] for s in got]
    assert len(set(users)) == 12


def test_chat_turns_are_short_and_well_formed() -> None:
    for s in specs("chat", 30):
        roles = [m["role"] for m in s.messages]
        assert roles[0] == "system" and roles[-1] == "user"
        assert all(a != b for a, b in zip(roles[1:], roles[2:], strict=False))
        assert sum(len(m["content"].split()) for m in s.messages) < 250


def test_long_context_is_prefill_heavy() -> None:
    for s in specs("long-context", 3):
        assert len(s.prompt.split()) > 1500 and s.max_tokens <= 64


def test_repetitive_answers_copy_the_prompt() -> None:
    for s in specs("repetitive", 20, input_len=150):
        instruction, _, passage = s.prompt.partition("\n\n")
        assert any(
            w in instruction.lower() for w in ("repeat", "copy", "rewrite", "return the same")
        )
        assert len(passage.split()) > 60
        # the answer is about as long as the passage, so n-gram drafts have room to help
        assert s.max_tokens >= 150


def test_dataset_file_prompts_and_messages(tmp_path: Path) -> None:
    loaded = load_dataset(EXAMPLE, default_max_tokens=128)
    assert len(loaded) == 10
    assert any(s.prompt for s in loaded) and any(s.messages for s in loaded)
    assert {s.max_tokens for s in loaded if s.prompt and "five things" in s.prompt} == {128}
    src = RequestSource(WorkloadConfig(dataset=str(EXAMPLE)), seed=0)
    assert sorted(map(repr, (src(i) for i in range(10)))) == sorted(map(repr, loaded))  # shuffled
    assert src(10) == src(0)


@pytest.mark.parametrize(
    ("line", "msg"),
    [
        ("not json", "not valid JSON"),
        ('{"x": 1}', "need a string 'prompt'"),
        ('{"messages": "hi"}', "messages must be a list"),
    ],
)
def test_dataset_errors_name_the_line(tmp_path: Path, line: str, msg: str) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"prompt": "fine"}) + "\n" + line + "\n")
    with pytest.raises(ValueError, match=f"d.jsonl:2: {msg}"):
        load_dataset(path, 16)


def test_request_bodies_for_both_endpoints() -> None:
    spec = RequestSpec(
        messages=({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}),
        max_tokens=9,
    )
    chat = build_body(spec, BenchConfig(base_url="http://x/v1", model="m"))
    assert chat["messages"][1] == {"role": "user", "content": "Hi"}
    assert chat["stream"] is True and chat["stream_options"] == {"include_usage": True}
    assert chat["ignore_eos"] is True and chat["max_tokens"] == 9 and chat["model"] == "m"

    comp = build_body(
        spec,
        BenchConfig(
            base_url="http://x/v1",
            model="m",
            endpoint="completions",
            ignore_eos=False,
            extra_body={"top_k": 5},
        ),
    )
    assert (
        "messages" not in comp and comp["prompt"].endswith("Assistant:") and "Hi" in comp["prompt"]
    )
    assert "ignore_eos" not in comp and comp["top_k"] == 5


def test_urls_derive_from_base_url() -> None:
    cfg = BenchConfig(base_url="http://h:8000/v1/", model="m")
    assert cfg.request_url == "http://h:8000/v1/chat/completions"
    assert cfg.resolved_metrics_url == "http://h:8000/metrics"
    bare = BenchConfig(base_url="http://h:8000", model="m", endpoint="completions")
    assert bare.request_url == "http://h:8000/v1/completions"
    assert (
        BenchConfig(
            base_url="http://h/v1", model="m", metrics_url="http://m/x"
        ).resolved_metrics_url
        == "http://m/x"
    )
