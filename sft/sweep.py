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
