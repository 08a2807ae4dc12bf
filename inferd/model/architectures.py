"""The architecture table: every name a checkpoint may give its architecture -> the model class.

HF config.json `architectures` entries and GGUF `general.architecture` values both map in, to a
canonical name (what ArchConfig.architecture holds) and the class that runs it. Adding an
architecture is one file composing `layers.py` plus one `_register` line here. An MoE model
registers the same way, with a class whose `make_mlp` builds inferd/model/moe.py's block.
"""

from __future__ import annotations

from dataclasses import dataclass

from inferd.model.decoder import DecoderForCausalLM
from inferd.model.gemma3 import Gemma3ForCausalLM
from inferd.model.llama import LlamaForCausalLM, Qwen2ForCausalLM
from inferd.model.qwen3 import Qwen3ForCausalLM


@dataclass(frozen=True)
class Architecture:
    name: str  # canonical: the GGUF `general.architecture` value
    model_class: type[DecoderForCausalLM]


ARCHITECTURES: dict[str, Architecture] = {}


def _register(name: str, model_class: type[DecoderForCausalLM], *hf_names: str) -> None:
    entry = Architecture(name, model_class)
    for key in (name, *hf_names):
        ARCHITECTURES[key] = entry


_register("llama", LlamaForCausalLM, "LlamaForCausalLM")
_register("mistral", LlamaForCausalLM, "MistralForCausalLM")
_register("qwen2", Qwen2ForCausalLM, "Qwen2ForCausalLM")
_register("qwen3", Qwen3ForCausalLM, "Qwen3ForCausalLM")
_register("gemma3", Gemma3ForCausalLM, "Gemma3ForCausalLM")


def supported_names() -> list[str]:
    """The HF class names inferd runs (for error messages)."""
    return sorted(k for k in ARCHITECTURES if k[0].isupper())


def lookup(names: list[str]) -> Architecture | None:
    """The first of `names` (HF `architectures` entries, or a GGUF architecture) inferd runs."""
    return next((ARCHITECTURES[n] for n in names if n in ARCHITECTURES), None)
