"""End-to-end training through train(cfg) on a tiny BERT and generated, learnable data."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from sft.cli import evaluate, train
from sft.tasks import ConfigError
from tests.conftest import compose_config


def test_fast_dev_run(make_train_cfg):
    metrics = train(make_train_cfg(["debug=fast_dev_run"]))
    assert "test/acc" in metrics and 0.0 <= metrics["test/acc"] <= 1.0
    assert torch.isfinite(torch.tensor(metrics["test/loss"]))


def _event_tags(folder: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return set(acc.Tags()["scalars"])


def _hparams_metrics(folder: Path) -> set[str]:
    """Metric names registered in the HPARAMS plugin's experiment summary."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(folder))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    data = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    return {m.name.tag for m in data.experiment.metric_infos}


@pytest.fixture(scope="module")
def trained_run(tiny_model_dir, sentiment_csv, tmp_path_factory):
    """One real training run shared by the tests below: 4 epochs of the tiny BERT."""
    from tests.conftest import tiny_overrides

    run_dir = tmp_path_factory.mktemp("trained") / "run"
    cfg = compose_config("train", tiny_overrides(tiny_model_dir, sentiment_csv, ["trainer.max_epochs=4"]), run_dir)
    losses = []

    class RecordLoss(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    metrics = train(cfg, extra_callbacks=[RecordLoss()])
    return cfg, run_dir, metrics, losses


def test_training_learns(trained_run):
    _, _, metrics, losses = trained_run
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.5 * first, f"loss did not fall: {first:.3f} -> {last:.3f}"
    assert metrics["test/acc"] >= 0.85, metrics  # two balanced classes: chance is 0.5
    assert metrics["val/acc"] >= 0.85, metrics


def test_run_directory_records(trained_run):
    _, run_dir, metrics, _ = trained_run
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    written = json.loads((run_dir / "metrics.json").read_text())
    assert written == pytest.approx(metrics)
    for key in ("train/loss", "val/loss", "val/acc", "val/f1", "test/acc", "test/f1", "test/loss", "test/f1_pos", "test/f1_neg"):
        assert key in written, key
    tags = _event_tags(run_dir / "tensorboard")
    assert {"train/loss", "train/lr", "val/acc", "val/f1", "test/acc", "train/device/samples_per_sec", "train/device/items_per_sec"} <= tags
    assert "hp_metric" not in tags
    assert {"test/acc", "val/acc"} <= _hparams_metrics(run_dir / "tensorboard")


def test_checkpoint_holds_label_map(trained_run):
    _, run_dir, _, _ = trained_run
    ckpt = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    assert list(ckpt["hyper_parameters"]["label_names"]) == ["neg", "pos"]
    assert ckpt["datamodule_hyper_parameters"]["task"] == "text_classification"


def test_eval_reproduces_test_metrics(trained_run, tmp_path, monkeypatch):
    cfg, run_dir, metrics, _ = trained_run
    predictions = tmp_path / "predictions.jsonl"
    eval_cfg = compose_config("eval", [f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}", "trainer.accelerator=cpu",
                                       f"predictions_file={predictions}", f"export_dir={tmp_path / 'export'}",
                                       "extras.print_config=false"], tmp_path / "eval_run")
    checkpoint_reads = []
    real_load = torch.load

    def counting_load(f, *args, **kwargs):
        if str(f).endswith(".ckpt"):
            checkpoint_reads.append(str(f))
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    evaluated = evaluate(eval_cfg)
    assert checkpoint_reads == [str(run_dir / "checkpoints" / "best.ckpt")]  # read once, not once per piece
    for key in ("test/acc", "test/f1", "test/f1_pos", "test/f1_neg"):
        assert evaluated[key] == metrics[key], key
    assert evaluated["test/loss"] == pytest.approx(metrics["test/loss"], abs=1e-6)
    assert json.loads((tmp_path / "eval_run" / "metrics.json").read_text())["test/acc"] == metrics["test/acc"]

    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert len(rows) == 32  # 10% of 320 records carved off as the test split
    accuracy = sum(r["prediction"] == r["label"] for r in rows) / len(rows)
    assert accuracy == pytest.approx(metrics["test/acc"])
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-4 for r in rows)
    assert rows[0]["source"].startswith(str(cfg.data.train_file))

    # The export loads without any training config and predicts the same probabilities.
    from sft.export import Predictor

    predictor = Predictor.load(tmp_path / "export")
    exported = predictor.predict([r["text"] for r in rows])
    for row, out in zip(rows, exported):
        assert out["label"] == row["prediction"]
        for name, p in row["probabilities"].items():
            assert out["probabilities"][name] == pytest.approx(p, abs=1e-4)


