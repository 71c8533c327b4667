"""Stock exports (issue 14): each task trains a tiny model, eval.py writes predictions and an export,
and the export is loaded by the ecosystem's own loader (transformers pipelines, timm, peft,
onnxruntime) in a fresh Python process where sft cannot be imported; its predictions must equal
eval.py's (same labels, probabilities within 1e-4)."""

from __future__ import annotations

import json
import logging
import random
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from sft.cli import evaluate, train
from tests.conftest import compose_config, tiny_overrides
from tests.chat_fixtures import chat_jsonl, tiny_llama_dir  # noqa: F401
from tests.test_images import timm_weights_file  # noqa: F401
from tests.test_text_tasks import (make_tagged_sentence, task_overrides, tiny_tagger_dir,  # noqa: F401
                                   write_conll, write_multilabel_jsonl, write_regression_csv)

pytestmark = pytest.mark.slow

PRELUDE = """
import json, sys
try:
    import sft
except ImportError:
    pass
else:
    raise SystemExit(f"sft is importable here: {sft.__file__}")
import torch
torch.manual_seed(0)
def emit(value):
    print("RESULT " + json.dumps(value))
"""


def run_without_sft(script: str, cwd: Path) -> Any:
    """Run `script` in a fresh interpreter that sees the installed packages but not sft: -I ignores
    PYTHONPATH and the working directory, -S skips site's .pth files (sft's editable install is one),
    and only the site-packages folder itself goes on sys.path."""
    site = sysconfig.get_paths()["purelib"]
    code = f"import sys\nsys.path.append({site!r})\n" + PRELUDE + textwrap.dedent(script)
    done = subprocess.run([sys.executable, "-I", "-S", "-c", code], cwd=cwd, capture_output=True, text=True,
                          timeout=900, env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                                            "HOME": str(cwd)})
    assert done.returncode == 0, done.stderr[-4000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads(lines[-1][len("RESULT "):])


def eval_export(run_dir: Path, tmp_path: Path, extra: tuple[str, ...] = ()) -> tuple[list[dict], Path, dict]:
    predictions, export = tmp_path / "predictions.jsonl", tmp_path / "export"
    metrics = evaluate(compose_config("eval", [f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}",
                                               "trainer.accelerator=cpu", f"predictions_file={predictions}",
                                               f"export_dir={export}", "extras.print_config=false", *extra],
                                      tmp_path / "eval"))
    return [json.loads(line) for line in predictions.read_text().splitlines()], export, metrics


def card(export: Path) -> tuple[dict, str]:
    text = (export / "README.md").read_text()
    _, meta, body = text.split("---\n", 2)
    return yaml.safe_load(meta), body


def assert_card(export: Path, library: str, pipeline_tag: str, labels: list[str]) -> str:
    meta, body = card(export)
    assert meta["library_name"] == library and meta["pipeline_tag"] == pipeline_tag
    assert meta["metrics"] and meta["model-index"][0]["results"][0]["metrics"]
    for section in ("## Data", "## Training settings", "## Test metrics", "## How to load", "records: "):
        assert section in body, section
    assert all(json.dumps(label) in body for label in labels)  # the label map
    return body


def assert_close_rows(theirs: list[dict[str, float]], ours: list[dict[str, float]], tol: float = 1e-4) -> None:
    assert len(theirs) == len(ours)
    for a, b in zip(theirs, ours):
        assert a.keys() == b.keys()
        assert all(abs(a[k] - b[k]) <= tol for k in a), (a, b)


# -- text classification (and ONNX) ------------------------------------------------------------------
@pytest.fixture(scope="module")
def text_run(tiny_model_dir, sentiment_csv, tmp_path_factory):
    root = tmp_path_factory.mktemp("text_run")
    train(compose_config("train", tiny_overrides(tiny_model_dir, sentiment_csv, [
        "trainer.max_epochs=2", "logger=none", "model.pooling=cls"]),
                         root / "run"))
    rows, export, metrics = eval_export(root / "run", root, ("export_onnx=true",))
    return rows, export, metrics


