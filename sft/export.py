"""Export a fine-tuned model as a self-contained folder, and load it back for prediction.

The folder holds the encoder in Hugging Face format (config.json, model.safetensors), its
tokenizer, the head's weights (head.safetensors) and sft_model.json (task, label map, pooling).
It needs neither the training config nor sft's checkpoint to be used:

    from sft.export import Predictor
    predictor = Predictor.load("exported/")
    predictor.predict(["a gripping, beautifully made film"])
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import torch
from safetensors.torch import load_file, save_file

from sft.models.heads import SequenceClassificationHead

FORMAT_VERSION = 1


def export_module(module, tokenizer, out_dir: str | Path, max_length: int = 512) -> Path:
    if module.hparams.task != "text_classification":
        from sft.tasks import ConfigError

        raise ConfigError(f"export_dir: exporting is supported for text_classification only, not {module.hparams.task}; "
                          f"use the checkpoint with eval.py instead")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    module.backbone.save_pretrained(out)
    tokenizer.save_pretrained(out)
    save_file({k: v.detach().cpu().contiguous() for k, v in module.head.state_dict().items()}, out / "head.safetensors")
    hp = module.hparams
    (out / "sft_model.json").write_text(json.dumps({
        "format_version": FORMAT_VERSION,
        "task": hp.task,
        "label_names": list(module.label_names),
        "pooling": module.head.pooling,
        "hidden_size": module.backbone.config.hidden_size,
        "max_length": max_length,
    }, indent=2) + "\n")
    return out


class Predictor:
    """Encoder + head + tokenizer from an export folder; `predict` returns labels and probabilities."""

    def __init__(self, backbone, head: SequenceClassificationHead, tokenizer, label_names: list[str], max_length: int = 512):
        self.backbone = backbone.eval()
        self.head = head.eval()
        self.tokenizer = tokenizer
        self.label_names = label_names
        self.max_length = max_length

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu") -> "Predictor":
        from transformers import AutoModel, AutoTokenizer

        folder = Path(folder)
        info = json.loads((folder / "sft_model.json").read_text())
        if info.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{folder}/sft_model.json: format_version {info.get('format_version')}, expected {FORMAT_VERSION}")
        backbone = AutoModel.from_pretrained(folder).to(device)
        if getattr(backbone, "pooler", None) is not None:
            backbone.pooler = None
        head = SequenceClassificationHead(info["hidden_size"], info["label_names"], info["pooling"], dropout=0.0)
        # Loss buffers (class weights) may be present and are not needed to predict; weights must be.
        missing = head.load_state_dict(load_file(folder / "head.safetensors"), strict=False).missing_keys
        if missing:
            raise ValueError(f"{folder}/head.safetensors lacks {missing}")
        return cls(backbone, head.to(device), AutoTokenizer.from_pretrained(folder), info["label_names"], info["max_length"])

    @torch.inference_mode()
    def predict_proba(self, texts: Sequence[str], pairs: Optional[Sequence[str]] = None, batch_size: int = 64) -> torch.Tensor:
        device = next(self.backbone.parameters()).device
        chunks = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(list(texts[start:start + batch_size]),
                                   list(pairs[start:start + batch_size]) if pairs else None,
                                   truncation=True, max_length=self.max_length, padding=True, return_tensors="pt").to(device)
            hidden = self.backbone(**batch).last_hidden_state
            chunks.append(self.head.predict(self.head(hidden, batch))["probabilities"].cpu())
        return torch.cat(chunks)

    def predict(self, texts: Sequence[str], pairs: Optional[Sequence[str]] = None) -> list[dict]:
        probabilities = self.predict_proba(texts, pairs)
        return [{"label": self.label_names[int(p.argmax())],
                 "probabilities": dict(zip(self.label_names, p.tolist()))} for p in probabilities]


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
