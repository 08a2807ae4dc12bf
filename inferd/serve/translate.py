"""Requests -> engine inputs: chat messages to prompt ids, request fields to SamplingParams.

Every check a request can fail happens here, before anything is queued, and fails with the
parameter named: unsupported features, out-of-range values (SamplingParams validates those),
prompts that do not fit the context window or the KV cache.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from pydantic import BaseModel

from inferd.engine.async_engine import AsyncEngine
from inferd.engine.engine import PromptTooLong
from inferd.sampling_params import InvalidParameter, SamplingParams
from inferd.serve.errors import bad_request
from inferd.serve.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    SamplingRequest,
)
from inferd.serve.token_ids import parse_token_key
from inferd.serve.tools import (
    ToolPlan,
    native_messages,
    plan_tools,
    render_default,
    template_has_tools,
)
from inferd.structured import GrammarError, Guide

log = logging.getLogger(__name__)
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant",
         "tool": "tool"}
TEXT_PARTS = {"text", "input_text"}
MAX_TOP_LOGPROBS = 20
MAX_BEST_OF = 128  # as n
# error.code of the 400s a body valid under the OpenAPI document can still get (openapi.py lists
# them per route): what decides them is beyond a JSON schema.
CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"  # OpenAI's code; token counts decide
TOO_MANY_SEQUENCES = "too_many_sequences"  # prompts x n over --max-waiting-requests
EMPTY_PROMPT = "empty_prompt"  # text the tokenizer turns into no tokens
STREAM_WITH_BEST_OF = "stream_with_best_of"  # best_of above n compared with stream
INVALID_GRAMMAR = "invalid_grammar"  # a schema, regex or grammar llguidance cannot compile
CONFLICTING_STRUCTURED_OUTPUT = "conflicting_structured_output"  # two kinds asked for at once


# ---- fields the models do not declare ---------------------------------------------------------
# Fields clients send whose meaning this server does not implement: a value other than the
# neutral one is refused (400 naming it) rather than silently ignored.
UNSUPPORTED_FIELDS = {
    "functions": "function calling", "function_call": "function calling",
    "audio": "audio output", "prediction": "predicted outputs", "web_search_options": "web search",
    "structured_outputs": "vLLM's structured_outputs object (use response_format or guided_*)",
    "guided_whitespace_pattern": "guided_whitespace_pattern",
    "use_beam_search": "beam search", "length_penalty": "beam search",
    "truncate_prompt_tokens": "prompt truncation", "prompt_embeds": "prompt embeddings",
    "bad_words": "bad_words", "allowed_token_ids": "allowed_token_ids",
    "logits_processors": "custom logits processors", "continue_final_message": "continue_final_message",
    "chat_template": "per-request chat templates", "chat_template_kwargs": "chat template arguments",
    "documents": "documents", "return_tokens_as_token_ids": "return_tokens_as_token_ids",
    "modalities": "output modalities other than text", "priority": "request priorities",
    "echo": "echo for chat (use /v1/completions)",
    "spaces_between_special_tokens": "spaces_between_special_tokens",
    "kv_transfer_params": "KV transfer", "vllm_xargs": "vllm_xargs", "mm_processor_kwargs": "multimodal input",
}
NEUTRAL = {"modalities": (["text"],), "length_penalty": (1, 1.0), "priority": (0,),
           "spaces_between_special_tokens": (True,)}
# Accepted and without effect here, as in OpenAI's API or vLLM: metadata and hints.
NO_EFFECT = {"user", "store", "metadata", "service_tier", "reasoning_effort",
             "request_id", "safety_identifier", "prompt_cache_key", "verbosity"}
MESSAGE_UNSUPPORTED = {"function_call": "function calling (use tool_calls)", "audio": "audio"}
# Structured-output backends: this server's is llguidance; vLLM's names for it and "auto" are
# accepted, others refused rather than silently replaced.
GUIDED_BACKENDS = {"auto", "llguidance", "guidance"}


def check_extra_fields(body: BaseModel) -> None:
    """Refuse undeclared fields this server would otherwise ignore while their value matters;
    log the unknown rest, as vLLM does."""
    for name, value in (body.model_extra or {}).items():
        if name in UNSUPPORTED_FIELDS and value not in (None, False, [], {}) \
                and value not in NEUTRAL.get(name, ()):
            raise bad_request(f"'{name}' is not supported by this server ({UNSUPPORTED_FIELDS[name]})",
                              param=name, code="unsupported_parameter")
        if name not in UNSUPPORTED_FIELDS and name not in NO_EFFECT:
            # One format string: the serve CLI rate-limits this logger, however many names arrive.
            log.warning("ignoring request field %r: this server does not know it", name)
    for i, message in enumerate(getattr(body, "messages", None) or []):
        for name, value in (message.model_extra or {}).items():
            if name in MESSAGE_UNSUPPORTED and value not in (None, [], {}):
                raise bad_request(f"messages[{i}].{name}: {MESSAGE_UNSUPPORTED[name]} are not supported by "
                                  "this server", param="messages", code="unsupported_parameter")


# ---- text -----------------------------------------------------------------------------------
def check_body(body: BaseModel) -> None:
    """The checks every request body gets before anything else (no model work)."""
    refuse_lone_surrogates(body)
    check_extra_fields(body)


def refuse_lone_surrogates(body: BaseModel) -> None:
    """JSON can carry lone UTF-16 surrogates ("\ud800"), which are no text: no tokenizer, stop
    check or response encoder can handle them. Refuse them up front, naming the field."""
    for name, value in body:
        where = _surrogate_at(value, name)
        if where is not None:
            raise bad_request(f"'{where}' is not valid Unicode text: it contains a lone surrogate "
                              "(a \\ud800-\\udfff escape not part of a pair)", param=name,
                              code="invalid_unicode")


def _surrogate_at(value: Any, path: str) -> str | None:
    """The path of the first string under value holding a lone surrogate, or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
        return None
    if isinstance(value, BaseModel):
        return next((w for k, v in value if (w := _surrogate_at(v, f"{path}.{k}"))), None)
    if isinstance(value, dict):
        return next((w for k, v in value.items()
                     if (w := _surrogate_at(k, path) or _surrogate_at(v, f"{path}.{k}"))), None)
    if isinstance(value, list | tuple) and not (value and isinstance(value[0], int)):  # ids: no text
        return next((w for i, v in enumerate(value) if (w := _surrogate_at(v, f"{path}[{i}]"))), None)
    return None


