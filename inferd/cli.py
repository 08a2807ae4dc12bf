"""`inferd` command line: generate, chat, serve, bench, quant-eval.

Each subcommand's parser lives beside its feature (serve/, bench/, quant/); this file only wires
them together and implements the two small interactive commands.
"""

from __future__ import annotations

import argparse
import sys

from inferd.engine_args import add_engine_args, engine_config_from_args


def _sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)


def _params(args):
    from inferd.sampling_params import SamplingParams

    return SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature,
                          top_p=args.top_p, top_k=args.top_k, seed=args.seed)


def cmd_generate(args: argparse.Namespace) -> int:
    from inferd.engine.engine import LLMEngine

    engine = LLMEngine(engine_config_from_args(args))
    prompt = args.prompt
    ids = engine.tokenizer.encode(prompt) if args.raw else engine.tokenizer.encode_chat(
        [{"role": "user", "content": prompt}])
    engine.add_request("0", ids, _params(args))
    while engine.has_unfinished():
        for out in engine.step():
            sys.stdout.write(out.outputs[0].delta_text)
            sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from inferd.engine.engine import LLMEngine

    engine = LLMEngine(engine_config_from_args(args))
    history: list[dict] = []
    if args.system:
        history.append({"role": "system", "content": args.system})
    print("inferd chat: type a message, Ctrl-D or /exit to quit, /reset to clear history.")
    turn = 0
    while True:
        try:
            line = input("> ")
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if line.strip() in ("/exit", "/quit"):
            return 0
        if line.strip() == "/reset":
            history = history[:1] if args.system else []
            continue
        if not line.strip():
            continue
        history.append({"role": "user", "content": line})
        ids = engine.tokenizer.encode_chat(history)
        engine.add_request(str(turn), ids, _params(args))
        turn += 1
        reply = ""
        while engine.has_unfinished():
            for out in engine.step():
                delta = out.outputs[0].delta_text
                reply += delta
                sys.stdout.write(delta)
                sys.stdout.flush()
        sys.stdout.write("\n")
        history.append({"role": "assistant", "content": reply})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inferd", description="LLM inference engine and server")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="complete one prompt and print it")
    add_engine_args(g)
    _sampling_args(g)
    g.add_argument("--prompt", required=True)
    g.add_argument("--raw", action="store_true", help="do not apply the chat template")
    g.set_defaults(func=cmd_generate)
    c = sub.add_parser("chat", help="interactive chat in the terminal, streaming tokens")
    add_engine_args(c)
    _sampling_args(c)
    c.add_argument("--system", default=None, help="system prompt")
    c.set_defaults(func=cmd_chat)
    for module, fn in (("inferd.serve.cli", "add_serve_parser"), ("inferd.bench.cli", "add_bench_parser"),
                       ("inferd.quant.eval_cli", "add_quant_eval_parser")):
        try:
            mod = __import__(module, fromlist=[fn])
        except ModuleNotFoundError as exc:
            if exc.name is not None and module.startswith(exc.name):
                continue  # this feature's package is absent from the build; anything else is a bug
            raise
        getattr(mod, fn)(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from inferd.model.errors import ModelLoadError
        from inferd.sampling_params import InvalidParameter

        if isinstance(exc, ModelLoadError | InvalidParameter | ValueError | MemoryError):
            print(f"inferd: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
