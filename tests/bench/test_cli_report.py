"""The CLI end to end: table on stdout, --json records, --plot PNGs, --compare ratios, exit codes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from inferd.bench.cli import add_bench_parser, main
from inferd.bench.report import compare, load_json

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_cli(url: str, *extra: str) -> int:
    return main(
        [
            "--base-url",
            url,
            "--model",
            "fake",
            "--input-len",
            "30",
            "--output-len",
            "5",
            "--num-requests",
            "6",
            "--no-progress",
            *extra,
        ]
    )


def test_cli_writes_table_json_and_plots(fake_server, tmp_path: Path, capsys) -> None:
    url, _ = fake_server
    out_json, plot_dir = tmp_path / "a.json", tmp_path / "plots"
    rc = run_cli(
        url,
        "--concurrency",
        "1,2",
        "--slo",
        "ttft=5s,itl=5s",
        "--gpu-hour-price",
        "2.5",
        "--api-key",
        "sk-secret",
        "--label",
        "fake-a",
        "--json",
        str(out_json),
        "--plot",
        str(plot_dir),
    )
    assert rc == 0
    out = capsys.readouterr().out
    for needle in (
        "=== concurrency=1 ===",
        "=== concurrency=2 ===",
        "TTFT",
        "ITL",
        "TPOT",
        "E2E",
        "Goodput      100.0%",
        "per 1M output tokens",
        "Spec decode  acceptance 70.0%",
        "Counted by   output: server usage (100%)",
        "ok/fail",
    ):
        assert needle in out

    data = json.loads(out_json.read_text())
    assert data["config"]["api_key"] == "***" and "sk-secret" not in out_json.read_text()
    assert data["config"]["label"] == "fake-a"
    assert [r["label"] for r in data["runs"]] == ["concurrency=1", "concurrency=2"]
    record = data["runs"][0]["records"][0]
    for key in (
        "send_time",
        "first_token_time",
        "token_times",
        "usage",
        "error",
        "ttft",
        "e2e",
        "tpot",
        "output_tokens",
        "prompt_tokens",
        "output_token_source",
    ):
        assert key in record
    assert len(record["token_times"]) == 5 and record["usage"]["completion_tokens"] == 5
    assert "output_text" not in record

    pngs = sorted(plot_dir.glob("*.png"))
    assert [p.name for p in pngs] == [
        "itl_cdf.png",
        "latency_percentiles.png",
        "throughput.png",
        "ttft_cdf.png",
    ]
    for p in pngs:
        blob = p.read_bytes()
        assert blob.startswith(PNG_MAGIC) and len(blob) > 5000


def test_compare_prints_ratios(fake_server, tmp_path: Path, capsys) -> None:
    url, _ = fake_server
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert run_cli(url, "--json", str(a), "--label", "first") == 0
    assert run_cli(url, "--json", str(b), "--output-len", "10") == 0
    capsys.readouterr()
    assert main(["--compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "A = first" in out and "=== concurrency=1 ===" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("output throughput"))
    ratio = float(line.split()[-2]) if line.split()[-1] in ("A", "B") else float(line.split()[-1])
    assert ratio > 1.0  # twice the tokens per request at the same request pace
    # comparing a result with itself gives ratios of exactly 1
    same = compare(load_json(a), load_json(a))
    rows = [ln for ln in same.splitlines() if "  " in ln and not ln.startswith(("metric", "==="))]
    assert rows and all(not ln.rstrip().endswith((" A", " B")) for ln in rows)
    assert "1.000" in same


def test_compare_rejects_non_result_files(tmp_path: Path, capsys) -> None:
    bogus = tmp_path / "x.json"
    bogus.write_text("{}")
    assert main(["--compare", str(bogus), str(bogus)]) == 2
    assert "not an inferd bench JSON" in capsys.readouterr().err


def test_exit_codes_for_bad_input(tmp_path: Path, capsys) -> None:
    assert main(["--base-url", "http://127.0.0.1:9/v1"]) == 2  # no --model
    assert (
        main(["--model", "m", "--dataset", str(tmp_path / "missing.jsonl"), "--no-progress"]) == 2
    )
    with pytest.raises(SystemExit):
        main(["--model", "m", "--slo", "speed=3"])
    # nothing listens on port 9: every request fails, exit code 1
    assert (
        main(
            [
                "--base-url",
                "http://127.0.0.1:9/v1",
                "--model",
                "m",
                "--num-requests",
                "2",
                "--no-progress",
                "--timeout",
                "5",
            ]
        )
        == 1
    )
    assert "connect error: 2" in capsys.readouterr().out


def test_subcommand_registration() -> None:
    parser = argparse.ArgumentParser(prog="inferd")
    sub = parser.add_subparsers(dest="command")
    add_bench_parser(sub)
    args = parser.parse_args(
        [
            "bench",
            "--model",
            "m",
            "--concurrency",
            "1,8,32",
            "--request-rate",
            "2,inf",
            "--slo",
            "ttft=200ms",
            "--no-ignore-eos",
        ]
    )
    assert callable(args.func)
    assert args.concurrency == (1, 8, 32) and args.request_rate == (2.0, float("inf"))
    assert args.slo.ttft_ms == 200.0 and args.ignore_eos is False


def test_rate_sweep_with_infinite_rate_plots(fake_server, tmp_path: Path) -> None:
    url, _ = fake_server
    plot_dir = tmp_path / "plots"
    assert run_cli(url, "--request-rate", "50,inf", "--plot", str(plot_dir)) == 0
    assert len(list(plot_dir.glob("*.png"))) == 4