def test_text_classification_loads_in_a_stock_pipeline(text_run, tmp_path):
    rows, export, metrics = text_run
    info = json.loads((export / "sft_model.json").read_text())
    assert info["layout"] == "stock" and info["stock_class"] == "BertForSequenceClassification"
    assert not (export / "head.safetensors").exists()
    texts = [r["text"] for r in rows]
    got = run_without_sft(f"""
        from transformers import AutoModelForSequenceClassification, pipeline
        model = AutoModelForSequenceClassification.from_pretrained({str(export)!r})
        classify = pipeline("text-classification", model={str(export)!r})
        out = classify({texts!r}, top_k=None)
        emit({{"id2label": model.config.id2label, "rows": [{{s["label"]: s["score"] for s in row}} for row in out]}})
    """, tmp_path)
    assert got["id2label"] == {"0": "neg", "1": "pos"}
    assert_close_rows(got["rows"], [r["probabilities"] for r in rows])
    assert [max(p, key=p.get) for p in got["rows"]] == [r["prediction"] for r in rows]
    body = assert_card(export, "transformers", "text-classification", ["neg", "pos"])
    assert f"{metrics['test/acc']:.4f}" in body and 'pipeline("text-classification"' in body

    # sft's own Predictor reads the new folder too.
    from sft.export import Predictor

    answers = Predictor.load(export).predict(texts)
    assert [a["label"] for a in answers] == [r["prediction"] for r in rows]
    assert_close_rows([a["probabilities"] for a in answers], [r["probabilities"] for r in rows])


def test_onnx_matches_pytorch(text_run, tmp_path):
    rows, export, _ = text_run
    assert (export / "model.onnx").is_file()
    texts = [r["text"] for r in rows] + ["a much longer text than any seen in training " * 2]
    got = run_without_sft(f"""
        import numpy as np, onnxruntime
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained({str(export)!r})
        model = AutoModelForSequenceClassification.from_pretrained({str(export)!r}).eval()
        session = onnxruntime.InferenceSession({str(export / 'model.onnx')!r}, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        worst = 0.0
        for batch in ({texts[:3]!r}, {texts!r}, {texts[-1:]!r}):  # dynamic batch and sequence lengths
            enc = tokenizer(batch, padding=True, truncation=True, return_tensors="pt")
            with torch.no_grad():
                ref = model(**enc).logits.numpy()
            out = session.run(["logits"], {{n: enc[n].numpy() for n in names}})[0]
            worst = max(worst, float(np.abs(out - ref).max()))
        emit({{"worst": worst, "names": names}})
    """, tmp_path)
    assert got["worst"] < 1e-4, got
    assert got["names"][:2] == ["input_ids", "attention_mask"]


def test_mean_pooling_falls_back_to_the_sft_layout_with_a_warning(tiny_model_dir, sentiment_csv, tmp_path, caplog):
    train(compose_config("train", tiny_overrides(tiny_model_dir, sentiment_csv, [
        "trainer.max_epochs=1", "logger=none", "model.pooling=mean"]), tmp_path / "run"))
    with caplog.at_level(logging.WARNING):
        rows, export, _ = eval_export(tmp_path / "run", tmp_path, ("export_onnx=true",))
    assert any("model.pooling='mean'" in r.getMessage() and "sft's own layout" in r.getMessage() for r in caplog.records)
    info = json.loads((export / "sft_model.json").read_text())
    assert "layout" not in info and (export / "head.safetensors").is_file()
    meta, body = card(export)
    assert meta["library_name"] == "sft" and "sft layout" in body

    from sft.export import Predictor

    answers = Predictor.load(export).predict([r["text"] for r in rows])
    assert_close_rows([a["probabilities"] for a in answers], [r["probabilities"] for r in rows])
    # model.onnx is written from the sft module, so the sft layout has one too.
    import onnxruntime

    session = onnxruntime.InferenceSession(str(export / "model.onnx"), providers=["CPUExecutionProvider"])
    predictor = Predictor.load(export)
    enc = predictor.tokenizer([r["text"] for r in rows], padding=True, return_tensors="np")
    logits = session.run(["logits"], {i.name: enc[i.name] for i in session.get_inputs()})[0]
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    assert np.abs(probabilities - predictor.predict_proba([r["text"] for r in rows]).numpy()).max() < 1e-4


