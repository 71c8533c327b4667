"""Model cards: the README.md of every export, with Hugging Face Hub metadata (library_name,
pipeline_tag, base_model, license, metrics, model-index) and a body that says what data the model
saw, how it trained, how well it did on the test split and how to load the folder."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

PIPELINE_TAGS = {"text_classification": "text-classification", "multilabel_classification": "text-classification",
                 "text_regression": "text-classification", "token_classification": "token-classification",
                 "image_classification": "image-classification", "causal_lm": "text-generation",
                 "audio_classification": "audio-classification"}
# sft's metric names -> the Hub's metric ids
HUB_METRICS = {"acc": "accuracy", "f1": "f1", "micro_f1": "f1", "macro_f1": "f1", "exact_match": "exact_match",
               "mse": "mse", "rmse": "rmse", "mae": "mae", "pearson": "pearsonr", "spearman": "spearmanr",
               "entity_f1": "seqeval", "entity_precision": "seqeval", "entity_recall": "seqeval",
               "token_acc": "accuracy", "perplexity": "perplexity", "loss": "loss"}


@dataclass
class ExportRequest:
    """What eval.py knows beyond the module and data: the final test metrics, the training run's
    config (from the checkpoint's run record), the checkpoint and whether to add model.onnx."""

    metrics: dict[str, float] = field(default_factory=dict)
    config: Optional[dict] = None
    checkpoint: Optional[str] = None
    onnx: bool = False


def base_model_id(pretrained: Optional[str]) -> Optional[str]:
    """A Hub id for `base_model` (a local folder is not one; it is named in the body instead)."""
    from sft import assets

    if not pretrained or Path(pretrained).expanduser().exists():
        return None
    if pretrained in assets.CATALOG:
        return None
    if pretrained.startswith("timm/") or re.fullmatch(r"[\w.-]+/[\w.-]+", pretrained):
        return pretrained
    return None


def base_license(pretrained: Optional[str]) -> Optional[str]:
    """The base model's license where it is known: the catalog's, or its own model card's."""
    from sft import assets

    if not pretrained:
        return None
    if pretrained in assets.CATALOG and not Path(pretrained).exists():
        text = assets.CATALOG[pretrained].license
        spdx = re.search(r"(Apache-2\.0|MIT|BSD-3-Clause)\s*\(model weights\)", text) or re.match(r"(Apache-2\.0|MIT|BSD-3-Clause)", text)
        return spdx.group(1).lower() if spdx else None
    readme = Path(pretrained).expanduser() / "README.md"
    if readme.is_file():
        match = re.search(r"^license:\s*(\S+)", readme.read_text(errors="replace").split("\n---", 1)[0], re.M)
        return match.group(1) if match else None
    return None


def data_lines(datamodule) -> list[str]:
    hp = datamodule.hparams
    lines = []
    if hp.get("dataset"):
        lines.append(f"- catalog data set: `{hp.dataset}`")
    for key in ("train_file", "val_file", "test_file"):
        if hp.get(key):
            lines.append(f"- {key}: `{hp[key]}`")
    try:
        counts = {split: len(table) for split, table in datamodule.tables().items()}
        lines.append("- records: " + ", ".join(f"{split} {n}" for split, n in counts.items()))
    except Exception:  # a streamed source has no length; the card does without counts
        pass
    return lines


def settings_lines(module, datamodule, config: Optional[dict]) -> list[str]:
    hp = dict(module.hparams)
    lines = [f"- task: `{hp.get('task')}`", f"- base model: `{hp.get('pretrained') or hp.get('architecture')}`"]
    keep = ("architecture", "freeze_backbone", "lora", "head_lr", "layer_decay", "gradient_checkpointing")
    lines += [f"- model.{k}: `{hp[k]}`" for k in keep if hp.get(k) not in (None, False)]
    lines += [f"- model.{k}: `{v}`" for k, v in sorted(dict(module.head_options).items()) if v is not None]
    data = dict(datamodule.hparams)
    lines += [f"- data.{k}: `{data[k]}`" for k in ("max_length", "batch_size") if data.get(k) is not None]
    for group in ("optimizer", "scheduler"):
        part = (config or {}).get(group) or {}
        shown = {k: v for k, v in part.items() if k != "_target_" and not isinstance(v, dict)}
        if shown:
            lines.append(f"- {group}: " + ", ".join(f"{k}={v}" for k, v in shown.items()))
    trainer = (config or {}).get("trainer") or {}
    shown = {k: trainer[k] for k in ("max_epochs", "max_steps", "precision", "accumulate_grad_batches")
             if trainer.get(k) not in (None, -1)}
    if shown:
        lines.append("- trainer: " + ", ".join(f"{k}={v}" for k, v in shown.items()))
    if (config or {}).get("seed") is not None:
        lines.append(f"- seed: {config['seed']}")  # type: ignore[index]
    return lines


def front_matter(meta: dict[str, Any]) -> str:
    import yaml

    return "---\n" + yaml.safe_dump({k: v for k, v in meta.items() if v not in (None, [], {})}, sort_keys=False,
                                     allow_unicode=True) + "---\n"


def write_card(out: Path, module, datamodule, request: Optional[ExportRequest], *, library_name: str,
               how_to_load: str, layout_note: str = "", label_names: Optional[list[str]] = None) -> Path:
    request = request or ExportRequest()
    hp = dict(module.hparams)
    task = hp.get("task", "")
    pretrained = hp.get("pretrained")
    test_metrics = {k: float(v) for k, v in sorted(request.metrics.items()) if k.startswith("test/")}
    hub_metrics = sorted({HUB_METRICS[k.split("/", 1)[1]] for k in test_metrics if k.split("/", 1)[1] in HUB_METRICS})
    name = out.resolve().name
    meta: dict[str, Any] = {
        "library_name": library_name,
        "pipeline_tag": PIPELINE_TAGS.get(task),
        "base_model": base_model_id(pretrained),
        "license": base_license(pretrained),
        "tags": ["sft", task],
        "metrics": hub_metrics,
    }
    if test_metrics:
        meta["model-index"] = [{"name": name, "results": [{
            "task": {"type": PIPELINE_TAGS.get(task, task)},
            "dataset": {"name": datamodule.hparams.get("dataset") or Path(str(datamodule.hparams.get("train_file")
                                                                                  or "data")).name,
                        "type": "custom", "split": "test"},
            "metrics": [{"type": HUB_METRICS.get(k.split("/", 1)[1], k.split("/", 1)[1]), "name": k, "value": round(v, 6)}
                        for k, v in test_metrics.items()]}]}]
    labels = list(label_names if label_names is not None else module.label_names)
    body = [f"# {name}", "",
            f"A `{task}` model fine-tuned with sft from `{pretrained or hp.get('architecture')}`."]
    if layout_note:
        body += ["", layout_note]
    body += ["", "## Data", "", *data_lines(datamodule)]
    if labels:
        body += ["", "Label map (id: label):", "", "```json", json.dumps(dict(enumerate(labels)), ensure_ascii=False),
                 "```"]
    body += ["", "## Training settings", "", *settings_lines(module, datamodule, request.config)]
    if request.checkpoint:
        body.append(f"- checkpoint: `{request.checkpoint}`")
    body += ["", "## Test metrics", ""]
    if test_metrics:
        body += ["| metric | value |", "|---|---|", *[f"| {k} | {v:.4f} |" for k, v in test_metrics.items()]]
    else:
        body.append("Not measured at export.")
    body += ["", "## How to load", "", "```python", how_to_load.strip(), "```", ""]
    path = out / "README.md"
    path.write_text(front_matter(meta) + "\n" + "\n".join(body), encoding="utf-8")
    return path
