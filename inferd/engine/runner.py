"""ModelRunner: turns a SchedulerOutput into tensors, runs the model once, and samples.

It owns the KV-cache tensors and the model; it never decides what to run. One call = one
forward pass over a flat batch (decode tokens first, then prefill chunks), logits only for rows
that sample, one sampler call.
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil
import torch

from inferd.config import CacheConfig
from inferd.engine.sampler import SampleResult, sample, top_logprobs
from inferd.engine.scheduler import SchedulerOutput
from inferd.engine.sequence import Sequence
from inferd.kernels import cpu_ops
from inferd.kernels.attention import AttentionMetadata
from inferd.kernels.cpu_linear import pack_linears
from inferd.kernels.kv_quant import QuantizedKV
from inferd.kernels.lazy_zeros import lazy_zeros
from inferd.kernels.native_stack import NativeStack
from inferd.kernels.weight_arena import move_to_hugepages
from inferd.model.loader import LoadedModel
from inferd.structured.masks import GrammarMasker, StepMasks

GIB = 1 << 30
# CPU GEMMs take a different kernel for very few rows (gemv for 1 row; fp32 also for 2-3)
# than for more, and the kernels round differently. Padding every GEMM to 4 rows keeps each
# row's result, hence greedy output, independent of batch size (tests pin it, fp32 and bf16).
# Quantized layers need no padding: inferd's kernels and, without them, torch's int8/int4
# kernels compute every row on its own (each layer's `rows_independent` says so).
MIN_ROWS_CPU = 4


@dataclass
class StepResult:
    """Per scheduled sequence that sampled: the row results, in scheduling order."""

    seqs: list[Sequence]
    sampled: SampleResult
    spec_logits: dict[int, torch.Tensor]  # seq_id -> [k+1, V] logits for speculative verification
    prompt_logprobs: dict[int, list]  # seq_id -> logprob entries for this chunk's prompt tokens
    masks: StepMasks | None = None  # grammar masks of constrained rows (and verification rows)


def kv_block_bytes(loaded: LoadedModel, cache: CacheConfig, dtype: torch.dtype) -> int:
    a = loaded.arch
    per_token_head = (QuantizedKV.bytes_per_token_head(a.head_dim) if cache.kv_cache_dtype != "auto"
                      else a.head_dim * dtype.itemsize)
    return 2 * a.num_layers * cache.block_size * a.num_kv_heads * per_token_head


def plan_num_blocks(loaded: LoadedModel, cache: CacheConfig, dtype: torch.dtype,
                    max_num_seqs: int | None = None, max_model_len: int | None = None) -> int:
    """Blocks that fit the configured memory (GiB); or, sized from free memory, what the workload
    can use (max_num_seqs full-length sequences) capped by a fraction of free memory."""
    per_block = kv_block_bytes(loaded, cache, dtype)
    if cache.kv_cache_memory_gib is not None:
        return max(2, int(cache.kv_cache_memory_gib * GIB // per_block))
    if loaded.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(loaded.device)
        budget = min(free * 0.8, free * max(cache.memory_fraction, 0.5))
    else:
        budget = min(psutil.virtual_memory().available * cache.memory_fraction,
                     cache.max_kv_cache_gib * GIB)
    blocks = int(budget // per_block)
    if max_num_seqs and max_model_len:  # more could never be held at once (+1: the null block)
        blocks = min(blocks, max_num_seqs * -(-max_model_len // cache.block_size) + 1)
    return max(2, blocks)


class ModelRunner:
    def __init__(self, loaded: LoadedModel, cache: CacheConfig, num_blocks: int):
        self.loaded = loaded
        self.model = loaded.model
        self.device = loaded.device
        pack_linears(self.model)  # CPU float layers only; idempotent (packed layers are skipped)
        if self.device.type == "cpu":
            cpu_ops.available()  # build or load the fused kernels now, not during the first request
            move_to_hugepages(self.model)  # before the stack is built: it holds the tensors
            if hasattr(self.model, "native_stack"):
                self.model.native_stack = NativeStack.build(self.model, loaded.dtype)
        self.block_size = cache.block_size
        self.num_blocks = num_blocks
        a = loaded.arch
        self.kv_caches = [(self._kv_store(cache, num_blocks), self._kv_store(cache, num_blocks))
                          for _ in range(a.num_layers)]
        self.min_rows = self._min_rows(self.model.model)
        self.min_logit_rows = self._min_rows(self.model.lm_head)
        self.eos_ids = loaded.tokenizer.eos_token_ids
        self.masker = GrammarMasker(loaded.arch.vocab_size)

    def _kv_store(self, cache: CacheConfig, num_blocks: int):
        a = self.loaded.arch
        if cache.kv_cache_dtype == "auto":
            return lazy_zeros((num_blocks, cache.block_size, a.num_kv_heads, a.head_dim),
                              self.loaded.dtype, self.device)
        return QuantizedKV(num_blocks, cache.block_size, a.num_kv_heads, a.head_dim, cache.kv_cache_dtype,
                           self.device, self.loaded.dtype)

    def _min_rows(self, part: torch.nn.Module) -> int:
        """MIN_ROWS_CPU, unless every matmul of `part` runs a row-independent CPU kernel
        (quantized layers, with or without inferd's native kernels): padding rows would then
        only cost time."""
        if self.device.type != "cpu":
            return 1
        matmuls = [m for m in part.modules() if hasattr(m, "in_features")]
        if matmuls and all(getattr(m, "rows_independent", False) for m in matmuls):
            return 1
        return MIN_ROWS_CPU

    def _pad(self, n: int, min_rows: int | None = None) -> int:
        return max(0, (self.min_rows if min_rows is None else min_rows) - n)

    @torch.inference_mode()
    def execute(self, sched: SchedulerOutput, spec_tokens: dict[int, list[int]] | None = None
                ) -> StepResult:
        bs = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        query_start = [0]
        seq_lens: list[int] = []
        query_lens: list[int] = []
        tables: list[list[int]] = []
        num_decodes = 0
        sample_rows: list[int] = []  # flat row whose hidden state feeds the sampler
        sample_seqs: list[Sequence] = []
        spec_rows: dict[int, tuple[int, int]] = {}
        verified: dict[int, list[int]] = {}  # seq_id -> the proposals this forward verifies
        prompt_lp_rows: dict[int, tuple[Sequence, int, int, int]] = {}
        for entry in sched.scheduled:
            seq = entry.seq
            start = seq.num_computed_tokens
            real = entry.num_tokens - entry.num_spec
            toks = seq.token_ids[start:start + real]
            if entry.num_spec:
                toks = toks + spec_tokens[seq.seq_id][:entry.num_spec]
            n = len(toks)
            row0 = len(input_ids)
            input_ids.extend(toks)
            positions.extend(range(start, start + n))
            table = seq.block_table
            slots.extend(table[p // bs] * bs + p % bs for p in range(start, start + n))
            if entry.num_spec and num_decodes == len(seq_lens):
                # Speculative verification: each row attends as the decode of its position would
                # (one query over its own prefix, batched decode path), so accepted tokens and
                # their K/V are bitwise those of plain decoding, in bf16 too.
                for j in range(1, n + 1):
                    query_start.append(row0 + j)
                    seq_lens.append(start + j)
                    query_lens.append(1)
                    tables.append(table)
                num_decodes += n
            else:
                if n == 1 and num_decodes == len(seq_lens):
                    # Only a leading run of one-token queries takes the batched decode path; a
                    # one-token prefill chunk after a longer one stays in the per-sequence path.
                    num_decodes += 1
                query_start.append(row0 + n)
                seq_lens.append(start + n)
                query_lens.append(n)
                tables.append(table)
            if seq.prompt_logprobs is not None and start < seq.prompt_len:
                prompt_lp_rows[seq.seq_id] = (seq, row0, min(n, seq.prompt_len - start), start)
            if entry.samples:
                last = row0 + real - 1
                sample_rows.append(last)
                sample_seqs.append(seq)
                if entry.num_spec:
                    spec_rows[seq.seq_id] = (last, entry.num_spec + 1)
                    verified[seq.seq_id] = spec_tokens[seq.seq_id][:entry.num_spec]
        pad = self._pad(len(input_ids))
        input_ids.extend([0] * pad)
        positions.extend([0] * pad)
        slots.extend(range(pad))  # the null block absorbs padding rows
        width = max(len(t) for t in tables)
        dev = self.device
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.long, device=dev),
            block_tables=torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.long, device=dev),
            seq_lens=seq_lens, query_lens=query_lens,
            seq_lens_t=torch.tensor(seq_lens, dtype=torch.long, device=dev),
            query_start=query_start, block_size=bs, max_seq_len=max(seq_lens),
            num_decodes=num_decodes, sliding_window=self.loaded.arch.sliding_window,
        )
        # Grammar masks depend only on tokens already emitted: computed while the model runs.
        masks = self.masker.start(sample_seqs, verified)
        hidden = self.model(torch.tensor(input_ids, device=dev), torch.tensor(positions, device=dev),
                            self.kv_caches, meta)
        return self._sample(hidden, sample_rows, sample_seqs, spec_rows, prompt_lp_rows,
                            masks.result() if masks is not None else None)

    def _logits(self, hidden: torch.Tensor, rows: list[int]) -> torch.Tensor:
        n = len(rows)
        idx = torch.tensor(rows + [rows[-1]] * self._pad(n, self.min_logit_rows), device=self.device)
        return self.model.compute_logits(hidden[idx])[:n]

    def _sample(self, hidden, sample_rows, sample_seqs, spec_rows, prompt_lp_rows,
                masks: StepMasks | None = None) -> StepResult:
        spec_logits: dict[int, torch.Tensor] = {}
        prompt_lps: dict[int, list] = {}
        if not sample_rows:
            return StepResult([], SampleResult([], [], []), spec_logits,
                              self._prompt_logprobs(hidden, prompt_lp_rows))
        # One lm_head GEMM for the sampled rows and every verification row (a GEMM per
        # sequence would read the whole vocabulary matrix once per sequence).
        rows = list(sample_rows)
        first_spec = {}
        for seq_id, (row, count) in spec_rows.items():
            first_spec[seq_id] = len(rows)
            rows.extend(range(row + 1, row + count))
        all_logits = self._logits(hidden, rows)
        logits = all_logits[:len(sample_rows)]
        index = {r: i for i, r in enumerate(sample_rows)}
        for seq_id, (row, count) in spec_rows.items():
            s = first_spec[seq_id]
            spec_logits[seq_id] = torch.cat([logits[index[row]:index[row] + 1],
                                             all_logits[s:s + count - 1]])
        prompt_lps = self._prompt_logprobs(hidden, prompt_lp_rows)
        result = sample(logits, sample_seqs, self.eos_ids, masks)
        return StepResult(sample_seqs, result, spec_logits, prompt_lps, masks)

    def _prompt_logprobs(self, hidden, prompt_lp_rows) -> dict[int, list]:
        """Logprob of each next prompt token given its prefix (for echo + logprobs)."""
        out: dict[int, list] = {}
        for seq_id, (seq, row0, count, start) in prompt_lp_rows.items():
            # Row r predicts token start + r + 1; the last prompt token predicts the first output.
            pairs = [(row0 + r, start + r + 1) for r in range(count) if start + r + 1 < seq.prompt_len]
            if not pairs:
                continue
            lp = torch.log_softmax(self._logits(hidden, [p[0] for p in pairs]), dim=-1)
            k = seq.params.prompt_logprobs or 0
            out[seq_id] = [top_logprobs(lp[i], seq.token_ids[tok], k) for i, (_, tok) in enumerate(pairs)]
        return out