def test_sentence_pairs(tiny_model_dir, tmp_path):
    rng = random.Random(0)
    from tests.conftest import NEGATIVE, POSITIVE, make_sentence

    path = tmp_path / "pairs.jsonl"
    with open(path, "w") as f:
        for i in range(160):
            same = i % 2 == 0
            a = make_sentence(rng, POSITIVE)
            b = make_sentence(rng, POSITIVE if same else NEGATIVE)
            f.write(json.dumps({"premise": a, "hypothesis": b, "label": "same" if same else "other"}) + "\n")
    train(compose_config("train", tiny_overrides(tiny_model_dir, path, [
        "data.text_column=premise", "data.text_pair_column=hypothesis", "trainer.max_epochs=1", "logger=none",
        "model.pooling=cls"]),
        tmp_path / "run"))
    rows, export, _ = eval_export(tmp_path / "run", tmp_path)
    pairs = [{"text": r["text"], "text_pair": r["text_pair"]} for r in rows]
    got = run_without_sft(f"""
        from transformers import pipeline
        classify = pipeline("text-classification", model={str(export)!r})
        emit([{{s["label"]: s["score"] for s in classify(p, top_k=None)}} for p in {pairs!r}])
    """, tmp_path)
    assert_close_rows(got, [r["probabilities"] for r in rows])
    assert [max(p, key=p.get) for p in got] == [r["prediction"] for r in rows]


# -- multi-label, regression --------------------------------------------------------------------------
def test_multilabel(tiny_model_dir, tmp_path):
    train_file = write_multilabel_jsonl(tmp_path / "train.jsonl", 200, seed=0)
    test_file = write_multilabel_jsonl(tmp_path / "test.jsonl", 40, seed=1)
    train(compose_config("train", task_overrides("multilabel", tiny_model_dir, train_file,
                                                 [f"data.test_file={test_file}", "trainer.max_epochs=2",
                                                  "model.pooling=cls"]), tmp_path / "run"))
    rows, export, _ = eval_export(tmp_path / "run", tmp_path)
    got = run_without_sft(f"""
        from transformers import AutoConfig, pipeline
        classify = pipeline("text-classification", model={str(export)!r}, top_k=None)
        out = classify({[r["text"] for r in rows]!r})
        emit({{"problem_type": AutoConfig.from_pretrained({str(export)!r}).problem_type,
              "rows": [{{s["label"]: s["score"] for s in row}} for row in out]}})
    """, tmp_path)
    assert got["problem_type"] == "multi_label_classification"
    assert_close_rows(got["rows"], [r["probabilities"] for r in rows])
    assert [sorted(k for k, p in row.items() if p > 0.5) for row in got["rows"]] == [sorted(r["prediction"]) for r in rows]
    assert_card(export, "transformers", "text-classification", ["bright", "grim", "warm"])


def test_regression_in_target_units(tiny_model_dir, tmp_path):
    train_file = write_regression_csv(tmp_path / "train.csv", 200, seed=0)
    train(compose_config("train", task_overrides("text_regression", tiny_model_dir, train_file,
                                                 ["data.label_column=[score,negatives]", "trainer.max_epochs=2",
                                                  "model.pooling=cls"]),
                         tmp_path / "run"))
    rows, export, _ = eval_export(tmp_path / "run", tmp_path)
    got = run_without_sft(f"""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        model = AutoModelForSequenceClassification.from_pretrained({str(export)!r}).eval()
        tokenizer = AutoTokenizer.from_pretrained({str(export)!r})
        with torch.no_grad():
            values = model(**tokenizer({[r["text"] for r in rows]!r}, padding=True, return_tensors="pt")).logits
        emit({{"problem_type": model.config.problem_type, "labels": model.config.id2label,
              "values": values.tolist()}})
    """, tmp_path)
    assert got["problem_type"] == "regression" and got["labels"] == {"0": "score", "1": "negatives"}
    ours = [[r["prediction"]["score"], r["prediction"]["negatives"]] for r in rows]
    assert max(abs(row[0]) for row in ours) > 500  # in the targets' units (about 1000), not standardised ones
    # float32 values of about 1000: 1e-4 relative
    assert np.allclose(np.array(got["values"]), np.array(ours), rtol=1e-4, atol=1e-4)


