"""The Task interface: a new task is one class registered in one place, and the data module, the
Lightning module, the config checks and the CLI ask it and nothing else. Typed configs refuse
bad keys, types and values before anything loads."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from omegaconf import open_dict
from torchmetrics import MeanMetric, MetricCollection

from sft.cli import train
from sft.config import check_config
from sft.data.text_classification import TextClassificationProcessor
from sft.errors import ConfigError
from sft.models.heads import Head, pool
from sft.options import option
from sft.tasks import Task, get_task, register_task, task_names
from tests.conftest import compose_config, tiny_overrides


# -- a task defined entirely in this test -----------------------------------------------------------
@dataclass
class LengthDataOptions:
    pass


@dataclass
class LengthHeadOptions:
    scale: float = option(1.0, "multiplies the prediction", above=0.0)


class LengthProcessor(TextClassificationProcessor):
    """Predict the number of words of a text (a regression target made from the text itself)."""

    def fit(self, train):
        self.label_names = ["words"]
        return self.label_names

    def encode(self, table, with_labels=True):
        examples, report = super().encode(table, with_labels=False)
        for i, example in enumerate(examples):
            example["labels"] = [float(len(str(table.rows[i][self.text_column]).split()))]
        return examples, report


class LengthHead(Head):
    def __init__(self, hidden_size, scale):
        super().__init__()
        self.scale = scale
        self.out = torch.nn.Linear(hidden_size, 1)

    def forward(self, features, batch):
        return self.out(pool(features, batch["attention_mask"], "mean")) * self.scale

    def loss(self, outputs, batch):
        return torch.nn.functional.mse_loss(outputs.float(), batch["labels"].float())

    def make_metrics(self, prefix, final=False):
        return MetricCollection({"abs_error": MeanMetric()}, prefix=prefix)

    def metric_names(self, prefix, final=False):
        return {f"{prefix}abs_error"}

    def update_metrics(self, metrics, outputs, batch):
        metrics[f"{metrics.prefix}abs_error"].update((outputs.detach() - batch["labels"]).abs().mean())

    def predict(self, outputs):
        return {"prediction": outputs}


class WordCount(Task):
    name = "word_count_for_test"
    modality = "text"
    monitor = ("val/abs_error", "min")
    DataOptions = LengthDataOptions
    HeadOptions = LengthHeadOptions

    def make_processor(self, settings, options, tokenizer):
        return LengthProcessor(tokenizer, settings["text_column"], settings["label_column"],
                               max_length=settings["max_length"])

    def make_head(self, hidden_size, label_names, options, learned):
        return LengthHead(hidden_size, options.scale)


@pytest.fixture
def word_count_task():
    register_task(WordCount)
    yield get_task(WordCount.name)
    from sft import tasks

    tasks._REGISTRY.pop(WordCount.name)


def test_a_task_registered_in_a_test_trains_end_to_end(word_count_task, tiny_model_dir, sentiment_csv, tmp_path):
    assert WordCount.name in task_names()
    cfg = compose_config("train", tiny_overrides(tiny_model_dir, sentiment_csv, [
        f"data.task={WordCount.name}", "trainer.max_epochs=2"]), tmp_path / "run")
    with open_dict(cfg):  # the task's head options in place of text_classification's (a conf/head file would do this)
        for key in ("pooling", "dropout", "label_smoothing", "class_weights"):
            del cfg.model[key]
        cfg.model.scale = 1.0
    metrics = train(cfg)
    # The monitor follows the task's declaration, and what the head declares is what it logs.
    assert cfg.monitor == "val/abs_error" and cfg.monitor_mode == "min"
    assert {"val/abs_error", "test/abs_error", "test/loss"} <= set(metrics)
    assert metrics["test/abs_error"] < 7.0  # every sentence has 7 words: a constant the head learns toward


def test_a_task_option_of_another_task_is_refused_naming_the_allowed_ones(word_count_task, tiny_model_dir,
                                                                          sentiment_csv, tmp_path):
    cfg = compose_config("train", tiny_overrides(tiny_model_dir, sentiment_csv, [
        f"data.task={WordCount.name}", "+model.scale=1.0"]), tmp_path / "run")
    with pytest.raises(ConfigError, match=r"model\.(class_weights|dropout|label_smoothing|pooling) is not a model "
                                          r"setting, nor one of the word_count_for_test head's \(scale\)"):
        check_config(cfg)


# -- every shipped task declares the metric names its head logs ----------------------------------------
@pytest.mark.parametrize("task_name", ["text_classification", "multilabel_classification", "text_regression",
                                       "token_classification", "image_classification", "causal_lm"])
def test_builtin_tasks_declare_their_pieces(task_name):
    task = get_task(task_name)
    assert task.modality in ("text", "image", "causal_lm")
    assert task.monitor[1] in ("max", "min")
    labels = ["B-LOC", "I-LOC", "O"] if task_name == "token_classification" else ["a", "b"]
    names = task.logged_metrics(labels, task.check_head_options({}))
    assert task.monitor[0] in names["val"] | names["train"]


# -- typed configs ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("override,message", [
    ("monitor_mode=maxx", r"monitor_mode='maxx': expected 'max' or 'min'"),
    ("optimized_mode=maxx", r"optimized_mode='maxx': expected 'max' or 'min'"),
    ("data.batch_size=0", r"data\.batch_size=0 must be at least 1"),
    ("data.val_fraction=1.5", r"data\.val_fraction=1\.5 must be below 1"),
    ("data.max_length=abc", r"data\.max_length='abc': expected an integer"),
    ("model.pooling=avg", r"model\.pooling='avg': expected 'cls' or 'mean'"),
    ("model.dropout=1.0", r"model\.dropout=1\.0 must be below 1"),
    ("+data.lable_column=x", r"data\.lable_column is not a data setting of data\.task=text_classification"),
    ("+model.treshold=0.3", r"model\.treshold is not a model setting, nor one of the text_classification head's"),
    ("model.head_lr=-1", r"model\.head_lr=-1 must be above 0"),
])
def test_bad_settings_are_refused_before_anything_loads(override, message, tiny_model_dir, sentiment_csv, tmp_path):
    cfg = compose_config("train", tiny_overrides(tiny_model_dir, sentiment_csv, [override]), tmp_path / "run")
    with pytest.raises(ConfigError, match=message):
        check_config(cfg)
    with pytest.raises(ConfigError, match=message):  # train() runs the same checks first
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_optuna_direction_refuses_a_mode_that_is_not_max_or_min():
    from sft.sweep import optuna_direction

    assert optuna_direction("max") == "maximize" and optuna_direction("min") == "minimize"
    with pytest.raises(ConfigError, match="optimized_mode='maxx' must be max or min"):
        optuna_direction("maxx")


def test_model_settings_match_the_module_signature():
    """The typed model settings and SFTModule's parameters describe the same keys."""
    import inspect

    from sft.config import ModelSettings
    from sft.models.module import SFTModule

    parameters = set(inspect.signature(SFTModule.__init__).parameters)
    parameters -= {"self", "task", "label_names", "optimizer", "scheduler", "load_weights", "head_options"}
    assert parameters == set(ModelSettings.__dataclass_fields__)


def test_importing_sft_registers_no_resolvers():
    """Resolvers are registered by sft.config.register_resolvers (the entry points and train() call
    it), not as a side effect of an import."""
    import subprocess
    import sys

    code = ("import sft.cli, sft.data, sft.models, sft.tasks; from omegaconf import OmegaConf; "
            "from sft.config import register_resolvers; assert not OmegaConf.has_resolver('task_monitor'); "
            "register_resolvers(); assert OmegaConf.has_resolver('task_monitor')")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
