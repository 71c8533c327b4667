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
from sft.export import Predictor
from sft.data.datamodule import SFTDataModule
from sft.data.sources import DataError
from sft.data.token_classification import owners, plan_windows
from sft.tagging import entities, entity_scores
from tests.conftest import FILLER, NEGATIVE, POSITIVE, compose_config

# -- generated data ----------------------------------------------------------------------------
TOPICS = {"bright": POSITIVE[:4], "warm": POSITIVE[4:], "grim": NEGATIVE[:4]}


def write_multilabel_jsonl(path: Path, rows: int, seed: int) -> Path:
    """Each record's labels are the topics whose words it contains (one to three of them, two
    words each)."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(rows):
            labels = rng.sample(sorted(TOPICS), rng.randint(1, 3))
            body = rng.sample(FILLER, 4) + [word for t in labels for word in rng.sample(TOPICS[t], 2)]
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


def random_name(rng: random.Random, avoid: set[str]) -> str:
    """2 to 4 random letters, never a context word nor a name in `avoid`."""
    while True:
        name = "".join(rng.choice(LETTERS) for _ in range(rng.randint(2, 4)))
        if name not in avoid and name not in TRIGGERS and name not in CONTEXT and name not in FILLER:
            return name


def make_tagged_sentence(rng: random.Random, entities_in_sentence: int = 2,
                         avoid: set[str] = frozenset()) -> tuple[list[str], list[str]]:
    words, tags = [], []
    for _ in range(entities_in_sentence):
        for _ in range(rng.randint(1, 2)):
            words.append(rng.choice(CONTEXT))
            tags.append("O")
        trigger = rng.choice(sorted(TRIGGERS))
        words.append(trigger)
        tags.append("O")
        for k in range(rng.randint(1, 2)):
            words.append(random_name(rng, avoid))
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
    """A 2-layer RoFormer (a BERT with rotary positions, so attending to the previous word is
    quick to learn) with a WordPiece vocabulary of the context words, single letters and '##'
    letter continuations: unseen names split into several subwords."""
    from transformers import BertTokenizerFast, RoFormerConfig, RoFormerModel

    folder = tmp_path_factory.mktemp("tiny_tagger")
    vocab = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(CONTEXT) | set(TRIGGERS) | set(FILLER))
             + list(LETTERS) + [f"##{c}" for c in LETTERS])
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    torch.manual_seed(0)
    RoFormerModel(RoFormerConfig(vocab_size=len(vocab), embedding_size=48, hidden_size=48, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=96, max_position_embeddings=128)).save_pretrained(folder)
    return str(folder)


def task_overrides(data: str, model_dir: str, train_file: Path, extra: list[str] = ()) -> list[str]:
    return [f"data={data}", f"data.train_file={train_file}", f"model.pretrained={model_dir}", "data.batch_size=16",
            "data.eval_batch_size=64", "trainer.accelerator=cpu", "trainer.val_check_interval=1.0",
            "trainer.num_sanity_val_steps=0", "optimizer.lr=3e-3", "extras.print_config=false",
            "callbacks.progress_bar.refresh_rate=0", "logger=none", *extra]


# -- multi-label ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_multilabel_learns_and_writes_predictions(tiny_model_dir, tmp_path):
    train_file = write_multilabel_jsonl(tmp_path / "train.jsonl", 400, seed=0)
    test_file = write_multilabel_jsonl(tmp_path / "test.jsonl", 96, seed=1)
    cfg = compose_config("train", task_overrides("multilabel", tiny_model_dir, train_file,
                                                 [f"data.test_file={test_file}", "trainer.max_epochs=4"]), tmp_path / "run")
    assert (cfg.monitor, cfg.monitor_mode) == ("val/micro_f1", "max")
    metrics = train(cfg)
    assert metrics["test/micro_f1"] >= 0.9, metrics
    assert {"test/macro_f1", "test/exact_match", "test/f1_bright", "test/f1_warm", "test/f1_grim"} <= set(metrics)
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written["test/micro_f1"] == pytest.approx(metrics["test/micro_f1"])

    predictions = tmp_path / "predictions.jsonl"
    evaluated = evaluate(compose_config("eval", [f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'best.ckpt'}",
                                                 "trainer.accelerator=cpu", f"predictions_file={predictions}",
                                                 f"export_dir={tmp_path / 'export'}", "extras.print_config=false"],
                                        tmp_path / "eval"))
    assert evaluated["test/micro_f1"] == pytest.approx(metrics["test/micro_f1"])
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    # The export predicts the same label sets with the same probabilities, without the training config.
    answers = Predictor.load(tmp_path / "export").predict([r["text"] for r in rows])
    assert [a["labels"] for a in answers] == [r["prediction"] for r in rows]
    assert all(a["probabilities"] == pytest.approx(r["probabilities"], abs=1e-5) for a, r in zip(answers, rows))
    assert len(rows) == 96 and rows[0]["source"] == f"{test_file}:1"
    # micro-F1 recomputed from the written predictions agrees with the metric
    tp = sum(len(set(r["labels"]) & set(r["prediction"])) for r in rows)
    fp = sum(len(set(r["prediction"]) - set(r["labels"])) for r in rows)
    fn = sum(len(set(r["labels"]) - set(r["prediction"])) for r in rows)
    assert 2 * tp / (2 * tp + fp + fn) == pytest.approx(evaluated["test/micro_f1"], abs=1e-6)
    assert all(set(r["prediction"]) == {k for k, p in r["probabilities"].items() if p > 0.5} for r in rows)


def test_multilabel_reads_separated_strings(tiny_model_dir, tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("text,labels\nthe film was great,a|b\na dull plot,b\nquite charming,c| a\n")
    dm = SFTDataModule(task="multilabel_classification", tokenizer=tiny_model_dir, train_file=str(path),
                       val_file=str(path), test_file=str(path), label_column="labels")
    assert dm.label_names == ["a", "b", "c"]
    assert [e["labels"] for e in dm.encoded("train").examples] == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]


def test_multilabel_empty_labels(tiny_model_dir, tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("text,labels\nthe film was great,a|b\na dull plot,\nquite charming,c\n")
    kwargs = dict(task="multilabel_classification", tokenizer=tiny_model_dir, train_file=str(path), val_file=str(path),
                  test_file=str(path), label_column="labels")
    with pytest.raises(DataError, match=rf"{path}:3: field 'labels' holds no labels"):
        SFTDataModule(**kwargs).label_names
    dm = SFTDataModule(**kwargs, allow_empty_labels=True)
    assert [e["labels"] for e in dm.encoded("train").examples] == [[1, 1, 0], [0, 0, 0], [0, 0, 1]]


# -- regression ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_regression_learns_in_original_units(tiny_model_dir, tmp_path):
    train_file = write_regression_csv(tmp_path / "train.csv", 320, seed=0)
    cfg = compose_config("train", task_overrides("text_regression", tiny_model_dir, train_file,
                                                 # a count of words: mean pooling learns it fastest on a tiny encoder
                                                 ["data.label_column=score", "trainer.max_epochs=3", "model.pooling=mean"]),
                         tmp_path / "run")
    assert (cfg.monitor, cfg.monitor_mode) == ("val/mse", "min")
    metrics = train(cfg)
    assert metrics["test/pearson"] >= 0.9, metrics
    assert metrics["test/spearman"] >= 0.85, metrics
    # metrics are in the target's units (standard deviation about 240), not standardized ones
    assert metrics["test/rmse"] == pytest.approx(metrics["test/mse"] ** 0.5, rel=1e-4)
    assert 5 < metrics["test/rmse"] < 120, metrics

    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    mean = ckpt["hyper_parameters"]["target_mean"][0]
    assert 950 < mean < 1050  # learned from the training split: 1000 + 100 * E[#pos - #neg]
    predictions = tmp_path / "predictions.jsonl"
    evaluated = evaluate(compose_config("eval", [f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'best.ckpt'}",
                                                 "trainer.accelerator=cpu", f"predictions_file={predictions}",
                                                 f"export_dir={tmp_path / 'export'}", "extras.print_config=false"],
                                        tmp_path / "eval"))
    assert evaluated["test/pearson"] == pytest.approx(metrics["test/pearson"], abs=1e-5)
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    # The export predicts in the target's units (its standardization travels with it).
    answers = Predictor.load(tmp_path / "export").predict([r["text"] for r in rows])
    assert [a["prediction"]["score"] for a in answers] == pytest.approx([r["prediction"]["score"] for r in rows], abs=1e-2)
    errors = [r["prediction"]["score"] - r["targets"]["score"] for r in rows]
    assert (sum(e * e for e in errors) / len(errors)) ** 0.5 == pytest.approx(evaluated["test/rmse"], rel=1e-3)


def test_streamed_regression_learns_the_same_target_statistics(tiny_model_dir, tmp_path, monkeypatch):
    import math

    monkeypatch.setenv("SFT_CACHE", str(tmp_path / "cache"))
    train_file = write_regression_csv(tmp_path / "train.csv", 200, seed=0)
    kwargs = dict(task="text_regression", tokenizer=tiny_model_dir, train_file=str(train_file), val_file=str(train_file),
                  test_file=str(train_file), label_column=["score", "negatives"])
    streamed = SFTDataModule(**kwargs, streaming=True)
    assert streamed.label_names == ["score", "negatives"]
    rows = list(csv.DictReader(open(train_file)))
    for k, column in enumerate(["score", "negatives"]):
        values = [float(r[column]) for r in rows]
        mean = sum(values) / len(values)
        assert streamed.head_options["target_mean"][k] == pytest.approx(mean, rel=1e-9)
        assert streamed.head_options["target_std"][k] == pytest.approx(
            math.sqrt(sum((v - mean) ** 2 for v in values) / len(values)), rel=1e-9)
    whole = SFTDataModule(**kwargs).head_options
    for key in ("target_mean", "target_std"):
        assert whole[key] == pytest.approx(streamed.head_options[key], rel=1e-9)
    lines = train_file.read_text().splitlines()
    lines[150] = lines[150].rsplit(",", 2)[0] + ",high,1"  # a target that is no number, late in the stream
    train_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"{train_file}:151: field 'score' is 'high'; expected a finite number"):
        SFTDataModule(**kwargs, streaming=True).head_options


@pytest.mark.slow
def test_multi_output_regression(tiny_model_dir, tmp_path):
    train_file = write_regression_csv(tmp_path / "train.csv", 240, seed=0)
    cfg = compose_config("train", task_overrides("text_regression", tiny_model_dir, train_file,
                                                 ["data.label_column=[score,negatives]", "trainer.max_epochs=5",
                                                  "model.regression_loss=huber", "model.pooling=mean"]),  # word counts
                         tmp_path / "run")
    metrics = train(cfg)
    for name in ("pearson", "spearman", "mse", "mae", "rmse"):
        assert f"test/{name}_score" in metrics and f"test/{name}_negatives" in metrics
        assert metrics[f"test/{name}"] == pytest.approx((metrics[f"test/{name}_score"] + metrics[f"test/{name}_negatives"]) / 2, rel=1e-4)
    assert metrics["test/pearson_score"] >= 0.8 and metrics["test/pearson_negatives"] >= 0.8, metrics


def test_regression_rejects_non_numeric_target(tiny_model_dir, tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("text,score\nthe film,1.5\nthe plot,2\na story,n/a\n")
    dm = SFTDataModule(task="text_regression", tokenizer=tiny_model_dir, train_file=str(path), val_file=str(path),
                       test_file=str(path), label_column="score")
    with pytest.raises(DataError, match=rf"{path}:4: field 'score' is 'n/a'; expected a finite number"):
        dm.encoded("train")


def test_sentence_pairs_use_the_tokenizer_pair_format(tiny_model_dir, tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"a": "the film", "b": "was great", "score": 1.0}) + "\n")
    dm = SFTDataModule(task="text_regression", tokenizer=tiny_model_dir, train_file=str(path), val_file=str(path),
                       test_file=str(path), text_column="a", text_pair_column="b", label_column="score")
    example = dm.encoded("train").examples[0]
    tokens = dm.tokenizer.convert_ids_to_tokens(example["input_ids"])
    assert tokens == ["[CLS]", "the", "film", "[SEP]", "was", "great", "[SEP]"]
    assert example["token_type_ids"] == [0, 0, 0, 0, 1, 1, 1]


# -- token classification (NER) ----------------------------------------------------------------
@pytest.mark.slow
def test_ner_learns_unseen_names_in_seen_contexts(tiny_tagger_dir, tmp_path):
    rng = random.Random(0)
    train_sentences = [make_tagged_sentence(rng) for _ in range(320)]
    seen = {w for words, _ in train_sentences for w in words}
    test_sentences = [make_tagged_sentence(rng, avoid=seen) for _ in range(60)]
    names = {w for words, tags in test_sentences for w, t in zip(words, tags) if t != "O"}
    assert len(names) > 100 and not names & seen  # held-out names never occur in training
    train_file = write_conll(tmp_path / "train.conll", train_sentences)
    test_file = write_conll(tmp_path / "test.conll", test_sentences)
    cfg = compose_config("train", task_overrides("token_classification", tiny_tagger_dir, train_file,
                                                 [f"data.test_file={test_file}", "trainer.max_epochs=8", "scheduler=constant", "optimizer.lr=5e-3",
                                                  "callbacks.early_stopping=null"]), tmp_path / "run")
    assert (cfg.monitor, cfg.monitor_mode) == ("val/entity_f1", "max")
    metrics = train(cfg)
    assert metrics["test/entity_f1"] >= 0.9, metrics
    assert {"test/entity_precision", "test/entity_recall", "test/token_acc", "test/entity_f1_PER",
            "test/entity_f1_LOC", "test/entity_f1_ORG"} <= set(metrics)

    predictions = tmp_path / "predictions.jsonl"
    evaluated = evaluate(compose_config("eval", [f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'best.ckpt'}",
                                                 "trainer.accelerator=cpu", f"predictions_file={predictions}",
                                                 f"export_dir={tmp_path / 'export'}", "extras.print_config=false"],
                                        tmp_path / "eval"))
    assert evaluated["test/entity_f1"] == pytest.approx(metrics["test/entity_f1"])
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    # The export tags the same words the same way (lists of words, or strings split on spaces).
    predictor = Predictor.load(tmp_path / "export")
    answers = predictor.predict([r["words"] for r in rows])
    assert [a["tags"] for a in answers] == [r["predicted_tags"] for r in rows]
    assert [a["entities"] for a in answers] == [r["entities"] for r in rows]
    assert predictor.predict([" ".join(rows[0]["words"])]) == answers[:1]
    assert [r["words"] for r in rows] == [words for words, _ in test_sentences]
    assert all(len(r["predicted_tags"]) == len(r["words"]) for r in rows)
    assert rows[0]["source"] == f"{test_file}:3"  # after the -DOCSTART- line and its blank line
    # the entity F1 recomputed from the written per-sentence tags equals the logged metric
    rescored = entity_scores([r["tags"] for r in rows], [r["predicted_tags"] for r in rows])
    assert rescored["entity_f1"] == pytest.approx(evaluated["test/entity_f1"], abs=1e-6)
    first = rows[0]
    assert [(e["type"], e["start"], e["end"]) for e in first["entities"]] == \
        [(kind, start, end + 1) for kind, start, end in entities(first["predicted_tags"])]
    assert all(e["text"] == " ".join(first["words"][e["start"]:e["end"]]) for e in first["entities"])


def test_entity_scores_match_hand_computed_values():
    gold = [["B-PER", "I-PER", "O", "B-LOC", "O", "B-ORG", "I-ORG"],
            ["O", "B-LOC", "I-LOC", "O", "B-PER"]]
    predicted = [["B-PER", "I-PER", "O", "B-ORG", "O", "B-ORG", "O"],   # LOC typed as ORG; ORG cut short
                 ["O", "B-LOC", "I-LOC", "I-LOC", "B-PER"]]           # LOC one word too long
    # gold: PER(0,0-1) LOC(0,3) ORG(0,5-6) LOC(1,1-2) PER(1,4) = 5 entities
    # predicted: PER(0,0-1) ORG(0,3) ORG(0,5) LOC(1,1-3) PER(1,4) = 5; exact matches: the two PER
    scores = entity_scores(gold, predicted)
    assert scores["entity_precision"] == pytest.approx(2 / 5)
    assert scores["entity_recall"] == pytest.approx(2 / 5)
    assert scores["entity_f1"] == pytest.approx(2 / 5)
    assert scores["entity_f1_PER"] == pytest.approx(1.0)
    assert scores["entity_f1_LOC"] == 0.0 and scores["entity_f1_ORG"] == 0.0
    assert scores["token_acc"] == pytest.approx(9 / 12)  # words 3 and 6, then 3, are wrong
    # seqeval's lenient chunking: I- after O opens an entity, a type change splits one
    assert entities(["O", "I-PER", "I-PER", "I-LOC", "O"]) == [("PER", 1, 2), ("LOC", 3, 3)]
    assert entities(["S-PER", "B-LOC", "I-LOC", "E-LOC", "S-LOC"]) == [("PER", 0, 0), ("LOC", 1, 3), ("LOC", 4, 4)]


def test_windows_cover_every_word_once():
    rng = random.Random(0)
    for _ in range(200):
        counts = [rng.randint(1, 5) for _ in range(rng.randint(1, 60))]
        budget, stride = rng.randint(5, 20), rng.randint(0, 4)
        windows = plan_windows(counts, budget, stride)
        assert windows[0][0] == 0 and windows[-1][1] == len(counts)
        for (s0, e0), (s1, e1) in zip(windows, windows[1:]):
            assert s0 < s1 <= e0 < e1 and sum(counts[s1:e0]) <= stride
        assert all(sum(counts[s:e]) <= budget or e - s == 1 for s, e in windows)
        owner = owners(counts, windows)
        assert all(windows[w][0] <= k < windows[w][1] for k, w in enumerate(owner))


def test_window_stitching_equals_unsplit_predictions(tmp_path):
    """With a context-free encoder (no layers, no position signal) each subword's output depends
    only on the subword itself, so a sentence split into windows must get exactly the tags of
    the same sentence encoded whole: any word lost, duplicated or misplaced in stitching shows."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from sft.models.module import SFTModule

    folder = tmp_path / "context_free"
    folder.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(CONTEXT) | set(TRIGGERS)) + list(LETTERS) + [f"##{c}" for c in LETTERS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab=str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=0, num_attention_heads=2,
                                 intermediate_size=16, max_position_embeddings=256))
    with torch.no_grad():
        model.embeddings.position_embeddings.weight.zero_()
        model.embeddings.token_type_embeddings.weight.zero_()
    model.save_pretrained(folder)

    rng = random.Random(3)
    sentences = [make_tagged_sentence(rng, entities_in_sentence=rng.choice([1, 8, 20])) for _ in range(12)]
    path = write_conll(tmp_path / "sentences.conll", sentences)
    module = SFTModule("token_classification", ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"],
                       str(folder), dropout=0.0).eval()

    def stitched(max_length: int, stride: int, batch_size: int):
        dm = SFTDataModule(task="token_classification", tokenizer=str(folder), train_file=str(path), val_file=str(path),
                           test_file=str(path), max_length=max_length, stride=stride, eval_batch_size=batch_size)
        with torch.no_grad():
            outputs = [module.predict_step(batch, 0) for batch in dm.test_dataloader()]
        return dm, dm.processor.sentence_predictions(outputs, len(sentences))

    whole_dm, whole = stitched(256, 0, 64)
    assert whole_dm.report["test"]["split_sentences"] == 0
    split_dm, split = stitched(16, 4, 5)
    assert split_dm.report["test"]["split_sentences"] >= 6  # the long sentences really were split
    for (words, _), a, b in zip(sentences, whole, split):
        assert sorted(b) == list(range(len(words)))  # a tag for every word, none dropped
        assert a == b


