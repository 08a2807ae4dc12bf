"""Structured output and tool calling through a real `inferd serve` and the official client.

The server runs a random-weight model, so nothing but the grammar makes its output parse: every
schema-constrained answer must validate (with `jsonschema` and the client's own pydantic
parsing), streamed or not, n>1; tool calls come back in OpenAI's shape, streamed deltas as the
client assembles them; refusals are 400s naming the field.
"""

from __future__ import annotations

import json
import re

import jsonschema
import openai
import pytest
from pydantic import BaseModel, ConfigDict, Field

from tests.structured.schemas import SCHEMAS, Person

from .helpers import API_KEY

MSG = [{"role": "user", "content": "Answer in JSON."}]
WEATHER = {"type": "object", "required": ["city", "unit"], "additionalProperties": False,
           "properties": {"city": {"enum": ["Paris", "Lima"]}, "unit": {"enum": ["c", "f"]}}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": WEATHER, "strict": True}},
         {"type": "function", "function": {"name": "get_time", "parameters": {
             "type": "object", "required": ["zone"], "additionalProperties": False,
             "properties": {"zone": {"type": "integer", "minimum": -12, "maximum": 12}}}}}]


@pytest.fixture()
def client(tiny_server):
    with openai.OpenAI(base_url=tiny_server.v1, api_key=API_KEY, max_retries=0, timeout=120) as c:
        yield c


def _schema_format(name: str) -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": SCHEMAS[name], "strict": True}}


@pytest.mark.parametrize("name", ["nested", "array_of_objects", "refs", "enum"])
def test_json_schema_validates_streamed_and_not(client, name):
    r = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=200, n=2, temperature=1.0,
                                       seed=3, response_format=_schema_format(name))
    for c in r.choices:
        assert c.finish_reason == "stop"
        jsonschema.validate(json.loads(c.message.content), SCHEMAS[name])
    stream = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=200, temperature=0,
                                            response_format=_schema_format(name), stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    jsonschema.validate(json.loads(text), SCHEMAS[name])


def test_parse_with_a_pydantic_model(client):
    r = client.chat.completions.parse(model="tiny", messages=MSG, response_format=Person, max_tokens=200,
                                      temperature=0)
    person = r.choices[0].message.parsed
    assert isinstance(person, Person) and person.address.city in ("Paris", "Lima", "Oslo")
    with client.chat.completions.stream(model="tiny", messages=MSG, response_format=Person, max_tokens=200,
                                        temperature=0.7, seed=1) as stream:
        final = stream.get_final_completion()
    assert isinstance(final.choices[0].message.parsed, Person)


def test_guided_extras_on_chat_and_completions(client):
    r = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=30, n=3, temperature=1.0,
                                       extra_body={"guided_choice": ["yes", "no", "maybe"]})
    assert {c.message.content for c in r.choices} <= {"yes", "no", "maybe"}
    r = client.completions.create(model="tiny", prompt="Phone:", max_tokens=30, temperature=1.0, seed=2,
                                  extra_body={"guided_regex": r"\+[0-9]{2} [0-9]{3}-[0-9]{4}"})
    assert re.fullmatch(r"\+[0-9]{2} [0-9]{3}-[0-9]{4}", r.choices[0].text)
    r = client.completions.create(model="tiny", prompt="x", max_tokens=200, temperature=0,
                                  extra_body={"guided_json": SCHEMAS["flat"]})
    jsonschema.validate(json.loads(r.choices[0].text), SCHEMAS["flat"])
    r = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=30, temperature=1.0,
                                       extra_body={"guided_grammar": 'root ::= "ab" [0-9]', "guided_decoding_backend": "auto"})
    assert re.fullmatch(r"ab[0-9]", r.choices[0].message.content)


@pytest.mark.parametrize("body,param,code", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "foo"},
                                                                  "strict": True}}},
     "response_format", "invalid_grammar"),
    ({"response_format": {"type": "json_schema"}}, "response_format", None),
    ({"response_format": {"type": "yaml"}}, "response_format", None),
    ({"guided_regex": "(", "guided_choice": ["a"]}, "guided_choice", "conflicting_structured_output"),
    ({"guided_regex": "(unclosed"}, "guided_regex", "invalid_grammar"),
    ({"guided_json": "{not json"}, "guided_json", "invalid_grammar"),
    ({"guided_choice": ["a"], "guided_decoding_backend": "outlines"}, "guided_decoding_backend", None),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice",
     "unknown_tool"),
    ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools", None),
    ({"tool_choice": "required"}, "tool_choice", None),
    ({"tools": TOOLS, "tool_choice": "required", "guided_choice": ["a"]}, "tool_choice",
     "conflicting_structured_output"),
    ({"tools": [TOOLS[0], TOOLS[0]]}, "tools", "duplicate_tool_names"),
])
def test_refusals_name_the_field(client, body, param, code):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny", messages=MSG, max_tokens=5, extra_body=body)
    err = info.value.body
    assert err["param"] == param and err["code"] == code, err


