"""Text in any language: non-ASCII overrides typed as they are, the tokenizer-coverage audit,
label names kept in metric keys, and Chinese text through every text task, on tiny local models
whose vocabulary covers CJK (plus Cyrillic and accented Latin)."""

from __future__ import annotations

import csv
import json
import logging
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sft.cli import train
from sft.data.coverage import count_unknown, verdict
from sft.data.datamodule import SFTDataModule
from sft.data.sources import DataError
from sft.errors import user_message
from sft.labels import key_map, metric_keys
from sft.overrides import quote_non_ascii
from sft.tasks import get_task
from tests.chat_fixtures import tiny_llama_dir  # noqa: F401 - fixture
from tests.conftest import compose_config

ROOT = Path(__file__).resolve().parents[1]

# A learnable two-class problem in three scripts: the label follows from the sentiment words.
ZH_POS, ZH_NEG = list("好棒赞爱美"), list("差烂坏丑慢")
ZH_FILLER = list("这个东西质量真的很我买了们商品用")
RU_POS, RU_NEG = ["хорошо", "отлично", "прекрасно"], ["плохо", "ужасно", "скучно"]
RU_FILLER = ["это", "был", "очень", "товар", "и", "мы"]


def zh_sentence(rng: random.Random, words: list[str]) -> str:
    body = rng.sample(ZH_FILLER, 5) + [rng.choice(words), rng.choice(words)]
    rng.shuffle(body)
    return "".join(body)


def ru_sentence(rng: random.Random, words: list[str]) -> str:
    body = rng.sample(RU_FILLER, 3) + [rng.choice(words)]
    rng.shuffle(body)
    return " ".join(body)


def write_reviews_csv(path: Path, rows: int, seed: int = 0) -> Path:
    """Columns named in three scripts: 评论 (Chinese text), отзыв (Russian text), 情感 (labels
    正面/负面) and étiquette (labels positif/négatif)."""
    rng = random.Random(seed)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["评论", "отзыв", "情感", "étiquette"])
        for i in range(rows):
            positive = i % 2 == 0
            writer.writerow([zh_sentence(rng, ZH_POS if positive else ZH_NEG),
                             ru_sentence(rng, RU_POS if positive else RU_NEG),
                             "正面" if positive else "负面", "positif" if positive else "négatif"])
    return path


