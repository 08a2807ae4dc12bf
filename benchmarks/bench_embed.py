"""Time inferd's Embedder against transformers + sentence-transformers-style pooling, on the
bundled all-MiniLM-L6-v2, tokenizing included on both sides.

Workload: N sentences of about 20 tokens each (lengths vary, so padding matters). Variants run
interleaved round by round so that noise from other processes hits them alike; a cell is the
median over rounds, in texts/s:

  inferd       Embedder.embed: packed batch, padding only inside attention
  hf           AutoTokenizer(padding=True) + AutoModel (its default SDPA) + masked mean + L2

    .venv/bin/python benchmarks/bench_embed.py --texts 64 --repeats 5 [--dtype bfloat16] [--threads 1]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import machine, median  # noqa: E402
from inferd.embedder import Embedder  # noqa: E402
from inferd.model.embedding_models import resolve_embedding_model  # noqa: E402

_WORDS = ("the model reads each sentence and returns one vector that places similar meanings "
          "close together so search ranking clustering and deduplication work on text from users "
          "who write about weather travel code food music science history sport").split()


def sentences(n: int, seed: int = 0) -> list[str]:
    """Sentences of 14-24 words (about 16-26 tokens with [CLS]/[SEP])."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(14, 24))).capitalize() + "."
            for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="all-minilm-l6-v2")
    ap.add_argument("--texts", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoModel, AutoTokenizer

    path = resolve_embedding_model(args.model)
    texts = sentences(args.texts)
    ours = Embedder.from_path(path, dtype=args.dtype)
    tok = AutoTokenizer.from_pretrained(str(path))
    ref = AutoModel.from_pretrained(str(path), dtype=getattr(torch, args.dtype)).eval()

    def hf() -> torch.Tensor:
        enc = tok(texts, padding=True, truncation=True, max_length=ours.max_seq_length,
                  return_tensors="pt")
        with torch.inference_mode():
            h = ref(**enc).last_hidden_state.float()
        m = enc["attention_mask"][..., None].float()
        return F.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=1)

    variants = {"inferd": lambda: ours.embed(texts).vectors, "hf": hf}
    cos = F.cosine_similarity(variants["inferd"](), variants["hf"]()).min().item()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    counts = ours.embed(texts).token_counts
    print(f"machine: {machine()}")
    print(f"{args.model}, {args.dtype}, {len(texts)} texts, {sum(counts) / len(counts):.1f} tokens "
          f"on average ({min(counts)}-{max(counts)}); min cosine inferd vs hf {cos:.7f}")
    rate = {k: len(texts) / median(v) for k, v in times.items()}
    for name, r in rate.items():
        print(f"  {name:8s} {r:8.1f} texts/s  (median of {args.repeats})")
    print(f"  inferd / hf = {rate['inferd'] / rate['hf']:.2f}x")


if __name__ == "__main__":
    main()
