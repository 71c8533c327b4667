"""Run bookkeeping around train(cfg): resuming a run in its own directory, the run record
(config, command line, git commit, package versions), config checks that run before any model
loads, and the pieces that make Hydra multirun and Lightning's DDP launcher work together."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import logging
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import hydra
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from sft.errors import ConfigError

log = logging.getLogger(__name__)

PACKAGES = ("sft", "torch", "lightning", "transformers", "tokenizers", "torchmetrics", "hydra-core", "omegaconf",
            "numpy", "peft", "timm", "torchvision", "hydra-optuna-sweeper", "optuna", "hydra-submitit-launcher",
            "deepspeed")


# -- the run record ------------------------------------------------------------------------------
def git_state(folder: Path) -> Optional[dict[str, Any]]:
    """Commit and dirtiness of the checkout holding `folder`; None outside a git checkout."""
    try:
        commit = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if commit.returncode != 0:
            return None
        status = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
        return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def run_record(config: dict, resumed_from: Optional[str] = None) -> dict[str, Any]:
    """What this launch was: when, the exact command, the code's commit, versions and the config."""
    record = {
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "cwd": os.getcwd(),
        "git": git_state(Path(__file__).resolve().parent),
        "packages": package_versions(),
        "config": config,
    }
    if resumed_from:
        record["resumed_from"] = resumed_from
    return record


def append_run_record(run_dir: Path, record: dict[str, Any]) -> None:
    """run_record.json holds one entry per launch of the run (the first, then each resume)."""
    path = run_dir / "run_record.json"
    launches = json.loads(path.read_text())["launches"] if path.is_file() else []
    launches.append({k: v for k, v in record.items() if k != "config"})
    path.write_text(json.dumps({"launches": launches}, indent=2) + "\n")


def process_seconds() -> float:
    """Seconds since this process started, from the kernel's start time where /proc has it (Linux);
    elsewhere since sft was first imported."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        return time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        import sft

        return time.time() - sft.IMPORTED_AT


def update_last_launch(run_dir: Path, entries: dict[str, Any]) -> None:
    """Adds `entries` to this launch's record in run_record.json (the last one)."""
    path = run_dir / "run_record.json"
    if not path.is_file():
        return
    launches = json.loads(path.read_text())["launches"]
    launches[-1].update(entries)
    path.write_text(json.dumps({"launches": launches}, indent=2) + "\n")


# -- resume ------------------------------------------------------------------------------------------
def resume_argv(argv: list[str]) -> list[str]:
    """For `resume=RUN_DIR` on the command line, make Hydra run in RUN_DIR itself (its .hydra/ record
    of this launch goes to .hydra/resumed, keeping the original)."""
    given = [a.split("=", 1)[1] for a in argv if a.startswith("resume=")]
    if not given or not given[-1] or given[-1] == "null" or any(a.startswith("hydra.run.dir=") for a in argv):
        return argv
    run_dir = os.path.abspath(given[-1])
    return argv + [f'hydra.run.dir="{run_dir}"', "hydra.output_subdir=.hydra/resumed"]


