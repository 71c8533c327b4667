"""Batching of tokenized examples: pad to the longest in the batch, rounded up for tensor cores."""

from __future__ import annotations

import torch


class PaddingCollator:
    """Pads `input_ids` (and `token_type_ids` when present) and builds the attention mask.

    Built in plain torch so workers never need the tokenizer; rounding the padded length up to
    a multiple of 8 keeps matrix shapes friendly to tensor cores and bounds distinct shapes.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = 8):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of or 1

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(item["input_ids"]) for item in items)
        width = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(items), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(items), width), dtype=torch.long)
        has_types = "token_type_ids" in items[0]
        token_type_ids = torch.zeros((len(items), width), dtype=torch.long) if has_types else None
        for row, item in enumerate(items):
            n = len(item["input_ids"])
            input_ids[row, :n] = torch.as_tensor(item["input_ids"])
            attention_mask[row, :n] = 1
            if has_types:
                token_type_ids[row, :n] = torch.as_tensor(item["token_type_ids"])
        # num_tokens (non-pad) is a host int, for throughput logging without a device sync.
        batch = {"input_ids": input_ids, "attention_mask": attention_mask,
                 "num_tokens": sum(len(item["input_ids"]) for item in items)}
        if has_types:
            batch["token_type_ids"] = token_type_ids
        if "labels" in items[0]:
            batch["labels"] = torch.as_tensor([item["labels"] for item in items])
        return batch
