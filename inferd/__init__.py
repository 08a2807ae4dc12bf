"""inferd: an LLM inference engine and OpenAI-compatible serving stack."""

from inferd.llm import LLM
from inferd.outputs import CompletionOutput, RequestOutput
from inferd.sampling_params import SamplingParams

__all__ = ["LLM", "SamplingParams", "RequestOutput", "CompletionOutput"]
__version__ = "0.1.0"
