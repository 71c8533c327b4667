"""Training throughput of causal-LM SFT with and without packing, through sft's own data module
and module (real tokens per second: padding not counted).

    python bench/causal_lm_packing.py --model smollm2-135m-instruct --steps 5 --rows 8
"""

from __future__ import annotations

import argparse
import time

import torch

from sft.data.datamodule import SFTDataModule
from sft.models.module import SFTModule


def run(model: str, dataset: str, packing: bool, rows: int, steps: int, max_length: int, device: str,
        precision: str) -> dict:
    dm = SFTDataModule(task="causal_lm", tokenizer=model, dataset=dataset, max_length=max_length,
                       batch_size=rows, packing=packing, audit_examples=0)
    dm.setup("fit")
    loader = dm.train_dataloader()
    module = SFTModule(task="causal_lm", label_names=[], pretrained=model, modality="causal_lm").to(device)
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-5)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16")
    batches = iter(loader)
    real_tokens, elapsed = 0, 0.0
    for step in range(steps + 1):  # the first step warms up and is not timed
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in next(batches).items()}
        start = time.perf_counter()
        with autocast:
            loss = module.head.loss(module(batch), batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if step:
            elapsed += time.perf_counter() - start
            real_tokens += int(batch["num_tokens"])
    return {"packing": packing, "rows": rows, "steps": steps, "tokens_per_s": round(real_tokens / elapsed, 1),
            "real_tokens": real_tokens, "seconds": round(elapsed, 2)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--dataset", default="rotten_tomatoes_instruct")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="32", choices=["32", "bf16"])
    args = parser.parse_args()
    for packing in (False, True):
        print(run(args.model, args.dataset, packing, args.rows, args.steps, args.max_length, args.device, args.precision))
