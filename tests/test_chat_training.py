"""causal_lm training on a tiny Llama: packing, loss normalization, LoRA, export, end to end."""

from __future__ import annotations

import json
import random
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from sft.cli import evaluate, train
from sft.data.datamodule import SFTDataModule
from sft.data.packing import CausalLMCollator
from sft.models.module import SFTModule
from tests.chat_fixtures import COLOURS, chat_jsonl, chat_overrides, tiny_llama_dir  # noqa: F401
from tests.conftest import compose_config


def varied_jsonl(path: Path, rows: int = 16, seed: int = 1) -> Path:
    """Answers of 1..6 words, so micro-batches hold very different numbers of supervised tokens."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(rows):
            answer = " ".join(rng.choice(COLOURS) for _ in range(1 + i % 6))
            f.write(json.dumps({"prompt": f"name {1 + i % 6} colours", "completion": answer}) + "\n")
    return path


def datamodule(model_dir: str, path: Path, **options) -> SFTDataModule:
    options = {"max_length": 64, "val_fraction": 0.1, "test_fraction": 0.1, "split_seed": 0, **options}
    return SFTDataModule(task="causal_lm", tokenizer=model_dir, train_file=str(path), **options)


def module(model_dir: str, **options) -> SFTModule:
    return SFTModule(task="causal_lm", label_names=[], pretrained=model_dir, modality="causal_lm", **options)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_rows_keep_attention_inside_each_example(tiny_llama_dir, tmp_path, attn):  # noqa: F811
    """The module's training forward on a packed row [A, B]: B's logits equal B alone, and do not
    move when A's tokens change."""
    dm = datamodule(tiny_llama_dir, varied_jsonl(tmp_path / "d.jsonl"))
    examples = dm.encoded("train").examples
    first, second = examples[0], examples[1]
    m = module(tiny_llama_dir, attn_implementation=attn)  # train mode, as in training
    collate = CausalLMCollator(dm.tokenizer.pad_token_id, 8)

    def second_logits(first_ids: list[int]) -> torch.Tensor:
        quiet_first = {"input_ids": first_ids, "labels": [-100] * len(first_ids)}
        row = {key: quiet_first[key] + second[key] for key in ("input_ids", "labels")}
        row["position_ids"] = list(range(len(first_ids))) + list(range(len(second["input_ids"])))
        batch = collate([row])
        assert "attention_mask" not in batch  # position ids alone delimit the examples
        with torch.no_grad():
            return m(batch)["logits"]  # at B's supervised positions only

    with torch.no_grad():
        alone = m(collate([second]))["logits"]
    packed = second_logits(first["input_ids"])
    perturbed = second_logits([(t + 7) % len(dm.tokenizer) for t in first["input_ids"]])
    assert alone.shape[0] > 0
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(perturbed, packed, atol=1e-5, rtol=1e-5)


def test_packed_loss_equals_unpacked_loss(tiny_llama_dir, tmp_path):  # noqa: F811
    dm = datamodule(tiny_llama_dir, varied_jsonl(tmp_path / "d.jsonl", rows=24), packing=True)
    dm.setup("fit")
    unpacked, _ = dm.processor.encode(dm.tables()["train"])
    packed = dm.encoded("train").examples
    assert len(packed) < len(unpacked)  # packing did combine examples
    assert sum(r["documents"] for r in packed) == len(unpacked)
    m = module(tiny_llama_dir).eval()
    collate = CausalLMCollator(dm.tokenizer.pad_token_id, 8)
    with torch.no_grad():
        loss_unpacked = m.head.loss(m(collate(unpacked)), collate(unpacked))
        loss_packed = m.head.loss(m(collate(packed)), collate(packed))
    torch.testing.assert_close(loss_packed, loss_unpacked, atol=1e-5, rtol=1e-5)


