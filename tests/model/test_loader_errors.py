"""Each way a model can fail to load gives one ModelLoadError naming the file and the problem."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from inferd.config import ModelConfig
from inferd.model.errors import ModelLoadError
from inferd.model.loader import load_model


def load(path) -> None:
    load_model(ModelConfig(model=str(path), dtype="float32"))


def test_missing_path_names_it(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file or directory") as e:
        load(tmp_path / "nope.gguf")
    assert "nope.gguf" in str(e.value)


def test_unknown_alias_lists_bundled_models():
    with pytest.raises(ModelLoadError, match="smollm2-135m"):
        load("no-such-model")


def test_truncated_gguf(tmp_path, bundled_gguf):
    cut = tmp_path / "cut.gguf"
    with open(bundled_gguf, "rb") as src:
        cut.write_bytes(src.read(5_000_000))  # header intact, tensor data cut short
    with pytest.raises(ModelLoadError, match="truncated") as e:
        load(cut)
    assert "cut.gguf" in str(e.value)


def test_header_truncated_gguf(tmp_path, bundled_gguf):
    cut = tmp_path / "tiny.gguf"
    with open(bundled_gguf, "rb") as src:
        cut.write_bytes(src.read(1000))
    with pytest.raises(ModelLoadError, match="not a valid GGUF file: header is truncated"):
        load(cut)


def test_not_a_gguf(tmp_path):
    bad = tmp_path / "junk.gguf"
    bad.write_bytes(b"PK\x03\x04 this is a zip, not a model" * 10)
    with pytest.raises(ModelLoadError, match="missing GGUF magic"):
        load(bad)


def test_wrong_suffix(tmp_path):
    f = tmp_path / "model.bin"
    f.write_bytes(b"\0" * 100)
    with pytest.raises(ModelLoadError, match="unsupported file type"):
        load(f)


def test_unsupported_architecture(tmp_path, tiny_llama):
    d = tmp_path / "gpt2"
    shutil.copytree(tiny_llama, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="unsupported architecture .*GPT2LMHeadModel") as e:
        load(d)
    assert "config.json" in str(e.value)


def test_unsupported_dtype(tmp_path, tiny_llama):
    from safetensors.torch import load_file, save_file

    d = tmp_path / "int8"
    shutil.copytree(tiny_llama, d)
    f = d / "model.safetensors"
    tensors = load_file(str(f))
    name = next(iter(tensors))
    tensors[name] = tensors[name].to(torch.int8)
    save_file(tensors, str(f))
    with pytest.raises(ModelLoadError, match=f"tensor {name} has unsupported dtype torch.int8"):
        load(d)


def test_corrupt_safetensors(tmp_path, tiny_llama):
    d = tmp_path / "corrupt"
    shutil.copytree(tiny_llama, d)
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="corrupt or truncated safetensors") as e:
        load(d)
    assert "model.safetensors" in str(e.value)


def test_missing_tensor(tmp_path, tiny_llama):
    from safetensors.torch import load_file, save_file

    d = tmp_path / "missing"
    shutil.copytree(tiny_llama, d)
    f = d / "model.safetensors"
    tensors = load_file(str(f))
    del tensors["model.norm.weight"]
    save_file(tensors, str(f))
    with pytest.raises(ModelLoadError, match="lacks 1 tensors.*model.norm.weight"):
        load(d)


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="config.json missing"):
        load(tmp_path)


def test_cli_reports_load_errors_without_traceback(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "inferd.cli", "generate", "--model", str(tmp_path / "x.gguf"),
                        "--prompt", "hi"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "no such file or directory" in r.stderr
