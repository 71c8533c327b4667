"""One more test set beside the test split: the same metrics, logged as `test/<name>_<metric>`.

For a second view of a model's quality that the test split does not give, e.g. `experiment=audio_keywords`
tests on synthetic voices held out of training and, with this callback, on the real human recordings of
the same words (`test/real_acc`). The records are read, checked and batched by the run's own processor
(the eval input pipeline), so a label the model was not trained on is an error naming the file and line.
"""

from __future__ import annotations

from typing import Optional

import lightning as L
import torch

from sft.errors import ConfigError


class ExtraTestSet(L.Callback):
    def __init__(self, name: str, file: Optional[str] = None, dataset: Optional[str] = None,
                 split: Optional[str] = None, batch_size: int = 32):
        if (file is None) == (dataset is None):
            raise ConfigError(f"callbacks: the extra test set {name!r} needs exactly one of file= (your own) and "
                              f"dataset= with split= (a catalog data set's split)")
        self.name, self.file, self.dataset, self.split, self.batch_size = name, file, dataset, split, batch_size

    def source(self) -> tuple[str, str]:
        """(the file to read, the config key that named it)."""
        if self.file is not None:
            return self.file, f"extra test set {self.name!r} (file={self.file})"
        from sft import assets

        path = assets.split_file(str(self.dataset), str(self.split))
        if path is None:
            raise ConfigError(f"callbacks: the extra test set {self.name!r}: catalog data set {self.dataset!r} has no "
                              f"split {self.split!r}")
        return str(path), f"extra test set {self.name!r} ({self.dataset}:{self.split})"

    @torch.no_grad()
    def on_test_epoch_end(self, trainer, pl_module) -> None:
        processor = trainer.datamodule.processor
        path, key = self.source()
        examples, _ = processor.encode(processor.read_source(path, key))
        collate = processor.make_collator(None, train=False)
        head = pl_module.head
        metrics = head.make_metrics(f"test/{self.name}_").to(pl_module.device)
        for start in range(0, len(examples), self.batch_size):
            batch = collate(examples[start:start + self.batch_size])
            batch = {k: v.to(pl_module.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            with trainer.precision_plugin.forward_context():
                head.update_metrics(metrics, pl_module(batch), batch)
        for name, value in head.flatten_metrics(metrics.compute()).items():
            pl_module.log(name, value)
        pl_module.log(f"test/{self.name}_records", float(len(examples)))
