"""Data at scale, side by side: launch to first optimizer step (text classification) and to the
first packed batch (chat), sft against the plain Hugging Face datasets path, on generated data.

    python bench/compare.py data_scale --json data_scale.json
    python bench/data_scale.py --rows 10000 1000000 --chats 200000 --stream-rows 5000000
    python bench/data_scale.py --rows --chats 0 --stream-rows 0 --image-files 200000 --ner-sentences 400000

Every side runs as its own process, started cold (empty sft and datasets caches), and is
measured from its start to its exit: wall time and peak resident memory (the kernel's
ru_maxrss of that process and its children). The text sides are also timed from the start to
their first optimizer step, the issue's measure: sft records that moment in the run's
run_record.json (before it writes any checkpoint), the peer prints it. sft's text side is the user's command itself,
`python train.py data=text_classification data.train_file=big.csv trainer.max_steps=1 ...`;
the peer is `load_dataset("csv")` + batched `map` with the same tokenizer, a DataLoader with
dynamic padding and one AdamW step of the same model. A second sft launch on the unchanged
file shows what the caches save. Chat: 200,000 conversations of JSONL through sft's causal_lm
processor (labels masked by turn, the audit, packing) to the first packed batch, against
`load_dataset("json")` + batched `map(apply_chat_template)` to the first padded batch (TRL is
not installed here). Streaming: sft with data.streaming=true on a gzip JSONL of 5M records.
Images (`--image-files N`): a class folder of N small PNGs through sft's image_classification
setup (the file list into Arrow, every header checked) to the first training batch, against
torchvision's `ImageFolder` (a list in memory, no check) and a DataLoader to its first batch.
NER (`--ner-sentences N`): JSONL of {"tokens", "tags"} sentences through sft's token_classification
setup (tag scheme check, label map, word-aligned labels, windows) to the first training batch,
against the path of transformers' run_ner.py: `load_dataset("json")`, the label list from a
pass over the tags, batched `map` of tokenize-and-align-labels, a DataLoader to its first batch.
Each side's imports are timed alone too (every library module the side has imported by its end,
the model's module included), and the ratios are also given with them taken off. `--repeat N` runs each side
N times, the sides alternating, and reports the median time.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

VOCAB_WORDS = 2000


def write_text_csv(path: Path, rows: int, seed: int = 0) -> Path:
    """rows of "text,label": 8-40 words from the generated vocabulary, labels 0/1."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(8, 41, size=rows)
    words = rng.integers(0, VOCAB_WORDS, size=int(lengths.sum()))
    labels = rng.integers(0, 2, size=rows)
    with open(path, "w") as f:
        f.write("text,label\n")
        at = 0
        for n, label in zip(lengths.tolist(), labels.tolist()):
            f.write(" ".join(f"w{w}" for w in words[at:at + n].tolist()) + f",{label}\n")
            at += n
    return path


def write_chat_jsonl(path: Path, rows: int, words: int, seed: int = 0, opener=open) -> Path:
    """{"messages": [user, assistant]} records: 10-60 words asked, 2-30 answered, from `words` words."""
    rng = np.random.default_rng(seed)
    with opener(path, "wt") as f:
        for _ in range(rows):
            ask, answer = int(rng.integers(10, 61)), int(rng.integers(2, 31))
            turn = lambda k: " ".join(f"w{i}" for i in rng.integers(0, words, size=k).tolist())  # noqa: E731
            f.write(json.dumps({"messages": [{"role": "user", "content": turn(ask)},
                                             {"role": "assistant", "content": turn(answer)}]}) + "\n")
    return path


def measure(command: list[str], env: dict, cwd: Path, first_step: Optional[Callable[[str], float]] = None) -> dict:
    """Wall seconds and peak resident GiB of one process (and its children) from start to exit; with
    `first_step` (the Unix time of the side's first optimizer step, read from its output or files),
    also the seconds from start to that step."""
    started, start = time.time(), time.perf_counter()
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = process.stdout.read() if process.stdout else b""
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        sys.stderr.write(output.decode(errors="replace")[-4000:])
        raise SystemExit(f"side failed (exit {process.returncode}): {' '.join(command)}")
    figures = {"seconds": round(seconds, 2), "peak_rss_gb": round(usage.ru_maxrss / 2**20, 3)}
    if first_step is not None:
        figures["first_step_seconds"] = round(first_step(output.decode(errors="replace")) - started, 2)
    return figures


