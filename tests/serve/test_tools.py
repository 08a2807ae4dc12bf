"""The tool-call format without a model: parsing (whole and streamed a character at a time give
the same calls), content around calls, blocks that are no calls, the default rendering of tools,
past calls and results, and the grammar required/named calls are held to."""

from __future__ import annotations

import json

import llguidance
import pytest

from inferd.serve.errors import APIError
from inferd.serve.tools import (
    ToolCallParser,
    ToolPlan,
    assemble,
    parse_output,
    plan_tools,
    render_default,
)

FN = {"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}
TEXT = ('Let me check.\n<tool_call>\n{"name": "f", "arguments": {"a": 1, "s": "}\\"{", "l": [1, {"b": []}]}}'
        '\n</tool_call>\n<tool_call>\n{"name": "g", "arguments": {}}\n</tool_call>')


def _streamed(text: str, step: int) -> tuple[str | None, list[dict]]:
    parser, pieces, deltas = ToolCallParser(), [], []
    for i in range(0, len(text), step):
        c, d = parser.feed(text[i:i + step], final=i + step >= len(text))
        pieces.append(c)
        deltas += d
    return assemble(pieces, deltas)


@pytest.mark.parametrize("step", [1, 2, 7, 1000])
def test_streamed_parse_equals_whole(step):
    content, calls = _streamed(TEXT, step)
    whole = parse_output(TEXT)
    assert content == whole[0] == "Let me check."
    strip = [(c["function"]["name"], c["function"]["arguments"]) for c in calls]
    assert strip == [(c["function"]["name"], c["function"]["arguments"]) for c in whole[1]]
    assert strip == [("f", '{"a": 1, "s": "}\\"{", "l": [1, {"b": []}]}'), ("g", "{}")]
    assert all(c["id"].startswith("call_") and c["type"] == "function" for c in calls)


def test_text_that_is_no_call_stays_content():
    assert parse_output("plain answer, no <tool") == ("plain answer, no <tool", [])
    assert parse_output("a <tool_call> not json </tool_call>") == ("a <tool_call> not json </tool_call>", [])
    assert _streamed("x <tool_call>{bad}</tool_call> y", 1)[0] == "x <tool_call>{bad}</tool_call> y"
    # arguments first, or as a string: parsed whole at the block's end
    content, calls = parse_output('<tool_call>{"arguments": {"a": 2}, "name": "f"}</tool_call>')
    assert content is None and calls[0]["function"] == {"name": "f", "arguments": '{"a": 2}'}
    _, calls = _streamed('<tool_call>{"name": "f", "arguments": "{\\"a\\": 3}"}</tool_call>', 3)
    assert calls[0]["function"] == {"name": "f", "arguments": '{"a": 3}'}


def test_plan_validation():
    tools = [{"type": "function", "function": FN}]
    assert plan_tools(tools, "none", None) is None
    assert plan_tools(tools, None, None).choice == "auto"
    named = plan_tools(tools, {"type": "function", "function": {"name": "f"}}, False)
    assert named.choice == "named" and named.name == "f" and not named.parallel
    for bad in ({"type": "function", "function": {"name": "zz"}}, "sometimes", {"type": "allowed_tools"}):
        with pytest.raises(APIError):
            plan_tools(tools, bad, None)
    with pytest.raises(APIError):
        plan_tools(None, "required", None)


@pytest.mark.parametrize("parallel,count", [(True, 2), (False, 1)])
def test_required_grammar_accepts_calls_and_nothing_else(parallel, count):
    plan = ToolPlan([FN, {"name": "g"}], "required", parallel=parallel)
    grammar = plan.guide().grammar_text()
    assert llguidance.LLMatcher.validate_grammar(grammar) == ""
    one = '<tool_call>\n{"name": "f", "arguments": {"a": 5}}\n</tool_call>'
    two = one + '\n<tool_call>\n{"name": "g", "arguments": {}}\n</tool_call>'
    assert _matches(grammar, one)
    assert _matches(grammar, two) == (count == 2)
    assert not _matches(grammar, '<tool_call>\n{"name": "f", "arguments": {"a": "x"}}\n</tool_call>')
    assert not _matches(grammar, "hello")


def _matches(grammar: str, text: str) -> bool:
    """Whether the grammar accepts text, byte by byte (llguidance's byte tokenizer needs no model)."""
    tok = llguidance.LLTokenizer("byte")
    m = llguidance.LLMatcher(tok, grammar, log_level=0)
    ids = tok.tokenize_str(text)
    return m.try_consume_tokens(ids) == len(ids) and m.is_accepting()


def test_default_rendering_of_tools_calls_and_results():
    plan = ToolPlan([FN], "auto")
    msgs = [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]},
            {"role": "tool", "content": "one", "tool_call_id": "1"},
            {"role": "tool", "content": "two", "tool_call_id": "2"}]
    out = render_default(msgs, plan)
    assert out[0]["role"] == "system" and out[0]["content"].startswith("Be nice.\n\n")
    assert json.dumps({"type": "function", "function": FN}) in out[0]["content"]
    assert out[2] == {"role": "assistant",
                      "content": '<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>'}
    assert out[3] == {"role": "user", "content": "<tool_response>\none\n</tool_response>\n"
                                                "<tool_response>\ntwo\n</tool_response>"}
    assert len(out) == 4
    assert render_default(msgs[1:2], None) == [{"role": "user", "content": "hi"}]
