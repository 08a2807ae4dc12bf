"""`inferd bench`: command-line front end of the benchmark.

`add_bench_parser` registers the subcommand on the main CLI's subparsers; `bench_main` turns the
flags into a `BenchConfig`, runs it (or compares two saved files with `--compare`), prints the
report, and writes `--json` / `--plot` outputs. Exit codes: 0 ok, 1 every request failed,
2 bad arguments or unreadable files.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from inferd.bench.config import (
    ENDPOINTS,
    SLO,
    WORKLOADS,
    BenchConfig,
    WorkloadConfig,
    parse_int_list,
    parse_rate_list,
)


def _arg_type(parse, what: str):
    """Wrap a parser so argparse reports its ValueError as a usage error."""

    def convert(text: str):
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{what}: {e}") from None

    return convert


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    target = p.add_argument_group("target")
    target.add_argument(
        "--base-url",
        default="http://127.0.0.1:8000/v1",
        help="OpenAI API root of the server, e.g. http://host:8000/v1 (default: %(default)s)",
    )
    target.add_argument(
        "--model", help="model name to send in every request (required unless --compare)"
    )
    target.add_argument(
        "--api-key",
        default=os.environ.get("OPENAI_API_KEY"),
        help="bearer token (default: $OPENAI_API_KEY)",
    )
    target.add_argument(
        "--endpoint",
        choices=ENDPOINTS,
        default="chat",
        help="/v1/chat/completions or /v1/completions (default: %(default)s)",
    )
    target.add_argument(
        "--metrics-url", help="Prometheus endpoint (default: base URL without /v1 + /metrics)"
    )

    wl = p.add_argument_group("workload")
    wl.add_argument(
        "--workload",
        choices=WORKLOADS,
        default="random",
        help="built-in workload (default: %(default)s)",
    )
    wl.add_argument(
        "--dataset",
        metavar="FILE.jsonl",
        help='your own prompts: one {"prompt": ...} or {"messages": [...]} per line, optional max_tokens',
    )
    wl.add_argument(
        "--input-len", type=int, help="prompt tokens (per-request part for shared-prefix)"
    )
    wl.add_argument("--output-len", type=int, help="max_tokens per request")
    wl.add_argument(
        "--input-spread",
        type=float,
        default=0.0,
        help="relative half-width of the input length range, 0.25 = +/-25%% (default: 0)",
    )
    wl.add_argument("--output-spread", type=float, default=0.0, help="same for output lengths")
    wl.add_argument(
        "--prefix-len", type=int, default=1024, help="shared system prompt tokens (shared-prefix)"
    )
    wl.add_argument(
        "--num-prefixes", type=int, default=1, help="distinct shared prefixes (shared-prefix)"
    )
    wl.add_argument(
        "--temperature", type=float, default=0.0, help="sampling temperature (default: greedy)"
    )
    wl.add_argument(
        "--no-ignore-eos",
        dest="ignore_eos",
        action="store_false",
        help="let the model stop at EOS (by default ignore_eos=true pins output length)",
    )
    wl.add_argument(
        "--extra-body",
        type=_arg_type(json.loads, "--extra-body"),
        default={},
        help="JSON object merged into every request body",
    )

    load = p.add_argument_group("load")
    load.add_argument(
        "--concurrency",
        type=_arg_type(parse_int_list, "--concurrency"),
        default=(1,),
        help="closed-loop requests in flight; a list sweeps, e.g. 1,8,32 (default: 1)",
    )
    load.add_argument(
        "--request-rate",
        type=_arg_type(parse_rate_list, "--request-rate"),
        default=(),
        help="open-loop Poisson arrivals in req/s (list sweeps; 'inf' = all at once); "
        "overrides --concurrency",
    )
    load.add_argument(
        "--max-concurrency", type=int, help="cap on in-flight requests with --request-rate"
    )
    load.add_argument(
        "--num-requests", type=int, help="requests per run (default: 100 unless --duration)"
    )
    load.add_argument("--duration", type=float, help="seconds per run; stops sending after this")
    load.add_argument(
        "--warmup", type=int, default=0, help="requests sent first and not counted (default: 0)"
    )
    load.add_argument(
        "--seed", type=int, default=0, help="seed for prompts, lengths and arrivals (default: 0)"
    )
    load.add_argument(
        "--timeout", type=float, default=300.0, help="per-request timeout in seconds (default: 300)"
    )

    meas = p.add_argument_group("measurement")
    meas.add_argument(
        "--slo",
        type=_arg_type(SLO.parse, "--slo"),
        default=SLO(),
        help="goodput targets, e.g. ttft=500ms,itl=50ms (also tpot=, e2e=; bare numbers are ms)",
    )
    meas.add_argument(
        "--tokenizer",
        metavar="PATH",
        help="local tokenizer (AutoTokenizer) for counting when the server sends no usage, "
        "and for exact prompt lengths",
    )
    meas.add_argument(
        "--gpu-hour-price", type=float, help="price of one GPU-hour (cost per 1M output tokens)"
    )
    meas.add_argument(
        "--num-gpus", type=int, default=1, help="GPUs behind the endpoint (with --gpu-hour-price)"
    )
    meas.add_argument("--instance-price", type=float, help="price per hour of the whole instance")

    out = p.add_argument_group("output")
    out.add_argument(
        "--json", metavar="FILE", help="write config, summaries and every request record"
    )
    out.add_argument(
        "--json-include-text", action="store_true", help="also store generated text in --json"
    )
    out.add_argument(
        "--plot", metavar="DIR", help="write PNG charts (latency, throughput, TTFT/ITL CDFs)"
    )
    out.add_argument("--label", help="name for this result (shown by --compare)")
    out.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bar on stderr"
    )
    out.add_argument(
        "--compare",
        nargs=2,
        metavar=("A.json", "B.json"),
        help="print B/A ratios of two saved results instead of running",
    )


def add_bench_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `bench` on the main CLI; its handler returns an exit code."""
    p = subparsers.add_parser(
        "bench",
        help="benchmark an OpenAI-compatible endpoint (TTFT, ITL, TPOT, throughput, goodput)",
        description="Load-test any OpenAI-compatible streaming endpoint (inferd, vLLM, llama.cpp) "
        "and report TTFT, ITL, TPOT, end-to-end latency, throughput and goodput.",
    )
    add_bench_arguments(p)
    p.set_defaults(func=bench_main)


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    num_requests = args.num_requests
    if num_requests is None and args.duration is None:
        num_requests = 100
    return BenchConfig(
        base_url=args.base_url,
        model=args.model,
        api_key=args.api_key,
        endpoint=args.endpoint,
        workload=WorkloadConfig(
            kind=args.workload,
            dataset=args.dataset,
            input_len=args.input_len,
            output_len=args.output_len,
            input_spread=args.input_spread,
            output_spread=args.output_spread,
            prefix_len=args.prefix_len,
            num_prefixes=args.num_prefixes,
        ),
        concurrency=tuple(args.concurrency),
        request_rates=tuple(args.request_rate),
        max_concurrency=args.max_concurrency,
        num_requests=num_requests,
        duration=args.duration,
        warmup=args.warmup,
        seed=args.seed,
        timeout=args.timeout,
        temperature=args.temperature,
        ignore_eos=args.ignore_eos,
        extra_body=dict(args.extra_body),
        slo=args.slo,
        tokenizer=args.tokenizer,
        metrics_url=args.metrics_url,
        gpu_hour_price=args.gpu_hour_price,
        num_gpus=args.num_gpus,
        instance_price=args.instance_price,
        progress=args.progress,
        label=args.label,
        save_text=args.json_include_text,
    )


