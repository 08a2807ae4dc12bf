"""quant-eval: what a quantization costs in quality, measured against the unquantized model.

Reports perplexity on the project's own corpus, mean KL divergence of next-token distributions,
top-1 agreement, greedy-continuation agreement on a prompt set, a per-layer sensitivity table
(each decoder layer quantized alone), and the layers to keep in higher precision to stay within
a perplexity budget (checked by re-measuring with that mixed-precision recipe).
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from importlib import resources

import torch

from inferd.config import ModelConfig
from inferd.model.loader import LoadedModel, load_model
from inferd.model.scoring import sequence_logits
from inferd.quant.apply import quantize_model, quantize_model_and_head
from inferd.quant.registry import quant_method

PROMPTS = [
    "Explain why the sky is blue in two sentences.",
    "Write a short poem about a lighthouse.",
    "What are three tips for baking bread at home?",
    "Summarize the rules of chess for a beginner.",
    "List the first five prime numbers and explain what a prime is.",
    "Describe a quiet harbour at sunset.",
]


def default_corpus() -> str:
    return resources.files("inferd.data").joinpath("eval_corpus.txt").read_text()


@dataclass
class QualityFigures:
    perplexity: float
    mean_kl: float  # KL(reference || quantized), nats per token
    top1_agreement: float
    ppl_increase_pct: float


@dataclass
class QuantEvalResult:
    method: str
    group_size: int
    symmetric: bool
    skip: list[str]
    tokens_evaluated: int
    base_perplexity: float
    quantized: QualityFigures
    greedy_agreement: float  # mean matching-prefix fraction of greedy continuations
    weight_bytes_before: int
    weight_bytes_after: int
    sensitivity: list[dict] = field(default_factory=list)  # per layer: layer, ppl_increase_pct, mean_kl
    recommendation: dict | None = None
    lm_head_quantized: bool | str = False  # the output head (and a tied embedding) too; str: its method

    def to_dict(self) -> dict:
        return asdict(self)


class Evaluator:
    """Holds the reference model, the corpus windows and the reference logits."""

    def __init__(self, base: LoadedModel, corpus: str, window: int = 512, max_windows: int | None = None):
        self.base = base
        ids = base.tokenizer.encode(corpus, add_special_tokens=False)
        self.windows = [ids[i:i + window] for i in range(0, len(ids) - 1, window) if len(ids[i:i + window]) > 1]
        if max_windows:
            self.windows = self.windows[:max_windows]
        self.ref_logprobs = [torch.log_softmax(sequence_logits(base.model, w), dim=-1) for w in self.windows]
        self.base_ppl = self._ppl(self.ref_logprobs)

    @property
    def num_tokens(self) -> int:
        return sum(len(w) - 1 for w in self.windows)

    def _ppl(self, logprobs: list[torch.Tensor], windows: list[list[int]] | None = None) -> float:
        nll, n = 0.0, 0
        for lp, w in zip(logprobs, windows or self.windows, strict=True):
            targets = torch.tensor(w[1:], device=lp.device)
            nll -= lp[:-1].gather(1, targets[:, None]).sum().item()
            n += len(w) - 1
        return math.exp(nll / n)

    def figures(self, model, windows: int | None = None) -> QualityFigures:
        wins = self.windows[:windows] if windows else self.windows
        refs = self.ref_logprobs[:len(wins)]
        lps = [torch.log_softmax(sequence_logits(model, w), dim=-1) for w in wins]
        kl = sum((r.exp() * (r - q)).sum().item() for r, q in zip(refs, lps, strict=True))
        agree = sum((r.argmax(-1) == q.argmax(-1)).sum().item() for r, q in zip(refs, lps, strict=True))
        positions = sum(len(w) for w in wins)
        ppl = self._ppl(lps, wins)
        base = self._ppl(refs, wins)
        return QualityFigures(ppl, kl / positions, agree / positions, 100.0 * (ppl / base - 1.0))


def quantized_copy(model, method: str, group_size: int, symmetric: bool, skip: list[str],
                   lm_head: bool | str = False):
    q = copy.deepcopy(model)
    report = quantize_model_and_head(q, method, lm_head, group_size=group_size, symmetric=symmetric,
                                     skip=skip)
    return q, report


def greedy_agreement(base: LoadedModel, quantized_model, prompts: list[str], tokens: int) -> float:
    """Mean fraction of each greedy continuation that matches before the first divergence."""
    fractions = []
    for prompt in prompts:
        ids = base.tokenizer.encode_chat([{"role": "user", "content": prompt}])
        a, b = _greedy(base.model, ids, tokens), _greedy(quantized_model, ids, tokens)
        same = next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), tokens)
        fractions.append(same / tokens)
    return sum(fractions) / len(fractions)


def _greedy(model, ids: list[int], tokens: int) -> list[int]:
    # Re-scoring the whole prefix each step is quadratic but exact and independent of the engine.
    seq = list(ids)
    for _ in range(tokens):
        seq.append(int(sequence_logits(model, seq)[-1].argmax()))
    return seq[len(ids):]


def layer_sensitivity(ev: Evaluator, method: str, group_size: int, symmetric: bool,
                      windows: int = 1, lm_head: bool | str = False) -> list[dict]:
    """Quantize one decoder layer at a time (the rest in full precision) and measure the loss;
    with lm_head, the output head alone as well (row "lm_head"): at 4 bits it can cost more
    than every decoder layer together, and the recommendation must be able to keep it."""
    model = ev.base.model
    rows = []
    for i, layer in enumerate(model.model.layers):
        q_layer = copy.deepcopy(layer)
        quantize_model(q_layer, method, group_size=group_size, symmetric=symmetric)
        model.model.layers[i] = q_layer
        try:
            f = ev.figures(model, windows)
        finally:
            model.model.layers[i] = layer
        rows.append({"layer": i, "ppl_increase_pct": f.ppl_increase_pct, "mean_kl": f.mean_kl})
    if lm_head:
        head_only, _ = quantized_copy(model, method, group_size, symmetric, ["model.layers.*"], lm_head)
        f = ev.figures(head_only, windows)
        rows.append({"layer": "lm_head", "ppl_increase_pct": f.ppl_increase_pct, "mean_kl": f.mean_kl})
    return rows


def _skip_for(row: dict) -> str:
    """The --quant-skip pattern that keeps this sensitivity row's part in full precision."""
    return "lm_head" if row["layer"] == "lm_head" else f"model.layers.{row['layer']}.*"


