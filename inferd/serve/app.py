"""build_app: the FastAPI application over one or more AsyncEngines.

It wires the pieces and owns nothing else: OpenAI routes (/v1/embeddings too), tokenizer routes, /health, /version,
/metrics (an own registry per app), the dashboard when present, error handlers, the API-key
check, the request body cap, exact paths and the drain gate. Engines are created and shut down by the caller (the CLI or a test).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from inferd import __version__
from inferd.serve import embeddings, openai, tokenizer_routes
from inferd.serve.auth import APIKeyMiddleware, tenant_of
from inferd.serve.body_limit import DEFAULT_MAX_REQUEST_BYTES, BodyLimitMiddleware
from inferd.serve.embedding_metrics import EmbeddingCollector
from inferd.serve.embeddings_openapi import embedding_limits, install_embeddings_openapi
from inferd.serve.errors import install_error_handlers
from inferd.serve.metrics import ServerMetrics
from inferd.serve.openapi import install_openapi, shared_limits
from inferd.serve.paths import ExactPathMiddleware
from inferd.serve.registry import ServedEngine, ServedModels
from inferd.serve.shutdown import DrainMiddleware, DrainState

log = logging.getLogger(__name__)


def build_app(engines: dict[str, ServedEngine], *, hidden_aliases: dict[str, ServedEngine] | None = None,
              api_key: str | None = None, api_keys: dict[str, str] | None = None,
              shared_prefix_cache: bool = False,
              metrics_compat: str | None = None, drain: DrainState | None = None,
              max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
              parse_special_in_messages: bool = False) -> FastAPI:
    """engines maps every served model name (aliases included) to its engine (an AsyncEngine,
    or an AsyncEmbedder for an embedding model); hidden_aliases
    are served too but not listed in /v1/models. parse_special_in_messages lets control-token
    text in chat messages become control tokens (off: a user cannot forge a system turn).
    api_keys maps keys to tenants (api_key: one key); each tenant's prefix cache is its own
    unless shared_prefix_cache."""
    keys = dict(api_keys or {})
    if api_key:
        keys.setdefault(api_key, tenant_of(api_key))
    models = ServedModels(engines, hidden_aliases)
    metrics = ServerMetrics(metrics_compat)
    for name, engine in models.engines().items():
        metrics.attach(name, engine)
    metrics.registry.register(EmbeddingCollector(models.embedders()))
    drain = drain or DrainState()

    app = FastAPI(title="inferd", version=__version__,
                  description="OpenAI-compatible API over the inferd engine")
    app.state.models = models
    app.state.metrics = metrics
    app.state.drain = drain
    app.state.parse_special_in_messages = parse_special_in_messages
    app.state.api_key_required = bool(keys)
    app.state.shared_prefix_cache = shared_prefix_cache  # open routes then do not list the served models
    install_error_handlers(app)
    install_openapi(app, api_key_required=bool(keys), limits=shared_limits(models.engines().values()))
    install_embeddings_openapi(app, embedding_limits(models.embedders().values()), api_key_required=bool(keys),
                               both_kinds=bool(models.embedders()) and bool(models.engines()))
    app.include_router(openai.router)
    app.include_router(embeddings.router)
    app.include_router(tokenizer_routes.router)

    @app.get("/health")
    async def health() -> Response:
        if drain.draining:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        if not models.all_alive():
            return JSONResponse({"status": "engine stopped"}, status_code=503)
        return JSONResponse({"status": "ok", "models": models.names})

    @app.get("/version")
    async def version() -> dict:
        return {"version": __version__}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus(request: Request) -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    try:  # the dashboard is optional: another module, another engineer
        from inferd.serve.dashboard import router as dashboard_router
    except ImportError:
        log.debug("no dashboard module; /dashboard not served")
    else:
        app.include_router(dashboard_router)

    # Added last = outermost: the drain gate sees every request, then the key is checked (a
    # caller without the key is refused before its body is read), then the body is capped.
    app.add_middleware(ExactPathMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_request_bytes)
    if keys:
        app.add_middleware(APIKeyMiddleware, api_keys=keys)
    app.add_middleware(DrainMiddleware, state=drain)
    return app
