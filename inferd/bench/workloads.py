"""Workloads: deterministic streams of `RequestSpec`s, one per request index, from a seed.

Built-in shapes: `random` (lengths with spread), `chat` (short multi-turn exchanges),
`shared-prefix` (a long common system prompt, so prefix caching can help), `long-context`
(prefill-heavy), `repetitive` (copy/edit prompts whose answers repeat the prompt, so n-gram
speculation can help), and user datasets (`.jsonl` of `{"prompt"}` or `{"messages"}`).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

from inferd.bench import text
from inferd.bench.config import WorkloadConfig
from inferd.bench.records import RequestSpec

# (input_len, output_len) defaults per workload, in tokens.
DEFAULT_LENGTHS: dict[str, tuple[int, int]] = {
    "random": (256, 128),
    "chat": (0, 96),  # chat prompts are as long as their turns; input_len is not used
    "shared-prefix": (32, 64),  # input_len is the per-request part after the shared prefix
    "long-context": (3000, 32),
    "repetitive": (192, 0),  # output 0 means "about as long as the passage"
    "dataset": (0, 128),
}

# Trims/extends text to an exact token count when a tokenizer is available.
TextFitter = Callable[[str, int], str]


def _spread(rng: random.Random, length: int, spread: float) -> int:
    if spread <= 0:
        return max(1, length)
    lo, hi = max(1, round(length * (1 - spread))), max(1, round(length * (1 + spread)))
    return rng.randint(lo, hi)


class RequestSource:
    """Hands out the same `RequestSpec` for index i on every run with the same seed.

    Specs are generated in index order from one RNG and cached, so a concurrency sweep replays
    exactly the same requests at every level.
    """

    def __init__(self, cfg: WorkloadConfig, seed: int, fit: TextFitter | None = None) -> None:
        self.cfg = cfg
        self.kind = "dataset" if cfg.dataset else cfg.kind
        default_in, default_out = DEFAULT_LENGTHS[self.kind]
        self.input_len = cfg.input_len if cfg.input_len is not None else default_in
        self.output_len = cfg.output_len if cfg.output_len is not None else default_out
        self._rng = random.Random(seed)
        self._fit = fit
        self._specs: list[RequestSpec] = []
        self._dataset: list[RequestSpec] = (
            load_dataset(cfg.dataset, self.output_len or 128) if cfg.dataset else []
        )
        if self._dataset:
            random.Random(seed).shuffle(self._dataset)
        # Shared prefixes are built once: every request of a group must see identical bytes.
        self._prefixes = (
            [self._sized_text(cfg.prefix_len) for _ in range(cfg.num_prefixes)]
            if self.kind == "shared-prefix"
            else []
        )

    def __call__(self, index: int) -> RequestSpec:
        while len(self._specs) <= index:
            self._specs.append(self._make(len(self._specs)))
        return self._specs[index]

    # --- one builder per workload --------------------------------------------------------
    def _make(self, index: int) -> RequestSpec:
        if self.kind == "dataset":
            return self._dataset[index % len(self._dataset)]
        return getattr(self, "_make_" + self.kind.replace("-", "_"))(index)

    def _sized_text(self, n_tokens: int) -> str:
        if self._fit is None:
            return text.prose(self._rng, n_tokens)
        # Overshoot, then cut to the exact count with the real tokenizer.
        return self._fit(text.prose(self._rng, round(n_tokens * 1.3) + 8), n_tokens)

    def _out_len(self) -> int:
        return _spread(self._rng, self.output_len, self.cfg.output_spread)

    def _make_random(self, index: int) -> RequestSpec:
        n_in = _spread(self._rng, self.input_len, self.cfg.input_spread)
        return RequestSpec(
            prompt=self._sized_text(n_in), max_tokens=self._out_len(), estimated_prompt_tokens=n_in
        )

    def _make_long_context(self, index: int) -> RequestSpec:
        n_in = _spread(self._rng, self.input_len, self.cfg.input_spread)
        doc = self._sized_text(n_in)
        prompt = f"{doc}\n\nSummarize the text above in three sentences."
        return RequestSpec(
            prompt=prompt, max_tokens=self._out_len(), estimated_prompt_tokens=n_in + 10
        )

    def _make_chat(self, index: int) -> RequestSpec:
        rng = self._rng
        messages = [{"role": "system", "content": rng.choice(text.CHAT_SYSTEM_PROMPTS)}]
        messages.append({"role": "user", "content": text.chat_question(rng)})
        for _ in range(rng.randrange(3)):  # 0-2 earlier exchanges keep turns short but varied
            messages.append({"role": "assistant", "content": text.prose(rng, rng.randint(20, 60))})
            messages.append({"role": "user", "content": text.chat_follow_up(rng)})
        words = sum(len(m["content"].split()) for m in messages)
        return RequestSpec(
            messages=tuple(messages),
            max_tokens=self._out_len(),
            estimated_prompt_tokens=round(words * text.TOKENS_PER_WORD) + 5 * len(messages),
        )

    def _make_shared_prefix(self, index: int) -> RequestSpec:
        prefix = self._prefixes[index % len(self._prefixes)]
        question = text.chat_question(self._rng)
        n_suffix = max(0, self.input_len - round(len(question.split()) * text.TOKENS_PER_WORD))
        if n_suffix > 8:  # pad the private part up to input_len with request-specific prose
            question = text.prose(self._rng, n_suffix) + "\n\n" + question
        return RequestSpec(
            messages=({"role": "system", "content": prefix}, {"role": "user", "content": question}),
            max_tokens=self._out_len(),
            estimated_prompt_tokens=self.cfg.prefix_len + self.input_len,
        )

    def _make_repetitive(self, index: int) -> RequestSpec:
        rng = self._rng
        n_in = _spread(rng, self.input_len, self.cfg.input_spread)
        passage = text.prose(rng, n_in)
        form = rng.randrange(4)
        if form == 0:
            prompt = (
                f"Repeat the following text exactly, word for word, and add nothing.\n\n{passage}"
            )
        elif form == 1:
            present = [
                w for w in passage.replace(".", " ").replace(",", " ").split() if w in text.NOUNS
            ]
            old = rng.choice(present) if present else rng.choice(text.NOUNS)
            new = rng.choice(text.NOUNS)
            prompt = (
                f'Copy the text below, replacing every "{old}" with "{new}". '
                f"Change nothing else.\n\n{passage}"
            )
        elif form == 2:
            passage = text.item_list(rng, n_in)
            prompt = (
                "Rewrite this list with a number in front of each line, "
                f"keeping every line exactly as it is.\n\n{passage}"
            )
        else:
            prompt = (
                "Here is a draft. Return the same text, but put each sentence on its own line."
                f"\n\n{passage}"
            )
        out = self._out_len() if self.output_len else round(n_in * 1.1) + 8
        return RequestSpec(prompt=prompt, max_tokens=out, estimated_prompt_tokens=n_in + 20)


def load_dataset(path: str | Path, default_max_tokens: int) -> list[RequestSpec]:
    """Read `{"prompt": str}` or `{"messages": [...]}` lines (optional `max_tokens`)."""
    specs: list[RequestSpec] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object")
            max_tokens = int(row.get("max_tokens", default_max_tokens))
            if "messages" in row:
                msgs = row["messages"]
                if not isinstance(msgs, list) or not all(
                    isinstance(m, dict) and isinstance(m.get("content"), str) for m in msgs
                ):
                    raise ValueError(
                        f"{path}:{lineno}: messages must be a list of {{role, content}}"
                    )
                words = sum(len(m["content"].split()) for m in msgs)
                specs.append(
                    RequestSpec(
                        messages=tuple(
                            {"role": str(m.get("role", "user")), "content": m["content"]}
                            for m in msgs
                        ),
                        max_tokens=max_tokens,
                        estimated_prompt_tokens=round(words * text.TOKENS_PER_WORD),
                    )
                )
            elif isinstance(row.get("prompt"), str):
                specs.append(
                    RequestSpec(
                        prompt=row["prompt"],
                        max_tokens=max_tokens,
                        estimated_prompt_tokens=round(
                            len(row["prompt"].split()) * text.TOKENS_PER_WORD
                        ),
                    )
                )
            else:
                raise ValueError(f"{path}:{lineno}: need a string 'prompt' or a 'messages' list")
    if not specs:
        raise ValueError(f"{path}: no requests found")
    return specs
