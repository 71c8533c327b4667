"""The benchmark harness runs and writes its figures (speed itself is measured by bench/, not here).

bench/gpu.sh runs every workload once here, at CPU size with tiny shapes and few steps: the GPU
script tested on CPU at small size."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIGURES = {"samples_per_s", "peak_memory_gb", "mean_loss"}


@pytest.fixture(scope="module")
def gpu_script_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "SIZE": "cpu", "SHAPE": "tiny", "STEPS": "3", "WARMUP": "2", "PYTHON": sys.executable,
           "PEAK_TFLOPS": "1"}
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), str(out)], capture_output=True, text=True,
                            timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result.stdout


def figures_of(run, workload: str) -> dict:
    out, _ = run
    figures = json.loads((out / f"{workload}.json").read_text())
    assert figures["workload"] == workload and figures["size"]["shape"] == "tiny" and figures["size"]["steps"] == 3
    for side in ("ours", "peer"):
        assert figures[side]["samples_per_s"] > 0
        assert math.isfinite(figures[side]["mean_loss"])
        # On CPU: the resident set grows by at least the gradients and optimizer state.
        assert figures[side]["peak_memory_gb"] > 0
    return figures


def test_gpu_script_runs_every_workload(gpu_script_run):
    out, stdout = gpu_script_run
    assert sorted(p.name for p in out.glob("*.json")) == ["audio_cls.json", "chat_sft.json", "image_cls.json",
                                                          "image_pipeline.json", "overhead.json", "text_cls.json"]
    assert stdout.count("ratio sft/peer") == 5


def test_text_cls_figures(gpu_script_run):
    figures = figures_of(gpu_script_run, "text_cls")
    for side in ("ours", "peer", "ratio"):
        assert set(figures[side]) == FIGURES


def test_overhead_figures(gpu_script_run):
    figures = figures_of(gpu_script_run, "overhead")
    for side in ("ours", "peer", "ratio"):
        assert set(figures[side]) == FIGURES
    # Same module, weights and batches on both sides: the losses of the timed steps agree.
    assert abs(figures["ours"]["mean_loss"] - figures["peer"]["mean_loss"]) < 1e-3


def test_chat_sft_figures(gpu_script_run):
    figures = figures_of(gpu_script_run, "chat_sft")
    for side in ("ours", "peer", "ratio"):
        assert set(figures[side]) == FIGURES | {"tokens_per_s", "mfu"}
    size = figures["size"]
    for side in ("ours", "peer"):  # MFU against the given peak (PEAK_TFLOPS=1)
        assert figures[side]["mfu"] == pytest.approx(figures[side]["tokens_per_s"] * size["flops_per_token"] / 1e12, rel=1e-2)
    # Packed rows hold several conversations: the padded peer takes that many per step.
    assert size["peer_batch_size"] > size["batch_size"]
    for side in ("ours", "peer"):
        # tokens per conversation, as counted by each side, is about the data's mean length
        per_sample = figures[side]["tokens_per_s"] / figures[side]["samples_per_s"]
        assert 0.6 * size["mean_tokens"] < per_sample < 1.5 * size["mean_tokens"], (side, per_sample)
    # Same weights and masked tokens, other batch composition: close, not equal.
    assert abs(figures["ours"]["mean_loss"] - figures["peer"]["mean_loss"]) < 0.05 * figures["peer"]["mean_loss"]


def test_image_cls_figures(gpu_script_run):
    figures = figures_of(gpu_script_run, "image_cls")
    for side in ("ours", "peer", "ratio"):
        assert set(figures[side]) == FIGURES
    # Same module, weights and pixels in the same order (no random augmentation): identical steps.
    assert abs(figures["ours"]["mean_loss"] - figures["peer"]["mean_loss"]) < 1e-3


def test_audio_cls_figures(gpu_script_run):
    figures = figures_of(gpu_script_run, "audio_cls")
    for side in ("ours", "peer", "ratio"):
        assert set(figures[side]) == FIGURES
    # Same module, weights and clips in the same order, whole-window pooling, no augmentation: identical
    # steps, so sft's file decoding and feature extraction feed the model what the plain loop computes.
    assert abs(figures["ours"]["mean_loss"] - figures["peer"]["mean_loss"]) < 1e-4


def test_packed_batches_count_conversations_and_tokens_on_the_host():
    from sft.data.packing import CausalLMCollator, pack_examples

    examples = [{"input_ids": [5] * n, "labels": [-100] + [5] * (n - 1)} for n in (6, 3, 4, 2, 7)]
    rows = pack_examples(examples, max_length=8)
    batch = CausalLMCollator(pad_token_id=0)(rows)
    assert batch["num_examples"] == 5 and batch["num_tokens"] == 22
    assert isinstance(batch["num_examples"], int) and isinstance(batch["num_tokens"], int)


def test_compare_rejects_a_shape_of_another_workload():
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "compare.py"), "image_cls", "--shape", "tinyllama"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "image_cls has the shapes" in result.stderr


def test_image_pipeline_figures(gpu_script_run):
    out, _ = gpu_script_run
    figures = json.loads((out / "image_pipeline.json").read_text())
    assert figures["size"]["architecture"] == "test_resnet" and figures["workers"] >= 1
    assert figures["loader_images_per_s"] > 0 and figures["model_images_per_s"] > 0
    assert figures["ratio"] == pytest.approx(figures["loader_images_per_s"] / figures["model_images_per_s"], rel=0.01)
    assert figures["worker"]["ours"] > 0 and figures["worker"]["peer"] > 0


RATIO_ROUNDING = 1e-3  # bench/data_scale.py rounds ratios to 3 decimals


def test_data_scale_harness_reports_both_sides(tmp_path):
    """The data_scale harness on tiny sizes: each side runs in its own process and is measured. Ratios
    are reported to 3 decimals, so one near 0 (a side that is mostly its imports) is checked to that."""
    out = tmp_path / "data_scale.json"
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "compare.py"), "data_scale", "--rows", "300", "--chats", "60",
                             "--stream-rows", "120", "--image-files", "40", "--ner-sentences", "50", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    figures = json.loads(out.read_text())
    chat = figures["chat"]["60"]
    for side in ("sft", "hf"):
        assert chat[side]["seconds"] > 0 and chat[side]["peak_rss_gb"] > 0
    assert chat["time_ratio"] == pytest.approx(chat["sft"]["seconds"] / chat["hf"]["seconds"], rel=0.01, abs=RATIO_ROUNDING)
    imports = figures["imports"]["chat"]
    # On 60 conversations a side is mostly its imports, so the two are not ordered (the machine's speed drifts).
    assert imports["sft"]["seconds"] > 0 and imports["hf"]["seconds"] > 0
    assert chat["time_ratio_past_imports"] == pytest.approx(
        (chat["sft"]["seconds"] - imports["sft"]["seconds"]) / (chat["hf"]["seconds"] - imports["hf"]["seconds"]), rel=0.01, abs=RATIO_ROUNDING)
    assert figures["stream"]["120"]["sft"]["seconds"] > 0
    images, ner = figures["images"]["40"], figures["ner"]["50"]
    assert images["time_ratio"] == pytest.approx(images["sft"]["seconds"] / images["torchvision"]["seconds"], rel=0.01,
                                                 abs=RATIO_ROUNDING)
    assert ner["time_ratio"] == pytest.approx(ner["sft"]["seconds"] / ner["hf"]["seconds"], rel=0.01, abs=RATIO_ROUNDING)
    # Text: each launch's first optimizer step falls inside its run, and the ratios are of those times.
    text = figures["text"]["300"]
    for side in ("sft", "sft_second_launch", "hf"):
        assert 0 < text[side]["first_step_seconds"] < text[side]["seconds"]
    assert text["first_step_ratio"] == pytest.approx(text["sft"]["first_step_seconds"] / text["hf"]["first_step_seconds"],
                                                     rel=0.01, abs=RATIO_ROUNDING)
    assert text["time_ratio_past_imports"] == pytest.approx((text["sft"]["seconds"] - figures["imports"]["text"]["sft"]["seconds"])
                                                            / (text["hf"]["seconds"] - figures["imports"]["text"]["hf"]["seconds"]),
                                                            rel=0.01, abs=RATIO_ROUNDING)
    assert text["first_step_ratio_past_imports"] == pytest.approx(
        (text["sft"]["first_step_seconds"] - figures["imports"]["text"]["sft"]["seconds"])
        / (text["hf"]["first_step_seconds"] - figures["imports"]["text"]["hf"]["seconds"]), rel=0.01, abs=RATIO_ROUNDING)
    assert text["second_launch_first_step_share"] == pytest.approx(
        text["sft_second_launch"]["first_step_seconds"] / text["sft"]["first_step_seconds"], rel=0.01, abs=RATIO_ROUNDING)
    assert figures["repeat"] == 1 and len(chat["sft"]["runs"]) == 1 and len(chat["hf"]["runs"]) == 1


def test_data_scale_repeats_report_the_median_time_and_the_highest_memory(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from data_scale import summarize

    runs = [{"seconds": 30.0, "peak_rss_gb": 1.0}, {"seconds": 41.0, "peak_rss_gb": 1.2},
            {"seconds": 33.0, "peak_rss_gb": 1.1}]
    assert summarize(runs) == {"seconds": 33.0, "peak_rss_gb": 1.2, "runs": [30.0, 41.0, 33.0]}
    assert summarize(runs[:2])["seconds"] == 35.5
    timed = [{**run, "first_step_seconds": run["seconds"] - 5} for run in runs]
    assert summarize(timed)["first_step_seconds"] == 28.0


def test_data_scale_reads_each_sides_first_step_time(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from data_scale import peer_first_step, sft_first_step

    assert peer_first_step("Some weights ... newly initialized\nfirst optimizer step at 1796477667.250\n") == 1796477667.25
    with pytest.raises(SystemExit, match="no first-step time"):
        peer_first_step("Traceback ...")
    record = {"launches": [{"first_optimizer_step": {"time": "2026-12-05T13:34:27.000+00:00"}},
                           {"first_optimizer_step": {"time": "2026-12-05T14:00:00.500+00:00"}}]}
    (tmp_path / "run_record.json").write_text(json.dumps(record))
    assert sft_first_step(tmp_path)("") == 1796479200.5  # the last launch's
