"""Grammar-constrained decoding through the engine on a random-weight model: whatever the model
prefers, every output parses and validates (greedy, sampled, n>1), with speculative decoding
(outputs identical to speculation off) and under preemption; regex, choice and GBNF guides;
compile cache and errors."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from inferd.sampling_params import SamplingParams
from inferd.structured import GrammarError, Guide
from tests.spec.conftest import make_llm

from .schemas import SCHEMAS

PROMPTS = ["Give me JSON:", "hello world", "one two three one two three one two"]


@pytest.fixture(scope="module")
def llm(tiny_llama):
    return make_llm(tiny_llama)


def _texts(llm, params, prompts=PROMPTS):
    outs = llm.generate(prompts, params)
    return [c for o in outs for c in o.outputs]


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_outputs_validate_greedy_and_sampled(llm, name):
    schema = SCHEMAS[name]
    guide = Guide.json(schema)
    for params in (SamplingParams(temperature=0.0, max_tokens=200, guide=guide),
                   SamplingParams(temperature=1.0, seed=5, n=3, max_tokens=200, guide=guide),
                   SamplingParams(temperature=0.8, top_p=0.9, top_k=50, seed=1, max_tokens=200,
                                  guide=guide)):
        for c in _texts(llm, params):
            assert c.finish_reason == "stop", (name, c.text)
            jsonschema.validate(json.loads(c.text), schema)


def test_unconstrained_output_is_not_json(llm):
    """The control: the same model without a guide writes garbage (so the tests above mean it)."""
    c = _texts(llm, SamplingParams(temperature=0.0, max_tokens=30), PROMPTS[:1])[0]
    with pytest.raises(ValueError):
        json.loads(c.text)


def test_json_object_regex_choice_and_gbnf(llm):
    free_keys = {"type": "object", "maxProperties": 2, "additionalProperties": False,
                 "patternProperties": {"^[a-z]{1,4}$": {"enum": [1, 2]}}}
    c = _texts(llm, SamplingParams(temperature=0.0, max_tokens=200, guide=Guide.json(free_keys)))[0]
    jsonschema.validate(json.loads(c.text), free_keys)
    for c in _texts(llm, SamplingParams(temperature=1.0, seed=3, n=2, max_tokens=40,
                                        guide=Guide("regex", r"[0-9]{3}-[a-z]{2,4}"))):
        assert re.fullmatch(r"[0-9]{3}-[a-z]{2,4}", c.text), c.text
    for c in _texts(llm, SamplingParams(temperature=1.0, seed=4, n=4, max_tokens=40,
                                        guide=Guide.choice(["positive", "negative", "neutral"]))):
        assert c.text in ("positive", "negative", "neutral")
    gbnf = 'root ::= "(" num ("," num)? ")"\nnum ::= [0-9] [0-9]?'
    for c in _texts(llm, SamplingParams(temperature=1.0, seed=6, max_tokens=40,
                                        guide=Guide("grammar", gbnf))):
        assert re.fullmatch(r"\([0-9]{1,2}(,[0-9]{1,2})?\)", c.text), c.text


def test_min_tokens_and_logit_bias_cannot_break_the_grammar(llm):
    """min_tokens bans EOS and a bias pushes one token; the grammar still wins."""
    params = SamplingParams(temperature=0.0, max_tokens=40, min_tokens=30, logit_bias={1: 100.0},
                            guide=Guide.choice(["yes", "no"]))
    for c in _texts(llm, params):
        assert c.text in ("yes", "no")


def test_max_tokens_cuts_with_length(llm):
    c = _texts(llm, SamplingParams(temperature=0.0, max_tokens=3,
                                   guide=Guide.json(SCHEMAS["nested"])), PROMPTS[:1])[0]
    assert c.finish_reason == "length" and len(c.token_ids) == 3


def test_compile_cache_and_errors(llm):
    grammars = llm.engine.grammars
    before = grammars.num_compiled
    schema = {"type": "object", "properties": {"q": {"enum": [1, 2]}}, "required": ["q"]}
    llm.generate(PROMPTS, SamplingParams(temperature=0.0, max_tokens=20, guide=Guide.json(schema)))
    llm.generate(PROMPTS, SamplingParams(temperature=0.0, max_tokens=20, guide=Guide.json(schema)))
    assert grammars.num_compiled == before + 1
    with pytest.raises(GrammarError, match="foo"):
        grammars.compile(Guide.json({"type": "foo"}))
    with pytest.raises(GrammarError):
        grammars.compile(Guide("regex", "(unclosed"))
    assert not llm.engine.has_unfinished()


@pytest.mark.parametrize("method", ["ngram", "draft"])
def test_speculative_decoding_obeys_the_grammar(tiny_llama, noisy_draft, llm, method):
    """Proposals are checked against the grammar: greedy output is what speculation off gives."""
    kw = {"draft_model": str(noisy_draft)} if method == "draft" else {}
    spec = make_llm(tiny_llama, speculative=method, num_speculative_tokens=4, adaptive=False, **kw)
    for name in ("flat", "array_of_objects", "refs"):
        params = SamplingParams(temperature=0.0, max_tokens=200, guide=Guide.json(SCHEMAS[name]))
        want = [c.token_ids for c in _texts(llm, params)]
        got = _texts(spec, params)
        assert [c.token_ids for c in got] == want, name
        for c in got:
            jsonschema.validate(json.loads(c.text), SCHEMAS[name])
        sampled = SamplingParams(temperature=1.0, seed=2, n=2, max_tokens=200,
                                 guide=Guide.json(SCHEMAS[name]))
        for c in _texts(spec, sampled):
            jsonschema.validate(json.loads(c.text), SCHEMAS[name])
    assert spec.engine.speculator.num_draft_tokens > 0


def test_preemption_keeps_grammar_state(tiny_llama, llm):
    """A tiny KV pool preempts and recomputes sequences mid-JSON; outputs are unchanged."""
    schema = SCHEMAS["array_of_objects"]
    params = SamplingParams(temperature=0.0, max_tokens=120, guide=Guide.json(schema))
    prompts = [f"item {i} " * (3 + i) for i in range(8)]
    want = [c.token_ids for c in _texts(llm, params, prompts)]
    block_bytes = 2 * 2 * 16 * 2 * 16 * 4
    small = make_llm(tiny_llama, kv_cache_memory=12 * block_bytes / 2**30)
    got = _texts(small, params, prompts)
    assert small.engine.scheduler.num_preemptions > 0
    assert [c.token_ids for c in got] == want
