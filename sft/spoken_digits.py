"""The `audio_keywords` catalog data set: the ten English digit words spoken by many synthetic voices.

Generated once on this machine with espeak-ng (8 English accents x about 100 voice variants, sampled)
and flite (its 5 English voices), with speed and pitch drawn per clip, and half of the clips passed
through an 8 kHz telephone channel (the real test recordings are 8 kHz). Splits hold out whole
voices: the test voices are never heard in training. `real.jsonl` lists the real human recordings
of the same ten words from the Asterisk telephone prompts (catalog `asterisk_prompts`, English
`digits/0`..`digits/9`), for the accuracy on real speech beside the synthetic test voices.

Rows: {path (relative to the listing), label (zero..nine), voice, engine, speed, pitch, channel}.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ESPEAK_ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd", "en-029",
                  "en-us-nyc")
ESPEAK_VOICES = 72  # (accent, variant) pairs sampled from about 800
FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")  # awb_time speaks only times of day
RENDITIONS = {"espeak-ng": 2, "flite": 6}  # clips per (voice, word): flite has few voices, so more of each
TELEPHONE_RATE = 8000
INSTALL = "apt-get install -y espeak-ng flite"
GENERATOR_VERSION = "1"  # bump when the recipe changes: the cache folder is named after it


class SynthesisError(RuntimeError):
    pass


def require_synthesizers() -> None:
    """A clear error naming the install command when espeak-ng or flite is absent."""
    from sft.assets import AssetError

    missing = [tool for tool in ("espeak-ng", "flite") if shutil.which(tool) is None]
    if missing:
        raise AssetError(f"the audio_keywords data set is generated on this machine with espeak-ng and flite; "
                         f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed. Install "
                         f"them (Debian/Ubuntu, as root or with sudo): {INSTALL}")


def _lines(command: list[str]) -> list[str]:
    return subprocess.run(command, capture_output=True, text=True, check=True, timeout=60).stdout.splitlines()


def tool_version(tool: str) -> str:
    done = subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=60)  # flite exits 1 here
    return next((line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()), "unknown")


def espeak_variants() -> list[str]:
    """The voice variants espeak-ng ships (`+name`), sorted."""
    return sorted(line.split()[4].split("/")[-1] for line in _lines(["espeak-ng", "--voices=variant"])[1:]
                  if len(line.split()) >= 5)


def voice_split(voice: str, position: int) -> str:
    """test for every 5th voice of an engine (in a fixed hashed order), val for one in 10 more."""
    return "test" if position % 5 == 0 else "val" if position % 10 == 3 else "train"


def plan_voices(seed: int = 0) -> list[dict]:
    """Every voice with its engine, its synthesizer arguments and its split."""
    rng = random.Random(seed)
    accents = set(line.split()[1] for line in _lines(["espeak-ng", "--voices=en"])[1:])
    pairs = [(a, v) for a in ESPEAK_ACCENTS if a in accents for v in espeak_variants()]
    chosen = rng.sample(pairs, min(ESPEAK_VOICES, len(pairs)))
    flite_known = " ".join(_lines(["flite", "-lv"]))
    voices = [{"voice": f"espeak-{a}+{v}", "engine": "espeak-ng", "spec": f"{a}+{v}"} for a, v in chosen]
    voices += [{"voice": f"flite-{v}", "engine": "flite", "spec": v} for v in FLITE_VOICES if v in flite_known.split()]
    for engine in ("espeak-ng", "flite"):
        mine = sorted((v for v in voices if v["engine"] == engine), key=lambda v: zlib.crc32(v["voice"].encode()))
        for position, voice in enumerate(mine):
            voice["split"] = voice_split(voice["voice"], position)
    return voices


def synthesize(engine: str, spec: str, word: str, speed: float, pitch: float, path: Path) -> None:
    """One word into a WAV file. espeak-ng: speed in words per minute, pitch 0-99; flite: speed as a
    duration stretch (above 1 is slower), pitch as the mean F0 in Hz."""
    if engine == "espeak-ng":
        command = ["espeak-ng", "-v", spec, "-s", str(int(speed)), "-p", str(int(pitch)), "-w", str(path), word]
    else:
        command = ["flite", "-voice", spec, "--setf", f"duration_stretch={speed:.3f}", "--setf",
                   f"int_f0_target_mean={pitch:.1f}", "-t", word, "-o", str(path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if done.returncode != 0 or not path.is_file() or path.stat().st_size < 100:
        raise SynthesisError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()[-500:]}")


def _render(job: dict, clips: Path) -> dict:
    import numpy as np
    import soundfile as sf

    from sft.data.audio import resample

    path = clips / job["voice"] / f"{job['label']}_{job['take']}.wav"
    path.parent.mkdir(parents=True, exist_ok=True)
    synthesize(job["engine"], job["spec"], job["label"], job["speed"], job["pitch"], path)
    wave, rate = sf.read(path, dtype="float32")
    if wave.ndim == 2:
        wave = wave.mean(axis=1)
    if job["channel"] == "telephone" and rate != TELEPHONE_RATE:
        wave, rate = resample(wave, rate, TELEPHONE_RATE), TELEPHONE_RATE
    peak = float(np.abs(wave).max()) or 1.0
    sf.write(path, (wave / peak * 0.9).astype(np.float32), rate, subtype="PCM_16")  # the same level for every voice
    row = {k: job[k] for k in ("label", "voice", "engine", "speed", "pitch", "channel", "split")}
    return {"path": path.relative_to(clips.parent).as_posix(), **row, "seconds": round(len(wave) / rate, 3)}


def plan_clips(voices: list[dict], seed: int = 0) -> list[dict]:
    rng = random.Random(seed + 1)
    jobs = []
    for voice in voices:
        for word in WORDS:
            for take in range(RENDITIONS[voice["engine"]]):
                if voice["engine"] == "espeak-ng":
                    speed, pitch = rng.uniform(110, 230), rng.uniform(15, 85)  # defaults 175 wpm, 50
                else:
                    speed, pitch = rng.uniform(0.8, 1.35), rng.uniform(80, 210)  # defaults 1.0, ~100-170 Hz
                jobs.append({**voice, "label": word, "take": take, "speed": round(speed, 3), "pitch": round(pitch, 1),
                             "channel": rng.choice(["wideband", "telephone"])})
    return jobs


def real_digit_rows(out_dir: Path) -> list[dict]:
    """The Asterisk prompts' English digits 0-9 (one human speaker), paths relative to `out_dir` (where
    real.jsonl will be read from: both folders sit in $SFT_CACHE, so the pair can move together)."""
    from sft import assets

    prompts = assets.fetch("asterisk_prompts").parent
    rows = []
    for line in (prompts / "data.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["language"] == "en" and row["kind"] == "digits" and row["symbol"] in [str(d) for d in range(10)]:
            rows.append({"path": os.path.relpath(prompts / row["path"], out_dir), "label": WORDS[int(row["symbol"])],
                         "voice": f"asterisk-{row['voice']}", "engine": "human", "channel": "telephone",
                         "split": "real"})
    return sorted(rows, key=lambda r: WORDS.index(r["label"]))


def generate(out_dir: Path, seed: int = 0, workers: Optional[int] = None, limit_voices: Optional[int] = None,
             with_real: bool = True, final_dir: Optional[Path] = None) -> tuple[int, dict]:
    """Write clips/<voice>/<word>_<take>.wav and train/val/test/data.jsonl (+ real.jsonl) into `out_dir`,
    which is moved to `final_dir` afterwards where given (the catalog builds in a staging folder)."""
    require_synthesizers()
    out_dir.mkdir(parents=True, exist_ok=True)
    voices = plan_voices(seed)
    if limit_voices is not None:  # tests: at most this many voices per engine and split
        voices = [v for engine in ("flite", "espeak-ng") for split in ("train", "val", "test")
                  for v in [x for x in voices if x["engine"] == engine and x["split"] == split][:limit_voices]]
    jobs = plan_clips(voices, seed)
    clips = out_dir / "clips"
    with ThreadPoolExecutor(workers or max(1, os.cpu_count() or 1)) as pool:
        rows = list(pool.map(lambda job: _render(job, clips), jobs))
    by_split: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    for row in rows:
        by_split[row["split"]].append(row)
    with open(out_dir / "data.jsonl", "w") as everything:
        for split, split_rows in by_split.items():
            with open(out_dir / f"{split}.jsonl", "w") as f:
                for row in split_rows:
                    f.write(json.dumps(row) + "\n")
                    everything.write(json.dumps(row) + "\n")
    if with_real:
        rows = real_digit_rows(final_dir or out_dir)
        (out_dir / "real.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    versions = {tool: tool_version(tool) for tool in ("espeak-ng", "flite")}
    (out_dir / "voices.json").write_text(json.dumps({"voices": voices, "tools": versions}, indent=2))
    return len(rows), {}


def prepare_keywords(raw: Path, out: Path) -> tuple[int, dict]:
    """The catalog's `prepare` hook: `out` is the train.jsonl to write; nothing was downloaded."""
    from sft import assets

    return generate(out.parent, final_dir=assets.asset_dir("audio_keywords"))
