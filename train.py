"""Fine-tune a pretrained model: `python train.py [overrides]` (see README.md)."""

from sft.cli import train_main

if __name__ == "__main__":
    train_main()
