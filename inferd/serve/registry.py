"""The models one server serves: request `model` names (aliases included) -> AsyncEngine (a
generation model) or AsyncEmbedder (an embedding model).

An engine served under several names appears once per name in /v1/models; its first name is the
`model` label its metrics carry. Hidden aliases (a bundled model's documented other names) are
served but not listed. An empty name is a 400, an unknown one a 404 in OpenAI's shape, and a
model of the wrong kind for the route (an embedding model asked to chat) a 400 naming its kind.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from inferd.engine.async_embedder import AsyncEmbedder
from inferd.engine.async_engine import AsyncEngine
from inferd.serve.errors import APIError

GENERATE, EMBED = "generate", "embed"  # vLLM's task names
WRONG_MODEL_KIND = "wrong_model_kind"
_ROUTES = {GENERATE: "/v1/chat/completions and /v1/completions", EMBED: "/v1/embeddings"}
ServedEngine = AsyncEngine | AsyncEmbedder


def task_of(engine: ServedEngine) -> str:
    return EMBED if isinstance(engine, AsyncEmbedder) else GENERATE


@dataclass(frozen=True)
class ServedModel:
    name: str  # the name the request used
    engine: ServedEngine
    primary: str  # the engine's first served name (its metrics label)

    @property
    def task(self) -> str:
        return task_of(self.engine)


class ServedModels:
    def __init__(self, engines: dict[str, ServedEngine], hidden: dict[str, ServedEngine] | None = None):
        if not engines:
            raise ValueError("a server needs at least one model")
        self._by_name = dict(engines)
        self._hidden = {k: v for k, v in (hidden or {}).items() if k not in self._by_name}
        self._primary: dict[int, str] = {}
        for name, engine in engines.items():
            self._primary.setdefault(id(engine), name)
        self.created = int(time.time())

    @property
    def names(self) -> list[str]:
        return list(self._by_name)

    def default(self, task: str = GENERATE) -> str | None:
        """The first served model of that task (a request that names no model gets it)."""
        return next((n for n, e in self._by_name.items() if task_of(e) == task), None)

    def engines(self) -> dict[str, AsyncEngine]:
        """Each distinct generation engine once, under its primary name."""
        return {name: self._by_name[name] for name in self._primary.values()
                if task_of(self._by_name[name]) == GENERATE}

    def embedders(self) -> dict[str, AsyncEmbedder]:
        """Each distinct embedding model once, under its primary name."""
        return {name: self._by_name[name] for name in self._primary.values()
                if task_of(self._by_name[name]) == EMBED}

    def items(self) -> list[tuple[str, ServedEngine]]:
        return list(self._by_name.items())

    def get(self, name: str | None, *, name_the_served: bool = True, task: str | None = GENERATE) -> ServedModel:
        """The model a request named (the first of `task` when it named none). An empty name is a
        400, an unknown one a 404 that lists the served names unless name_the_served is False (a
        caller who has not shown the API key), one of another task than `task` a 400 (task None:
        any kind, for /v1/models)."""
        if name == "":
            raise APIError(400, "'model' must not be empty; leave it out to use the default model",
                           param="model", code="invalid_value")
        key = self.default(task or GENERATE) if name is None else name
        if key is None:
            raise APIError(400, f"this server serves no {task} model; name one that serves "
                           f"{_ROUTES[task or GENERATE]}", param="model", code="model_not_found")
        engine = self._by_name.get(key) or self._hidden.get(key)
        if engine is None:
            served = (f"; this server serves {', '.join(repr(n) for n in self._by_name)}"
                      if name_the_served else "")
            raise APIError(404, f"The model '{name}' does not exist{served}",
                           param="model", code="model_not_found")
        kind = task_of(engine)
        if task is not None and kind != task:
            what = "an embedding model" if kind == EMBED else "a generation (chat/completions) model"
            raise APIError(400, f"'{key}' is {what} (task '{kind}'); it serves {_ROUTES[kind]}, "
                           "not this route", param="model", code=WRONG_MODEL_KIND)
        return ServedModel(key, engine, self._primary[id(engine)])

    def all_alive(self) -> bool:
        return all(e.is_alive() for e in self._by_name.values())
