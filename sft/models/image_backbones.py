"""Image backbones: timm models by name, local weights files, catalog weights, Hugging Face vision models.

Every backbone becomes an `ImageBackbone`: pixels (B, C, H, W) in, pooled features (B, D) out,
so the task head on top is the same whatever the family. `image_data_config` reads the input
size and normalization a backbone was pretrained with, without building or loading it, so the
data module can prepare images to match.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn

from sft import assets
from sft.tasks import ConfigError

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")


# -- catalog weights ---------------------------------------------------------------------------
def efficientnet_pytorch_to_timm(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename an `efficientnet_pytorch` state dict (`_conv_stem`, flat `_blocks.N`, `_fc`) onto timm's
    EfficientNet (`conv_stem`, `blocks.STAGE.INDEX`, `classifier`). timm nests blocks by stage; the
    flat index N is the N-th block in stage order. A block without `_expand_conv` is timm's
    depthwise-separable block, whose layer names differ from the inverted-residual one."""
    positions = [f"blocks.{s}.{i}" for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    separable = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2",
                 "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand"}
    inverted = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                "_project_conv": "conv_pwl", "_bn2": "bn3",
                "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand"}
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    expands = {int(m.group(1)) for k in state if (m := re.match(r"_blocks\.(\d+)\._expand_conv\.", k))}
    renamed = {}
    for key, value in state.items():
        block = re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
        if block:
            index, layer, rest = int(block.group(1)), block.group(2), block.group(3)
            if index >= len(positions):
                raise ConfigError(f"{key}: block {index}, but the timm model has {len(positions)} blocks")
            names = inverted if index in expands else separable
            renamed[f"{positions[index]}.{names[layer]}.{rest}"] = value
        else:
            layer, _, rest = key.partition(".")
            renamed[f"{top[layer]}.{rest}"] = value
    return renamed


# catalog name -> (timm architecture, converter of the catalog state dict onto it)
CATALOG_TIMM = {"efficientnet-lite0": ("tf_efficientnet_lite0", efficientnet_pytorch_to_timm)}


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state_dict"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def load_state_into(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load strictly, except for the classifier of a model built without one (num_classes=0)."""
    own = model.state_dict()
    classifier = model.pretrained_cfg.get("classifier") if hasattr(model, "pretrained_cfg") else None
    if classifier and model.num_classes == 0:
        prefixes = classifier if isinstance(classifier, (list, tuple)) else [classifier]
        state = {k: v for k, v in state.items() if not any(k.startswith(p + ".") for p in prefixes)}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise ConfigError(
            f"{source}: weights do not fit model.architecture={model.pretrained_cfg.get('architecture')!r}: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}), "
            f"{len(wrong)} of another shape (e.g. {wrong[:3]}). Is model.architecture the one the file was saved from?")
    model.load_state_dict(state)


def timm_from_catalog(name: str, num_classes: int = 0, load_weights: bool = True, **options) -> nn.Module:
    """A timm model holding catalog weights; num_classes=1000 keeps the ImageNet classifier."""
    import timm

    architecture, convert = CATALOG_TIMM[name]
    model = timm.create_model(architecture, pretrained=False, num_classes=num_classes, **options)
    if load_weights:
        path = assets.fetch(name)
        load_state_into(model, convert(read_state_dict(path), model), f"catalog model {name} ({path})")
    return model


