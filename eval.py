"""Evaluate a checkpoint: `python eval.py ckpt_path=RUN_DIR/checkpoints/best.ckpt` (see README.md)."""

from sft.cli import eval_main

if __name__ == "__main__":
    eval_main()
