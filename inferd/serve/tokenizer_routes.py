"""vLLM's tokenizer routes at the server root: /tokenize, /detokenize, /tokenizer_info.

Clients (benchmarks, evaluation harnesses, routers) use them to count tokens exactly as the
served model does, chat template included, without generating anything.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from inferd.engine.async_engine import AsyncEngine
from inferd.serve.errors import bad_request
from inferd.serve.protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from inferd.serve.registry import ServedModels
from inferd.serve.translate import chat_prompt_ids, check_body, encode_text

router = APIRouter()


def _models(request: Request) -> ServedModels:
    return request.app.state.models


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request) -> TokenizeResponse:
    check_body(body)
    engine = _models(request).get(body.model).engine
    if (body.prompt is None) == (body.messages is None):
        raise bad_request("send exactly one of 'prompt' or 'messages'", param="prompt")
    # Off the event loop: a long text takes the tokenizer seconds.
    return await asyncio.to_thread(_tokenize, body, engine, request.app.state.parse_special_in_messages)


def _tokenize(body: TokenizeRequest, engine: AsyncEngine, parse_special_in_content: bool) -> TokenizeResponse:
    tok = engine.tokenizer
    if body.messages is not None:
        ids = chat_prompt_ids(engine, body.messages, body.add_generation_prompt is not False,
                              parse_special_in_content=parse_special_in_content)
        if body.add_special_tokens and tok.bos_token_id is not None and ids[:1] != [tok.bos_token_id]:
            ids = [tok.bos_token_id] + ids
    else:
        ids = encode_text(engine, body.prompt, "prompt", add_special_tokens=body.add_special_tokens is not False)
    strs = tok.convert_ids_to_tokens(ids) if body.return_token_strs else None
    return TokenizeResponse(tokens=ids, count=len(ids), max_model_len=engine.max_model_len, token_strs=strs)


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request) -> DetokenizeResponse:
    check_body(body)
    engine = _models(request).get(body.model).engine
    vocab = engine.tokenizer.vocab_size
    bad = [t for t in body.tokens if not 0 <= t < vocab]
    if bad:
        raise bad_request(f"token ids outside [0, {vocab}): {bad[:5]}", param="tokens")
    text = await asyncio.to_thread(engine.tokenizer.decode, body.tokens, skip_special_tokens=False)
    return DetokenizeResponse(prompt=text)


@router.get("/tokenizer_info")
async def tokenizer_info(request: Request, model: str | None = None) -> dict:
    # Open even with --api-key: an unknown name must not list the served ones to anyone.
    m = _models(request).get(model, name_the_served=not request.app.state.api_key_required)
    tok = m.engine.tokenizer
    return {
        "model": m.name,
        "tokenizer_class": type(tok.hf).__name__,
        "vocab_size": tok.vocab_size,
        "max_model_len": m.engine.max_model_len,
        "bos_token": tok.bos_token,
        "bos_token_id": tok.bos_token_id,
        "eos_token": tok.eos_token,
        "eos_token_id": tok.hf.eos_token_id,
        "eos_token_ids": sorted(tok.eos_token_ids),
        "chat_template": tok.chat_template,
    }
