"""Whisper from CTranslate2's `model.bin` (faster-whisper's format) into a plain transformers folder.

The file (little-endian): u32 version, the spec name (u16 length with its final NUL, then bytes),
u32 revision, u32 number of variables; per variable: its name (same string form), u8 rank,
rank x u32 dims, u8 dtype (0 float32, 1 int8, 2 int16, 3 int32, 4 float16), u32 byte count, the
bytes. Names are mapped one by one onto `WhisperForConditionalGeneration` (q, k and v are fused
along dim 0; HF Whisper has no bias on k_proj; the LM head is tied to the token embeddings), and
every key of the transformers model must be filled with none left over.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def _string(f: BinaryIO) -> str:
    (length,) = struct.unpack("<H", f.read(2))
    return f.read(length)[:-1].decode("utf-8")


def read_ct2(path: str | Path) -> dict[str, np.ndarray]:
    variables = {}
    with open(path, "rb") as f:
        struct.unpack("<I", f.read(4))
        _string(f)  # the spec name
        struct.unpack("<I", f.read(4))
        (count,) = struct.unpack("<I", f.read(4))
        for _ in range(count):
            name = _string(f)
            (rank,) = struct.unpack("<B", f.read(1))
            dims = struct.unpack(f"<{rank}I", f.read(4 * rank)) if rank else ()
            (dtype,) = struct.unpack("<B", f.read(1))
            (size,) = struct.unpack("<I", f.read(4))
            variables[name] = np.frombuffer(f.read(size), dtype=DTYPES[dtype]).reshape(dims)
    return variables


def _attention(out: dict, src: str, dst: str, v: dict, fused: str) -> None:
    """Self-attention (q, k, v fused in linear_0) or cross-attention (q in linear_0, k and v in linear_1)."""
    weight, bias = v[f"{src}/linear_0/weight"], v[f"{src}/linear_0/bias"]
    if fused == "qkv":
        for name, w, b in zip(("q", "k", "v"), np.split(weight, 3), np.split(bias, 3)):
            out[f"{dst}.{name}_proj.weight"] = w
            if name != "k":
                out[f"{dst}.{name}_proj.bias"] = b
        output = "linear_1"
    else:
        out[f"{dst}.q_proj.weight"], out[f"{dst}.q_proj.bias"] = weight, bias
        kw, vw = np.split(v[f"{src}/linear_1/weight"], 2)
        _, vb = np.split(v[f"{src}/linear_1/bias"], 2)
        out[f"{dst}.k_proj.weight"], out[f"{dst}.v_proj.weight"], out[f"{dst}.v_proj.bias"] = kw, vw, vb
        output = "linear_2"
    out[f"{dst}.out_proj.weight"], out[f"{dst}.out_proj.bias"] = v[f"{src}/{output}/weight"], v[f"{src}/{output}/bias"]


def to_transformers(v: dict[str, np.ndarray]) -> tuple[dict, dict[str, np.ndarray]]:
    """(WhisperConfig keyword arguments, state dict of WhisperForConditionalGeneration)."""
    out: dict[str, np.ndarray] = {}
    used_norm = {"gamma": "weight", "beta": "bias"}
    for side in ("encoder", "decoder"):
        layers = sorted({int(m.group(1)) for k in v if (m := re.match(rf"{side}/layer_(\d+)/", k))})
        for i in layers:
            src, dst = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            attention = "self_attention"
            _attention(out, f"{src}/{attention}", f"{dst}.self_attn", v, "qkv")
            for part in used_norm:
                out[f"{dst}.self_attn_layer_norm.{used_norm[part]}"] = v[f"{src}/{attention}/layer_norm/{part}"]
                out[f"{dst}.final_layer_norm.{used_norm[part]}"] = v[f"{src}/ffn/layer_norm/{part}"]
            for j in (0, 1):
                out[f"{dst}.fc{j + 1}.weight"] = v[f"{src}/ffn/linear_{j}/weight"]
                out[f"{dst}.fc{j + 1}.bias"] = v[f"{src}/ffn/linear_{j}/bias"]
            if side == "decoder":
                _attention(out, f"{src}/attention", f"{dst}.encoder_attn", v, "q_kv")
                for part in used_norm:
                    out[f"{dst}.encoder_attn_layer_norm.{used_norm[part]}"] = v[f"{src}/attention/layer_norm/{part}"]
        for part in used_norm:
            out[f"model.{side}.layer_norm.{used_norm[part]}"] = v[f"{side}/layer_norm/{part}"]
        out[f"model.{side}.embed_positions.weight"] = v[f"{side}/position_encodings/encodings"]
    for j in (1, 2):
        out[f"model.encoder.conv{j}.weight"] = v[f"encoder/conv{j}/weight"]
        out[f"model.encoder.conv{j}.bias"] = v[f"encoder/conv{j}/bias"]
    out["model.decoder.embed_tokens.weight"] = v["decoder/embeddings/weight"]
    d_model, mels, _ = v["encoder/conv1/weight"].shape
    heads = int(np.asarray(v["encoder/num_heads"]).reshape(-1)[0]) if "encoder/num_heads" in v else d_model // 64
    config = {
        "vocab_size": v["decoder/embeddings/weight"].shape[0], "num_mel_bins": int(mels), "d_model": int(d_model),
        "encoder_layers": len({m.group(1) for k in v if (m := re.match(r"encoder/layer_(\d+)/", k))}),
        "decoder_layers": len({m.group(1) for k in v if (m := re.match(r"decoder/layer_(\d+)/", k))}),
        "encoder_attention_heads": heads, "decoder_attention_heads": heads,
        "encoder_ffn_dim": int(v["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        "decoder_ffn_dim": int(v["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        "max_source_positions": int(v["encoder/position_encodings/encodings"].shape[0]),
        "max_target_positions": int(v["decoder/position_encodings/encodings"].shape[0]),
    }
    return config, out


def convert(model_bin: str | Path, out_dir: str | Path, tokenizer_json: str | Path) -> Path:
    """Write a WhisperForConditionalGeneration folder (float32), its feature extractor and tokenizer."""
    from transformers import (GenerationConfig, PreTrainedTokenizerFast, WhisperConfig, WhisperFeatureExtractor,
                              WhisperForConditionalGeneration)

    config_args, state = to_transformers(read_ct2(model_bin))
    english_only = config_args["vocab_size"] == 51864
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_json))
    ids = tokenizer.convert_tokens_to_ids
    eot, sot = ids("<|endoftext|>"), ids("<|startoftranscript|>")
    config = WhisperConfig(**config_args, pad_token_id=eot, bos_token_id=eot, eos_token_id=eot,
                           decoder_start_token_id=sot, tie_word_embeddings=True)
    model = WhisperForConditionalGeneration(config)
    own = model.state_dict()
    expected = {k for k in own if k != "proj_out.weight"}  # tied to the token embeddings
    missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
    wrong = sorted(k for k in expected & set(state) if tuple(own[k].shape) != state[k].shape)
    if missing or extra or wrong:
        raise ValueError(f"{model_bin}: does not map onto WhisperForConditionalGeneration: missing {missing[:5]}, "
                         f"left over {extra[:5]}, other shapes {wrong[:5]}")
    model.load_state_dict({k: torch.from_numpy(np.array(a, dtype=np.float32)) for k, a in state.items()}, strict=False)
    model.tie_weights()
    model.generation_config = GenerationConfig(decoder_start_token_id=sot, eos_token_id=eot, pad_token_id=eot,
                                               no_timestamps_token_id=ids("<|notimestamps|>"),
                                               is_multilingual=not english_only)
    out = Path(out_dir)
    model.save_pretrained(out)
    WhisperFeatureExtractor(feature_size=config_args["num_mel_bins"]).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@torch.inference_mode()
def transcribe(folder: str | Path, wave: np.ndarray, language: str | None = "en", max_tokens: int = 60) -> str:
    """Greedy decoding of one clip at 16 kHz (the check of a conversion)."""
    from transformers import PreTrainedTokenizerFast, WhisperFeatureExtractor, WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration.from_pretrained(folder).eval()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
    features = WhisperFeatureExtractor.from_pretrained(folder)(wave, sampling_rate=16000, return_tensors="pt").input_features
    ids = tokenizer.convert_tokens_to_ids
    prompt = [ids("<|startoftranscript|>")]
    if model.generation_config.is_multilingual and language:
        prompt += [ids(f"<|{language}|>"), ids("<|transcribe|>")]
    prompt.append(ids("<|notimestamps|>"))
    encoded = model.model.encoder(features).last_hidden_state
    tokens = list(prompt)
    for _ in range(max_tokens):
        logits = model(encoder_outputs=(encoded,), decoder_input_ids=torch.tensor([tokens])).logits[0, -1]
        token = int(logits.argmax())
        if token == ids("<|endoftext|>"):
            break
        tokens.append(token)
    return tokenizer.decode(tokens[len(prompt):], skip_special_tokens=True).strip()