def test_jsonl_tokens_and_all_subword_labels(tiny_tagger_dir, tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"tokens": ["we", "met", "mr", "abc", "de"], "tags": ["O", "O", "O", "B-PER", "I-PER"]}) + "\n")
    kwargs = dict(task="token_classification", tokenizer=tiny_tagger_dir, train_file=str(path), val_file=str(path),
                  test_file=str(path), text_column="tokens", label_column="tags")
    dm = SFTDataModule(**kwargs)
    assert dm.label_names == ["O", "B-PER", "I-PER"]
    first_only = dm.encoded("train").examples[0]
    assert dm.tokenizer.convert_ids_to_tokens(first_only["input_ids"]) == \
        ["[CLS]", "we", "met", "mr", "a", "##b", "##c", "d", "##e", "[SEP]"]
    assert first_only["labels"] == [-100, 0, 0, 0, 1, -100, -100, 2, -100, -100]
    every = SFTDataModule(**kwargs, label_all_subwords=True).encoded("train").examples[0]
    assert every["labels"] == [-100, 0, 0, 0, 1, 2, 2, 2, 2, -100]
    assert every["word_index"] == [-1, 0, 1, 2, 3, -1, -1, 4, -1, -1]


def test_class_label_lists_read_as_names_for_ner_and_multilabel(tiny_tagger_dir, tiny_model_dir, tmp_path):
    """Hugging Face datasets keep NER tags (conll2003's ner_tags) and label sets (go_emotions) as lists
    of ClassLabel ids: they read as the tag and label names."""
    from datasets import ClassLabel, Dataset, List

    tags = ClassLabel(names=["O", "B-PER", "I-PER", "B-LOC", "I-LOC"])
    Dataset.from_dict({"tokens": [["we", "met", "mr", "abc", "de"], ["in", "xyz"]], "ner_tags": [[0, 0, 0, 1, 2], [0, 3]]}
                      ).cast_column("ner_tags", List(tags)).save_to_disk(str(tmp_path / "ner"))
    dm = SFTDataModule(task="token_classification", tokenizer=tiny_tagger_dir, train_file=str(tmp_path / "ner"),
                       val_file=str(tmp_path / "ner"), test_file=str(tmp_path / "ner"), text_column="tokens",
                       label_column="ner_tags")
    assert dm.label_names == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    first = dm.encoded("train").examples[0]
    assert [dm.label_names[k] for k in first["labels"] if k != -100] == ["O", "O", "O", "B-PER", "I-PER"]

    moods = ClassLabel(names=["joy", "anger", "calm"])  # not alphabetical
    Dataset.from_dict({"text": ["a great film", "a dull plot", "quite charming"], "labels": [[0, 2], [1], [0]]}
                      ).cast_column("labels", List(moods)).save_to_disk(str(tmp_path / "moods"))
    dm = SFTDataModule(task="multilabel_classification", tokenizer=tiny_model_dir, train_file=str(tmp_path / "moods"),
                       val_file=str(tmp_path / "moods"), test_file=str(tmp_path / "moods"), label_column="labels")
    assert dm.label_names == ["joy", "anger", "calm"]
    assert [e["labels"] for e in dm.encoded("train").examples] == [[1, 0, 1], [0, 1, 0], [1, 0, 0]]


