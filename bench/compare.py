"""Side-by-side training throughput: sft against the tool a user would otherwise use.

    python bench/compare.py text_cls            # sft vs the Hugging Face Trainer (CPU size)
    python bench/compare.py overhead            # sft's Lightning path vs a raw PyTorch loop
    python bench/compare.py chat_sft            # sft (packed) vs the Hugging Face Trainer (padded), Llama shape
    python bench/compare.py image_cls           # sft from decoded images vs a raw loop on tensors on the device
    python bench/compare.py audio_cls           # sft from WAV files vs a plain loop over the same decoded clips
    python bench/compare.py onnx_cpu            # inference: ONNX Runtime vs eager PyTorch, default text classifier, CPU
    python bench/compare.py data_scale          # launch to first step, 10k and 1M rows: sft vs load_dataset + map (bench/data_scale.py)
    python bench/compare.py text_cls --size gpu --json text_cls.json

Both sides get the same initial weights, data, batch size, optimizer, precision and number of
steps; each is timed over the same window of steps after warm-up, one after the other in this
process. The table shows samples/s (and non-pad tokens/s for LMs), peak memory, the mean
training loss of the timed steps and the ratio ours / peer; `--json` writes the same figures
(keys `ours`, `peer`, `ratio`).

Peak memory is the growth over what was allocated when the side started: on a GPU the peak of
torch.cuda.memory_allocated (weights, gradients, optimizer state, activations); on a CPU the
peak resident set size of this process (weights were already resident; DataLoader worker
processes are not counted), sampled every few milliseconds.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Optional

import numpy as np
import torch

SHAPES = {  # (layers, hidden, heads, intermediate)
    "tiny": (2, 64, 2, 128),  # for checking that the harness runs, not for figures
    "minilm": (6, 384, 12, 1536),
    "bert-base": (12, 768, 12, 3072),
}
SIZES = {
    # rounds: overhead only, each side's fastest of that many alternating runs
    "cpu": {"shape": "minilm", "batch_size": 32, "warmup": 3, "steps": 30, "precision": "32-true", "samples": 2048,
            "rounds": 2},
    "gpu": {"shape": "bert-base", "batch_size": 32, "warmup": 20, "steps": 200, "precision": "bf16-mixed", "samples": 16384,
            "rounds": 2},
}
VOCAB_WORDS = 4000
CLIP_NORM = 1.0  # gradient-norm clipping on every side: sft's and the HF Trainer's default

# Llama shapes: (layers, hidden, heads, kv heads, intermediate, vocab)
LLAMA_SHAPES = {
    "tiny": (2, 64, 4, 2, 128, 512),
    "small": (4, 256, 8, 2, 688, 8000),
    "tinyllama": (22, 2048, 32, 4, 5632, 32000),  # TinyLlama 1.1B
}
# batch_size: rows of `max_length` tokens per step on our side (packed); chat lengths are drawn
# lognormal(length_mu, 0.65) tokens, clipped to [24, max_length]: mean 373 at gpu size, as in ASSETS.md.
CHAT_SIZES = {
    "cpu": {"shape": "small", "batch_size": 4, "max_length": 256, "length_mu": 4.4, "warmup": 3, "steps": 20,
            "precision": "32-true"},
    "gpu": {"shape": "tinyllama", "batch_size": 8, "max_length": 1024, "length_mu": 5.74, "warmup": 5, "steps": 40,
            "precision": "bf16-mixed"},
}
# timm architecture and image side per shape
IMAGE_SHAPES = {"tiny": ("test_resnet", 32), "resnet18": ("resnet18", 64), "resnet50": ("resnet50", 224)}
IMAGE_SIZES = {
    "cpu": {"shape": "resnet18", "batch_size": 32, "warmup": 2, "steps": 10, "precision": "32-true", "workers": 0},
    "gpu": {"shape": "resnet50", "batch_size": 128, "warmup": 10, "steps": 50, "precision": "bf16-mixed",
            "workers": max(1, min(14, (os.cpu_count() or 2) - 2))},
}
DEVICE_BATCHES = 16  # distinct batches the raw image loop keeps on the device (it cycles through them)


@dataclass
class Result:
    samples_per_s: float
    peak_memory_gb: float
    mean_loss: float
    tokens_per_s: Optional[float] = None  # non-pad tokens, for language models
    max_abs_diff: Optional[float] = None  # inference workloads: largest logit difference from eager PyTorch

    def as_dict(self) -> dict:
        figures = {"samples_per_s": round(self.samples_per_s, 2)}
        if self.tokens_per_s is not None:
            figures["tokens_per_s"] = round(self.tokens_per_s, 1)
        figures.update({"peak_memory_gb": round(self.peak_memory_gb, 3), "mean_loss": round(self.mean_loss, 4)})
        if self.max_abs_diff is not None:
            figures["max_abs_diff"] = float(f"{self.max_abs_diff:.3g}")
        return figures


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_resident() -> bool:
    """Linux: make the kernel's peak resident set (VmHWM) start again from the current one."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_resident_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