def resume_config(cfg: DictConfig) -> DictConfig:
    """The saved config of run `cfg.resume`, with this command's key=value overrides on top, set to
    continue in that directory from its checkpoints/last.ckpt."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    run_dir = Path(cfg.resume).absolute()
    saved_path = run_dir / "config.yaml"
    last = run_dir / "checkpoints" / "last.ckpt"
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    if not saved_path.is_file():
        raise ConfigError(f"resume={cfg.resume}: no config.yaml in {run_dir}; give the directory of an sft run")
    if not last.is_file() and not any(o.startswith("ckpt_path=") for o in overrides):
        raise ConfigError(f"resume={cfg.resume}: no checkpoint at {last}; the run saved none before it stopped "
                          "(see callbacks.periodic_checkpoint.every_n_train_steps)")
    saved = OmegaConf.load(saved_path)
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if key == "resume":
            continue
        if override.is_delete() or override.is_sweep_override():
            raise ConfigError(f"resume: the override {override.input_line!r} cannot apply to a saved run")
        if "/" in key or OmegaConf.is_dict(OmegaConf.select(saved, key)):
            # A group choice (e.g. the original `data=...` repeated): fine if it gives what was saved.
            fresh = OmegaConf.select(cfg, key.split("/")[0].split("@")[0])
            if not OmegaConf.is_config(fresh) or OmegaConf.to_container(fresh, resolve=True) != OmegaConf.to_container(
                    OmegaConf.select(saved, key.split("/")[0]), resolve=True):
                raise ConfigError(f"resume: {override.input_line!r} changes the config group {key.split('/')[0]!r}; "
                                  "a resumed run keeps its saved config and takes only key=value changes")
            continue
        value = override.value()
        if OmegaConf.select(saved, key) != value:
            OmegaConf.update(saved, key, value, force_add=True)
    with open_dict(saved):
        saved.resume = str(run_dir)
        # `ckpt_path=` on the command line picks another checkpoint of the run (e.g. when last.ckpt is damaged).
        given = [o.split("=", 1)[1] for o in overrides if o.startswith("ckpt_path=")]
        saved.ckpt_path = str(Path(given[-1]).absolute()) if given and given[-1] not in ("", "null") else str(last)
        saved.paths.output_dir = str(run_dir)
        if "hydra" in cfg:  # keep Hydra's node so ${hydra:...} lookups elsewhere still work
            saved.hydra = cfg.hydra
    return saved


# -- checks before anything loads ------------------------------------------------------------------------
def _int_or_none(value) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def validate_config(cfg: DictConfig) -> None:
    """Reject settings that cannot work, naming the key, before data or weights load."""
    trainer = cfg.get("trainer") or {}
    accelerator = str(trainer.get("accelerator", "auto"))
    devices = trainer.get("devices", 1)
    gpus = torch.cuda.device_count()
    uses_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and gpus > 0)
    available, kind = (gpus, "CUDA GPU(s)") if uses_gpu else (os.cpu_count() or 1, "CPU core(s)")
    wanted = _int_or_none(devices) if _int_or_none(devices) != -1 else None
    if OmegaConf.is_list(devices) or isinstance(devices, list):
        wanted = max(devices) + 1 if uses_gpu else len(devices)
    if accelerator in ("gpu", "cuda") and gpus == 0:
        raise ConfigError(f"trainer.accelerator={accelerator} but no CUDA GPU is visible; use trainer=cpu or "
                          "trainer.accelerator=auto")
    if wanted is not None and wanted > available:
        raise ConfigError(f"trainer.devices={devices} asks for more devices than this machine has: {available} {kind} "
                          f"visible (trainer.accelerator={accelerator})")

    scheduler = cfg.get("scheduler") or {}
    max_steps = _int_or_none(trainer.get("max_steps"))
    warmup_steps = _int_or_none(scheduler.get("warmup_steps"))
    ratio = scheduler.get("warmup_ratio")
    if ratio is not None and not 0.0 <= float(ratio) < 1.0:
        raise ConfigError(f"scheduler.warmup_ratio={ratio} must be at least 0 and below 1 (a share of the run)")
    if warmup_steps is not None and max_steps is not None and max_steps > 0 and warmup_steps >= max_steps:
        raise ConfigError(f"scheduler.warmup_steps={warmup_steps} is not shorter than training "
                          f"(trainer.max_steps={max_steps}): the learning rate would never leave warmup")


def stream_validation_schedule(cfg: DictConfig) -> None:
    """data.streaming: a stream's pass has no known length, so a share in trainer.val_check_interval
    is taken as a share of the run (trainer.max_steps) and turned into a count of training batches,
    counted across passes (Lightning refuses a share of an unsized epoch)."""
    trainer = cfg.get("trainer") or {}
    interval, max_steps = trainer.get("val_check_interval"), _int_or_none(trainer.get("max_steps"))
    if not (cfg.get("data") or {}).get("streaming") or not isinstance(interval, float) or not max_steps or max_steps < 0:
        return
    batches = max(1, round(interval * max_steps * (_int_or_none(trainer.get("accumulate_grad_batches")) or 1)))
    with open_dict(cfg):
        cfg.trainer.val_check_interval = batches
        cfg.trainer.check_val_every_n_epoch = None
    log.info("data.streaming: trainer.val_check_interval=%s taken as a share of the run (trainer.max_steps=%d): "
             "validation every %d training batches", interval, max_steps, batches)


def logged_metric_names(cfg: DictConfig, task, label_names: list[str]) -> dict[str, set[str]]:
    """The names a run logs, per stage: its task's head declares them; callbacks that log metrics
    of their own (generation's exact match) declare theirs in LOGGED_METRICS."""
    from sft.config import ModelSettings

    model = OmegaConf.to_container(cfg.model, resolve=True)
    head = {k: v for k, v in model.items() if k not in ModelSettings.__dataclass_fields__ and not k.startswith("_")}
    logged = task.logged_metrics(label_names, task.check_head_options(head))
    logged["train"].add("train/lr")
    for node in (cfg.get("callbacks") or {}).values():
        if isinstance(node, DictConfig) and "_target_" in node:
            try:
                declared = getattr(hydra.utils.get_class(node._target_), "LOGGED_METRICS", {})
            except Exception:  # a target that does not import is reported when it is instantiated
                declared = {}
            for stage, metric_names in declared.items():
                logged[stage] = logged.get(stage, set()) | set(metric_names)
    return logged


def validate_monitor(cfg: DictConfig, task, label_names: list[str]) -> None:
    """`monitor` (and every callback's own `monitor`) must be a metric the run logs during training;
    `optimized_metric` one it reports at the end."""
    names = logged_metric_names(cfg, task, label_names)
    during_fit = names["train"] | names["val"]
    checks = [("monitor", cfg.get("monitor"))]
    for name, node in (cfg.get("callbacks") or {}).items():
        if isinstance(node, DictConfig) and node.get("monitor"):
            checks.append((f"callbacks.{name}.monitor", node.monitor))
    for key, value in checks:
        if value and value not in during_fit:
            raise ConfigError(f"{key}={value} is never logged during training, so it cannot pick checkpoints or stop "
                              f"early; choose one of {sorted(names['val'])}")
    optimized = cfg.get("optimized_metric")
    if optimized and optimized not in during_fit | names["test"]:
        raise ConfigError(f"optimized_metric={optimized} is not a metric the run reports; choose one of "
                          f"{sorted(names['val'] | names['test'])}")


def sqlite_url(folder: str) -> str:
    """sqlite:/// URL of optuna.db in `folder`, creating the folder (the study opens before any job runs)."""
    path = Path(folder).absolute()
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path / 'optuna.db'}"


