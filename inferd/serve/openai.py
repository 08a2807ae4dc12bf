"""The OpenAI routes: /v1/models, /v1/chat/completions, /v1/completions.

Each route only translates: request -> (prompt ids, SamplingParams) via `translate`, queued
through a `Submission`, engine outputs -> OpenAI's response or SSE chunks. Nothing here touches
the scheduler or KV blocks; leaving early aborts the engine requests and the engine frees them.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import Response

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
from inferd.serve.registry import ServedModels
from inferd.serve.streams import (
    DONE,
    AbortingStreamingResponse,
    ClientGone,
    Submission,
    sse,
    until_disconnected,
)
from inferd.serve.translate import chat_inputs, completion_inputs, refuse_lone_surrogates

router = APIRouter(prefix="/v1")
CLIENT_CLOSED = 499  # nginx's code for "client closed request"; nobody reads it


def served(request: Request) -> ServedModels:
    return request.app.state.models


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
@router.get("/models")
async def list_models(request: Request) -> ModelList:
    models = served(request)
    return ModelList(data=[ModelCard(id=name, created=models.created, root=str(engine.config.model.model),
                                     max_model_len=engine.max_model_len)
                           for name, engine in models.items()])


@router.get("/models/{model:path}")
async def get_model(model: str, request: Request) -> ModelCard:
    # The route's pattern ends in `$`, which also matches before a trailing newline, so
    # "/v1/models/x%0A" would arrive as "x": look up exactly what the path holds instead.
    path = request.scope["path"].removeprefix(request.scope.get("root_path", ""))
    m = served(request).get(path.removeprefix(router.prefix + "/models/"))
    return ModelCard(id=m.name, created=served(request).created, root=str(m.engine.config.model.model),
                     max_model_len=m.engine.max_model_len)


# ---- chat -------------------------------------------------------------------------------------
@router.post("/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, request: Request):
    refuse_lone_surrogates(body)
    model = served(request).get(body.model)
    engine = model.engine
    # Tokenizing a long prompt takes seconds; on the event loop it would stall every client.
    ids, params = await asyncio.to_thread(chat_inputs, body, engine)
    rid = f"chatcmpl-{uuid.uuid4().hex}"
    sub = Submission(engine)
    await sub.add([NewRequest(rid, ids, params, ids)])
    fmt = LogprobFormatter(engine.tokenizer)
    top_n = body.top_logprobs or 0
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return AbortingStreamingResponse(
            _chat_stream(sub, rid, model.name, params.n, len(ids), fmt,
                         top_n if params.logprobs is not None else None, include_usage),
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
        choices.append(ChatChoice(index=c.index, message=AssistantMessage(content=c.text), logprobs=lp,
                                  finish_reason=c.finish_reason, stop_reason=c.stop_reason))
    completion = sum(len(c.token_ids) for c in final.outputs)
    return ChatCompletionResponse(id=rid, model=model.name, choices=choices,
                                  usage=_usage(len(ids), completion, final.num_cached_tokens))


async def _chat_stream(sub: Submission, rid: str, model: str, n: int, prompt_len: int,
                       fmt: LogprobFormatter, top_n: int | None, include_usage: bool) -> AsyncIterator[str]:
    """top_n None: no logprobs asked for."""
    created = now()
    exclude = None if include_usage else {"usage"}

    def chunk(choices: list[ChatChunkChoice], usage: Usage | None = None) -> str:
        c = ChatCompletionChunk(id=rid, created=created, model=model, choices=choices, usage=usage)
        return sse(c.model_dump_json(exclude=exclude))

    for i in range(n):
        yield chunk([ChatChunkChoice(index=i, delta=DeltaMessage(role="assistant", content=""))])
    want_lp = top_n is not None
    done: set[int] = set()
    last: RequestOutput | None = None
    try:
        async for _, out in sub.outputs():
            last = out
            for c in out.outputs:
                if c.index in done:
                    continue
                if c.delta_text or (want_lp and c.delta_token_ids):
                    lp = (ChatLogprobs(content=fmt.chat(c.delta_token_ids, c.delta_logprobs or [], top_n or 0))
                          if want_lp else None)
                    yield chunk([ChatChunkChoice(index=c.index, delta=DeltaMessage(content=c.delta_text),
                                                 logprobs=lp)])
                if c.finish_reason is not None:
                    done.add(c.index)
                    yield chunk([ChatChunkChoice(index=c.index, delta=DeltaMessage(),
                                                 finish_reason=c.finish_reason, stop_reason=c.stop_reason)])
    except Exception as exc:  # the engine failed or stopped mid-stream: say so, then end cleanly
        yield _error_event(exc)
        yield DONE
        return
    if include_usage and last is not None:
        completion = sum(len(c.token_ids) for c in last.outputs)
        yield chunk([], _usage(prompt_len, completion, last.num_cached_tokens))
    yield DONE


# ---- completions ------------------------------------------------------------------------------
@router.post("/completions", response_model=None)
async def completions(body: CompletionRequest, request: Request):
    refuse_lone_surrogates(body)
    model = served(request).get(body.model)
    engine = model.engine
    prompts, params = await asyncio.to_thread(completion_inputs, body, engine)
    rid = f"cmpl-{uuid.uuid4().hex}"
    sub = Submission(engine)
    await sub.add([NewRequest(f"{rid}-{i}", ids, params[i], ids) for i, (_, ids) in enumerate(prompts)])
    view = _CompletionView(body, prompts, params[0].n, LogprobFormatter(engine.tokenizer))
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return AbortingStreamingResponse(_completion_stream(sub, rid, model.name, view, include_usage),
                                         on_close=sub.abort_unfinished)
    finals = await _collect(request, sub)
    if finals is None:
        return Response(status_code=CLIENT_CLOSED)
    choices = [view.choice(i, out) for i, out in enumerate(finals)]
    flat = [c for group in choices for c in group]
    return CompletionResponse(id=rid, model=model.name, choices=flat,
                              usage=_usage(sum(len(ids) for _, ids in prompts),
                                           sum(view.completion_tokens(f) for f in finals),
                                           sum(f.num_cached_tokens for f in finals)))


class _CompletionView:
    """How one completions request renders engine outputs: echo, logprobs, max_tokens=0."""

    def __init__(self, body: CompletionRequest, prompts: list[tuple[str | None, list[int]]], n: int,
                 fmt: LogprobFormatter):
        self.echo = bool(body.echo)
        self.prompt_only = body.max_tokens == 0  # generated one token internally; report none
        self.want_lp = body.logprobs is not None
        self.prompts = prompts
        self.n = n
        self.fmt = fmt

    def prompt_text(self, i: int) -> str:
        text, ids = self.prompts[i]
        return text if text is not None else self.fmt.tokenizer.decode(ids, skip_special_tokens=False)

    def completion_tokens(self, out: RequestOutput) -> int:
        return 0 if self.prompt_only else sum(len(c.token_ids) for c in out.outputs)

    def prompt_logprobs(self, i: int, out: RequestOutput) -> CompletionLogprobs:
        ids = self.prompts[i][1]
        entries = list(out.prompt_logprobs or [])
        entries += [None] * (len(ids) - len(entries))
        return self.fmt.completion(ids, entries[:len(ids)])

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
                                            finish_reason=c.finish_reason, stop_reason=c.stop_reason))
        return choices


async def _completion_stream(sub: Submission, rid: str, model: str, view: _CompletionView,
                             include_usage: bool) -> AsyncIterator[str]:
    created = now()
    exclude = None if include_usage else {"usage"}

    def chunk(choices: list[CompletionChoice], usage: Usage | None = None) -> str:
        c = CompletionResponse(id=rid, created=created, model=model, choices=choices, usage=usage)
        return sse(c.model_dump_json(exclude=exclude))

    done: set[int] = set()
    echoed: set[int] = set()
    offsets: dict[int, int] = {}  # characters sent so far per choice (for logprobs' text_offset)
    finals: dict[int, RequestOutput] = {}
    try:
        async for i, out in sub.outputs():
            for c in out.outputs:
                index = i * view.n + c.index
                if index in done:
                    continue
                if view.echo and index not in echoed:
                    echoed.add(index)
                    prefix = view.prompt_text(i)
                    offsets[index] = len(prefix)
                    lp = view.prompt_logprobs(i, out) if view.want_lp else None
                    yield chunk([CompletionChoice(index=index, text=prefix, logprobs=lp)])
                if not view.prompt_only and (c.delta_text or (view.want_lp and c.delta_token_ids)):
                    lp = None
                    if view.want_lp:
                        lp = view.fmt.completion(c.delta_token_ids, list(c.delta_logprobs or []),
                                                 offset=offsets.get(index, 0))
                    offsets[index] = offsets.get(index, 0) + len(c.delta_text)
                    yield chunk([CompletionChoice(index=index, text=c.delta_text, logprobs=lp)])
                if c.finish_reason is not None:
                    done.add(index)
                    yield chunk([CompletionChoice(index=index, text="", finish_reason=c.finish_reason,
                                                  stop_reason=c.stop_reason)])
            if out.finished:
                finals[i] = out
    except Exception as exc:
        yield _error_event(exc)
        yield DONE
        return
    if include_usage:
        prompt = sum(len(ids) for _, ids in view.prompts)
        completion = sum(view.completion_tokens(f) for f in finals.values())
        cached = sum(f.num_cached_tokens for f in finals.values())
        yield chunk([], _usage(prompt, completion, cached))
    yield DONE
