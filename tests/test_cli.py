"""The command line as users run it: train.py as a subprocess, single runs and multiruns."""

from __future__ import annotations

import json
import subprocess
import sys
from omegaconf import OmegaConf
from pathlib import Path

from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_multirun_makes_one_run_directory_per_job(tiny_model_dir, sentiment_csv, tmp_path):
    overrides = tiny_overrides(tiny_model_dir, sentiment_csv, ["trainer.max_steps=4", "trainer.val_check_interval=2",
                                                               f"paths.log_dir={tmp_path}"])
    run(["-m", *overrides, "optimizer.lr=1e-3,2e-3"], cwd=tmp_path)
    sweeps = list((tmp_path / "train" / "multiruns").iterdir())
    assert len(sweeps) == 1
    jobs = sorted(p for p in sweeps[0].iterdir() if p.is_dir() and (p / "metrics.json").exists())
    assert [p.name for p in jobs] == ["0", "1"]
    lrs = []
    for job in jobs:
        metrics = json.loads((job / "metrics.json").read_text())
        assert "test/acc" in metrics
        assert (job / "checkpoints" / "best.ckpt").is_file() and (job / "checkpoints" / "last.ckpt").is_file()
        lrs.append(OmegaConf.load(job / "config.yaml").optimizer.lr)
    assert lrs == [0.001, 0.002]


def test_single_runs_never_share_a_directory(tiny_model_dir, sentiment_csv, tmp_path):
    overrides = tiny_overrides(tiny_model_dir, sentiment_csv, ["debug=fast_dev_run", f"paths.log_dir={tmp_path}"])
    procs = [subprocess.Popen([sys.executable, str(ROOT / "train.py"), *overrides], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    runs = list((tmp_path / "train" / "runs").iterdir())
    assert len(runs) == 2
    for output in outputs:
        assert "Run directory:" in output and "tensorboard --logdir" in output


def test_help_and_cfg_job(tmp_path):
    help_text = run(["--help"], cwd=tmp_path).stdout
    groups = dict(line.split(":", 1) for line in help_text.split("== Configuration groups ==")[1].split("== Config ==")[0].splitlines()
                  if ":" in line and not line.startswith("=="))
    assert {"text_classification", "multilabel_classification", "causal_lm", "chat"} <= {
        option.strip() for option in groups["data"].split(",")}
    job = run(["--cfg", "job"], cwd=tmp_path).stdout
    assert "pretrained: minilm-l6" in job and "dataset: rotten_tomatoes" in job
