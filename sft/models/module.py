"""The one LightningModule: backbone + task head + loss + metrics, chosen by task."""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import lightning as L
import torch

from sft.errors import ConfigError
from sft.models.backbones import BACKBONES
from sft.optim import parameter_groups
from sft.tasks import check_task_model, get_task, plain


class SFTModule(L.LightningModule):
    """Backbone + the task's head; the head owns loss and metrics, so the steps are the same for
    every task. `head_options` are the head's own settings (pooling, dropout, label_smoothing, ...)."""

    def __init__(
        self,
        task: str,
        label_names: Sequence[str],
        pretrained: Optional[str],
        modality: str = "text",
        head_lr: Optional[float] = None,
        freeze_backbone: bool = False,
        freeze_layers: Optional[int] = None,
        trust_remote_code: bool = False,
        attn_implementation: Optional[str] = None,
        optimizer: Optional[Callable] = None,
        scheduler: Optional[Callable] = None,
        load_weights: bool = True,
        lora: Optional[dict] = None,
        gradient_checkpointing: bool = False,
        architecture: Optional[str] = None,
        backbone_options: Optional[dict] = None,
        layer_decay: Optional[float] = None,
        channels_last: bool = False,
        compile: bool | dict = False,
        recipe: Optional[dict] = None,  # the model group's optimizer recipe (read by conf/optimizer/), not used here
        **head_options,
    ):
        super().__init__()
        check_task_model(task, modality)  # before any weights load
        self.task = get_task(task)
        if lora:  # plain data (not a DictConfig), so checkpoints load with torch.load(weights_only=True)
            lora = {str(k): (v if isinstance(v, (str, int, float, bool)) or v is None else list(v)) for k, v in lora.items()}
        label_names = [str(n) for n in label_names]
        # Plain lists and dicts (not OmegaConf containers), so checkpoints load with weights_only.
        backbone_options = plain(backbone_options) if backbone_options is not None else None
        head_options = {key: plain(value) for key, value in head_options.items()}
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "load_weights", "recipe"], logger=False)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.label_names = label_names

        if modality == "image":
            from sft.models.image_backbones import load_image_backbone

            self.backbone = load_image_backbone(pretrained, architecture, load_weights, channels_last,
                                                dict(backbone_options or {}), trust_remote_code)
            hidden_size = self.backbone.num_features
        elif modality == "audio":
            from sft.models.audio_backbones import load_audio_backbone

            self.backbone = load_audio_backbone(pretrained, architecture, load_weights, dict(backbone_options or {}),
                                                trust_remote_code)
            hidden_size = self.backbone.num_features
        else:
            self.backbone = BACKBONES[modality](pretrained, trust_remote_code, load_weights, attn_implementation)
            hidden_size = self.backbone.config.hidden_size
        if gradient_checkpointing:  # recompute activations in backward: less memory, ~30% more compute
            if hasattr(self.backbone, "gradient_checkpointing_enable"):  # transformers
                self.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
                self.backbone.config.use_cache = False
            else:  # timm
                self.backbone.set_grad_checkpointing(True)
        # from_pretrained returns eval mode, and Lightning keeps the modes it finds: train with dropout on.
        self.backbone.train()
        if freeze_backbone:
            self.backbone.requires_grad_(False)
        elif freeze_layers:
            if modality not in ("image", "audio"):
                raise ConfigError("model.freeze_layers is for image and audio backbones; for a text encoder use "
                                  "model.freeze_backbone or model.lora")
            freeze_lower_layers(self.backbone, freeze_layers)
        self.head_options = head_options  # the head's settings and what was learned for it from the data
        self.head = self.task.build_head(hidden_size, label_names, head_options)
        self.flops_per_batch = None  # set per batch by SFTThroughputMonitor, for FLOP/s and MFU in the logs
        self.step_grad_norm = None  # this step's global gradient norm, when the NaN/inf guard computed it
        if lora:  # peft LoRA adapters: the backbone's own weights freeze, only adapters (and the head) train
            from sft.models.causal_lm import apply_lora

            self.backbone = apply_lora(self.backbone, lora, self.head.peft_task_type)
            self.strict_loading = False  # adapter-only checkpoints (see on_save_checkpoint)
        if compile:
            compile_backbone(self.backbone, compile if isinstance(compile, dict) else {},
                             decoder=self.head.drives_backbone)
        self.train_metrics = self.head.make_metrics("train/")
        # Saved in checkpoints, so an epoch resumed mid-way reports the same train metrics.
        self.train_metrics.persistent(True)
        self.val_metrics = self.head.make_metrics("val/")
        self.test_metrics = self.head.make_metrics("test/", final=True)

    # -- forward ---------------------------------------------------------------------------
    def forward(self, batch: dict) -> torch.Tensor:
        if self.head.drives_backbone:  # e.g. the causal LM head, which projects only supervised positions
            return self.head(self.head.features(self.backbone, batch), batch)
        if self.hparams.modality == "audio":  # frame features and their mask; the head pools them
            return self.head(self.backbone(batch), batch)
        if "pixel_values" in batch:  # images: the backbone returns pooled features
            return self.head(self.backbone(batch["pixel_values"]), batch)
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        return self.head(self.backbone(**inputs).last_hidden_state, batch)

    def _step(self, batch: dict, metrics) -> tuple[torch.Tensor, int, torch.Tensor]:
        """The batch's loss, how many items (records, or supervised tokens) it is a mean over, and the
        head's outputs."""
        outputs = self(batch)
        loss = self.head.loss(outputs, batch)
        self.head.update_metrics(metrics, outputs, batch)
        return loss, self.head.loss_weight(outputs, batch), outputs

    def _log_metrics(self, metrics, **kwargs) -> None:
        values = metrics.compute()
        self.head.log_artifacts(values, self)  # non-scalar results, e.g. a confusion matrix image
        self.log_dict(self.head.flatten_metrics(values), **kwargs)
        metrics.reset()

    # -- steps -----------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, _, _ = self._step(batch, self.train_metrics)
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def on_train_epoch_end(self) -> None:
        self._log_metrics(self.train_metrics)

    def validation_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        # Weighted by the items the loss averages, the epoch's val/loss is a mean over items (tokens
        # for a causal LM), not a mean of batch means.
        loss, weight, outputs = self._step(batch, self.val_metrics)
        self.log("val/loss", loss, on_epoch=True, batch_size=max(weight, 1), sync_dist=True)
        return outputs  # for callbacks that look at predictions (sft.callbacks.audio_samples)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics, prog_bar=True)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        loss, weight, _ = self._step(batch, self.test_metrics)
        self.log("test/loss", loss, on_epoch=True, batch_size=max(weight, 1), sync_dist=True)

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics)

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        out = self.head.predict(self(batch))
        out.update({key: batch[key] for key in self.head.predict_keeps})
        if "labels" in batch:
            out["labels"] = batch["labels"]
        return out

    # -- checkpoints -----------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.hparams.get("lora"):  # LoRA: save what trains (adapters, head), not the frozen base weights
            trainable = {name for name, p in self.named_parameters() if p.requires_grad}
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
            checkpoint["adapter_only"] = True

    # -- optimization ----------------------------------------------------------------------
    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Norm clipping reuses the global gradient norm the NaN/inf guard just computed for this
        step (one pass over the gradients instead of two); other cases are Lightning's own."""
        norm, self.step_grad_norm = getattr(self, "step_grad_norm", None), None
        reusable = type(self.trainer.strategy).__name__ in ("SingleDeviceStrategy", "DDPStrategy")  # whole gradients
        if norm is not None and gradient_clip_val and gradient_clip_algorithm in (None, "norm") and reusable:
            self.log("train/grad_norm", norm, on_step=True, on_epoch=False)
            torch.nn.utils.clip_grads_with_norm_([p for p in self.parameters() if p.grad is not None],
                                                 gradient_clip_val, norm)
            return
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)


    def configure_optimizers(self):
        if self.optimizer_factory is None:
            raise ConfigError("SFTModule needs an optimizer (the optimizer= config group) to train")
        if self.hparams.get("layer_decay"):
            from sft.models.image_backbones import layer_decay_groups

            groups = layer_decay_groups(self, self.hparams.layer_decay, self.hparams.head_lr)
        else:
            groups = parameter_groups(self.named_parameters(), "head.", self.hparams.head_lr)
        optimizer = self.optimizer_factory(groups)
        for group in optimizer.param_groups:  # layer-wise decay: deeper layers keep more of the base rate
            group["lr"] *= group.pop("lr_scale", 1.0)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, total_steps=self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def freeze_lower_layers(backbone: Any, count: int) -> None:
    """Freeze the front end (stem, embeddings) and the first `count` layers of an image or audio
    backbone, by the depth index that layer-wise LR decay uses; backward then stops above them,
    which also saves their compute."""
    ids, depth = backbone.layer_ids()  # 0: the front end; 1..depth-1: layers (timm: blocks or stages)
    if count >= depth:
        raise ConfigError(f"model.freeze_layers={count}: the backbone has {depth - 1} layer groups above its "
                          "front end (model.freeze_backbone=true freezes all of it)")
    for name, param in backbone.named_parameters():
        if ids.get(name, depth) <= count:
            param.requires_grad_(False)


def compile_backbone(backbone: torch.nn.Module, options: dict, decoder: bool = False) -> None:
    """torch.compile the part of the backbone the steps call, in place (parameter names, and so
    checkpoints, stay as they are). Batch lengths vary (multiples of 8 with dynamic padding):
    after the first change torch marks the length dynamic, so a run compiles a few times, not
    once per length; the recompile limit stays torch's default."""
    # A causal LM's steps call its decoder (see CausalLMHead.features), not its forward.
    (backbone.get_decoder() if decoder else backbone).compile(**options)
