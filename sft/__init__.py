"""sft: supervised fine-tuning of pretrained models on PyTorch Lightning + Hydra."""

__version__ = "0.1.0"
