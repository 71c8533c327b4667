from sft.models.module import SFTModule

__all__ = ["SFTModule"]
