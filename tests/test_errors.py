"""User errors end as one line, `error: <message>`, with exit status 2 and no traceback; bugs keep
their traceback and exit 1 (train.py and eval.py run as users run them, as subprocesses)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]


def launch(script: str, args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *args, "extras.print_config=false"], cwd=cwd,
                          capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit status 2, no traceback, one `error:` line that holds every fragment; returns the message."""
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-4000:]
    assert "Traceback" not in output, output[-4000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr[-4000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0][len("error: "):]


@pytest.fixture
def bad_csv(tmp_path) -> Path:
    path = tmp_path / "bad.csv"
    path.write_text("text,label\ngreat film,pos\ndull film,neg,extra\n")
    return path


@pytest.mark.parametrize("args,fragments", [
    (["data.bogus_key=1"], ["Could not override 'data.bogus_key'", "+data.bogus_key=1"]),
    (["model=no_such_model"], ["model/no_such_model", "text_classifier"]),
    (["optimizer.lr=[1,"], ["optimizer.lr=[1,"]),
])
def test_config_composition_errors_are_one_line(tmp_path, args, fragments):
    assert_user_error(launch("train.py", args, tmp_path), *fragments)


def test_data_error_is_one_line(tiny_model_dir, bad_csv, tmp_path):
    result = launch("train.py", tiny_overrides(tiny_model_dir, bad_csv), tmp_path)
    assert_user_error(result, f"{bad_csv}:3", "3 fields, the header has 2")


def test_missing_files_are_one_line(tiny_model_dir, tmp_path):
    result = launch("train.py", tiny_overrides(tiny_model_dir, tmp_path / "missing.csv"), tmp_path)
    assert_user_error(result, "data.train_file: not found", str(tmp_path / "missing.csv"))
    result = launch("train.py", tiny_overrides(str(tmp_path / "no_model"), tmp_path / "missing.csv"), tmp_path)
    assert_user_error(result, f"model.pretrained={tmp_path / 'no_model'}: no such file or folder")
    assert_user_error(launch("eval.py", [f"ckpt_path={tmp_path / 'none.ckpt'}"], tmp_path), "no checkpoint at")
    assert_user_error(launch("eval.py", [], tmp_path), "ckpt_path: no value given")


def test_a_refused_setting_is_one_line(tiny_model_dir, sentiment_csv, tmp_path):
    result = launch("train.py", tiny_overrides(tiny_model_dir, sentiment_csv, ["model.pooling=bogus"]), tmp_path)
    assert_user_error(result, "model.pooling='bogus': expected 'cls' or 'mean'")


def test_full_trace_on_request(tiny_model_dir, bad_csv, tmp_path):
    result = launch("train.py", tiny_overrides(tiny_model_dir, bad_csv), tmp_path, env={"HYDRA_FULL_ERROR": "1"})
    assert result.returncode == 2
    assert "Traceback" in result.stderr and "DataError" in result.stderr
    assert f"error: {bad_csv}:3" in result.stderr


def test_a_bug_keeps_its_traceback_and_exits_1(tiny_model_dir, sentiment_csv, tmp_path):
    result = launch("train.py", tiny_overrides(tiny_model_dir, sentiment_csv, ["+callbacks.boom._target_=tests.probes.Boom"]),
                    tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" in result.stderr and "boom: a bug in a callback" in result.stderr
    assert "error: " not in result.stderr.splitlines()[-1]


def test_sweep_records_the_same_one_line_message(tiny_model_dir, sentiment_csv, tmp_path):
    overrides = tiny_overrides(tiny_model_dir, sentiment_csv, [f"paths.log_dir={tmp_path}", "model.pooling=bogus"])
    single = assert_user_error(launch("train.py", overrides, tmp_path))
    result = launch("train.py", ["-m", *overrides], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = next((tmp_path / "train" / "multiruns").iterdir())
    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["failed"]
    assert rows[0]["error"] == single


def test_optuna_sweep_with_a_bad_direction_is_one_line(tmp_path):
    """optimized_mode=maxx used to minimize silently; now the sweep stops before any trial."""
    result = launch("train.py", ["-m", "hparams_search=optuna", "optimized_mode=maxx", f"paths.log_dir={tmp_path}"],
                    tmp_path)
    assert_user_error(result, "optimized_mode='maxx' must be max or min")
    assert not list(tmp_path.rglob("metrics.json"))
