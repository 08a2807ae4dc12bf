"""Tool calling: OpenAI `tools`/`tool_choice` -> prompt and grammar; model text -> `tool_calls`.

Format: Hermes-style, as vLLM's `hermes` parser reads it: each call is
`<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`. A chat template that renders
tools itself (it mentions `tools`) gets them and the history in Hugging Face's shape; otherwise
(SmolLM2's template has no tools section) the default below is used: the tool list goes into the
system prompt, earlier calls into assistant turns and results into user turns wrapped in
`<tool_response>`, as Qwen2.5's template does. `auto` parses what the model writes;
`required` and a named function constrain it by a grammar over the functions' schemas, so the
arguments always parse. Parsing streams: a call's id and name go out as soon as the name is
complete, then its arguments as they are written.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from inferd.serve.errors import bad_request
from inferd.structured.guide import JSON_LAYOUT, Guide

OPEN, CLOSE = "<tool_call>", "</tool_call>"
DEFAULT_SYSTEM = (
    "You are a function calling AI model. You are provided with function signatures within "
    "<tools></tools> XML tags. You may call one or more functions to assist with the user query. "
    "Don't make assumptions about what values to plug into functions. Here are the available "
    "tools: <tools>\n{tools}\n</tools>\nFor each function call return a json object with function "
    "name and arguments within <tool_call></tool_call> XML tags as follows:\n<tool_call>\n"
    '{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>')
FUNCTION_NAME = r"^[A-Za-z0-9_.-]{1,64}$"
# error.code of the 400s a schema-valid body can get here (openapi.py lists them).
UNKNOWN_TOOL = "unknown_tool"  # tool_choice names a function that is not among tools
DUPLICATE_TOOL_NAMES = "duplicate_tool_names"
_NAME = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*')


@dataclass(frozen=True)
class ToolPlan:
    """What a request's tools mean for this turn. choice: auto | required | named."""

    functions: list[dict[str, Any]]  # OpenAI function objects: name, description, parameters
    choice: str
    name: str | None = None
    parallel: bool = True

    @property
    def constrained(self) -> bool:
        return self.choice != "auto"

    def guide(self) -> Guide | None:
        """A Lark grammar of one call (or, when parallel, several) of the allowed functions."""
        if not self.constrained:
            return None
        fns = [f for f in self.functions if self.name is None or f["name"] == self.name]
        lenient = not all(f.get("strict") for f in fns)
        schema = {"x-guidance": dict(JSON_LAYOUT, lenient=lenient), "anyOf": [
            {"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
             "properties": {"name": {"const": f["name"]},
                            "arguments": f.get("parameters") or {"type": "object"}}} for f in fns]}
        call = f'call: "{OPEN}\\n" %json {json.dumps(schema)} "\\n{CLOSE}"'
        start = 'start: call ("\\n" call)*' if self.parallel and self.name is None else "start: call"
        return Guide("lark", f"{start}\n{call}\n")

    def system_prompt(self) -> str:
        return DEFAULT_SYSTEM.format(tools="\n".join(
            json.dumps({"type": "function", "function": f}) for f in self.functions))


def plan_tools(tools: list[dict[str, Any]] | None, tool_choice: str | dict | None,
               parallel_tool_calls: bool | None) -> ToolPlan | None:
    """Validate tools and tool_choice (400s name the field); None when no tool may be called."""
    if tool_choice is not None and not tools and tool_choice != "none":
        raise bad_request("'tool_choice' is only allowed when 'tools' are given", param="tool_choice")
    if not tools:
        return None
    functions = []
    for i, tool in enumerate(tools):
        fn = tool.get("function")
        if tool.get("type") != "function" or not isinstance(fn, dict):
            raise bad_request(f"tools[{i}]: only tools of type 'function' with a 'function' object are "
                              "supported", param="tools")
        if not isinstance(fn.get("name"), str) or not re.fullmatch(FUNCTION_NAME, fn["name"]):
            raise bad_request(f"tools[{i}].function.name must be 1-64 letters, digits, '_', '.' or '-'",
                              param="tools")
        if fn.get("parameters") is not None and not isinstance(fn["parameters"], dict):
            raise bad_request(f"tools[{i}].function.parameters must be a JSON schema object", param="tools")
        functions.append(fn)
    names = [f["name"] for f in functions]
    if len(set(names)) != len(names):
        raise bad_request("tools: function names must be unique", param="tools", code=DUPLICATE_TOOL_NAMES)
    parallel = parallel_tool_calls is not False
    choice = "auto" if tool_choice is None else tool_choice
    if choice == "none":
        return None
    if choice in ("auto", "required"):
        return ToolPlan(functions, choice, parallel=parallel)
    if isinstance(choice, dict) and choice.get("type") == "function" \
            and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        if name not in names:
            raise bad_request(f"tool_choice names function {name!r}, which is not among 'tools'",
                              param="tool_choice", code=UNKNOWN_TOOL)
        return ToolPlan(functions, "named", name, parallel)
    raise bad_request("tool_choice must be 'none', 'auto', 'required' or "
                      "{'type': 'function', 'function': {'name': ...}}", param="tool_choice")


