"""train(cfg) and evaluate(cfg): build the pieces a config names, run them, write the run's records.

`train_main` / `eval_main` are the thin Hydra entry points behind train.py, eval.py and the
`sft-train` / `sft-eval` console scripts; everything else takes a plain DictConfig, so tests
and notebooks can call train(cfg) directly.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any, Optional

import hydra
import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from sft import runs
from sft.callbacks.run_state import RNGState, RunRecord
from sft.config import check_config, register_resolvers
from sft.tasks import get_task

log = logging.getLogger("sft")


def config_dir() -> str:
    """conf/ of the checkout when run from one, else the copy installed as sft/conf."""
    checkout = Path(__file__).resolve().parents[1] / "conf"
    return str(checkout if (checkout / "train.yaml").is_file() else Path(__file__).resolve().parent / "conf")


# -- building pieces ---------------------------------------------------------------------------
def instantiate_group(group: Optional[DictConfig]) -> list:
    """Instantiate every node of a group (callbacks, logger) that has a `_target_`; skip the rest."""
    if not group:
        return []
    return [hydra.utils.instantiate(node) for node in group.values()
            if isinstance(node, DictConfig) and "_target_" in node]


def apply_extras(cfg: DictConfig) -> None:
    extras = cfg.get("extras") or {}
    # Lightning's advice to add DataLoader workers does not apply: data is tokenized up front.
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    if extras.get("ignore_warnings"):
        warnings.filterwarnings("ignore")
    if extras.get("print_config"):
        print_config(cfg)


@rank_zero_only
def print_config(cfg: DictConfig) -> None:
    from rich.console import Console
    from rich.syntax import Syntax

    Console().print(Syntax(resolved_yaml(cfg), "yaml", theme="ansi_dark"))


def resolved(cfg: DictConfig) -> dict:
    """The run's config as plain data with every interpolation resolved (Hydra's own node left out)."""
    return {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
            for k in cfg if k != "hydra"}


def resolved_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(resolved(cfg))


def output_dir(cfg: DictConfig) -> Path:
    path = Path(cfg.paths.output_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _floats(metrics: dict) -> dict[str, float]:
    return {k: float(v.item() if isinstance(v, torch.Tensor) else v) for k, v in metrics.items()}


@rank_zero_only
def write_metrics(path: Path, metrics: dict[str, float]) -> None:
    path.write_text(json.dumps(dict(sorted(metrics.items())), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _hparam_value(value: Any):
    return value if isinstance(value, (int, float, str, bool)) else str(value)


@rank_zero_only
def log_hparams_with_metrics(trainer: L.Trainer, cfg: DictConfig, metrics: dict[str, float]) -> None:
    """Fill TensorBoard's HPARAMS tab with the run's settings and its real final metrics."""
    from lightning.pytorch.loggers import TensorBoardLogger
    from torch.utils.tensorboard.summary import hparams

    flat: dict[str, Any] = {}

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = _hparam_value(value)

    plain = resolved(cfg)
    walk({k: plain[k] for k in ("model", "data", "optimizer", "scheduler", "trainer", "seed") if k in plain}, "")
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            writer = logger.experiment
            for summary in hparams(flat, metrics):
                writer._get_file_writer().add_summary(summary)
            writer.flush()


# -- train ---------------------------------------------------------------------------------------
def checkpoint_plugins(cfg: DictConfig) -> dict:
    """Atomic checkpoint writes, unless the config names its own plugins or a strategy that writes
    its checkpoints itself (DeepSpeed, sharded FSDP)."""
    strategy = str(cfg.trainer.get("strategy", ""))
    if cfg.trainer.get("plugins") or "deepspeed" in strategy.lower() or "fsdp" in strategy.lower():
        return {}
    from sft.checkpointing import AtomicCheckpointIO

    return {"plugins": [AtomicCheckpointIO()]}


def train(cfg: DictConfig, extra_callbacks: Optional[list] = None) -> dict[str, float]:
    """Fit, then test the best checkpoint. Returns the final metrics, as also written to metrics.json.
    `extra_callbacks` join those of the config (for use from Python). With `resume=RUN_DIR`, the
    run continues in RUN_DIR with its saved config from checkpoints/last.ckpt."""
    register_resolvers()  # for configs composed outside the entry points (tests, notebooks)
    if cfg.get("resume"):
        cfg = runs.resume_config(cfg)
    apply_extras(cfg)
    run_dir = output_dir(cfg)
    check_config(cfg)  # unknown keys, wrong types, bad values, a task the model cannot serve: before anything loads
    runs.validate_config(cfg)
    runs.stream_validation_schedule(cfg)
    weights_only = True
    if cfg.get("ckpt_path") and cfg.get("train", True):  # a damaged or untrusted checkpoint is refused here
        from sft.safe_load import check_resume_checkpoint

        weights_only = check_resume_checkpoint(cfg.ckpt_path, cfg.get("resume"), bool(cfg.get("allow_unsafe_checkpoint")))
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)

    task = get_task(cfg.data.task)
    datamodule = hydra.utils.instantiate(cfg.data, **model_input_spec(cfg.model, task))
    runs.validate_monitor(cfg, task, datamodule.label_names)  # reads the data's labels, still before any weights
    module = hydra.utils.instantiate(
        cfg.model,
        task=cfg.data.task,
        label_names=datamodule.label_names,
        **datamodule.head_options,
        optimizer=hydra.utils.instantiate(cfg.optimizer),
        scheduler=hydra.utils.instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
    )
    config = resolved(cfg)
    record = runs.run_record(config, resumed_from=cfg.get("ckpt_path") if cfg.get("resume") else None)
    callbacks = instantiate_group(cfg.get("callbacks")) + [RNGState(), RunRecord(record, run_dir)] + list(extra_callbacks or [])
    runs.install_ddp_launch_fix()
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=instantiate_group(cfg.get("logger")) or False,
        **checkpoint_plugins(cfg),
    )
    if trainer.is_global_zero:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(config), encoding="utf-8")
        runs.append_run_record(run_dir, record)

    metrics: dict[str, float] = {}
    if cfg.get("train", True):
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=weights_only)
        metrics.update(_floats(trainer.callback_metrics))
    best = next((cb.best_model_path for cb in trainer.checkpoint_callbacks if cb.monitor), "")
    if cfg.get("test", True):
        if not best:
            log.warning("No best checkpoint was saved (no validation, or checkpoints are off): testing current weights")
        trainer.test(module, datamodule=datamodule, ckpt_path=best or None)
        metrics.update(_floats(trainer.callback_metrics))
    write_metrics(run_dir / "metrics.json", metrics)
    log_hparams_with_metrics(trainer, cfg, metrics)
    report_run(run_dir, metrics, best, data_report(datamodule, module))
    return metrics


def data_report(datamodule, module) -> dict:
    """The data module's per-split report, plus which metric key carries each label's name."""
    keys = module.head.label_keys()
    return {**datamodule.report, **({"metric_keys": keys} if keys else {})}


def model_input_spec(model_cfg, task) -> dict:
    """What the data side needs to know of the model's input (image size and normalization), taken
    from the model config: configuration flows from the model into the data, never back."""
    if task.modality == "audio":
        from sft.models.audio_backbones import audio_input_spec

        return {"input_spec": audio_input_spec(model_cfg.get("pretrained"), model_cfg.get("architecture"))}
    if task.modality != "image":
        return {}
    from sft.models.image_backbones import image_data_config

    pretrained, architecture = model_cfg.get("pretrained"), model_cfg.get("architecture")
    return {"input_spec": image_data_config(pretrained, architecture) if (pretrained or architecture) else None}


@rank_zero_only
def report_run(run_dir: Path, metrics: dict[str, float], best: str, data_report: dict) -> None:
    if data_report:
        (run_dir / "data_report.json").write_text(json.dumps(data_report, indent=2, ensure_ascii=False) + "\n",
                                                  encoding="utf-8")
    width = max((len(k) for k in metrics), default=0)
    lines = ["", "Final metrics:"] + [f"  {k:<{width}}  {v:.4f}" for k, v in sorted(metrics.items())]
    lines += [
        f"Run directory:   {run_dir}",
        f"Best checkpoint: {best or '(none saved)'}",
        f"Curves:          tensorboard --logdir {run_dir / 'tensorboard'}",
    ]
    print("\n".join(lines), flush=True)


# -- evaluate --------------------------------------------------------------------------------------
def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test a checkpoint on the test split its run used (or on eval's `test_file`), optionally
    writing predictions and an export folder."""
    from sft.data.datamodule import SFTDataModule

    register_resolvers()
    apply_extras(cfg)
    run_dir = output_dir(cfg)
    from sft.errors import CheckpointError
    from sft.safe_load import load_checkpoint

    ckpt_path = Path(cfg.ckpt_path)
    checkpoint, unsafe = load_checkpoint(ckpt_path, "ckpt_path", bool(cfg.get("allow_unsafe_checkpoint")))
    data_hparams = dict(checkpoint.get("datamodule_hyper_parameters") or {})
    if not data_hparams:
        raise CheckpointError(f"ckpt_path={ckpt_path}: a Lightning checkpoint with no data module settings, "
                              "written by another tool; give one written by sft's train.py")
    module = module_from_checkpoint(checkpoint, ckpt_path)
    run_config = (checkpoint.get("sft_run_record") or {}).get("config")  # for the export's model card
    data_hparams["label_names"] = module.label_names  # the training label map, never rebuilt
    if "backbone" in data_hparams:  # written before the input spec came from the model side
        data_hparams.pop("backbone"), data_hparams.pop("architecture", None)
        data_hparams.update(model_input_spec(dict(module.hparams), module.task))
    if cfg.get("test_file"):
        data_hparams["test_file"] = cfg.test_file
    if cfg.get("batch_size"):
        data_hparams["eval_batch_size"] = cfg.batch_size
    datamodule = SFTDataModule(**data_hparams)
    if checkpoint.get(type(datamodule).__qualname__):  # e.g. the chat template a causal_lm run trained with
        datamodule.load_state_dict(checkpoint[type(datamodule).__qualname__])
    del checkpoint

    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, logger=instantiate_group(cfg.get("logger")) or False,
                                                 callbacks=instantiate_group(cfg.get("callbacks")))
    trainer.test(module, datamodule=datamodule)
    metrics = _floats(trainer.callback_metrics)
    if cfg.get("predictions_file"):
        metrics.update(module.task.write_predictions(trainer, module, datamodule, Path(cfg.predictions_file),
                                                     int(cfg.get("max_new_tokens") or 128)))
    write_metrics(run_dir / "metrics.json", metrics)
    if cfg.get("export_dir"):
        from sft.export.card import ExportRequest

        request = ExportRequest(metrics, run_config, str(ckpt_path), bool(cfg.get("export_onnx")))
        module.task.export(module, datamodule, Path(cfg.export_dir), request)
        log.info("Exported model to %s", cfg.export_dir)
    report_run(run_dir, metrics, str(ckpt_path), data_report(datamodule, module))
    return metrics


