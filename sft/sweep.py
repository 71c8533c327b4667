"""Multirun bookkeeping: a failed job is recorded instead of ending the sweep, and every sweep ends
with summary.csv (and a printed table) in its directory, one row per job, best first."""

from __future__ import annotations

import csv
import json
import logging
import math
import traceback
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from sft.errors import ConfigError

log = logging.getLogger("sft")

ERROR_FILE = "error.json"


def worst_value(mode: str) -> float:
    """What a failed job counts as for the sweeper: the worst possible value of the optimized metric."""
    return -math.inf if mode == "max" else math.inf


def record_failure(run_dir: Path, error: BaseException) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    from sft.errors import user_message

    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    # A user error is recorded with the one-line message train.py prints; a bug with its type.
    message = user_message(error) or f"{type(error).__name__}: {error}"
    (run_dir / ERROR_FILE).write_text(json.dumps({"error": message,
                                                  "traceback": text[-8000:]}, indent=2) + "\n")


# -- an optimized metric that cannot exist -----------------------------------------------------------
# Settings that decide whether (and when) validation runs; a sweep that varies one of them is not judged.
VALIDATION_KEYS = ("trainer.max_steps", "trainer.max_epochs", "trainer.val_check_interval",
                   "trainer.check_val_every_n_epoch", "trainer.limit_val_batches", "trainer.limit_train_batches",
                   "trainer.accumulate_grad_batches", "trainer.devices", "trainer.num_nodes", "data.batch_size",
                   "data.train_file", "data.dataset", "data.val_fraction", "data.test_fraction",
                   "data.max_train_records", "optimized_metric", "monitor")
MAX_COUNTED_BYTES = 256 * 2**20  # record files larger than this are not counted (the check must stay cheap)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _int(value) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def count_records(path: str) -> Optional[int]:
    """Records in a training file or folder when that is cheap to know; None otherwise."""
    file = Path(path)
    if file.is_dir():
        return sum(1 for p in file.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) or None
    if not file.is_file():
        return None
    suffix = file.suffix.lower()
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq

            return pq.ParquetFile(file).metadata.num_rows
        except Exception:  # noqa: BLE001
            return None
    if suffix not in (".csv", ".tsv", ".jsonl") or file.stat().st_size > MAX_COUNTED_BYTES:
        return None
    with open(file, "rb") as f:
        lines = sum(1 for line in f if line.strip())
    return max(lines - (suffix != ".jsonl"), 0)  # CSV and TSV have a header line


def train_records(data: DictConfig) -> Optional[int]:
    """Training records of the data config (after the val/test shares are carved off), or None."""
    total = None
    if data.get("train_file"):
        total = count_records(str(data.train_file))
    elif data.get("dataset"):
        from sft import assets

        try:  # the first job would fetch it anyway; fetched once, then read from the cache
            assets.fetch(str(data.dataset))
            info = assets.asset_dir(str(data.dataset)) / "asset.json"
            total = json.loads(info.read_text()).get("records") if info.is_file() else None
        except Exception:  # noqa: BLE001 - an unknown name or a failed fetch is reported by the run itself
            total = None
    if not total:
        return None
    shipped: dict = {}
    if data.get("dataset"):
        from sft import assets

        shipped = dict(assets.get(str(data.dataset)).splits)  # splits a catalog data set ships on its own
    share = 1.0
    for split in ("val", "test"):
        if not data.get(f"{split}_file") and split not in shipped:
            share -= float(data.get(f"{split}_fraction") or 0.0)
    records = int(total * max(share, 0.0))
    limit = _int(data.get("max_train_records"))
    return min(records, limit) if limit else records


