"""Structured-output tests reuse the speculative-decoding fixtures (a noisy draft of tiny_llama)."""

from tests.spec.conftest import noisy_draft, one_thread  # noqa: F401 (fixtures)
