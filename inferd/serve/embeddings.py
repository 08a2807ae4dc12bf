"""POST /v1/embeddings in OpenAI's shape (plus vLLM's `truncate_prompt_tokens`).

The route only translates: it checks and tokenizes the input (in a thread), refuses what no
waiting would fix (too long, too many inputs or tokens: 400/413), queues the sequences on the
model's AsyncEmbedder (full queue: 429) and renders the vectors as floats or base64.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Annotated, Literal

import torch
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from inferd.embedder import EmbeddingInputError, InputTooLongError
from inferd.engine.async_embedder import AsyncEmbedder
from inferd.serve.errors import APIError, bad_request
from inferd.serve.protocol import Int, _Request
from inferd.serve.registry import EMBED
from inferd.serve.translate import CONTEXT_LENGTH_EXCEEDED, TOO_MANY_SEQUENCES, check_body

router = APIRouter(prefix="/v1")
MAX_INPUTS = 2048  # OpenAI's limit per request
MAX_REQUEST_TOKENS = 300_000  # OpenAI's limit, summed over a request's inputs
INVALID_DIMENSIONS = "invalid_dimensions"  # the model is no Matryoshka model, or not that size
INVALID_INPUT = "invalid_input"  # a token id outside the model's vocabulary
TOO_MANY_TOKENS = "too_many_tokens"
# The 400s a body valid under the OpenAPI document can still get, by code (openapi.py lists them).
SEMANTIC_400 = {
    CONTEXT_LENGTH_EXCEEDED: "an input has more tokens than the model's max_seq_length and the request "
                             "did not set truncate_prompt_tokens (as vLLM)",
    INVALID_DIMENSIONS: "dimensions given for a model not trained for shortened (Matryoshka) vectors, "
                        "or a size it does not offer (as vLLM)",
    INVALID_INPUT: "a token id outside the model's vocabulary",
    TOO_MANY_SEQUENCES: "more inputs than the embedding queue holds (--max-waiting-embedding-inputs)",
}

Text = Annotated[str, Field(min_length=1)]
TokenId = Annotated[Int, Field(ge=0)]
TokenIds = Annotated[list[TokenId], Field(min_length=1)]


class EmbeddingRequest(_Request):
    input: (Text | Annotated[list[Text], Field(min_length=1, max_length=MAX_INPUTS)] | TokenIds
            | Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_INPUTS)])
    model: Annotated[str, Field(min_length=1)] | None = None  # the first embedding model when absent
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[Int, Field(ge=1)] | None = None
    user: str | None = None
    # vLLM: cut each input to this many tokens (-1: to the model's limit); without it, an input
    # over the model's max_seq_length is a 400 rather than silently cut.
    truncate_prompt_tokens: Annotated[Int, Field(ge=-1)] | None = None


class EmbeddingObject(BaseModel):
    """Documents the response (rendered by hand: a float list built by pydantic is slow)."""

    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # str: base64 of little-endian float32


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingObject]
    model: str
    usage: EmbeddingUsage


def truncation(value: int | None, max_seq_length: int) -> tuple[bool, int | None]:
    """(truncate?, token limit) for truncate_prompt_tokens, as vLLM reads it."""
    if value is None:
        return False, None
    if value == -1:
        return True, None
    if value == 0 or value > max_seq_length:
        raise bad_request(f"truncate_prompt_tokens must be -1 or between 1 and the model's "
                          f"max_seq_length ({max_seq_length}), got {value}",
                          param="truncate_prompt_tokens", code="invalid_value")
    return True, value


def render(vectors: torch.Tensor, encoding: str, model: str, tokens: int) -> bytes:
    if encoding == "base64":
        rows = [base64.b64encode(v.numpy().astype("<f4").tobytes()).decode() for v in vectors]
    else:
        rows = vectors.tolist()
    data = [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)]
    return json.dumps({"object": "list", "data": data, "model": model,
                       "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}).encode()


@router.post("/embeddings", response_model=EmbeddingResponse)
async def create_embeddings(body: EmbeddingRequest, request: Request) -> Response:
    check_body(body)
    model = request.app.state.models.get(body.model, task=EMBED)
    queue: AsyncEmbedder = model.engine
    embedder = queue.embedder
    try:
        embedder.check_dimensions(body.dimensions)
    except ValueError as exc:
        raise bad_request(str(exc), param="dimensions", code=INVALID_DIMENSIONS) from None
    truncate, limit = truncation(body.truncate_prompt_tokens, embedder.max_seq_length)
    try:
        seqs = await asyncio.to_thread(embedder.tokenize, body.input, truncate, limit)
    except InputTooLongError as exc:
        raise bad_request(str(exc), param="input", code=CONTEXT_LENGTH_EXCEEDED) from None
    except EmbeddingInputError as exc:
        raise bad_request(str(exc), param="input", code=INVALID_INPUT) from None
    if len(seqs) > queue.max_waiting_inputs:
        raise bad_request(f"{len(seqs)} inputs are more than the embedding queue holds "
                          f"({queue.max_waiting_inputs}); send fewer per request",
                          param="input", code=TOO_MANY_SEQUENCES)
    tokens = sum(len(s) for s in seqs)
    if tokens > MAX_REQUEST_TOKENS:
        raise APIError(413, f"the inputs hold {tokens} tokens, more than {MAX_REQUEST_TOKENS} per "
                       "request; split them", param="input", code=TOO_MANY_TOKENS)
    vectors = embedder.shorten(await queue.embed(seqs), body.dimensions)
    payload = await asyncio.to_thread(render, vectors, body.encoding_format, model.name, tokens)
    return Response(payload, media_type="application/json")