class MemoryWatch:
    """Peak memory growth from start() to stop(): GPU allocated memory, or on CPU the process's
    peak resident set, kept by the kernel (VmHWM, reset at start); where it cannot be reset, a
    thread samples the resident set instead. Freed heap is handed back to the OS first, so memory
    a previous side left behind is not reused unseen. (A sampling thread takes the GIL hundreds
    of times a second and slows the Python-heavier side: the kernel's figure costs nothing.)"""

    def __init__(self, interval_s: float = 0.002):
        self.interval_s = interval_s
        self.base = self.peak = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._kernel_peak = False

    def start(self) -> "MemoryWatch":
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        if not os.path.exists("/proc/self/statm"):
            self.base = -1  # no cheap way to read it here: reported as NaN
            return self
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        self.base = self.peak = resident_bytes()
        self._kernel_peak = reset_peak_resident()
        if not self._kernel_peak:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, resident_bytes())
            time.sleep(self.interval_s)

    def stop(self) -> float:
        """Peak growth in GiB."""
        if torch.cuda.is_available():
            return (torch.cuda.max_memory_allocated() - self.base) / 2**30
        if self.base < 0:
            return float("nan")
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        self.peak = max(self.peak, peak_resident_bytes() if self._kernel_peak else resident_bytes())
        return (self.peak - self.base) / 2**30


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

    from sft.data import SFTDataModule
    from sft.models import SFTModule

    L.seed_everything(0, verbose=False)
    datamodule = SFTDataModule(task="text_classification", tokenizer=str(model_dir), train_file=str(train_file),
                               val_fraction=0.01, test_fraction=0.01, batch_size=size["batch_size"])
    module = SFTModule(task="text_classification", label_names=datamodule.label_names, pretrained=str(model_dir),
                       optimizer=partial(torch.optim.AdamW, lr=lr, weight_decay=0.01, fused=True))
    return fit_and_time(module, datamodule, size)


class StepTimer:
    """Times the optimizer steps after warm-up and collects the losses, samples and non-pad tokens
    of the timed steps; watches peak memory from begin() on."""

    def __init__(self, warmup: int, steps: int):
        self.warmup, self.steps = warmup, steps
        self.start = self.end = None
        self.losses: list[torch.Tensor] = []
        self.samples = 0
        self.tokens = 0
        self.memory = MemoryWatch()

    def begin(self) -> None:
        self.memory.start()

    def timed(self, step: int) -> bool:
        return self.warmup < step <= self.warmup + self.steps

    def step_done(self, step: int, loss=None, samples: Optional[int] = None, tokens: Optional[int] = None) -> None:
        if self.timed(step):
            if loss is not None:
                self.losses.append(loss.detach())
            self.samples += samples or 0
            self.tokens += tokens or 0
        if step == self.warmup:
            sync()
            self.start = time.perf_counter()
        elif step == self.warmup + self.steps:
            sync()
            self.end = time.perf_counter()

    def result(self, batch_size: int) -> Result:
        """batch_size: samples per step, unless step_done counted them."""
        memory = self.memory.stop()
        mean_loss = float(torch.stack(self.losses).float().mean()) if self.losses else float("nan")
        seconds = self.end - self.start
        samples = self.samples or self.steps * batch_size
        return Result(samples / seconds, memory, mean_loss, self.tokens / seconds if self.tokens else None)


