"""Generation during validation for causal-LM SFT.

Every `every_n_epochs`, greedy answers to the first `num_samples` validation prompts go to
TensorBoard as text, and `val/exact_match` is computed from greedy generations on the first
`eval_examples` validation records (answer vs the record's last assistant turn, with at most
`max_new_tokens` new tokens). The same on the test split gives `test/exact_match`, and before
the first training step `baseline/exact_match` (the pretrained model on the test records), so a
run's metrics.json shows what SFT changed.
"""

from __future__ import annotations

import logging
import re
from typing import Optional

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from sft.tasks import ConfigError

log = logging.getLogger(__name__)
MATCHES = ("exact", "contains")


def normalize(text: str) -> str:
    """Case, surrounding whitespace and trailing punctuation do not decide a match."""
    return re.sub(r"[\s.!?]+$", "", text.strip().lower())


def is_match(answer: str, reference: str, match: str = "exact") -> bool:
    if match == "exact":
        return normalize(answer) == normalize(reference)
    return normalize(reference) in normalize(answer)


@torch.no_grad()
def greedy_answers(model, prompts: list[list[int]], pad_token_id: int, eos_token_id, max_new_tokens: int,
                   tokenizer, batch_size: int = 16) -> list[str]:
    """Greedy continuations of token-id prompts (left-padded in batches), decoded without specials."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    answers = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            width = max(len(p) for p in chunk)
            input_ids = torch.full((len(chunk), width), pad_token_id, dtype=torch.long)
            attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, prompt in enumerate(chunk):
                input_ids[row, width - len(prompt):] = torch.as_tensor(prompt)
                attention_mask[row, width - len(prompt):] = 1
            out = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                 max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos_token_id,
                                 pad_token_id=pad_token_id, use_cache=True)
            answers += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    finally:
        model.train(was_training)
    return [a.strip() for a in answers]


class GenerationCallback(L.Callback):
    # Metric names this callback logs, per stage, so config checks accept them as `monitor`.
    LOGGED_METRICS = {"val": {"val/exact_match"}, "test": {"test/exact_match", "baseline/exact_match"}}
    def __init__(self, every_n_epochs: int = 1, num_samples: int = 3, eval_examples: int = 32,
                 max_new_tokens: int = 32, match: str = "exact", baseline: bool = True, batch_size: int = 16):
        if match not in MATCHES:
            raise ConfigError(f"callbacks.generate.match={match!r} is not one of {MATCHES}")
        self.every_n_epochs = max(1, int(every_n_epochs))
        self.num_samples = num_samples
        self.eval_examples = eval_examples
        self.max_new_tokens = max_new_tokens
        self.match = match
        self.baseline = baseline
        self.batch_size = batch_size
        self._examples: dict[str, list[dict]] = {}

    def _split_examples(self, trainer: L.Trainer, split: str) -> list[dict]:
        if split not in self._examples:
            limit = max(self.eval_examples, self.num_samples)
            self._examples[split] = trainer.datamodule.generation_examples(split, limit)
        return self._examples[split]

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule, split: str) -> tuple[Optional[float], list]:
        examples = self._split_examples(trainer, split)
        if not examples:
            return None, []
        processor = trainer.datamodule.processor
        tokenizer = processor.tokenizer
        answers = greedy_answers(pl_module.backbone, [e["prompt_ids"] for e in examples], tokenizer.pad_token_id,
                                 processor.end_of_turn_id, self.max_new_tokens, tokenizer, self.batch_size)
        scored = examples[: self.eval_examples]
        score = sum(is_match(a, e["reference"], self.match) for a, e in zip(answers, scored)) / len(scored)
        return score, list(zip(examples, answers))

    def _write_samples(self, trainer: L.Trainer, tag: str, pairs: list) -> None:
        from lightning.pytorch.loggers import TensorBoardLogger

        rows = [f"**{e['where']}**\n\n    {e['prompt'][-500:]}\n\n→ `{answer}` (reference: `{e['reference']}`)"
                for e, answer in pairs[: self.num_samples]]
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text(tag, "\n\n---\n\n".join(rows), trainer.global_step)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.baseline or trainer.global_step > 0:  # a resumed run has no "before any step"
            return
        score, _ = self.evaluate(trainer, pl_module, "test")
        if score is None:
            return
        # Kept with the fit's metrics (written to metrics.json) and sent to the loggers at step 0.
        trainer.callback_metrics["baseline/exact_match"] = torch.tensor(score)
        for logger in trainer.loggers:
            logger.log_metrics({"baseline/exact_match": score}, step=0)
        rank_zero_info(f"[generate] baseline/exact_match = {score:.4f} (pretrained model, before any step)")

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        score, pairs = self.evaluate(trainer, pl_module, "val")
        if score is None:
            return
        pl_module.log("val/exact_match", score, prog_bar=True)
        self._write_samples(trainer, "val/generations", pairs)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        score, pairs = self.evaluate(trainer, pl_module, "test")
        if score is None:
            return
        pl_module.log("test/exact_match", score)
        self._write_samples(trainer, "test/generations", pairs)
