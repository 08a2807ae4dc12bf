"""logit_bias keys: one spelling of a token id, and the OpenAPI pattern that says exactly the same."""

from __future__ import annotations

import re

import pytest

from inferd.serve.token_ids import id_key_pattern, parse_token_key

ODD_SPELLINGS = ["05", "00", "+5", "-1", " 5", "5 ", "5\n", "1_0", "\u0663", "0x10", "", "5.0"]


@pytest.mark.parametrize("vocab", [1, 2, 9, 10, 11, 57, 100, 101, 1000, 32000, 49152, 151936])
def test_the_pattern_matches_exactly_the_keys_the_server_reads(vocab):
    text = id_key_pattern(vocab)
    assert text.startswith("^") and text.endswith("$")
    pattern = re.compile(text)
    # JSON Schema's (ECMA-262) $ is the end of the string; Python's also matches before a final newline.
    as_json_schema_means = re.compile(text[:-1] + r"\Z")
    keys = [str(i) for i in range(min(vocab * 2 + 20, 3000))]
    keys += [str(vocab - 1), str(vocab), str(vocab + 1), str(vocab * 10), *ODD_SPELLINGS]
    for key in keys:
        accepted = parse_token_key(key, vocab) is not None
        assert bool(pattern.fullmatch(key)) == accepted, (vocab, key)
        assert bool(as_json_schema_means.search(key)) == accepted, (vocab, key)  # validators search
        if accepted:
            assert parse_token_key(key, vocab) == int(key) < vocab


def test_odd_spellings_and_huge_numbers_are_no_token_ids():
    for key in ODD_SPELLINGS + ["9" * 5000]:
        assert parse_token_key(key, 49152) is None
    assert re.fullmatch(id_key_pattern(None), "123456789") and not re.fullmatch(id_key_pattern(None), "05")
