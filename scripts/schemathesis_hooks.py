"""A schemathesis check: a schema-valid body refused with 400 must carry one of the error codes
its route's OpenAPI document lists under `x-semantic-error-codes`.

Loaded by schemathesis.toml (with `--checks all` it runs with the built-in checks). That file
lets positive_data_acceptance pass a 400 on the two generation routes, because some refusals
depend on what no JSON schema can compute (token counts, prompts x n, best_of vs n); this
check takes back everything else, so a 400 for a body the document calls valid still fails
unless the document itself names its code (see inferd/serve/openapi.py, SEMANTIC_400).
"""

from __future__ import annotations

from typing import Any

import schemathesis

EXTENSION = "x-semantic-error-codes"  # as inferd.serve.openapi.SEMANTIC_CODES_KEY


@schemathesis.check
def semantic_400_only(ctx: Any, response: Any, case: Any) -> bool | None:
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code != 400:
        return None
    declared = case.operation.definition.raw.get("responses", {}).get("400", {}).get(EXTENSION)
    if declared is None:  # the built-in positive_data_acceptance judges this route alone
        return None
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    if error.get("code") not in declared:
        raise AssertionError(
            f"Schema-valid request rejected with 400 and error.code {error.get('code')!r}, which the "
            f"document does not list in {EXTENSION} {declared}: {error.get('message')!r}")
    return None