def _one_step_update(model_dir: str, path: Path, batch_size: int, accumulate: int,
                     streaming: bool = False) -> dict[str, torch.Tensor]:
    """Parameters after one SGD step (lr 1, no momentum): minus the step's gradient."""
    from functools import partial

    L.seed_everything(0)
    split = dict(streaming=True, val_file=str(path), test_file=str(path)) if streaming else \
        dict(val_fraction=0.05, test_fraction=0.05)
    dm = datamodule(model_dir, path, batch_size=batch_size, **split)
    m = module(model_dir, optimizer=partial(torch.optim.SGD, lr=1.0))
    before = {k: v.detach().clone() for k, v in m.backbone.named_parameters()}
    counts = []

    class Record(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            counts.append(int((batch["labels"][:, 1:] != -100).sum()))

    trainer = L.Trainer(max_steps=1, accumulate_grad_batches=accumulate, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        accelerator="cpu", callbacks=[Record()])
    trainer.fit(m, datamodule=dm)
    assert len(counts) == accumulate
    return {k: before[k] - v.detach() for k, v in m.backbone.named_parameters()}, counts


@pytest.mark.parametrize("streaming", [False, True])
def test_gradient_is_the_same_for_accumulation_and_one_big_batch(tiny_llama_dir, tmp_path, streaming):  # noqa: F811
    path = varied_jsonl(tmp_path / "d.jsonl", rows=40)
    big, _ = _one_step_update(tiny_llama_dir, path, batch_size=8, accumulate=1, streaming=streaming)
    accumulated, counts = _one_step_update(tiny_llama_dir, path, batch_size=2, accumulate=4, streaming=streaming)
    assert len(set(counts)) > 1  # micro-batches of unequal token counts: a per-micro-batch mean would differ
    for name in big:
        torch.testing.assert_close(accumulated[name], big[name], atol=1e-6, rtol=1e-4, msg=name)
    assert any(g.abs().sum() > 0 for g in big.values())


class RecordLoss(Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


@pytest.fixture(scope="module")
def full_run(tiny_llama_dir, chat_jsonl, tmp_path_factory):  # noqa: F811
    run_dir = tmp_path_factory.mktemp("chat_full") / "run"
    cfg = compose_config("train", chat_overrides(tiny_llama_dir, chat_jsonl, [
        "trainer.max_epochs=5", "callbacks=chat", "callbacks.generate.max_new_tokens=4"]), run_dir)
    record = RecordLoss()
    metrics = train(cfg, extra_callbacks=[record])
    return run_dir, metrics, record.losses


def test_full_fine_tuning_learns_and_generates(full_run):
    run_dir, metrics, losses = full_run
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    written = json.loads((run_dir / "metrics.json").read_text())
    assert written["baseline/exact_match"] <= 0.25  # random init: it cannot name the colour
    assert written["test/exact_match"] >= 0.9 and written["val/exact_match"] >= 0.9
    for key in ("val/acc", "val/perplexity", "test/loss", "train/loss"):
        assert key in written


def test_checkpoint_records_template_and_export_renders_the_same_ids(full_run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.chat_fixtures import CHATML

    run_dir, _, _ = full_run
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["SFTDataModule"]["processor"]
    assert state["chat_template"] == CHATML and state["end_of_turn_token"] == "<|im_end|>"
    export, predictions = tmp_path / "export", tmp_path / "answers.jsonl"
    cfg = compose_config("eval", [f"ckpt_path={ckpt}", f"export_dir={export}", "trainer.accelerator=cpu",
                                  "extras.print_config=false", "callbacks=generate", f"predictions_file={predictions}",
                                  "max_new_tokens=8", "callbacks.generate.max_new_tokens=8"], tmp_path / "eval")
    metrics = evaluate(cfg)
    assert metrics["test/exact_match"] >= 0.9
    # predictions_file: every test conversation with its greedy answer, scored as the callback scores it.
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert len(rows) == 20 and all(row["prompt"].endswith("<|im_start|>assistant\n") for row in rows)
    assert metrics["test/generated_exact_match"] == pytest.approx(metrics["test/exact_match"])
    assert sum(row["exact_match"] for row in rows) == round(20 * metrics["test/exact_match"])
    assert all(row["exact_match"] == (row["prediction"] == row["reference"]) for row in rows)
    model = AutoModelForCausalLM.from_pretrained(export)
    tokenizer = AutoTokenizer.from_pretrained(export)
    messages = [{"role": "user", "content": "the tree near the lamp is blue . what colour ?"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip() == "blue"
    assert out[0, -1].item() == tokenizer.convert_tokens_to_ids("<|im_end|>")  # stops at the end of its turn


def test_lora_trains_only_adapters_and_merged_export_generates_the_same(tiny_llama_dir, chat_jsonl, tmp_path):  # noqa: F811
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    run_dir = tmp_path / "lora"
    cfg = compose_config("train", chat_overrides(tiny_llama_dir, chat_jsonl, [
        "model/peft=lora", "model.lora.r=8", "model.lora.dropout=0.0", "trainer.max_epochs=2", "optimizer.lr=2e-2",
        "data.packing=true"]), run_dir)
    train(cfg)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert saved["adapter_only"] and saved["state_dict"]
    assert all("lora_" in k for k in saved["state_dict"])  # only adapters are saved

    trained = SFTModule.load_from_checkpoint(ckpt, map_location="cpu").eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    base_weights = dict(base.named_parameters())
    changed_adapters = 0
    for name, param in trained.backbone.named_parameters():
        if "lora_" in name:
            assert param.requires_grad
            changed_adapters += int("lora_B" in name and param.abs().sum() > 0)  # lora_B starts at zero
        else:
            assert not param.requires_grad
            plain = name.replace("base_model.model.", "").replace(".base_layer", "")
            torch.testing.assert_close(param, base_weights[plain], msg=name)  # the base never moves
    assert changed_adapters > 0

    export = tmp_path / "export"
    cfg = compose_config("eval", [f"ckpt_path={ckpt}", f"export_dir={export}", "trainer.accelerator=cpu",
                                  "extras.print_config=false"], tmp_path / "eval")
    evaluate(cfg)
    assert (export / "adapter" / "adapter_model.safetensors").is_file()
    assert all("lora_" in k for k in load_file(export / "adapter" / "adapter_model.safetensors"))
    merged = AutoModelForCausalLM.from_pretrained(export).eval()
    prompts = torch.tensor([[1, 40, 41, 42, 43, 44, 2, 1, 50]])
    with torch.no_grad():
        ours = trained.backbone.generate(input_ids=prompts, max_new_tokens=8, do_sample=False, min_new_tokens=8)
        theirs = merged.generate(input_ids=prompts, max_new_tokens=8, do_sample=False, min_new_tokens=8)
    assert ours.tolist() == theirs.tolist()


def test_gradient_checkpointing_gives_the_same_gradient(tiny_llama_dir, tmp_path):  # noqa: F811
    dm = datamodule(tiny_llama_dir, varied_jsonl(tmp_path / "d.jsonl"))
    batch = CausalLMCollator(dm.tokenizer.pad_token_id, 8)(dm.encoded("train").examples[:6])
    grads = []
    for checkpointing in (False, True):
        m = module(tiny_llama_dir, gradient_checkpointing=checkpointing)
        assert m.backbone.is_gradient_checkpointing == checkpointing
        m.head.loss(m(batch), batch).backward()
        grads.append({k: p.grad for k, p in m.backbone.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], msg=name)


def test_validation_loss_is_the_mean_over_supervised_tokens(tiny_llama_dir, tmp_path):  # noqa: F811
    """val/loss (the default causal_lm monitor) is the token mean over the split, not a mean of batch
    means: batches with different supervised-token counts weigh by their tokens."""
    dm = datamodule(tiny_llama_dir, varied_jsonl(tmp_path / "d.jsonl", rows=40), val_fraction=0.25, eval_batch_size=3)
    m = module(tiny_llama_dir)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    logged = trainer.validate(m, datamodule=dm, verbose=False)[0]["val/loss"]
    total = tokens = 0
    batch_means = []
    m.eval()
    with torch.no_grad():
        for batch in dm.val_dataloader():
            outputs = m(batch)
            n = outputs["targets"].numel()
            loss = torch.nn.functional.cross_entropy(outputs["logits"].float(), outputs["targets"], reduction="sum")
            total, tokens = total + float(loss), tokens + n
            batch_means.append(float(loss) / n)
    assert len(batch_means) > 1
    assert logged == pytest.approx(total / tokens, rel=1e-5)
    assert abs(total / tokens - sum(batch_means) / len(batch_means)) > 1e-4  # the two means differ on this data
