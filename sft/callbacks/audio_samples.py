"""Misclassified validation clips, as audio in TensorBoard.

At every `every_n_epochs`-th validation of an audio classifier, the first `num_samples` validation
clips the model got wrong are written as audio (`val/misclassified_audio/<k>`: the window the model
heard, at the model's sample rate) with a text table (`val/misclassified_audio`) naming each file, its
label, the prediction and both probabilities. A no-op for other tasks and without a TensorBoard
logger, so it sits in the default callbacks.
"""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import numpy as np
import torch


@dataclass
class Miss:
    row: int  # the clip's record in the validation table
    label: int
    predicted: int
    p_predicted: float
    p_label: float


class MisclassifiedAudio(L.Callback):
    def __init__(self, num_samples: int = 4, every_n_epochs: int = 1):
        self.num_samples = int(num_samples)
        self.every_n_epochs = max(1, int(every_n_epochs))
        self.misses: list[Miss] = []

    @staticmethod
    def _writer(trainer):
        from lightning.pytorch.loggers import TensorBoardLogger

        return next((lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)

    def _active(self, trainer, pl_module) -> bool:
        return (self.num_samples > 0 and pl_module.hparams.get("task") == "audio_classification"
                and not trainer.sanity_checking and trainer.is_global_zero
                and trainer.current_epoch % self.every_n_epochs == 0 and self._writer(trainer) is not None)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.misses = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if (len(self.misses) >= self.num_samples or not isinstance(outputs, torch.Tensor) or "row" not in batch
                or not self._active(trainer, pl_module)):
            return
        probabilities = outputs.detach().float().softmax(-1).cpu()
        labels, rows = batch["labels"].cpu(), batch["row"].cpu()
        predicted = probabilities.argmax(-1)
        for i in (predicted != labels).nonzero().flatten().tolist()[: self.num_samples - len(self.misses)]:
            self.misses.append(Miss(int(rows[i]), int(labels[i]), int(predicted[i]),
                                    float(probabilities[i, predicted[i]]), float(probabilities[i, labels[i]])))

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not self.misses or not self._active(trainer, pl_module):
            return
        from sft.data.audio import load_audio

        processor = trainer.datamodule.processor
        rate = int(processor.input["sample_rate"])
        samples = int(round(processor.max_seconds * rate))
        val = trainer.datamodule.encoded("val")
        position = {ex["row"]: k for k, ex in enumerate(val.examples)}
        items = val.__getitems__([position[miss.row] for miss in self.misses])  # embedded clips read here
        names = pl_module.label_names
        writer = self._writer(trainer)
        lines = ["| # | clip | label | predicted | p(predicted) | p(label) |", "|---|---|---|---|---|---|"]
        for k, (miss, item) in enumerate(zip(self.misses, items)):
            source = item["audio"]
            wave = load_audio(source, rate) if isinstance(source, (str, bytes)) else np.asarray(source, dtype=np.float32)
            wave = np.clip(wave[:samples], -1.0, 1.0)  # the first max_seconds: what eval hears
            writer.add_audio(f"val/misclassified_audio/{k}", torch.from_numpy(wave)[None], trainer.global_step,
                             sample_rate=rate)
            where = source if isinstance(source, str) else item.get("where", f"record {miss.row}")
            lines.append(f"| {k} | {where} | {names[miss.label]} | {names[miss.predicted]} | "
                         f"{miss.p_predicted:.3f} | {miss.p_label:.3f} |")
        writer.add_text("val/misclassified_audio", "\n".join(lines), trainer.global_step)
        self.misses = []
