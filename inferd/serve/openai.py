"""The OpenAI routes: /v1/models, /v1/chat/completions, /v1/completions.

Each route only translates: request -> (prompt ids, SamplingParams) via `translate`, queued
through a `Submission`, engine outputs -> OpenAI's response or SSE chunks. Nothing here touches
the scheduler or KV blocks; leaving early aborts the engine requests and the engine frees them.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from fastapi import APIRouter, Request
from fastapi.responses import Response

from inferd.engine.async_embedder import AsyncEmbedder
from inferd.engine.async_engine import NewRequest
from inferd.outputs import RequestOutput
from inferd.serve.errors import from_exception
from inferd.serve.logprobs import LogprobFormatter, merge
from inferd.serve.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobs,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    DeltaMessage,
    ModelCard,
    ModelList,
    PromptTokensDetails,
    Usage,
    now,
)
from inferd.serve.registry import EMBED, ServedEngine, ServedModels
from inferd.serve.streams import (
    DONE,
    AbortingStreamingResponse,
    ClientGone,
    Submission,
    sse,
    until_disconnected,
)
from inferd.serve.tools import ToolCallParser, parse_output
from inferd.serve.translate import chat_inputs, chat_tools, check_body, completion_inputs

router = APIRouter(prefix="/v1")
CLIENT_CLOSED = 499  # nginx's code for "client closed request"; nobody reads it


def served(request: Request) -> ServedModels:
    return request.app.state.models


def cache_salt(request: Request, body: ChatCompletionRequest | CompletionRequest) -> str | None:
    """Whose prefix-cache blocks this request may reuse: its tenant's (the API key's, so a caller
    cannot probe others' prompts through cached_tokens) and, within it, its own cache_salt's."""
    tenant = None if request.app.state.shared_prefix_cache else getattr(request.state, "tenant", None)
    if tenant is None and body.cache_salt is None:
        return None
    return json.dumps([tenant, body.cache_salt])


def _usage(prompt_tokens: int, completion_tokens: int, cached: int = 0) -> Usage:
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                 total_tokens=prompt_tokens + completion_tokens,
                 prompt_tokens_details=PromptTokensDetails(cached_tokens=cached))


async def _collect(request: Request, sub: Submission) -> list[RequestOutput] | None:
    """Final outputs, or None when the client went away first (its requests are aborted)."""
    try:
        return await until_disconnected(request, sub.final_outputs())
    except ClientGone:
        return None
    finally:
        sub.abort_unfinished()


def _error_event(exc: BaseException) -> str:
    return sse(from_exception(exc).response().body.decode())


# ---- models -----------------------------------------------------------------------------------
def _card(name: str, engine: ServedEngine, created: int) -> ModelCard:
    if isinstance(engine, AsyncEmbedder):
        return ModelCard(id=name, created=created, root=engine.embedder.name, task=EMBED,
                         max_model_len=engine.embedder.max_seq_length)
    return ModelCard(id=name, created=created, root=str(engine.config.model.model),
                     max_model_len=engine.max_model_len)


@router.get("/models")
async def list_models(request: Request) -> ModelList:
    models = served(request)
    return ModelList(data=[_card(name, engine, models.created) for name, engine in models.items()])


@router.get("/models/{model:path}")
async def get_model(model: str, request: Request) -> ModelCard:
    # The route's pattern ends in `$`, which also matches before a trailing newline, so
    # "/v1/models/x%0A" would arrive as "x": look up exactly what the path holds instead.
    path = request.scope["path"].removeprefix(request.scope.get("root_path", ""))
    m = served(request).get(path.removeprefix(router.prefix + "/models/"), task=None)
    return _card(m.name, m.engine, served(request).created)


# ---- chat -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Extras:
    """Optional parts of a response a request asked for; the rest are left out of the JSON."""

    final_usage: bool = False  # stream_options.include_usage: a last chunk with the totals
    every_usage: bool = False  # stream_options.continuous_usage_stats: usage so far in each chunk
    token_ids: bool = False  # return_token_ids

    @classmethod
    def of(cls, body: ChatCompletionRequest | CompletionRequest) -> _Extras:
        o = body.stream_options
        return cls(bool(o and o.include_usage), bool(o and o.continuous_usage_stats),
                   bool(body.return_token_ids))

    def exclude(self, *, streamed: bool) -> dict:
        out: dict = {}
        if streamed and not (self.final_usage or self.every_usage):
            out["usage"] = True
        if not self.token_ids:
            out["prompt_token_ids"] = True
            out["choices"] = {"__all__": {"token_ids", "prompt_token_ids"}}
        return out


def _json(response: ChatCompletionResponse | CompletionResponse, extras: _Extras) -> Response:
    return Response(response.model_dump_json(exclude=extras.exclude(streamed=False)),
                    media_type="application/json")


@router.post("/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, request: Request):
    check_body(body)
    model = served(request).get(body.model)
    engine = model.engine
    # Tokenizing a long prompt takes seconds; on the event loop it would stall every client.
    ids, params = await asyncio.to_thread(chat_inputs, body, engine,
                                          request.app.state.parse_special_in_messages)
    rid = f"chatcmpl-{uuid.uuid4().hex}"
    sub = Submission(engine)
    await sub.add([NewRequest(rid, ids, params, ids, cache_salt(request, body))])
    fmt = LogprobFormatter(engine.tokenizer)
    top_n = body.top_logprobs or 0
    extras = _Extras.of(body)
    tools = chat_tools(body) is not None  # (validated already): parse tool calls from the text
    if body.stream:
        return AbortingStreamingResponse(
            _chat_stream(sub, rid, model.name, params.n, ids, fmt,
                         top_n if params.logprobs is not None else None, extras, tools),
            on_close=sub.abort_unfinished)
    finals = await _collect(request, sub)
    if finals is None:
        return Response(status_code=CLIENT_CLOSED)
    final = finals[0]
    choices = []
    for c in final.outputs:
        lp = None
        if params.logprobs is not None:
            lp = ChatLogprobs(content=fmt.chat(c.token_ids, c.logprobs or [], top_n))
        content, calls = parse_output(c.text) if tools else (c.text, [])
        choices.append(ChatChoice(index=c.index, message=AssistantMessage(content=content, tool_calls=calls),
                                  logprobs=lp, finish_reason=_finish_reason(c.finish_reason, bool(calls)),
                                  stop_reason=c.stop_reason, token_ids=list(c.token_ids)))
    completion = sum(len(c.token_ids) for c in final.outputs)
    return _json(ChatCompletionResponse(id=rid, model=model.name, choices=choices, prompt_token_ids=ids,
                                        usage=_usage(len(ids), completion, final.num_cached_tokens)), extras)


def _finish_reason(reason: str | None, called: bool) -> str | None:
    """OpenAI's "tool_calls" where the model ended its turn by calling tools."""
    return "tool_calls" if called and reason == "stop" else reason


