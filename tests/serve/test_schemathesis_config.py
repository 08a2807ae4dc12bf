"""schemathesis.toml and scripts/schemathesis_hooks.py let exactly the documented semantic 400s
through schemathesis' positive_data_acceptance check, and stay in step with the document.

schemathesis itself is not a test dependency: its decorator is stubbed to load the hook."""

from __future__ import annotations

import importlib.util
import re
import sys
import tomllib
import types
from types import SimpleNamespace

import pytest

from inferd.serve.embeddings import SEMANTIC_400 as EMBEDDING_SEMANTIC_400
from inferd.serve.embeddings_openapi import KIND_ROUTES
from inferd.serve.openapi import SEMANTIC_400, SEMANTIC_400_BY_ROUTE, SEMANTIC_CODES_KEY
from inferd.serve.registry import WRONG_MODEL_KIND

from .helpers import REPO


@pytest.fixture(scope="module")
def hooks(tmp_path_factory) -> types.ModuleType:
    stub = types.ModuleType("schemathesis")
    stub.check = lambda func: func
    saved = sys.modules.get("schemathesis")
    sys.modules["schemathesis"] = stub
    try:
        spec = importlib.util.spec_from_file_location("schemathesis_hooks", REPO / "scripts/schemathesis_hooks.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        if saved is None:
            sys.modules.pop("schemathesis")
        else:
            sys.modules["schemathesis"] = saved
    return module


def _case(mode: str, codes: list[str] | None) -> SimpleNamespace:
    responses = {"400": {SEMANTIC_CODES_KEY: codes} if codes is not None else {}}
    return SimpleNamespace(
        meta=SimpleNamespace(generation=SimpleNamespace(mode=SimpleNamespace(is_positive=mode == "positive"))),
        operation=SimpleNamespace(definition=SimpleNamespace(raw={"responses": responses})))


def _response(status: int, code: str | None) -> SimpleNamespace:
    body = {"error": {"message": "m", "type": "invalid_request_error", "param": None, "code": code}}
    return SimpleNamespace(status_code=status, json=lambda: body)


def test_the_hook_passes_only_listed_codes_for_valid_bodies(hooks):
    check = hooks.semantic_400_only
    assert hooks.EXTENSION == SEMANTIC_CODES_KEY
    listed = ["context_length_exceeded"]
    assert check(None, _response(400, "context_length_exceeded"), _case("positive", listed)) is None
    for code in ("invalid_type", None, "empty_prompt"):
        with pytest.raises(AssertionError, match="does not list"):
            check(None, _response(400, code), _case("positive", listed))
    assert check(None, _response(400, "invalid_type"), _case("negative", listed)) is None  # refusing is right
    assert check(None, _response(200, None), _case("positive", listed)) is None
    # Routes without the list: the built-in check (which does not allow 400 there) decides alone.
    assert check(None, _response(400, "invalid_type"), _case("positive", None)) is None


def test_the_config_allows_400_only_on_the_routes_that_list_codes():
    config = tomllib.loads((REPO / "schemathesis.toml").read_text())
    assert (REPO / config["hooks"]).is_file()
    # Routes whose document lists schema-valid 400 codes: the generation routes, /v1/embeddings,
    # and (for wrong_model_kind, where both kinds are served) every other route taking a model.
    routes = {path for _, path in SEMANTIC_400_BY_ROUTE} | {path for path, _ in KIND_ROUTES}
    matched: set[str] = set()
    for operation in config["operations"]:
        statuses = operation["checks"]["positive_data_acceptance"]["expected-statuses"]
        assert "400" in statuses and "422" not in statuses and "4xx" not in statuses
        pattern = re.compile(operation["include-path-regex"])
        matched |= {p for p in routes | {"/v1/models", "/v1/models/{model}", "/health"} if pattern.search(p)}
    assert matched == routes
    text = (REPO / "schemathesis.toml").read_text()
    # each allowed code is explained there
    assert all(code in text for code in [*SEMANTIC_400, *EMBEDDING_SEMANTIC_400, WRONG_MODEL_KIND])
