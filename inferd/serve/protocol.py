"""Pydantic models of the HTTP API: OpenAI's request and response shapes, field for field.

Requests keep unknown fields (clients send many) for `translate.check_extra_fields`, which refuses
those whose meaning the server does not implement and logs the rest; vLLM's sampling extras are
accepted. Nothing here knows about the engine: `translate.py` turns requests into SamplingParams
and `openai.py` fills the responses.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, field_serializer


def _json_number(value: Any) -> Any:
    """JSON true is no number and "1" no integer (as the OpenAPI document says), though pydantic's
    lax mode would coerce them; 3.0 stays an integer, as JSON Schema counts it."""
    if isinstance(value, bool | str | bytes):
        raise ValueError(f"expected a JSON number, got {type(value).__name__}")
    return value


Int = Annotated[int, BeforeValidator(_json_number)]
Float = Annotated[float, BeforeValidator(_json_number)]
Bool = Annotated[bool, Strict()]


class _Request(BaseModel):
    # NaN or infinity in a sampling parameter would poison a whole batch's sampling; refuse them.
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


# ---- requests ------------------------------------------------------------------------------
class StreamOptions(_Request):
    include_usage: Bool | None = False
    continuous_usage_stats: Bool | None = False  # vLLM: usage (so far) in every chunk


class SamplingRequest(_Request):
    """Fields chat and completions share (OpenAI's, then vLLM's extras)."""

    model: str | None = None  # optional: the first served model when absent
    n: Int | None = 1
    temperature: Float | None = None
    top_p: Float | None = None
    stop: str | list[str] | None = None
    seed: Int | None = None
    presence_penalty: Float | None = None
    frequency_penalty: Float | None = None
    logit_bias: dict[str, Float] | None = None
    user: str | None = None
    stream: Bool | None = False
    stream_options: StreamOptions | None = None
    # vLLM's extras
    top_k: Int | None = None
    min_p: Float | None = None
    repetition_penalty: Float | None = None
    ignore_eos: Bool | None = False
    min_tokens: Int | None = 0
    stop_token_ids: list[Int] | None = None
    skip_special_tokens: Bool | None = True
    include_stop_str_in_output: Bool | None = False
    return_token_ids: Bool | None = False  # prompt_token_ids and token_ids in the response
    cache_salt: str | None = None  # prefix-cache blocks shared only with requests of equal salt
    # vLLM's structured-output extras (at most one; `response_format` is chat's OpenAI form)
    guided_json: str | dict[str, Any] | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    guided_decoding_backend: str | None = None


class ContentPart(_Request):
    type: str
    text: str | None = None


class ChatMessage(_Request):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None  # an assistant turn's calls
    tool_call_id: str | None = None  # a tool turn: which call this is the result of


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage]
    max_tokens: Int | None = None
    max_completion_tokens: Int | None = None
    logprobs: Bool | None = False
    top_logprobs: Int | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: Bool | None = None
    add_generation_prompt: Bool | None = True  # vLLM extra


class CompletionRequest(SamplingRequest):
    prompt: str | list[str] | list[Int] | list[list[Int]]
    max_tokens: Int | None = 16
    echo: Bool | None = False
    logprobs: Int | None = None
    suffix: str | None = None
    best_of: Int | None = None
    prompt_logprobs: Int | None = None  # vLLM extra


class TokenizeRequest(_Request):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: Bool | None = None  # default: True for a prompt, False for messages
    add_generation_prompt: Bool | None = True
    return_token_strs: Bool | None = False


class DetokenizeRequest(_Request):
    model: str | None = None
    tokens: list[Int]


# ---- responses ----------------------------------------------------------------------------
def now() -> int:
    return int(time.time())


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None = None
    refusal: list[ChatTokenLogprob] | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[dict[str, Any]] = Field(default_factory=list)


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None  # vLLM extra: the stop string or token id that ended it
    token_ids: list[int] | None = None  # vLLM extra (return_token_ids)


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=now)
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None
    prompt_token_ids: list[int] | None = None  # vLLM extra (return_token_ids)


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None  # index, then id/type/name first, arguments after


class ChatChunkChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    token_ids: list[int] | None = None  # the delta's token ids (return_token_ids)

    @field_serializer("delta")
    def _delta_without_nulls(self, delta: DeltaMessage) -> dict[str, Any]:
        # OpenAI's deltas carry only what changed: {"role": ...} first, then {"content": ...}, then {}.
        return delta.model_dump(exclude_none=True)


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    system_fingerprint: str | None = None
    usage: Usage | None = None
    prompt_token_ids: list[int] | None = None  # in the first chunk (return_token_ids)


class CompletionLogprobs(BaseModel):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class PromptLogprob(BaseModel):
    logprob: float
    rank: int | None = None  # 1 = the likeliest; None when below the top alternatives asked for
    decoded_token: str


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    prompt_logprobs: list[dict[str, PromptLogprob] | None] | None = None  # vLLM extra, by token id
    prompt_token_ids: list[int] | None = None  # return_token_ids; in a choice's first chunk
    token_ids: list[int] | None = None  # return_token_ids; the delta's ids when streamed


class CompletionResponse(BaseModel):
    """Also the shape of each streamed chunk (with `usage` null until the optional last one)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=now)
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "inferd"
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = None
    # What the model does (vLLM's task names): "generate" serves chat/completions, "embed"
    # serves /v1/embeddings. Not in OpenAI's shape; its clients ignore it.
    task: Literal["generate", "embed"] = "generate"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizeResponse(BaseModel):
    tokens: list[int]
    count: int
    max_model_len: int
    token_strs: list[str] | None = None


class DetokenizeResponse(BaseModel):
    prompt: str