async def _chat_stream(sub: Submission, rid: str, model: str, n: int, prompt_ids: list[int],
                       fmt: LogprobFormatter, top_n: int | None, extras: _Extras,
                       tools: bool = False) -> AsyncIterator[str]:
    """top_n None: no logprobs asked for. tools: text is parsed into tool-call deltas."""
    created = now()
    exclude = extras.exclude(streamed=True)
    last: RequestOutput | None = None

    def usage_so_far() -> Usage:
        completion = sum(len(c.token_ids) for c in last.outputs) if last is not None else 0
        return _usage(len(prompt_ids), completion, last.num_cached_tokens if last is not None else 0)

    def chunk(choices: list[ChatChunkChoice], usage: Usage | None = None, **fields) -> str:
        if usage is None and extras.every_usage:
            usage = usage_so_far()
        c = ChatCompletionChunk(id=rid, created=created, model=model, choices=choices, usage=usage, **fields)
        return sse(c.model_dump_json(exclude=exclude))

    for i in range(n):
        yield chunk([ChatChunkChoice(index=i, delta=DeltaMessage(role="assistant", content=""))],
                    prompt_token_ids=prompt_ids if i == 0 else None)
    want_lp = top_n is not None
    done: set[int] = set()
    parsers = {i: ToolCallParser() for i in range(n)} if tools else {}
    try:
        async for _, out in sub.outputs():
            last = out
            for c in out.outputs:
                if c.index in done:
                    continue
                text, calls = c.delta_text, None
                if tools:
                    text, calls = parsers[c.index].feed(c.delta_text, final=c.finish_reason is not None)
                if text or calls or ((want_lp or extras.token_ids) and c.delta_token_ids):
                    lp = (ChatLogprobs(content=fmt.chat(c.delta_token_ids, c.delta_logprobs or [], top_n or 0))
                          if want_lp else None)
                    delta = DeltaMessage(content=text if text or not calls else None, tool_calls=calls or None)
                    yield chunk([ChatChunkChoice(index=c.index, delta=delta,
                                                 logprobs=lp, token_ids=list(c.delta_token_ids))])
                if c.finish_reason is not None:
                    done.add(c.index)
                    called = bool(tools and parsers[c.index].calls)
                    yield chunk([ChatChunkChoice(index=c.index, delta=DeltaMessage(),
                                                 finish_reason=_finish_reason(c.finish_reason, called),
                                                 stop_reason=c.stop_reason, token_ids=[])])
    except Exception as exc:  # the engine failed or stopped mid-stream: say so, then end cleanly
        yield _error_event(exc)
        yield DONE
        return
    if extras.final_usage and last is not None:
        yield chunk([], usage_so_far())
    yield DONE


