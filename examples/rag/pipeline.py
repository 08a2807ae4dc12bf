"""The RAG steps over an inferd server's OpenAI API: ingest (embed the passages through
/v1/embeddings into a PassageIndex), retrieve top-k for questions, answer through
/v1/chat/completions (streamed, so time to first token is measured), and the two evaluations:
retrieval recall@k on the labelled questions and TTFT with the passages' prefix cached vs cold.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from openai import OpenAI
from prompt import messages, numbered
from store import PassageIndex

HERE = Path(__file__).resolve().parent
EMBED_MODEL = "all-minilm-l6-v2"
CHAT_MODEL = "smollm2-135m"
EMBED_BATCH = 64


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_passages(path: Path = HERE / "passages.jsonl") -> dict[str, dict]:
    return {p["id"]: p for p in read_jsonl(path)}


def embed(client: OpenAI, texts: list[str], model: str = EMBED_MODEL) -> np.ndarray:
    """Vectors [N, D] through /v1/embeddings, EMBED_BATCH texts per request."""
    rows = []
    for start in range(0, len(texts), EMBED_BATCH):
        r = client.embeddings.create(model=model, input=texts[start:start + EMBED_BATCH])
        rows += [d.embedding for d in sorted(r.data, key=lambda d: d.index)]
    return np.asarray(rows, dtype=np.float32)


def index_dir(passages: dict[str, dict], model: str) -> Path:
    """Where the index of exactly these passages and this model is kept between runs."""
    digest = hashlib.sha256(json.dumps([model, list(passages.values())], sort_keys=True).encode())
    return Path(tempfile.gettempdir()) / f"inferd-rag-{digest.hexdigest()[:16]}"


def ingest(client: OpenAI, passages: dict[str, dict], model: str = EMBED_MODEL,
           directory: Path | None = None, rebuild: bool = False) -> PassageIndex:
    """The passages' index: loaded when built before for the same passages, else embedded and saved."""
    directory = directory or index_dir(passages, model)
    if not rebuild and (index := PassageIndex.load(directory)) is not None:
        return index
    ids = list(passages)
    index = PassageIndex.build(ids, embed(client, [f"{passages[i]['title']}: {passages[i]['text']}"
                                                   for i in ids], model))
    index.save(directory)
    return index


def retrieve(client: OpenAI, index: PassageIndex, questions: list[str], k: int = 5,
             model: str = EMBED_MODEL) -> list[list[tuple[str, float]]]:
    return index.search(embed(client, questions, model), k)


@dataclass
class Answer:
    question: str
    retrieved: list[tuple[str, float]]  # (passage id, cosine), best first
    sources: list[str]  # passage ids in the order the prompt numbers them ([1] first)
    system_prompt: str
    text: str = ""
    ttft_s: float | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0


def answer(client: OpenAI, passages: dict[str, dict], question: str,
           retrieved: list[tuple[str, float]], model: str = CHAT_MODEL, max_tokens: int = 64,
           cache_salt: str | None = None) -> Answer:
    """Ask the chat model with the retrieved passages in the system prompt; streamed, so the
    time to the first content token is measured; usage reports the prefix-cache hit."""
    chosen = numbered([passages[pid] for pid, _ in retrieved])
    msgs = messages(chosen, question)
    extra = {"cache_salt": cache_salt} if cache_salt else {}
    out = Answer(question, retrieved, [p["id"] for p in chosen], msgs[0]["content"])
    start = time.perf_counter()
    stream = client.chat.completions.create(model=model, messages=msgs, max_tokens=max_tokens,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True}, extra_body=extra)
    parts = []
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            if out.ttft_s is None:
                out.ttft_s = time.perf_counter() - start
            parts.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            out.prompt_tokens = chunk.usage.prompt_tokens
            details = chunk.usage.prompt_tokens_details
            out.cached_tokens = (details.cached_tokens or 0) if details else 0
    out.text = "".join(parts).strip()
    return out


def recall_at_k(client: OpenAI, index: PassageIndex, labelled: list[dict], k: int = 5) -> tuple[float, list[dict]]:
    """Fraction of labelled questions whose passage is among the top k, and the misses."""
    hits = retrieve(client, index, [q["question"] for q in labelled], k)
    misses = [{**q, "got": [pid for pid, _ in h]} for q, h in zip(labelled, hits, strict=True)
              if q["passage"] not in {pid for pid, _ in h}]
    return 1 - len(misses) / len(labelled), misses


def ttft_cached_vs_cold(client: OpenAI, passages: dict[str, dict], index: PassageIndex,
                        questions: list[str], k: int = 5) -> dict:
    """Per question: the answer request with a fresh cache salt (nothing cached: cold), then a
    follow-up question over the same passages and salt (the system prefix cached). Medians."""
    cold, cached, cached_tokens, prompt_tokens = [], [], [], []
    for question, hits in zip(questions, retrieve(client, index, questions, k), strict=True):
        salt = uuid.uuid4().hex
        first = answer(client, passages, question, hits, cache_salt=salt, max_tokens=8)
        again = answer(client, passages, f"Answer in one short sentence: {question}", hits,
                       cache_salt=salt, max_tokens=8)
        cold.append(first.ttft_s)
        cached.append(again.ttft_s)
        cached_tokens.append(again.cached_tokens)
        prompt_tokens.append(again.prompt_tokens)
    return {"questions": len(questions), "ttft_cold_s": statistics.median(cold),
            "ttft_cached_s": statistics.median(cached),
            "cached_tokens": statistics.median(cached_tokens),
            "prompt_tokens": statistics.median(prompt_tokens)}