# ---- prompts --------------------------------------------------------------------------------
def message_dicts(messages: list[ChatMessage], param: str = "messages") -> list[dict[str, str]]:
    """OpenAI messages -> the plain {role, content} dicts chat templates expect."""
    if not messages:
        raise bad_request(f"'{param}' must contain at least one message", param=param)
    out = []
    for i, m in enumerate(messages):
        role = ROLES.get(m.role)
        if role is None:
            raise bad_request(f"{param}[{i}].role {m.role!r} is not supported; use one of "
                              f"{sorted(ROLES)}", param=param)
        if m.content is None or isinstance(m.content, str):
            text = m.content or ""
        else:
            texts = []
            for part in m.content:
                if part.type not in TEXT_PARTS or part.text is None:
                    raise bad_request(f"{param}[{i}].content: content parts of type {part.type!r} are "
                                      "not supported (text only)", param=param)
                texts.append(part.text)
            text = "\n".join(texts)
        entry: dict[str, Any] = {"role": role, "content": text}
        if m.name:  # templates that know speaker names use it; the others ignore it
            entry["name"] = m.name
        if m.tool_calls:
            if role != "assistant":
                raise bad_request(f"{param}[{i}]: only assistant messages carry tool_calls", param=param)
            entry["tool_calls"] = _tool_calls(m.tool_calls, f"{param}[{i}]", param)
        if role == "tool":
            entry["tool_call_id"] = m.tool_call_id or ""
        out.append(entry)
    return out