# ---- the conversation -------------------------------------------------------------------------
def template_has_tools(template: str | None) -> bool:
    return bool(template) and "tools" in template


def render_default(messages: list[dict[str, Any]], plan: ToolPlan | None) -> list[dict[str, Any]]:
    """Messages for a template without tools: calls and results as text, the tools in the system
    prompt; consecutive tool results share one user turn."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if m["role"] == "assistant" and m.get("tool_calls"):
            text = "\n".join(f"{OPEN}\n{json.dumps(_call_json(c))}\n{CLOSE}" for c in m["tool_calls"])
            out.append({"role": "assistant", "content": (m["content"] + "\n" if m["content"] else "") + text})
        elif m["role"] == "tool":
            block = f"<tool_response>\n{m['content']}\n</tool_response>"
            if out and out[-1].get("_tool"):
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block, "_tool": True})
        else:
            out.append({k: v for k, v in m.items() if k != "tool_calls"})
    if plan is not None:
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": out[0]["content"] + "\n\n" + plan.system_prompt()}
        else:
            out.insert(0, {"role": "system", "content": plan.system_prompt()})
    return [{k: v for k, v in m.items() if k != "_tool"} for m in out]


def native_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages for a template that renders tools: Hugging Face's shape (arguments as objects)."""
    out = []
    for m in messages:
        if m.get("tool_calls"):
            m = {**m, "tool_calls": [{"type": "function", "id": c.get("id"), "function": _call_json(c)}
                                     for c in m["tool_calls"]]}
        out.append(m)
    return out


def _call_json(call: dict[str, Any]) -> dict[str, Any]:
    fn = call.get("function") or {}
    args = fn.get("arguments")
    try:
        args = json.loads(args) if isinstance(args, str) else args
    except ValueError:
        pass
    return {"name": fn.get("name"), "arguments": args}


# ---- the output -------------------------------------------------------------------------------
@dataclass
class _Call:
    id: str
    start: int  # where the block's JSON starts in the text
    name: str | None = None
    args_from: int | None = None  # where the arguments' JSON value starts
    args_end: int | None = None  # one past its end, once known
    args_sent: int = 0  # characters of the arguments already emitted
    closed: bool = False
    scan: list = field(default_factory=lambda: [0, 0, False, False])  # pos, depth, in_str, escaped


