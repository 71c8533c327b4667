"""A tiny Llama-shaped causal LM and a byte-level BPE tokenizer with a ChatML template, made
locally (random init), plus generated chat data with a learnable answer."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Same turns, but the template forgets the end-of-turn token after assistant messages.
CHATML_WITHOUT_EOS = CHATML.replace(
    "message['content'] + '<|im_end|>' + '\\n'",
    "message['content'] + ('' if message['role'] == 'assistant' else '<|im_end|>') + '\\n'")

COLOURS = ["red", "green", "blue", "yellow"]
WORDS = ["apple", "river", "stone", "cloud", "tree", "house", "bird", "lamp", "road", "book"]


def colour_question(rng: random.Random) -> tuple[str, str]:
    """The answer is the colour named in the question: learnable by a tiny model in a few steps."""
    colour = rng.choice(COLOURS)
    words = rng.sample(WORDS, 3)
    return f"the {words[0]} near the {words[1]} is {colour} . what colour ?", colour


def write_chat_jsonl(path: Path, rows: int, seed: int = 0, shape: str = "messages") -> Path:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(rows):
            question, answer = colour_question(rng)
            if shape == "messages":
                record = {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}
            elif shape == "prompt_completion":
                record = {"prompt": question, "completion": answer}
            elif shape == "alpaca":
                record = {"instruction": "answer the question", "input": question, "output": answer}
            else:
                record = {"text": f"{question} {answer}"}
            f.write(json.dumps(record) + "\n")
    return path


def make_tokenizer(folder: Path, pad_is_eos: bool = False, template: str = CHATML):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [" ".join(WORDS + COLOURS), "system user assistant what colour is the near ? . answer question",
              "hello there how are you today fine thanks"] * 20
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|im_end|>",
                                        pad_token="<|im_end|>" if pad_is_eos else "<|pad|>",
                                        unk_token="<|endoftext|>")
    tokenizer.chat_template = template
    tokenizer.save_pretrained(folder)
    return tokenizer


def make_tiny_llama(folder: Path, vocab_size: int, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, bos_token_id=0, eos_token_id=2, pad_token_id=3)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    return model


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("tiny_llama")
    tokenizer = make_tokenizer(folder)
    make_tiny_llama(folder, len(tokenizer))
    return str(folder)


@pytest.fixture(scope="session")
def chat_jsonl(tmp_path_factory) -> Path:
    return write_chat_jsonl(tmp_path_factory.mktemp("chat") / "chat.jsonl", rows=200)


def chat_overrides(model_dir: str, train_file: Path, extra: list[str] | None = None) -> list[str]:
    return [
        "data=chat",
        "model=causal_lm",
        f"data.train_file={train_file}",
        f"model.pretrained={model_dir}",
        "data.batch_size=8",
        "data.eval_batch_size=16",
        "data.max_length=64",
        "trainer.accelerator=cpu",
        "trainer.val_check_interval=1.0",
        "trainer.log_every_n_steps=1",
        "trainer.num_sanity_val_steps=0",
        "optimizer.lr=1e-2",
        "extras.print_config=false",
        "callbacks.progress_bar.refresh_rate=0",
    ] + (extra or [])
