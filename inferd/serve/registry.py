"""The models one server serves: request `model` names (aliases included) -> AsyncEngine.

An engine served under several names appears once per name in /v1/models; its first name is the
`model` label its metrics carry. Hidden aliases (a bundled model's documented other names) are
served but not listed. An empty name is a 400, an unknown one a 404 in OpenAI's shape.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from inferd.engine.async_engine import AsyncEngine
from inferd.serve.errors import APIError


@dataclass(frozen=True)
class ServedModel:
    name: str  # the name the request used
    engine: AsyncEngine
    primary: str  # the engine's first served name (its metrics label)


class ServedModels:
    def __init__(self, engines: dict[str, AsyncEngine], hidden: dict[str, AsyncEngine] | None = None):
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

    @property
    def default(self) -> str:
        return next(iter(self._by_name))

    def engines(self) -> dict[str, AsyncEngine]:
        """Each distinct engine once, under its primary name."""
        return {name: self._by_name[name] for name in self._primary.values()}

    def items(self) -> list[tuple[str, AsyncEngine]]:
        return list(self._by_name.items())

    def get(self, name: str | None, *, name_the_served: bool = True) -> ServedModel:
        """The model a request named (the first one when it named none). An empty name is a 400,
        an unknown one a 404 that lists the served names unless name_the_served is False (a
        caller who has not shown the API key)."""
        if name == "":
            raise APIError(400, "'model' must not be empty; leave it out to use the default model",
                           param="model", code="invalid_value")
        key = self.default if name is None else name
        engine = self._by_name.get(key) or self._hidden.get(key)
        if engine is None:
            served = (f"; this server serves {', '.join(repr(n) for n in self._by_name)}"
                      if name_the_served else "")
            raise APIError(404, f"The model '{name}' does not exist{served}",
                           param="model", code="model_not_found")
        return ServedModel(key, engine, self._primary[id(engine)])

    def all_alive(self) -> bool:
        return all(e.is_alive() for e in self._by_name.values())
