"""The answer prompt: retrieved passages, numbered, in a system message that stays byte-identical
for the same passages, then the question as the user message.

Passages are listed in id order, not score order, so two questions that retrieve the same
passages share the whole system prompt and the server's prefix cache serves it the second time
(inferd keys cached blocks by the exact token prefix, within one API key's tenant).
"""

from __future__ import annotations

INSTRUCTIONS = ("You answer questions using only the numbered passages below. Cite the passages "
                "you use by their numbers in square brackets, like [2]. If the passages do not "
                "hold the answer, say you do not know.")


def numbered(passages: list[dict]) -> list[dict]:
    """The passages in the order the prompt numbers them ([1] first)."""
    return sorted(passages, key=lambda p: p["id"])


def system_prompt(passages: list[dict]) -> str:
    lines = [INSTRUCTIONS, "", "Passages:"]
    lines += [f"[{i}] {p['title']}: {p['text']}" for i, p in enumerate(numbered(passages), 1)]
    return "\n".join(lines)


def messages(passages: list[dict], question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": system_prompt(passages)},
            {"role": "user", "content": question}]
