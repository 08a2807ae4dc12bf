"""The OpenAPI document as the server behaves, so generated clients and fuzzers agree with it.

FastAPI documents a 422 for validation errors (this server answers OpenAI's 400), no error body
shape and only the bounds the pydantic types carry. This rewrites its document: OpenAI's error
schema under each status a route answers, the value bounds SamplingParams and the routes enforce
(with the served models' shared limits: vocabulary, context window, waiting queue), and the
fields a request needs (`messages` non-empty, `prompt` non-empty, /tokenize's one-of). The few
400s a schema cannot foresee are listed per route with their error codes (SEMANTIC_400).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from inferd.engine.async_engine import AsyncEngine
from inferd.serve.token_ids import id_key_pattern
from inferd.serve.tools import DUPLICATE_TOOL_NAMES, FUNCTION_NAME, UNKNOWN_TOOL
from inferd.serve.translate import (
    CONFLICTING_STRUCTURED_OUTPUT,
    CONTEXT_LENGTH_EXCEEDED,
    EMPTY_PROMPT,
    GUIDED_BACKENDS,
    INVALID_GRAMMAR,
    MAX_BEST_OF,
    ROLES,
    STREAM_WITH_BEST_OF,
    TEXT_PARTS,
    TOO_MANY_SEQUENCES,
)

ERROR_SCHEMA = {
    "type": "object", "required": ["error"], "additionalProperties": False,
    "properties": {"error": {
        "type": "object", "required": ["message", "type", "param", "code"],
        "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                       "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}},
}
DESCRIPTIONS = {400: "Invalid request (OpenAI's invalid_request_error)", 401: "Missing or wrong API key",
                404: "Unknown model", 408: "Request body not received within 60 s",
                413: "Request body over --max-request-bytes",
                429: "Waiting queue full; retry after Retry-After", 503: "Shutting down or engine stopped"}
# Statuses per route, besides 200; 401 only where a key is required, 503 while draining.
ROUTE_ERRORS = {
    ("post", "/v1/chat/completions"): [400, 401, 404, 408, 413, 429, 503],
    ("post", "/v1/completions"): [400, 401, 404, 408, 413, 429, 503],
    ("post", "/tokenize"): [400, 401, 404, 408, 413, 503],
    ("post", "/detokenize"): [400, 401, 404, 408, 413, 503],
    ("get", "/v1/models"): [401, 503],
    ("get", "/v1/models/{model}"): [401, 404, 503],
    ("get", "/tokenizer_info"): [400, 404, 503],
}
# The 400s a schema-valid body can still get: each depends on something a JSON schema cannot
# compute (token counts, a product of fields, a comparison between two fields). The document
# lists their codes under `x-semantic-error-codes` of the route's 400 (a fuzzer's check may
# accept exactly these; scripts/schemathesis_hooks.py does) and explains them in words.
SEMANTIC_400 = {
    CONTEXT_LENGTH_EXCEEDED: "the prompt's tokens plus max_tokens (or max_completion_tokens) exceed the "
                             "context window (as OpenAI and vLLM)",
    TOO_MANY_SEQUENCES: "prompts x n (x best_of) exceed what the waiting queue holds per request "
                        "(--max-waiting-requests); waiting would never help it",
    EMPTY_PROMPT: "a text prompt the tokenizer turns into no tokens (e.g. a lone control character)",
    STREAM_WITH_BEST_OF: "stream: true with best_of greater than n (the best candidates are known only "
                         "at the end; as OpenAI)",
    INVALID_GRAMMAR: "a JSON schema (response_format, guided_json, a required or named tool's parameters), "
                     "regex or grammar that llguidance cannot compile; the message is llguidance's",
    CONFLICTING_STRUCTURED_OUTPUT: "more than one of response_format (json_object/json_schema), "
                                   "guided_json, guided_regex, guided_choice, guided_grammar, or one of "
                                   "them with tool_choice 'required' or a named function",
    UNKNOWN_TOOL: "tool_choice names a function that is not among tools",
    DUPLICATE_TOOL_NAMES: "two tools share a function name",
}
SEMANTIC_CODES_KEY = "x-semantic-error-codes"
SEMANTIC_400_BY_ROUTE = {
    ("post", "/v1/chat/completions"): [CONTEXT_LENGTH_EXCEEDED, TOO_MANY_SEQUENCES, INVALID_GRAMMAR,
                                       CONFLICTING_STRUCTURED_OUTPUT, UNKNOWN_TOOL, DUPLICATE_TOOL_NAMES],
    ("post", "/v1/completions"): [CONTEXT_LENGTH_EXCEEDED, TOO_MANY_SEQUENCES, EMPTY_PROMPT,
                                  STREAM_WITH_BEST_OF, INVALID_GRAMMAR, CONFLICTING_STRUCTURED_OUTPUT],
}
MAX_N = MAX_BEST_OF  # n (SamplingParams refuses more) and best_of alike
SAMPLING_BOUNDS = {
    "n": {"minimum": 1, "maximum": MAX_N}, "temperature": {"minimum": 0},
    "top_p": {"exclusiveMinimum": 0, "maximum": 1}, "top_k": {"minimum": -1}, "min_p": {"minimum": 0, "maximum": 1},
    "presence_penalty": {"minimum": -2, "maximum": 2}, "frequency_penalty": {"minimum": -2, "maximum": 2},
    "repetition_penalty": {"exclusiveMinimum": 0, "maximum": 2}, "min_tokens": {"minimum": 0},
    "seed": {"minimum": -(2**63), "maximum": 2**63 - 1},
}
BOUNDS: dict[str, dict[str, dict[str, Any]]] = {
    "ChatCompletionRequest": {**SAMPLING_BOUNDS, "messages": {"minItems": 1}, "tool_choice": {"enum": ["none", "auto", "required"]},
                              "max_tokens": {"minimum": 1}, "max_completion_tokens": {"minimum": 1},
                              "top_logprobs": {"minimum": 0, "maximum": 20}},
    "CompletionRequest": {**SAMPLING_BOUNDS, "prompt": {"minLength": 1, "minItems": 1}, "suffix": {"maxLength": 0},
                          "max_tokens": {"minimum": 0}, "logprobs": {"minimum": 0, "maximum": 20},
                          "prompt_logprobs": {"minimum": 0, "maximum": 20}, "best_of": {"minimum": 1, "maximum": MAX_N}},
    "TokenizeRequest": {"messages": {"minItems": 1}},
    "ChatMessage": {"role": {"enum": sorted(ROLES)}},
    "ContentPart": {"type": {"enum": sorted(TEXT_PARTS)}},
}
# Rules between fields a JSON schema cannot state, said in words.
MIN_TOKENS_NOTE = ("Tokens generated before EOS or a stop condition may end the output. Capped at max_tokens "
                   "and at what the context window leaves after the prompt (those tokens could never be "
                   "produced): the output then ends there with finish_reason 'length'.")
FIELD_DESCRIPTIONS = {
    "ChatCompletionRequest": {"min_tokens": MIN_TOKENS_NOTE},
    "CompletionRequest": {
        "min_tokens": MIN_TOKENS_NOTE,
        "best_of": "Candidates generated per prompt; the n with the highest cumulative log-probability "
                   "are returned, best first, and usage counts the tokens of all of them. A best_of "
                   "below n counts as n (OpenAI's API refuses it). Not with stream: true when above n "
                   "(400).",
    },
}
REQUIRED = {"ContentPart": ["type", "text"]}  # a text part without text is refused
# Rules between fields (a 400 otherwise): stream_options needs stream: true; top_logprobs needs
# logprobs: true; a tool_choice other than "none" needs tools.
STREAM_OPTIONS_NEED_STREAM = {
    "if": {"required": ["stream_options"], "properties": {"stream_options": {"type": "object"}}},
    "then": {"required": ["stream"], "properties": {"stream": {"const": True}}}}
# max_tokens 0 only scores the prompt: it needs echo (a 400 otherwise).
MAX_TOKENS_0_NEEDS_ECHO = {
    "if": {"required": ["max_tokens"], "properties": {"max_tokens": {"const": 0}}},
    "then": {"required": ["echo"], "properties": {"echo": {"const": True}}}}
DEPENDENT = {"CompletionRequest": [STREAM_OPTIONS_NEED_STREAM, MAX_TOKENS_0_NEEDS_ECHO], "ChatCompletionRequest": [
    STREAM_OPTIONS_NEED_STREAM,
    {"if": {"required": ["top_logprobs"], "properties": {"top_logprobs": {"type": "integer"}}},
     "then": {"required": ["logprobs"], "properties": {"logprobs": {"const": True}}}},
    {"if": {"required": ["tool_choice"], "properties": {"tool_choice": {"not": {"enum": ["none", None]}}}},
     "then": {"required": ["tools"], "properties": {"tools": {"type": "array", "minItems": 1}}}},
], "ChatMessage": [  # only assistant turns carry tool calls
    {"if": {"required": ["tool_calls"], "properties": {"tool_calls": {"type": "array", "minItems": 1}}},
     "then": {"properties": {"role": {"const": "assistant"}}}},
]}
# Shapes of the structured-output and tool fields (their Python types are plain dicts).
TOOL_SCHEMA = {"type": "object", "required": ["type", "function"], "properties": {
    "type": {"enum": ["function"]},
    "function": {"type": "object", "required": ["name"], "properties": {
        "name": {"type": "string", "pattern": FUNCTION_NAME}, "description": {"type": "string"},
        "parameters": {"type": "object", "description": "a JSON schema of the arguments"},
        "strict": {"type": ["boolean", "null"]}}}}}
TOOL_CALL_SCHEMA = {"type": "object", "required": ["function"], "properties": {
    "id": {"type": "string"}, "type": {"enum": ["function"]},
    "function": {"type": "object", "required": ["name", "arguments"], "properties": {
        "name": {"type": "string"}, "arguments": {"type": "string"}}}}}
RESPONSE_FORMAT_SCHEMA = {"anyOf": [
    {"type": "object", "required": ["type"], "properties": {"type": {"enum": ["text", "json_object"]}}},
    {"type": "object", "required": ["type", "json_schema"], "properties": {
        "type": {"const": "json_schema"},
        "json_schema": {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string"}, "description": {"type": "string"},
            "schema": {"type": "object"}, "strict": {"type": ["boolean", "null"]}}}}},
    {"type": "null"}]}
TOOL_CHOICE_OBJECT = {"type": "object", "required": ["type", "function"], "properties": {
    "type": {"const": "function"},
    "function": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}}}
# Token-id fields, bounded by the model's vocabulary (0) or the tokenizer's (1), which may differ.
TOKEN_ID_FIELDS = {"CompletionRequest": (["prompt", "stop_token_ids"], 0),
                   "ChatCompletionRequest": (["stop_token_ids"], 0), "DetokenizeRequest": (["tokens"], 1)}
# Bounded by the context window less the one token a prompt has at least.
MAX_TOKENS_FIELDS = {"ChatCompletionRequest": ["max_tokens", "max_completion_tokens"],
                     "CompletionRequest": ["max_tokens"]}
SEQUENCE_FIELDS = {"ChatCompletionRequest": ["n"], "CompletionRequest": ["n", "best_of"]}
MODEL_FIELDS = ["ChatCompletionRequest", "CompletionRequest", "TokenizeRequest", "DetokenizeRequest"]
# Exactly one of these; the routes refuse anything else with a 400.
ONE_OF = {"TokenizeRequest": ["prompt", "messages"]}
KEYWORDS_BY_TYPE = {"minimum": "number", "maximum": "number", "exclusiveMinimum": "number",
                    "minItems": "array", "minLength": "string", "maxLength": "string", "enum": "string"}


@dataclass(frozen=True)
class Limits:
    """Limits every served model shares (None where they differ): one document serves them all,
    so it can bound a field only by what holds for each."""

    vocab_size: tuple[int, int] | None = None  # (model, tokenizer): token ids are below them
    max_seq_tokens: int | None = None  # the context window: max_tokens stays below it
    max_waiting: int | None = None  # --max-waiting-requests: n and best_of stay within it


def shared_limits(engines: Iterable[AsyncEngine]) -> Limits:
    engines = list(engines)

    def shared(values: set) -> Any:
        return values.pop() if len(values) == 1 else None

    return Limits(
        vocab_size=shared({(e.engine.loaded.arch.vocab_size, e.tokenizer.vocab_size) for e in engines}),
        max_seq_tokens=shared({e.engine.max_seq_tokens for e in engines}),
        max_waiting=shared({e.config.scheduler.max_waiting_requests for e in engines}))


def install_openapi(app: FastAPI, api_key_required: bool, limits: Limits) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            app.openapi_schema = truthful(schema, api_key_required, limits)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def truthful(schema: dict[str, Any], api_key_required: bool, limits: Limits = Limits()) -> dict[str, Any]:
    vocab_size = limits.vocab_size
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    components["ErrorResponse"] = ERROR_SCHEMA
    error_ref = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    for path, ops in schema.get("paths", {}).items():
        for method, op in ops.items():
            responses = op.setdefault("responses", {})
            responses.pop("422", None)
            for status in ROUTE_ERRORS.get((method, path), []):
                if status == 401 and not api_key_required:
                    continue
                responses[str(status)] = {"description": DESCRIPTIONS[status], "content": error_ref}
            semantic = SEMANTIC_400_BY_ROUTE.get((method, path))
            if semantic and "400" in responses:
                responses["400"]["description"] += (
                    ". Also for these schema-valid bodies, by error.code: "
                    + "; ".join(f"{code}: {SEMANTIC_400[code]}" for code in semantic))
                responses["400"][SEMANTIC_CODES_KEY] = semantic
            if path in ("/v1/chat/completions", "/v1/completions") and "200" in responses:
                responses["200"].setdefault("content", {})["text/event-stream"] = {
                    "schema": {"description": "with stream: true, server-sent events of chunks, ending "
                               "with 'data: [DONE]'"}}
            for param in op.get("parameters", []):
                if param.get("name") == "model":  # an empty name is a 400
                    _constrain(param.setdefault("schema", {}), {"minLength": 1})
    for model, fields in BOUNDS.items():
        props = components.get(model, {}).get("properties", {})
        for field, bounds in fields.items():
            if field in props:
                _constrain(props[field], bounds)
    for model, fields in FIELD_DESCRIPTIONS.items():
        props = components.get(model, {}).get("properties", {})
        for field, text in fields.items():
            if field in props:
                props[field]["description"] = text
    for model, (fields, which) in TOKEN_ID_FIELDS.items():
        props = components.get(model, {}).get("properties", {})
        ids = {"minimum": 0, **({"maximum": vocab_size[which] - 1} if vocab_size else {})}
        for field in fields:
            for node in _integer_nodes(props.get(field, {})):
                node.update(ids)
    for model in MODEL_FIELDS:
        props = components.get(model, {}).get("properties", {})
        if "model" in props:
            _constrain(props["model"], {"minLength": 1})
    _logit_bias(components, vocab_size[0] if vocab_size else None)
    if limits.max_seq_tokens is not None:
        _bound(components, MAX_TOKENS_FIELDS, limits.max_seq_tokens - 1)
    if limits.max_waiting is not None:  # one prompt of n (or best_of) sequences must fit the queue
        _bound(components, SEQUENCE_FIELDS, min(MAX_N, limits.max_waiting))
    _bound_prompts(components, limits)
    _structured_output(components)
    for model, fields in REQUIRED.items():
        if model in components:
            components[model]["required"] = fields
            components[model]["properties"]["text"] = {"type": "string"}
    for model, rules in DEPENDENT.items():
        if model in components:
            components[model]["allOf"] = rules
    for model, fields in ONE_OF.items():
        if model in components:
            components[model]["oneOf"] = [{"required": [f], "properties": {f: {"not": {"type": "null"}}}}
                                          for f in fields]
    return schema


def _structured_output(components: dict[str, Any]) -> None:
    """response_format, tools, tool_choice, tool calls in messages and vLLM's guided_* fields."""
    chat = components.get("ChatCompletionRequest", {}).get("properties", {})
    if "tool_choice" in chat:
        chat["tool_choice"]["anyOf"] = [TOOL_CHOICE_OBJECT if b.get("type") == "object" else b
                                        for b in chat["tool_choice"].get("anyOf", [])]
    if "tools" in chat:
        chat["tools"] = {"anyOf": [{"type": "array", "items": TOOL_SCHEMA}, {"type": "null"}]}
    if "response_format" in chat:
        chat["response_format"] = RESPONSE_FORMAT_SCHEMA
    message = components.get("ChatMessage", {}).get("properties", {})
    if "tool_calls" in message:
        message["tool_calls"] = {"anyOf": [{"type": "array", "items": TOOL_CALL_SCHEMA}, {"type": "null"}]}
    for model in ("ChatCompletionRequest", "CompletionRequest"):
        props = components.get(model, {}).get("properties", {})
        if "guided_choice" in props:
            _constrain(props["guided_choice"], {"minItems": 1})
        if "guided_decoding_backend" in props:
            _constrain(props["guided_decoding_backend"], {"enum": sorted(GUIDED_BACKENDS)})


