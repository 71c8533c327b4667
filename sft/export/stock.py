"""Exports in the ecosystem's own formats: the head sft trained, folded into the task class of the
backbone's library, so that the stock loader takes the folder with sft not installed.

| task | stock class |
|---|---|
| text_classification, pairs | AutoModelForSequenceClassification (`single_label_classification`) |
| multilabel_classification | AutoModelForSequenceClassification (`multi_label_classification`) |
| text_regression | AutoModelForSequenceClassification (`regression`), standardisation folded in |
| token_classification | AutoModelForTokenClassification |
| image_classification, HF | AutoModelForImageClassification + an image processor |
| image_classification, timm | timm.create_model(architecture, num_classes=N) + timm's config.json |

Every fold is checked numerically: the stock model must reproduce the sft module's outputs on a
batch of the test split (probabilities within `TOLERANCE`). A head no stock class expresses (mean
pooling where the class pools the first token, a class whose head has another activation) raises
`NotExpressible`; the task then writes sft's own layout, with a warning.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from typing import Any, Iterator

import torch
import torch.nn as nn

log = logging.getLogger(__name__)

TOLERANCE = 1e-5  # largest difference allowed between sft's and the stock model's probabilities
# BERT-style classes pool the first token through tanh(dense(h)) before their classifier. sft's head
# reads h itself; with dense = SCALE * I and classifier = W / SCALE, tanh(SCALE h) / SCALE = h (1 - (SCALE h)^2 / 3
# + ...), i.e. within 1e-7 relative for |h| < 50: the stock class computes sft's head to float32 precision.
SCALE = 1e-4
PROBLEM_TYPES = {"text_classification": "single_label_classification",
                 "multilabel_classification": "multi_label_classification",
                 "text_regression": "regression"}


class NotExpressible(Exception):
    """The trained head has no stock class that computes it; the message says why."""


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def head_linear(head: nn.Module, task: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's last layer in output units: regression's target standardisation folded in."""
    if task == "text_regression":
        layer = head.regressor
        std, mean = head.target_std.float().cpu(), head.target_mean.float().cpu()
        return layer.weight.detach().float().cpu() * std[:, None], layer.bias.detach().float().cpu() * std + mean
    layer = head.classifier
    return layer.weight.detach().float().cpu(), layer.bias.detach().float().cpu()


def set_linear(layer: nn.Module, weight: torch.Tensor, bias: torch.Tensor, what: str) -> None:
    if not isinstance(layer, nn.Linear) or tuple(layer.weight.shape) != tuple(weight.shape):
        raise NotExpressible(f"{what} is not a linear layer of shape {tuple(weight.shape)}")
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)


def load_base(base: nn.Module, state: dict[str, torch.Tensor], allowed_missing: tuple[str, ...], what: str) -> None:
    result = base.load_state_dict({k: v.detach().float().cpu() for k, v in state.items()}, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(allowed_missing)]
    if missing or result.unexpected_keys:
        raise NotExpressible(f"the backbone's weights do not fit {what}: missing {missing[:3]}, "
                             f"unexpected {result.unexpected_keys[:3]}")


def label_config(config: Any, label_names: list[str]) -> None:
    config.num_labels = len(label_names)
    config.id2label = dict(enumerate(label_names))
    config.label2id = {name: i for i, name in enumerate(label_names)}


