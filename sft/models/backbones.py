"""Loading pretrained backbones: a catalog name, a local folder or a hub id, one code path."""

from __future__ import annotations

import torch.nn as nn

from sft import assets


def load_text_encoder(pretrained: str, trust_remote_code: bool = False, load_weights: bool = True,
                      attn_implementation: str | None = None) -> nn.Module:
    """A transformers encoder without its task head; `load_weights=False` builds it from the config
    alone (used when a checkpoint's weights will overwrite it anyway)."""
    from transformers import AutoConfig, AutoModel

    path = assets.resolve_pretrained(pretrained)
    kwargs = {"trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if load_weights:
        model = AutoModel.from_pretrained(path, **kwargs)
    else:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModel.from_config(config, **kwargs)
    # BERT-style poolers are unused by our heads; dropping them avoids unused-parameter errors under DDP.
    if getattr(model, "pooler", None) is not None:
        model.pooler = None
    return model


def _load_causal_lm(*args, **kwargs) -> nn.Module:
    from sft.models.causal_lm import load_causal_lm

    return load_causal_lm(*args, **kwargs)


# The loader of each backbone modality (model.modality), all with the signature of load_text_encoder.
BACKBONES = {
    "text": load_text_encoder,
    "causal_lm": _load_causal_lm,
}
