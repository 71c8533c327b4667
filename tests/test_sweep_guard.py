"""A sweep whose optimized metric cannot be logged is refused up front; one that ends without it says so."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict

from sft.sweep import never_validates, refuse_hopeless_sweep, write_summary
from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]


# The tiny data: 320 records, 256 after the val/test shares, batches of 16: 16 batches an epoch.
@pytest.mark.parametrize("overrides,expected", [
    (["trainer.max_steps=4"], r"first validation comes after about 16 training batches"),  # val_check_interval=1.0
    (["trainer.max_steps=4", "trainer.val_check_interval=0.5"], r"about 8 training batches"),
    (["trainer.max_steps=4", "trainer.val_check_interval=2"], None),
    (["trainer.max_steps=4", "trainer.val_check_interval=10"], r"after 10 training batches"),
    (["trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.accumulate_grad_batches=4"], None),
    (["trainer.max_steps=20"], None),
    (["trainer.max_steps=20", "trainer.check_val_every_n_epoch=2"], r"about 32 training batches"),
    (["trainer.limit_val_batches=0"], r"limit_val_batches=0 turns validation off"),
    (["trainer.max_epochs=2", "trainer.check_val_every_n_epoch=3"], r"check_val_every_n_epoch=3"),
    (["trainer.max_steps=4", "optimized_metric=test/acc"], None),  # the test always reports it
])
def test_never_validates(make_train_cfg, overrides, expected):
    why = never_validates(make_train_cfg(overrides))
    if expected is None:
        assert why is None
    else:
        assert why is not None
        assert __import__("re").search(expected, why), why


def test_a_swept_validation_setting_is_left_to_the_jobs(make_train_cfg):
    cfg = make_train_cfg(["trainer.max_steps=4"])
    assert "no job would ever log it" in refuse_hopeless_sweep(cfg)
    plain = OmegaConf.create(OmegaConf.to_container(cfg))  # writable, as the sweep's config would hold them
    plain.hydra.overrides.task = ["trainer.max_steps=4,40"]
    assert refuse_hopeless_sweep(plain) is None
    plain.hydra.overrides.task = []
    with open_dict(plain):
        plain.hydra.sweeper.params = {"trainer.val_check_interval": "choice(2, 0.5)"}
    assert refuse_hopeless_sweep(plain) is None


def test_summary_marks_a_job_without_its_metric_failed(tmp_path):
    for job, metrics in (("0", {"val/acc": 0.8, "test/acc": 0.75}), ("1", {"test/acc": 0.5})):
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / "metrics.json").write_text(json.dumps(metrics))
        (tmp_path / job / "config.yaml").write_text(OmegaConf.to_yaml({"trainer": {"max_steps": 4,
                                                                                  "val_check_interval": 0.5}}))
    rows = {r["job"]: r for r in write_summary(tmp_path, "val/acc", "max")}
    assert rows[0]["status"] == "ok"
    assert rows[1]["status"] == "failed"
    assert "optimized_metric=val/acc was never logged: no validation ran" in rows[1]["error"]
    assert "trainer.max_steps=4" in rows[1]["error"]
    assert "failed" in (tmp_path / "summary.csv").read_text().splitlines()[2]


def _sweep(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), "-m", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def test_optuna_sweep_that_cannot_validate_is_refused_before_any_trial(tiny_model_dir, sentiment_csv, tmp_path):
    overrides = tiny_overrides(tiny_model_dir, sentiment_csv, ["trainer.max_steps=4", "logger=none",
                                                                f"paths.log_dir={tmp_path}"])
    result = _sweep(["hparams_search=optuna", "hydra.sweeper.n_trials=3", *overrides], tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "optimized_metric=val/acc" in result.stderr and "trainer.max_steps=4" in result.stderr
    jobs = list((tmp_path / "train" / "multiruns").rglob("metrics.json")) if (tmp_path / "train").exists() else []
    assert jobs == []


def test_grid_job_that_never_validated_is_failed_in_summary(tiny_model_dir, sentiment_csv, tmp_path):
    overrides = tiny_overrides(tiny_model_dir, sentiment_csv, ["trainer.max_steps=4,16", "trainer.max_epochs=5",
                                                                "logger=none", "callbacks.early_stopping=null",
                                                                f"paths.log_dir={tmp_path}"])
    result = _sweep(overrides, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = next((tmp_path / "train" / "multiruns").glob("*/summary.csv"))
    import csv

    rows = {r["job"]: r for r in csv.DictReader(open(summary))}
    assert rows["1"]["status"] == "ok" and float(rows["1"]["objective"]) > 0
    assert rows["0"]["status"] == "failed"
    assert "optimized_metric=val/acc was never logged" in rows["0"]["error"]
