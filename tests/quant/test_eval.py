"""quant-eval's figures agree with an independent computation: transformers running the same
checkpoint, with weights replaced by the dequantized int8 values, scored by plain torch code."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
import transformers

from inferd.quant.eval import evaluate
from inferd.quant.registry import quantize

CORPUS = ("The harbour was quiet in the evening. Boats rested at the quay and the gulls argued "
          "over scraps. " * 12)


def independent_figures(path, method: str, window: int) -> tuple[float, float, float]:
    tok = transformers.AutoTokenizer.from_pretrained(str(path))
    ids = tok.encode(CORPUS, add_special_tokens=False)
    windows = [ids[i:i + window] for i in range(0, len(ids) - 1, window) if len(ids[i:i + window]) > 1]
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    deq = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    with torch.no_grad():
        for name, mod in deq.named_modules():
            if isinstance(mod, torch.nn.Linear) and name != "lm_head":
                mod.weight.copy_(quantize(mod.weight.float(), method).dequantize())
    nll_ref = nll_q = kl = 0.0
    n = positions = 0
    with torch.no_grad():
        for w in windows:
            a = torch.log_softmax(ref(torch.tensor([w])).logits[0].double(), -1)
            b = torch.log_softmax(deq(torch.tensor([w])).logits[0].double(), -1)
            t = torch.tensor(w[1:])
            nll_ref -= a[:-1].gather(1, t[:, None]).sum().item()
            nll_q -= b[:-1].gather(1, t[:, None]).sum().item()
            kl += (a.exp() * (a - b)).sum().item()
            n += len(w) - 1
            positions += len(w)
    return math.exp(nll_ref / n), math.exp(nll_q / n), kl / positions


def test_quant_eval_matches_independent_computation(tiny_llama):
    r = evaluate(str(tiny_llama), "int8", corpus=CORPUS, window=64, greedy_tokens=4, prompts=["hi"],
                 sensitivity=True, max_ppl_increase_pct=0.0)
    base_ppl, q_ppl, kl = independent_figures(tiny_llama, "int8", 64)
    assert r.base_perplexity == pytest.approx(base_ppl, rel=1e-4)
    # The kernels compute in bf16, the independent path in fp32/fp64: allow that rounding.
    assert r.quantized.perplexity == pytest.approx(q_ppl, rel=2e-2)
    assert r.quantized.mean_kl == pytest.approx(kl, rel=0.5, abs=1e-4)
    assert 0.0 <= r.greedy_agreement <= 1.0
    assert len(r.sensitivity) == 2 and all("ppl_increase_pct" in row for row in r.sensitivity)
    rec = r.recommendation
    assert rec["trials"][0]["skip"] == []
    # A 0% budget is met as quantized only if quantization did not raise perplexity at all;
    # otherwise the recipe must keep some layers in full precision.
    assert rec["within_budget"] == (rec["ppl_increase_pct"] <= 0.0)
    if rec["trials"][0]["ppl_increase_pct"] > 0.0:
        assert rec["skip"] and len(rec["trials"]) >= 2


def test_quant_eval_cli_writes_json(tiny_llama, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(CORPUS)
    out = tmp_path / "r.json"
    r = subprocess.run([sys.executable, "-m", "inferd.cli", "quant-eval", "--model", str(tiny_llama),
                        "--quantization", "int4", "--quant-group-size", "32", "--corpus", str(corpus),
                        "--window", "64", "--greedy-tokens", "4", "--max-ppl-increase", "5%",
                        "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "perplexity" in r.stdout and "per-layer sensitivity" in r.stdout
    import json

    data = json.loads(out.read_text())
    assert data["method"] == "int4" and data["recommendation"]["budget_pct"] == 5.0


def test_quant_eval_can_include_the_lm_head(tiny_llama):
    """--quant-lm-head is measured like the rest: fewer bytes, and its own cost in quality."""
    kw = dict(corpus=CORPUS, window=64, greedy_tokens=4, prompts=["hi"], sensitivity=False)
    body = evaluate(str(tiny_llama), "int8", **kw)
    with_head = evaluate(str(tiny_llama), "int8", lm_head=True, **kw)
    assert with_head.lm_head_quantized and not body.lm_head_quantized
    assert with_head.weight_bytes_after < body.weight_bytes_after
    assert with_head.quantized.mean_kl != body.quantized.mean_kl
    assert with_head.base_perplexity == body.base_perplexity


def test_sensitivity_and_recommendation_cover_a_quantized_head(tiny_llama):
    r = evaluate(str(tiny_llama), "int4", group_size=32, corpus=CORPUS, window=64, greedy_tokens=4,
                 prompts=["hi"], max_ppl_increase_pct=0.0, lm_head=True)
    rows = {row["layer"]: row for row in r.sensitivity}
    assert set(rows) == {0, 1, "lm_head"}
    rec = r.recommendation
    assert all(p == "lm_head" or p.startswith("model.layers.") for p in rec["skip"])
    if rec["skip"]:  # the most sensitive part is kept first
        worst = max(r.sensitivity, key=lambda row: row["ppl_increase_pct"])
        assert rec["skip"][0] == ("lm_head" if worst["layer"] == "lm_head" else f"model.layers.{worst['layer']}.*")
