"""Sweeps and multi-process runs through train.py as users start them (subprocesses)."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.chat_fixtures import chat_jsonl, chat_overrides, tiny_llama_dir  # noqa: F401 - fixtures
from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["trainer.max_steps=2", "trainer.val_check_interval=2", "callbacks.early_stopping=null",
         "logger=csv", "trainer.enable_model_summary=false"]


def run(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


def only_sweep(root: Path) -> Path:
    sweeps = list((root / "train" / "multiruns").iterdir())
    assert len(sweeps) == 1, sweeps
    return sweeps[0]


def job_dirs(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def read_summary(sweep: Path) -> list[dict]:
    with open(sweep / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_optuna_sweep_keeps_study_and_writes_summary(tiny_model_dir, sentiment_csv, tmp_path):
    overrides = tiny_overrides(tiny_model_dir, sentiment_csv, QUICK + [f"paths.log_dir={tmp_path}"])
    overrides = [o for o in overrides if not o.startswith("optimizer.lr=")]  # the study chooses it
    started = time.perf_counter()
    result = run(["-m", "hparams_search=optuna", "hydra.sweeper.n_trials=3", "hydra.sweeper.sampler.n_startup_trials=2",
                  *overrides], cwd=tmp_path)
    print(f"optuna sweep of 3 trials: {time.perf_counter() - started:.1f}s wall")
    sweep = only_sweep(tmp_path)
    jobs = job_dirs(sweep)
    assert [p.name for p in jobs] == ["0", "1", "2"]
    assert all((p / "metrics.json").is_file() for p in jobs)
    rows = read_summary(sweep)
    assert len(rows) == 3 and all(r["status"] == "ok" for r in rows)
    values = [float(r["objective"]) for r in rows]
    assert values == sorted(values, reverse=True)  # best first
    assert values == [float(r["val/acc"]) for r in rows]
    assert {r["run_dir"] for r in rows} == {str(p) for p in jobs}
    assert all("optimizer.lr=" in r["overrides"] for r in rows)
    assert "Sweep summary" in result.stdout

    import optuna

    study = optuna.load_study(study_name="train", storage=f"sqlite:///{sweep / 'optuna.db'}")
    assert len(study.trials) == 3 and all(t.state.name == "COMPLETE" for t in study.trials)
    for trial, job in zip(study.trials, jobs):
        assert trial.value == json.loads((job / "metrics.json").read_text())["val/acc"]


def test_failing_job_does_not_stop_grid_sweep(tiny_model_dir, sentiment_csv, tmp_path):
    overrides = tiny_overrides(tiny_model_dir, sentiment_csv, QUICK + [f"paths.log_dir={tmp_path}"])
    run(["-m", *overrides, "logger=tensorboard", "model.pooling=mean,bogus,cls"], cwd=tmp_path)
    sweep = only_sweep(tmp_path)
    assert [p.name for p in job_dirs(sweep)] == ["0", "1", "2"]
    rows = read_summary(sweep)
    assert [r["status"] for r in rows] == ["ok", "ok", "failed"]
    failed = rows[-1]
    assert failed["job"] == "1" and "model.pooling=bogus" in failed["overrides"]
    assert failed["error"].startswith("model.pooling='bogus': expected 'cls' or 'mean'")  # the one-line message a run prints
    assert failed["val/acc"] == "" and float(failed["objective"]) == float("-inf")
    assert (sweep / "1" / "error.json").is_file() and not (sweep / "1" / "metrics.json").exists()
    assert all((sweep / r["job"] / "metrics.json").is_file() for r in rows[:2])
    # TensorBoard names each job's run by its swept override: `tensorboard --logdir SWEEP_DIR` labels curves so.
    assert [p.name for p in (sweep / "0" / "tensorboard").iterdir() if p.is_dir()] == ["model.pooling=mean"]
    assert [p.name for p in (sweep / "2" / "tensorboard").iterdir() if p.is_dir()] == ["model.pooling=cls"]


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="needs torch.distributed with gloo")
def test_ddp_sim_multirun_one_directory_per_job(tiny_model_dir, sentiment_csv, tmp_path):
    overrides = tiny_overrides(tiny_model_dir, sentiment_csv, QUICK + [f"paths.log_dir={tmp_path}", "trainer=ddp_sim"])
    run(["-m", *overrides, "optimizer.lr=1e-3,2e-3"], cwd=tmp_path)
    sweep = only_sweep(tmp_path)
    jobs = job_dirs(sweep)
    assert [p.name for p in jobs] == ["0", "1"]  # two jobs, not four: the ranks never re-ran the sweep
    assert not (tmp_path / "train" / "runs").exists()  # and never made run directories of their own
    for job, lr in zip(jobs, ("0.001", "0.002")):
        metrics = json.loads((job / "metrics.json").read_text())
        assert "test/acc" in metrics and "val/acc" in metrics
        assert (job / "checkpoints" / "last.ckpt").is_file()
        assert f"lr: {lr}" in (job / "config.yaml").read_text()
        saved = torch.load(job / "checkpoints" / "last.ckpt", weights_only=True)
        assert saved["global_step"] == 2
    assert [r["status"] for r in read_summary(sweep)] == ["ok", "ok"]


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="needs torch.distributed with gloo")
@pytest.mark.parametrize("task", ["text_classification", "causal_lm"])
def test_ddp_ranks_split_each_epoch_between_them(task, tiny_model_dir, sentiment_csv, tiny_llama_dir, chat_jsonl,
                                                 tmp_path, monkeypatch):
    """Under DDP the two ranks together see every training example once per epoch (none left
    out, none twice beyond the padding to equal shares), in sft's own seeded sampler."""
    from omegaconf import OmegaConf

    from sft.data.datamodule import SFTDataModule
    from tests.conftest import compose_config

    if task == "causal_lm":
        overrides = chat_overrides(tiny_llama_dir, chat_jsonl, ["data.batch_size=4", "trainer.accumulate_grad_batches=2"])
    else:
        overrides = tiny_overrides(tiny_model_dir, sentiment_csv, ["data.batch_size=16"])
    data_cfg = OmegaConf.to_container(compose_config("train", overrides, tmp_path / "single").data, resolve=True)
    data_cfg.pop("_target_")
    single = SFTDataModule(**data_cfg)
    single.setup("fit")
    expected = [tuple(example["input_ids"]) for example in single.encoded("train").examples]

    monkeypatch.setenv("PROBE_DIR", str(tmp_path))
    run(overrides + ["trainer=ddp_sim", "trainer.max_epochs=1", "callbacks.early_stopping=null", "logger=csv",
                     "+callbacks.probe._target_=tests.probes.TrainDataProbe", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=ROOT)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for probe in ranks:
        assert probe["sampler"] in ("ResumableSampler", "StepBatchSampler")  # not wrapped again by Lightning
        assert probe["batches"] == probe["dataloader_len"]
        assert len(probe["rows"]) >= len(expected) // 2 - 4  # half each
    seen = [tuple(row) for probe in ranks for row in probe["rows"]]
    assert set(seen) == set(expected)
    assert 0 <= len(seen) - len(expected) < 4  # repeats: only the padding to equal shares


def test_sigkill_then_resume_completes(tiny_model_dir, sentiment_csv, tmp_path):
    run_dir = tmp_path / "killed"
    overrides = tiny_overrides(tiny_model_dir, sentiment_csv, [
        "trainer.max_steps=40", "trainer.max_epochs=10", "trainer.val_check_interval=16", "callbacks.early_stopping=null", "logger=csv",
        "callbacks.periodic_checkpoint.every_n_train_steps=5", f"hydra.run.dir={run_dir}"])
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *overrides], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    saved_step = torch.load(last, weights_only=True)["global_step"]
    assert 5 <= saved_step < 40 and saved_step % 5 == 0
    assert not (run_dir / "metrics.json").exists()

    out = run([f"resume={run_dir}"], cwd=tmp_path).stdout
    assert f"Run directory:   {run_dir}" in out
    assert torch.load(last, weights_only=True)["global_step"] == 40
    assert "test/acc" in json.loads((run_dir / "metrics.json").read_text())
    launches = json.loads((run_dir / "run_record.json").read_text())["launches"]
    assert len(launches) == 2 and "resume=" in launches[1]["command"]