def peer_first_step(output: str) -> float:
    """The Unix time the peer's side printed after its optimizer step."""
    found = re.search(r"^first optimizer step at ([0-9.]+)$", output, re.MULTILINE)
    if not found:
        raise SystemExit(f"the peer's side printed no first-step time:\n{output[-2000:]}")
    return float(found.group(1))


def sft_first_step(run_dir: Path) -> Callable[[str], float]:
    """The Unix time sft recorded for the launch's first optimizer step (run_record.json, before any
    checkpoint is written)."""
    def read(output: str) -> float:
        launch = json.loads((run_dir / "run_record.json").read_text())["launches"][-1]
        return datetime.datetime.fromisoformat(launch["first_optimizer_step"]["time"]).timestamp()
    return read


def median(values: list[float]) -> float:
    ordered, middle = sorted(values), len(values) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def summarize(runs: list[dict]) -> dict:
    """Repeated measurements of one side: the median wall time (this machine's speed drifts by a
    third from minute to minute), the highest peak memory, and every run's seconds."""
    summary = {"seconds": round(median([r["seconds"] for r in runs]), 2),
               "peak_rss_gb": max(r["peak_rss_gb"] for r in runs), "runs": [r["seconds"] for r in runs]}
    if all("first_step_seconds" in r for r in runs):
        summary["first_step_seconds"] = round(median([r["first_step_seconds"] for r in runs]), 2)
    return summary


# -- the sides, each run as `python bench/data_scale.py --side NAME ...` in its own process --------------
def side_hf_text(args) -> None:
    import torch
    from datasets import load_dataset
    from torch.utils.data import DataLoader
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    data = load_dataset("csv", data_files=args.file)["train"]
    data = data.map(lambda batch: tokenizer(batch["text"], truncation=True, max_length=128), batched=True,
                    remove_columns=["text"]).rename_column("label", "labels")
    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=2)
    loader = DataLoader(data, batch_size=32, shuffle=True, collate_fn=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5)
    model(**next(iter(loader))).loss.backward()
    optimizer.step()
    print(f"first optimizer step at {time.time():.3f}", flush=True)


def side_sft_chat(args) -> None:
    from sft.data.datamodule import SFTDataModule

    datamodule = SFTDataModule(task="causal_lm", tokenizer=args.model, train_file=args.file, max_length=256,
                               batch_size=16, packing=True, streaming=args.streaming, val_file=args.val_file,
                               test_file=args.val_file)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["input_ids"].shape[0] >= 1


def side_hf_chat(args) -> None:
    from datasets import load_dataset
    from torch.utils.data import DataLoader
    from transformers import AutoTokenizer, DataCollatorWithPadding

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    data = load_dataset("json", data_files=args.file)["train"]
    data = data.map(lambda batch: {"input_ids": tokenizer.apply_chat_template(batch["messages"], tokenize=True,
                                                                             return_dict=False)},
                    batched=True, remove_columns=["messages"])
    loader = DataLoader(data, batch_size=16, shuffle=True, collate_fn=DataCollatorWithPadding(tokenizer))
    batch = next(iter(loader))
    assert batch["input_ids"].shape[0] >= 1


IMAGE_INPUT = {"channels": 3, "size": 32, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear",
               "crop_pct": 0.875}


