"""The tasks sft trains, and which kind of backbone each needs.

The data config declares the task; the model config declares the modality of its backbone.
A pair that cannot work is refused here, before any weights or data load.
"""

from sft.errors import UserError

TASK_MODALITY = {
    "text_classification": "text",
    "multilabel_classification": "text",
    "text_regression": "text",
    "token_classification": "text",
    "causal_lm": "causal_lm",  # chat / instruction SFT needs a decoder with its LM head
    "image_classification": "image",
}

# The validation metric that picks the best checkpoint of each task, and its better direction
# (train.yaml's `monitor` / `monitor_mode` follow data.task through the `task_monitor` resolver).
TASK_MONITOR = {
    "text_classification": ("val/acc", "max"),
    "multilabel_classification": ("val/micro_f1", "max"),
    "text_regression": ("val/mse", "min"),
    "token_classification": ("val/entity_f1", "max"),
}


def task_monitor(task: str, part: str = "metric") -> str:
    """`monitor` (part=metric) or `monitor_mode` (part=mode) for a task; val/loss for others."""
    metric, mode = TASK_MONITOR.get(task, ("val/loss", "min"))
    return mode if part == "mode" else metric


def plain(value):
    """Config containers (OmegaConf lists and dicts) as plain lists and dicts, so that checkpoint
    hyperparameters load with torch.load(weights_only=True)."""
    from collections.abc import Mapping, Sequence

    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [plain(v) for v in value]
    return value


class ConfigError(UserError, ValueError):
    """A configuration that cannot work; the message says which keys and what to change."""


def check_task_model(task: str, modality: str) -> None:
    if task not in TASK_MODALITY:
        raise ConfigError(f"data.task={task!r} is not a known task; known tasks: {', '.join(TASK_MODALITY)}")
    needed = TASK_MODALITY[task]
    if modality != needed:
        raise ConfigError(
            f"data.task={task!r} needs a {needed} backbone, but the model config is for {modality!r} inputs "
            f"(model.modality={modality!r}). Choose a model= option for {needed} models."
        )