@pytest.fixture(scope="module")
def tiny_cjk_dir(tmp_path_factory) -> str:
    """A 2-layer BERT with a WordPiece vocabulary of single CJK characters (BERT's tokenizer splits
    CJK text into characters, as bert-base-chinese does), Russian words and accent-stripped Latin."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny_cjk")
    chars = set(ZH_POS + ZH_NEG + ZH_FILLER) | set("张王李北京上海公司人名地名快在，。！？")
    words = set(RU_POS + RU_NEG + RU_FILLER) | {"positif", "negatif", "the", "a"}
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(chars) + sorted(words) + list("abcdefghijklmnopqrstuvwxyz")
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def reviews_csv(tmp_path_factory) -> Path:
    return write_reviews_csv(tmp_path_factory.mktemp("reviews") / "评论.csv", rows=160)


def quick(extra: list[str] = ()) -> list[str]:
    return ["data.batch_size=16", "data.eval_batch_size=32", "data.max_length=32", "trainer.accelerator=cpu",
            "trainer.max_steps=6", "trainer.val_check_interval=3", "trainer.log_every_n_steps=1",
            "trainer.num_sanity_val_steps=0", "optimizer.lr=3e-3", "extras.print_config=false",
            "callbacks.progress_bar.refresh_rate=0", *extra]


def run_train(args: list[str], cwd: Path, expect: int = 0) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, capture_output=True, text=True,
                            encoding="utf-8", timeout=600)
    assert result.returncode == expect, result.stdout[-3000:] + result.stderr[-3000:]
    return result


# -- 1. overrides typed as they are ----------------------------------------------------------------
@pytest.mark.parametrize("typed, quoted", [
    ("data.text_column=评论", "data.text_column='评论'"),
    ("data.text_column=评论,标题", "data.text_column='评论','标题'"),
    ("data.label_names=[正面, 负面]", "data.label_names=['正面', '负面']"),
    ("data.label_column=étiquette", "data.label_column='étiquette'"),
    ("data.text_column=отзыв", "data.text_column='отзыв'"),
    ("data.x=choice(评论,标题)", "data.x=choice('评论','标题')"),
    ("data.x={a:正面,b:x:y}", "data.x={a:'正面',b:x:y}"),
    ("data.train_file=${paths.data_dir}/评论 1.csv", "data.train_file='${paths.data_dir}/评论 1.csv'"),
    ("data.x=it's 好", "data.x=\"it's 好\""),
    ("data.x=评\\,论", "data.x='评,论'"),
    ("data.x='评论'", "data.x='评论'"),  # already quoted: unchanged
    ("optimizer.lr=1e-3,2e-3", "optimizer.lr=1e-3,2e-3"),  # ASCII: unchanged
])
def test_non_ascii_values_are_quoted_for_hydra(typed, quoted):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    assert quote_non_ascii(["train.py", typed]) == ["train.py", quoted]
    OverridesParser.create().parse_override(quoted)  # Hydra reads the rewritten form


def test_options_and_their_values_are_left_alone():
    argv = ["train.py", "-m", "--config-name", "名=1", "--cfg", "job", "data.text_column=评论"]
    assert quote_non_ascii(argv) == argv[:-1] + ["data.text_column='评论'"]


@pytest.mark.slow
def test_command_line_and_sweep_with_non_ascii_columns_and_labels(tiny_cjk_dir, reviews_csv, tmp_path):
    base = ["data=text_classification", f"data.train_file={reviews_csv}", f"model.pretrained={tiny_cjk_dir}",
            f"paths.log_dir={tmp_path}", *quick()]
    # A single run: Chinese column names and labels, typed without quotes.
    result = run_train([*base, "data.text_column=评论", "data.label_column=情感"], cwd=tmp_path)
    run_dir = next((tmp_path / "train" / "runs").iterdir())
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    assert {"test/f1_正面", "test/f1_负面"} <= set(metrics), metrics
    report = json.loads((run_dir / "data_report.json").read_text(encoding="utf-8"))
    assert report["metric_keys"] == {"正面": "正面", "负面": "负面"}
    assert report["train"]["unknown_tokens"]["unknown_share"] == 0.0
    assert "test/f1_正面" in result.stdout  # the final metrics table
    config = (run_dir / "config.yaml").read_text(encoding="utf-8")
    assert "text_column: 评论" in config

    # A sweep over a Chinese and a Cyrillic column, with accented labels fixed as a list.
    run_train(["-m", *base, "data.text_column=评论,отзыв", "data.label_column=étiquette",
               "data.label_names=[négatif,positif]"], cwd=tmp_path)
    sweep = next((tmp_path / "train" / "multiruns").iterdir())
    columns = []
    for job in ("0", "1"):
        metrics = json.loads((sweep / job / "metrics.json").read_text(encoding="utf-8"))
        assert {"test/f1_négatif", "test/f1_positif"} <= set(metrics), metrics
        config = (sweep / job / "config.yaml").read_text(encoding="utf-8")
        columns.append(next(line.split(":", 1)[1].strip() for line in config.splitlines()
                            if line.strip().startswith("text_column:")))
    assert columns == ["评论", "отзыв"]
    assert "test/f1_négatif" in (sweep / "summary.csv").read_text(encoding="utf-8")


@pytest.mark.slow
def test_an_uncovering_tokenizer_ends_the_command_with_one_line(tiny_model_dir, reviews_csv, tmp_path):
    result = run_train(["data=text_classification", f"data.train_file={reviews_csv}", f"model.pretrained={tiny_model_dir}",
                        f"paths.log_dir={tmp_path}", "data.text_column=评论", "data.label_column=情感", *quick()],
                       cwd=tmp_path, expect=2)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "does not cover the data's script" in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


# -- 2. tokenizer coverage ---------------------------------------------------------------------------
def reviews_module(tokenizer: str, train_file: Path, **settings) -> SFTDataModule:
    return SFTDataModule(task="text_classification", tokenizer=tokenizer, train_file=str(train_file), text_column="评论",
                         label_column="情感", cache_encoded=False, **settings)


def test_a_tokenizer_that_does_not_cover_the_script_stops_the_run(tiny_model_dir, reviews_csv):
    with pytest.raises(DataError) as caught:
        reviews_module(tiny_model_dir, reviews_csv).setup("fit")
    message = user_message(caught.value)
    assert "\n" not in message
    assert "of the train split's tokens are the unknown token of tokenizer" in message and tiny_model_dir in message
    assert "does not cover the data's script" in message and "data.allow_unknown_tokens=true" in message


def test_allow_unknown_tokens_goes_on_with_a_warning(tiny_model_dir, reviews_csv, caplog):
    dm = reviews_module(tiny_model_dir, reviews_csv, allow_unknown_tokens=True)
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    unknown = dm.report["train"]["unknown_tokens"]
    assert unknown["unknown_share"] == 1.0 and unknown["mostly_unknown_share"] == 1.0
    assert unknown["tokenizer"] == tiny_model_dir and not unknown["byte_level"]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("100.0% of the train split's tokens" in m and tiny_model_dir in m for m in warned), warned


def test_a_few_unknown_tokens_warn_without_stopping(tiny_cjk_dir, tmp_path, caplog):
    path = tmp_path / "mixed.csv"
    rng = random.Random(0)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["评论", "情感"])
        for i in range(100):  # one record in ten has one character outside the vocabulary
            writer.writerow([zh_sentence(rng, ZH_POS if i % 2 else ZH_NEG) + ("龘" if i % 10 == 0 else ""),
                             "正面" if i % 2 else "负面"])
    dm = reviews_module(tiny_cjk_dir, path)
    with caplog.at_level(logging.INFO):
        dm.setup("fit")
    share = dm.report["train"]["unknown_tokens"]["unknown_share"]
    assert 0.01 < share < 0.2 and dm.report["train"]["unknown_tokens"]["mostly_unknown_inputs"] == 0
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("[data] train:") and "unknown tokens" in m for m in messages), messages
    assert any(r.levelno == logging.WARNING and "unknown token of tokenizer" in r.getMessage() for r in caplog.records)


def test_byte_level_tokenizers_report_zero(tiny_llama_dir):  # noqa: F811 - fixture
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    counts = count_unknown(tokenizer, [tokenizer("这个商品很好")["input_ids"]])
    assert counts.byte_level and counts.unknown == 0 and counts.tokens > 0
    assert verdict("train", counts.as_dict(), allow=False) == (None, None)


def test_the_test_split_warns_but_does_not_stop():
    report = {"tokenizer": "t", "byte_level": False, "unknown_share": 0.5, "mostly_unknown_share": 0.4}
    warning, error = verdict("test", report, allow=False, stops=False)
    assert error is None and "50.0%" in warning


# -- 3. label names in metric keys -------------------------------------------------------------------
def test_metric_keys_keep_names_and_never_collide():
    assert metric_keys(["正面", "负面", "négatif", "отлично"]) == ["正面", "负面", "négatif", "отлично"]
    keys = metric_keys(["a b", "a/b", "a_b", "a\tb", "a_b_2"])
    assert keys == ["a_b", "a_b_2", "a_b_3", "a_b_4", "a_b_2_2"] and len(set(keys)) == 5
    assert key_map(["x y", "x_y"]) == {"x y": "x_y", "x_y": "x_y_2"}


@pytest.mark.parametrize("task, labels", [
    ("text_classification", ["a b", "a_b", "正面", "负面"]),
    ("multilabel_classification", ["物流", "质量", "a/b", "a b"]),
    ("text_regression", ["评分", "价格", "a b", "a_b"]),
    ("token_classification", ["O", "B-人名", "I-人名", "B-a b", "B-a_b"]),
])
def test_heads_declare_the_keys_they_log(task, labels):
    plugin = get_task(task)
    options = plugin.check_head_options({})
    head = plugin.make_head(8, labels, options, {})
    declared = head.metric_names("test/", final=True)
    keys = head.label_keys()
    assert len(set(keys.values())) == len(keys)
    metrics = head.make_metrics("test/", final=True)
    if task == "token_classification":
        values = {f"test/{name}": torch.tensor(0.5) for name in ("entity_precision", "entity_recall", "entity_f1", "token_acc")}
        values.update({f"test/entity_f1_{kind}": torch.tensor(0.5) for kind in keys})
    else:
        n = len(labels)
        values = {name: torch.rand(n) if (name.endswith("per_class") or name.endswith("per_label") or task == "text_regression")
                  else torch.tensor(0.5) for name in metrics.keys()}
    assert set(head.flatten_metrics(values)) == declared
    assert all(f"_{key}" in " ".join(declared) for key in keys.values())


# -- 5. Chinese text through the other tasks -------------------------------------------------------
def task_cfg(data: str, model_dir: str, train_file: Path, run_dir: Path, extra: list[str] = ()):
    overrides = [f"data={data}", f"data.train_file={train_file}", f"model.pretrained={model_dir}", "logger=none", *quick(extra)]
    return compose_config("train", quote_non_ascii(["", *overrides])[1:], run_dir)  # hydra.compose needs them quoted too


def test_chinese_multilabel(tiny_cjk_dir, tmp_path):
    rng = random.Random(0)
    topics = {"物流": list("慢快"), "质量": list("好坏"), "价格": list("美丑")}
    with open(tmp_path / "train.jsonl", "w", encoding="utf-8") as f:
        for _ in range(120):
            labels = rng.sample(sorted(topics), rng.randint(1, 2))
            text = "".join(rng.sample(ZH_FILLER, 4) + [rng.choice(topics[t]) for t in labels])
            f.write(json.dumps({"评论": text, "标签": labels}, ensure_ascii=False) + "\n")
    cfg = task_cfg("multilabel_classification", tiny_cjk_dir, tmp_path / "train.jsonl", tmp_path / "run",
                   ["data.text_column=评论", "data.label_column=标签"])
    metrics = train(cfg)
    assert {"test/f1_物流", "test/f1_质量", "test/f1_价格"} <= set(metrics), metrics
    report = json.loads((tmp_path / "run" / "data_report.json").read_text(encoding="utf-8"))
    assert report["metric_keys"] == {"价格": "价格", "物流": "物流", "质量": "质量"}
    assert report["train"]["unknown_tokens"]["unknown_share"] == 0.0


def test_chinese_regression_targets(tiny_cjk_dir, tmp_path):
    rng = random.Random(0)
    with open(tmp_path / "train.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["评论", "评分", "价格 分"])
        for _ in range(120):
            good = rng.randint(0, 3)
            writer.writerow(["".join(rng.sample(ZH_FILLER, 4)) + "好" * good, good, 3 - good])
    cfg = task_cfg("text_regression", tiny_cjk_dir, tmp_path / "train.csv", tmp_path / "run",
                   ["data.text_column=评论", "data.label_column=[评分,价格 分]"])
    metrics = train(cfg)
    assert {"test/mse_评分", "test/mse_价格_分", "test/pearson_评分"} <= set(metrics), metrics
    report = json.loads((tmp_path / "run" / "data_report.json").read_text(encoding="utf-8"))
    assert report["metric_keys"] == {"评分": "评分", "价格 分": "价格_分"}


def test_chinese_ner_on_character_level_conll(tiny_cjk_dir, tmp_path):
    """Chinese NER corpora put one character per line: each character is a token."""
    rng = random.Random(0)
    with open(tmp_path / "train.conll", "w", encoding="utf-8") as f:
        for _ in range(80):
            person = rng.choice("张王李") + rng.choice("美好")
            place = rng.choice(["北京", "上海"])
            chars = list(person) + list("在") + list(place) + list("买了东西。")
            tags = ["B-人名", "I-人名", "O", "B-地名", "I-地名"] + ["O"] * 5
            assert len(chars) == len(tags)
            f.writelines(f"{c} {t}\n" for c, t in zip(chars, tags))
            f.write("\n")
    cfg = task_cfg("token_classification", tiny_cjk_dir, tmp_path / "train.conll", tmp_path / "run", ["data.max_length=64"])
    metrics = train(cfg)
    assert {"test/entity_f1_人名", "test/entity_f1_地名"} <= set(metrics), metrics
    report = json.loads((tmp_path / "run" / "data_report.json").read_text(encoding="utf-8"))
    assert report["metric_keys"] == {"人名": "人名", "地名": "地名"}
    assert report["train"]["unknown_words"] == 0 and report["train"]["unknown_tokens"]["unknown_share"] == 0.0


def test_chinese_chat_records_render_in_the_audit(tiny_llama_dir, tmp_path, caplog):  # noqa: F811 - fixture
    from tests.chat_fixtures import chat_overrides

    rng = random.Random(0)
    with open(tmp_path / "chat.jsonl", "w", encoding="utf-8") as f:
        for _ in range(60):
            colour = rng.choice(["红色", "蓝色", "绿色"])
            record = {"messages": [{"role": "user", "content": f"这个东西是{colour}的。它是什么颜色？"},
                                   {"role": "assistant", "content": colour}]}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    cfg = compose_config("train", chat_overrides(tiny_llama_dir, tmp_path / "chat.jsonl",
                                                 ["trainer.max_steps=2", "logger=none", "data.cache_encoded=false"]),
                         tmp_path / "run")
    with caplog.at_level(logging.INFO):
        train(cfg)
    audits = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[audit]")]
    assert audits and all("\ufffd" not in a for a in audits), audits
    assert any("这个东西是" in a and "它是什么颜色？" in a and "[[" in a for a in audits), audits
    report = json.loads((tmp_path / "run" / "data_report.json").read_text(encoding="utf-8"))
    assert report["train"]["unknown_tokens"]["byte_level"] and report["train"]["unknown_tokens"]["unknown_tokens"] == 0


def test_chinese_labels_in_tensorboard_predictions_and_export(tiny_cjk_dir, reviews_csv, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from sft.cli import evaluate
    from sft.export import Predictor

    cfg = task_cfg("text_classification", tiny_cjk_dir, reviews_csv, tmp_path / "run",
                   ["data.text_column=评论", "data.label_column=情感", "logger=tensorboard"])
    metrics = train(cfg)
    assert {"test/f1_正面", "test/f1_负面"} <= set(metrics)
    events = sorted((tmp_path / "run").rglob("events.out.tfevents.*"))
    tags = set()
    for path in events:
        accumulator = EventAccumulator(str(path))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    assert {"test/f1_正面", "test/f1_负面"} <= tags, tags

    predictions = tmp_path / "predictions.jsonl"
    evaluate(compose_config("eval", [f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'best.ckpt'}", "trainer.accelerator=cpu",
                                     f"predictions_file={predictions}", f"export_dir={tmp_path / 'export'}",
                                     "extras.print_config=false", "logger=none"], tmp_path / "eval"))
    text = predictions.read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines()]
    assert "正面" in text and set(rows[0]["probabilities"]) == {"正面", "负面"} and rows[0]["label"] in {"正面", "负面"}
    answers = Predictor.load(tmp_path / "export").predict([r["text"] for r in rows])
    assert [a["label"] for a in answers] == [r["prediction"] for r in rows]
    assert set(answers[0]["probabilities"]) == {"正面", "负面"}
