"""The tasks sft trains, and which kind of backbone each needs.

The data config declares the task; the model config declares the modality of its backbone.
A pair that cannot work is refused here, before any weights or data load.
"""

TASK_MODALITY = {
    "text_classification": "text",
    "image_classification": "image",
}


class ConfigError(ValueError):
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