# -- the backbone -------------------------------------------------------------------------------
def _kind(pretrained: Optional[str], architecture: Optional[str]) -> str:
    """timm, timm_file, catalog or hf: which loading path `model.pretrained` takes."""
    if pretrained is None:
        if not architecture:
            raise ConfigError("model.pretrained=null (random init) needs model.architecture=<a timm model name>")
        return "timm"
    if pretrained.startswith("timm/"):
        return "timm"
    path = Path(pretrained)
    if path.is_file() and path.suffix in WEIGHT_SUFFIXES:
        if not architecture:
            raise ConfigError(f"model.pretrained={pretrained} is a weights file: set model.architecture to the timm "
                              f"model it was saved from (e.g. resnet50)")
        return "timm_file"
    if path.exists():
        if not (path / "config.json").is_file():
            raise ConfigError(f"model.pretrained={pretrained}: a folder without config.json; expected a Hugging Face "
                              f"model folder (save_pretrained) or a weights file ({', '.join(WEIGHT_SUFFIXES)})")
        return "hf"
    if pretrained in CATALOG_TIMM:
        return "catalog"
    return "hf"  # a hub id


def _timm_name(pretrained: Optional[str], architecture: Optional[str]) -> str:
    if pretrained and pretrained.startswith("timm/"):
        return pretrained[len("timm/"):]
    return architecture


class ImageBackbone(nn.Module):
    """Pixels in, one feature vector per image out. `num_features` is the vector's width."""

    def __init__(self, model: nn.Module, family: str, num_features: int, channels_last: bool = False):
        super().__init__()
        self.model = model
        self.family = family
        self.num_features = num_features
        self.channels_last = channels_last
        if channels_last:
            self.model.to(memory_format=torch.channels_last)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        if self.family == "timm":
            return self.model(pixel_values)  # num_classes=0: the pooled features
        out = self.model(pixel_values=pixel_values)
        hidden = out.last_hidden_state
        if hidden.ndim == 3:  # transformers (ViT, DeiT, ...): the class token
            return hidden[:, 0]
        pooled = getattr(out, "pooler_output", None)  # CNNs (ConvNeXt, ResNet): their own pooling
        if pooled is not None:
            return pooled.flatten(1)
        return hidden.mean(dim=(-2, -1))

    def layer_ids(self) -> tuple[dict[str, int], int]:
        """Depth index of each parameter (0 = stem) for layer-wise learning-rate decay, and the count."""
        if self.family == "timm" and hasattr(self.model, "group_matcher"):
            from timm.models import group_parameters

            ids = group_parameters(self.model, self.model.group_matcher(coarse=False), reverse=True)
        else:
            from timm.optim import auto_group_layers

            ids = auto_group_layers(self.model)
        ids = {f"model.{name}": int(i) for name, i in ids.items()}
        return ids, max(ids.values()) + 1


def load_image_backbone(pretrained: Optional[str], architecture: Optional[str] = None, load_weights: bool = True,
                        channels_last: bool = False, options: Optional[dict] = None,
                        trust_remote_code: bool = False) -> ImageBackbone:
    """`pretrained`: `timm/NAME` (timm's pretrained weights), a weights file (with `architecture`),
    a catalog name (`efficientnet-lite0`), a Hugging Face folder or hub id, or None for a random
    init of `architecture`. `options` go to timm.create_model (drop_rate, drop_path_rate, ...)."""
    options = dict(options or {})
    kind = _kind(pretrained, architecture)
    if kind in ("timm", "timm_file", "catalog"):
        import timm

        if kind == "catalog":
            model = timm_from_catalog(pretrained, 0, load_weights, **options)
        else:
            name = _timm_name(pretrained, architecture)
            if not timm.is_model(name.split(".")[0]):
                raise ConfigError(f"{name!r} is not a timm model (model.pretrained/model.architecture); "
                                  f"timm.list_models('*pattern*') lists them")
            from_hub = kind == "timm" and pretrained is not None and load_weights
            model = timm.create_model(name, pretrained=from_hub, num_classes=0, **options)
            if kind == "timm_file" and load_weights:
                load_state_into(model, read_state_dict(pretrained), f"model.pretrained={pretrained}")
        return ImageBackbone(model, "timm", model.num_features, channels_last)

    from transformers import AutoConfig, AutoModel

    path = assets.resolve_pretrained(pretrained)
    if load_weights:
        model = AutoModel.from_pretrained(path, trust_remote_code=trust_remote_code, **options)
    else:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModel.from_config(config, trust_remote_code=trust_remote_code, **options)
    if getattr(model, "pooler", None) is not None and hasattr(model, "embeddings"):
        model.pooler = None  # ViT's tanh pooler is unused: the head reads the class token
    model.train()
    config = model.config
    width = getattr(config, "hidden_size", None) or config.hidden_sizes[-1]
    return ImageBackbone(model, "hf", int(width), channels_last)


