"""The tasks sft trains: one `Task` per module, one registry.

A task declares, in one place, everything that differs between tasks: the kind of backbone it
needs (modality), its own data settings and head settings (typed option sets), how records
become examples (its processor), its head (loss and metrics, and the metric names it logs), the
metric that picks the best checkpoint, its prediction files and its export. The data module, the
Lightning module, the CLI, config checks and export ask the task and nothing else.

Adding a task is one module that subclasses `Task` and calls `register_task`, plus its configs
(`conf/data/<task>.yaml`, `conf/head/<task>.yaml`):

    from sft.tasks import Task, register_task

    @register_task
    class MyTask(Task):
        name = "my_task"
        ...
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence

from sft.errors import ConfigError
from sft.tasks.base import Task

__all__ = ["Task", "ConfigError", "register_task", "get_task", "task_names", "task_monitor", "check_task_model", "plain"]

# The modules of the tasks that ship with sft; imported on first use of the registry.
BUILTIN_TASKS = ("text_classification", "multilabel_classification", "text_regression", "token_classification",
                 "image_classification", "audio_classification", "causal_lm")

_REGISTRY: dict[str, Task] = {}
_builtins_loaded = False


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: make a task known by its `name` (a later registration of the name replaces it)."""
    if not getattr(cls, "name", None):
        raise TypeError(f"{cls.__name__} needs a `name`")
    _REGISTRY[cls.name] = cls()
    return cls


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        for name in BUILTIN_TASKS:
            importlib.import_module(f"sft.tasks.{name}")


def task_names() -> list[str]:
    _load_builtins()
    return list(_REGISTRY)


def get_task(name: str) -> Task:
    _load_builtins()
    if name not in _REGISTRY:
        raise ConfigError(f"data.task={name!r} is not a known task; known tasks: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def task_monitor(task: str, part: str = "metric") -> str:
    """`monitor` (part=metric) or `monitor_mode` (part=mode) of a task (the `task_monitor` resolver)."""
    metric, mode = get_task(task).monitor
    return mode if part == "mode" else metric


def check_task_model(task: str, modality: str) -> None:
    """Refuse a data task and a model config whose backbone cannot serve it, before anything loads."""
    needed = get_task(task).modality
    if modality != needed:
        raise ConfigError(
            f"data.task={task!r} needs a {needed} backbone, but the model config is for {modality!r} inputs "
            f"(model.modality={modality!r}). Choose a model= option for {needed} models."
        )


def plain(value):
    """Config containers (OmegaConf lists and dicts) as plain lists and dicts, so that checkpoint
    hyperparameters load with torch.load(weights_only=True)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [plain(v) for v in value]
    return value