def never_validates(cfg: DictConfig) -> Optional[str]:
    """Why a run of `cfg` can never log its `optimized_metric` (a val/ metric), when the config shows it
    for certain: validation is off, or the first validation comes after the run ends. None otherwise
    (including when that depends on things not cheap to know)."""
    metric = cfg.get("optimized_metric")
    if not metric or not str(metric).startswith("val/"):
        return None  # test/ metrics are always reported at the end
    trainer = cfg.get("trainer") or {}
    limit_val = trainer.get("limit_val_batches")
    if limit_val is not None and float(limit_val) == 0:
        return f"trainer.limit_val_batches={limit_val} turns validation off"
    every_n_epochs = trainer.get("check_val_every_n_epoch")
    max_epochs, max_steps = _int(trainer.get("max_epochs")), _int(trainer.get("max_steps"))
    if every_n_epochs and max_epochs and max_epochs > 0 and (max_steps is None or max_steps < 0) \
            and every_n_epochs > max_epochs:
        return (f"trainer.check_val_every_n_epoch={every_n_epochs} but the run lasts "
                f"trainer.max_epochs={max_epochs} epoch(s)")
    if not max_steps or max_steps < 0:
        return None
    batches = max_steps * (_int(trainer.get("accumulate_grad_batches")) or 1)  # training batches per device
    interval = trainer.get("val_check_interval")
    if _int(interval) is not None:
        if interval > batches:
            return (f"the first validation comes after {interval} training batches "
                    f"(trainer.val_check_interval={interval}), but trainer.max_steps={max_steps} ends the run "
                    f"after {batches}")
        return None
    per_epoch = _batches_per_epoch(cfg)
    if per_epoch is None:
        return None
    share = float(interval) if interval is not None else 1.0
    first = math.ceil(share * per_epoch) + ((every_n_epochs or 1) - 1) * per_epoch
    if first > batches:
        return (f"the first validation comes after about {first} training batches (trainer.val_check_interval="
                f"{interval} of an epoch of about {per_epoch} batches, every {every_n_epochs or 1} epoch(s)), but "
                f"trainer.max_steps={max_steps} ends the run after {batches}")
    return None


def _batches_per_epoch(cfg: DictConfig) -> Optional[int]:
    data, trainer = cfg.get("data") or {}, cfg.get("trainer") or {}
    if data.get("task") == "causal_lm" or data.get("packing") or data.get("streaming"):
        return None  # batches depend on packing or the stream
    records = train_records(data)
    batch_size = _int(data.get("batch_size"))
    devices, nodes = _int(trainer.get("devices")), _int(trainer.get("num_nodes")) or 1
    if not records or not batch_size or devices is None or devices < 1:
        return None
    per_epoch = math.ceil(records / (batch_size * devices * nodes))
    limit = trainer.get("limit_train_batches")
    if _int(limit) is not None:
        per_epoch = min(per_epoch, limit)
    elif limit is not None:
        per_epoch = int(per_epoch * float(limit))
    return per_epoch


def swept_keys(cfg: DictConfig) -> set[str]:
    """Keys a multirun varies: comma/range sweeps on the command line and the sweeper's search space."""
    keys: set[str] = set()
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        overrides = OmegaConf.select(cfg, "hydra.overrides.task") or []
        keys |= {o.key_or_group for o in OverridesParser.create().parse_overrides(list(overrides))
                 if o.is_sweep_override()}
    except Exception:  # noqa: BLE001
        pass
    params = OmegaConf.select(cfg, "hydra.sweeper.params")
    if params:
        keys |= {str(k) for k in params}
    return keys


def refuse_hopeless_sweep(cfg: DictConfig) -> Optional[str]:
    """The message refusing a sweep whose every job must end without its optimized metric, or None."""
    varied = swept_keys(cfg)
    if any(key == v or key.startswith(v + ".") for v in varied for key in VALIDATION_KEYS):
        return None
    try:
        why = never_validates(cfg)
    except Exception:  # noqa: BLE001 - a config the run itself will reject: leave it to the run
        return None
    if why is None:
        return None
    return (f"This sweep optimizes optimized_metric={cfg.get('optimized_metric')}, a validation metric, but no job "
            f"would ever log it: {why}. Every trial would end with no objective. Validate sooner (e.g. "
            "trainer.val_check_interval=N optimizer steps, with trainer.check_val_every_n_epoch=null), train "
            "longer, or optimize a metric the test reports (optimized_metric=test/...).")


def missing_metric_reason(job_dir: Path, metric: str) -> str:
    """summary.csv's error for a job that finished without its optimized metric."""
    why = "no validation ran before the run ended"
    config_file = job_dir / "config.yaml"
    if config_file.is_file():
        try:
            config = OmegaConf.load(config_file)
            trainer = config.get("trainer") or {}
            why += (f" (trainer.max_steps={trainer.get('max_steps')}, trainer.val_check_interval="
                    f"{trainer.get('val_check_interval')}, trainer.check_val_every_n_epoch="
                    f"{trainer.get('check_val_every_n_epoch')})")
        except Exception:  # noqa: BLE001
            pass
    return f"optimized_metric={metric} was never logged: {why}" if metric.startswith("val/") else \
        f"optimized_metric={metric} is not among the job's final metrics"


