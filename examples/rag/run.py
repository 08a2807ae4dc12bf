"""Retrieval-augmented answers with inferd, end to end in one command:

    python examples/rag/run.py "What is the capital of Kenya?"

starts `inferd serve` with SmolLM2-135M and all-MiniLM-L6-v2 (or uses --url/--api-key), embeds
the shipped passages through /v1/embeddings into a FAISS index (kept between runs), retrieves the
top k for the question and answers through /v1/chat/completions with those passages, numbered,
in the system prompt. It prints the retrieved passages, the answer and its numbered sources.
--eval reports retrieval recall@k on questions.jsonl; --ttft N compares the answer request's
time to first token with the passages' prefix cached vs cold over N questions.

SmolLM2-135M is a 135M-parameter model: its answers are often wrong or ignore the citation
instruction. What this example guarantees is the structure: which passages were retrieved,
that the prompt numbers them, and that the printed sources are exactly those.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from local_server import local_server  # noqa: E402
from pipeline import (  # noqa: E402
    CHAT_MODEL,
    EMBED_MODEL,
    HERE,
    answer,
    ingest,
    load_passages,
    read_jsonl,
    recall_at_k,
    retrieve,
    ttft_cached_vs_cold,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("questions", nargs="*", help="questions to answer")
    ap.add_argument("--url", default=None, help="an inferd server's /v1 URL (default: start one)")
    ap.add_argument("--api-key", default="none", help="its API key")
    ap.add_argument("-k", type=int, default=5, help="passages retrieved per question")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--eval", action="store_true", help="report recall@k on questions.jsonl")
    ap.add_argument("--ttft", type=int, default=0, metavar="N",
                    help="time to first token, prefix cached vs cold, over N labelled questions")
    ap.add_argument("--rebuild", action="store_true", help="embed the passages again")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = ap.parse_args(argv)
    if not (args.questions or args.eval or args.ttft):
        ap.error("give a question, --eval or --ttft N")
    return args


def main(argv: list[str] | None = None) -> int:
    from openai import OpenAI

    args = parse_args(argv)
    passages = load_passages()
    server = nullcontext((args.url, args.api_key)) if args.url else local_server([CHAT_MODEL, EMBED_MODEL])
    report: dict = {}
    with server as (url, key):
        client = OpenAI(base_url=url, api_key=key, max_retries=0, timeout=300)
        index = ingest(client, passages, rebuild=args.rebuild)
        report["passages"] = len(passages)
        answers = []
        for question, hits in zip(args.questions, retrieve(client, index, args.questions, args.k), strict=True):
            a = answer(client, passages, question, hits, max_tokens=args.max_tokens)
            answers.append({"question": a.question, "retrieved": a.retrieved, "sources": a.sources,
                            "system_prompt": a.system_prompt, "answer": a.text, "ttft_s": a.ttft_s,
                            "prompt_tokens": a.prompt_tokens, "cached_tokens": a.cached_tokens})
        report["answers"] = answers
        labelled = read_jsonl(HERE / "questions.jsonl")
        if args.eval:
            recall, misses = recall_at_k(client, index, labelled, args.k)
            report["recall"] = {"k": args.k, "questions": len(labelled), "recall": recall, "misses": misses}
        if args.ttft:
            report["ttft"] = ttft_cached_vs_cold(client, passages, index,
                                                 [q["question"] for q in labelled[:args.ttft]], args.k)
    print(json.dumps(report, indent=1) if args.json else render(report, passages))
    return 0


def render(report: dict, passages: dict[str, dict]) -> str:
    lines = []
    for a in report["answers"]:
        number = {pid: i for i, pid in enumerate(a["sources"], 1)}
        lines += [f"Question: {a['question']}", "Retrieved (best first):"]
        lines += [f"  [{number[pid]}] {pid}  cosine {score:.3f}  {passages[pid]['text']}"
                  for pid, score in a["retrieved"]]
        lines += [f"Answer: {a['answer']}",
                  "Sources: " + ", ".join(f"[{i}] {pid}" for i, pid in enumerate(a["sources"], 1)),
                  f"(TTFT {a['ttft_s'] * 1000:.0f} ms, {a['prompt_tokens']} prompt tokens, "
                  f"{a['cached_tokens']} from the prefix cache)", ""]
    if "recall" in report:
        r = report["recall"]
        lines.append(f"recall@{r['k']} on {r['questions']} labelled questions: {r['recall']:.3f}")
        lines += [f"  missed: {m['question']} (wanted {m['passage']}, got {m['got']})" for m in r["misses"]]
    if "ttft" in report:
        t = report["ttft"]
        lines.append(f"TTFT over {t['questions']} questions (medians): cold {t['ttft_cold_s'] * 1000:.0f} ms, "
                     f"prefix cached {t['ttft_cached_s'] * 1000:.0f} ms ({t['cached_tokens']:.0f} of "
                     f"{t['prompt_tokens']:.0f} prompt tokens cached)")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
