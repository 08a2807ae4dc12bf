"""Draft-model proposer: a smaller model sharing the target's tokenizer guesses the next k tokens.

The draft runs inside the engine with its own paged KV cache (a `BlockPool` and a `ModelRunner`
over the draft weights). Each sequence has a `DraftSeq` shadow recording which tokens the draft
holds K/V for; before proposing, the shadow is rolled back to the longest prefix the target
sequence still agrees with, so K/V of rejected proposals are simply overwritten.
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch

from inferd.config import DTYPES, EngineConfig
from inferd.engine.kv_cache import BlockPool
from inferd.engine.runner import ModelRunner
from inferd.engine.sampler import filter_logits, make_generator
from inferd.engine.scheduler import ScheduledSeq, SchedulerOutput
from inferd.engine.sequence import Sequence
from inferd.model.loader import LoadedModel, load_model
from inferd.quant.registry import LOAD_METHODS
from inferd.spec.adaptive import StepCostModel

QUANT_SUFFIXES = LOAD_METHODS  # `--draft-model name:int4`: a --quantization method


class IncompatibleDraftModel(ValueError):
    """The draft model cannot propose tokens for this target (different tokenizer or vocabulary)."""


class DraftSeq:
    """The draft model's view of one target sequence: its tokens, K/V extent and blocks."""

    def __init__(self, seq: Sequence):
        self.seq_id = seq.seq_id
        self.params = seq.params
        self.prompt_len = seq.prompt_len
        self.token_ids: list[int] = []
        self.num_computed_tokens = 0
        self.confirmed = 0  # a prefix known to equal the target sequence's tokens
        self.block_table: list[int] = []
        self.block_hashes: list[int] = []
        self.prompt_logprobs = None  # the runner asks; the draft never wants them
        self.generator: torch.Generator | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


class DraftRunner(ModelRunner):
    """A ModelRunner whose result is the raw logits of the rows that sample (no sampling)."""

    def _sample(self, hidden, sample_rows, sample_seqs, spec_rows,  # type: ignore[override]
                prompt_lp_rows, masks=None):
        if not sample_rows:
            return sample_seqs, None
        return sample_seqs, self._logits(hidden, sample_rows)


def split_draft_spec(spec: str) -> tuple[str, str, str | None]:
    """`model[:QUANT][:DTYPE]` -> (model, quantization, dtype or None for the target's dtype).

    The suffixes make a cheaper copy of a model a draft: `smollm2-135m:int4` (int4 weights) or
    `smollm2-135m:bfloat16` (half the bytes to read per token where bf16 matmuls are fast).
    """
    quant, dtype = "none", None
    while True:
        head, sep, tail = spec.rpartition(":")
        if not (sep and head):
            return spec, quant, dtype
        if tail in QUANT_SUFFIXES and quant == "none":
            quant = tail
        elif tail in DTYPES and dtype is None:
            dtype = tail
        else:
            return spec, quant, dtype
        spec = head


