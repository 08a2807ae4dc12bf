"""Save the tests' tiny random-weight Llama checkpoint (with the bundled model's tokenizer) to a
directory, for runs that need a real server on a model that answers in milliseconds (e.g.
scripts/schemathesis.sh). Usage: python scripts/tiny_checkpoint.py OUT_DIR
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import make_tiny_checkpoint  # noqa: E402 (after the path is set)


def main(out: Path) -> None:
    from transformers import AutoTokenizer

    from inferd.model.registry import resolve_model_path

    gguf = resolve_model_path("smollm2-135m")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tok_dir:
        AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(tok_dir)
        make_tiny_checkpoint(out, "llama", Path(tok_dir))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
