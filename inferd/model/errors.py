"""The one error a user sees when a model cannot be loaded: it names the file and the problem."""

from __future__ import annotations


class ModelLoadError(Exception):
    def __init__(self, path: str, problem: str):
        super().__init__(f"cannot load model from {path}: {problem}")
        self.path = path
        self.problem = problem