def write_image_folder(root: Path, files: int) -> Path:
    """`files` 8x8 PNGs, half in red/ and half in blue/ (the same two images, written many times)."""
    import io

    from PIL import Image

    for name, color in (("red", (200, 10, 10)), ("blue", (10, 10, 200))):
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), color).save(buffer, "PNG")
        (root / name).mkdir(parents=True)
        for i in range(files // 2 if name == "red" else files - files // 2):
            (root / name / f"{i:07d}.png").write_bytes(buffer.getvalue())
    return root


def side_sft_images(args) -> None:
    from sft.data.datamodule import SFTDataModule

    datamodule = SFTDataModule(task="image_classification", train_file=args.file, input_spec=IMAGE_INPUT,
                               image_size=32, val_fraction=0.1, test_fraction=0.1, num_workers=1)
    datamodule.setup("fit")
    assert next(iter(datamodule.train_dataloader()))["pixel_values"].shape[0] >= 1


def side_torchvision_images(args) -> None:
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    data = datasets.ImageFolder(args.file, transforms.Compose([transforms.Resize(32), transforms.ToTensor()]))
    loader = DataLoader(data, batch_size=32, shuffle=True, num_workers=1)
    assert next(iter(loader))[0].shape[0] >= 1


def write_ner_jsonl(path: Path, sentences: int, words: int, seed: int = 0) -> Path:
    """{"tokens", "tags"} records of 5-30 words from `words` words, about one in five words tagged BIO."""
    rng = np.random.default_rng(seed)
    types = ["PER", "LOC", "ORG", "MISC"]
    with open(path, "w") as f:
        for _ in range(sentences):
            tokens, tags = [], []
            while len(tokens) < int(rng.integers(5, 31)):
                if rng.random() < 0.2:
                    kind, length = types[int(rng.integers(0, 4))], int(rng.integers(1, 4))
                    tags += [f"B-{kind}"] + [f"I-{kind}"] * (length - 1)
                else:
                    length = 1
                    tags.append("O")
                tokens += [f"w{i}" for i in rng.integers(0, words, size=length).tolist()]
            f.write(json.dumps({"tokens": tokens, "tags": tags}) + "\n")
    return path


def side_sft_ner(args) -> None:
    from sft.data.datamodule import SFTDataModule

    datamodule = SFTDataModule(task="token_classification", tokenizer=args.model, train_file=args.file, max_length=128,
                               text_column="tokens", label_column="tags", val_fraction=0.05, test_fraction=0.05)
    datamodule.setup("fit")
    assert next(iter(datamodule.train_dataloader()))["input_ids"].shape[0] >= 1


def side_hf_ner(args) -> None:
    from datasets import load_dataset
    from torch.utils.data import DataLoader
    from transformers import AutoTokenizer, DataCollatorForTokenClassification

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    data = load_dataset("json", data_files=args.file)["train"]
    labels = sorted({tag for tags in data["tags"] for tag in tags})  # as run_ner.py's get_label_list
    index = {label: k for k, label in enumerate(labels)}

    def tokenize_and_align_labels(batch):
        encoded = tokenizer(batch["tokens"], truncation=True, max_length=128, is_split_into_words=True)
        aligned = []
        for k, tags in enumerate(batch["tags"]):
            previous, row = None, []
            for word in encoded.word_ids(batch_index=k):  # the first subword of each word carries its tag
                row.append(-100 if word is None or word == previous else index[tags[word]])
                previous = word
            aligned.append(row)
        encoded["labels"] = aligned
        return encoded

    data = data.map(tokenize_and_align_labels, batched=True, remove_columns=data.column_names)
    loader = DataLoader(data, batch_size=32, shuffle=True, collate_fn=DataCollatorForTokenClassification(tokenizer))
    assert next(iter(loader))["input_ids"].shape[0] >= 1


SIDES = {"sft_ner": side_sft_ner, "hf_ner": side_hf_ner, "hf_text": side_hf_text, "sft_chat": side_sft_chat, "hf_chat": side_hf_chat, "sft_images": side_sft_images,
         "torchvision_images": side_torchvision_images}


# -- the run ------------------------------------------------------------------------------------------
def sft_train_command(csv: Path, model_dir: Path, run_dir: Path, extra: list[str] = ()) -> list[str]:
    """The user's command: the text classification template on a CSV, stopped after one optimizer step."""
    return [sys.executable, str(ROOT / "train.py"), "data=text_classification", f"data.train_file={csv}",
            f"model.pretrained={model_dir}", "trainer=cpu", "trainer.max_steps=1", "trainer.limit_val_batches=0",
            "test=false", f"hydra.run.dir={run_dir}", *extra]


# Every library module each side has imported by the end of its work, some of them on the way
# (datasets when sft reads; the model's module, and through it torchvision and torch._dynamo,
# when a side loads its model).
MODEL_MODULE = "import transformers.models.bert.modeling_bert"
IMPORTS = {
    "text": {"sft": f"import sft.cli, datasets; {MODEL_MODULE}",
             "hf": "import torch, datasets, transformers; from torch.utils.data import DataLoader; from transformers "
                   f"import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding; {MODEL_MODULE}"},
    "chat": {"sft": "import datasets; from sft.data.datamodule import SFTDataModule",
             "hf": "from datasets import load_dataset; from torch.utils.data import DataLoader; "
                   "from transformers import AutoTokenizer, DataCollatorWithPadding"},
}


def past_imports(ours: dict, peer: dict, imports: dict, measure: str = "seconds") -> float:
    """sft/HF time (`measure`: to exit, or first_step_seconds) once each side's imports (of what it
    has imported by its end) are taken off."""
    return round((ours[measure] - imports["sft"]["seconds"]) / (peer[measure] - imports["hf"]["seconds"]), 3)


def run(rows: list[int], chats: int, stream_rows: int, work: Path, repeat: int = 1, image_files: int = 0,
        ner_sentences: int = 0) -> dict:
    import compare

    model_dir = work / "encoder"
    model_dir.mkdir()
    compare.make_encoder(model_dir, "minilm")
    chat_dir = work / "chat_model"
    chat_dir.mkdir()
    chat_words = compare.make_chat_model(chat_dir, "tiny")
    base_env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
                "PYTHONPATH": str(ROOT)}
    figures: dict = {"text": {}, "chat": {}, "stream": {}, "images": {}, "ner": {}, "imports": {}}

    def fresh_env(name: str) -> dict:
        return {**base_env, "SFT_CACHE": str(work / f"{name}-sft-cache"), "HF_DATASETS_CACHE": str(work / f"{name}-hf-cache")}

    me = [sys.executable, str(Path(__file__).resolve())]
    # The fixed cost under every launch: importing each side's stack, in its own process.
    # Sides alternate within each repeat, so a slow minute of the machine falls on both.
    for workload in [w for w, wanted in (("text", rows), ("chat", chats)) if wanted]:
        runs: dict[str, list] = {"sft": [], "hf": []}
        for _ in range(repeat):
            for side in ("sft", "hf"):
                runs[side].append(measure([sys.executable, "-c", IMPORTS[workload][side]], base_env, work))
        ours, peer = summarize(runs["sft"]), summarize(runs["hf"])
        figures["imports"][workload] = {"sft": ours, "hf": peer, "extra_seconds": round(ours["seconds"] - peer["seconds"], 2)}
        print(f"{workload} imports alone (all each side has imported by its end): sft {ours['seconds']:.1f} s | HF "
              f"{peer['seconds']:.1f} s | sft's extra {figures['imports'][workload]['extra_seconds']:.1f} s", flush=True)
    for n in rows:
        csv = write_text_csv(work / f"text-{n}.csv", n)
        runs = {"cold": [], "warm": [], "hf": []}
        for r in range(repeat):  # each repeat starts from empty caches
            env = fresh_env(f"text-{n}-{r}")
            for launch in ("cold", "warm"):
                run_dir = work / f"run-{n}-{r}-{launch}"
                runs[launch].append(measure(sft_train_command(csv, model_dir, run_dir), env, work, sft_first_step(run_dir)))
            runs["hf"].append(measure([*me, "--side", "hf_text", "--model", str(model_dir), "--file", str(csv)],
                                      fresh_env(f"peer-{n}-{r}"), work, peer_first_step))
        sft_cold, sft_warm, peer = summarize(runs["cold"]), summarize(runs["warm"]), summarize(runs["hf"])
        text = figures["text"][n] = {
            "sft": sft_cold, "sft_second_launch": sft_warm, "hf": peer,
            # the measure: from the command to the first optimizer step
            "first_step_ratio": round(sft_cold["first_step_seconds"] / peer["first_step_seconds"], 3),
            "first_step_ratio_past_imports": past_imports(sft_cold, peer, figures["imports"]["text"], "first_step_seconds"),
            "second_launch_first_step_share": round(sft_warm["first_step_seconds"] / sft_cold["first_step_seconds"], 3),
            # to the process's exit (sft's includes writing the final checkpoint and reports)
            "time_ratio": round(sft_cold["seconds"] / peer["seconds"], 3),
            "time_ratio_past_imports": past_imports(sft_cold, peer, figures["imports"]["text"]),
            "memory_ratio": round(sft_cold["peak_rss_gb"] / peer["peak_rss_gb"], 3),
            "second_launch_share": round(sft_warm["seconds"] / sft_cold["seconds"], 3)}
        print(f"text {n:>9,} rows, to the first step: sft {sft_cold['first_step_seconds']:.1f} s | second launch "
              f"{sft_warm['first_step_seconds']:.1f} s ({text['second_launch_first_step_share']:.0%}) | HF "
              f"{peer['first_step_seconds']:.1f} s | sft/HF {text['first_step_ratio']} "
              f"({text['first_step_ratio_past_imports']} past the imports)", flush=True)
        print(f"text {n:>9,} rows, to exit: sft {sft_cold['seconds']:7.1f} s {sft_cold['peak_rss_gb']:5.2f} GB | second "
              f"launch {sft_warm['seconds']:6.1f} s | HF {peer['seconds']:7.1f} s {peer['peak_rss_gb']:5.2f} GB | "
              f"time sft/HF {text['time_ratio']} ({text['time_ratio_past_imports']} past the imports)", flush=True)
        csv.unlink()
    if chats:
        chat_file = write_chat_jsonl(work / "chat.jsonl", chats, chat_words)
        val_file = write_chat_jsonl(work / "chat_val.jsonl", 200, chat_words, seed=1)
        chat_args = ["--model", str(chat_dir), "--file", str(chat_file), "--val-file", str(val_file)]
        runs = {"sft": [], "hf": []}
        for r in range(repeat):
            runs["sft"].append(measure([*me, "--side", "sft_chat", *chat_args], fresh_env(f"chat-{r}"), work))
            runs["hf"].append(measure([*me, "--side", "hf_chat", *chat_args], fresh_env(f"chat-peer-{r}"), work))
        ours, peer = summarize(runs["sft"]), summarize(runs["hf"])
        figures["chat"][chats] = {"sft": ours, "hf": peer, "time_ratio": round(ours["seconds"] / peer["seconds"], 3),
                                  "time_ratio_past_imports": past_imports(ours, peer, figures["imports"]["chat"]),
                                  "memory_ratio": round(ours["peak_rss_gb"] / peer["peak_rss_gb"], 3)}
        print(f"chat {chats:>9,} conversations: sft {ours['seconds']:7.1f} s {ours['peak_rss_gb']:5.2f} GB | HF "
              f"{peer['seconds']:7.1f} s {peer['peak_rss_gb']:5.2f} GB | time sft/HF {figures['chat'][chats]['time_ratio']} "
              f"({figures['chat'][chats]['time_ratio_past_imports']} past the imports)",
              flush=True)
    if stream_rows:
        stream_file = write_chat_jsonl(work / "stream.jsonl.gz", stream_rows, chat_words, opener=gzip.open)
        val_file = write_chat_jsonl(work / "stream_val.jsonl", 200, chat_words, seed=1)
        ours = measure([*me, "--side", "sft_chat", "--streaming", "--model", str(chat_dir), "--file", str(stream_file),
                        "--val-file", str(val_file)], fresh_env("stream"), work)
        figures["stream"][stream_rows] = {"sft": ours}
        print(f"stream {stream_rows:>9,} records (gzip JSONL): sft first packed batch in {ours['seconds']:.1f} s, "
              f"{ours['peak_rss_gb']:.2f} GB", flush=True)
    if image_files:
        folder = write_image_folder(work / "images", image_files)
        runs = {"sft": [], "torchvision": []}
        for r in range(repeat):
            for side in runs:
                runs[side].append(measure([*me, "--side", f"{side}_images", "--file", str(folder)],
                                          fresh_env(f"images-{side}-{r}"), work))
        ours, peer = summarize(runs["sft"]), summarize(runs["torchvision"])
        figures["images"][image_files] = {"sft": ours, "torchvision": peer,
                                          "time_ratio": round(ours["seconds"] / peer["seconds"], 3),
                                          "memory_ratio": round(ours["peak_rss_gb"] / peer["peak_rss_gb"], 3)}
        print(f"images {image_files:>7,} files (class folder): sft {ours['seconds']:7.1f} s {ours['peak_rss_gb']:5.2f} GB | "
              f"torchvision ImageFolder {peer['seconds']:7.1f} s {peer['peak_rss_gb']:5.2f} GB | time sft/torchvision "
              f"{figures['images'][image_files]['time_ratio']}", flush=True)
    if ner_sentences:
        ner_file = write_ner_jsonl(work / "ner.jsonl", ner_sentences, compare.VOCAB_WORDS)
        runs = {"sft": [], "hf": []}
        for r in range(repeat):
            for side in runs:
                runs[side].append(measure([*me, "--side", f"{side}_ner", "--model", str(model_dir), "--file", str(ner_file)],
                                          fresh_env(f"ner-{side}-{r}"), work))
        ours, peer = summarize(runs["sft"]), summarize(runs["hf"])
        figures["ner"][ner_sentences] = {"sft": ours, "hf": peer, "time_ratio": round(ours["seconds"] / peer["seconds"], 3),
                                         "memory_ratio": round(ours["peak_rss_gb"] / peer["peak_rss_gb"], 3)}
        print(f"NER {ner_sentences:>9,} sentences (JSONL): sft {ours['seconds']:7.1f} s {ours['peak_rss_gb']:5.2f} GB | HF "
              f"run_ner path {peer['seconds']:7.1f} s {peer['peak_rss_gb']:5.2f} GB | time sft/HF "
              f"{figures['ner'][ner_sentences]['time_ratio']}", flush=True)
    if len(rows) >= 2:
        small, large = figures["text"][min(rows)], figures["text"][max(rows)]
        figures["text_memory_growth_gb"] = round(large["sft"]["peak_rss_gb"] - small["sft"]["peak_rss_gb"], 3)
        print(f"peak memory growth from {min(rows):,} to {max(rows):,} rows: {figures['text_memory_growth_gb']} GB "
              f"(goal: at most 1 GB)")
    return figures


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="*", default=[10_000, 1_000_000], help="text classification CSV sizes")
    parser.add_argument("--chats", type=int, default=200_000, help="conversations of the chat comparison (0: skip)")
    parser.add_argument("--stream-rows", type=int, default=5_000_000, help="records of the streamed gzip JSONL (0: skip)")
    parser.add_argument("--image-files", type=int, default=0, help="images of the class-folder comparison (0: skip)")
    parser.add_argument("--ner-sentences", type=int, default=0, help="sentences of the NER comparison (0: skip)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of each side (stream aside), alternating; the median time is reported")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--side", choices=sorted(SIDES), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--val-file", help=argparse.SUPPRESS)
    parser.add_argument("--streaming", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side:
        SIDES[args.side](args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        figures = run(args.rows, args.chats, args.stream_rows, Path(tmp), max(1, args.repeat), args.image_files,
                      args.ner_sentences)
    figures["repeat"] = max(1, args.repeat)
    figures["hardware"] = f"CPU, {os.cpu_count()} cores"
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