def check_compatible(target: LoadedModel, draft: LoadedModel, name: str) -> None:
    """Proposals are token ids, so both models must mean the same thing by every id."""
    tv, dv = target.arch.vocab_size, draft.arch.vocab_size
    if tv != dv:
        raise IncompatibleDraftModel(
            f"draft model {name!r} has a vocabulary of {dv} tokens but the target has {tv}; "
            "a draft model must share the target's tokenizer")
    tt, dt = target.tokenizer, draft.tokenizer
    probe = "Speculative decoding: 123 tokens, naïve café, 東京, def f(x):\n\treturn x  # ok"
    size = min(tt.vocab_size, dt.vocab_size)
    ids = sorted({i for i in (0, 1, 2, 3, size // 7, size // 3, size // 2, size - 1)
                  if 0 <= i < size})
    if (tt.vocab_size != dt.vocab_size or tt.encode(probe, add_special_tokens=False)
            != dt.encode(probe, add_special_tokens=False)
            or tt.convert_ids_to_tokens(ids) != dt.convert_ids_to_tokens(ids)):
        raise IncompatibleDraftModel(
            f"draft model {name!r} does not use the target's tokenizer (token ids differ); "
            "pick a draft model of the same family")


def _weight_bytes(loaded: LoadedModel) -> int:
    m = loaded.model
    return sum(t.numel() * t.element_size() for t in (*m.parameters(), *m.buffers()))


class DraftProposer:
    """Runs the draft model for the sequences the speculator chose, k_s autoregressive steps."""

    def __init__(self, config: EngineConfig, target: LoadedModel, target_blocks: int,
                 draft_model: str, loaded: LoadedModel | None = None):
        path, quant, dtype = split_draft_spec(draft_model)
        self.name = draft_model
        if loaded is None:
            model_cfg = replace(config.model, model=path, quantization=quant,
                                dtype=dtype or config.model.dtype,
                                max_model_len=target.max_model_len)
            loaded = load_model(model_cfg)
        check_compatible(target, loaded, draft_model)
        self.loaded = loaded
        self.max_model_len = loaded.max_model_len
        # Same token capacity as the target's cache plus k tokens of lookahead per sequence,
        # so the draft never runs out of blocks before the target does.
        per_seq = -(-(config.speculative.num_speculative_tokens + 1) // config.cache.block_size)
        num_blocks = target_blocks + config.scheduler.max_num_seqs * per_seq
        self.pool = BlockPool(num_blocks, config.cache.block_size, enable_prefix_caching=False)
        self.runner = DraftRunner(loaded, config.cache, num_blocks)
        self.cost = StepCostModel()
        self.states: dict[int, DraftSeq] = {}
        # Decoding reads every weight once per step, so the draft's share of the target's bytes
        # is the prior for its step cost until draft steps have been measured.
        self.relative_size = _weight_bytes(loaded) / max(1, _weight_bytes(target))
        self.seconds = 0.0  # time spent in draft forwards during the last propose()

    def catch_up(self, seq: Sequence) -> int:
        """Tokens the draft must feed before proposing for seq (after rolling back)."""
        st = self.states.get(seq.seq_id)
        if st is None:
            return seq.num_tokens
        return seq.num_tokens - self._agreed(st, seq)

    @staticmethod
    def _agreed(st: DraftSeq, seq: Sequence) -> int:
        """Length of the prefix whose draft K/V match the sequence's tokens."""
        limit = min(st.num_computed_tokens, seq.num_tokens)
        m = min(st.confirmed, limit)
        while m < limit and st.token_ids[m] == seq.token_ids[m]:
            m += 1
        return m

    def max_k(self, seq: Sequence) -> int:
        # Proposal j's K/V sit at position num_tokens + j - 2 in the draft's cache.
        return max(0, self.max_model_len - seq.num_tokens + 1)

    @torch.inference_mode()
    def propose(self, plan: list[tuple[Sequence, int]]
                ) -> dict[int, tuple[list[int], torch.Tensor | None]]:
        """seq -> (proposals, draft distributions [k, V] for sampled sequences, else None)."""
        self.seconds = 0.0
        active: list[tuple[DraftSeq, int]] = []
        for seq, k in plan:
            st = self.states.get(seq.seq_id)
            if st is None:
                st = self.states[seq.seq_id] = DraftSeq(seq)
                if not seq.params.greedy and seq.generator is not None:
                    # Its own stream, seeded from the request's: draws stay reproducible.
                    st.generator = make_generator(seq.generator.initial_seed() ^ 0x5EED,
                                                  self.loaded.device)
            agreed = self._agreed(st, seq)
            st.num_computed_tokens = agreed  # K/V past this point belong to rejected proposals
            st.confirmed = agreed
            st.token_ids = list(seq.token_ids)
            if not self.pool.allocate(st, st.num_tokens - agreed + k - 1):
                continue  # draft cache full: this sequence goes without proposals this step
            active.append((st, k))
        out: dict[int, tuple[list[int], torch.Tensor | None]] = {}
        probs: dict[int, list[torch.Tensor]] = {}
        depth = 0
        while active:
            depth += 1
            sched = SchedulerOutput([ScheduledSeq(st, st.num_tokens - st.num_computed_tokens)
                                     for st, _ in active])
            t0 = time.perf_counter()
            seqs, logits = self.runner.execute(sched)
            self.seconds += time.perf_counter() - t0
            self.cost.record(sched.num_tokens, time.perf_counter() - t0)
            tokens = self._choose(seqs, logits, probs)
            for (st, _), tok in zip(active, tokens, strict=True):
                st.num_computed_tokens = st.num_tokens
                st.token_ids.append(tok)
            active = [(st, k) for st, k in active if k > depth]
        for st_id, props in self._collect(plan).items():
            rows = probs.get(st_id)
            out[st_id] = (props, torch.stack(rows) if rows else None)
        return out

    def _collect(self, plan: list[tuple[Sequence, int]]) -> dict[int, list[int]]:
        got: dict[int, list[int]] = {}
        for seq, k in plan:
            st = self.states.get(seq.seq_id)
            if st is None or st.num_tokens <= seq.num_tokens:
                continue
            got[seq.seq_id] = st.token_ids[seq.num_tokens:seq.num_tokens + k]
        return got

    def _choose(self, seqs: list[DraftSeq], logits: torch.Tensor,
                probs: dict[int, list[torch.Tensor]]) -> list[int]:
        """Greedy sequences get the draft's argmax; sampled ones a draw from its distribution."""
        tokens = logits.argmax(dim=-1).tolist()
        sampled = [i for i, s in enumerate(seqs) if not s.params.greedy]
        if sampled:
            rows = torch.tensor(sampled, device=logits.device)
            dist = filter_logits(logits[rows], [seqs[i] for i in sampled]).softmax(dim=-1)
            for j, i in enumerate(sampled):
                st = seqs[i]
                tokens[i] = int(torch.multinomial(dist[j], 1, generator=st.generator)[0])
                probs.setdefault(st.seq_id, []).append(dist[j])
        return tokens

    def release(self, seq_id: int) -> None:
        st = self.states.pop(seq_id, None)
        if st is not None:
            self.pool.free_seq(st)  # type: ignore[arg-type]

    def tracked(self) -> set[int]:
        return set(self.states)