# -- NER ------------------------------------------------------------------------------------------------
def test_token_classification_pipeline(tiny_tagger_dir, tmp_path):  # noqa: F811
    rng = random.Random(0)
    train_file = write_conll(tmp_path / "train.conll", [make_tagged_sentence(rng) for _ in range(200)])
    test_file = write_conll(tmp_path / "test.conll", [make_tagged_sentence(rng) for _ in range(30)])
    train(compose_config("train", task_overrides("token_classification", tiny_tagger_dir, train_file, [
        f"data.test_file={test_file}", "trainer.max_epochs=4", "optimizer.lr=5e-3", "callbacks.early_stopping=null"]),
        tmp_path / "run"))
    rows, export, _ = eval_export(tmp_path / "run", tmp_path)
    sentences = [" ".join(r["words"]) for r in rows]
    got = run_without_sft(f"""
        from transformers import pipeline
        first = pipeline("token-classification", model={str(export)!r}, aggregation_strategy="first")
        simple = pipeline("token-classification", model={str(export)!r}, aggregation_strategy="simple")
        emit({{"first": [[(e["entity_group"], e["word"]) for e in first(s)] for s in {sentences!r}],
              "simple": [[(e["entity_group"], e["word"]) for e in simple(s)] for s in {sentences!r}]}})
    """, tmp_path)
    ours = [[[e["type"], e["text"]] for e in r["entities"]] for r in rows]
    assert got["first"] == ours  # word-level: each word's first subword, as sft tags it
    agree = sum(a == b for a, b in zip(got["simple"], ours)) / len(ours)
    print(f"aggregation_strategy=simple agrees with eval.py on {agree:.0%} of sentences")
    assert_card(export, "transformers", "token-classification", ["O"])

    from sft.export import Predictor

    answers = Predictor.load(export).predict([r["words"] for r in rows])
    assert [a["entities"] for a in answers] == [r["entities"] for r in rows]


# -- images -----------------------------------------------------------------------------------------------
def write_colour_folder(root: Path, size: int, per_class: int = 16) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for label, name in enumerate(["red", "green", "blue"]):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
            pixels[:, :, label] += 140
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def image_run(tmp_path: Path, size: int, pretrained: str, extra: list[str]) -> tuple[list[dict], Path]:
    from tests.test_images import image_overrides

    data = write_colour_folder(tmp_path / "data", size)
    overrides = image_overrides(data, pretrained, [f"data.image_size={size}", "data.crop_pct=1.0",
                                                   "trainer.max_epochs=2", "logger=none", *extra])
    train(compose_config("train", overrides, tmp_path / "run"))
    rows, export, _ = eval_export(tmp_path / "run", tmp_path, ("export_onnx=true",))
    return rows, export


def assert_onnx_image(export: Path, rows: list[dict]) -> None:
    """onnxruntime on the exported graph gives eval.py's probabilities (the same eval transform, by sft)."""
    import onnxruntime

    from sft.export import Predictor

    predictor = Predictor.load(export)
    pixels = torch_stack([predictor.pixels(r["image"]) for r in rows])
    session = onnxruntime.InferenceSession(str(export / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"pixel_values": pixels})[0]
    probabilities = np.exp(logits - logits.max(-1, keepdims=True))
    probabilities /= probabilities.sum(-1, keepdims=True)
    ours = np.array([[r["probabilities"][name] for name in predictor.label_names] for r in rows])
    assert np.abs(probabilities - ours).max() < 1e-4


def torch_stack(tensors: list) -> np.ndarray:
    import torch

    return torch.stack(tensors).numpy()


def test_timm_image_classifier(tmp_path, timm_weights_file):
    rows, export = image_run(tmp_path, 24, timm_weights_file, ["model.architecture=test_efficientnet"])
    config = json.loads((export / "config.json").read_text())
    assert config["architecture"] == "test_efficientnet" and config["num_classes"] == 3
    assert config["pretrained_cfg"]["input_size"] == [3, 24, 24] and config["label_names"] == ["blue", "green", "red"]
    paths = [r["image"] for r in rows]
    got = run_without_sft(f"""
        import json, timm
        from PIL import Image
        folder = {str(export)!r}
        config = json.load(open(folder + "/config.json"))
        n = config["num_classes"]
        model = timm.create_model(config["architecture"], pretrained=True, num_classes=n,
                                  pretrained_cfg_overlay=dict(file=folder + "/model.safetensors", num_classes=n)).eval()
        transform = timm.data.create_transform(**timm.data.resolve_data_config(pretrained_cfg=config["pretrained_cfg"]))
        local = timm.create_model("local-dir:" + folder, pretrained=True).eval()
        with torch.no_grad():
            pixels = torch.stack([transform(Image.open(p).convert("RGB")) for p in {paths!r}])
            probabilities = model(pixels).softmax(-1)
            same = float((local(pixels).softmax(-1) - probabilities).abs().max())
        emit({{"rows": [dict(zip(config["label_names"], p)) for p in probabilities.tolist()], "local_dir": same}})
    """, tmp_path)
    assert got["local_dir"] < 1e-6  # timm.create_model("local-dir:OUT") reads the same folder
    assert_close_rows(got["rows"], [r["probabilities"] for r in rows])
    assert [max(p, key=p.get) for p in got["rows"]] == [r["prediction"] for r in rows]
    assert_card(export, "timm", "image-classification", ["blue", "green", "red"])
    assert_onnx_image(export, rows)