def _tool_calls(calls: list[dict[str, Any]], where: str, param: str) -> list[dict[str, Any]]:
    for j, c in enumerate(calls):
        fn = c.get("function") if isinstance(c, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) \
                or not isinstance(fn.get("arguments", ""), str):
            raise bad_request(f"{where}.tool_calls[{j}] must be {{'id', 'type': 'function', 'function': "
                              "{'name': str, 'arguments': str}}", param=param)
    return calls


def encode_text(engine: AsyncEngine, text: str, param: str, *, add_special_tokens: bool = True,
                max_tokens: int | None = None) -> list[int]:
    """Tokenize user text; refuse it as too long before tokenizing when its size alone proves it
    cannot fit `max_tokens` (a multi-megabyte prompt costs seconds of tokenizer time otherwise)."""
    if max_tokens is not None:
        refuse_if_cannot_fit(engine, text, param, max_tokens)
    try:
        return engine.tokenizer.encode(text, add_special_tokens=add_special_tokens)
    except (TypeError, ValueError) as exc:  # e.g. a lone surrogate ("\ud800") is no UTF-8 text
        raise bad_request(f"'{param}' could not be tokenized: {_unicode_hint(text)}{exc}",
                          param=param) from None


def refuse_if_cannot_fit(engine: AsyncEngine, text: str, param: str, max_tokens: int) -> None:
    at_least = engine.tokenizer.min_tokens(text)
    if at_least >= max_tokens:
        raise PromptTooLong(param, f"this model's maximum context length is {max_tokens} tokens; "
                            f"the prompt has at least {at_least} tokens "
                            f"({len(text.encode('utf-8', 'surrogatepass'))} bytes)")


