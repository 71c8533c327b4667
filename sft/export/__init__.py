"""Export a fine-tuned model as a self-contained folder, and load it back for prediction.

Text classification: the encoder in Hugging Face format (config.json, model.safetensors), its
tokenizer, the head's weights (head.safetensors) and sft_model.json (task, label map, pooling).
Image classification: the backbone (timm weights in backbone.safetensors, or a Hugging Face
folder), head.safetensors, and sft_model.json with the label map and the input the model
expects (size, mean, std, interpolation, crop). Neither needs the training config or sft's
checkpoint to be used:

    from sft.export import Predictor
    predictor = Predictor.load("exported/")          # a text or an image export
    predictor.predict(["a gripping, beautifully made film"])   # or image paths / arrays / PIL images

Since stock exports (sft.export.formats), a folder whose sft_model.json says `"layout": "stock"` holds
the library's own model instead (transformers' AutoModelFor*, timm's config.json + model.safetensors);
`Predictor.load` reads both layouts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import torch
from safetensors.torch import load_file, save_file

FORMAT_VERSION = 1


def read_export_info(folder: Path) -> dict:
    info = json.loads((folder / "sft_model.json").read_text())
    if info.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{folder}/sft_model.json: format_version {info.get('format_version')}, expected {FORMAT_VERSION}")
    return info


def features(outputs):
    """A stock task model's logits, or an encoder's hidden states."""
    return outputs["logits"] if "logits" in outputs else outputs.last_hidden_state


class StockHead(torch.nn.Module):
    """The `predict` of sft's heads over a stock model's logits (the head is inside that model)."""

    def __init__(self, task: str, threshold: float = 0.5, top_k: int = 5):
        super().__init__()
        self.task, self.threshold, self.top_k = task, threshold, top_k

    def forward(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        return logits

    def predict(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = logits.float()
        if self.task == "text_regression":
            return {"prediction": logits}
        if self.task == "token_classification":
            return {"prediction": logits.argmax(-1)}
        if self.task == "multilabel_classification":
            probabilities = logits.sigmoid()
            return {"probabilities": probabilities, "prediction": (probabilities > self.threshold).long()}
        probabilities = logits.softmax(-1)
        return {"probabilities": probabilities, "prediction": probabilities.argmax(-1)}


def save_head(head: torch.nn.Module, path: Path) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}, path)


def load_head(head: torch.nn.Module, path: Path) -> torch.nn.Module:
    # Loss buffers (class weights) may be present and are not needed to predict; weights must be.
    missing = head.load_state_dict(load_file(path), strict=False).missing_keys
    if missing:
        raise ValueError(f"{path} lacks {missing}")
    return head


def export_module(module, tokenizer, out_dir: str | Path, max_length: int = 512,
                  processor_options: Optional[dict] = None) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    module.backbone.save_pretrained(out)
    tokenizer.save_pretrained(out)
    save_head(module.head, out / "head.safetensors")
    hp = module.hparams
    (out / "sft_model.json").write_text(json.dumps({
        "format_version": FORMAT_VERSION,
        "task": hp.task,
        "label_names": list(module.label_names),
        "pooling": getattr(module.head, "pooling", None),
        "head_options": dict(module.head_options),
        "hidden_size": module.backbone.config.hidden_size,
        "max_length": max_length,
        "processor_options": processor_options or {},
    }, indent=2) + "\n")
    return out


class Predictor:
    """Encoder + head + tokenizer from an export folder. `predict` returns, per text: the label and
    every label's probability (text classification); the labels above the threshold and every
    probability (multi-label); the predicted value of each target (regression)."""

    def __init__(self, backbone, head: torch.nn.Module, tokenizer, label_names: list[str], max_length: int = 512,
                 task: str = "text_classification"):
        self.backbone = backbone.eval()
        self.head = head.eval()
        self.tokenizer = tokenizer
        self.label_names = label_names
        self.max_length = max_length
        self.task = task

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu") -> "Predictor":
        from transformers import AutoModel, AutoTokenizer

        from sft.tasks import get_task

        folder = Path(folder)
        info = read_export_info(folder)
        if info["task"] == "image_classification":
            return ImagePredictor.load(folder, device)
        if info["task"] == "audio_classification":
            from sft.audio_export import AudioPredictor

            return AudioPredictor.load(folder, device)
        if info.get("layout") == "stock":
            from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

            tagging = info["task"] == "token_classification"
            auto = AutoModelForTokenClassification if tagging else AutoModelForSequenceClassification
            model = auto.from_pretrained(folder).to(device)
            stock = StockHead(info["task"], info.get("head_options", {}).get("threshold", 0.5))
            tokenizer = AutoTokenizer.from_pretrained(folder)
            if tagging:
                return TaggingPredictor(model, stock, tokenizer, info["label_names"], info["processor_options"])
            return cls(model, stock, tokenizer, info["label_names"], info["max_length"], info["task"])
        task = get_task(info["task"])
        if task.modality != "text":
            raise ValueError(f"{folder}/sft_model.json: task {info['task']!r} has no Predictor; "
                             f"load a causal_lm export with transformers' AutoModelForCausalLM")
        backbone = AutoModel.from_pretrained(folder).to(device)
        if getattr(backbone, "pooler", None) is not None:
            backbone.pooler = None
        # Folders written before heads kept only their own options may list other heads' options too.
        known = set(task.HeadOptions.__dataclass_fields__) | set(task.learned_keys)
        options = {k: v for k, v in info.get("head_options", {"pooling": info["pooling"]}).items() if k in known}
        head = task.build_head(info["hidden_size"], info["label_names"], {**options, "dropout": 0.0})
        load_head(head, folder / "head.safetensors")
        tokenizer = AutoTokenizer.from_pretrained(folder)
        if info["task"] == "token_classification":
            return TaggingPredictor(backbone, head.to(device), tokenizer, info["label_names"], info["processor_options"])
        return cls(backbone, head.to(device), tokenizer, info["label_names"], info["max_length"], info["task"])

    @torch.inference_mode()
    def predict_outputs(self, texts: Sequence[str], pairs: Optional[Sequence[str]] = None,
                        batch_size: int = 64) -> dict[str, torch.Tensor]:
        """The head's `predict` over all texts: probabilities and/or predictions, one row per text."""
        device = next(self.backbone.parameters()).device
        chunks = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(list(texts[start:start + batch_size]),
                                   list(pairs[start:start + batch_size]) if pairs else None,
                                   truncation=True, max_length=self.max_length, padding=True, return_tensors="pt").to(device)
            hidden = features(self.backbone(**batch))
            chunks.append({k: v.cpu() for k, v in self.head.predict(self.head(hidden, batch)).items()})
        return {key: torch.cat([chunk[key] for chunk in chunks]) for key in chunks[0]}

    def predict_proba(self, texts: Sequence[str], pairs: Optional[Sequence[str]] = None, batch_size: int = 64) -> torch.Tensor:
        return self.predict_outputs(texts, pairs, batch_size)["probabilities"]

    def predict(self, texts: Sequence[str], pairs: Optional[Sequence[str]] = None) -> list[dict]:
        outputs = self.predict_outputs(texts, pairs)
        if self.task == "text_regression":
            return [{"prediction": dict(zip(self.label_names, row.tolist()))} for row in outputs["prediction"]]
        rows = []
        for p, predicted in zip(outputs["probabilities"], outputs["prediction"]):
            probabilities = dict(zip(self.label_names, p.tolist()))
            if self.task == "multilabel_classification":
                rows.append({"labels": [n for n, on in zip(self.label_names, predicted.tolist()) if on],
                             "probabilities": probabilities})
            else:
                rows.append({"label": self.label_names[int(p.argmax())], "probabilities": probabilities})
        return rows