def test_hf_image_classifier(tmp_path):
    import torch
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    vit = tmp_path / "tiny_vit"
    torch.manual_seed(0)
    ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64)).save_pretrained(vit)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(vit)
    rows, export = image_run(tmp_path, 32, str(vit), [])
    paths = [r["image"] for r in rows]
    got = run_without_sft(f"""
        from transformers import AutoModelForImageClassification, pipeline
        classify = pipeline("image-classification", model={str(export)!r})
        out = classify({paths!r}, top_k=3)
        emit({{"class": type(classify.model).__name__, "rows": [{{s["label"]: s["score"] for s in row}} for row in out]}})
    """, tmp_path)
    assert got["class"] == "ViTForImageClassification"
    assert_close_rows(got["rows"], [r["probabilities"] for r in rows])
    assert_card(export, "transformers", "image-classification", ["blue", "green", "red"])
    assert_onnx_image(export, rows)


# -- causal LM: merged LoRA and the adapter ----------------------------------------------------------------
def test_causal_lm_pipeline_and_peft_adapter(tiny_llama_dir, chat_jsonl, tmp_path):  # noqa: F811
    from tests.chat_fixtures import chat_overrides

    train(compose_config("train", chat_overrides(tiny_llama_dir, chat_jsonl, [
        "model/peft=lora", "model.lora.r=8", "model.lora.dropout=0.0", "trainer.max_epochs=3", "optimizer.lr=2e-2",
        "logger=none"]), tmp_path / "run"))
    rows, export, _ = eval_export(tmp_path / "run", tmp_path, ("max_new_tokens=8",))
    records = chat_jsonl.read_text().splitlines()
    conversations = [json.loads(records[int(r["source"].rsplit(":", 1)[1]) - 1])["messages"][:-1] for r in rows]
    got = run_without_sft(f"""
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
        chat = pipeline("text-generation", model={str(export)!r})
        answers = [chat(m, max_new_tokens=8, do_sample=False)[0]["generated_text"][-1]["content"]
                   for m in {conversations!r}]
        tokenizer = AutoTokenizer.from_pretrained({str(export / 'adapter')!r})
        base = AutoModelForCausalLM.from_pretrained({tiny_llama_dir!r})
        adapted = PeftModel.from_pretrained(base, {str(export / 'adapter')!r}).eval()
        merged = AutoModelForCausalLM.from_pretrained({str(export)!r}).eval()
        same = True
        for m in {conversations[:5]!r}:
            ids = tokenizer.apply_chat_template(m, add_generation_prompt=True, return_tensors="pt", return_dict=True)
            with torch.no_grad():
                a = adapted.generate(**ids, max_new_tokens=8, do_sample=False, eos_token_id=merged.generation_config.eos_token_id)
                b = merged.generate(**ids, max_new_tokens=8, do_sample=False)
            same = same and a.tolist() == b.tolist()
        emit({{"answers": answers, "adapter_equals_merged": same, "eos": merged.generation_config.eos_token_id,
              "im_end": tokenizer.convert_tokens_to_ids("<|im_end|>")}})
    """, tmp_path)
    assert got["eos"] == got["im_end"]  # generation stops at the end-of-turn token
    assert got["adapter_equals_merged"]
    assert [a.strip() for a in got["answers"]] == [r["prediction"].strip() for r in rows]
    meta, body = card(export)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    meta, body = card(export / "adapter")
    assert meta["library_name"] == "peft" and "PeftModel.from_pretrained" in body