# -- text encoders ------------------------------------------------------------------------------
def fold_first_token_head(model: nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> str:
    """Make a stock sequence classifier compute `weight @ h[:, 0] + bias`; returns how."""
    hidden = weight.shape[1]
    classifier = getattr(model, "classifier", None)
    pooler = getattr(model.base_model, "pooler", None)
    if isinstance(classifier, nn.Linear) and isinstance(getattr(pooler, "dense", None), nn.Linear):
        dense, out, how = pooler.dense, classifier, "pooler (dense + tanh on the first token) set to the identity"
    elif isinstance(getattr(classifier, "dense", None), nn.Linear) and isinstance(getattr(classifier, "out_proj", None),
                                                                                   nn.Linear):
        dense, out, how = classifier.dense, classifier.out_proj, "classifier.dense (+ tanh) set to the identity"
    else:
        raise NotExpressible(f"{type(model).__name__}'s head is neither a BERT-style pooler + classifier nor a "
                             f"RoBERTa-style dense + out_proj")
    set_linear(dense, SCALE * torch.eye(hidden), torch.zeros(hidden), f"{type(model).__name__}'s dense layer")
    set_linear(out, weight / SCALE, bias, f"{type(model).__name__}'s classifier")
    return how


def stock_text_model(module, task: str) -> tuple[nn.Module, str]:
    """The transformers task model that computes what the sft module computes, and how the head was folded."""
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    auto = AutoModelForTokenClassification if task == "token_classification" else AutoModelForSequenceClassification
    pooling = getattr(module.head, "pooling", None)
    if pooling not in (None, "cls"):
        raise NotExpressible(f"model.pooling={pooling!r}: {auto.__name__} pools the first token, and no stock class "
                             f"averages the sequence")
    config = copy.deepcopy(module.backbone.config)
    label_config(config, list(module.label_names))
    if task in PROBLEM_TYPES:
        config.problem_type = PROBLEM_TYPES[task]
    try:
        model = auto.from_config(config)
    except ValueError as e:
        raise NotExpressible(f"transformers has no {auto.__name__} class for model_type {config.model_type!r}") from e
    model = model.float().eval()
    load_base(model.base_model, module.backbone.state_dict(), ("pooler.",), type(model).__name__)
    weight, bias = head_linear(module.head, task)
    if task == "token_classification":
        set_linear(getattr(model, "classifier", None), weight, bias, f"{type(model).__name__}.classifier")
        return model, "classifier = the tag layer"
    return model, fold_first_token_head(model, weight, bias)


def stock_scores(logits: torch.Tensor, task: str) -> torch.Tensor:
    """What the stock pipeline reports: softmax, sigmoid (multi-label) or the values (regression)."""
    logits = logits.float()
    if task == "multilabel_classification":
        return logits.sigmoid()
    if task == "text_regression":
        return logits
    return logits.softmax(-1)


def sft_scores(module, outputs: dict[str, torch.Tensor], task: str) -> torch.Tensor:
    return outputs["prediction"] if task == "text_regression" else outputs["probabilities"]


def probe_batch(datamodule) -> dict[str, torch.Tensor]:
    """A batch of the test split (the records the export is checked on)."""
    return next(iter(datamodule.test_dataloader()))


@torch.no_grad()
def check_text_model(module, model: nn.Module, batch: dict, task: str) -> float:
    """Largest difference between the sft module's and the stock model's scores on one batch."""
    device = next(module.parameters()).device
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    with eval_mode(module):
        on_device = {k: v.to(device) for k, v in inputs.items()}
        logits = module.head(module.backbone(**on_device).last_hidden_state.float(), on_device)
        ours = module.head.predict(logits)
    theirs = model(**inputs).logits
    if task == "token_classification":
        ours_p, theirs_p = logits.float().softmax(-1).cpu(), theirs.float().softmax(-1)
    else:
        ours_p, theirs_p = sft_scores(module, ours, task).float().cpu(), stock_scores(theirs, task)
    scale = ours_p.abs().max().clamp(min=1.0) if task == "text_regression" else 1.0
    return float((ours_p - theirs_p).abs().max() / scale)


# -- images ---------------------------------------------------------------------------------------
def stock_timm_model(module, num_classes: int) -> nn.Module:
    import timm

    backbone = module.backbone.model
    architecture = backbone.pretrained_cfg["architecture"]
    options = dict(module.hparams.get("backbone_options") or {})
    model = timm.create_model(architecture, pretrained=False, num_classes=num_classes, **options).float().eval()
    classifier = model.get_classifier()
    names = [name for name, m in model.named_modules() if m is classifier]
    load_base(model, backbone.state_dict(), tuple(f"{n}." for n in names), f"timm {architecture}")
    weight, bias = head_linear(module.head, "image_classification")
    set_linear(classifier, weight, bias, f"timm {architecture}'s classifier")
    return model


def stock_hf_image_model(module) -> nn.Module:
    from transformers import AutoModelForImageClassification

    config = copy.deepcopy(module.backbone.model.config)
    label_config(config, list(module.label_names))
    try:
        model = AutoModelForImageClassification.from_config(config).float().eval()
    except ValueError as e:
        raise NotExpressible(f"transformers has no AutoModelForImageClassification class for model_type "
                             f"{config.model_type!r}") from e
    load_base(model.base_model, module.backbone.model.state_dict(), ("pooler.",), type(model).__name__)
    classifier = getattr(model, "classifier", None)
    if isinstance(classifier, nn.Sequential):  # e.g. ResNet: Flatten + Linear
        classifier = classifier[-1]
    weight, bias = head_linear(module.head, "image_classification")
    set_linear(classifier, weight, bias, f"{type(model).__name__}.classifier")
    return model


@torch.no_grad()
def check_image_model(module, model: nn.Module, spec: dict, family: str) -> float:
    device = next(module.parameters()).device
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(2, spec["channels"], spec["size"], spec["size"], generator=generator)
    with eval_mode(module):
        ours = module.head(module.backbone(pixels.to(device)).float(), {}).float().softmax(-1).cpu()
    logits = model(pixels) if family == "timm" else model(pixel_values=pixels).logits
    return float((ours - logits.float().softmax(-1)).abs().max())


def require_close(difference: float, what: str) -> None:
    if not difference <= TOLERANCE:
        raise NotExpressible(f"{what} differs from sft's head by {difference:.2e} (> {TOLERANCE:g}) on the probe batch")


# -- audio ----------------------------------------------------------------------------------------
def whisper_window(spec: dict, max_seconds: float) -> int:
    """Whisper's encoder positions for a `max_seconds` window; the stock feature extractor pads to
    `chunk_length` whole seconds, so only windows of whole seconds have a stock equivalent."""
    if not float(max_seconds).is_integer():
        raise NotExpressible(f"data.max_seconds={max_seconds:g}: WhisperFeatureExtractor pads to a whole number of "
                             f"seconds (chunk_length); train with a whole number of seconds to export a stock model")
    hop = int(spec["feature_extractor"].get("hop_length", 160))
    frames = int(max_seconds) * int(spec["sample_rate"]) // hop
    return frames // 2  # conv2 has stride 2


def stock_audio_model(module, spec: dict, max_seconds: float) -> tuple[nn.Module, Any, str]:
    """(the transformers audio classifier that computes what the sft module computes, the feature
    extractor the audio-classification pipeline should use, how the head was folded)."""
    from transformers import AutoModelForAudioClassification

    from sft.data.audio import make_feature_extractor

    backbone, head = module.backbone, module.head
    family, pooling = backbone.family, head.pooling
    config = copy.deepcopy(backbone.config)
    label_config(config, list(module.label_names))
    config.use_weighted_layer_sum = False
    config.classifier_proj_size = backbone.num_features  # the projector becomes the identity
    state = dict(backbone.model.state_dict())
    extractor_settings = dict(spec["feature_extractor"])
    if family == "whisper":
        if pooling != "mean_with_padding":
            raise NotExpressible(f"model.pooling={pooling!r}: WhisperForAudioClassification averages every frame of "
                                 f"its window, padding included; train with model.pooling=mean_with_padding to export "
                                 f"a stock model")
        positions = whisper_window(spec, max_seconds)
        # The encoder takes exactly max_source_positions * 2 mel frames: a window of max_seconds, not 30 s.
        config.max_source_positions = positions
        state["embed_positions.weight"] = state["embed_positions.weight"][:positions]
        extractor_settings["chunk_length"] = int(max_seconds)
    elif family == "waveform":
        if pooling != "mean":
            raise NotExpressible(f"model.pooling={pooling!r}: {config.model_type}'s sequence classifier averages the "
                                 f"clip's frames (model.pooling=mean)")
        if not backbone.pass_attention_mask:
            raise NotExpressible(f"{config.model_type} without an attention mask (a group-norm feature encoder): the "
                                 f"zero padding sft adds up to data.max_seconds changes its features, and the stock "
                                 f"pipeline does not pad")
    else:
        raise NotExpressible(f"{config.model_type}: its stock classifier pools its first tokens, sft's head averages "
                             f"every position")
    try:
        model = AutoModelForAudioClassification.from_config(config).float().eval()
    except ValueError as e:
        raise NotExpressible(f"transformers has no AutoModelForAudioClassification class for model_type "
                             f"{config.model_type!r}") from e
    encoder = model.encoder if family == "whisper" else model.base_model
    load_base(encoder, state, (), type(model).__name__)
    hidden = backbone.num_features
    set_linear(model.projector, torch.eye(hidden), torch.zeros(hidden), f"{type(model).__name__}.projector")
    weight, bias = head_linear(head, "audio_classification")
    set_linear(model.classifier, weight, bias, f"{type(model).__name__}.classifier")
    extractor = make_feature_extractor({**spec, "feature_extractor": extractor_settings})
    how = "projector set to the identity, classifier = sft's linear layer"
    if family == "whisper":
        how += f"; a {int(max_seconds)} s window (max_source_positions={config.max_source_positions}, chunk_length)"
    return model, extractor, how


@torch.no_grad()
def check_audio_model(module, model: nn.Module, extractor, spec: dict, max_seconds: float) -> float:
    """Largest difference between sft's eval probabilities and the stock model's on clips prepared as
    the audio-classification pipeline prepares them (one clip at a time, the stock feature extractor);
    one clip fills the window, one is shorter (padding), one is longer (cut)."""
    import numpy as np

    from sft.data.audio import AudioCollator

    rate = int(spec["sample_rate"])
    samples = int(round(max_seconds * rate))
    rng = np.random.default_rng(0)
    clips = [rng.normal(0, 0.1, n).astype(np.float32) for n in (samples, samples * 3 // 5)]
    if module.backbone.family == "whisper":  # the pipeline truncates only Whisper's input
        clips.append(rng.normal(0, 0.1, samples * 3 // 2).astype(np.float32))
    device = next(module.parameters()).device
    batch = AudioCollator(spec, max_seconds, train=False)([{"audio": clip} for clip in clips])
    with eval_mode(module):
        on_device = {k: v.to(device) for k, v in batch.items()}
        ours = module.head(module.backbone(on_device), on_device).float().softmax(-1).cpu()
    theirs = torch.cat([model(**extractor(clip, sampling_rate=rate, return_tensors="pt")).logits.float().softmax(-1)
                        for clip in clips])
    return float((ours - theirs).abs().max())
