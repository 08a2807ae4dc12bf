"""LLMEngine: the single place the loop turns (`step`), plus the offline `LLM` API.

step = schedule -> run the model once -> append tokens, detokenize, check stops -> outputs.
The engine is synchronous and single-threaded; `AsyncEngine` drives it from a thread for the server.
"""

from __future__ import annotations

import itertools
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from inferd.config import EngineConfig
from inferd.engine.detokenizer import IncrementalDetokenizer
from inferd.engine.kv_cache import BlockPool
from inferd.engine.runner import ModelRunner, kv_block_bytes, plan_num_blocks
from inferd.engine.sampler import make_generator, sample_seed
from inferd.engine.scheduler import Scheduler
from inferd.engine.sequence import Request, SeqStatus, Sequence
from inferd.model.loader import LoadedModel, load_model
from inferd.outputs import CompletionOutput, RequestOutput
from inferd.sampling_params import InvalidParameter, SamplingParams
from inferd.structured.compiler import GrammarCompiler

PromptInput = str | list[int]
log = logging.getLogger(__name__)


class PromptTooLong(InvalidParameter):
    """Prompt (plus max_tokens) does not fit the context window."""


@dataclass
class EngineStats:
    num_running: int
    num_waiting: int
    kv_cache_usage: float
    prefix_cache_hit_rate: float
    num_preemptions: int
    num_blocks: int
    block_size: int = 0
    kv_cache_bytes: int = 0  # the pool's reserved size


class EngineObserver:
    """Receives per-token and per-request events (the server's metrics subclass this)."""

    def on_first_token(self, request: Request, now: float) -> None: ...
    def on_token(self, request: Request, seq: Sequence, gap: float) -> None: ...
    def on_finished(self, request: Request, now: float) -> None: ...
    def on_step(self, prompt_tokens: int, generation_tokens: int) -> None: ...


