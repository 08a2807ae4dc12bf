"""Every failure the server reports, in OpenAI's shape: {"error": {message, type, param, code}}.

`APIError` is what routes raise; `install_error_handlers` maps the engine's own exceptions
(invalid parameter, prompt too long, queue full, engine stopped), FastAPI's validation errors and
Starlette's HTTP errors to the right status, so user input never turns into a 500.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from inferd.engine.async_engine import EngineDead, QueueFull, ShuttingDown
from inferd.engine.engine import PromptTooLong
from inferd.sampling_params import InvalidParameter

log = logging.getLogger(__name__)

_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
          405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
          503: "service_unavailable"}

_HTTP_CODES = {408: "request_timeout", 413: "request_too_large"}


class APIError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, type: str | None = None,
                 headers: dict[str, str] | None = None):
        # Messages quote user input, which may hold text no encoder accepts (lone surrogates).
        message = message.encode("utf-8", "backslashreplace").decode("utf-8")
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def from_exception(exc: BaseException) -> APIError:
    """The APIError for an exception a request can meet (also used inside streams)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, PromptTooLong):
        return APIError(400, str(exc), param=exc.param, code="context_length_exceeded")
    if isinstance(exc, InvalidParameter):
        return APIError(400, str(exc), param=exc.param)
    if isinstance(exc, UnicodeEncodeError):  # user text that is not valid Unicode, met late
        return APIError(400, f"the request holds text that is not valid Unicode: {exc}",
                        code="invalid_unicode")
    if isinstance(exc, QueueFull):
        return APIError(429, f"server busy: {exc}", code="rate_limit_exceeded",
                        headers={"Retry-After": "1"})
    if isinstance(exc, ShuttingDown):
        return APIError(503, f"{exc}; retry on another replica", code="shutting_down",
                        headers={"Retry-After": "1"})
    if isinstance(exc, EngineDead):
        return APIError(503, f"engine unavailable: {exc}", code="engine_dead")
    log.error("internal error serving a request", exc_info=exc)
    return APIError(500, "internal server error", code="internal_error")


def _param_of(loc: tuple) -> str | None:
    """('body', 'messages', 0, 'content') -> 'messages'; pydantic's union tags are dropped."""
    fields = [p for p in loc[1:] if isinstance(p, str)] if loc and loc[0] == "body" else list(loc)
    return str(fields[0]) if fields else None


def validation_error(exc: RequestValidationError, content_type: str = "application/json") -> APIError:
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = tuple(first.get("loc", ()))
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", first.get("msg", ""))
        return bad_request(f"request body is not valid JSON: {detail}", code="invalid_json")
    param = _param_of(loc)
    if param is None:
        hint = "" if "json" in content_type else " (send it with 'Content-Type: application/json')"
        return bad_request(f"request body is missing or not a JSON object{hint}", code="invalid_body")
    where = ".".join(str(p) for p in loc[1:]) if loc and loc[0] == "body" else ".".join(map(str, loc))
    message = f"invalid value for '{param}' ({where}): {first.get('msg', 'invalid')}"
    if "input" in first and not isinstance(first["input"], dict | list):
        message += f" (got {first['input']!r:.80})"
    return bad_request(message, param=param, code="invalid_type")


def install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc, request.headers.get("content-type", "")).response()

    async def on_engine_error(request: Request, exc: Exception) -> JSONResponse:
        return from_exception(exc).response()

    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return APIError(exc.status_code, message, code=_HTTP_CODES.get(exc.status_code),
                        headers=getattr(exc, "headers", None)).response()

    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    for cls in (InvalidParameter, QueueFull, ShuttingDown, EngineDead, Exception):
        app.add_exception_handler(cls, on_engine_error)