# ---- completions ------------------------------------------------------------------------------
@router.post("/completions", response_model=None)
async def completions(body: CompletionRequest, request: Request):
    check_body(body)
    model = served(request).get(body.model)
    engine = model.engine
    prompts, params = await asyncio.to_thread(completion_inputs, body, engine)
    rid = f"cmpl-{uuid.uuid4().hex}"
    sub = Submission(engine)
    salt = cache_salt(request, body)
    await sub.add([NewRequest(f"{rid}-{i}", ids, params[i], ids, salt) for i, (_, ids) in enumerate(prompts)])
    n = 1 if body.n is None else body.n  # params[0].n is best_of where that is larger
    view = _CompletionView(body, prompts, n, LogprobFormatter(engine.tokenizer))
    extras = _Extras.of(body)
    if body.stream:
        return AbortingStreamingResponse(_completion_stream(sub, rid, model.name, view, extras),
                                         on_close=sub.abort_unfinished)
    finals = await _collect(request, sub)
    if finals is None:
        return Response(status_code=CLIENT_CLOSED)
    # Usage counts every generated token, best_of's discarded candidates too (as OpenAI bills them).
    usage = _usage(view.prompt_tokens, sum(view.completion_tokens(f) for f in finals),
                   sum(f.num_cached_tokens for f in finals))
    choices = [view.choice(i, pick_best(out, n)) for i, out in enumerate(finals)]
    flat = [c for group in choices for c in group]
    return _json(CompletionResponse(id=rid, model=model.name, choices=flat, usage=usage), extras)


def pick_best(out: RequestOutput, n: int) -> RequestOutput:
    """The n candidates with the highest cumulative logprob, best first and renumbered 0..n-1
    (best_of's selection); out itself when it holds no more than n."""
    if len(out.outputs) <= n:
        return out
    ranked = sorted(out.outputs, key=lambda c: (-c.cumulative_logprob, c.index))[:n]
    return replace(out, outputs=[replace(c, index=i) for i, c in enumerate(ranked)])


