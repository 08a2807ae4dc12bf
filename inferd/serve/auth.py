"""Bearer-key check for the routes that do work (/v1/..., /tokenize, /detokenize): 401 in OpenAI's
shape when wrong or missing. Monitoring (/health, /metrics, /version) stays open.

Several keys may be configured, each belonging to a tenant; the tenant of the key a request
showed is put in `request.state.tenant` (its prefix-cache blocks are shared only within it).

An ASGI middleware rather than a route dependency, so the key is checked before the body is read
(a bad key never learns whether its JSON was valid). The key is compared in constant time and
never logged; it reaches this module only as an argument.
"""

from __future__ import annotations

import hashlib
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


def tenant_of(key: str) -> str:
    """A key's default tenant: an id derived from it, never the key itself."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:12]


class APIKeyMiddleware:
    def __init__(self, app: ASGIApp, api_keys: dict[str, str]):
        """api_keys: key -> tenant name (keys of one tenant share its prefix cache)."""
        self.app = app
        self._keys = [(key.encode(), tenant) for key, tenant in api_keys.items()]

    def _tenant(self, scope: Scope) -> str | None:
        token = bearer_token(scope.get("headers", []))
        if token is None:
            return None
        found = None
        for key, tenant in self._keys:  # every key compared: the time does not say which matched
            # compare_digest on bytes of any length runs in time independent of where they differ.
            if hmac.compare_digest(token.encode(), key):
                found = tenant
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (scope["type"] == "http" and scope.get("method") != "OPTIONS"
                and (path == PROTECTED_PREFIX or path.startswith(PROTECTED_PREFIX + "/")
                     or path in PROTECTED_PATHS)):
            tenant = self._tenant(scope)
            if tenant is None:
                error = APIError(401, "invalid or missing API key: send 'Authorization: Bearer <key>'",
                                 code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
                await error.response()(scope, receive, send)
                return
            scope.setdefault("state", {})["tenant"] = tenant
        await self.app(scope, receive, send)
