"""Speech backbones from transformers: the Whisper encoder, wav2vec2, HuBERT, WavLM, AST, ...

Every backbone becomes an `AudioBackbone`: a batch of the feature extractor's output in, frame
features (B, T, D) and their mask (B, T) out, so the pooling head on top is the same for every
family. `audio_input_spec` reads what the data side must produce (sample rate, feature
extractor settings, longest clip) from the model folder without loading weights.

Whisper's encoder is run on clips shorter than its 30 s window: its positional embeddings are
sliced to the input's length (transformers' own forward insists on 3000 mel frames).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from sft import assets
from sft.errors import ConfigError

# Model types whose input is the raw waveform through a convolutional feature encoder.
WAVEFORM_FAMILIES = {"wav2vec2", "hubert", "wavlm", "data2vec-audio", "unispeech", "unispeech-sat", "sew", "sew-d",
                     "wav2vec2-conformer"}
BACKBONE_OPTIONS = ("freeze_feature_encoder",)  # the rest of model.backbone_options are config overrides


def family_of(model_type: str) -> str:
    if model_type == "whisper":
        return "whisper"
    if model_type == "audio-spectrogram-transformer":
        return "ast"
    return "waveform" if model_type in WAVEFORM_FAMILIES else model_type


def _source(pretrained: Optional[str], architecture: Optional[str]) -> str:
    source = pretrained or architecture
    if not source:
        raise ConfigError("model.pretrained=null (random init) needs model.architecture=<a model folder or catalog "
                          "name whose config.json and feature extractor to use>, e.g. model.architecture=whisper-base")
    return assets.resolve_pretrained(source)


class AudioBackbone(nn.Module):
    """A transformers speech encoder; `forward(batch)` returns (frame features, frame mask)."""

    def __init__(self, model: nn.Module, family: str, pass_attention_mask: bool = False):
        super().__init__()
        self.model = model
        self.family = family
        self.pass_attention_mask = pass_attention_mask  # wav2vec2 models with layer-norm feature encoders
        config = model.config
        self.num_features = int(getattr(config, "d_model", None) or config.hidden_size)

    @property
    def config(self):
        return self.model.config

    def gradient_checkpointing_enable(self, **kwargs) -> None:
        self.model.gradient_checkpointing_enable(**kwargs)

    def freeze_feature_encoder(self) -> None:
        """Freeze the convolutional front end (its weights stay as pretrained)."""
        if self.family == "whisper":
            for layer in (self.model.conv1, self.model.conv2):
                layer.requires_grad_(False)
        elif self.family == "ast":
            self.model.embeddings.patch_embeddings.requires_grad_(False)
        elif hasattr(self.model, "freeze_feature_encoder"):
            self.model.freeze_feature_encoder()

    def _whisper(self, features: torch.Tensor) -> torch.Tensor:
        encoder = self.model
        hidden = F.gelu(encoder.conv2(F.gelu(encoder.conv1(features)))).permute(0, 2, 1)
        positions = encoder.embed_positions.weight
        if hidden.shape[1] > positions.shape[0]:
            raise ConfigError(f"{hidden.shape[1] * 2} mel frames: longer than Whisper's window of {positions.shape[0] * 2}")
        hidden = F.dropout(hidden + positions[: hidden.shape[1]], p=encoder.dropout, training=self.training)
        for layer in encoder.layers:
            hidden = layer(hidden, None)
        return encoder.layer_norm(hidden)

    def forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        mask = batch["attention_mask"]
        if self.family == "whisper":
            hidden = self._whisper(batch["input_features"])
            frame_mask = mask[:, ::2][:, : hidden.shape[1]]  # conv2 has stride 2
        elif self.family == "waveform":
            values = batch["input_values"]
            hidden = self.model(values, attention_mask=mask if self.pass_attention_mask else None).last_hidden_state
            lengths = self.model._get_feat_extract_output_lengths(mask.sum(-1))
            frame_mask = (torch.arange(hidden.shape[1], device=hidden.device)[None, :] < lengths[:, None]).long()
        else:  # AST and other encoders of fixed-size inputs: every output position counts
            name = "input_features" if "input_features" in batch else "input_values"
            hidden = self.model(**{name: batch[name]}).last_hidden_state
            frame_mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
        return hidden, frame_mask

    def layer_ids(self) -> tuple[dict[str, int], int]:
        """Depth of each parameter for layer-wise LR decay: 0 front end and embeddings, i+1 layer i,
        n+1 a final norm after the layers."""
        names = [name for name, _ in self.model.named_parameters()]
        indices = [int(m.group(1)) for n in names if (m := re.search(r"(?:^|\.)layers?\.(\d+)\.", n))]
        count = (max(indices) + 1) if indices else 0
        ids = {}
        for name in names:
            m = re.search(r"(?:^|\.)layers?\.(\d+)\.", name)
            if m:
                ids[f"model.{name}"] = int(m.group(1)) + 1
            elif re.match(r"(layer_norm|layernorm)\.", name) and self.family != "waveform":
                ids[f"model.{name}"] = count + 1  # Whisper's and AST's norm after the last layer
            else:
                ids[f"model.{name}"] = 0
        return ids, count + 2


def load_audio_backbone(pretrained: Optional[str], architecture: Optional[str] = None, load_weights: bool = True,
                        options: Optional[dict] = None, trust_remote_code: bool = False) -> AudioBackbone:
    """`pretrained`: a Hugging Face folder, hub id or catalog name (`whisper-base`, `whisper-tiny-en`);
    None builds `architecture`'s config with random weights. `options` (model.backbone_options):
    `freeze_feature_encoder` (default true), anything else overrides the model config (e.g.
    `mask_time_prob: 0.0`, `layerdrop: 0.0`)."""
    from transformers import AutoConfig, AutoModel

    options = dict(options or {})
    freeze = bool(options.pop("freeze_feature_encoder", True))
    path = _source(pretrained, architecture)
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, **options)
    family = family_of(config.model_type)
    weights = load_weights and pretrained is not None
    if family == "whisper":
        from transformers import WhisperForAudioClassification
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        if weights:  # the encoder of a full Whisper checkpoint (the decoder's weights are not read into it)
            from transformers.utils import logging as hf_logging

            verbosity = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()  # the unused decoder and the unused stock head are expected
            try:
                model = WhisperForAudioClassification.from_pretrained(path, config=config).encoder
            finally:
                hf_logging.set_verbosity(verbosity)
        else:
            model = WhisperEncoder(config)
    elif weights:
        model = AutoModel.from_pretrained(path, config=config, trust_remote_code=trust_remote_code)
    else:
        model = AutoModel.from_config(config, trust_remote_code=trust_remote_code)
    if family not in ("whisper", "ast", "waveform"):
        raise ConfigError(f"model.pretrained={pretrained or architecture}: a {config.model_type!r} model; audio "
                          "classification takes Whisper, wav2vec2, HuBERT, WavLM, data2vec-audio or AST encoders")
    model.train()
    backbone = AudioBackbone(model, family, pass_attention_mask=bool(_extractor_settings(path).get("return_attention_mask")))
    if freeze:
        backbone.freeze_feature_encoder()
    return backbone


def _extractor_settings(path: str) -> dict[str, Any]:
    file = Path(path) / "preprocessor_config.json"
    if file.is_file():
        return json.loads(file.read_text())
    from transformers import AutoFeatureExtractor

    try:
        return AutoFeatureExtractor.from_pretrained(path).to_dict()
    except Exception as e:  # noqa: BLE001 - any failure means the folder has no usable feature extractor
        raise ConfigError(f"model.pretrained={path}: no feature extractor (preprocessor_config.json) to prepare audio "
                          f"with ({type(e).__name__}: {e}); save one with the model (feature_extractor.save_pretrained)") from None


def audio_input_spec(pretrained: Optional[str], architecture: Optional[str] = None) -> dict[str, Any]:
    """{family, sample_rate, feature_extractor (its settings), max_seconds (the longest clip the
    backbone takes, or None)}: what the data side prepares, read without loading weights."""
    from transformers import AutoConfig

    path = _source(pretrained, architecture)
    config = AutoConfig.from_pretrained(path)
    family = family_of(config.model_type)
    settings = {k: v for k, v in _extractor_settings(path).items()
                if not (isinstance(v, list) and len(v) > 1000)}  # no filter banks or windows: they are rebuilt
    rate = int(settings.get("sampling_rate") or 16000)
    limit = None
    if family == "whisper":
        limit = config.max_source_positions * 2 * int(settings.get("hop_length", 160)) / rate
    elif family == "ast":
        limit = int(settings.get("max_length", 1024)) * 0.01  # 10 ms filter-bank frames
    return {"family": family, "sample_rate": rate, "feature_extractor": settings, "max_seconds": limit}