class TaggingPredictor:
    """Token classification from an export folder: sentences (lists of words, or strings split on
    whitespace) in; per sentence the tag of every word and the entity spans out. Long sentences
    are split into overlapping windows and stitched back exactly as in training and eval."""

    def __init__(self, backbone, head, tokenizer, label_names: list[str], processor_options: dict):
        from sft.data.token_classification import TokenClassificationProcessor

        self.backbone = backbone.eval()
        self.head = head.eval()
        self.label_names = label_names
        self.processor = TokenClassificationProcessor(tokenizer, text_column="words", label_names=label_names,
                                                      **processor_options)

    @torch.inference_mode()
    def predict(self, sentences: Sequence, batch_size: int = 32) -> list[dict]:
        from sft.data.sources import Table

        rows = [{"words": s.split() if isinstance(s, str) else list(s)} for s in sentences]
        table = Table("input", rows, [f"input sentence {i + 1}" for i in range(len(rows))], ["words"])
        examples, _ = self.processor.encode(table, with_labels=False)
        collate = self.processor.make_collator(8)
        device = next(self.backbone.parameters()).device
        outputs = []
        for start in range(0, len(examples), batch_size):
            batch = collate(examples[start:start + batch_size])
            inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
            predicted = self.head.predict(self.head(features(self.backbone(**inputs)), batch))
            outputs.append({"prediction": predicted["prediction"].cpu(), "word_index": batch["word_index"],
                            "sentence_index": batch["sentence_index"]})
        return [{"words": row["words"], "tags": row["predicted_tags"], "entities": row["entities"]}
                for row in self.processor.prediction_rows(table, outputs, self.label_names, with_tags=False)]