def _compare_main(args: argparse.Namespace) -> int:
    from inferd.bench.report import compare, load_json

    try:
        a, b = (load_json(path) for path in args.compare)
    except (OSError, ValueError) as e:
        print(f"inferd bench: {e}", file=sys.stderr)
        return 2
    name_a = a["config"].get("label") or args.compare[0]
    name_b = b["config"].get("label") or args.compare[1]
    print(compare(a, b, name_a, name_b))
    return 0


def bench_main(args: argparse.Namespace) -> int:
    if args.compare:
        return _compare_main(args)
    if not args.model:
        print(
            "inferd bench: --model is required (the model name the server expects)", file=sys.stderr
        )
        return 2
    if args.extra_body and not isinstance(args.extra_body, dict):
        print("inferd bench: --extra-body must be a JSON object", file=sys.stderr)
        return 2
    try:
        cfg = config_from_args(args)
    except ValueError as e:
        print(f"inferd bench: {e}", file=sys.stderr)
        return 2

    from inferd.bench.report import format_run, format_sweep, write_json
    from inferd.bench.runner import run_benchmark

    def print_run(run) -> None:
        print(format_run(run.to_dict()) + "\n", flush=True)

    print(
        f"inferd bench: {cfg.request_url} model={cfg.model} workload="
        f"{cfg.workload.dataset or cfg.workload.kind}",
        file=sys.stderr,
    )
    try:
        result = run_benchmark(cfg, on_run=print_run)
    except (OSError, ValueError) as e:  # unreadable dataset / tokenizer, bad combination of flags
        print(f"inferd bench: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("inferd bench: interrupted", file=sys.stderr)
        return 130
    if len(result.runs) > 1:
        print(format_sweep([r.to_dict() for r in result.runs]))
    if args.json:
        write_json(result, args.json, include_text=cfg.save_text)
        print(f"wrote {args.json}", file=sys.stderr)
    if args.plot:
        from inferd.bench.plots import write_plots

        for path in write_plots(result.to_dict(), args.plot):
            print(f"wrote {path}", file=sys.stderr)
    completed = sum(r.summary["completed"] for r in result.runs)
    return 0 if completed > 0 else 1


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (`python -m inferd.bench`) until the main CLI wires the subcommand."""
    parser = argparse.ArgumentParser(prog="inferd bench")
    add_bench_arguments(parser)
    args = parser.parse_args(argv)
    return bench_main(args)


if __name__ == "__main__":
    raise SystemExit(main())
