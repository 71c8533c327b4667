"""Checkpoints load with weights_only=True; an untrusted, damaged or foreign file is named with what it
is (eval.py, ckpt_path= and resume=), and resume= on a damaged last.ckpt names the newest intact one."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from sft.cli import evaluate, train
from sft.errors import CheckpointError
from sft.safe_load import load_checkpoint
from tests.conftest import compose_config, tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
SHORT = ["trainer.max_steps=6", "trainer.val_check_interval=3", "callbacks.early_stopping=null",
         "callbacks.periodic_checkpoint.every_n_train_steps=2", "logger=none"]


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir, sentiment_csv, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("safe") / "run"
    train(compose_config("train", tiny_overrides(tiny_model_dir, sentiment_csv, SHORT), folder))
    return folder


class RunsCode:
    """Unpickling this calls Path.touch(marker): the kind of object weights_only=True refuses."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def bad_files(folder: Path, good: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, a fragment the error must hold)."""
    files = {}
    text = folder / "notes.ckpt"
    text.write_text("these are my notes\n")
    files["text"] = (text, "a text file, not a checkpoint")
    empty = folder / "empty.ckpt"
    empty.write_bytes(b"")
    files["empty"] = (empty, "an empty file")
    cut = folder / "cut.ckpt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    files["truncated"] = (cut, "cut short")
    from safetensors.torch import save_file

    st = folder / "weights.ckpt"
    save_file({"w": torch.zeros(3)}, str(st))
    files["safetensors"] = (st, "a safetensors file")
    foreign = folder / "foreign.ckpt"
    torch.save({"model": {"w": torch.zeros(3)}, "epoch": 3}, foreign)
    files["foreign"] = (foreign, "written by another tool")
    archive = folder / "archive.ckpt"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("readme.txt", "hello")
    files["zip"] = (archive, "a zip archive, not a PyTorch checkpoint")
    noise = folder / "noise.ckpt"
    noise.write_bytes(bytes(range(256)) * 8)
    files["binary"] = (noise, "not a PyTorch checkpoint")
    return files


def test_sft_checkpoints_load_safely(run_dir):
    for name in ("best.ckpt", "last.ckpt"):
        checkpoint, unsafe = load_checkpoint(run_dir / "checkpoints" / name)
        assert not unsafe and checkpoint["global_step"] > 0


def test_bad_files_are_named_with_what_they_are(run_dir, tmp_path):
    for name, (path, fragment) in bad_files(tmp_path, run_dir / "checkpoints" / "best.ckpt").items():
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        assert str(path) in str(info.value) and fragment in str(info.value), (name, str(info.value))


def test_eval_refuses_unsafe_checkpoint_unless_allowed(run_dir, tmp_path):
    marker = tmp_path / "code_ran"
    checkpoint = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)
    checkpoint["extra"] = RunsCode(marker)
    evil = tmp_path / "evil.ckpt"
    torch.save(checkpoint, evil)

    result = subprocess.run([sys.executable, str(ROOT / "eval.py"), f"ckpt_path={evil}", "extras.print_config=false",
                             f"paths.log_dir={tmp_path}"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert f"error: ckpt_path={evil}: refused" in result.stderr and "allow_unsafe_checkpoint=true" in result.stderr
    assert "pathlib" in result.stderr  # names what it asks to import
    assert not marker.exists()

    cfg = compose_config("eval", [f"ckpt_path={evil}", "allow_unsafe_checkpoint=true", "trainer.accelerator=cpu",
                                  "extras.print_config=false"], tmp_path / "eval")
    metrics = evaluate(cfg)
    assert marker.exists() and "test/acc" in metrics


def test_eval_names_a_foreign_file(run_dir, tmp_path):
    files = bad_files(tmp_path, run_dir / "checkpoints" / "best.ckpt")
    for name in ("truncated", "foreign"):
        path, fragment = files[name]
        result = subprocess.run([sys.executable, str(ROOT / "eval.py"), f"ckpt_path={path}", "extras.print_config=false",
                                 f"paths.log_dir={tmp_path}"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
        assert f"error: ckpt_path={path}: " in result.stderr and fragment in result.stderr


def test_resume_with_damaged_last_names_intact_checkpoint(tiny_model_dir, sentiment_csv, tmp_path):
    copy = tmp_path / "run"  # its own run: a run's config names its own folder, so a copy would write there
    overrides = tiny_overrides(tiny_model_dir, sentiment_csv, SHORT)
    train(compose_config("train", overrides, copy))
    last = copy / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # cut short, as by a full disk or a copy that stopped
    with pytest.raises(CheckpointError) as info:
        train(compose_config("train", overrides + [f"resume={copy}"], copy))
    message = str(info.value)
    assert f"resume={last}: a checkpoint cut short" in message
    best = copy / "checkpoints" / "best.ckpt"
    step = torch.load(best, weights_only=True)["global_step"]
    assert f"newest intact checkpoint of this run is {best} (global step {step})" in message
    assert f"ckpt_path={best}" in message
    # Following the advice resumes from that checkpoint.
    metrics = train(compose_config("train", overrides + [f"resume={copy}", f"ckpt_path={best}",
                                                         "trainer.max_steps=8"], copy))
    assert "test/acc" in metrics
    assert torch.load(last, weights_only=True)["global_step"] == 8
    launches = json.loads((copy / "run_record.json").read_text())["launches"]
    assert launches[-1]["resumed_from"] == str(best)
