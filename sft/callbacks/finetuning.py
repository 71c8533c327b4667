"""Freeze the backbone for the first epochs, then unfreeze it (Lightning's BaseFinetuning machinery)."""

from __future__ import annotations

from typing import Optional

from lightning.pytorch.callbacks import BaseFinetuning
from torch.nn.modules.batchnorm import _BatchNorm


class BackboneFreezeUnfreeze(BaseFinetuning):
    """Train only the head until epoch `unfreeze_at_epoch`, then add the backbone to the optimizer at
    `backbone_lr` (default: the first group's learning rate / `lr_divisor`).

    While frozen, BatchNorm layers use their pretrained running statistics (eval mode), so the
    backbone is a fixed feature extractor. `freeze_bn_stats=true` keeps them that way after the
    unfreeze too (their weights train, their statistics stay), the usual choice for small batches.
    """

    def __init__(self, unfreeze_at_epoch: int = 1, backbone_lr: Optional[float] = None, lr_divisor: float = 10.0,
                 freeze_bn_stats: bool = False):
        super().__init__()
        self.unfreeze_at_epoch = unfreeze_at_epoch
        self.backbone_lr = backbone_lr
        self.lr_divisor = lr_divisor
        self.freeze_bn_stats = freeze_bn_stats
        self._kept_frozen: set[str] = set()

    def freeze_before_training(self, pl_module) -> None:
        # Parameters the model keeps frozen itself (a speech encoder's convolutional front end, Whisper's
        # positional table) stay frozen after the unfreeze.
        self._kept_frozen = {name for name, p in pl_module.backbone.named_parameters() if not p.requires_grad}
        self.freeze(pl_module.backbone, train_bn=False)

    def finetune_function(self, pl_module, current_epoch: int, optimizer) -> None:
        if current_epoch == self.unfreeze_at_epoch:
            self.unfreeze_and_add_param_group(pl_module.backbone, optimizer, lr=self.backbone_lr,
                                              initial_denom_lr=self.lr_divisor, train_bn=True)
            kept = {id(p) for name, p in pl_module.backbone.named_parameters()
                    if name in self._kept_frozen}
            if kept:
                for p in pl_module.backbone.parameters():
                    if id(p) in kept:
                        p.requires_grad_(False)
                group = optimizer.param_groups[-1]
                group["params"] = [p for p in group["params"] if id(p) not in kept]

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        # A schedule built before the unfreeze knows only the groups of that time: extend it to the new
        # group, which then follows the same warmup/decay multiplier from its own starting rate.
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            groups = scheduler.optimizer.param_groups
            for group in groups[len(scheduler.base_lrs):]:
                group.setdefault("initial_lr", group["lr"])
                scheduler.base_lrs.append(group["initial_lr"])
                if hasattr(scheduler, "lr_lambdas"):
                    scheduler.lr_lambdas.append(scheduler.lr_lambdas[-1])
                if hasattr(scheduler, "_last_lr"):
                    scheduler._last_lr.append(group["lr"])

    def _backbone_frozen(self, trainer) -> bool:
        return trainer.current_epoch < self.unfreeze_at_epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # Lightning restores module modes after every validation; set the BatchNorm mode per batch.
        fixed_statistics = self.freeze_bn_stats or self._backbone_frozen(trainer)
        for module in pl_module.backbone.modules():
            if isinstance(module, _BatchNorm):
                module.train(not fixed_statistics)
