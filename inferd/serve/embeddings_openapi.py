"""The OpenAPI document of POST /v1/embeddings as the route behaves (see openapi.py for why the
document must be exact: generated clients and schemathesis read it), and, where one server
serves both kinds of model, the wrong-kind 400 of every route that takes a `model`.

It adds, on top of what openapi.py does for every route, the statuses the route answers, the
bounds the served embedding models share (token ids below the vocabulary, inputs per request
within the queue, truncate_prompt_tokens -1 or 1..max_seq_length) and the 400 codes a
schema-valid body can still get (embeddings.SEMANTIC_400).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI

from inferd.engine.async_embedder import AsyncEmbedder
from inferd.serve.embeddings import MAX_INPUTS, MAX_REQUEST_TOKENS, SEMANTIC_400
from inferd.serve.openapi import DESCRIPTIONS, SEMANTIC_CODES_KEY
from inferd.serve.registry import WRONG_MODEL_KIND

ROUTE = ("/v1/embeddings", "post")
STATUSES = [400, 401, 404, 408, 413, 429, 503]
TOO_LARGE = (f"Request body over --max-request-bytes, or inputs holding more than {MAX_REQUEST_TOKENS} "
             "tokens together (error.code too_many_tokens)")


@dataclass(frozen=True)
class EmbeddingLimits:
    """What every served embedding model shares (None where they differ or none is served)."""

    vocab_size: int | None = None
    max_seq_length: int | None = None
    max_waiting_inputs: int | None = None


def embedding_limits(embedders: Iterable[AsyncEmbedder]) -> EmbeddingLimits:
    embedders = list(embedders)

    def shared(values: set) -> Any:
        return values.pop() if len(values) == 1 else None

    return EmbeddingLimits(shared({e.embedder.vocab_size for e in embedders}),
                           shared({e.embedder.max_seq_length for e in embedders}),
                           shared({e.max_waiting_inputs for e in embedders}))


# Routes that take a `model` and serve one kind of model: naming a served model of the other
# kind is a 400 (WRONG_MODEL_KIND) no schema can foresee without listing the served names.
KIND_ROUTES = [("/v1/chat/completions", "post"), ("/v1/completions", "post"), ("/tokenize", "post"),
               ("/detokenize", "post"), ("/tokenizer_info", "get"), ROUTE]


def install_embeddings_openapi(app: FastAPI, limits: EmbeddingLimits, api_key_required: bool,
                               both_kinds: bool) -> None:
    """Wrap the app's document builder (install after openapi.install_openapi). both_kinds:
    the server serves generation and embedding models, so a route can meet the other kind."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        schema = build()
        if not schema.get("x-embeddings-documented"):
            document(schema, limits, api_key_required)
            if both_kinds:
                document_wrong_kind(schema)
            schema["x-embeddings-documented"] = True
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def document(schema: dict[str, Any], limits: EmbeddingLimits, api_key_required: bool) -> None:
    path, method = ROUTE
    op = schema.get("paths", {}).get(path, {}).get(method)
    if op is None:
        return
    error_ref = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    responses = op.setdefault("responses", {})
    responses.pop("422", None)
    for status in STATUSES:
        if status == 401 and not api_key_required:
            continue
        text = TOO_LARGE if status == 413 else DESCRIPTIONS[status]
        responses[str(status)] = {"description": text, "content": error_ref}
    responses["400"]["description"] += (". Also for these schema-valid bodies, by error.code: "
                                        + "; ".join(f"{c}: {t}" for c, t in SEMANTIC_400.items()))
    responses["400"][SEMANTIC_CODES_KEY] = list(SEMANTIC_400)
    request = schema["components"]["schemas"].get("EmbeddingRequest", {})
    _json_schema_bounds(request)
    props = request.get("properties", {})
    max_items = min(MAX_INPUTS, limits.max_waiting_inputs or MAX_INPUTS)
    for branch in props.get("input", {}).get("anyOf", []):
        items = branch.get("items", {})
        if branch.get("type") == "array" and items.get("type") in ("string", "array"):
            branch["maxItems"] = max_items
        for ids in (branch, items):
            if ids.get("type") == "array" and ids.get("items", {}).get("type") == "integer" \
                    and limits.vocab_size is not None:
                ids["items"]["maximum"] = limits.vocab_size - 1
    truncate = props.get("truncate_prompt_tokens", {})
    for branch in truncate.get("anyOf", []):
        if branch.get("type") == "integer":
            branch["not"] = {"const": 0}
            if limits.max_seq_length is not None:
                branch["maximum"] = limits.max_seq_length
    if "truncate_prompt_tokens" in props:
        props["truncate_prompt_tokens"]["description"] = (
            "vLLM's: cut each input to this many tokens, special tokens included (-1: to the model's "
            "max_seq_length). Without it an input over max_seq_length is a 400 "
            "(context_length_exceeded).")


def document_wrong_kind(schema: dict[str, Any]) -> None:
    """List WRONG_MODEL_KIND among each model-taking route's schema-valid 400 codes."""
    for path, method in KIND_ROUTES:
        response = schema.get("paths", {}).get(path, {}).get(method, {}).get("responses", {}).get("400")
        if response is None:
            continue
        codes = response.setdefault(SEMANTIC_CODES_KEY, [])
        if WRONG_MODEL_KIND not in codes:
            codes.append(WRONG_MODEL_KIND)
            response["description"] += (f"; {WRONG_MODEL_KIND}: `model` names a served model of the "
                                        "other kind (an embedding model here, or a generation model "
                                        "on /v1/embeddings)")


def _json_schema_bounds(node: Any) -> None:
    """pydantic writes Field(ge=...) on a type with a BeforeValidator (protocol.Int) as `ge`,
    which JSON Schema does not know: spell it `minimum`."""
    if isinstance(node, dict):
        if "ge" in node:
            node["minimum"] = node.pop("ge")
        for value in node.values():
            _json_schema_bounds(value)
    elif isinstance(node, list):
        for value in node:
            _json_schema_bounds(value)