# -- Hydra multirun + DDP ------------------------------------------------------------------------------
def run_label() -> str:
    """In a multirun: this job's own overrides (those not typed on the sweep's command line, i.e. the
    swept values), e.g. `optimizer.lr=0.001`; used to name its TensorBoard run. '' otherwise."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode != RunMode.MULTIRUN:
            return ""
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parser = OverridesParser.create()
        typed = [a for a in sys.argv[1:] if "=" in a and not a.startswith("-")]
        fixed = {o.key_or_group for o in parser.parse_overrides(typed) if not o.is_sweep_override()}
        own = [o for o in hydra_cfg.overrides.task if o.split("=", 1)[0].lstrip("+~") not in fixed]
        label = ",".join(own) or f"job{hydra_cfg.job.num}"
        return label.replace("/", "_")
    except Exception:
        return ""


def _job_subprocess_cmd(local_rank: int) -> tuple[list[str], str]:
    """Command that starts DDP rank `local_rank` of this Hydra job. Lightning's own version repeats
    sys.argv, so in a multirun every child would re-run the whole sweep, and it points them at
    hydra.run.dir, which is not the job's directory in a sweep. This passes only the job's own
    overrides and its real output directory."""
    import __main__
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import to_absolute_path

    hydra_cfg = HydraConfig.get()
    if __main__.__spec__ is None:
        command = [sys.executable, to_absolute_path(sys.argv[0])]
    else:
        command = [sys.executable, "-m", __main__.__spec__.name]
    command += [o for o in hydra_cfg.overrides.task if not o.startswith("hydra.run.dir=")]
    command += [f'hydra.run.dir="{hydra_cfg.runtime.output_dir}"', f"hydra.job.name=train_ddp_process_{local_rank}",
                "hydra.output_subdir=null"]
    return command, hydra_cfg.runtime.cwd


def install_ddp_launch_fix() -> None:
    import lightning.fabric.strategies.launchers.subprocess_script as fabric_launcher
    import lightning.pytorch.strategies.launchers.subprocess_script as pytorch_launcher

    fabric_launcher._hydra_subprocess_cmd = _job_subprocess_cmd
    pytorch_launcher._hydra_subprocess_cmd = _job_subprocess_cmd


# Set by Lightning's launcher in the launching process; left behind, they would make the next
# sweep job believe its processes were started externally (torchrun) and wait for ranks forever.
LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "GLOBAL_RANK", "RANK",
              "PL_GLOBAL_SEED", "PL_SEED_WORKERS")


class job_environment:
    """Context for one sweep job: afterwards, the launch variables are as before and no process
    group is left initialized."""

    def __enter__(self):
        self.saved = {k: os.environ.get(k) for k in LAUNCH_ENV}
        return self

    def __exit__(self, *exc):
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        return False