def test_resume_continues_at_same_step(make_train_cfg, tmp_path):
    first = make_train_cfg(["trainer.max_steps=6", "trainer.val_check_interval=3", "callbacks.early_stopping=null"], "first")
    train(first)
    last = Path(first.paths.output_dir) / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=False)
    assert saved["global_step"] == 6

    seen = {}

    class Probe(Callback):
        def on_train_start(self, trainer, pl_module):
            seen["step"] = trainer.global_step
            # copied: the optimizer updates these tensors in place on the next steps
            seen["state"] = copy.deepcopy(trainer.optimizers[0].state_dict()["state"])

    resumed = make_train_cfg(["trainer.max_steps=9", f"ckpt_path={last}", "callbacks.early_stopping=null"], "resumed")
    train(resumed, extra_callbacks=[Probe()])
    assert seen["step"] == 6
    restored = seen["state"]
    expected = saved["optimizer_states"][0]["state"]
    assert restored.keys() == expected.keys() and len(expected) > 0
    for key in expected:
        assert torch.equal(restored[key]["exp_avg"], expected[key]["exp_avg"])
    assert torch.load(Path(resumed.paths.output_dir) / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=False)["global_step"] == 9


def test_incompatible_pair_refused_before_weights_load(make_train_cfg, monkeypatch):
    from sft.models.backbones import BACKBONES

    def fail(*args, **kwargs):
        raise AssertionError("weights were loaded")

    for modality in list(BACKBONES):  # every backbone loader the module may pick
        monkeypatch.setitem(BACKBONES, modality, fail)
    with pytest.raises(ConfigError, match="needs a text backbone"):
        train(make_train_cfg(["model.modality=image"]))


def test_frozen_backbone_trains_only_head(make_train_cfg):
    cfg = make_train_cfg(["model.freeze_backbone=true", "trainer.max_steps=3", "model.head_lr=1e-2"])
    train(cfg)
    ckpt = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    from transformers import AutoModel

    original = AutoModel.from_pretrained(cfg.model.pretrained).state_dict()
    state = ckpt["state_dict"]
    compared = [name for name in original if f"backbone.{name}" in state]
    assert len(compared) == len([k for k in state if k.startswith("backbone.")]) > 0
    for name in compared:
        assert torch.equal(state[f"backbone.{name}"], original[name]), name
    assert not torch.equal(state["head.classifier.weight"], torch.zeros_like(state["head.classifier.weight"]))
    groups = ckpt["optimizer_states"][0]["param_groups"]
    head_rates = [g["initial_lr"] for g in groups if g.get("name", "").startswith("head")]
    assert head_rates and all(rate == pytest.approx(1e-2) for rate in head_rates)


def test_bf16_mixed_precision_with_accumulation_runs_on_cpu(make_train_cfg):
    cfg = make_train_cfg(["trainer.precision=bf16-mixed", "trainer.accumulate_grad_batches=2", "trainer.max_steps=2",
                          "trainer.val_check_interval=4"])
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["test/loss"]))
    ckpt = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2  # optimizer steps, each over 2 micro-batches
    assert ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["completed"] == 4


def test_compiled_backbone_matches_eager_and_trains(make_train_cfg, tiny_model_dir):
    """model.compile: same outputs and gradients as eager, parameter names (checkpoints) unchanged,
    lengths that vary by batch compile a bounded number of times, and a whole run works."""
    from torch._dynamo.utils import counters

    from sft.models.module import SFTModule

    def module(compile_backbone: bool) -> SFTModule:
        torch.manual_seed(0)
        return SFTModule(task="text_classification", label_names=["neg", "pos"], pretrained=tiny_model_dir,
                         compile=compile_backbone).eval()  # eval: no dropout, so both sides compute the same

    eager, compiled = module(False), module(True)
    assert list(compiled.state_dict()) == list(eager.state_dict())
    torch._dynamo.reset()
    counters.clear()
    for length in (8, 16, 24, 32, 40):
        batch = {"input_ids": torch.randint(5, 40, (4, length)), "attention_mask": torch.ones(4, length, dtype=torch.long),
                 "labels": torch.tensor([0, 1, 0, 1])}
        losses = [m.head.loss(m(batch), batch) for m in (eager, compiled)]
        for loss in losses:
            loss.backward()
        assert losses[1].item() == pytest.approx(losses[0].item(), abs=1e-5)
        grads = [dict(m.named_parameters())["backbone.encoder.layer.0.attention.self.query.weight"].grad for m in (eager, compiled)]
        assert torch.allclose(grads[0], grads[1], atol=1e-5)
        eager.zero_grad(), compiled.zero_grad()
    assert counters["stats"]["unique_graphs"] <= 3, dict(counters["stats"])  # not one graph per length

    metrics = train(make_train_cfg(["model.compile=true", "trainer.max_steps=4", "trainer.val_check_interval=4"]))
    assert torch.isfinite(torch.tensor(metrics["test/loss"]))
