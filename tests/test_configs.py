"""Every shipped config composes, every `_target_` accepts the arguments it is given, and every
user-facing key carries a comment."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf

from sft.cli import config_dir, resolved
from tests.conftest import compose_config

CONF = Path(config_dir())
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra")
# Supplied by train(cfg) at instantiation, not by the config.
RUNTIME_ARGUMENTS = {"sft.models.SFTModule": {"task", "label_names", "optimizer", "scheduler"},
                     "lightning.pytorch.Trainer": {"callbacks", "logger"}}
# Options that only make sense with a required key set, or with another group's option.
REQUIRED = {"data": ["data.train_file=x.csv"], "experiment": ["data.train_file=x.csv"]}
# Groups chosen inside another config (a task template picks its head options into `model`).
OVERRIDE_KEY = {"head": "head@model", "data_sources": "data_sources@data"}
# The model config that serves each task's data templates.
MODEL_OF_TASK = {"text_classification": "text_classifier", "multilabel_classification": "text_classifier",
                 "text_regression": "text_classifier", "token_classification": "text_classifier",
                 "image_classification": "image_classifier", "audio_classification": "audio_classifier",
                 "causal_lm": "causal_lm"}


def options():
    for group in GROUPS:
        for path in sorted((CONF / group).glob("*.yaml")):
            yield group, path.stem


def targets(node, where=""):
    """(location, node) for every mapping with a _target_, recursively."""
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield where, node
        for key in node:
            if key != "hydra":
                yield from targets(node._get_node(key), f"{where}.{key}".lstrip("."))


def check_target(where: str, node: DictConfig) -> None:
    target = node._target_
    fn = get_method(target)
    params = inspect.signature(fn).parameters
    given = {k for k in node if not str(k).startswith("_")}
    accepts_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = given - set(params)
    assert accepts_kwargs or not unknown, f"{where}: {target} does not accept {sorted(unknown)}"
    missing = {name for name, p in params.items()
               if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    missing -= given | RUNTIME_ARGUMENTS.get(target, set()) | {"self"}
    if node.get("_partial_"):
        missing -= {"optimizer", "params", "total_steps"}  # bound at call time
    assert not missing, f"{where}: {target} needs {sorted(missing)}, which the config does not give"


@pytest.mark.parametrize("group,option", list(options()))
def test_option_composes_and_targets_accept_arguments(group, option, tmp_path):
    overrides = REQUIRED.get(group, []) + [f"{OVERRIDE_KEY.get(group, group)}={option}"]
    cfg = OmegaConf.create(resolved(compose_config("train", overrides, tmp_path)))
    for where, node in targets(cfg):
        check_target(where, node)


def test_eval_config_composes(tmp_path):
    cfg = OmegaConf.create(resolved(compose_config("eval", ["ckpt_path=x.ckpt"], tmp_path)))
    for where, node in targets(cfg):
        check_target(where, node)


@pytest.mark.parametrize("path", sorted(CONF.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONF)))
def test_every_user_facing_key_is_commented(path):
    """Each leaf key line in an option file carries a `#` comment (targets and interpolated
    plumbing like `_target_` or `save_dir: ${...}` excepted)."""
    if path.parent.name == "hydra":
        return
    uncommented = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "-", "defaults:")) or ":" not in stripped:
            continue
        key, _, value = stripped.partition(":")
        if key.startswith("_") or not value.strip() or "${paths." in value or key in ("name", "version") or value.strip() == "|":
            continue
        if "#" not in value:
            uncommented.append(f"{path.name}:{number}: {stripped}")
    assert not uncommented, "keys without a comment:\n" + "\n".join(uncommented)


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_experiment_monitor_is_a_metric_the_run_logs(experiment, tmp_path):
    """The monitor of every shipped recipe passes the pre-flight check (metrics logged by
    callbacks, like generation's exact match, count)."""
    from sft import runs
    from sft.config import check_config
    from sft.tasks import get_task

    cfg = compose_config("train", REQUIRED["experiment"] + [f"experiment={experiment}"], tmp_path)
    check_config(cfg)
    runs.validate_monitor(cfg, get_task(cfg.data.task), ["B-X", "I-X", "O"])


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONF / "data").glob("*.yaml")))
def test_every_data_option_passes_the_config_checks_with_its_model(option, tmp_path):
    """Each data template or data set, with the model group of its task, is a config the typed
    checks accept: its keys are the task's, with values in range."""
    from sft.config import check_config

    task = compose_config("train", [f"data={option}", "data.train_file=x.csv"], tmp_path).data.task
    cfg = compose_config("train", [f"data={option}", "data.train_file=x.csv", f"model={MODEL_OF_TASK[task]}"], tmp_path)
    if cfg.data.get("dataset"):
        cfg.data.train_file = None
    check_config(cfg)