def recommend_skip(ev: Evaluator, method: str, group_size: int, symmetric: bool, base_skip: list[str],
                   sensitivity: list[dict], budget_pct: float, lm_head: bool | str = False) -> dict:
    """Keep the most sensitive layers in full precision until the measured increase fits."""
    order = sorted(sensitivity, key=lambda r: r["ppl_increase_pct"], reverse=True)
    skip = list(base_skip)
    trials = []
    for step in range(len(order) + 1):
        model, report = quantized_copy(ev.base.model, method, group_size, symmetric, skip, lm_head)
        f = ev.figures(model)
        trials.append({"skip": list(skip), "ppl_increase_pct": f.ppl_increase_pct})
        if f.ppl_increase_pct <= budget_pct or step == len(order):
            return {"budget_pct": budget_pct, "skip": skip, "ppl_increase_pct": f.ppl_increase_pct,
                    "mean_kl": f.mean_kl, "within_budget": f.ppl_increase_pct <= budget_pct,
                    "weight_bytes_after": report.model_bytes_after, "trials": trials}
        skip.append(_skip_for(order[step]))
    raise AssertionError("unreachable")


def evaluate(model: str, method: str, *, dtype: str = "float32", group_size: int = 64,
             symmetric: bool = True, skip: list[str] | None = None, corpus: str | None = None,
             window: int = 512, greedy_tokens: int = 24, prompts: list[str] | None = None,
             sensitivity: bool = True, max_ppl_increase_pct: float | None = None,
             lm_head: bool | str = False) -> QuantEvalResult:
    """lm_head: quantize the output head (and a tied embedding) too, as `--quant-lm-head` does
    (True: with `method`; or a method of its own)."""
    skip = list(skip or [])
    base = load_model(ModelConfig(model=model, dtype=dtype, device="cpu", quantization="none"))
    ev = Evaluator(base, corpus if corpus is not None else default_corpus(), window)
    qmodel, report = quantized_copy(base.model, method, group_size, symmetric, skip, lm_head)
    figs = ev.figures(qmodel)
    result = QuantEvalResult(
        method=method, group_size=group_size, symmetric=symmetric, skip=skip,
        tokens_evaluated=ev.num_tokens, base_perplexity=ev.base_ppl, quantized=figs,
        greedy_agreement=greedy_agreement(base, qmodel, prompts or PROMPTS, greedy_tokens),
        weight_bytes_before=report.model_bytes_before, weight_bytes_after=report.model_bytes_after,
        lm_head_quantized=lm_head)
    if sensitivity:
        result.sensitivity = layer_sensitivity(ev, method, group_size, symmetric, lm_head=lm_head)
        if max_ppl_increase_pct is not None:
            result.recommendation = recommend_skip(ev, method, group_size, symmetric, skip,
                                                   result.sensitivity, max_ppl_increase_pct, lm_head)
    return result


def format_result(r: QuantEvalResult) -> str:
    mib = 2**20
    q = r.quantized
    lines = [
        f"quant-eval: {r.method}" + (f" (group {r.group_size}, {'sym' if r.symmetric else 'asym'})"
                                     if quant_method(r.method).group_sizes else "") + (f", skip {r.skip}" if r.skip else "")
        + ((f", LM head {r.lm_head_quantized}" if isinstance(r.lm_head_quantized, str) else ", LM head too")
           if r.lm_head_quantized else ""),
        f"  tokens evaluated        {r.tokens_evaluated}",
        f"  weights                 {r.weight_bytes_before / mib:.1f} MiB -> {r.weight_bytes_after / mib:.1f} MiB",
        f"  perplexity              {r.base_perplexity:.3f} -> {q.perplexity:.3f} ({q.ppl_increase_pct:+.2f}%)",
        f"  mean KL (nats/token)    {q.mean_kl:.5f}",
        f"  top-1 agreement         {100 * q.top1_agreement:.2f}%",
        f"  greedy agreement        {100 * r.greedy_agreement:.1f}% of continuation tokens before divergence",
    ]
    if r.sensitivity:
        lines.append("  per-layer sensitivity (this layer alone quantized), most sensitive first:")
        lines.append("    layer   ppl increase   mean KL")
        for row in sorted(r.sensitivity, key=lambda x: x["ppl_increase_pct"], reverse=True)[:10]:
            lines.append(f"    {row['layer']:>5}   {row['ppl_increase_pct']:+10.3f}%   {row['mean_kl']:.5f}")
    if r.recommendation:
        rec = r.recommendation
        verdict = "within" if rec["within_budget"] else "NOT within"
        flags = " ".join(f"--quant-skip '{p}'" for p in rec["skip"]) or "(none)"
        lines.append(f"  recommendation for a {rec['budget_pct']:.2f}% budget: {flags}")
        lines.append(f"    measured: {rec['ppl_increase_pct']:+.2f}% perplexity ({verdict} budget), "
                     f"weights {rec['weight_bytes_after'] / mib:.1f} MiB")
    return "\n".join(lines)
