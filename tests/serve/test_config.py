"""`inferd serve` flags and --config files -> which models are served, under which names, with
which engine settings (flags win over the file, per-model entries over its top level)."""

from __future__ import annotations

import pytest

from inferd.cli import build_parser
from inferd.engine_args import engine_config_from_args
from inferd.serve.cli import _defaults
from inferd.serve.config_file import ConfigError, check_unique, model_specs


def specs_for(argv: list[str]):
    args = build_parser().parse_args(["serve", *argv])
    return args, model_specs(args, _defaults())


def test_defaults():
    args, specs = specs_for([])
    assert [(s.model, s.names) for s in specs] == [("smollm2-135m", ["smollm2-135m"])]
    assert (args.host, args.port, args.shutdown_timeout, args.api_key) == ("127.0.0.1", 8000, 30.0, None)


def test_several_models_and_names():
    _, specs = specs_for(["--model", "a", "--model", "b", "--served-model-name", "x", "x2",
                          "--served-model-name", "y"])
    assert [(s.model, s.names) for s in specs] == [("a", ["x", "x2"]), ("b", ["y"])]
    _, specs = specs_for(["--model", "a", "--served-model-name", "x", "--served-model-name", "y"])
    assert specs[0].names == ["x", "y"]  # one model: every name is an alias
    with pytest.raises(ConfigError, match="once per --model"):
        specs_for(["--model", "a", "--model", "b", "--served-model-name", "x"])


def test_yaml_config(tmp_path):
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("port: 9000\nhost: 0.0.0.0\nkv-cache-memory: 0.5\nmax_num_seqs: 8\n"
                   "models:\n  - smollm2-135m\n  - model: /models/other\n"
                   "    served_model_name: [other, gpt-4o-mini]\n    max-num-seqs: 2\n")
    args, specs = specs_for(["--config", str(cfg), "--port", "7000"])
    assert args.port == 7000  # the flag wins
    assert args.host == "0.0.0.0" and args.kv_cache_memory == 0.5
    assert [(s.model, s.names) for s in specs] == [("smollm2-135m", ["smollm2-135m"]),
                                                   ("/models/other", ["other", "gpt-4o-mini"])]
    first = engine_config_from_args(specs[0].engine_args(args), model=specs[0].model)
    second = engine_config_from_args(specs[1].engine_args(args), model=specs[1].model)
    assert first.scheduler.max_num_seqs == 8 and second.scheduler.max_num_seqs == 2
    assert second.cache.kv_cache_memory_gib == 0.5 and second.model.model == "/models/other"


def test_toml_config(tmp_path):
    cfg = tmp_path / "serve.toml"
    cfg.write_text('metrics_compat = "vllm"\n[[models]]\nmodel = "a"\nserved_model_name = "alpha"\n')
    args, specs = specs_for(["--config", str(cfg)])
    assert args.metrics_compat == "vllm" and specs[0].names == ["alpha"]


@pytest.mark.parametrize("text,match", [
    ("models:\n  - model: a\n    frobnicate: 1\n", "unknown setting 'frobnicate'"),
    ("warp_speed: 9\n", "unknown setting 'warp_speed'"),
    ("models:\n  - {served_model_name: x}\n", "needs a 'model'"),
    ("models: []\n", "lists no models"),
    ("- just\n- a list\n", "mapping"),
    ("models: [unclosed\n", "not valid YAML"),
])
def test_bad_config_files(tmp_path, text, match):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=match):
        specs_for(["--config", str(cfg)])


def test_models_in_both_places_or_missing_file(tmp_path):
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("models: [a]\n")
    with pytest.raises(ConfigError, match="not both"):
        specs_for(["--config", str(cfg), "--model", "b"])
    with pytest.raises(ConfigError, match="cannot read"):
        specs_for(["--config", str(tmp_path / "missing.yaml")])


def test_duplicate_names():
    _, specs = specs_for(["--model", "a", "--model", "b", "--served-model-name", "x",
                          "--served-model-name", "x"])
    with pytest.raises(ConfigError, match="used twice"):
        check_unique(specs)


def test_cli_reports_config_errors(tmp_path, capsys):
    from inferd.cli import main

    cfg = tmp_path / "bad.yaml"
    cfg.write_text("warp_speed: 9\n")
    assert main(["serve", "--config", str(cfg)]) == 2
    assert "unknown setting 'warp_speed'" in capsys.readouterr().err


def test_api_keys_from_a_file_or_the_environment(tmp_path, monkeypatch):
    from inferd.serve.auth import tenant_of
    from inferd.serve.cli import _api_keys

    key_file = tmp_path / "keys"
    key_file.write_text("# team keys\nsk-alone\nacme sk-a1\nacme sk-a2\n\n")
    monkeypatch.setenv("INFERD_API_KEY", "sk-from-env")
    args, _ = specs_for(["--api-key-file", str(key_file)])
    assert _api_keys(args) == {"sk-alone": tenant_of("sk-alone"), "sk-a1": "acme", "sk-a2": "acme"}
    assert "sk-alone" not in tenant_of("sk-alone")
    args, _ = specs_for([])
    assert _api_keys(args) == {"sk-from-env": tenant_of("sk-from-env")}
    monkeypatch.delenv("INFERD_API_KEY")
    assert _api_keys(specs_for([])[0]) == {}
    (tmp_path / "empty").write_text("\n# nothing\n")
    (tmp_path / "bad").write_text("a b c\n")
    for path, message in ((tmp_path / "empty", "is empty"), (tmp_path / "missing", "cannot read"),
                          (tmp_path / "bad", "TENANT KEY")):
        args, _ = specs_for(["--api-key-file", str(path)])
        with pytest.raises(ConfigError, match=message):
            _api_keys(args)


def test_access_log_never_holds_a_key_from_the_query_string():
    import logging

    from inferd.serve.access_log import RedactSecretsFilter, redact_target

    assert redact_target("/v1/models?api_key=sk-1&x=2") == "/v1/models?api_key=REDACTED&x=2"
    assert redact_target("/v1/models?x=1&key=sk-1&token=t&monkey=ok") == \
        "/v1/models?x=1&key=REDACTED&token=REDACTED&monkey=ok"
    assert redact_target("/tokenizer_info?model=tiny") == "/tokenizer_info?model=tiny"
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5", "GET", "/v1/models?API_KEY=sk-secret", "1.1", 401), None)
    assert RedactSecretsFilter().filter(record)
    assert "sk-secret" not in record.getMessage() and "API_KEY=REDACTED" in record.getMessage()
