"""Incremental detokenization streams valid UTF-8 and ends equal to the full decode."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from inferd.engine.detokenizer import IncrementalDetokenizer
from inferd.tokenizer import Tokenizer

TEXTS = [
    "Plain ASCII text, with punctuation!",
    "日本語のテキスト、絵文字🙂🚀と混在 — em dash, ünïcödé",
    "Emoji family 👨‍👩‍👧‍👦 and flags 🇫🇷🇯🇵",
    "  leading spaces\n\nnew lines\ttabs",
]


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    return Tokenizer(AutoTokenizer.from_pretrained(str(tokenizer_dir)))


@pytest.mark.parametrize("text", TEXTS)
def test_deltas_are_valid_and_sum_to_full_decode(tok, text):
    ids = tok.encode(text, add_special_tokens=False)
    prompt = tok.encode("Say:", add_special_tokens=False)
    detok = IncrementalDetokenizer(tok, prompt, stop=[])
    pieces = []
    for t in ids:
        detok.add(t)
        delta = detok.take_delta(finished=False)
        assert "\ufffd" not in delta
        pieces.append(delta)
    detok.flush()
    pieces.append(detok.take_delta(finished=True))
    assert "".join(pieces) == tok.decode(ids) == text


def test_multibyte_character_split_across_tokens_waits(tok):
    ids = tok.encode("🚀", add_special_tokens=False)
    assert len(ids) > 1  # byte-level BPE splits this emoji; the test relies on it
    detok = IncrementalDetokenizer(tok, [], stop=[])
    for t in ids[:-1]:
        detok.add(t)
        assert detok.take_delta(finished=False) == ""
    detok.add(ids[-1])
    assert detok.take_delta(finished=False) == "🚀"


def test_stop_string_is_held_back_then_cut(tok):
    text = "alpha beta STOP gamma"
    detok = IncrementalDetokenizer(tok, [], stop=["STOP"])
    streamed = ""
    hit = None
    for t in tok.encode(text, add_special_tokens=False):
        hit = detok.add(t)
        streamed += detok.take_delta(finished=hit is not None)
        if hit:
            break
    assert hit == "STOP"
    assert streamed == "alpha beta "
    assert "S" not in streamed.strip().split()[-1]
