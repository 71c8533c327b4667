"""Chunked LM-head cross-entropy (model.loss_chunk_size): the same loss, gradients and metrics as
the one-piece loss, without building all supervised tokens' logits at once."""

from __future__ import annotations

import pytest
import torch

from sft.models.causal_lm import CausalLMHead
from tests.chat_fixtures import chat_jsonl, make_tiny_llama, tiny_llama_dir  # noqa: F401


def batch_of(vocab: int, rows: int = 3, width: int = 20) -> dict:
    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, vocab, (rows, width), generator=g)
    labels = input_ids.clone()
    labels[:, :6] = -100  # a prompt
    labels[1, 15:] = -100  # padding
    return {"input_ids": input_ids, "labels": labels, "loss_denominator": torch.tensor(17.0)}


def loss_and_grads(model, head, batch):
    model.zero_grad(set_to_none=True)
    outputs = head(head.features(model, batch), batch)
    loss = head.loss(outputs, batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, outputs


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_chunked_loss_and_gradients_equal_the_unchunked(tmp_path, chunk):
    model = make_tiny_llama(tmp_path, vocab_size=97).train()
    batch = batch_of(97)
    plain = CausalLMHead(32)
    chunked = CausalLMHead(32, loss_chunk_size=chunk)
    loss, grads, plain_out = loss_and_grads(model, plain, batch)
    chunked_loss, chunked_grads, chunked_out = loss_and_grads(model, chunked, batch)
    assert "logits" not in chunked_out  # the full logits were never built
    torch.testing.assert_close(chunked_loss, loss)
    assert grads.keys() == chunked_grads.keys() and "model.embed_tokens.weight" in grads  # tied: the LM head too
    for name in grads:
        torch.testing.assert_close(chunked_grads[name], grads[name], rtol=1e-4, atol=1e-6, msg=name)
    # metrics from inside the chunks equal those from the full logits
    values = []
    for head, out in ((plain, plain_out), (chunked, chunked_out)):
        metrics = head.make_metrics("train/")
        head.update_metrics(metrics, out, batch)
        values.append({k: float(v) for k, v in metrics.compute().items()})
    assert values[0].keys() == values[1].keys()
    for key in values[0]:
        assert values[1][key] == pytest.approx(values[0][key], rel=1e-5), key
    # predictions too
    torch.testing.assert_close(chunked.predict(chunked_out)["prediction"], plain.predict(plain_out)["prediction"])


def test_chunked_loss_without_supervised_tokens_still_backpropagates(tmp_path):
    model = make_tiny_llama(tmp_path, vocab_size=97).train()
    batch = batch_of(97)
    batch["labels"][:] = -100
    loss, _, _ = loss_and_grads(model, CausalLMHead(32, loss_chunk_size=4), batch)
    assert float(loss) == 0.0


def test_loss_chunk_size_must_be_positive():
    with pytest.raises(ValueError, match="loss_chunk_size"):
        CausalLMHead(32, loss_chunk_size=0)


def test_config_option_trains_packed_rows_through_lightning(tiny_llama_dir, chat_jsonl):  # noqa: F811
    """model.loss_chunk_size reaches the head through SFTModule; packed training and validation
    run and report the head's metrics."""
    import lightning as L
    from functools import partial

    from sft.data.datamodule import SFTDataModule
    from sft.models.module import SFTModule

    dm = SFTDataModule(task="causal_lm", tokenizer=tiny_llama_dir, train_file=str(chat_jsonl), max_length=64,
                       batch_size=4, packing=True, audit_examples=0)
    m = SFTModule(task="causal_lm", label_names=[], pretrained=tiny_llama_dir, modality="causal_lm",
                  optimizer=partial(torch.optim.AdamW, lr=1e-3), loss_chunk_size=16)
    assert m.head.loss_chunk_size == 16
    trainer = L.Trainer(accelerator="cpu", max_steps=3, limit_val_batches=2, num_sanity_val_steps=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(m, datamodule=dm)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    trainer.validate(m, datamodule=dm, verbose=False)
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["val/loss"]) and 0 <= float(metrics["val/acc"]) <= 1
    assert float(metrics["val/perplexity"]) == pytest.approx(float(torch.exp(metrics["val/token_loss"])), rel=1e-4)
