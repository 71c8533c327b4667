"""Causal-LM SFT: the backbone is a whole AutoModelForCausalLM; the 'head' is its masked token loss.

The head asks the decoder for hidden states and applies the LM head only at positions whose
next token is supervised: the (tokens x vocabulary) logits of prompt and padding positions
are never built. The loss is the sum of token cross-entropies over the micro-batch divided by
`loss_denominator` (see sft/data/packing.py), so a step's loss is the mean over all its
supervised tokens whatever the micro-batch size or accumulation; batches without a
denominator (validation, test) use their own supervised-token count.

With `loss_chunk_size` set, even the supervised tokens' logits are never built all at once: the
LM head and cross-entropy run over chunks of that many tokens, each under activation
checkpointing, so at most one chunk's (tokens x vocabulary) fp32 logits are alive, in forward
and in backward (the head's matrix product is recomputed, about a third more of its FLOPs).
Token accuracy and loss for the metrics are taken inside the chunks.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from torchmetrics import MeanMetric, MetricCollection

from sft import assets
from sft.tasks import ConfigError

IGNORE = -100


def load_causal_lm(pretrained: str, trust_remote_code: bool = False, load_weights: bool = True,
                   attn_implementation: Optional[str] = None) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    path = assets.resolve_pretrained(pretrained)
    kwargs = {"trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if load_weights:
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kwargs)
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    return AutoModelForCausalLM.from_config(config, **kwargs)


def decoder_inputs(batch: dict) -> dict:
    return {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}


class CausalLMHead(nn.Module):
    """Masked next-token loss over supervised tokens; metrics: token accuracy (`acc`: share of
    supervised next tokens ranked first) and perplexity."""

    peft_task_type = "CAUSAL_LM"

    def __init__(self, hidden_size: int, label_names: Sequence[str] = (), loss_chunk_size: Optional[int] = None):
        super().__init__()  # no parameters of its own: the LM head belongs to the backbone
        if loss_chunk_size is not None and int(loss_chunk_size) < 1:
            raise ConfigError(f"model.loss_chunk_size={loss_chunk_size} must be a positive number of tokens (or null)")
        self.loss_chunk_size = int(loss_chunk_size) if loss_chunk_size else None

    def features(self, backbone: nn.Module, batch: dict) -> dict:
        """Hidden states of the decoder, projected to the vocabulary at supervised positions only
        (chunked: the hidden states and the LM head, projected in loss())."""
        # No KV cache: with one, transformers skips the per-example mask of packed rows and lets
        # every token attend across example boundaries.
        hidden = backbone.get_decoder()(**decoder_inputs(batch), use_cache=False).last_hidden_state
        targets = batch["labels"][:, 1:]
        keep = targets != IGNORE
        selected = hidden[:, :-1][keep]
        if self.loss_chunk_size:
            return {"hidden": selected, "lm_head": backbone.get_output_embeddings(), "targets": targets[keep]}
        return {"logits": backbone.get_output_embeddings()(selected), "targets": targets[keep]}

    def forward(self, features: dict, batch: dict) -> dict:
        return features

    @staticmethod
    def _chunk_loss(lm_head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = lm_head(hidden).float()
        with torch.no_grad():
            correct = (logits.argmax(-1) == targets).sum()
        return F.cross_entropy(logits, targets, reduction="sum"), correct

    def _chunked_sums(self, outputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed token loss, correct top-1 count) over chunks; kept in `outputs` for the metrics."""
        if "loss_sum" not in outputs:
            hidden, targets, lm_head = outputs["hidden"], outputs["targets"], outputs["lm_head"]
            total = hidden.sum().float() * 0.0  # in the graph even without a supervised token, as the unchunked loss is
            correct = torch.zeros((), dtype=torch.long, device=hidden.device)
            for start in range(0, len(targets), self.loss_chunk_size):
                end = start + self.loss_chunk_size
                args = (lm_head, hidden[start:end], targets[start:end])
                if torch.is_grad_enabled():
                    chunk_total, chunk_correct = checkpoint(self._chunk_loss, *args, use_reentrant=False)
                else:
                    chunk_total, chunk_correct = self._chunk_loss(*args)
                total, correct = total + chunk_total, correct + chunk_correct
            outputs["loss_sum"], outputs["correct"] = total, correct
        return outputs["loss_sum"], outputs["correct"]

    def loss(self, outputs: dict, batch: dict) -> torch.Tensor:
        if "hidden" in outputs:
            total = self._chunked_sums(outputs)[0]
        else:
            total = F.cross_entropy(outputs["logits"].float(), outputs["targets"], reduction="sum")
        denominator = batch.get("loss_denominator")
        if denominator is None:
            return total / max(outputs["targets"].numel(), 1)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # DDP averages gradients over ranks; the step's mean must be over every rank's tokens.
            denominator = denominator.to(total.device).clone()
            torch.distributed.all_reduce(denominator)
            denominator = denominator / torch.distributed.get_world_size()
        return total / denominator

    def make_metrics(self, prefix: str, final: bool = False) -> MetricCollection:
        return MetricCollection({"acc": MeanMetric(), "token_loss": MeanMetric()}, prefix=prefix)

    def update_metrics(self, metrics: MetricCollection, outputs: dict, batch: dict) -> None:
        if outputs["targets"].numel() == 0:
            return
        if "hidden" in outputs:  # chunked: the sums taken inside the chunks, weighted by the token count
            with torch.no_grad():
                total, correct = self._chunked_sums(outputs)
            n = outputs["targets"].numel()
            metrics[f"{metrics.prefix}acc"].update(correct.float() / n, weight=n)
            metrics[f"{metrics.prefix}token_loss"].update(total.detach() / n, weight=n)
            return
        logits = outputs["logits"].detach().float()
        metrics[f"{metrics.prefix}acc"].update((logits.argmax(-1) == outputs["targets"]).float())
        metrics[f"{metrics.prefix}token_loss"].update(F.cross_entropy(logits, outputs["targets"], reduction="none"))

    def flatten_metrics(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        flat = dict(values)
        for name, value in values.items():
            if name.endswith("token_loss"):
                flat[name[: -len("token_loss")] + "perplexity"] = torch.exp(value)
        return flat

    def predict(self, outputs: dict) -> dict[str, torch.Tensor]:
        if "hidden" in outputs:
            prediction = torch.cat([outputs["lm_head"](chunk).argmax(-1)
                                    for chunk in outputs["hidden"].split(self.loss_chunk_size)]) \
                if len(outputs["targets"]) else outputs["targets"].clone()
            return {"prediction": prediction, "targets": outputs["targets"]}
        return {"prediction": outputs["logits"].argmax(-1), "targets": outputs["targets"]}


def apply_lora(backbone: nn.Module, lora: dict, task_type: Optional[str] = None) -> nn.Module:
    """Wrap the backbone with peft LoRA adapters; only adapter weights stay trainable."""
    from peft import LoraConfig, get_peft_model

    options = dict(lora)
    target_modules = options.pop("target_modules", "all-linear")
    if not isinstance(target_modules, str):
        target_modules = list(target_modules)
    config = LoraConfig(r=int(options.pop("r", 8)), lora_alpha=int(options.pop("alpha", 16)),
                        lora_dropout=float(options.pop("dropout", 0.0)), target_modules=target_modules,
                        task_type=task_type, **options)
    return get_peft_model(backbone, config)