def module_from_checkpoint(checkpoint: dict, ckpt_path: Path):
    """The SFTModule a checkpoint holds, built from the checkpoint already in memory (read once).
    A LoRA checkpoint holds only the adapters and the head: the base weights come from model.pretrained."""
    from sft.errors import CheckpointError
    from sft.models.module import SFTModule

    hparams = dict(checkpoint.get("hyper_parameters") or {})
    if "task" not in hparams or "label_names" not in hparams:
        raise CheckpointError(f"ckpt_path={ckpt_path}: a Lightning checkpoint with no sft model settings, "
                              "written by another tool; give one written by sft's train.py")
    adapter_only = bool(checkpoint.get("adapter_only"))
    module = SFTModule(**hparams, load_weights=adapter_only)
    module.load_state_dict(checkpoint["state_dict"], strict=not adapter_only)
    module.on_load_checkpoint(checkpoint)
    return module.eval()


# -- entry points ------------------------------------------------------------------------------------
def _run(fn, cfg: DictConfig) -> Optional[float]:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    metric = cfg.get("optimized_metric")
    if HydraConfig.get().mode != RunMode.MULTIRUN:
        metrics = fn(cfg)
        return metrics.get(metric) if metric else None
    # A sweep job: a failure is recorded in its directory and the summary, and the sweep goes on
    # with the optimized metric counted as its worst value.
    from sft.sweep import record_failure, worst_value

    with runs.job_environment():
        try:
            metrics = fn(cfg)
        except Exception as error:  # noqa: BLE001 - any failure of one job must not end the sweep
            from sft.errors import user_message

            message = user_message(error)
            if message is None:
                log.exception("Sweep job %s failed", HydraConfig.get().job.num)
            else:
                log.error("Sweep job %s failed: error: %s", HydraConfig.get().job.num, message)
            record_failure(Path(HydraConfig.get().runtime.output_dir), error)
            return worst_value(cfg.get("optimized_mode") or "max") if metric else None
    # A sweeper (Optuna) optimizes the value the task returns.
    value = metrics.get(metric) if metric else None
    if metric and value is None:
        log.warning("optimized_metric=%s was not among the final metrics; counted as worst", metric)
        return worst_value(cfg.get("optimized_mode") or "max")
    return value


def train_main() -> None:
    register_resolvers()
    import sys

    from sft.errors import main, task
    from sft.overrides import quote_non_ascii

    sys.argv = quote_non_ascii(runs.resume_argv(sys.argv))  # non-ASCII values work as typed (Hydra needs them quoted)
    main(hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")(task(lambda cfg: _run(train, cfg))))


def eval_main() -> None:
    register_resolvers()
    import sys

    from sft.errors import main, task
    from sft.overrides import quote_non_ascii

    sys.argv = quote_non_ascii(sys.argv)
    main(hydra.main(version_base="1.3", config_path=config_dir(), config_name="eval")(task(lambda cfg: _run(evaluate, cfg))))
