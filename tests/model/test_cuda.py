"""The same model code on CUDA: parity with transformers (fp32) and sane half-precision runs.

Skipped without a GPU (the device tool runs these on a lent H100/H200)."""

from __future__ import annotations

import pytest
import torch
import transformers

from inferd import LLM, SamplingParams
from inferd.config import ModelConfig
from inferd.model.loader import load_model
from tests.helpers import forward_logits

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
PROMPT = "The quick brown fox jumps over the lazy dog and keeps running"


def test_cuda_fp32_matches_transformers(tiny_llama):
    loaded = load_model(ModelConfig(model=str(tiny_llama), dtype="float32", device="cuda"))
    assert loaded.device.type == "cuda"
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32).eval()
    ids = loaded.tokenizer.encode(PROMPT)
    ours = forward_logits(loaded.model, ids).cpu()
    with torch.no_grad():
        theirs = ref(torch.tensor([ids])).logits[0]
    assert (ours - theirs).abs().max().item() < 1e-3
    llm = LLM(str(tiny_llama), dtype="float32", device="cuda", kv_cache_memory=0.1)
    out = llm.generate([ids], SamplingParams(temperature=0, max_tokens=32, ignore_eos=True))[0]
    expected = ref.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False, eos_token_id=None,
                            pad_token_id=0)[0, len(ids):].tolist()
    assert out.outputs[0].token_ids == expected


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_cuda_half_precision_close_to_fp32(tiny_llama, dtype):
    """Half precision stays within its rounding of the fp32 reference; the top token agrees
    wherever fp32's top-2 margin exceeds that error (near-ties may legitimately flip)."""
    ref = load_model(ModelConfig(model=str(tiny_llama), dtype="float32", device="cpu"))
    half = load_model(ModelConfig(model=str(tiny_llama), dtype=dtype, device="cuda"))
    ids = ref.tokenizer.encode(PROMPT)
    a = forward_logits(ref.model, ids)
    b = forward_logits(half.model, ids).cpu()
    err = (a - b).abs().max().item()
    assert err < 0.25
    top2 = a.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * err
    assert clear.any()
    assert torch.equal(a.argmax(-1)[clear], b.argmax(-1)[clear])


def test_cuda_engine_batch_with_preemption(tiny_llama):
    llm = LLM(str(tiny_llama), dtype="bfloat16", device="cuda", kv_cache_memory=0.0005)
    prompts = [[1 + i, 2, 3, 4 + i] * (5 + i) for i in range(16)]
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    batched = llm.generate(prompts, params)
    assert all(len(o.outputs[0].token_ids) == 40 for o in batched)
    llm.engine.pool.check_integrity()
    assert llm.engine.pool.usage == 0.0
