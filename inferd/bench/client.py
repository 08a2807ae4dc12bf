"""One streaming request to an OpenAI-compatible endpoint, timed event by event.

`build_body` turns a `RequestSpec` into the JSON for `/v1/chat/completions` or `/v1/completions`;
`stream_request` sends it with `httpx.AsyncClient`, reads the SSE stream and returns a
`RequestRecord`. It never raises for server or network trouble: failures become records with a
short `error_kind` (for grouping) and a full `error` message. Every request is time-bounded.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx

from inferd.bench.config import BenchConfig
from inferd.bench.records import RequestRecord, RequestSpec


def build_body(spec: RequestSpec, cfg: BenchConfig) -> dict[str, Any]:
    """Request JSON. `ignore_eos` is an extension inferd, vLLM and llama.cpp understand; servers
    that do not know it ignore it, and it is what makes output length controllable."""
    body: dict[str, Any] = {
        "model": cfg.model,
        "max_tokens": spec.max_tokens,
        "temperature": cfg.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if cfg.endpoint == "chat":
        body["messages"] = spec.as_messages()
    else:
        body["prompt"] = spec.as_prompt()
    if cfg.ignore_eos:
        body["ignore_eos"] = True
    body.update(cfg.extra_body)
    return body


def request_headers(api_key: str | None) -> dict[str, str]:
    headers = {"Accept": "text/event-stream"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def _error_message(raw: bytes) -> str:
    """The human part of an error body: OpenAI `{"error": {"message"}}`, FastAPI `{"detail"}`."""
    text = raw.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:300]
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and "message" in err:
            return str(err["message"])[:300]
        if isinstance(err, str):
            return err[:300]
        if "detail" in data:
            return str(data["detail"])[:300]
    return text[:300]


def _content(choice: dict[str, Any]) -> str:
    """Text carried by one streamed choice; reasoning text counts as output too (it is decoded)."""
    if isinstance(choice.get("text"), str):
        return choice["text"]
    delta = choice.get("delta") or {}
    for key in ("content", "reasoning_content", "reasoning"):
        value = delta.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def _fail(rec: RequestRecord, kind: str, message: str) -> None:
    if rec.error_kind is None:  # keep the first cause; later ones are consequences
        rec.error_kind, rec.error = kind, message


async def stream_request(
    client: httpx.AsyncClient,
    url: str,
    headers: dict[str, str],
    body: dict[str, Any],
    *,
    index: int,
    t0: float,
    timeout: float,
    scheduled_time: float | None = None,
) -> RequestRecord:
    """Send one streaming request; all times are `perf_counter() - t0`."""
    rec = RequestRecord(
        index=index,
        send_time=time.perf_counter() - t0,
        scheduled_time=scheduled_time,
        max_tokens=body.get("max_tokens"),
    )
    pieces: list[str] = []
    saw_done = False
    try:
        async with asyncio.timeout(timeout):
            async with client.stream("POST", url, json=body, headers=headers) as resp:
                rec.http_status = resp.status_code
                if resp.status_code != 200:
                    raw = await resp.aread()
                    _fail(
                        rec,
                        f"HTTP {resp.status_code}",
                        f"HTTP {resp.status_code}: {_error_message(raw)}",
                    )
                    return rec
                if resp.headers.get("content-type", "").startswith("application/json"):
                    _fail(
                        rec,
                        "not an event stream",
                        "server answered with JSON, not SSE (streaming unsupported?)",
                    )
                    return rec
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue  # blank separators, `:` keep-alive comments, `event:` lines
                    data = line[5:].strip()
                    if data == "[DONE]":
                        saw_done = True
                        break
                    try:
                        chunk = json.loads(data)
                    except ValueError:
                        _fail(rec, "bad event", f"undecodable SSE data: {data[:200]!r}")
                        break
                    if chunk.get("error") and not chunk.get("choices"):
                        err = chunk["error"]
                        msg = err.get("message", err) if isinstance(err, dict) else err
                        _fail(rec, "server error event", f"error event in stream: {str(msg)[:300]}")
                        break
                    if chunk.get("usage"):
                        rec.usage = chunk["usage"]
                    for choice in chunk.get("choices") or ():
                        piece = _content(choice)
                        if piece:
                            t = time.perf_counter() - t0
                            if rec.first_token_time is None:
                                rec.first_token_time = t
                            rec.token_times.append(t)
                            pieces.append(piece)
                        if choice.get("finish_reason"):
                            rec.finish_reason = choice["finish_reason"]
    except TimeoutError:
        _fail(rec, "timeout", f"no complete response within {timeout:g}s")
    except httpx.TimeoutException as e:
        _fail(rec, "timeout", f"{type(e).__name__}: {e}")
    except httpx.ConnectError as e:
        _fail(rec, "connect error", f"cannot connect to {url}: {e}")
    except (httpx.RemoteProtocolError, httpx.ReadError) as e:
        _fail(rec, "stream interrupted", f"connection closed mid-stream: {type(e).__name__}: {e}")
    except httpx.HTTPError as e:
        _fail(rec, f"client error: {type(e).__name__}", f"{type(e).__name__}: {e}")
    finally:
        rec.end_time = time.perf_counter() - t0
        rec.output_text = "".join(pieces)
    if rec.error_kind is None:
        if saw_done or rec.finish_reason:
            rec.success = True
        else:
            _fail(rec, "stream ended early", "stream closed before [DONE] or a finish_reason")
    return rec
