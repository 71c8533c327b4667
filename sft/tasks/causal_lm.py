"""Chat / instruction SFT of a causal LM: masked next-token loss on the assistant turns."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Literal, Optional

from sft.errors import ConfigError
from sft.options import option
from sft.tasks import register_task
from sft.tasks.base import Task

log = logging.getLogger(__name__)


@dataclass
class ChatDataOptions:
    format: Optional[Literal["messages", "prompt_completion", "alpaca", "text"]] = option(
        None, "record shape; null: detect from the first record")
    chat_template: Optional[str] = option(None, "a Jinja template string or file; null: the tokenizer's own")
    train_on_prompt: bool = option(False, "supervise every token, not only the assistant turns")
    end_of_turn_token: Optional[str] = option(None, "the token that ends an assistant turn (null: the tokenizer's EOS)")
    truncation: Literal["keep_start", "drop", "error"] = option("keep_start", "what to do with examples over max_length")
    packing: bool = option(False, "pack training examples into rows of max_length (no attention across examples)")
    audit_examples: int = option(2, "rendered examples per split printed with supervised spans marked", min=0)
    allow_empty_turns: bool = option(False, "keep assistant turns with empty content (counted in the audit)")


@dataclass
class CausalLMHeadOptions:
    loss_chunk_size: Optional[int] = option(None, "LM head + loss over chunks of this many tokens (null: one piece)", min=1)


@register_task
class CausalLM(Task):
    name = "causal_lm"
    modality = "causal_lm"
    monitor = ("val/loss", "min")
    DataOptions = ChatDataOptions
    HeadOptions = CausalLMHeadOptions

    def make_processor(self, settings, options, tokenizer):
        from sft.data.chat import ChatProcessor
        from sft.options import as_dict

        return ChatProcessor(tokenizer, max_length=settings["max_length"], **as_dict(options))

    def make_head(self, hidden_size, label_names, options, learned):
        from sft.models.causal_lm import CausalLMHead

        return CausalLMHead(hidden_size, label_names, options.loss_chunk_size)

    def write_predictions(self, trainer, module, datamodule, path, max_new_tokens=128):
        """One JSON line per test conversation: the prompt (rendered with the chat template up to the
        last assistant turn), the reference answer, the greedy answer and whether they match."""
        from sft.callbacks.generate import greedy_answers, is_match

        processor = datamodule.processor
        examples = processor.generation_examples(datamodule.tables()["test"], len(datamodule.tables()["test"]))
        if not examples:
            raise ConfigError("predictions_file: the test records are plain text, with no assistant turn to answer")
        backbone = module.backbone.to(trainer.strategy.root_device)
        answers = greedy_answers(backbone, [e["prompt_ids"] for e in examples], processor.tokenizer.pad_token_id,
                                 processor.end_of_turn_id, max_new_tokens, processor.tokenizer)
        path.parent.mkdir(parents=True, exist_ok=True)
        matches = 0
        with open(path, "w", encoding="utf-8") as f:
            for example, answer in zip(examples, answers):
                match = is_match(answer, example["reference"])
                matches += match
                f.write(json.dumps({"source": example["where"], "prompt": example["prompt"],
                                    "reference": example["reference"], "prediction": answer, "exact_match": match},
                                   ensure_ascii=False) + "\n")
        log.info("Wrote %d generated answers to %s", len(examples), path)
        return {"test/generated_exact_match": matches / len(examples)}

    def export(self, module, datamodule, out_dir, request=None):
        from sft.export import export_causal_lm
        from sft.export.formats import causal_lm_card

        tokenizer, eot = datamodule.tokenizer, datamodule.processor.end_of_turn_token
        export_causal_lm(module, tokenizer, out_dir, end_of_turn_token=eot)
        causal_lm_card(module, datamodule, out_dir, request, adapter=False)
        if module.hparams.get("lora"):
            export_causal_lm(module, tokenizer, out_dir / "adapter", adapter_only=True)
            causal_lm_card(module, datamodule, out_dir / "adapter", request, adapter=True)
        if request and request.onnx:
            log.warning("export_onnx: causal_lm exports have no model.onnx (encoder and image tasks only)")