def fit_and_time(module, datamodule, size: dict, gradient_clip_val: Optional[float] = CLIP_NORM,
                 count_tokens: bool = False) -> Result:
    """Lightning fit of warm-up + timed steps, with the callbacks every sft run has by default that
    act on each step (the NaN/inf guard and the throughput/MFU monitor) and sft's default gradient
    clipping. Batches that carry the host int `num_examples` (conversations in packed rows) count
    samples by it; with count_tokens, their host int `num_tokens` (non-pad tokens) gives tokens/s."""
    import lightning as L
    from lightning.pytorch.callbacks import Callback

    from sft.callbacks.run_state import NonFiniteLossGuard
    from sft.callbacks.throughput import SFTThroughputMonitor

    timer = StepTimer(size["warmup"], size["steps"])

    class Timing(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            timer.step_done(trainer.global_step, outputs["loss"], batch.get("num_examples"),
                            batch.get("num_tokens") if count_tokens else None)

    trainer = L.Trainer(accelerator="auto", devices=1, precision=size["precision"], max_steps=size["warmup"] + size["steps"],
                        limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[Timing(), NonFiniteLossGuard(), SFTThroughputMonitor()],
                        gradient_clip_val=gradient_clip_val)
    if hasattr(datamodule, "encoded"):
        datamodule.setup("fit")  # encode before memory is watched: the peers get their data ready-made too
    timer.begin()
    trainer.fit(module, datamodule=datamodule)
    return timer.result(size["batch_size"])


# -- peers ------------------------------------------------------------------------------------
def hf_timing_callback(timer: StepTimer, counts: Optional[list] = None):
    """A TrainerCallback that times the Trainer's steps and has it log the mean loss exactly at the
    end of warm-up and of the timed window (so the second log is the timed steps' mean; logging
    every step would add a host sync per step). `counts`: (samples, tokens) per batch in order,
    filled by the collator."""
    from transformers import TrainerCallback

    class Timing(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            step = state.global_step
            samples, tokens = counts[step - 1] if counts else (None, None)
            timer.step_done(step, samples=samples, tokens=tokens)
            if step in (timer.warmup, timer.warmup + timer.steps):
                control.should_log = True

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs and state.global_step == timer.warmup + timer.steps:
                timer.losses.append(torch.tensor(float(logs["loss"])))

    return Timing()


def hf_arguments(workdir: Path, size: dict, lr: float, batch_size: int, arguments_class=None, **options):
    from transformers import TrainingArguments

    return (arguments_class or TrainingArguments)(
        output_dir=str(workdir / "hf"), per_device_train_batch_size=batch_size, learning_rate=lr,
        weight_decay=0.01, max_steps=size["warmup"] + size["steps"], optim="adamw_torch_fused",
        bf16=size["precision"].startswith("bf16"), logging_steps=size["warmup"] + size["steps"], save_strategy="no",
        report_to=[], disable_tqdm=True, dataloader_num_workers=0, seed=0, lr_scheduler_type="constant",
        use_cpu=not torch.cuda.is_available(), **options)


def run_hf_trainer_text_cls(model_dir: Path, train_file: Path, size: dict, lr: float, workdir: Path) -> Result:
    """The Hugging Face Trainer as its docs recommend for this job: dynamic padding to a multiple
    of 8, fused AdamW, clipping at 1.0 (its default), the same precision; length-grouped batches
    too with size["peer_length_grouping"]."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    records = [json.loads(line) for line in open(train_file)]
    encoded = tokenizer([r["text"] for r in records], truncation=True, max_length=128)
    dataset = [{"input_ids": ids, "attention_mask": mask, "labels": r["label"]}
               for ids, mask, r in zip(encoded["input_ids"], encoded["attention_mask"], records)]
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    timer = StepTimer(size["warmup"], size["steps"])
    # The "recommended settings" are dynamic padding and fused AdamW; --peer-length-grouping
    # also turns on the Trainer's own length grouping (off by default there, on by default in sft).
    grouping = {"train_sampling_strategy": "group_by_length"} if size.get("peer_length_grouping") else {}
    args = hf_arguments(workdir, size, lr, size["batch_size"], **grouping)
    timer.begin()
    Trainer(model=model, args=args, train_dataset=dataset, data_collator=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8),
            callbacks=[hf_timing_callback(timer)]).train()
    return timer.result(size["batch_size"])


def run_raw_loop(module, batches: list[dict], size: dict) -> Result:
    """What a careful hand-written loop does: forward, backward, gradient clipping (as sft and the
    HF Trainer do by default), step, same batches and optimizer. With fewer batches than steps it
    cycles through them (batches already on the device)."""
    from sft.optim import parameter_groups

    dev = device()
    timer = StepTimer(size["warmup"], size["steps"])
    timer.begin()  # before the weights move: on a GPU both sides count weights, gradients and optimizer state
    module = module.to(dev).train()
    optimizer = module.optimizer_factory(parameter_groups(module.named_parameters()))
    autocast = torch.autocast(dev, dtype=torch.bfloat16, enabled=size["precision"].startswith("bf16"))
    for step in range(1, size["warmup"] + size["steps"] + 1):
        batch = batches[(step - 1) % len(batches)]
        batch = {k: v.to(dev, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        with autocast:
            loss = module.head.loss(module(batch), batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), CLIP_NORM)
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
    return ours, peer, "HF Trainer, grouped" if size.get("peer_length_grouping") else "Hugging Face Trainer"


def overhead(size: dict, workdir: Path) -> tuple[Result, Result, str]:
    """The same module and the same pre-collated batches, through Lightning vs by hand."""
    import lightning as L

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

    # Both sides take the same few seconds of compute, so a passing hiccup of the machine would
    # decide the ratio: run them in alternation `rounds` times and keep each side's fastest.
    results: dict[str, list[Result]] = {"ours": [], "peer": []}
    for _ in range(size.get("rounds", 1)):
        results["ours"].append(fit_and_time(fresh_module(), FixedBatches(), size))
        results["peer"].append(run_raw_loop(fresh_module(), batches, size))
    ours, peer = (max(results[side], key=lambda r: r.samples_per_s) for side in ("ours", "peer"))
    return ours, peer, "raw PyTorch loop"


# -- chat SFT -------------------------------------------------------------------------------------
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
CHAT_SPECIALS = ["<unk>", "<s>", "<|im_end|>", "<|im_start|>", "<pad>"]
TEMPLATE_TOKENS = 6  # <|im_start|> user ... <|im_end|> <|im_start|> assistant ... <|im_end|>


def make_chat_model(folder: Path, shape: str) -> int:
    """A randomly initialised Llama of the given shape and a whole-word tokenizer (w0, w1, ...) with a
    ChatML template, saved together in `folder`; returns the number of plain words."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    layers, hidden, heads, kv_heads, intermediate, vocab = LLAMA_SHAPES[shape]
    words = ["user", "assistant", "system"] + [f"w{i}" for i in range(vocab - len(CHAT_SPECIALS) - 3)]
    backend = Tokenizer(models.WordLevel({t: i for i, t in enumerate(CHAT_SPECIALS + words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="<|im_end|>",
                                        pad_token="<pad>", additional_special_tokens=["<|im_start|>"])
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(folder)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=2048,
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=4)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    return len(words) - 3


def write_chats(path: Path, n: int, size: dict, words: int, seed: int = 0) -> Path:
    """n {"messages": [user, assistant]} records of chat-like token lengths (template included):
    lognormal, clipped to [24, max_length]; the user's share of the content uniform in [0.3, 0.7]."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.round(rng.lognormal(size["length_mu"], 0.65, size=n)), 24, size["max_length"]).astype(int)
    with open(path, "w") as f:
        for total in lengths:
            content = total - TEMPLATE_TOKENS
            user = int(np.clip(round(content * rng.uniform(0.3, 0.7)), 1, content - 1))
            turn = lambda k: " ".join(f"w{i}" for i in rng.integers(0, words, size=k))  # noqa: E731
            f.write(json.dumps({"messages": [{"role": "user", "content": turn(user)},
                                             {"role": "assistant", "content": turn(content - user)}]}) + "\n")
    return path


def run_hf_trainer_chat(model_dir: Path, examples: list[dict], size: dict, lr: float, batch_size: int,
                        workdir: Path) -> Result:
    """The Hugging Face Trainer padded: the same tokenized examples (labels -100 outside assistant
    turns), dynamic padding to a multiple of 8, length-grouped batches, fused AdamW, gradient
    clipping at 1.0 (its default, and sft's), the same precision."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pad = DataCollatorForSeq2Seq(tokenizer, padding=True, pad_to_multiple_of=8, label_pad_token_id=-100)
    counts: list[tuple[int, int]] = []  # (conversations, non-pad tokens) of each batch, in order

    def collate(items):
        counts.append((len(items), sum(len(item["input_ids"]) for item in items)))
        return pad(items)

    dataset = [{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    timer = StepTimer(size["warmup"], size["steps"])
    args = hf_arguments(workdir, size, lr, batch_size, max_grad_norm=1.0, train_sampling_strategy="group_by_length")
    timer.begin()
    Trainer(model=model, args=args, train_dataset=dataset, data_collator=collate,
            callbacks=[hf_timing_callback(timer, counts)]).train()
    return timer.result(batch_size)


def run_trl_chat(model_dir: Path, examples: list[dict], size: dict, lr: float, workdir: Path) -> Result:
    """TRL's SFTTrainer with its own packing (best-fit decreasing, padding-free rows with per-example
    position ids) on the same tokenized examples and labels, our rows per step, fused AdamW,
    clipping at 1.0, the same precision."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dataset = Dataset.from_list([{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    timer = StepTimer(size["warmup"], size["steps"])
    counts: list[tuple[int, int]] = []
    args = hf_arguments(workdir, size, lr, size["batch_size"], arguments_class=SFTConfig, max_grad_norm=1.0,
                        max_length=size["max_length"], packing=True)
    timer.begin()
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=[hf_timing_callback(timer, counts)])
    collate = trainer.data_collator

    def counting(items):
        counts.append((sum(len(item.get("seq_lengths", [0])) for item in items),
                       sum(len(item["input_ids"]) for item in items)))
        return collate(items)

    trainer.data_collator = counting
    trainer.train()
    return timer.result(size["batch_size"])


def chat_sft(size: dict, workdir: Path) -> tuple[Result, Result, str]:
    """sft packing conversations into rows of max_length (attention kept within each conversation)
    vs the HF Trainer padding them; the peer takes as many conversations per step as our packed rows
    hold on average, so both train on the same number of real tokens per step."""
    import lightning as L

    from sft.data import SFTDataModule
    from sft.models import SFTModule

    words = make_chat_model(workdir, size["shape"])
    mean_tokens = math.exp(size["length_mu"] + 0.65**2 / 2)
    n = int((size["warmup"] + size["steps"] + 2) * size["batch_size"] * size["max_length"] / mean_tokens * 1.3) + 16
    train_file = write_chats(workdir / "chat.jsonl", n, size, words)
    eval_file = write_chats(workdir / "chat_eval.jsonl", 4, size, words, seed=1)
    lr = 2e-5
    L.seed_everything(0, verbose=False)
    datamodule = SFTDataModule(task="causal_lm", tokenizer=str(workdir), train_file=str(train_file), val_file=str(eval_file),
                               test_file=str(eval_file), max_length=size["max_length"], batch_size=size["batch_size"],
                               packing=True, audit_examples=0)
    datamodule.setup("fit")
    rows = datamodule.encoded("train").examples
    conversations = sum(row["documents"] for row in rows)
    examples, _ = datamodule.processor.encode(datamodule.tables()["train"])  # the same examples, unpacked
    size["peer_batch_size"] = max(1, round(size["batch_size"] * conversations / len(rows)))
    size["mean_tokens"] = round(sum(len(e["input_ids"]) for e in examples) / len(examples), 1)
    size["packed_fill"] = round(sum(len(r["input_ids"]) for r in rows) / (len(rows) * size["max_length"]), 4)
    module = SFTModule(task="causal_lm", label_names=[], pretrained=str(workdir), modality="causal_lm",
                       optimizer=partial(torch.optim.AdamW, lr=lr, weight_decay=0.01, fused=True),
                       loss_chunk_size=size.get("loss_chunk_size"))
    # Model FLOPs per trained token (as MFU counts them): 6 per parameter, plus causal attention
    # over a conversation of mean length (QK^T and AV, forward and backward).
    layers, hidden = LLAMA_SHAPES[size["shape"]][:2]
    size["flops_per_token"] = 6 * sum(p.numel() for p in module.parameters()) + 6 * layers * hidden * size["mean_tokens"]
    ours = fit_and_time(module, datamodule, size, count_tokens=True)
    del module, datamodule
    peer = run_hf_trainer_chat(workdir, examples, size, lr, size["peer_batch_size"], workdir)
    extra = {}
    try:
        import trl  # noqa: F401  (not a dependency of sft: the second peer runs only where it is installed)
    except ImportError as e:
        size["trl"] = f"skipped: import trl failed ({e})"
    else:
        size["trl"] = f"trl {trl.__version__}: SFTTrainer, packing (best-fit decreasing, padding-free)"
        try:
            extra["TRL SFTTrainer, packed"] = run_trl_chat(workdir, examples, size, lr, workdir)
        except Exception as e:  # an optional peer: its failure (e.g. a broken datasets install) is reported, not fatal
            size["trl"] = f"failed: {type(e).__name__}: {str(e)[:300]}"
    print(f"TRL SFTTrainer: {size['trl']}")
    return ours, peer, "HF Trainer, padded", extra


# -- image classification ---------------------------------------------------------------------------
def write_images(path: Path, n: int, side: int, classes: int = 10, seed: int = 0) -> Path:
    """Decoded images as sft's array sources read them: uint8 (N, H, W, 3), labels, label names."""
    rng = np.random.default_rng(seed)
    np.savez(path, images=rng.integers(0, 256, size=(n, side, side, 3), dtype=np.uint8),
             labels=rng.integers(0, classes, size=n), label_names=np.array([f"class{k}" for k in range(classes)]))
    return path


def image_cls(size: dict, workdir: Path) -> tuple[Result, Result, str]:
    """sft from decoded images (workers prepare uint8 batches each step, normalized after the copy
    to the device) vs a raw loop on finished batches already on the device: the same module,
    weights and, for the first batches, the same pixels (no random augmentation, so both sides
    take identical steps)."""
    import lightning as L

    from sft.data import SFTDataModule
    from sft.models import SFTModule
    from sft.models.image_backbones import image_data_config

    architecture, side = IMAGE_SHAPES[size["shape"]]
    n = (size["warmup"] + size["steps"] + 1) * size["batch_size"]
    train_file = write_images(workdir / "train.npz", n, side)
    eval_file = write_images(workdir / "eval.npz", 16, side, seed=1)

    def datamodule():
        return SFTDataModule(task="image_classification", train_file=str(train_file), val_file=str(eval_file),
                             test_file=str(eval_file), batch_size=size["batch_size"], num_workers=size["workers"],
                             input_spec=image_data_config(None, architecture), image_size=side, crop_pct=1.0,
                             train_transforms={"crop_scale": None, "hflip": 0.0})

    def fresh_module(label_names):
        torch.manual_seed(0)
        return SFTModule(task="image_classification", label_names=label_names, pretrained=None, modality="image",
                         architecture=architecture, channels_last=True, dropout=0.0, label_smoothing=0.0,
                         optimizer=partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.01, fused=True))

    L.seed_everything(0, verbose=False)
    ours_data = datamodule()
    ours = fit_and_time(fresh_module(ours_data.label_names), ours_data, size)
    del ours_data
    L.seed_everything(0, verbose=False)
    peer_data = datamodule()  # the same order of the same images as ours saw
    batches = []
    for batch in peer_data.train_dataloader():
        batch = peer_data.on_after_batch_transfer({k: v.to(device()) for k, v in batch.items()}, 0)
        batch["pixel_values"] = batch["pixel_values"].contiguous(memory_format=torch.channels_last)
        batches.append(batch)
        if len(batches) == min(DEVICE_BATCHES, size["warmup"] + size["steps"]):
            break
    label_names = peer_data.label_names
    del peer_data
    peer = run_raw_loop(fresh_module(label_names), batches, size)
    return ours, peer, "raw loop on device tensors"


# -- audio classification -------------------------------------------------------------------------
# Whisper encoder shapes: (layers, d_model, heads, ffn); random init (only the shape matters for speed).
AUDIO_SHAPES = {"tiny": (2, 64, 2, 256), "whisper-tiny": (4, 384, 6, 1536), "whisper-base": (6, 512, 8, 2048)}
AUDIO_SIZES = {
    "cpu": {"shape": "whisper-tiny", "batch_size": 16, "warmup": 2, "steps": 10, "precision": "32-true",
            "workers": max(1, (os.cpu_count() or 2) - 1), "max_seconds": 2.0, "rounds": 2},
    "gpu": {"shape": "whisper-base", "batch_size": 64, "warmup": 5, "steps": 30, "precision": "bf16-mixed",
            "workers": max(1, min(14, (os.cpu_count() or 2) - 2)), "max_seconds": 4.0, "rounds": 2},
}
AUDIO_RATE = 16000


def make_whisper(folder: Path, shape: str) -> None:
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    layers, hidden, heads, ffn = AUDIO_SHAPES[shape]
    config = WhisperConfig(vocab_size=64, d_model=hidden, encoder_layers=layers, decoder_layers=1,
                           encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=ffn,
                           decoder_ffn_dim=ffn, num_mel_bins=80, max_source_positions=1500, max_target_positions=32,
                           pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    torch.manual_seed(0)
    WhisperForConditionalGeneration(config).save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)


def write_clips(folder: Path, n: int, max_seconds: float, classes: int = 10, seed: int = 0) -> Path:
    """n 16 kHz WAV clips of 40-100% of max_seconds (a tone per class in noise) and their path,label listing."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["path,label"]
    for i in range(n):
        label = int(rng.integers(classes))
        t = np.arange(int(AUDIO_RATE * max_seconds * rng.uniform(0.4, 1.0))) / AUDIO_RATE
        wave = 0.3 * np.sin(2 * np.pi * (200 + 150 * label) * t) + rng.normal(0, 0.05, len(t))
        sf.write(folder / f"{i}.wav", wave.astype(np.float32), AUDIO_RATE)
        lines.append(f"{i}.wav,class{label}")
    listing = folder / "clips.csv"
    listing.write_text("\n".join(lines) + "\n")
    return listing


class PlainAudioCollate:
    """Log-mel features of a batch of decoded clips, padded/cut to `samples`."""

    def __init__(self, extractor, samples: int):
        self.extractor, self.samples = extractor, samples

    def __call__(self, items):
        features = self.extractor([w for w, _ in items], sampling_rate=AUDIO_RATE, padding="max_length",
                                  max_length=self.samples, truncation=True, return_tensors="pt").input_features
        return {"input_features": features, "attention_mask": torch.ones(len(items), features.shape[-1], dtype=torch.long),
                "labels": torch.tensor([label for _, label in items])}


def run_plain_audio_loop(module, clips: list[np.ndarray], labels: list[int], size: dict) -> Result:
    """A hand-written loop over clips already decoded in memory: a DataLoader with the same workers
    whose collate runs the backbone's feature extractor (pad/cut to max_seconds), then forward,
    backward, clipping, step."""
    from transformers import WhisperFeatureExtractor

    from sft.optim import parameter_groups

    collate = PlainAudioCollate(WhisperFeatureExtractor(feature_size=80), int(size["max_seconds"] * AUDIO_RATE))
    loader = torch.utils.data.DataLoader(list(zip(clips, labels)), batch_size=size["batch_size"], shuffle=False,
                                         num_workers=size["workers"], collate_fn=collate,
                                         pin_memory=torch.cuda.is_available(), persistent_workers=size["workers"] > 0)
    dev = device()
    timer = StepTimer(size["warmup"], size["steps"])
    timer.begin()
    module = module.to(dev).train()
    optimizer = module.optimizer_factory(parameter_groups(module.named_parameters()))
    autocast = torch.autocast(dev, dtype=torch.bfloat16, enabled=size["precision"].startswith("bf16"))
    batches = iter(loader)
    for step, batch in enumerate(batches, start=1):
        batch = {k: v.to(dev, non_blocking=True) for k, v in batch.items()}
        with autocast:
            loss = module.head.loss(module(batch), batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), CLIP_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        timer.step_done(step, loss)
        if step == size["warmup"] + size["steps"]:
            break
    result = timer.result(size["batch_size"])
    batches._shutdown_workers()  # type: ignore[attr-defined]  # not left running beside the next side
    return result


def audio_cls(size: dict, workdir: Path) -> tuple[Result, Result, str]:
    """sft from WAV files (decoded, cut/padded and turned into log-mel features in its DataLoader
    workers) vs a plain loop over the same clips decoded beforehand, with the same feature extractor in
    the same number of workers: the same Whisper-encoder module, weights and clip order. Pooling over
    the whole window (mean_with_padding) and no augmentation, so both sides take identical steps."""
    import lightning as L
    import soundfile as sf

    from sft.data import SFTDataModule
    from sft.models import SFTModule
    from sft.models.audio_backbones import audio_input_spec

    model_dir = workdir / "whisper"
    make_whisper(model_dir, size["shape"])
    n = (size["warmup"] + size["steps"] + 1) * size["batch_size"]
    listing = write_clips(workdir / "clips", n, size["max_seconds"])
    eval_listing = write_clips(workdir / "eval_clips", 16, size["max_seconds"], seed=1)

    def fresh_module(label_names):
        torch.manual_seed(0)
        return SFTModule(task="audio_classification", label_names=label_names, pretrained=str(model_dir),
                         modality="audio", dropout=0.0, pooling="mean_with_padding",
                         optimizer=partial(torch.optim.AdamW, lr=1e-4, weight_decay=0.01, fused=True))

    def datamodule():
        L.seed_everything(0, verbose=False)  # the same clip order every round
        return SFTDataModule(task="audio_classification", train_file=str(listing), val_file=str(eval_listing),
                             test_file=str(eval_listing), input_spec=audio_input_spec(str(model_dir)),
                             max_seconds=size["max_seconds"], batch_size=size["batch_size"],
                             num_workers=size["workers"])

    first = datamodule()
    first.setup("fit")
    order = list(first.train_dataloader().sampler)  # the epoch's clip order, which the peer follows too
    examples = first.encoded("train").examples
    label_names = first.label_names
    clips = [sf.read(examples[i]["audio"], dtype="float32")[0] for i in order]
    labels = [examples[i]["labels"] for i in order]
    del first
    # A shared machine's passing load would decide a single run: alternate the sides `rounds` times and
    # keep each side's fastest.
    results: dict[str, list[Result]] = {"ours": [], "peer": []}
    for _ in range(size.get("rounds", 1)):
        results["ours"].append(fit_and_time(fresh_module(label_names), datamodule(), size))
        gc.collect()  # the finished trainer's loader workers go before the other side starts
        results["peer"].append(run_plain_audio_loop(fresh_module(label_names), clips, labels, size))
    ours, peer = (max(results[side], key=lambda r: r.samples_per_s) for side in ("ours", "peer"))
    return ours, peer, "plain loop, decoded clips"


# -- inference: ONNX Runtime against eager PyTorch --------------------------------------------------
# Always on the CPU (the point is CPU serving); "gpu" is the same size, so --size may be left out anywhere.
ONNX_SIZES = {name: {"shape": "minilm", "batch_size": 32, "warmup": 2, "steps": 10, "precision": "32-true",
                     "max_length": 128} for name in ("cpu", "gpu")}


def onnx_cpu(size: dict, workdir: Path):
    """The default text classifier (sft's defaults: MiniLM shape, first-token pooling, random init here) as
    `eval.py export_onnx=true` writes it, run by ONNX Runtime, against the same module in eager
    PyTorch (inference mode), on the same padded batches of sentence-like texts, same thread count.
    `mean_loss` is unused (0); `max_abs_diff` is the largest logit difference over the timed batches."""
    import onnxruntime
    from transformers import AutoTokenizer

    from sft.export.onnx import export_text_onnx
    from sft.models import SFTModule

    model_dir = workdir / "encoder"
    model_dir.mkdir()
    make_encoder(model_dir, size["shape"], dropout=0.0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rng = np.random.default_rng(0)
    n = (size["warmup"] + size["steps"]) * size["batch_size"]
    texts = [" ".join(f"w{i}" for i in rng.integers(0, VOCAB_WORDS, size=k)) for k in sentence_lengths(n, 0)]
    batches = [tokenizer(texts[i:i + size["batch_size"]], padding=True, truncation=True,
                         max_length=size["max_length"], return_tensors="pt") for i in range(0, n, size["batch_size"])]
    torch.manual_seed(0)
    module = SFTModule(task="text_classification", label_names=["a", "b"], pretrained=str(model_dir)).eval()
    export_text_onnx(module, tokenizer, workdir / "model.onnx")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(str(workdir / "model.onnx"), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def eager(batch):
        with torch.inference_mode():
            return module.head(module.backbone(**batch).last_hidden_state, batch).numpy()

    def ort(batch):
        return session.run(["logits"], {name: batch[name].numpy() for name in names})[0]

    def timed(run) -> tuple[Result, list]:
        outputs = [run(b) for b in batches[:size["warmup"]]]
        watch = MemoryWatch().start()
        start = time.perf_counter()
        outputs = [run(b) for b in batches[size["warmup"]:]]
        seconds = time.perf_counter() - start
        tokens = sum(int(b["attention_mask"].sum()) for b in batches[size["warmup"]:])
        return Result(size["steps"] * size["batch_size"] / seconds, watch.stop(), 0.0, tokens / seconds), outputs

    ours, ours_out = timed(ort)
    peer, peer_out = timed(eager)
    ours.max_abs_diff = max(float(np.abs(a - b).max()) for a, b in zip(ours_out, peer_out))
    return ours, peer, "eager PyTorch"


WORKLOADS = {"text_cls": text_cls, "overhead": overhead, "chat_sft": chat_sft, "image_cls": image_cls,
             "audio_cls": audio_cls, "onnx_cpu": onnx_cpu}
WORKLOAD_SIZES = {"text_cls": SIZES, "overhead": SIZES, "chat_sft": CHAT_SIZES, "image_cls": IMAGE_SIZES,
                  "audio_cls": AUDIO_SIZES, "onnx_cpu": ONNX_SIZES}
WORKLOAD_SHAPES = {"text_cls": SHAPES, "overhead": SHAPES, "chat_sft": LLAMA_SHAPES, "image_cls": IMAGE_SHAPES,
                   "audio_cls": AUDIO_SHAPES, "onnx_cpu": SHAPES}


def main() -> None:
    if sys.argv[1:2] == ["data_scale"]:  # whole processes, not training steps: its own harness
        import data_scale

        data_scale.main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workload", choices=sorted(WORKLOADS) + ["data_scale"])
    parser.add_argument("--size", choices=sorted(SIZES), default="gpu" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shape", help="override the model shape of the size (tiny: for checking the harness runs)")
    parser.add_argument("--batch-size", type=int, help="override the batch size of the size")
    parser.add_argument("--steps", type=int, help="override the number of timed steps")
    parser.add_argument("--warmup", type=int, help="override the number of warm-up steps")
    parser.add_argument("--peer-length-grouping", action="store_true",
                        help="text_cls: give the HF Trainer its length grouping too (group_by_length)")
    parser.add_argument("--loss-chunk-size", type=int,
                        help="chat_sft: our LM head + loss over chunks of this many tokens (model.loss_chunk_size)")
    parser.add_argument("--peak-tflops", type=float,
                        help="chat_sft: the device's dense bf16 peak (e.g. 790 for the H200 in ASSETS.md), to report MFU")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    size = dict(WORKLOAD_SIZES[args.workload][args.size])
    shapes = WORKLOAD_SHAPES[args.workload]
    if args.shape is not None and args.shape not in shapes:
        parser.error(f"--shape {args.shape}: {args.workload} has the shapes {', '.join(shapes)}")
    if args.peer_length_grouping:
        if args.workload != "text_cls":
            parser.error("--peer-length-grouping applies to text_cls")
        size["peer_length_grouping"] = True
    if args.loss_chunk_size is not None:
        if args.workload != "chat_sft":
            parser.error("--loss-chunk-size is an option of chat_sft")
        size["loss_chunk_size"] = args.loss_chunk_size
    for key in ("shape", "batch_size", "steps", "warmup"):
        if getattr(args, key) is not None:
            size[key] = getattr(args, key)
    if size["warmup"] < 1 or size["steps"] < 1 or size["batch_size"] < 1:
        parser.error("--warmup, --steps and --batch-size must be at least 1 (timing starts at the end of warm-up)")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory() as tmp:
        ours, peer, peer_name, *more = WORKLOADS[args.workload](size, Path(tmp))
    o, p = ours.as_dict(), peer.as_dict()
    if args.peak_tflops and "flops_per_token" in size:
        for figures in (o, p):
            figures["mfu"] = round(figures["tokens_per_s"] * size["flops_per_token"] / (args.peak_tflops * 1e12), 6)
    ratio = {k: round(o[k] / p[k], 3) if p.get(k) else float("nan") for k in o}
    # further peers where they are installed (chat_sft: TRL), each with its own ratio
    extra = {name: result.as_dict() for name, result in (more[0] if more else {}).items()}
    for e in extra.values():
        if "mfu" in o and e.get("tokens_per_s"):
            e["mfu"] = round(e["tokens_per_s"] * size["flops_per_token"] / (args.peak_tflops * 1e12), 6)
    hardware = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    print(f"\n{args.workload} ({size['shape']} shape, batch {size['batch_size']}, {size['precision']}, "
          f"{size['steps']} timed steps after {size['warmup']} warm-up) on {hardware}")
    if "peer_batch_size" in size:
        print(f"sft: {size['batch_size']} packed rows of {size['max_length']} tokens per step (fill {size['packed_fill']:.1%}); "
              f"peer: {size['peer_batch_size']} padded conversations per step (mean {size['mean_tokens']} tokens)")
    print("peak_memory_gb: growth while training; GPU: peak allocated, CPU: peak resident set (RSS)")
    print(f"{'metric':16} {'sft':>12} {peer_name:>26} {'ratio sft/peer':>15}")
    for key in o:
        print(f"{key:16} {o[key]:>12} {p.get(key, '-'):>26} {ratio[key]:>15}")
    figures = {"workload": args.workload, "size": size, "hardware": hardware, "peer_name": peer_name,
               "ours": o, "peer": p, "ratio": ratio}
    for name, e in extra.items():
        e_ratio = {k: round(o[k] / e[k], 3) if e.get(k) else float("nan") for k in o}
        print(f"\n{'metric':16} {'sft':>12} {name:>26} {'ratio sft/it':>15}")
        for key in o:
            print(f"{key:16} {o[key]:>12} {e.get(key, '-'):>26} {e_ratio[key]:>15}")
        figures.setdefault("more_peers", {})[name] = {"figures": e, "ratio": e_ratio}
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
