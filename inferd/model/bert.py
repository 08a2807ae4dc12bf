"""inferd's BERT-family encoder: token ids in, last hidden states out, for embedding models.

It runs a flat packed batch (every sequence's tokens one after another, no padding) through the
linears and pads only inside attention, where each sequence sees its own keys. Sizes come from
config.json; weights from HF safetensors names. Pooling and tokenization live elsewhere.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from inferd.model.errors import ModelLoadError
from inferd.model.safetensors_loader import read_safetensors_shards

# hidden_act values as transformers' ACT2FN spells them; "gelu" is the exact erf form.
_ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}
ENCODER_MODEL_TYPES = ("bert",)


@dataclass(frozen=True)
class BertConfig:
    """The config.json fields the encoder needs (HF BertConfig names)."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    pad_token_id: int = 0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, cfg: dict) -> BertConfig:
        """Refuses what this encoder would compute wrongly instead of loading it anyway."""
        if cfg.get("model_type") not in ENCODER_MODEL_TYPES:
            raise ValueError(f"model_type {cfg.get('model_type')!r} is not a BERT encoder "
                             f"(supported: {', '.join(ENCODER_MODEL_TYPES)})")
        if cfg.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"position_embedding_type {cfg['position_embedding_type']!r} is not "
                             "supported (only absolute)")
        if cfg.get("is_decoder") or cfg.get("add_cross_attention"):
            raise ValueError("decoder/cross-attention BERT configs are not encoders")
        act = cfg.get("hidden_act", "gelu")
        if act not in _ACTIVATIONS:
            raise ValueError(f"hidden_act {act!r} is not supported ({', '.join(_ACTIVATIONS)})")
        if cfg["hidden_size"] % cfg["num_attention_heads"]:
            raise ValueError("hidden_size is not a multiple of num_attention_heads")
        fields = cls.__dataclass_fields__
        return cls(**{k: cfg[k] for k in fields if k in cfg and cfg[k] is not None})

    @classmethod
    def from_dir(cls, directory: Path) -> BertConfig:
        path = directory / "config.json"
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelLoadError(str(path), f"unreadable config.json ({exc})") from None
        except ValueError as exc:
            raise ModelLoadError(str(path), str(exc)) from None
        except KeyError as exc:
            raise ModelLoadError(str(path), f"config.json lacks required key {exc}") from None


# Attention runs per group of equal-length neighbours when there are at most this many groups
# (the Embedder sorts batches by length, so a batch has one group per distinct length): no
# padding, gather or mask at all. More groups use the padded grid instead: each group is a few
# small ops, and on a busy machine many small multi-threaded ops measured slower than the grid's
# few big ones (256 texts of 17 lengths, 2 threads, load ~9: grid 8.0 s, runs 11.3 s).
MAX_LENGTH_RUNS = 8


@dataclass(frozen=True)
class PackedBatch:
    """Sequences laid end to end: `ids` [T], `positions` [T] (0.. per sequence), and how
    attention sees them: `runs` of neighbouring equal-length sequences (token offset, count,
    length), or, when there are too many runs, the index that scatters tokens into a
    right-padded [B, L] grid (`grid`, `valid`)."""

    ids: torch.Tensor
    positions: torch.Tensor
    lengths: torch.Tensor  # [B], int64
    grid: torch.Tensor  # [B, L] flat token index per slot (0 where padding)
    valid: torch.Tensor  # [B, L] bool: slot holds a token
    runs: tuple[tuple[int, int, int], ...] | None = None

    @classmethod
    def from_sequences(cls, seqs: list[list[int]], device: torch.device | str = "cpu") -> PackedBatch:
        lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
        if not len(seqs) or int(lengths.min()) == 0:
            raise ValueError("every sequence needs at least one token")
        ids = torch.tensor([t for s in seqs for t in s], dtype=torch.long)
        starts = torch.cumsum(lengths, 0) - lengths
        slots = torch.arange(int(lengths.max()))
        valid = slots[None, :] < lengths[:, None]
        grid = torch.where(valid, starts[:, None] + slots[None, :], 0)
        positions = slots.expand_as(grid)[valid]
        return cls(ids.to(device), positions.to(device), lengths.to(device), grid.to(device),
                   valid.to(device), _length_runs([len(s) for s in seqs]))


def _length_runs(lengths: list[int]) -> tuple[tuple[int, int, int], ...] | None:
    """(token offset, sequences, length) per run of equal neighbouring lengths; None if too many."""
    runs: list[tuple[int, int, int]] = []
    offset = 0
    for n in lengths:
        if runs and runs[-1][2] == n:
            start, count, _ = runs[-1]
            runs[-1] = (start, count + 1, n)
        else:
            runs.append((offset, 1, n))
        offset += n
    return tuple(runs) if len(runs) <= MAX_LENGTH_RUNS else None