# -- what the backbone expects of its input ------------------------------------------------------
def image_data_config(pretrained: Optional[str], architecture: Optional[str] = None) -> dict[str, Any]:
    """{channels, size, mean, std, interpolation, crop_pct} the backbone was pretrained with."""
    kind = _kind(pretrained, architecture)
    if kind in ("timm", "timm_file", "catalog"):
        import timm

        name = CATALOG_TIMM[pretrained][0] if kind == "catalog" else _timm_name(pretrained, architecture)
        cfg = timm.models.get_pretrained_cfg(name)
        if cfg is None:
            cfg = timm.create_model(name.split(".")[0], pretrained=False).pretrained_cfg
        else:
            cfg = cfg.to_dict()
        channels, height, _ = cfg["input_size"]
        return {"channels": channels, "size": height, "mean": list(cfg["mean"]), "std": list(cfg["std"]),
                "interpolation": cfg.get("interpolation", "bilinear"), "crop_pct": cfg.get("crop_pct", 0.875)}
    path = Path(assets.resolve_pretrained(pretrained))
    processor_file = path / "preprocessor_config.json"
    config_file = path / "config.json"
    if processor_file.is_file():
        proc = json.loads(processor_file.read_text())
    else:
        from transformers import AutoImageProcessor

        proc = AutoImageProcessor.from_pretrained(str(path)).to_dict()
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    size = proc.get("crop_size") or proc.get("size") or {}
    if isinstance(size, dict):
        size = size.get("height") or size.get("shortest_edge") or 224
    crop_pct = proc.get("crop_pct") or 1.0  # HF processors resize straight to size unless they crop
    resample = {0: "nearest", 2: "bilinear", 3: "bicubic"}.get(proc.get("resample", 2), "bilinear")
    return {"channels": config.get("num_channels", 3), "size": int(size),
            "mean": list(proc.get("image_mean", [0.5, 0.5, 0.5])), "std": list(proc.get("image_std", [0.5, 0.5, 0.5])),
            "interpolation": resample, "crop_pct": float(crop_pct)}


# -- layer-wise learning-rate decay -------------------------------------------------------------------
def layer_decay_groups(module: nn.Module, layer_decay: float, head_lr: Optional[float] = None) -> list[dict]:
    """Parameter groups where backbone layer i of n gets lr_scale = layer_decay ** (n - i) (the stem
    least, the last stage most, the head 1 or `head_lr`), and no weight decay on tensors of rank <= 1."""
    if not 0 < layer_decay <= 1:
        raise ConfigError(f"model.layer_decay={layer_decay} must be in (0, 1]")
    ids, layers = module.backbone.layer_ids()
    groups: dict[tuple, dict] = {}
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        decays = param.ndim > 1
        if name.startswith("head."):
            key = ("head", decays)
            extra = {"lr": head_lr} if head_lr is not None else {"lr_scale": 1.0}
        else:
            layer = ids.get(name[len("backbone."):], layers - 1)
            key = (f"layer_{layer}", decays)
            extra = {"lr_scale": layer_decay ** (layers - layer)}
        group = groups.setdefault(key, {"params": [], "name": key[0] + ("" if decays else "_no_decay"), **extra})
        if not decays:
            group["weight_decay"] = 0.0
        group["params"].append(param)
    if not groups:
        raise ConfigError("no trainable parameters: is the whole model frozen?")
    return list(groups.values())
