"""Token ids written as JSON object keys (logit_bias): one spelling, and a regex for a range.

OpenAI's logit_bias maps token ids, written as decimal strings, to biases. Python's int() also
reads " 5", "+5", "05", "1_0" and non-ASCII digits; accepting those would let a request mean
something its OpenAPI document says is invalid. Keys are plain ASCII decimals without leading
zeros, and the document's `propertyNames` pattern states the same rule, including the upper
bound of the vocabulary when it is known.
"""

from __future__ import annotations

import re

DECIMAL = re.compile(r"0|[1-9][0-9]*")


def parse_token_key(key: str, vocab: int) -> int | None:
    """The token id a logit_bias key names, or None when it is no id in [0, vocab)."""
    if len(key) > len(str(vocab)) or not DECIMAL.fullmatch(key):
        return None
    tok = int(key)
    return tok if tok < vocab else None


def id_key_pattern(vocab: int | None) -> str:
    """A regex matching exactly the keys parse_token_key accepts: decimals in [0, vocab), or any
    decimal when vocab is None (models of different vocabularies share the document)."""
    if vocab is None:
        return f"^(?:{DECIMAL.pattern})$"
    if vocab < 1:
        return "^(?!)$"  # no token ids at all
    return f"^(?:{'|'.join(_at_most(vocab - 1))})$"


def _at_most(hi: int) -> list[str]:
    """Alternatives matching the decimals 0..hi (no leading zeros)."""
    s = str(hi)
    n = len(s)
    parts = ["0"]
    if n >= 2:  # every number of 1..n-1 digits
        parts.append(f"[1-9][0-9]{{0,{n - 2}}}" if n > 2 else "[1-9]")
    for i, digit in enumerate(s):  # n digits: equal to hi up to i, then a smaller digit
        lo = 1 if i == 0 else 0
        top = int(digit) - 1
        if top >= lo:
            rest = n - i - 1
            parts.append(s[:i] + _digit_class(lo, top) + (f"[0-9]{{{rest}}}" if rest else ""))
    if hi > 0:
        parts.append(s)
    return parts


def _digit_class(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"[{lo}-{hi}]"
