"""Multi-label classification, text regression and token classification (NER): each learns a
small generated problem through train(cfg), plus their data handling, metrics and bad input."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
import torch

from sft.cli import evaluate, train
from sft.data.datamodule import SFTDataModule
from sft.data.sources import DataError
from sft.data.token_classification import owners, plan_windows
from sft.tagging import entities, entity_scores
from tests.conftest import FILLER, NEGATIVE, POSITIVE, compose_config

# -- generated data ----------------------------------------------------------------------------
TOPICS = {"bright": POSITIVE[:4], "warm": POSITIVE[4:], "grim": NEGATIVE[:4]}


def write_multilabel_jsonl(path: Path, rows: int, seed: int) -> Path:
    """Each record's labels are the topics whose words it contains (one to three of them)."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(rows):
            labels = rng.sample(sorted(TOPICS), rng.randint(1, 3))
            body = rng.sample(FILLER, 4) + [rng.choice(TOPICS[t]) for t in labels]
            rng.shuffle(body)
            f.write(json.dumps({"text": " ".join(body), "labels": sorted(labels)}) + "\n")
    return path


def write_regression_csv(path: Path, rows: int, seed: int) -> Path:
    """Targets are functions of how many positive and negative words a text holds, on a scale
    far from 0 and 1 so that standardization matters: score = 1000 + 100 * (#pos - #neg)."""
    rng = random.Random(seed)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "score", "negatives"])
        for _ in range(rows):
            pos, neg = rng.randint(0, 3), rng.randint(0, 3)
            body = rng.sample(FILLER, 4) + [rng.choice(POSITIVE) for _ in range(pos)] + [rng.choice(NEGATIVE) for _ in range(neg)]
            rng.shuffle(body)
            writer.writerow([" ".join(body), 1000 + 100 * (pos - neg), neg])
    return path


# NER: the entity type follows from the word before it; names are random letter strings, so
# held-out sentences carry names never seen in training, in the contexts seen there.
TRIGGERS = {"mr": "PER", "in": "LOC", "at": "ORG"}
CONTEXT = ["we", "met", "today", "then", "went", "home", "they", "said", "that", "it", "rained", "later", "so"]
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def random_name(rng: random.Random) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 6)))


def make_tagged_sentence(rng: random.Random, entities_in_sentence: int = 2) -> tuple[list[str], list[str]]:
    words, tags = [], []
    for _ in range(entities_in_sentence):
        for _ in range(rng.randint(1, 3)):
            words.append(rng.choice(CONTEXT))
            tags.append("O")
        trigger = rng.choice(sorted(TRIGGERS))
        words.append(trigger)
        tags.append("O")
        for k in range(rng.randint(1, 2)):
            words.append(random_name(rng))
            tags.append(("B-" if k == 0 else "I-") + TRIGGERS[trigger])
    words.append(rng.choice(CONTEXT))
    tags.append("O")
    return words, tags


def write_conll(path: Path, sentences: list[tuple[list[str], list[str]]]) -> Path:
    with open(path, "w") as f:
        f.write("-DOCSTART- -X- -X- O\n\n")
        for words, tags in sentences:
            for word, tag in zip(words, tags):
                f.write(f"{word} NN _ {tag}\n")
            f.write("\n")
    return path


@pytest.fixture(scope="module")
def tiny_tagger_dir(tmp_path_factory) -> str:
    """A 2-layer BERT whose WordPiece vocabulary holds the context words, single letters and
    '##' letter continuations, so unseen names split into several subwords."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny_tagger")
    vocab = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(CONTEXT) | set(TRIGGERS) | set(FILLER))
             + list(LETTERS) + [f"##{c}" for c in LETTERS])
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=48, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=96, max_position_embeddings=128)).save_pretrained(folder)
    return str(folder)


def task_overrides(data: str, model_dir: str, train_file: Path, extra: list[str] = ()) -> list[str]:
    return [f"data={data}", f"data.train_file={train_file}", f"model.pretrained={model_dir}", "data.batch_size=16",
            "data.eval_batch_size=64", "trainer.accelerator=cpu", "trainer.val_check_interval=1.0",
            "trainer.num_sanity_val_steps=0", "optimizer.lr=3e-3", "extras.print_config=false",
            "callbacks.progress_bar.refresh_rate=0", "logger=none", *extra]