class LLMEngine:
    def __init__(self, config: EngineConfig, loaded: LoadedModel | None = None):
        self.config = config
        self.loaded = loaded or load_model(config.model)
        self.tokenizer = self.loaded.tokenizer
        self.max_model_len = self.loaded.max_model_len
        num_blocks = plan_num_blocks(self.loaded, config.cache, self.loaded.dtype,
                                     config.scheduler.max_num_seqs, self.max_model_len)
        self.kv_cache_bytes = num_blocks * kv_block_bytes(self.loaded, config.cache, self.loaded.dtype)
        log.info("KV cache: %d blocks of %d tokens = %d tokens (%.2f GiB)%s", num_blocks,
                 config.cache.block_size, num_blocks * config.cache.block_size, self.kv_cache_bytes / 2**30,
                 "" if config.cache.kv_cache_memory_gib is not None else
                 f", sized for {config.scheduler.max_num_seqs} sequences of {self.max_model_len} tokens "
                 f"within {config.cache.memory_fraction:.0%} of free memory")
        self.pool = BlockPool(num_blocks, config.cache.block_size, config.cache.enable_prefix_caching)
        self.runner = ModelRunner(self.loaded, config.cache, num_blocks)
        self.scheduler = Scheduler(config.scheduler, self.pool, self.max_model_len)
        self.requests: dict[str, Request] = {}
        self._seq_ids = itertools.count()
        self._rng = random.Random(config.model.seed)
        # Siblings of n>1 requests not yet handed to the scheduler (they join after the first
        # token); they are queued work all the same, and admission control counts them.
        self._num_deferred_seqs = 0
        self.observer: EngineObserver = EngineObserver()
        # Structured output: compiled grammars, cached by guide (the tokenizer view is built on
        # first use, so servers that never see a schema never pay for it).
        self.grammars = GrammarCompiler(self.tokenizer.hf, self.loaded.arch.vocab_size,
                                        self.tokenizer.eos_token_ids)
        self.speculator = None  # set by inferd.spec when speculative decoding is on
        if config.speculative.method:
            from inferd.spec import build_speculator

            self.speculator = build_speculator(self)

    # ---- requests -------------------------------------------------------------------------
    def tokenize_prompt(self, prompt: PromptInput) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            return prompt, self.tokenizer.encode(prompt)
        ids = [int(t) for t in prompt]
        vocab = self.loaded.arch.vocab_size
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise InvalidParameter("prompt", f"prompt token ids out of range [0, {vocab}): {bad[:5]}")
        return None, ids

    @property
    def num_waiting_seqs(self) -> int:
        """Sequences queued but not running: the scheduler's waiting ones plus deferred siblings."""
        return self.scheduler.num_waiting + self._num_deferred_seqs

    @property
    def max_seq_tokens(self) -> int:
        """The longest sequence that can ever run: the context window or the whole KV pool."""
        return min(self.max_model_len, (self.pool.num_blocks - 1) * self.pool.block_size)

    def validate_length(self, prompt_len: int, params: SamplingParams) -> None:
        """Refuse, before queueing, anything that could never complete or could upset the batch."""
        if prompt_len == 0:
            raise InvalidParameter("prompt", "prompt is empty")
        total = prompt_len + (params.max_tokens or 1)
        if total > self.max_model_len:
            raise PromptTooLong(
                "max_tokens" if params.max_tokens else "prompt",
                f"this model's maximum context length is {self.max_model_len} tokens; the request has "
                f"{prompt_len} prompt tokens and asks for {params.max_tokens or 0} completion tokens "
                f"({total} in total)")
        if total > self.max_seq_tokens:
            raise PromptTooLong(
                "max_tokens" if params.max_tokens else "prompt",
                f"the KV cache holds at most {self.max_seq_tokens} tokens per sequence; the request "
                f"needs {total} ({prompt_len} prompt + {params.max_tokens or 0} completion); "
                "raise --kv-cache-memory")
        vocab = self.loaded.arch.vocab_size
        bad = [t for t in params.stop_token_ids if not 0 <= int(t) < vocab]
        if bad:
            raise InvalidParameter("stop_token_ids", f"stop_token_ids out of range [0, {vocab}): {bad[:5]}")
        if params.top_k >= vocab:
            params.top_k = 0  # at or above the vocabulary, top-k keeps everything

    def add_request(self, request_id: str, prompt: PromptInput, params: SamplingParams,
                    prompt_token_ids: list[int] | None = None, cache_salt: str | None = None) -> Request:
        """cache_salt: reuse prefix-cache blocks only of requests with the same salt (a tenant)."""
        if request_id in self.requests:
            raise ValueError(f"duplicate request id {request_id!r}")
        if prompt_token_ids is None:
            text, ids = self.tokenize_prompt(prompt)
        else:
            text, ids = (prompt if isinstance(prompt, str) else None), list(prompt_token_ids)
        self.validate_length(len(ids), params)
        if params.guide is not None:
            self.grammars.compile(params.guide)  # a cache hit when the server compiled it already
        req = Request(request_id, text, ids, params, cache_salt)
        for i in range(params.n):
            seq = Sequence(next(self._seq_ids), req, i)
            seed = sample_seed(params.seed, i) if params.seed is not None else self._rng.getrandbits(62)
            seq.generator = make_generator(seed, self.loaded.device) if not params.greedy else None
            seq.detok = IncrementalDetokenizer(self.tokenizer, ids, params.stop,
                                               params.skip_special_tokens,
                                               params.include_stop_str_in_output)
            if params.guide is not None:  # one grammar state per sample
                seq.grammar = self.grammars.new_state(params.guide)
            req.seqs.append(seq)
        self.requests[request_id] = req
        self._num_deferred_seqs += len(req.seqs) - 1
        # Siblings of an n>1 request join once the first has computed the prompt, so they reuse
        # its cached blocks instead of computing the prompt n times.
        self.scheduler.add(req.seqs[0])
        return req

    def abort_request(self, request_id: str) -> RequestOutput | None:
        req = self.requests.pop(request_id, None)
        if req is None:
            return None
        req.aborted = True
        if req.timing.first_token is None:  # its siblings never joined the scheduler
            self._num_deferred_seqs -= len(req.seqs) - 1
        for seq in req.seqs:
            if not seq.finished:
                self.scheduler.remove(seq)
                seq.status = SeqStatus.FINISHED
                seq.finish_reason = "abort"
            else:
                self.pool.free_seq(seq)
        req.timing.finished = time.monotonic()
        self.observer.on_finished(req, req.timing.finished)
        return self._make_output(req, set(req.seqs))

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    def stats(self) -> EngineStats:
        return EngineStats(self.scheduler.num_running, self.num_waiting_seqs, self.pool.usage,
                           self.pool.hit_rate, self.scheduler.num_preemptions, self.pool.num_blocks,
                           self.pool.block_size, self.kv_cache_bytes)

    # ---- the loop -------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        spec = self.speculator.propose(self.scheduler.running) if self.speculator else None
        sched = self.scheduler.schedule(spec)
        if sched.empty:
            return []
        now = time.monotonic()
        for entry in sched.scheduled:
            timing = entry.seq.request.timing
            if timing.first_scheduled is None:
                timing.first_scheduled = now
        t0 = time.perf_counter()
        result = self.runner.execute(sched, spec)
        if self.speculator:  # adaptive speculation learns step cost vs batch size from real steps
            self.speculator.observe_step(sched, time.perf_counter() - t0)
        touched: set[Sequence] = set()
        prompt_tokens = 0
        for entry in sched.scheduled:
            seq = entry.seq
            computed_before = seq.num_computed_tokens
            seq.num_computed_tokens += entry.num_tokens - entry.num_spec
            prompt_tokens += max(0, min(seq.num_computed_tokens, seq.prompt_len) - computed_before)
            if seq.seq_id in result.prompt_logprobs:
                seq.prompt_logprobs.extend(result.prompt_logprobs[seq.seq_id])
            # Now, before the sequence can finish and release its blocks: a request that ends in
            # this very step (e.g. max_tokens=1) must still leave its prompt blocks cached.
            self.pool.register_full_blocks(seq)
        new_tokens = 0
        now = time.monotonic()
        for row, seq in enumerate(result.seqs):
            tokens = [result.sampled.token_ids[row]]
            lps = [result.sampled.logprobs[row]]
            if self.speculator and seq.seq_id in result.spec_logits:
                tokens, lps = self.speculator.verify(seq, spec[seq.seq_id], result, row)
            for tok, lp in zip(tokens, lps, strict=True):
                self._append(seq, tok, lp, now)
                new_tokens += 1
                touched.add(seq)
                if seq.finished:
                    break
        if self.speculator:  # accepted proposals may have completed more blocks
            for entry in sched.scheduled:
                if entry.num_spec and not entry.seq.finished:
                    self.pool.register_full_blocks(entry.seq)
        self.observer.on_step(prompt_tokens, new_tokens)
        return self._collect(touched)

    def _append(self, seq: Sequence, token: int, logprobs, now: float) -> None:
        req = seq.request
        p = seq.params
        seq.append_token(token)
        if logprobs is not None and seq.logprobs is not None:
            seq.logprobs.append(logprobs)
            seq.cumulative_logprob += logprobs[token]
        if req.timing.first_token is None:
            req.timing.first_token = now
            self.observer.on_first_token(req, now)
            for sib in req.seqs[1:]:
                self.scheduler.add(sib)
            self._num_deferred_seqs -= len(req.seqs) - 1
        else:
            self.observer.on_token(req, seq, now - (req.timing.last_token or now))
        req.timing.last_token = now
        n_out = seq.num_output_tokens
        reason, stop = None, None
        if n_out >= p.min_tokens:
            if not p.ignore_eos and token in self.tokenizer.eos_token_ids:
                reason, stop = "stop", None
            elif token in p.stop_token_ids:
                reason, stop = "stop", token
        if reason is None:
            hit = seq.detok.add(token)
            if hit is not None and n_out >= p.min_tokens:
                reason, stop = "stop", hit
        if seq.grammar is not None and (not seq.grammar.accept(token) or seq.grammar.finished) \
                and reason is None:
            # The grammar is complete (only EOS could follow): end here, as EOS would.
            reason, stop = "stop", None
        if reason is None and (n_out >= (p.max_tokens or 1 << 60) or seq.num_tokens >= self.max_seq_tokens):
            reason = "length"
        if reason is not None:
            if stop is None or isinstance(stop, int):
                seq.detok.flush()
            self._finish(seq, reason, stop)

    def _finish(self, seq: Sequence, reason: str, stop: int | str | None) -> None:
        seq.finish_reason, seq.stop_reason = reason, stop
        self.scheduler.remove(seq)
        seq.status = SeqStatus.FINISHED

    def _collect(self, touched: set[Sequence]) -> list[RequestOutput]:
        outputs = []
        for req in {s.request for s in touched}:
            out = self._make_output(req, touched)
            if req.finished:
                req.timing.finished = time.monotonic()
                self.requests.pop(req.request_id, None)
                self.observer.on_finished(req, req.timing.finished)
            outputs.append(out)
        return outputs

    def _make_output(self, req: Request, touched: set[Sequence]) -> RequestOutput:
        outs = []
        for seq in req.seqs:
            delta_text = seq.detok.take_delta(seq.finished) if seq in touched else ""
            prev = seq.num_reported
            delta_ids = seq.output_token_ids[prev:]
            seq.num_reported = seq.num_output_tokens
            outs.append(CompletionOutput(
                index=seq.index, text=seq.detok.text if seq.finished else seq.detok.text[:seq.detok.emitted],
                token_ids=seq.output_token_ids, cumulative_logprob=seq.cumulative_logprob,
                logprobs=seq.logprobs, finish_reason=seq.finish_reason, stop_reason=seq.stop_reason,
                delta_text=delta_text, delta_token_ids=delta_ids,
                delta_logprobs=seq.logprobs[prev:] if seq.logprobs is not None else None))
        return RequestOutput(req.request_id, req.prompt, req.prompt_token_ids, outs, req.finished,
                             req.seqs[0].prompt_logprobs, req.seqs[0].num_cached_tokens)

    def run_until_done(self, on_output: Callable[[RequestOutput], None] | None = None) -> None:
        while self.has_unfinished():
            for out in self.step():
                if on_output:
                    on_output(out)