# -- audio ------------------------------------------------------------------------------------------------
def audio_run(tmp_path: Path, pretrained: str, extra: list[str]) -> tuple[list[dict], Path]:
    from tests.test_audio import audio_overrides, write_folder

    data = write_folder(tmp_path / "clips", per_class=10)
    # Every clip (0.4-1.4 s) within max_seconds, which the wav2vec2 pipeline does not cut.
    train(compose_config("train", audio_overrides(data, pretrained, [
        "data.max_seconds=2.0", "trainer.max_epochs=2", "logger=none", *extra]), tmp_path / "run"))
    rows, export, _ = eval_export(tmp_path / "run", tmp_path)
    return rows, export


def pipeline_on_files(export: Path, paths: list[str], tmp_path: Path) -> dict:
    """transformers' audio-classification pipeline on each clip, decoded and resampled to the model's rate
    as sft does (soundfile, mono mix, soxr HQ), in a process where sft cannot be imported."""
    return run_without_sft(f"""
        import soundfile, soxr
        from transformers import pipeline
        classify = pipeline("audio-classification", model={str(export)!r})
        rate = classify.feature_extractor.sampling_rate
        rows = []
        for path in {paths!r}:
            wave, native = soundfile.read(path, dtype="float32", always_2d=True)
            wave = soxr.resample(wave.mean(axis=1), native, rate, quality="HQ")
            rows.append({{s["label"]: s["score"] for s in classify(wave, top_k=None)}})
        emit({{"class": type(classify.model).__name__, "rows": rows}})
    """, tmp_path)


def test_whisper_audio_classifier_loads_in_the_audio_pipeline(tmp_path):
    from tests.test_audio import TONES, tiny_whisper_folder

    rows, export = audio_run(tmp_path, tiny_whisper_folder(tmp_path / "whisper"), ["model.pooling=mean_with_padding"])
    info = json.loads((export / "sft_model.json").read_text())
    assert info["layout"] == "stock" and not (export / "head.safetensors").exists()
    assert json.loads((export / "config.json").read_text())["max_source_positions"] == 100  # a 2 s window
    long_clip = tmp_path / "long.wav"  # longer than max_seconds: the stock extractor cuts where eval does
    import soundfile

    soundfile.write(long_clip, np.sin(np.arange(16000 * 3) * 0.3).astype(np.float32) * 0.3, 16000)
    got = pipeline_on_files(export, [r["audio"] for r in rows] + [str(long_clip)], tmp_path)
    assert got["class"] == "WhisperForAudioClassification"
    assert_close_rows(got["rows"][:-1], [r["probabilities"] for r in rows])
    assert [max(p, key=p.get) for p in got["rows"][:-1]] == [r["prediction"] for r in rows]
    body = assert_card(export, "transformers", "audio-classification", list(TONES))
    assert 'pipeline("audio-classification"' in body

    from sft.export import Predictor

    answers = Predictor.load(export).predict([r["audio"] for r in rows] + [str(long_clip)])
    assert [a["label"] for a in answers[:-1]] == [r["prediction"] for r in rows]
    assert_close_rows([a["probabilities"] for a in answers], got["rows"])


def test_wav2vec2_audio_classifier_loads_in_the_audio_pipeline(tmp_path):
    from tests.test_audio import tiny_wav2vec2_folder

    rows, export = audio_run(tmp_path, tiny_wav2vec2_folder(tmp_path / "wav2vec2"), [])  # pooling: mean
    got = pipeline_on_files(export, [r["audio"] for r in rows], tmp_path)
    assert got["class"] == "Wav2Vec2ForSequenceClassification"
    assert_close_rows(got["rows"], [r["probabilities"] for r in rows])
    assert [max(p, key=p.get) for p in got["rows"]] == [r["prediction"] for r in rows]


def test_whisper_mean_pooling_falls_back_to_the_sft_layout(tmp_path, caplog):
    from tests.test_audio import tiny_whisper_folder

    with caplog.at_level(logging.WARNING):
        rows, export = audio_run(tmp_path, tiny_whisper_folder(tmp_path / "whisper"), [])  # pooling: mean
    assert any("model.pooling='mean'" in r.getMessage() and "mean_with_padding" in r.getMessage()
               for r in caplog.records)
    assert "layout" not in json.loads((export / "sft_model.json").read_text())
    assert card(export)[0]["library_name"] == "sft"

    from sft.export import Predictor

    answers = Predictor.load(export).predict([r["audio"] for r in rows])
    assert_close_rows([a["probabilities"] for a in answers], [r["probabilities"] for r in rows])