def _unicode_hint(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "it is not valid Unicode text (a lone surrogate?); "
    return ""


def chat_prompt_ids(engine: AsyncEngine, messages: list[ChatMessage],
                    add_generation_prompt: bool = True, param: str = "messages",
                    max_tokens: int | None = None, parse_special_in_content: bool = False,
                    tools: ToolPlan | None = None) -> list[int]:
    """max_tokens: refuse early (PromptTooLong) a conversation that cannot fit this many tokens.
    Control-token text inside messages stays text unless parse_special_in_content. tools: the
    functions the model may call this turn (rendered by the template or, without a tools
    section in it, by inferd's default format, which also renders past calls and results)."""
    dicts = message_dicts(messages, param)
    tok = engine.tokenizer
    native = template_has_tools(tok.chat_template)
    template_tools = None
    if native:
        dicts = native_messages(dicts)
        template_tools = [{"type": "function", "function": f} for f in tools.functions] if tools else None
    else:
        dicts = render_default(dicts, tools)
    try:
        text = tok.apply_chat_template(dicts, add_generation_prompt=add_generation_prompt,
                                       tools=template_tools)
    except Exception as exc:  # a template may refuse a conversation (e.g. roles must alternate)
        raise bad_request(f"could not apply the chat template: {exc}", param=param) from None
    if parse_special_in_content or not any(tok.holds_control_text(d["content"]) for d in dicts):
        # The template writes special tokens itself; adding them again would double the BOS.
        return encode_text(engine, text, param, add_special_tokens=False, max_tokens=max_tokens)
    if max_tokens is not None:
        refuse_if_cannot_fit(engine, text, param, max_tokens)
    try:
        return tok.encode_rendered_chat(text, dicts, add_generation_prompt, tools=template_tools)
    except (TypeError, ValueError) as exc:
        raise bad_request(f"could not encode the conversation: {exc}", param=param) from None


def num_prompts(prompt: Any) -> int:
    """How many prompts OpenAI's prompt forms hold (a string or one list of ids is one)."""
    if isinstance(prompt, str) or (prompt and all(isinstance(p, int) for p in prompt)):
        return 1
    return len(prompt)


def completion_prompts(engine: AsyncEngine, prompt: Any,
                       max_tokens: int | None = None) -> list[tuple[str | None, list[int]]]:
    """OpenAI's four prompt forms -> [(text or None, token ids)]."""
    if isinstance(prompt, str):
        prompts: list = [prompt]
    elif prompt and all(isinstance(p, int) for p in prompt):
        prompts = [prompt]
    else:
        prompts = list(prompt)
    if not prompts:
        raise bad_request("'prompt' must not be empty", param="prompt")
    out = []
    for p in prompts:
        if isinstance(p, str):
            ids = encode_text(engine, p, "prompt", max_tokens=max_tokens)
            if not ids:  # vLLM refuses an empty prompt too; which texts are empty is the tokenizer's say
                raise bad_request(f"'prompt' {p[:40]!r} has no tokens: this model's tokenizer drops all "
                                  "of it", param="prompt", code=EMPTY_PROMPT)
            out.append((p, ids))
        else:
            out.append((None, [int(t) for t in p]))
    return out


# ---- sampling parameters ---------------------------------------------------------------------
def _logit_bias(raw: dict[str, float] | None, vocab: int) -> dict[int, float] | None:
    if not raw:
        return None
    bias = {}
    for key, value in raw.items():
        tok = parse_token_key(key, vocab)
        if tok is None:
            raise InvalidParameter("logit_bias", f"logit_bias keys must be token ids in [0, {vocab}) written "
                                   f"as plain decimals, got {key[:40]!r}")
        bias[tok] = float(value)
    return bias


def model_vocab(engine: AsyncEngine) -> int:
    """Rows of the model's logits (token ids at or beyond it cannot be sampled or masked)."""
    return engine.engine.loaded.arch.vocab_size


def _common(req: SamplingRequest, vocab: int) -> dict[str, Any]:
    """Shared fields; ranges the engine would only discover mid-batch are checked here."""
    if req.stream_options is not None and not req.stream:
        raise bad_request("'stream_options' is only allowed when 'stream' is true", param="stream_options")
    return dict(
        n=1 if req.n is None else req.n,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        top_k=req.top_k or 0,
        min_p=req.min_p or 0.0,
        seed=req.seed,
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        repetition_penalty=1.0 if req.repetition_penalty is None else req.repetition_penalty,
        min_tokens=req.min_tokens or 0,
        stop=[req.stop] if isinstance(req.stop, str) else list(req.stop or []),
        stop_token_ids=list(req.stop_token_ids or []),
        ignore_eos=bool(req.ignore_eos),
        include_stop_str_in_output=bool(req.include_stop_str_in_output),
        skip_special_tokens=req.skip_special_tokens is not False,
        logit_bias=_logit_bias(req.logit_bias, vocab),
    )


def request_guide(req: SamplingRequest, engine: AsyncEngine) -> Guide | None:
    """The structured-output guide a request asks for (response_format or one guided_* field),
    compiled now (cached) so that a bad schema is a 400 with llguidance's message."""
    found: list[tuple[str, Guide]] = []
    fmt = getattr(req, "response_format", None)
    if fmt is not None:
        found += [("response_format", g) for g in [_response_format_guide(fmt)] if g is not None]
    if req.guided_json is not None:
        schema = req.guided_json
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except ValueError as exc:
                raise bad_request(f"guided_json is not valid JSON: {exc}", param="guided_json",
                                  code=INVALID_GRAMMAR) from None
        found.append(("guided_json", Guide.json(schema)))
    if req.guided_regex is not None:
        found.append(("guided_regex", Guide("regex", req.guided_regex)))
    if req.guided_choice is not None:
        if not req.guided_choice:
            raise bad_request("guided_choice must list at least one choice", param="guided_choice")
        found.append(("guided_choice", Guide.choice(req.guided_choice)))
    if req.guided_grammar is not None:
        found.append(("guided_grammar", Guide("grammar", req.guided_grammar)))
    if req.guided_decoding_backend not in (None, *GUIDED_BACKENDS):
        raise bad_request(f"guided_decoding_backend {req.guided_decoding_backend!r} is not available; this "
                          f"server uses llguidance (one of {sorted(GUIDED_BACKENDS)})",
                          param="guided_decoding_backend")
    if len(found) > 1:
        raise bad_request(f"only one kind of structured output may be asked for, got {[n for n, _ in found]}",
                          param=found[1][0], code=CONFLICTING_STRUCTURED_OUTPUT)
    if not found:
        return None
    param, guide = found[0]
    compile_guide(engine, guide, param)
    return guide


def compile_guide(engine: AsyncEngine, guide: Guide, param: str) -> None:
    try:
        engine.engine.grammars.compile(guide, param)
    except GrammarError as exc:
        raise bad_request(str(exc), param=param, code=INVALID_GRAMMAR) from None


def _response_format_guide(fmt: dict[str, Any]) -> Guide | None:
    """OpenAI's response_format: text | json_object | json_schema {name, schema, strict}."""
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return Guide.json_object()
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise bad_request("response_format json_schema needs a 'json_schema' object with a 'name'",
                              param="response_format")
        schema = spec.get("schema", {})
        if not isinstance(schema, dict | bool):
            raise bad_request("response_format json_schema.schema must be a JSON schema object",
                              param="response_format")
        # Non-strict schemas may use keywords llguidance cannot enforce; strict ones may not.
        return Guide.json(schema, lenient=spec.get("strict") is not True)
    raise bad_request(f"response_format type {kind!r} is not supported (text, json_object, json_schema)",
                      param="response_format")


def _finalize(engine: AsyncEngine, ids: list[int], fields: dict[str, Any],
              max_tokens: int | None, max_tokens_param: str) -> SamplingParams:
    """Pick max_tokens (the rest of the window when unset), build and check against the limits."""
    limit = engine.engine.max_seq_tokens  # the context window, or the whole KV pool if smaller
    if not ids:
        raise InvalidParameter("prompt", "prompt is empty")
    if max_tokens is None:
        room = limit - len(ids)
        if room < 1:
            raise PromptTooLong("prompt", f"this model's maximum context length is {limit} "
                                f"tokens; the prompt has {len(ids)} tokens, leaving no room to generate")
        max_tokens = room
    elif max_tokens < 1:
        raise InvalidParameter(max_tokens_param, f"{max_tokens_param} must be at least 1, got {max_tokens}")
    # min_tokens past max_tokens or the window could never be produced: generation ends there
    # (finish_reason "length") instead of refusing a request the API's schema allows.
    fields["min_tokens"] = min(fields.get("min_tokens", 0), max_tokens, max(limit - len(ids), 0))
    params = SamplingParams(max_tokens=max_tokens, **fields)
    try:
        engine.prepare(ids, params)  # ids in range, fits the window and the KV pool, stop ids valid
    except PromptTooLong as exc:
        exc.param = max_tokens_param if exc.param == "max_tokens" else exc.param
        raise
    return params


def chat_params(req: ChatCompletionRequest, engine: AsyncEngine, ids: list[int],
                tools: ToolPlan | None = None) -> SamplingParams:
    fields = _common(req, model_vocab(engine))
    guide = request_guide(req, engine)
    if tools is not None and tools.constrained:
        if guide is not None:
            raise bad_request("tool_choice 'required' or a named function cannot be combined with "
                              "structured output (response_format or guided_*)", param="tool_choice",
                              code=CONFLICTING_STRUCTURED_OUTPUT)
        guide = tools.guide()
        compile_guide(engine, guide, "tools")
    fields["guide"] = guide
    if req.top_logprobs is not None:
        if not req.logprobs:
            raise bad_request("'top_logprobs' requires 'logprobs' to be true", param="top_logprobs")
        if not 0 <= req.top_logprobs <= MAX_TOP_LOGPROBS:
            raise bad_request(f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {req.top_logprobs}",
                              param="top_logprobs")
    if req.logprobs:
        fields["logprobs"] = req.top_logprobs or 0
    if req.max_completion_tokens is not None:
        return _finalize(engine, ids, fields, req.max_completion_tokens, "max_completion_tokens")
    return _finalize(engine, ids, fields, req.max_tokens, "max_tokens")


def chat_inputs(req: ChatCompletionRequest, engine: AsyncEngine,
                parse_special_in_content: bool = False) -> tuple[list[int], SamplingParams]:
    """Prompt ids and sampling parameters of a chat request. Tokenizes and compiles grammars:
    run it off the event loop."""
    check_size(engine, 1, 1 if req.n is None else max(req.n, 1))
    tools = chat_tools(req)
    ids = chat_prompt_ids(engine, req.messages, req.add_generation_prompt is not False,
                          max_tokens=engine.engine.max_seq_tokens,
                          parse_special_in_content=parse_special_in_content, tools=tools)
    return ids, chat_params(req, engine, ids, tools)


def chat_tools(req: ChatCompletionRequest) -> ToolPlan | None:
    """The functions the model may call this turn (None: tool_choice none, or no tools)."""
    return plan_tools(req.tools, req.tool_choice, req.parallel_tool_calls)


def completion_inputs(req: CompletionRequest, engine: AsyncEngine
                      ) -> tuple[list[tuple[str | None, list[int]]], list[SamplingParams]]:
    """[(prompt text, ids)] and one SamplingParams per prompt. Tokenizes: run it off the event loop."""
    # Before tokenizing: a request with more prompts x n than the queue holds is refused at once.
    if req.best_of is not None and not 1 <= req.best_of <= MAX_BEST_OF:
        raise bad_request(f"best_of must be in [1, {MAX_BEST_OF}], got {req.best_of}", param="best_of")
    best_of_decides = num_candidates(req) > (req.n or 1)  # if too large, best_of made it so: say so
    check_size(engine, num_prompts(req.prompt), num_candidates(req), "best_of" if best_of_decides else None)
    prompts = completion_prompts(engine, req.prompt, max_tokens=engine.engine.max_seq_tokens)
    return prompts, [completion_params(req, engine, ids) for _, ids in prompts]


def check_size(engine: AsyncEngine, prompts: int, n: int, param: str | None = None) -> None:
    """Refuse a request with more sequences than the waiting queue holds per request, with its
    own error code (no JSON schema can bound a product of two fields)."""
    try:
        engine.check_size(prompts, n)
    except InvalidParameter as exc:
        raise bad_request(str(exc), param=param or exc.param, code=TOO_MANY_SEQUENCES) from None


def num_candidates(req: CompletionRequest) -> int:
    """Sequences generated per prompt: best_of (at least n; a smaller best_of counts as n, which
    OpenAI refuses but a JSON schema cannot forbid), else n."""
    n = 1 if req.n is None else max(req.n, 1)
    return max(n, req.best_of or 0)


def completion_params(req: CompletionRequest, engine: AsyncEngine, ids: list[int]) -> SamplingParams:
    """For `max_tokens: 0` with echo one token is generated and dropped by the caller (as vLLM)."""
    if req.suffix:
        raise bad_request("'suffix' is not supported by this server", param="suffix")
    n = 1 if req.n is None else req.n
    best_of = num_candidates(req) if n >= 1 else n  # n < 1 is refused below, naming n
    if req.stream and best_of > n:
        raise bad_request("'best_of' greater than n cannot be streamed (as in OpenAI's API)",
                          param="best_of", code=STREAM_WITH_BEST_OF)
    fields = _common(req, model_vocab(engine))
    if req.logprobs is not None:
        fields["logprobs"] = req.logprobs
    if best_of > n:
        # The engine samples best_of sequences; the route returns the n with the highest
        # cumulative logprob, which the engine sums only where logprobs are kept (0: the chosen
        # token's own). The response shows logprobs only when the request asked for them.
        fields["n"] = best_of
        fields.setdefault("logprobs", 0)
    fields["guide"] = request_guide(req, engine)
    if req.prompt_logprobs is not None:
        fields["prompt_logprobs"] = req.prompt_logprobs
    elif req.echo and req.logprobs is not None:
        fields["prompt_logprobs"] = req.logprobs
    max_tokens = req.max_tokens
    if max_tokens == 0:
        if not req.echo:
            raise InvalidParameter("max_tokens", "max_tokens must be at least 1 (0 is allowed only with echo)")
        max_tokens = 1
    return _finalize(engine, ids, fields, max_tokens, "max_tokens")