def _bound(components: dict[str, Any], fields_by_model: dict[str, list[str]], maximum: int) -> None:
    for model, fields in fields_by_model.items():
        props = components.get(model, {}).get("properties", {})
        for field in fields:
            if field in props:
                _constrain(props[field], {"maximum": maximum})


def _bound_prompts(components: dict[str, Any], limits: Limits) -> None:
    """A list of prompts (strings or token-id lists) queues at least one sequence each, so holds
    at most --max-waiting-requests of them; a token-id prompt leaves a token of the window free."""
    prompt = components.get("CompletionRequest", {}).get("properties", {}).get("prompt", {})
    for branch in prompt.get("anyOf", []):
        items = branch.get("items", {})
        if branch.get("type") != "array":
            continue
        if items.get("type") in ("string", "array") and limits.max_waiting is not None:
            branch["maxItems"] = limits.max_waiting
        ids = branch if items.get("type") == "integer" else items if items.get("type") == "array" else None
        if ids is not None and limits.max_seq_tokens is not None:
            ids["maxItems"] = limits.max_seq_tokens - 1


def _logit_bias(components: dict[str, Any], vocab: int | None) -> None:
    """Keys: token ids in the model's vocabulary, as plain decimals; values: biases in [-100, 100]."""
    for model in ("ChatCompletionRequest", "CompletionRequest"):
        prop = components.get(model, {}).get("properties", {}).get("logit_bias", {})
        for branch in prop.get("anyOf", [prop]):
            if branch.get("type") == "object":
                branch["propertyNames"] = {"pattern": id_key_pattern(vocab)}
                branch["additionalProperties"] = {"type": "number", "minimum": -100, "maximum": 100}


def _integer_nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    """Every integer schema inside node (through anyOf and array items)."""
    if node.get("type") == "integer":
        return [node]
    found = []
    for branch in node.get("anyOf", []):
        found += _integer_nodes(branch)
    if "items" in node:
        found += _integer_nodes(node["items"])
    return found


def _constrain(prop: dict[str, Any], bounds: dict[str, Any]) -> None:
    """Add each bound to the branches of the property's type it applies to (never to null)."""
    branches = prop.get("anyOf") or [prop]
    for branch in branches:
        kind = branch.get("type")
        for keyword, value in bounds.items():
            wanted = KEYWORDS_BY_TYPE[keyword]
            if kind == wanted or (wanted == "number" and kind == "integer"):
                branch[keyword] = value
        if kind == "array" and "minItems" in bounds and "items" in branch:
            items = branch["items"]  # a list of lists (token-id prompts): each inner one non-empty too
            if items.get("type") == "array":
                items["minItems"] = bounds["minItems"]
            elif items.get("type") == "string" and "minLength" in bounds:
                items["minLength"] = bounds["minLength"]
