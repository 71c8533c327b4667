"""sft: supervised fine-tuning of pretrained models on PyTorch Lightning + Hydra."""

import time

__version__ = "0.1.0"
IMPORTED_AT = time.time()  # the start of a launch's clock where the OS does not give the process's own