@pytest.mark.parametrize("content, options, message", [
    ("we O\nmet O\nmr O B-PER\n", {}, r":3: 3 columns, expected 2 as on line 1"),
    ("we O\nmr O\nabc E-PER\n", {"tag_scheme": "BIO"}, r":3: tag 'E-PER' is not a BIO tag"),
    ("we O\nmr O\nabc PER\n", {}, r":3: tag 'PER' is neither O nor PREFIX-TYPE"),
    ("we O\n\nmr O\nabc B-PER\n\nin O\nxy I-LOC\n", {"tag_scheme": "BIOES"}, None),
])
def test_conll_bad_input(tiny_tagger_dir, tmp_path, content, options, message):
    path = tmp_path / "train.conll"
    path.write_text(content)
    dm = SFTDataModule(task="token_classification", tokenizer=tiny_tagger_dir, train_file=str(path), val_file=str(path),
                       test_file=str(path), **options)
    if message is None:  # a well-formed file: reads, with the scheme's full tag set
        assert dm.label_names == ["O", "B-LOC", "I-LOC", "E-LOC", "S-LOC", "B-PER", "I-PER", "E-PER", "S-PER"]
        assert len(dm.encoded("train")) == 3
        return
    with pytest.raises(DataError, match=str(path) + message):
        dm.encoded("train")