class ToolCallParser:
    """Turns a choice's text, fed as it grows, into content and OpenAI tool-call deltas.

    `feed` returns (content delta, tool-call deltas) in the streamed shape: the first delta of a
    call has index, id, type and function.name (arguments ""), the next ones arguments pieces.
    """

    def __init__(self):
        self.text = ""
        self.content_sent = 0
        self.calls: list[_Call] = []
        self.failed = False  # a block that is no call: the rest is reported as content

    def feed(self, delta: str, final: bool = False) -> tuple[str, list[dict[str, Any]]]:
        self.text += delta
        deltas: list[dict[str, Any]] = []
        content = self._content(final)
        while not self.failed:
            if not self.calls or self.calls[-1].closed:
                at = self.text.find(OPEN, self.calls[-1].start if self.calls else self.content_sent)
                if at < 0:
                    break
                self.calls.append(_Call(f"call_{uuid.uuid4().hex[:24]}", at + len(OPEN)))
            call = self.calls[-1]
            deltas += self._advance(len(self.calls) - 1, call, final)
            if not call.closed:
                break
        if self.failed:
            content += self._content(final)
        return content, deltas

    def _content(self, final: bool) -> str:
        """Text before the first call (all of it once a block failed), holding back a possible
        start of `<tool_call>`."""
        if self.calls and not self.failed:
            return ""
        end = len(self.text)
        if not self.failed:
            at = self.text.find(OPEN, self.content_sent)
            if at >= 0:
                end = at
            elif not final:
                end = _holdback(self.text, OPEN)
        piece = self.text[self.content_sent:end]
        self.content_sent = max(self.content_sent, end)
        return piece

    def _advance(self, index: int, call: _Call, final: bool) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        close = self.text.find(CLOSE, call.start)
        body_end = close if close >= 0 else len(self.text)
        if call.name is None:
            m = _NAME.match(self.text, call.start, body_end)
            if m:
                call.name = json.loads(f'"{m.group(1)}"')
                call.args_from = m.end()
                out.append({"index": index, "id": call.id, "type": "function",
                            "function": {"name": call.name, "arguments": ""}})
        if call.args_from is not None and call.args_sent == 0:
            while call.args_from < body_end and self.text[call.args_from].isspace():
                call.args_from += 1  # the value may not have started when the name matched
            call.scan[0] = call.args_from
        if call.args_from is not None and call.args_end is None and self.text[call.args_from:call.args_from + 1] == "{":
            call.args_end = _scan_value(self.text, call.scan, body_end)
            upto = call.args_end if call.args_end is not None else body_end
            piece = self.text[call.args_from + call.args_sent:upto]
            if piece:
                call.args_sent += len(piece)
                out.append({"index": index, "function": {"arguments": piece}})
        if close >= 0 or final:
            call.closed = True
            if call.args_end is None and (call.args_sent == 0):
                out += self._whole(index, call, self.text[call.start:body_end], bool(out))
        return out

    def _whole(self, index: int, call: _Call, body: str, named: bool) -> list[dict[str, Any]]:
        """A block the streaming path could not follow: parse it whole, or give up on calls."""
        try:
            obj = json.loads(body)
            name = obj["name"]
            args = obj.get("arguments", obj.get("parameters", {}))
        except (ValueError, KeyError, TypeError):
            if not named:
                self._fail(call)
            return []
        args = args if isinstance(args, str) else json.dumps(args)
        if named:
            return [{"index": index, "function": {"arguments": args}}]
        call.name = name
        return [{"index": index, "id": call.id, "type": "function",
                 "function": {"name": name, "arguments": args}}]

    def _fail(self, call: _Call) -> None:
        self.calls.remove(call)
        self.failed = True
        self.content_sent = min(self.content_sent, call.start - len(OPEN))


def assemble(content_pieces: list[str], deltas: list[dict[str, Any]]) -> tuple[str | None, list[dict]]:
    """Streamed pieces -> the message's content and tool_calls, as the OpenAI client assembles them."""
    calls: dict[int, dict[str, Any]] = {}
    for d in deltas:
        c = calls.setdefault(d["index"], {"id": None, "type": "function",
                                          "function": {"name": None, "arguments": ""}})
        c["id"] = d.get("id", c["id"])
        fn = d.get("function", {})
        if "name" in fn:
            c["function"]["name"] = fn["name"]
        c["function"]["arguments"] += fn.get("arguments", "")
    content = "".join(content_pieces)
    if calls:  # the text around calls is the format's, not the answer's
        content = content.strip() or None
    return content, [calls[i] for i in sorted(calls)]


def parse_output(text: str) -> tuple[str | None, list[dict[str, Any]]]:
    """The whole output at once (non-streamed responses): same parser, same results."""
    parser = ToolCallParser()
    content, deltas = parser.feed(text, final=True)
    return assemble([content], deltas)


def _holdback(text: str, marker: str) -> int:
    """Index before a suffix of text that could begin marker (so it is not sent as content yet)."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:k]):
            return len(text) - k
    return len(text)


def _scan_value(text: str, state: list, end: int) -> int | None:
    """Continue scanning a JSON object from state (pos, depth, in_string, escaped) up to end;
    the index one past its closing brace, or None if it is not complete yet."""
    pos, depth, in_str, esc = state
    while pos < end:
        ch = text[pos]
        pos += 1
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                state[:] = [pos, depth, in_str, esc]
                return pos
    state[:] = [pos, depth, in_str, esc]
    return None
