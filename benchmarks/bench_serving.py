"""Serving side by side: inferd vs llama.cpp's llama-server vs the naive transformers server,
same model (the bundled SmolLM2-135M GGUF, or `--model gemma3-270m`: any bundled GGUF or .gguf
path, served to llama-server from the same file), same workload, measured by `inferd bench` in one run.

Servers run one after another (never together: on 2 cores they would steal each other's CPU).
llama-server comes from `bash benchmarks/setup_peers.sh` (skipped with a note if not built).
Usage: python benchmarks/bench_serving.py [--model smollm2-135m] [--concurrency 1,8,32] [--requests 64]
       [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.common import machine  # noqa: E402
from inferd.bench import BenchConfig, WorkloadConfig, run_benchmark  # noqa: E402
from inferd.model.registry import resolve_model_path  # noqa: E402

LLAMA_SERVER = ROOT / ".bench/llama.cpp/build/bin/llama-server"


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(url)


def start(name: str, port: int, model: str, dtype: str, extra: list[str]) -> subprocess.Popen:
    gguf = resolve_model_path(model)
    if name == "inferd":
        cmd = [sys.executable, "-m", "inferd.cli", "serve", "--model", model, "--port", str(port),
               *(["--dtype", dtype] if dtype != "auto" else []), "--kv-cache-memory", "2", "--max-num-seqs", "64",
               "--max-num-batched-tokens", "1024", "--disable-access-log", *extra]
    elif name == "llama.cpp":
        cmd = [str(LLAMA_SERVER), "-m", str(gguf), "--port", str(port), "-np", "32", "-c", str(32 * 512),
               "-t", str(os.cpu_count()), "--no-webui", "-a", model]
    else:
        cmd = [sys.executable, str(ROOT / "benchmarks/naive_hf_server.py"), "--port", str(port), "--dtype", dtype]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)


def bench(port: int, model: str, concurrency: tuple[int, ...], requests: int, workload: WorkloadConfig,
          same_prompts: bool) -> list[dict]:
    """One summary per concurrency level. Each level draws fresh prompts (its own seed) unless
    same_prompts: otherwise every engine with a prompt cache (llama.cpp's slots, inferd's prefix
    cache) would answer the later levels from what the earlier ones left behind."""
    def cfg(levels: tuple[int, ...], seed: int) -> BenchConfig:
        return BenchConfig(base_url=f"http://127.0.0.1:{port}/v1", model=model,
                           endpoint="completions", workload=workload, concurrency=levels,
                           num_requests=requests, warmup=2, seed=seed, timeout=1800, tokenizer=None)
    if same_prompts:
        return [r.summary for r in run_benchmark(cfg(concurrency, 0)).runs]
    return [run_benchmark(cfg((c,), 1000 * i)).runs[0].summary for i, c in enumerate(concurrency)]


def brief(s: dict) -> dict:
    return {"output_tok_s": s["output_throughput"], "ttft_p50_ms": s["ttft_ms"].get("p50"),
            "itl_p50_ms": s["itl_ms"].get("p50"), "failed": s["failed"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--naive-requests", type=int, default=4)
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--model", default="smollm2-135m",
                    help="a bundled GGUF (smollm2-135m, gemma3-270m) or a .gguf path; llama-server loads the same file")
    ap.add_argument("--dtype", default="float32", help="inferd's --dtype (auto: the machine's choice)")
    ap.add_argument("--engines", default="inferd,llama.cpp,naive")
    ap.add_argument("--inferd-args", default="", help="extra flags for `inferd serve`")
    ap.add_argument("--same-prompts", action="store_true",
                    help="reuse one prompt set at every level (later levels then hit prompt caches)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    conc = tuple(int(c) for c in args.concurrency.split(","))
    workload = WorkloadConfig(kind="random", input_len=args.input_len, output_len=args.output_len)
    results: dict[str, object] = {"machine": machine(), "model": args.model, "workload": vars(workload),
                                  "concurrency": conc,
                                  "same_prompts_each_level": args.same_prompts}
    for i, name in enumerate(args.engines.split(",")):
        if name == "llama.cpp" and not LLAMA_SERVER.exists():
            results[name] = "not built: run bash benchmarks/setup_peers.sh"
            continue
        if name == "naive" and args.model != "smollm2-135m":
            results[name] = "naive_hf_server.py serves smollm2-135m only"
            continue
        port = 8200 + i
        proc = start(name, port, args.model, args.dtype, args.inferd_args.split())
        try:
            wait_healthy(f"http://127.0.0.1:{port}/health", proc)
            # The naive server handles one request at a time: only concurrency 1 makes sense.
            runs = bench(port, args.model, (1,), args.naive_requests, workload, args.same_prompts) \
                if name == "naive" else bench(port, args.model, conc, args.requests, workload, args.same_prompts)
            results[name] = {f"c{c}": brief(s) for c, s in zip((1,) if name == "naive" else conc, runs,
                                                              strict=True)}
        finally:
            proc.terminate()
            proc.wait(30)
        print(json.dumps({name: results[name]}, indent=1), flush=True)
    inf = results.get("inferd")
    if isinstance(inf, dict):
        for peer in ("llama.cpp", "naive"):
            if isinstance(results.get(peer), dict):
                results[f"ratio_vs_{peer}"] = {
                    k: inf[k]["output_tok_s"] / v["output_tok_s"] for k, v in results[peer].items() if k in inf}
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
