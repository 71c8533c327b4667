"""Side-by-side training throughput: sft against the tool a user would otherwise use.

    python bench/compare.py text_cls            # sft vs the Hugging Face Trainer (CPU size)
    python bench/compare.py overhead            # sft's Lightning path vs a raw PyTorch loop
    python bench/compare.py text_cls --size gpu --json text_cls.json

Both sides get the same initial weights, data, batch size, optimizer, precision and number of
steps; each is timed over the same window of steps after warm-up, one after the other in this
process. The table shows samples/s, peak accelerator memory, mean training loss and the ratio
ours / peer; `--json` writes the same figures (keys `ours`, `peer`, `ratio`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

SHAPES = {  # (layers, hidden, heads, intermediate)
    "tiny": (2, 64, 2, 128),  # for checking that the harness runs, not for figures
    "minilm": (6, 384, 12, 1536),
    "bert-base": (12, 768, 12, 3072),
}
SIZES = {
    "cpu": {"shape": "minilm", "batch_size": 32, "warmup": 3, "steps": 15, "precision": "32-true", "samples": 2048},
    "gpu": {"shape": "bert-base", "batch_size": 32, "warmup": 20, "steps": 200, "precision": "bf16-mixed", "samples": 16384},
}
VOCAB_WORDS = 4000


@dataclass
class Result:
    samples_per_s: float
    peak_memory_gb: float
    mean_loss: float

    def as_dict(self) -> dict:
        return {"samples_per_s": round(self.samples_per_s, 2), "peak_memory_gb": round(self.peak_memory_gb, 3),
                "mean_loss": round(self.mean_loss, 4)}


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gb() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")


def sentence_lengths(n: int, seed: int) -> np.ndarray:
    """Word counts like real sentences: a skewed spread with most short and a long tail, 14-126
    words, so 16-128 tokens with [CLS] and [SEP]."""
    rng = np.random.default_rng(seed)
    return np.clip(np.round(rng.lognormal(mean=3.6, sigma=0.5, size=n)), 14, 126).astype(int)


def make_encoder(folder: Path, shape: str, dropout: float = 0.1) -> None:
    """A randomly initialised BERT of the given shape, with a WordPiece vocabulary of whole words."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    layers, hidden, heads, intermediate = SHAPES[shape]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(VOCAB_WORDS)]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab=str(folder / "vocab.txt")).save_pretrained(folder)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=intermediate, max_position_embeddings=512,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)


def make_texts(folder: Path, n: int, seed: int = 0) -> Path:
    """A JSONL file of n random texts (sentence-like lengths) with two random labels."""
    rng = np.random.default_rng(seed)
    path = folder / "train.jsonl"
    with open(path, "w") as f:
        for length in sentence_lengths(n, seed):
            words = " ".join(f"w{i}" for i in rng.integers(0, VOCAB_WORDS, size=length))
            f.write(json.dumps({"text": words, "label": int(rng.integers(0, 2))}) + "\n")
    return path


# -- ours -----------------------------------------------------------------------------------
def run_ours_text_cls(model_dir: Path, train_file: Path, size: dict, lr: float) -> Result:
    import lightning as L
    from functools import partial

    from sft.data import SFTDataModule
    from sft.models import SFTModule

    L.seed_everything(0, verbose=False)
    datamodule = SFTDataModule(task="text_classification", tokenizer=str(model_dir), train_file=str(train_file),
                               val_fraction=0.01, test_fraction=0.01, batch_size=size["batch_size"])
    module = SFTModule(task="text_classification", label_names=datamodule.label_names, pretrained=str(model_dir),
                       optimizer=partial(torch.optim.AdamW, lr=lr, weight_decay=0.01, fused=True))
    return fit_and_time(module, datamodule, size)


class StepTimer:
    """Times the optimizer steps after warm-up and collects the losses of every step."""

    def __init__(self, warmup: int, steps: int):
        self.warmup, self.steps = warmup, steps
        self.start = self.end = None
        self.losses: list[torch.Tensor] = []

    def step_done(self, step: int, loss=None) -> None:
        if loss is not None:
            self.losses.append(loss.detach())
        if step == self.warmup:
            sync()
            self.start = time.perf_counter()
        elif step == self.warmup + self.steps:
            sync()
            self.end = time.perf_counter()

    def result(self, batch_size: int) -> Result:
        mean_loss = float(torch.stack(self.losses).float().mean()) if self.losses else float("nan")
        return Result(self.steps * batch_size / (self.end - self.start), peak_memory_gb(), mean_loss)


