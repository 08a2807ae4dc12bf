"""The vector store: passage vectors in a FAISS index on disk, searched by cosine similarity.

FAISS, because it is a real embedded store that installs cleanly here (one wheel needing only
numpy and packaging); sqlite-vec needs SQLite extension loading, which this CPython's sqlite3
module is built without, and LanceDB pulls pyarrow and its own engine. The vectors arrive
L2-normalized (all-MiniLM-L6-v2 normalizes), so inner product is cosine and an exact flat
index is right for a few hundred passages.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


class PassageIndex:
    """A FAISS inner-product index plus the passage id of each row."""

    def __init__(self, index, ids: list[str]):
        self.index = index
        self.ids = ids

    @classmethod
    def build(cls, ids: list[str], vectors: np.ndarray) -> PassageIndex:
        import faiss

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(vectors)
        return cls(index, list(ids))

    def save(self, directory: Path) -> None:
        import faiss

        directory.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(directory / "passages.faiss"))
        (directory / "ids.json").write_text(json.dumps(self.ids))

    @classmethod
    def load(cls, directory: Path) -> PassageIndex | None:
        """The index saved in directory, or None when there is none."""
        import faiss

        if not (directory / "passages.faiss").is_file() or not (directory / "ids.json").is_file():
            return None
        return cls(faiss.read_index(str(directory / "passages.faiss")),
                   json.loads((directory / "ids.json").read_text()))

    def search(self, queries: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """Per query row, the k nearest passages as (id, cosine), best first."""
        scores, rows = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return [[(self.ids[r], float(s)) for r, s in zip(row, score, strict=True) if r >= 0]
                for row, score in zip(rows, scores, strict=True)]
