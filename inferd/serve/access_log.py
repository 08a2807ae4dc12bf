"""Access-log hygiene: secrets sent in a URL's query string (`?api_key=...`) are not written out.

The server reads keys only from the Authorization header, but clients and proxies put them in the
query string too, and uvicorn's access log writes the whole target. This filter rewrites the
logged target with such values replaced, so the log never holds a usable key.
"""

from __future__ import annotations

import logging
import re

# Query parameters whose values are credentials (matched case-insensitively, whole name).
_SECRET = re.compile(r"(?i)(^|[?&])((?:api[_-]?)?key|token|access[_-]?token|auth|authorization|"
                     r"password|secret|sig|signature)=[^&#]*")


def redact_target(target: str) -> str:
    """'/v1/models?api_key=sk-1&x=2' -> '/v1/models?api_key=REDACTED&x=2'."""
    if "?" not in target:
        return target
    path, _, query = target.partition("?")
    return f"{path}?{_SECRET.sub(lambda m: f'{m.group(1)}{m.group(2)}=REDACTED', query)}"


class RedactSecretsFilter(logging.Filter):
    """For uvicorn's access logger, whose args are (client, method, target, http version, status)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], redact_target(args[2]), *args[3:])
        return True