def fit_and_time(module, datamodule, size: dict) -> Result:
    import lightning as L
    from lightning.pytorch.callbacks import Callback

    timer = StepTimer(size["warmup"], size["steps"])

    class Timing(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            timer.step_done(trainer.global_step, outputs["loss"])

    reset_memory()
    trainer = L.Trainer(accelerator="auto", devices=1, precision=size["precision"], max_steps=size["warmup"] + size["steps"],
                        limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[Timing()])
    trainer.fit(module, datamodule=datamodule)
    return timer.result(size["batch_size"])


# -- peers ------------------------------------------------------------------------------------
def run_hf_trainer_text_cls(model_dir: Path, train_file: Path, size: dict, lr: float, workdir: Path) -> Result:
    """The Hugging Face Trainer as its docs recommend for this job: dynamic padding to a multiple
    of 8, fused AdamW, the same precision."""
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainerCallback, TrainingArguments)

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    records = [json.loads(line) for line in open(train_file)]
    encoded = tokenizer([r["text"] for r in records], truncation=True, max_length=128)
    dataset = [{"input_ids": ids, "attention_mask": mask, "labels": r["label"]}
               for ids, mask, r in zip(encoded["input_ids"], encoded["attention_mask"], records)]
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    timer = StepTimer(size["warmup"], size["steps"])

    class Timing(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            timer.step_done(state.global_step)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                timer.losses.append(torch.tensor(logs["loss"]))

    args = TrainingArguments(
        output_dir=str(workdir / "hf"), per_device_train_batch_size=size["batch_size"], learning_rate=lr,
        weight_decay=0.01, max_steps=size["warmup"] + size["steps"], optim="adamw_torch_fused",
        bf16=size["precision"].startswith("bf16"), logging_steps=size["warmup"] + size["steps"], save_strategy="no",
        report_to=[], disable_tqdm=True, dataloader_num_workers=0, seed=0, lr_scheduler_type="constant",
        use_cpu=not torch.cuda.is_available(),
    )
    reset_memory()
    Trainer(model=model, args=args, train_dataset=dataset, data_collator=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8),
            callbacks=[Timing()]).train()
    return timer.result(size["batch_size"])


def run_raw_loop(module, batches: list[dict], size: dict) -> Result:
    """What a careful hand-written loop does: forward, backward, step, same batches and optimizer."""
    from sft.optim import parameter_groups

    dev = device()
    module = module.to(dev).train()
    optimizer = module.optimizer_factory(parameter_groups(module.named_parameters()))
    autocast = torch.autocast(dev, dtype=torch.bfloat16, enabled=size["precision"].startswith("bf16"))
    timer = StepTimer(size["warmup"], size["steps"])
    reset_memory()
    for step, batch in enumerate(batches, start=1):
        batch = {k: v.to(dev, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        with autocast:
            loss = module.head.loss(module(batch), batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        timer.step_done(step, loss)
    return timer.result(size["batch_size"])


# -- workloads ------------------------------------------------------------------------------------
def text_cls(size: dict, workdir: Path) -> tuple[Result, Result, str]:
    make_encoder(workdir, size["shape"])
    train_file = make_texts(workdir, size["samples"])
    lr = 5e-5
    ours = run_ours_text_cls(workdir, train_file, size, lr)
    peer = run_hf_trainer_text_cls(workdir, train_file, size, lr, workdir)
    return ours, peer, "Hugging Face Trainer"


def overhead(size: dict, workdir: Path) -> tuple[Result, Result, str]:
    """The same module and the same pre-collated batches, through Lightning vs by hand."""
    import lightning as L
    from functools import partial

    from sft.data import SFTDataModule
    from sft.models import SFTModule

    make_encoder(workdir, size["shape"], dropout=0.0)  # no dropout: both sides take identical steps
    train_file = make_texts(workdir, size["samples"])
    datamodule = SFTDataModule(task="text_classification", tokenizer=str(workdir), train_file=str(train_file),
                               val_fraction=0.01, test_fraction=0.01, batch_size=size["batch_size"])
    L.seed_everything(0, verbose=False)
    batches = list(datamodule.train_dataloader())[: size["warmup"] + size["steps"]]

    def fresh_module():
        torch.manual_seed(0)
        return SFTModule(task="text_classification", label_names=datamodule.label_names, pretrained=str(workdir),
                         optimizer=partial(torch.optim.AdamW, lr=5e-5, weight_decay=0.01, fused=True), dropout=0.0)

    class FixedBatches(L.LightningDataModule):
        def train_dataloader(self):
            return torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)  # yields them as they are

    peer = run_raw_loop(fresh_module(), batches, size)
    ours = fit_and_time(fresh_module(), FixedBatches(), size)
    return ours, peer, "raw PyTorch loop"


WORKLOADS = {"text_cls": text_cls, "overhead": overhead}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workload", choices=sorted(WORKLOADS))
    parser.add_argument("--size", choices=sorted(SIZES), default="gpu" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shape", choices=sorted(SHAPES), help="override the model shape of the size")
    parser.add_argument("--batch-size", type=int, help="override the batch size of the size")
    parser.add_argument("--steps", type=int, help="override the number of timed steps")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    size = dict(SIZES[args.size])
    for key in ("shape", "batch_size", "steps"):
        if getattr(args, key) is not None:
            size[key] = getattr(args, key)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory() as tmp:
        ours, peer, peer_name = WORKLOADS[args.workload](size, Path(tmp))
    o, p = ours.as_dict(), peer.as_dict()
    ratio = {k: round(o[k] / p[k], 3) if p[k] else float("nan") for k in o}
    hardware = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    print(f"\n{args.workload} ({size['shape']} shape, batch {size['batch_size']}, {size['precision']}, "
          f"{size['steps']} timed steps after {size['warmup']} warm-up) on {hardware}")
    print(f"{'metric':16} {'sft':>12} {peer_name:>22} {'ratio sft/peer':>15}")
    for key in o:
        print(f"{key:16} {o[key]:>12} {p[key]:>22} {ratio[key]:>15}")
    if args.json:
        args.json.write_text(json.dumps({"workload": args.workload, "size": size, "hardware": hardware, "peer_name": peer_name,
                                         "ours": o, "peer": p, "ratio": ratio}, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
