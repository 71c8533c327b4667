"""Per-family export writers, reached through each task's `export` method: the stock layout when the
trained head folds into a stock class (see `sft.export.stock`), else sft's own layout with a
warning. Every folder gets a model card and sft_model.json (what `sft.export.Predictor` reads)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

from sft.export.card import ExportRequest, write_card

log = logging.getLogger(__name__)

STOCK_LAYOUT = "stock"  # sft_model.json "layout": the folder is the library's own; absent: sft's layout

TEXT_SNIPPETS = {
    "text_classification": '''
from transformers import pipeline

classify = pipeline("text-classification", model="{out}")
classify(["first text", "second text"], top_k=None)  # every label with its probability
classify({{"text": "a sentence", "text_pair": "its pair"}})  # sentence-pair models''',
    "multilabel_classification": '''
from transformers import pipeline

classify = pipeline("text-classification", model="{out}", top_k=None)  # sigmoid scores per label
scores = classify(["a text"])[0]
labels = [s["label"] for s in scores if s["score"] > {threshold}]  # the threshold used in training''',
    "text_regression": '''
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

model = AutoModelForSequenceClassification.from_pretrained("{out}").eval()
tokenizer = AutoTokenizer.from_pretrained("{out}")
with torch.no_grad():
    values = model(**tokenizer(["a text"], return_tensors="pt", padding=True, truncation=True)).logits
# one column per target ({targets}), in the targets' own units
# one target: pipeline("text-classification", model="{out}", function_to_apply="none") gives the value as score''',
    "token_classification": '''
from transformers import pipeline

tag = pipeline("token-classification", model="{out}", aggregation_strategy="first")
tag("a sentence to tag")  # entity spans; "first" reads each word's first subword, as training did
# aggregation_strategy="simple" works too and groups by every subword's tag''',
}


def write_info(out: Path, info: dict) -> None:
    from sft.export import FORMAT_VERSION

    (out / "sft_model.json").write_text(json.dumps({"format_version": FORMAT_VERSION, **info}, indent=2) + "\n")


def fallback_warning(task: str, reason: Exception) -> str:
    message = (f"export_dir: the {task} head cannot be written as a stock model ({reason}); writing sft's own "
               f"layout, which loads with sft.export.Predictor only. docs/export.md lists the choices that "
               f"export natively.")
    log.warning(message)
    return message


def set_max_length(out: Path, max_length: int) -> None:
    """pipeline(..., truncation=True) then truncates where training did."""
    path = out / "tokenizer_config.json"
    if path.is_file():
        config = json.loads(path.read_text())
        config["model_max_length"] = int(max_length)
        path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def export_text(module, datamodule, out: Path, request: Optional[ExportRequest] = None) -> Path:
    """Text classification, pairs, multi-label, regression and NER."""
    from sft.export import export_module
    from sft.export.stock import NotExpressible, check_text_model, probe_batch, require_close, stock_text_model

    task = module.hparams.task
    out.mkdir(parents=True, exist_ok=True)
    max_length = datamodule.hparams.max_length
    options = datamodule.processor.export_options()
    threshold = dict(module.head_options).get("threshold", 0.5)
    try:
        model, how = stock_text_model(module, task)
        require_close(check_text_model(module, model, probe_batch(datamodule), task), type(model).__name__)
    except NotExpressible as e:
        note = fallback_warning(task, e)
        export_module(module, datamodule.tokenizer, out, max_length, options)
        write_card(out, module, datamodule, request, library_name="sft", layout_note=f"**sft layout.** {note}",
                   how_to_load=f'from sft.export import Predictor\n\nPredictor.load("{out}").predict(["a text"])')
        write_onnx_text(module, datamodule, out, request)
        return out
    model.save_pretrained(out)
    datamodule.tokenizer.save_pretrained(out)
    set_max_length(out, max_length)
    write_info(out, {"layout": STOCK_LAYOUT, "task": task, "label_names": list(module.label_names),
                     "stock_class": type(model).__name__, "head_fold": how, "max_length": max_length,
                     "head_options": {"threshold": threshold} if task == "multilabel_classification" else {},
                     "processor_options": options})
    snippet = TEXT_SNIPPETS[task].format(out=out, threshold=threshold, targets=", ".join(module.label_names))
    write_card(out, module, datamodule, request, library_name="transformers", how_to_load=snippet,
               layout_note=f"A stock `{type(model).__name__}` ({how}); it loads with transformers alone.")
    write_onnx_text(module, datamodule, out, request)
    return out


def write_onnx_text(module, datamodule, out: Path, request: Optional[ExportRequest]) -> None:
    if request and request.onnx:
        from sft.export.onnx import export_text_onnx

        export_text_onnx(module, datamodule.tokenizer, out / "model.onnx")


def image_processor_for(spec: dict):
    """An image processor that prepares images as sft's eval transform does: resize the shorter side to
    size / crop_pct, center-crop size, rescale and normalise (ConvNeXt's processor does exactly this)."""
    from transformers import ConvNextImageProcessor

    resample = {"nearest": 0, "bilinear": 2, "bicubic": 3}[spec.get("interpolation") or "bilinear"]
    return ConvNextImageProcessor(size={"shortest_edge": int(spec["size"])}, crop_pct=float(spec["crop_pct"]),
                                  resample=resample, image_mean=list(spec["mean"]), image_std=list(spec["std"]))


def export_image(module, datamodule, out: Path, request: Optional[ExportRequest] = None) -> Path:
    from sft.export import export_image_module
    from sft.export.stock import (NotExpressible, check_image_model, require_close, stock_hf_image_model,
                                  stock_timm_model)

    out.mkdir(parents=True, exist_ok=True)
    spec = dict(datamodule.processor.input)
    labels = list(module.label_names)
    family = module.backbone.family
    try:
        model = stock_timm_model(module, len(labels)) if family == "timm" else stock_hf_image_model(module)
        require_close(check_image_model(module, model, spec, family), type(model).__name__)
    except NotExpressible as e:
        note = fallback_warning("image_classification", e)
        export_image_module(module, spec, out)
        write_onnx_image(module, spec, out, request)
        write_card(out, module, datamodule, request, library_name="sft", layout_note=f"**sft layout.** {note}",
                   how_to_load=f'from sft.export import Predictor\n\nPredictor.load("{out}").predict(["image.jpg"])')
        return out
    info = {"layout": STOCK_LAYOUT, "task": "image_classification", "label_names": labels, "family": family,
            "top_k": module.head.top_k, "input": spec}
    if family == "timm":
        from timm.models import save_for_hf

        architecture = model.pretrained_cfg["architecture"]
        model.pretrained_cfg = {**dict(model.pretrained_cfg), "num_classes": len(labels),
                                "input_size": (spec["channels"], spec["size"], spec["size"]),
                                "mean": tuple(spec["mean"]), "std": tuple(spec["std"]),
                                "interpolation": spec["interpolation"], "crop_pct": spec["crop_pct"],
                                "crop_mode": "center", "label_names": labels}
        options = dict(module.hparams.get("backbone_options") or {})
        save_for_hf(model, str(out), model_config={"label_names": labels}, model_args=options or None,
                    safe_serialization=True)
        info.update(architecture=architecture, backbone_options=options)
        extra = "".join(f", {k}={v!r}" for k, v in options.items())
        snippet = f'''
import json

import timm
from PIL import Image

model = timm.create_model("{architecture}", pretrained=True, num_classes={len(labels)}{extra},
                          pretrained_cfg_overlay=dict(file="{out}/model.safetensors", num_classes={len(labels)})).eval()
# or: timm.create_model("local-dir:{out}", pretrained=True)  (reads config.json)
config = json.load(open("{out}/config.json"))  # the eval transform trained with: size, mean, std, crop
transform = timm.data.create_transform(**timm.data.resolve_data_config(pretrained_cfg=config["pretrained_cfg"]))
probabilities = model(transform(Image.open("image.jpg").convert("RGB")).unsqueeze(0)).softmax(-1)
labels = {labels!r}'''
        library, note = "timm", f"A timm `{architecture}` with its classifier; timm loads it with its own config.json."
    else:
        model.save_pretrained(out)
        image_processor_for(spec).save_pretrained(out)
        snippet = f'''
from transformers import pipeline

classify = pipeline("image-classification", model="{out}")
classify("image.jpg", top_k={min(module.head.top_k, len(labels))})'''
        library, note = "transformers", f"A stock `{type(model).__name__}` with its image processor."
    write_info(out, info)
    write_card(out, module, datamodule, request, library_name=library, how_to_load=snippet, layout_note=note)
    write_onnx_image(module, spec, out, request)
    return out


def write_onnx_image(module, spec: dict, out: Path, request: Optional[ExportRequest]) -> None:
    if request and request.onnx:
        from sft.export.onnx import export_image_onnx

        export_image_onnx(module, spec, out / "model.onnx")


def causal_lm_card(module, datamodule, out: Path, request: Optional[ExportRequest], adapter: bool) -> None:
    base = module.hparams.get("pretrained")
    if adapter:
        snippet = f'''
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

base = AutoModelForCausalLM.from_pretrained("{base}")
model = PeftModel.from_pretrained(base, "{out}")
tokenizer = AutoTokenizer.from_pretrained("{out}")  # the chat template trained with'''
        library, note = "peft", "LoRA adapters (peft's format) for the base model; the merged model is the folder above."
    else:
        snippet = f'''
from transformers import pipeline

chat = pipeline("text-generation", model="{out}")
chat([{{"role": "user", "content": "Hello!"}}], max_new_tokens=128, do_sample=False)
# the tokenizer carries the chat template trained with; generation stops at the end-of-turn token'''
        library, note = "transformers", "A plain causal LM (LoRA adapters merged, where the run used them)."
    write_card(out, module, datamodule, request, library_name=library, how_to_load=snippet, layout_note=note,
               label_names=[])


def export_audio(module, datamodule, out: Path, request: Optional[ExportRequest] = None) -> Path:
    """A stock AutoModelForAudioClassification + its feature extractor where the head folds into one
    (Whisper with pooling=mean_with_padding, wav2vec2-family models that take an attention mask, with
    pooling=mean); else sft's own layout (sft.audio_export)."""
    from sft.audio_export import export_audio_module
    from sft.export.stock import NotExpressible, check_audio_model, require_close, stock_audio_model

    out.mkdir(parents=True, exist_ok=True)
    options = datamodule.processor.export_options()
    spec, max_seconds = dict(options["input_spec"]), float(options["max_seconds"])
    labels = list(module.label_names)
    try:
        model, extractor, how = stock_audio_model(module, spec, max_seconds)
        require_close(check_audio_model(module, model, extractor, spec, max_seconds), type(model).__name__)
    except NotExpressible as e:
        note = fallback_warning("audio_classification", e)
        export_audio_module(module, options, out)
        write_card(out, module, datamodule, request, library_name="sft", layout_note=f"**sft layout.** {note}",
                   how_to_load=f'from sft.export import Predictor\n\nPredictor.load("{out}").predict(["clip.wav"])')
        return out
    model.save_pretrained(out)
    extractor.save_pretrained(out)
    rate = int(spec["sample_rate"])
    write_info(out, {"layout": STOCK_LAYOUT, "task": "audio_classification", "label_names": labels,
                     "family": module.backbone.family, "stock_class": type(model).__name__, "head_fold": how,
                     "top_k": module.head.top_k, "input": spec, "max_seconds": max_seconds})
    # Whisper's feature extractor cuts at max_seconds itself; wav2vec2's does not, so the snippet cuts as sft did.
    cut = "" if module.backbone.family == "whisper" else (
        f"\nwave = wave[:{int(round(max_seconds * rate))}]  # the first max_seconds={max_seconds:g}, as in training")
    snippet = f'''
import soundfile
import soxr
from transformers import pipeline

classify = pipeline("audio-classification", model="{out}")
wave, rate = soundfile.read("clip.wav", dtype="float32")  # WAV, FLAC, OGG, ...
wave = soxr.resample(wave.mean(axis=1) if wave.ndim == 2 else wave, rate, {rate}, quality="HQ")  # mono, {rate} Hz{cut}
classify(wave, top_k=None)  # every label with its probability
# classify("clip.wav") also works where ffmpeg is installed (it decodes and resamples instead)'''
    write_card(out, module, datamodule, request, library_name="transformers", how_to_load=snippet,
               layout_note=f"A stock `{type(model).__name__}` ({how}) with its feature extractor; it loads with "
                           f"transformers alone.")
    return out