def test_required_tool_calls_parse_and_validate(client):
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    r = client.chat.completions.create(model="tiny", messages=MSG, tools=TOOLS, tool_choice="required",
                                       max_tokens=200, n=3, temperature=1.0, seed=4)
    for c in r.choices:
        assert c.finish_reason == "tool_calls" and c.message.content is None
        assert c.message.tool_calls
        for call in c.message.tool_calls:
            assert call.type == "function" and call.id.startswith("call_")
            jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])
    r = client.chat.completions.create(model="tiny", messages=MSG, tools=TOOLS, parallel_tool_calls=False,
                                       tool_choice={"type": "function", "function": {"name": "get_time"}},
                                       max_tokens=100, temperature=0)
    (call,) = r.choices[0].message.tool_calls
    assert call.function.name == "get_time"
    jsonschema.validate(json.loads(call.function.arguments), schemas["get_time"])


def test_streamed_tool_calls_assemble_as_the_client_does(client):
    kw = dict(model="tiny", messages=MSG, tools=TOOLS, tool_choice="required", max_tokens=200,
              temperature=1.0, seed=7)
    whole = client.chat.completions.create(**kw).choices[0].message
    chunks = list(client.chat.completions.create(**kw, stream=True))
    deltas = [tc for ch in chunks if ch.choices for tc in (ch.choices[0].delta.tool_calls or [])]
    first = {}
    for d in deltas:  # each call's first delta: id, type, name; the rest: argument pieces only
        if d.index not in first:
            first[d.index] = d
            assert d.id and d.type == "function" and d.function.name and d.function.arguments == ""
        else:
            assert d.id is None and d.function.name is None
    assert len(deltas) > len(first)  # arguments arrived in pieces
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    args = {i: "".join(d.function.arguments for d in deltas if d.index == i) for i in first}
    assert [(first[i].function.name, args[i]) for i in sorted(first)] == \
        [(c.function.name, c.function.arguments) for c in whole.tool_calls]
    # the client's stream helper parses strict tools' arguments into the pydantic model
    with client.chat.completions.stream(
            model="tiny", messages=MSG, tools=[openai.pydantic_function_tool(Weather)],
            tool_choice="required", parallel_tool_calls=False, max_tokens=200, temperature=0) as stream:
        final = stream.get_final_completion()
    call = final.choices[0].message.tool_calls[0]
    assert isinstance(call.function.parsed_arguments, Weather)


class Weather(BaseModel):
    model_config = ConfigDict(extra="forbid")
    city: str = Field(max_length=8)
    days: int = Field(ge=1, le=7)


def test_auto_parses_calls_the_model_writes(client):
    """auto is parsed, not constrained: a guided_regex makes this model write a call."""
    call = '<tool_call>\\n\\{"name": "get_weather", "arguments": \\{"city": "(Paris|Lima)", "unit": "c"\\}\\}\\n</tool_call>'
    kw = dict(model="tiny", messages=MSG, tools=TOOLS, max_tokens=100, temperature=1.0,
              extra_body={"guided_regex": "Sure[.]" + call})
    m = client.chat.completions.create(**kw).choices[0]
    assert m.finish_reason == "tool_calls" and m.message.content == "Sure."
    assert m.message.tool_calls[0].function.name == "get_weather"
    assert json.loads(m.message.tool_calls[0].function.arguments)["unit"] == "c"
    chunks = list(client.chat.completions.create(**kw, stream=True))
    content = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert content == "Sure."
    # no tools offered (tool_choice none): the same text is plain content
    plain = client.chat.completions.create(**{**kw, "tool_choice": "none"}).choices[0]
    assert plain.message.tool_calls is None or plain.message.tool_calls == []
    assert plain.message.content.startswith("Sure.<tool_call>")


def test_tool_results_are_accepted_in_the_next_turn(client, http):
    history = [*MSG, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                          "arguments": '{"city": "Paris", "unit": "c"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21 C and sunny"}]
    r = client.chat.completions.create(model="tiny", messages=history, tools=TOOLS, max_tokens=5)
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")
    ids = http.post("/tokenize", json={"model": "tiny", "messages": history}).json()["tokens"]
    prompt = http.post("/detokenize", json={"model": "tiny", "tokens": ids}).json()["prompt"]
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n</tool_call>' \
        in prompt
    assert "<|im_start|>user\n<tool_response>\n21 C and sunny\n</tool_response>" in prompt
