"""Export of an audio classifier, and `AudioPredictor`, which loads it back.

sft's own layout (when no stock class expresses the head; see sft.export.formats.export_audio)
holds the encoder's `config.json` and weights (`backbone.safetensors`, keys of the
transformers encoder), `head.safetensors`, and `sft_model.json`: the label map, the head's
options and the input the model was trained on (family, sample rate, feature extractor settings,
max_seconds). `AudioPredictor` decodes, resamples, cuts/pads and extracts features with the same
code as eval, so its probabilities equal eval.py's:

    from sft.export import Predictor
    predictor = Predictor.load("exported/")
    predictor.predict(["clip.wav", "other.flac"])            # file paths
    predictor.predict([samples], sample_rate=8000)           # float arrays, resampled to the model's rate
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from sft.export import FORMAT_VERSION, StockHead, load_head, read_export_info, save_head


def export_audio_module(module, processor_options: dict, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    backbone = module.backbone
    backbone.model.config.save_pretrained(out)
    save_file({k: v.detach().cpu().contiguous() for k, v in backbone.model.state_dict().items()},
              out / "backbone.safetensors")
    save_head(module.head, out / "head.safetensors")
    options = {k: v for k, v in module.head_options.items() if k in ("pooling", "top_k")}
    (out / "sft_model.json").write_text(json.dumps({
        "format_version": FORMAT_VERSION, "task": module.hparams.task, "label_names": list(module.label_names),
        "family": backbone.family, "num_features": backbone.num_features,
        "pass_attention_mask": backbone.pass_attention_mask, "head_options": options,
        "input": processor_options["input_spec"], "max_seconds": processor_options["max_seconds"],
    }, indent=2) + "\n")
    return out


class StockAudioModel(torch.nn.Module):
    """A stock audio export (transformers' AutoModelForAudioClassification folder): a batch of the eval
    collator in, logits out. The collator pads to max_seconds with an attention mask, which the stock
    Whisper window and the masked wav2vec2-family models give the same logits as the unpadded clip."""

    def __init__(self, folder: Path):
        super().__init__()
        from transformers import AutoModelForAudioClassification

        self.model = AutoModelForAudioClassification.from_pretrained(folder).eval()

    def forward(self, batch: dict) -> torch.Tensor:
        if "input_features" in batch:
            return self.model(input_features=batch["input_features"]).logits
        return self.model(input_values=batch["input_values"], attention_mask=batch["attention_mask"]).logits


class AudioPredictor:
    """Encoder + head + the eval input pipeline from an audio export folder."""

    def __init__(self, backbone, head, label_names: list[str], input_spec: dict, max_seconds: float, top_k: int = 5):
        from sft.data.audio import AudioCollator

        self.backbone = backbone.eval()
        self.head = head.eval()
        self.label_names = label_names
        self.input = input_spec
        self.sample_rate = int(input_spec["sample_rate"])
        self.collate = AudioCollator(input_spec, max_seconds, train=False)
        self.top_k = min(top_k, len(label_names))

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu") -> "AudioPredictor":
        from transformers import AutoConfig, AutoModel
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        from sft.models.audio_backbones import AudioBackbone
        from sft.models.audio_head import AudioClassificationHead

        folder = Path(folder)
        info = read_export_info(folder)
        if info.get("layout") == "stock":
            return cls(StockAudioModel(folder).to(device), StockHead("audio_classification").to(device),
                       info["label_names"], info["input"], info["max_seconds"], info["top_k"])
        config = AutoConfig.from_pretrained(folder)
        model = WhisperEncoder(config) if info["family"] == "whisper" else AutoModel.from_config(config)
        model.load_state_dict(load_file(folder / "backbone.safetensors"))
        backbone = AudioBackbone(model, info["family"], info["pass_attention_mask"])
        options = info["head_options"]
        head = load_head(AudioClassificationHead(info["num_features"], info["label_names"], options.get("pooling", "mean"),
                                                 top_k=options.get("top_k", 5)), folder / "head.safetensors")
        return cls(backbone.to(device), head.to(device), info["label_names"], info["input"], info["max_seconds"],
                   options.get("top_k", 5))

    def _item(self, clip, sample_rate: Optional[int]) -> dict:
        from sft.data.audio import resample

        if isinstance(clip, (str, Path)):
            return {"audio": str(clip)}
        wave = np.asarray(clip, dtype=np.float32)
        if wave.ndim == 2:  # (samples, channels)
            wave = wave.mean(axis=1)
        return {"audio": resample(wave, sample_rate or self.sample_rate, self.sample_rate)}

    @torch.inference_mode()
    def predict_proba(self, clips: Sequence, sample_rate: Optional[int] = None, batch_size: int = 32) -> torch.Tensor:
        """Class probabilities, one row per clip: file paths, or float arrays at `sample_rate`
        (default: the model's)."""
        device = next(self.backbone.parameters()).device
        chunks = []
        for start in range(0, len(clips), batch_size):
            batch = self.collate([self._item(c, sample_rate) for c in clips[start:start + batch_size]])
            batch = {k: v.to(device) for k, v in batch.items()}
            chunks.append(self.head.predict(self.head(self.backbone(batch), batch))["probabilities"].cpu())
        return torch.cat(chunks)

    def predict(self, clips: Sequence, sample_rate: Optional[int] = None) -> list[dict]:
        rows = []
        for p in self.predict_proba(clips, sample_rate):
            top = p.topk(self.top_k)
            rows.append({"label": self.label_names[int(p.argmax())],
                         "probabilities": dict(zip(self.label_names, p.tolist())),
                         "top_k": [{"label": self.label_names[int(i)], "probability": float(v)}
                                   for v, i in zip(top.values, top.indices)]})
        return rows
