"""model.onnx in an export (`eval.py export_onnx=true`): the trained encoder or image classifier
exactly as eval.py runs it (backbone + sft head, eval mode), with dynamic batch (and sequence) axes
and one output, `logits` (regression: the values in the targets' units). It is written from the sft
module, so it exists for the stock layout and for sft's own layout alike. Running and checking it
needs the `onnx` extra (`pip install -e .[onnx]`: onnx, onnxruntime); writing it needs only torch."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn as nn

from sft.export.stock import eval_mode

log = logging.getLogger(__name__)

OPSET = 17


class TextLogits(nn.Module):
    """Positional inputs in (ONNX wants tensors), the head's outputs out."""

    def __init__(self, module: nn.Module, names: list[str]):
        super().__init__()
        self.backbone, self.head, self.names = module.backbone, module.head, names
        self.head_values = getattr(module.head, "values", None)
        self.regression = module.hparams.task == "text_regression"

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        batch = dict(zip(self.names, inputs))
        out = self.head(self.backbone(**batch).last_hidden_state, batch)
        return self.head_values(out) if self.regression and self.head_values else out


class ImageLogits(nn.Module):
    def __init__(self, module: nn.Module):
        super().__init__()
        self.backbone, self.head = module.backbone, module.head

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(pixel_values), {})


def text_input_names(module: nn.Module, tokenizer) -> list[str]:
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in tokenizer.model_input_names and getattr(module.backbone.config, "type_vocab_size", 0):
        names.append("token_type_ids")
    return names


def export_text_onnx(module: nn.Module, tokenizer, path: Path) -> Path:
    """Inputs input_ids, attention_mask (and token_type_ids where the encoder has them), each
    (batch, sequence), int64; output logits (batch, labels), or (batch, sequence, tags) for NER."""
    names = text_input_names(module, tokenizer)
    device = next(module.parameters()).device
    sample = tokenizer(["a short text", "a somewhat longer second text"], padding=True, return_tensors="pt")
    inputs = tuple(sample[name].to(device) for name in names)
    per_token = module.hparams.task == "token_classification"
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    axes["logits"] = {0: "batch", 1: "sequence"} if per_token else {0: "batch"}
    with eval_mode(module), torch.no_grad():
        torch.onnx.export(TextLogits(module, names), inputs, str(path), input_names=names, output_names=["logits"],
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    log.info("Wrote %s", path)
    return path


def export_image_onnx(module: nn.Module, spec: dict, path: Path) -> Path:
    """Input pixel_values (batch, channels, size, size), float32, normalised; output logits (batch, classes)."""
    device = next(module.parameters()).device
    sample = torch.zeros(2, spec["channels"], spec["size"], spec["size"], device=device)
    with eval_mode(module), torch.no_grad():
        torch.onnx.export(ImageLogits(module), (sample,), str(path), input_names=["pixel_values"],
                          output_names=["logits"], dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=OPSET, dynamo=False)
    log.info("Wrote %s", path)
    return path