def export_image_module(module, input_spec: dict, out_dir: str | Path) -> Path:
    """An image classifier as backbone + head + the input it expects (`input_spec`: the processor's
    channels, size, mean, std, interpolation and crop_pct), so predictions need no training config."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    backbone = module.backbone
    info = {"format_version": FORMAT_VERSION, "task": module.hparams.task, "label_names": list(module.label_names),
            "family": backbone.family, "num_features": backbone.num_features, "top_k": module.head.top_k,
            "input": dict(input_spec)}
    if backbone.family == "timm":
        # Plain timm keys (built with num_classes=0): timm.create_model(architecture, num_classes=0) loads them too.
        info["architecture"] = backbone.model.pretrained_cfg["architecture"]
        info["backbone_options"] = dict(module.hparams.get("backbone_options") or {})
        save_file({k: v.detach().cpu().contiguous() for k, v in backbone.model.state_dict().items()},
                  out / "backbone.safetensors")
    else:
        backbone.model.save_pretrained(out)
    save_head(module.head, out / "head.safetensors")
    (out / "sft_model.json").write_text(json.dumps(info, indent=2) + "\n")
    return out


class ImagePredictor:
    """Backbone + head + the eval transform from an image export folder. `predict` takes image paths,
    PIL images or uint8 arrays (H, W[, C]) and returns the label, every class's probability and the
    top-k labels, as eval.py's predictions_file does."""

    def __init__(self, backbone, head, label_names: list[str], input_spec: dict, top_k: int = 5):
        from sft.data.images import build_transforms

        self.backbone = backbone.eval()
        self.head = head.eval()
        self.label_names = label_names
        self.input = input_spec
        self.top_k = min(top_k, len(label_names))
        self.transform = build_transforms(False, input_spec["size"], input_spec["mean"], input_spec["std"],
                                          input_spec["interpolation"], input_spec["crop_pct"])

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu") -> "ImagePredictor":
        from sft.models.image_backbones import load_image_backbone
        from sft.models.image_head import ImageClassificationHead

        folder = Path(folder)
        info = read_export_info(folder)
        if info.get("layout") == "stock":
            return cls(StockImageModel(folder, info).to(device), StockHead("image_classification").to(device),
                       info["label_names"], info["input"], info["top_k"])
        if info["family"] == "timm":
            backbone = load_image_backbone(str(folder / "backbone.safetensors"), info["architecture"],
                                           options=info.get("backbone_options"))
        else:
            backbone = load_image_backbone(str(folder))
        head = load_head(ImageClassificationHead(info["num_features"], info["label_names"], top_k=info["top_k"]),
                         folder / "head.safetensors")
        return cls(backbone.to(device), head.to(device), info["label_names"], info["input"], info["top_k"])

    def pixels(self, image) -> torch.Tensor:
        from sft.data.images import open_image, to_tensor

        channels = self.input["channels"]
        if isinstance(image, (str, Path)):
            image = open_image(str(image), "L" if channels == 1 else "RGB")
        elif hasattr(image, "convert"):  # a PIL image
            image = image.convert("L" if channels == 1 else "RGB")
        return self.transform(to_tensor(image, channels))

    @torch.inference_mode()
    def predict_proba(self, images: Sequence, batch_size: int = 64) -> torch.Tensor:
        device = next(self.backbone.parameters()).device
        chunks = []
        for start in range(0, len(images), batch_size):
            pixels = torch.stack([self.pixels(image) for image in images[start:start + batch_size]]).to(device)
            chunks.append(self.head.predict(self.head(self.backbone(pixels), {}))["probabilities"].cpu())
        return torch.cat(chunks)

    def predict(self, images: Sequence) -> list[dict]:
        rows = []
        for p in self.predict_proba(images):
            top = p.topk(self.top_k)
            rows.append({"label": self.label_names[int(p.argmax())],
                         "probabilities": dict(zip(self.label_names, p.tolist())),
                         "top_k": [{"label": self.label_names[int(i)], "probability": float(v)}
                                   for v, i in zip(top.values, top.indices)]})
        return rows


