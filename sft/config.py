"""The run configuration: its OmegaConf resolvers and the checks that run on the composed config
before anything loads (an unknown key, a wrong type, a value out of range: refused, naming the key
and what is allowed).

This is the Hydra edge of sft: code under sft/data, sft/models and sft/tasks takes plain
arguments and the typed option sets that these checks also use.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Literal, Optional, Union

from omegaconf import DictConfig, OmegaConf

from sft.errors import ConfigError
from sft.options import check_options, option


def register_resolvers() -> None:
    """The resolvers sft's configs use; registering twice is harmless."""
    from sft import runs
    from sft.sweep import optuna_direction
    from sft.tasks import task_monitor

    resolvers = {
        # A random suffix on run directories, so two runs started in the same second never share one
        # (cached: every interpolation of the run directory within one config sees the same value).
        "run_id": (lambda: secrets.token_hex(3), True),
        # `monitor: ${task_monitor:${data.task}}`: the best-checkpoint metric follows the task.
        "task_monitor": (task_monitor, False),
        # The TensorBoard name of a sweep job: its swept overrides, so curves are labelled by them.
        "run_label": (runs.run_label, False),
        # Optuna's storage: an SQLite file in the sweep directory, made before the sweeper opens it.
        "optuna_storage": (lambda folder: runs.sqlite_url(folder), True),
        # Optuna's `direction` from `optimized_mode` (max/min; anything else is refused).
        "optuna_direction": (optuna_direction, False),
    }
    for name, (resolver, use_cache) in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver, use_cache=use_cache)


@dataclass
class RunSettings:
    """The top-level keys of train.yaml."""

    task_name: str = option("train", "names the folder under outputs/ that holds this kind of run")
    seed: Optional[int] = option(42, "seeds data order, dropout and workers; null leaves them unseeded")
    train: bool = option(True, "fit the model")
    test: bool = option(True, "after fit, test the best checkpoint")
    ckpt_path: Optional[str] = option(None, "resume from this checkpoint")
    monitor: Optional[str] = option(None, "the validation metric that picks best.ckpt")
    monitor_mode: Literal["max", "min"] = option("max", "which direction of monitor is better")
    optimized_metric: Optional[str] = option(None, "the value a sweeper optimizes")
    optimized_mode: Literal["max", "min"] = option("max", "which direction of optimized_metric is better")
    resume: Optional[str] = option(None, "RUN_DIR: continue that run")
    allow_unsafe_checkpoint: bool = option(False, "load a checkpoint that needs unpickling code (only from authors you trust)")


@dataclass
class ModelSettings:
    """The `model.*` keys every model config shares (the head's own keys are its task's HeadOptions)."""

    modality: Literal["text", "image", "audio", "causal_lm"] = option("text", "inputs this backbone takes")
    pretrained: Optional[str] = option(None, "hub id, local folder, or catalog name (null: random init, images)")
    architecture: Optional[str] = option(None, "timm model name for a weights file or random init")
    backbone_options: Optional[dict] = option(None, "extra timm.create_model / from_pretrained arguments")
    head_lr: Optional[float] = option(None, "learning rate of the head (null: optimizer.lr)", above=0.0)
    layer_decay: Optional[float] = option(None, "layer-wise learning-rate decay", above=0.0, max=1.0)
    freeze_backbone: bool = option(False, "train only the head")
    freeze_layers: Optional[int] = option(None, "freeze the front end and the first N layers (image and audio backbones)", min=0)
    trust_remote_code: bool = option(False, "run custom model code shipped with the weights")
    attn_implementation: Optional[str] = option(None, "transformers attention kernel")
    gradient_checkpointing: bool = option(False, "recompute activations in backward")
    lora: Optional[dict] = option(None, "LoRA settings (model/peft=lora)")
    channels_last: bool = option(False, "channels-last memory format (images)")
    compile: Union[bool, dict] = option(False, "torch.compile the backbone: true, or torch.compile options")
    recipe: Optional[dict] = option(None, "the optimizer recipe of this backbone family (lr, weight_decay), read by optimizer=adamw")


def _plain(node) -> dict:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node or {})


def check_config(cfg: DictConfig) -> None:
    """Refuse a train config that cannot work, naming the key, before data or weights load."""
    from sft.data.datamodule import check_data_settings
    from sft.tasks import check_task_model, get_task

    run = {k: cfg[k] for k in RunSettings.__dataclass_fields__ if k in cfg}  # in declaration order
    try:
        check_options(RunSettings, run, "config", "train.yaml")
    except ConfigError as error:  # top-level keys are typed without a prefix
        raise ConfigError(str(error).replace("config.", "", 1)) from None
    data = {k: v for k, v in _plain(cfg.data).items() if not k.startswith("_")}
    task = get_task(data.pop("task", None) or "")
    check_data_settings(task, data)
    model = {k: v for k, v in _plain(cfg.model).items() if not k.startswith("_")}
    shared = set(ModelSettings.__dataclass_fields__)
    check_options(ModelSettings, {k: v for k, v in model.items() if k in shared}, "model", "the model config")
    head = {k: v for k, v in model.items() if k not in shared}
    unknown = sorted(set(head) - set(task.HeadOptions.__dataclass_fields__))
    if unknown:
        raise ConfigError(f"model.{unknown[0]} is not a model setting, nor one of the {task.name} head's "
                          f"({', '.join(sorted(task.HeadOptions.__dataclass_fields__)) or 'none'}); "
                          f"model settings: {', '.join(sorted(shared))}")
    task.check_head_options(head)
    check_task_model(task.name, model.get("modality", "text"))
