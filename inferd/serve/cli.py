"""`inferd serve`: load the models, build the app, run uvicorn until SIGTERM, drain, exit 0.

This is the one place that reads the environment (INFERD_API_KEY); everything below receives
plain arguments. Exit codes: 0 after a clean shutdown, 1 when the server could not start,
2 for bad flags, config or models (from inferd.cli).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from inferd.embedder import DEFAULT_MAX_BATCH_TOKENS
from inferd.engine.async_embedder import DEFAULT_MAX_WAITING_INPUTS, AsyncEmbedder
from inferd.engine_args import add_engine_args, engine_config_from_args
from inferd.serve.body_limit import DEFAULT_MAX_REQUEST_BYTES
from inferd.serve.connections import DEFAULT_HEADER_TIMEOUT

log = logging.getLogger("inferd.serve")
LOG_LEVELS = ["critical", "error", "warning", "info", "debug"]


def _add_server_args(p: argparse.ArgumentParser) -> None:
    add_engine_args(p, model_nargs="append")
    s = p.add_argument_group("server")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--served-model-name", nargs="+", action="append", default=None, metavar="NAME",
                   help="name(s) clients use for a model; give it once per --model, in order "
                        "(several names = aliases). Default: the --model value")
    s.add_argument("--config", default=None, metavar="FILE",
                   help="YAML or TOML file with settings and a `models` list (flags override it)")
    s.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on /v1, /tokenize and /detokenize "
                        "(default: $INFERD_API_KEY; a key on the command line is visible in `ps`: "
                        "prefer the variable or --api-key-file)")
    s.add_argument("--api-key-file", default=None, metavar="FILE",
                   help="read API keys from FILE: one per line, optionally 'TENANT KEY' (keys of one "
                        "tenant share a prefix cache)")
    s.add_argument("--shared-prefix-cache", action="store_true",
                   help="let requests of different API keys reuse each other's prefix-cache blocks "
                        "(default: each tenant's own, so cached_tokens cannot reveal others' prompts)")
    s.add_argument("--metrics-compat", default=None, choices=["vllm"],
                   help="also publish /metrics series under vLLM's names")
    s.add_argument("--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES, metavar="BYTES",
                   help="refuse request bodies larger than this with 413 "
                        f"(default {DEFAULT_MAX_REQUEST_BYTES})")
    s.add_argument("--timeout-header", type=float, default=DEFAULT_HEADER_TIMEOUT, metavar="SECONDS",
                   help="close a connection whose request headers are not complete this long after it "
                        "opened or after its last response")
    s.add_argument("--timeout-keep-alive", type=float, default=5.0, metavar="SECONDS",
                   help="close an idle keep-alive connection after this long")
    s.add_argument("--max-connections", type=int, default=None, metavar="N",
                   help="answer 503 and close connections beyond N open ones "
                        "(default: the open-file limit less 256)")
    s.add_argument("--parse-special-tokens-in-messages", action="store_true",
                   help="let control-token text in chat messages (e.g. '<|im_start|>system') become "
                        "control tokens; off by default, so users cannot forge turns")
    s.add_argument("--shutdown-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="on SIGTERM, how long in-flight requests may take to finish")
    e = p.add_argument_group("embedding models (a --model that is an encoder serves /v1/embeddings)")
    e.add_argument("--max-waiting-embedding-inputs", type=int, default=DEFAULT_MAX_WAITING_INPUTS,
                   metavar="N", help="inputs queued for an embedding model before new requests get 429 "
                   f"(default {DEFAULT_MAX_WAITING_INPUTS})")
    e.add_argument("--max-embedding-batch-tokens", type=int, default=DEFAULT_MAX_BATCH_TOKENS, metavar="N",
                   help="padded tokens per encoder forward pass (default "
                        f"{DEFAULT_MAX_BATCH_TOKENS}); the worker takes this many tokens of queued "
                        "requests per step")
    s.add_argument("--log-level", default="info", choices=LOG_LEVELS)
    s.add_argument("--disable-access-log", action="store_true", help="do not log each HTTP request")


def _api_keys(args: argparse.Namespace) -> dict[str, str]:
    """Key -> tenant, from --api-key-file, else --api-key, else $INFERD_API_KEY ({}: no key).
    A key file holds one key per line, optionally after a tenant name ("TENANT KEY"); keys of one
    tenant share its prefix cache, a key without a name is a tenant of its own."""
    from inferd.serve.auth import tenant_of
    from inferd.serve.config_file import ConfigError

    if args.api_key_file:
        try:
            with open(args.api_key_file, encoding="utf-8") as f:
                lines = [line.split() for line in f if line.strip() and not line.lstrip().startswith("#")]
        except OSError as exc:
            raise ConfigError(f"cannot read --api-key-file {args.api_key_file}: {exc.strerror or exc}") from None
        if not lines:
            raise ConfigError(f"--api-key-file {args.api_key_file} is empty")
        if any(len(parts) > 2 for parts in lines):
            raise ConfigError(f"--api-key-file {args.api_key_file}: each line is KEY or TENANT KEY")
        return {parts[-1]: parts[0] if len(parts) == 2 else tenant_of(parts[-1]) for parts in lines}
    key = args.api_key
    if key:
        log.warning("--api-key on the command line is visible to every user of this machine (ps); "
                    "prefer INFERD_API_KEY or --api-key-file")
    key = key or os.environ.get("INFERD_API_KEY")
    return {key: tenant_of(key)} if key else {}


def load_embedder(args: argparse.Namespace, model: str) -> AsyncEmbedder | None:
    """An embedding model's queue when `model` names one (a bundled encoder or a BERT
    directory), else None: a generation model, loaded by AsyncEngine."""
    import torch

    from inferd.embedder import Embedder
    from inferd.model.embedding_models import resolve_embedding_model

    if resolve_embedding_model(model) is None:
        return None
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    embedder = Embedder.from_path(model, dtype=args.dtype, device=device,
                                  max_batch_tokens=args.max_embedding_batch_tokens, truncate=False)
    return AsyncEmbedder(embedder, max_waiting_inputs=args.max_waiting_embedding_inputs)


def add_serve_parser(subparsers) -> None:
    p = subparsers.add_parser("serve", help="OpenAI-compatible HTTP server",
                              description="Serve one or more models behind an OpenAI-compatible API.")
    _add_server_args(p)
    p.set_defaults(func=cmd_serve)


def _defaults() -> dict:
    p = argparse.ArgumentParser(add_help=False)
    _add_server_args(p)
    return vars(p.parse_args([]))


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from inferd.engine.async_engine import AsyncEngine, ShuttingDown
    from inferd.serve.access_log import RedactSecretsFilter
    from inferd.serve.app import build_app
    from inferd.serve.config_file import check_unique, model_specs
    from inferd.serve.connections import (
        default_max_connections,
        guarded_h11,
        rate_limit_noisy_loggers,
    )
    from inferd.serve.shutdown import DrainState, GracefulServer

    specs = model_specs(args, _defaults())  # also applies --config onto args
    check_unique(specs)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    api_keys = _api_keys(args)

    engines: list[AsyncEngine | AsyncEmbedder] = []
    try:
        served: dict[str, AsyncEngine | AsyncEmbedder] = {}
        hidden: dict[str, AsyncEngine | AsyncEmbedder] = {}
        for spec in specs:
            log.info("loading %s", spec.model)
            spec_args = spec.engine_args(args)
            engine = (load_embedder(spec_args, spec.model)
                      or AsyncEngine(engine_config_from_args(spec_args, model=spec.model)))
            engines.append(engine)
            for name in spec.names:
                served[name] = engine
            for name in spec.hidden_aliases:
                hidden[name] = engine
        drain = DrainState()
        app = build_app(served, hidden_aliases=hidden, api_keys=api_keys,
                        shared_prefix_cache=args.shared_prefix_cache, metrics_compat=args.metrics_compat,
                        drain=drain, max_request_bytes=args.max_request_bytes,
                        parse_special_in_messages=args.parse_special_tokens_in_messages)
        max_connections = args.max_connections or default_max_connections()
        config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                                access_log=not args.disable_access_log, timeout_graceful_shutdown=2,
                                lifespan="off", http=guarded_h11(args.timeout_header, max_connections),
                                timeout_keep_alive=args.timeout_keep_alive)
        # After uvicorn.Config, which (re)configures its loggers.
        rate_limit_noisy_loggers()
        logging.getLogger("uvicorn.access").addFilter(RedactSecretsFilter())

        def stop_engines_accepting() -> None:
            for e in engines:
                e.stop_accepting()

        def end_requests_in_flight() -> None:
            for e in engines:
                e.cut(ShuttingDown("the server is shutting down and this request ran past its grace "
                                   f"period ({args.shutdown_timeout:g} s)"))

        server = GracefulServer(config, drain, args.shutdown_timeout, on_drain=stop_engines_accepting,
                                on_deadline=end_requests_in_flight)
        print(f"inferd: serving {', '.join(served)} at http://{args.host}:{args.port}/v1"
              f"{' (API key required)' if api_keys else ''}", file=sys.stderr, flush=True)
        server.run()
        return 0 if server.started else 1
    finally:
        for e in engines:
            e.shutdown()