class StockImageModel(torch.nn.Module):
    """A stock image export (timm's or transformers' own folder): pixels in, logits out."""

    def __init__(self, folder: Path, info: dict):
        super().__init__()
        self.family = info["family"]
        if self.family == "timm":
            import timm

            n = len(info["label_names"])
            self.model = timm.create_model(info["architecture"], pretrained=True, num_classes=n,
                                           pretrained_cfg_overlay={"file": str(folder / "model.safetensors"),
                                                                   "num_classes": n},
                                           **info.get("backbone_options", {}))
        else:
            from transformers import AutoModelForImageClassification

            self.model = AutoModelForImageClassification.from_pretrained(folder)
        self.model.eval()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixels) if self.family == "timm" else self.model(pixel_values=pixels).logits


def export_causal_lm(module, tokenizer, out_dir: str | Path, adapter_only: bool = False,
                     end_of_turn_token: Optional[str] = None) -> Path:
    """A causal LM as a plain Hugging Face folder: AutoModelForCausalLM and AutoTokenizer load it,
    and the tokenizer carries the chat template used in training (so it renders the same ids).

    LoRA runs: the adapters are merged into the base weights (on a copy; the module keeps its
    adapters), or with `adapter_only` only the adapters are written (peft's format)."""
    import copy

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = module.backbone
    is_peft = hasattr(model, "merge_and_unload")
    if adapter_only:
        if not is_peft:
            raise ValueError("adapter-only export needs a LoRA run (model/peft=lora)")
        model.save_pretrained(out)
    else:
        model = copy.deepcopy(model).merge_and_unload() if is_peft else model
        eot = tokenizer.convert_tokens_to_ids(end_of_turn_token or tokenizer.eos_token)
        # Generation stops at the end-of-turn token the model was trained to emit.
        model.generation_config.eos_token_id = eot
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "sft_model.json").write_text(json.dumps({
        "format_version": FORMAT_VERSION, "task": "causal_lm", "adapter_only": adapter_only,
        "end_of_turn_token": end_of_turn_token or tokenizer.eos_token,
    }, indent=2) + "\n")
    return out
