"""Bearer-key check for the routes that do work (/v1/..., /tokenize, /detokenize): 401 in OpenAI's
shape when wrong or missing. Monitoring (/health, /metrics, /version) stays open.

An ASGI middleware rather than a route dependency, so the key is checked before the body is read
(a bad key never learns whether its JSON was valid). The key is compared in constant time and
never logged; it reaches this module only as an argument.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from inferd.serve.errors import APIError

PROTECTED_PREFIX = "/v1"
# Tokenizing is model work that costs CPU in proportion to the body: not for anonymous callers.
PROTECTED_PATHS = frozenset({"/tokenize", "/detokenize"})


def bearer_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


class APIKeyMiddleware:
    def __init__(self, app: ASGIApp, api_key: str):
        self.app = app
        self._key = api_key.encode()

    def _authorized(self, scope: Scope) -> bool:
        token = bearer_token(scope.get("headers", []))
        # compare_digest on bytes of any length runs in time independent of where they differ.
        return token is not None and hmac.compare_digest(token.encode(), self._key)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (scope["type"] == "http" and scope.get("method") != "OPTIONS"
                and (path == PROTECTED_PREFIX or path.startswith(PROTECTED_PREFIX + "/")
                     or path in PROTECTED_PATHS)
                and not self._authorized(scope)):
            error = APIError(401, "invalid or missing API key: send 'Authorization: Bearer <key>'",
                             code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
            await error.response()(scope, receive, send)
            return
        await self.app(scope, receive, send)
