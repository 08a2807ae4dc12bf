"""Time inferd's Embedder against sentence-transformers and transformers + pooling, on the
bundled all-MiniLM-L6-v2, tokenizing included on every side.

Workload: N sentences of about 20 tokens each (lengths vary, so padding matters). Variants run
interleaved round by round so that noise from other processes hits them alike; a cell is the
median over rounds, in texts/s:

  inferd       Embedder.embed: packed batch, padding only inside attention
  st           SentenceTransformer(dir).encode(texts, batch_size=N): the peer users run
  hf           AutoTokenizer(padding=True) + AutoModel (its default SDPA) + masked mean + L2

sentence-transformers is no inferd dependency: install it apart (its own deps would pull another
torch) and point --st-path at it, e.g.
    pip install --no-deps --target /tmp/st_pkgs sentence-transformers scipy scikit-learn joblib \
        threadpoolctl cloudpickle narwhals
    .venv/bin/python benchmarks/bench_embed.py --texts 256 --repeats 7 --st-path /tmp/st_pkgs [--threads 2]
Without it the st column is left out.
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
from inferd.embedder import DEFAULT_MAX_BATCH_TOKENS, Embedder  # noqa: E402
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
    ap.add_argument("--max-batch-tokens", type=int, default=DEFAULT_MAX_BATCH_TOKENS,
                    help="inferd's padded tokens per forward pass")
    ap.add_argument("--st-path", default=None, help="a directory holding sentence-transformers")
    args = ap.parse_args()
    if args.st_path:
        sys.path.append(args.st_path)
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoModel, AutoTokenizer

    path = resolve_embedding_model(args.model)
    texts = sentences(args.texts)
    ours = Embedder.from_path(path, dtype=args.dtype, max_batch_tokens=args.max_batch_tokens)
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
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        print("sentence-transformers not importable: st column left out (see --st-path)")
    else:
        st = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        variants["st"] = lambda: st.encode(texts, batch_size=len(texts), convert_to_tensor=True)
    mine = variants["inferd"]()
    cos = {k: F.cosine_similarity(mine, fn().float()).min().item() for k, fn in variants.items() if k != "inferd"}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    counts = ours.embed(texts).token_counts
    print(f"machine: {machine()}")
    print(f"{args.model}, {args.dtype}, {len(texts)} texts, {sum(counts) / len(counts):.1f} tokens "
          f"on average ({min(counts)}-{max(counts)}), threads {torch.get_num_threads()}; min cosine "
          + ", ".join(f"inferd vs {k} {c:.7f}" for k, c in cos.items()))
    rate = {k: len(texts) / median(v) for k, v in times.items()}
    for name, r in rate.items():
        print(f"  {name:8s} {r:8.1f} texts/s {r * sum(counts) / len(texts):9.0f} tokens/s  "
              f"(median of {args.repeats})")
    for peer in (k for k in rate if k != "inferd"):
        print(f"  inferd / {peer} = {rate['inferd'] / rate[peer]:.2f}x")


if __name__ == "__main__":
    main()