class _CompletionView:
    """How one completions request renders engine outputs: echo, logprobs, max_tokens=0."""

    def __init__(self, body: CompletionRequest, prompts: list[tuple[str | None, list[int]]], n: int,
                 fmt: LogprobFormatter):
        self.echo = bool(body.echo)
        self.prompt_only = body.max_tokens == 0  # generated one token internally; report none
        self.want_lp = body.logprobs is not None
        self.prompt_lp_n = body.prompt_logprobs  # vLLM's prompt_logprobs field, returned as vLLM does
        self.prompts = prompts
        self.prompt_tokens = sum(len(ids) for _, ids in prompts)
        self.n = n
        self.fmt = fmt

    def prompt_text(self, i: int) -> str:
        text, ids = self.prompts[i]
        return text if text is not None else self.fmt.tokenizer.decode(ids, skip_special_tokens=False)

    def completion_tokens(self, out: RequestOutput) -> int:
        return 0 if self.prompt_only else sum(len(c.token_ids) for c in out.outputs)

    def _prompt_entries(self, i: int, out: RequestOutput) -> list:
        ids = self.prompts[i][1]
        entries = list(out.prompt_logprobs or [])
        return (entries + [None] * (len(ids) - len(entries)))[:len(ids)]

    def prompt_logprobs(self, i: int, out: RequestOutput) -> CompletionLogprobs:
        return self.fmt.completion(self.prompts[i][1], self._prompt_entries(i, out))

    def first_extras(self, extras: _Extras) -> bool:
        """Whether a choice's first chunk carries something even without text."""
        return extras.token_ids or self.prompt_lp_n is not None

    def first_fields(self, i: int, out: RequestOutput) -> dict:
        """What a choice's first message carries once: its prompt's ids and prompt logprobs."""
        fields: dict = {"prompt_token_ids": self.prompts[i][1]}
        if self.prompt_lp_n is not None:
            fields["prompt_logprobs"] = self.fmt.prompt(self.prompts[i][1], self._prompt_entries(i, out),
                                                        self.prompt_lp_n)
        return fields

    def choice(self, i: int, out: RequestOutput) -> list[CompletionChoice]:
        choices = []
        for c in out.outputs:
            text = "" if self.prompt_only else c.text
            ids = [] if self.prompt_only else c.token_ids
            lp = None
            prefix = self.prompt_text(i) if self.echo else ""
            if self.want_lp:
                gen = self.fmt.completion(ids, list(c.logprobs or []), offset=len(prefix))
                lp = merge(self.prompt_logprobs(i, out), gen) if self.echo else gen
            choices.append(CompletionChoice(index=i * self.n + c.index, text=prefix + text, logprobs=lp,
                                            finish_reason=c.finish_reason, stop_reason=c.stop_reason,
                                            token_ids=list(ids), **self.first_fields(i, out)))
        return choices


async def _completion_stream(sub: Submission, rid: str, model: str, view: _CompletionView,
                             extras: _Extras) -> AsyncIterator[str]:
    created = now()
    exclude = extras.exclude(streamed=True)
    latest: dict[int, RequestOutput] = {}  # per prompt, its newest (cumulative) output

    def usage_so_far() -> Usage:
        return _usage(view.prompt_tokens, sum(view.completion_tokens(o) for o in latest.values()),
                      sum(o.num_cached_tokens for o in latest.values()))

    def chunk(choices: list[CompletionChoice], usage: Usage | None = None) -> str:
        if usage is None and extras.every_usage:
            usage = usage_so_far()
        c = CompletionResponse(id=rid, created=created, model=model, choices=choices, usage=usage)
        return sse(c.model_dump_json(exclude=exclude))

    done: set[int] = set()
    started: set[int] = set()  # choices whose first chunk (prompt ids, prompt logprobs) went out
    offsets: dict[int, int] = {}  # characters sent so far per choice (for logprobs' text_offset)
    try:
        async for i, out in sub.outputs():
            latest[i] = out
            for c in out.outputs:
                index = i * view.n + c.index
                if index in done:
                    continue
                first = (view.first_fields(i, out) if index not in started and view.first_extras(extras)
                         else {})
                if view.echo and index not in started:
                    started.add(index)
                    prefix = view.prompt_text(i)
                    offsets[index] = len(prefix)
                    lp = view.prompt_logprobs(i, out) if view.want_lp else None
                    yield chunk([CompletionChoice(index=index, text=prefix, logprobs=lp, **first)])
                    first = {}
                delta_ids = [] if view.prompt_only else list(c.delta_token_ids)
                if (not view.prompt_only and (c.delta_text or ((view.want_lp or extras.token_ids) and delta_ids))
                        or first):
                    lp = None
                    if view.want_lp and not view.prompt_only:
                        lp = view.fmt.completion(delta_ids, list(c.delta_logprobs or []),
                                                 offset=offsets.get(index, 0))
                    text = "" if view.prompt_only else c.delta_text
                    offsets[index] = offsets.get(index, 0) + len(text)
                    started.add(index)
                    yield chunk([CompletionChoice(index=index, text=text, logprobs=lp, token_ids=delta_ids,
                                                  **first)])
                if c.finish_reason is not None:
                    done.add(index)
                    yield chunk([CompletionChoice(index=index, text="", finish_reason=c.finish_reason,
                                                  stop_reason=c.stop_reason, token_ids=[])])
    except Exception as exc:
        yield _error_event(exc)
        yield DONE
        return
    if extras.final_usage:
        yield chunk([], usage_so_far())
    yield DONE
