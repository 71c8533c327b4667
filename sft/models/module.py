"""The one LightningModule: backbone + task head + loss + metrics, chosen by task."""

from __future__ import annotations

import re
from typing import Any, Callable, Optional, Sequence

import lightning as L
import torch
import torch.nn as nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from sft.models.backbones import load_text_encoder
from sft.models.heads import ClassificationHead
from sft.optim import parameter_groups
from sft.tasks import ConfigError, check_task_model


def _metric_suffix(label: str) -> str:
    return re.sub(r"[^0-9A-Za-z_.-]+", "_", label)


def class_weight_tensor(class_weights, label_names: Sequence[str]) -> Optional[torch.Tensor]:
    """`model.class_weights` as a list aligned with the label map, or a {label: weight} mapping."""
    if class_weights is None:
        return None
    if isinstance(class_weights, dict) or hasattr(class_weights, "items"):
        unknown = set(map(str, class_weights)) - set(label_names)
        if unknown:
            raise ConfigError(f"model.class_weights names labels {sorted(unknown)} that the data does not have; "
                              f"labels: {list(label_names)}")
        weights = [float(dict(class_weights).get(name, 1.0)) for name in label_names]
    else:
        weights = [float(w) for w in class_weights]
        if len(weights) != len(label_names):
            raise ConfigError(f"model.class_weights has {len(weights)} entries; the data has {len(label_names)} labels "
                              f"{list(label_names)}")
    return torch.tensor(weights)


class SFTModule(L.LightningModule):
    def __init__(
        self,
        task: str,
        label_names: Sequence[str],
        pretrained: str,
        modality: str = "text",
        pooling: str = "cls",
        dropout: float = 0.1,
        label_smoothing: float = 0.0,
        class_weights: Any = None,
        head_lr: Optional[float] = None,
        freeze_backbone: bool = False,
        trust_remote_code: bool = False,
        attn_implementation: Optional[str] = None,
        optimizer: Optional[Callable] = None,
        scheduler: Optional[Callable] = None,
        load_weights: bool = True,
    ):
        super().__init__()
        check_task_model(task, modality)  # before any weights load
        label_names = [str(n) for n in label_names]
        weights = class_weight_tensor(class_weights, label_names)
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "load_weights"], logger=False)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.label_names = label_names

        self.backbone = load_text_encoder(pretrained, trust_remote_code, load_weights, attn_implementation)
        # from_pretrained returns eval mode, and Lightning keeps the modes it finds: train with dropout on.
        self.backbone.train()
        if freeze_backbone:
            self.backbone.requires_grad_(False)
        self.head = ClassificationHead(self.backbone.config.hidden_size, len(label_names), pooling, dropout)
        self.loss_fn = nn.CrossEntropyLoss(weight=weights, label_smoothing=label_smoothing)

        num_classes = len(label_names)
        metrics = MetricCollection({
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "f1": MulticlassF1Score(num_classes, average="macro"),
        })
        self.train_metrics = MetricCollection({"acc": MulticlassAccuracy(num_classes, average="micro")}, prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.test_class_f1 = MulticlassF1Score(num_classes, average=None)

    # -- forward ---------------------------------------------------------------------------
    def forward(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        hidden = self.backbone(**inputs).last_hidden_state
        return self.head(hidden, attention_mask)

    def _step(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        loss = self.loss_fn(logits.float(), batch["labels"])
        return loss, logits

    # -- steps -----------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, logits = self._step(batch)
        self.train_metrics.update(logits.detach(), batch["labels"])
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def on_train_epoch_end(self) -> None:
        self.log_dict(self.train_metrics.compute())
        self.train_metrics.reset()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss, logits = self._step(batch)
        self.val_metrics.update(logits, batch["labels"])
        self.log("val/loss", loss, on_epoch=True, batch_size=len(batch["labels"]), sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.val_metrics.compute(), prog_bar=True)
        self.val_metrics.reset()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        loss, logits = self._step(batch)
        self.test_metrics.update(logits, batch["labels"])
        self.test_class_f1.update(logits, batch["labels"])
        self.log("test/loss", loss, on_epoch=True, batch_size=len(batch["labels"]), sync_dist=True)

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute())
        per_class = self.test_class_f1.compute()
        self.log_dict({f"test/f1_{_metric_suffix(name)}": per_class[i] for i, name in enumerate(self.label_names)})
        self.test_metrics.reset()
        self.test_class_f1.reset()

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        logits = self(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        probabilities = logits.float().softmax(-1)
        out = {"probabilities": probabilities, "prediction": probabilities.argmax(-1)}
        if "labels" in batch:
            out["labels"] = batch["labels"]
        return out

    # -- optimization ----------------------------------------------------------------------
    def configure_optimizers(self):
        if self.optimizer_factory is None:
            raise ConfigError("SFTModule needs an optimizer (the optimizer= config group) to train")
        optimizer = self.optimizer_factory(parameter_groups(self.named_parameters(), "head.", self.hparams.head_lr))
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, total_steps=self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