class BertLayer(nn.Module):
    """One post-norm transformer layer: LN(x + attn(x)), then LN(h + ffn(h)); q/k/v fused."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        h = cfg.hidden_size
        self.heads, self.head_dim, self.eps = cfg.num_attention_heads, cfg.head_dim, cfg.layer_norm_eps
        self.qkv = nn.Linear(h, 3 * h)
        self.attn_out = nn.Linear(h, h)
        self.attn_norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.ffn_in = nn.Linear(h, cfg.intermediate_size)
        self.ffn_out = nn.Linear(cfg.intermediate_size, h)
        self.ffn_norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.act = _ACTIVATIONS[cfg.hidden_act]

    def attention(self, x: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        """x [T, H] -> [T, H]. Sorted batches take one unmasked SDPA call per length. Otherwise
        padding lives only here: the packed q/k/v are gathered into the [B, L] grid so one SDPA
        call with a key mask covers the batch; measured faster on CPU than a block-diagonal
        [T, T] mask or one call per sequence."""
        t, h = x.shape
        qkv = self.qkv(x).view(t, 3, self.heads, self.head_dim)
        if batch.runs is not None:
            return self._attention_by_runs(qkv, batch.runs)
        grid = qkv[batch.grid]  # [B, L, 3, heads, head_dim]
        q, k, v = grid.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, L, head_dim]
        mask = batch.valid[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, heads, L, head_dim]
        return out.transpose(1, 2)[batch.valid].reshape(t, h)

    def _attention_by_runs(self, qkv: torch.Tensor, runs: tuple[tuple[int, int, int], ...]) -> torch.Tensor:
        """Equal-length neighbours form a dense [n, heads, L, head_dim] view of the packed qkv:
        one unmasked SDPA call per run writes straight into the packed output (no padding;
        measured faster than the grid when sorted batches hold few distinct lengths)."""
        t = qkv.shape[0]
        out = torch.empty(t, self.heads, self.head_dim, dtype=qkv.dtype, device=qkv.device)
        for start, n, length in runs:
            part = qkv[start:start + n * length].view(n, length, 3, self.heads, self.head_dim)
            q, k, v = part.permute(2, 0, 3, 1, 4).unbind(0)  # each [n, heads, L, head_dim]
            o = F.scaled_dot_product_attention(q, k, v)
            out[start:start + n * length].view(n, length, self.heads, self.head_dim).copy_(o.transpose(1, 2))
        return out.view(t, self.heads * self.head_dim)

    def forward(self, x: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        x = self.attn_norm(x + self.attn_out(self.attention(x, batch)))
        return self.ffn_norm(x + self.ffn_out(self.act(self.ffn_in(x))))


class BertEncoder(nn.Module):
    """Embeddings (word + absolute position + token type 0, then LayerNorm) and the layers.

    Every input is one segment (token type 0), as sentence-transformers and vLLM embed text.
    """

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.config = cfg
        self.word = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.embed_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        """Last hidden states [T, H] of the packed batch, in the weights' dtype."""
        x = self.word(batch.ids) + self.position(batch.positions) + self.token_type.weight[0]
        x = self.embed_norm(x)
        for layer in self.layers:
            x = layer(x, batch)
        return x

    def load_hf_state(self, tensors: dict[str, torch.Tensor], source: str) -> None:
        """Copy HF BertModel weights in (a `bert.` prefix, as task-head checkpoints have, is
        dropped; the unused pooler/MLM heads are ignored); q/k/v are concatenated here."""
        tensors = {k.removeprefix("bert."): v for k, v in tensors.items()}
        state: dict[str, torch.Tensor] = {}

        def take(ours: str, theirs: str) -> None:
            if theirs not in tensors:
                raise ModelLoadError(source, f"weight {theirs} missing")
            state[ours] = tensors[theirs]

        for ours, theirs in (("word", "word_embeddings"), ("position", "position_embeddings"),
                             ("token_type", "token_type_embeddings")):
            take(f"{ours}.weight", f"embeddings.{theirs}.weight")
        for p in ("weight", "bias"):
            take(f"embed_norm.{p}", f"embeddings.LayerNorm.{p}")
            for i in range(self.config.num_hidden_layers):
                hf = f"encoder.layer.{i}."
                parts = []
                for name in ("query", "key", "value"):
                    take(f"_{name}", f"{hf}attention.self.{name}.{p}")
                    parts.append(state.pop(f"_{name}"))
                state[f"layers.{i}.qkv.{p}"] = torch.cat(parts)
                for ours, theirs in (("attn_out", "attention.output.dense"),
                                     ("attn_norm", "attention.output.LayerNorm"),
                                     ("ffn_in", "intermediate.dense"), ("ffn_out", "output.dense"),
                                     ("ffn_norm", "output.LayerNorm")):
                    take(f"layers.{i}.{ours}.{p}", f"{hf}{theirs}.{p}")
        try:
            self.load_state_dict(state, strict=True)
        except RuntimeError as exc:  # shape mismatch: weights disagree with config.json
            raise ModelLoadError(source, f"weights do not match config.json ({exc})") from None


def read_float_tensors(directory: Path) -> dict[str, torch.Tensor]:
    """All float tensors of the directory's *.safetensors files. Integer buffers old BERT
    checkpoints carry (`embeddings.position_ids`) are skipped: positions are computed here."""
    return {k: v for _, shard in read_safetensors_shards(directory) for k, v in shard.items()
            if v.is_floating_point()}


def load_bert_encoder(directory: Path, dtype: torch.dtype = torch.float32,
                      device: torch.device | str = "cpu") -> BertEncoder:
    """Build the encoder config.json describes and load its safetensors weights, in eval mode."""
    cfg = BertConfig.from_dir(directory)
    with torch.device("meta"):
        model = BertEncoder(cfg)
    model = model.to_empty(device="cpu")
    model.load_hf_state(read_float_tensors(directory), str(directory))
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)