def test_unseen_entity_type_and_length_mismatch(tiny_tagger_dir, tmp_path):
    train = tmp_path / "train.conll"
    train.write_text("mr O\nabc B-PER\n")
    test = tmp_path / "test.conll"
    test.write_text("mr O\nabc B-PER\n\nin O\nxyz B-LOC\n")
    dm = SFTDataModule(task="token_classification", tokenizer=tiny_tagger_dir, train_file=str(train),
                       val_file=str(train), test_file=str(test))
    with pytest.raises(DataError, match=rf"{test}:5: tag 'B-LOC' has an entity type the training data never has"):
        dm.encoded("test")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"tokens": ["mr", "abc"], "tags": ["O"]}) + "\n")
    dm = SFTDataModule(task="token_classification", tokenizer=tiny_tagger_dir, train_file=str(bad), val_file=str(bad),
                       test_file=str(bad), text_column="tokens", label_column="tags")
    with pytest.raises(DataError, match=rf"{bad}:1: 2 words in 'tokens' but 1 tags in 'tags'"):
        dm.label_names


def test_entity_metric_rebuilds_sentences_from_words_in_any_order():
    from sft.models.token_head import EntityMetric

    names = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-LOC", "I-LOC"]]
    predicted = [["B-PER", "O", "O", "B-LOC"], ["O", "B-LOC", "I-LOC"]]
    entries = [(s, w, names.index(predicted[s][w]), names.index(gold[s][w])) for s in range(2) for w in range(len(gold[s]))]
    random.Random(0).shuffle(entries)
    entries += entries[:3]  # a repeated window (as a distributed sampler pads) must not count twice
    metric = EntityMetric(names)
    for chunk in (entries[:4], entries[4:]):
        metric.update(*(torch.tensor(column) for column in zip(*chunk)))
    computed = {k: float(v) for k, v in metric.compute().items()}
    assert computed == pytest.approx(entity_scores(gold, predicted, ["LOC", "PER"]))
    assert computed["entity_f1"] == pytest.approx(2 / 3)  # 2 of 3 predicted, 2 of 3 gold


def test_a_head_takes_only_its_own_options():
    from sft.tasks import ConfigError, get_task

    multilabel = get_task("multilabel_classification")
    assert multilabel.build_head(8, ["a", "b"], {"threshold": 0.3}).threshold == 0.3
    with pytest.raises(ConfigError, match=r"model\.treshold is not a setting of the multilabel_classification head.*threshold"):
        multilabel.build_head(8, ["a", "b"], {"treshold": 0.3})
    with pytest.raises(ConfigError, match=r"model\.threshold is not a setting of the text_classification head"):
        get_task("text_classification").build_head(8, ["a", "b"], {"threshold": 0.3})
    with pytest.raises(ConfigError, match=r"model\.threshold=1\.5 must be below 1"):
        multilabel.build_head(8, ["a", "b"], {"threshold": 1.5})
