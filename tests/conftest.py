"""Shared fixtures: a tiny BERT made locally, learnable generated data, composed configs."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from sft.cli import config_dir
from sft.config import register_resolvers

POSITIVE = ["great", "superb", "moving", "brilliant", "charming", "delightful", "gripping", "wonderful"]
NEGATIVE = ["dull", "awful", "tedious", "clumsy", "boring", "lifeless", "messy", "dreadful"]
FILLER = ["the", "film", "movie", "was", "a", "plot", "story", "actors", "really", "quite", "and", "its", "ending", "cast"]


def make_sentence(rng: random.Random, words: list[str]) -> str:
    body = rng.sample(FILLER, 5) + [rng.choice(words), rng.choice(words)]
    rng.shuffle(body)
    return " ".join(body)


def write_sentiment_csv(path: Path, rows: int, seed: int = 0, labels=("pos", "neg")) -> Path:
    """A learnable two-class problem: the label is given by which word list a sentence draws from."""
    rng = random.Random(seed)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for i in range(rows):
            positive = i % 2 == 0
            writer.writerow([make_sentence(rng, POSITIVE if positive else NEGATIVE), labels[0] if positive else labels[1]])
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A 2-layer BERT (random init) and a WordPiece tokenizer over the test vocabulary, saved
    with save_pretrained so that tests load them through the same path users take."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny_bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(POSITIVE + NEGATIVE + FILLER + list("abcdefghijklmnopqrstuvwxyz")))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=True)
    assert tokenizer.vocab_size == len(vocab)
    tokenizer.save_pretrained(folder)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    import torch

    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def sentiment_csv(tmp_path_factory) -> Path:
    return write_sentiment_csv(tmp_path_factory.mktemp("data") / "reviews.csv", rows=320)


def tiny_overrides(model_dir: str, train_file: Path, extra: list[str] | None = None) -> list[str]:
    """Overrides that make the default config train the tiny BERT on a generated file, quickly, on CPU."""
    return [
        "data=text_classification",
        f"data.train_file={train_file}",
        f"model.pretrained={model_dir}",
        "data.batch_size=16",
        "data.eval_batch_size=32",
        "data.max_length=32",
        "trainer.accelerator=cpu",
        "trainer.val_check_interval=1.0",
        "trainer.log_every_n_steps=1",
        "trainer.num_sanity_val_steps=0",
        "optimizer.lr=3e-3",
        "extras.print_config=false",
        "callbacks.progress_bar.refresh_rate=0",
    ] + (extra or [])


def compose_config(name: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose a config as Hydra would for a run writing into `output_dir`."""
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.log_dir = str(output_dir.parent)
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.runtime.cwd = str(Path.cwd())
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture
def make_train_cfg(tiny_model_dir, sentiment_csv, tmp_path):
    """cfg factory: make_train_cfg([overrides], run_name) -> composed train config."""

    def make(extra: list[str] | None = None, run_name: str = "run") -> DictConfig:
        return compose_config("train", tiny_overrides(tiny_model_dir, sentiment_csv, extra), tmp_path / run_name)

    return make