def optuna_direction(mode: str) -> str:
    if mode not in ("max", "min"):
        raise ConfigError(f"optimized_mode={mode!r} must be max or min")
    return "maximize" if mode == "max" else "minimize"


def _job_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for job_dir in sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)):
        overrides_file = job_dir / ".hydra" / "overrides.yaml"
        overrides = list(OmegaConf.load(overrides_file)) if overrides_file.is_file() else []
        row: dict[str, Any] = {"job": int(job_dir.name), "overrides": " ".join(overrides), "status": "ok", "error": ""}
        if (job_dir / ERROR_FILE).is_file():
            row["status"] = "failed"
            row["error"] = json.loads((job_dir / ERROR_FILE).read_text())["error"]
        elif (job_dir / "metrics.json").is_file():
            row["metrics"] = json.loads((job_dir / "metrics.json").read_text(encoding="utf-8"))
        else:
            row["status"] = "failed"
            row["error"] = "the job left no metrics.json (killed, or stopped before the end)"
        row["run_dir"] = str(job_dir)
        rows.append(row)
    return rows


def write_summary(sweep_dir: Path, metric: Optional[str], mode: str) -> list[dict[str, Any]]:
    """summary.csv in `sweep_dir`: job, status, objective (the optimized metric), overrides, every final metric,
    error and run directory; sorted best first, failed jobs (worst value) last."""
    rows = _job_rows(sweep_dir)
    # What sets the jobs apart: the overrides not shared by all of them (for the printed table).
    shared = set.intersection(*(set(r["overrides"].split()) for r in rows)) if len(rows) > 1 else set()
    for row in rows:
        row["swept"] = " ".join(o for o in row["overrides"].split() if o not in shared)
    worst = worst_value(mode)
    for row in rows:
        value = row.get("metrics", {}).get(metric) if metric else None
        if metric and row["status"] == "ok" and value is None:  # finished, but with nothing to optimize
            row["status"] = "failed"
            row["error"] = missing_metric_reason(Path(row["run_dir"]), metric)
        row["value"] = worst if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
    rows.sort(key=lambda r: (r["status"] != "ok", -r["value"] if mode == "max" else r["value"], r["job"]))
    metric_names = sorted({k for r in rows for k in r.get("metrics", {})})
    # `objective`: the optimized metric as the sweep ranks it (worst possible for a failed job).
    header = ["rank", "job", "status", "objective", "overrides", *metric_names, "error", "run_dir"]
    with open(sweep_dir / "summary.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for rank, row in enumerate(rows, start=1):
            metrics = row.get("metrics", {})
            writer.writerow([rank, row["job"], row["status"], row["value"], row["overrides"],
                             *[metrics.get(k, "") for k in metric_names], row["error"], row["run_dir"]])
    return rows


def print_summary(rows: list[dict[str, Any]], metric: Optional[str], sweep_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Sweep summary ({len(rows)} jobs, best first): {sweep_dir / 'summary.csv'}")
    for column in ("#", "job", "status", metric or "metric", "swept overrides", "error / run directory"):
        table.add_column(column, overflow="fold")
    for rank, row in enumerate(rows, start=1):
        table.add_row(str(rank), str(row["job"]), row["status"], f"{row['value']:.4f}", row["swept"] or row["overrides"],
                      row["error"] or row["run_dir"])
    Console(width=200).print(table)


class SweepSummary(Callback):
    """Hydra callback (conf/hydra/default.yaml): writes and prints the summary when a multirun ends."""

    def __init__(self):
        self.sweep_dirs: set[Path] = set()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Refuse a sweep whose optimized metric no job could ever log (Hydra turns a callback's exception
        into a warning, so this one ends the process itself)."""
        message = refuse_hopeless_sweep(config)
        if message:
            import sys

            print(f"Error: {message}", file=sys.stderr, flush=True)
            raise SystemExit(2)

    def on_job_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        try:  # the job's own directory, as resolved when it ran
            self.sweep_dirs.add(Path(job_return.hydra_cfg.hydra.runtime.output_dir).parent)
        except Exception:
            pass

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = next(iter(self.sweep_dirs)) if len(self.sweep_dirs) == 1 else Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        metric = config.get("optimized_metric")
        mode = config.get("optimized_mode") or "max"
        rows = write_summary(sweep_dir, metric, mode)
        print_summary(rows, metric, sweep_dir)
        failed = [r for r in rows if r["status"] != "ok"]
        if failed:
            log.warning("%d of %d sweep jobs failed; see the error column of %s", len(failed), len(rows),
                        sweep_dir / "summary.csv")
