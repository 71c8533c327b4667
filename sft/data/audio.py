"""Audio classification: audio sources, decoding, augmentation, the collator and the processor.

Sources (`read_source`):
- a folder with one subfolder per class (like image_folder), clips found recursively;
- a CSV/TSV/JSON/JSONL/Parquet file of `path,label` records, paths relative to that file;
- a Hugging Face dataset (`hf:` or a save_to_disk folder) with an Audio column: its encoded
  bytes are checked at setup and then read per batch from the dataset's Arrow file
  (sft.data.sources.EmbeddedBytes), never copied into the examples.

Clips are decoded with soundfile (WAV, FLAC, OGG/Vorbis/Opus, MP3 where libsndfile has it), mixed
to mono and resampled with soxr to the backbone's rate, in the DataLoader workers (the collator).
Every clip is cut (training: at a random offset; eval: its first `max_seconds`, as transformers' feature
extractors truncate, so stock exports hear what eval hears) or zero-padded to
`data.max_seconds`, so batches have one shape; `attention_mask` marks the real samples and the
head pools over them only. The backbone's own Hugging Face feature extractor (log-mel for
Whisper, normalized waveform for wav2vec2 / HuBERT / WavLM, filter banks for AST) runs in the
workers too; SpecAugment-style masking of those features finishes training batches on the device
(`on_device`).

What the backbone expects (rate, feature extractor) comes from the model side as `input_spec`
(sft.models.audio_backbones.audio_input_spec); this module imports nothing from sft.models.
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

import numpy as np
import torch

from sft.data.processor import Processor
from sft.data.sources import (DataError, Table, check_each, embedded_bytes, is_embedded, is_saved_dataset,
                              listed_path, media_column, read_class_folder, read_table)
from sft.data.text_classification import in_source_order, label_id, label_key

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au"}
BAD_AUDIO_POLICIES = ("error", "skip")

# data.augment: training-only waveform and feature augmentation (all off by default).
AUGMENT_DEFAULTS: dict[str, Any] = {
    "random_crop": True,        # clips longer than max_seconds: a random window in training (eval: the start)
    "shift_seconds": 0.0,       # shift the clip by up to +-this many seconds (zero fill)
    "gain_db": 0.0,             # random gain in +-gain_db decibels
    "noise_prob": 0.0,          # probability of adding white noise
    "noise_snr_db": [10.0, 30.0],  # its signal-to-noise ratio range in dB
    "speed": None,              # [low, high] speed factors (resampling: tempo and pitch change together)
    "time_masks": 0,            # SpecAugment: number of time masks on the encoder's input features
    "time_mask_fraction": 0.1,  # widest time mask, as a share of the clip's frames
    "freq_masks": 0,            # SpecAugment: number of frequency masks (spectrogram features only)
    "freq_mask_bins": 8,        # widest frequency mask in bins
}


def augment_settings(values: Optional[dict]) -> dict:
    values = dict(values or {})
    unknown = sorted(set(values) - set(AUGMENT_DEFAULTS))
    if unknown:
        raise DataError(f"data.augment.{unknown[0]} is not an audio augmentation; known: {', '.join(AUGMENT_DEFAULTS)}")
    settings = {**AUGMENT_DEFAULTS, **{k: v for k, v in values.items() if v is not None or k == "speed"}}
    for key in ("noise_snr_db", "speed"):
        value = settings[key]
        if value is not None and (not isinstance(value, (list, tuple)) or len(value) != 2 or value[0] > value[1]):
            raise DataError(f"data.augment.{key}={value!r}: expected [low, high]")
    if settings["speed"] is not None and settings["speed"][0] <= 0:
        raise DataError(f"data.augment.speed={settings['speed']}: factors must be above 0")
    if not 0 <= settings["noise_prob"] <= 1:
        raise DataError(f"data.augment.noise_prob={settings['noise_prob']} must be in [0, 1]")
    return settings


# -- sources --------------------------------------------------------------------------------------
def read_audio_folder(root: Path, key: str) -> Table:
    return read_class_folder(root, key, AUDIO_SUFFIXES, "audio", f"{root}/<label>/<clip>.wav")

def read_source(path, key: str = "data file", encoding: str = "utf-8") -> Table:
    """A class folder, or record files (one, a glob or a list; or a save_to_disk folder)."""
    if isinstance(path, (str, Path)) and Path(path).is_dir() and not is_saved_dataset(Path(path)):
        return read_audio_folder(Path(path), key)
    return read_table(path, key, encoding)


# -- decoding -------------------------------------------------------------------------------------
def read_audio(source: str | bytes) -> tuple[np.ndarray, int]:
    """(mono float32 samples, sample rate) of a whole file, or of its bytes; raises on a missing,
    empty, truncated or undecodable one."""
    import soundfile as sf

    with sf.SoundFile(io.BytesIO(source) if isinstance(source, bytes) else source) as f:
        expected = f.frames
        data = f.read(dtype="float32", always_2d=True)
        rate = f.samplerate
        # libsndfile reads what a cut-off WAV holds; its log says the data chunk is shorter than announced.
        short = re.search(r"^data\s*:\s*(\d+) \(should be (\d+)\)", f.extra_info, re.M)
    if len(data) == 0:
        raise ValueError("no audio samples (empty file)")
    if len(data) < expected or (short and int(short.group(2)) < int(short.group(1))):
        raise ValueError("truncated: the file holds less audio than its header announces")
    wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not np.isfinite(wave).all():
        raise ValueError("samples that are NaN or infinite")
    return np.ascontiguousarray(wave, dtype=np.float32), int(rate)


def resample(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
    if rate == target:
        return wave
    import soxr

    return soxr.resample(wave, rate, target, quality="HQ").astype(np.float32, copy=False)


def load_audio(source: str | bytes, sample_rate: int) -> np.ndarray:
    """Mono float32 samples of a file (or its bytes) at `sample_rate`."""
    wave, rate = read_audio(source)
    return resample(wave, rate, sample_rate)


def _uniform(low: float, high: float) -> float:
    return float(low + (high - low) * torch.rand(()).item())


def fit_length(wave: np.ndarray, samples: int, random_offset: bool) -> tuple[np.ndarray, int]:
    """(a window of at most `samples` samples, its real length): cut at a random offset or at the start
    (what transformers' feature extractors keep with truncation=True)."""
    if len(wave) > samples:
        extra = len(wave) - samples
        start = int(torch.randint(0, extra + 1, ()).item()) if random_offset else 0
        wave = wave[start:start + samples]
    return wave, len(wave)


class WaveAugment:
    """Training-only waveform augmentation (torch's RNG: seeded per DataLoader worker)."""

    def __init__(self, settings: dict, sample_rate: int):
        self.s = settings
        self.sample_rate = sample_rate

    def speed(self, wave: np.ndarray) -> np.ndarray:
        if not self.s["speed"]:
            return wave
        factor = _uniform(*self.s["speed"])
        if abs(factor - 1.0) < 1e-3:
            return wave
        # Read at rate*factor, played at rate: factor x faster (and higher), as Kaldi's speed perturbation.
        return resample(wave, int(round(self.sample_rate * factor)), self.sample_rate)

    def __call__(self, wave: np.ndarray) -> np.ndarray:
        s = self.s
        wave = np.array(wave, dtype=np.float32)
        if s["shift_seconds"]:
            shift = int(round(_uniform(-s["shift_seconds"], s["shift_seconds"]) * self.sample_rate))
            if shift:
                shifted = np.zeros_like(wave)
                if shift > 0:
                    shifted[shift:] = wave[:-shift] if shift < len(wave) else 0
                else:
                    shifted[:shift] = wave[-shift:] if -shift < len(wave) else 0
                wave = shifted
        if s["gain_db"]:
            wave = wave * 10 ** (_uniform(-s["gain_db"], s["gain_db"]) / 20)
        if s["noise_prob"] and torch.rand(()).item() < s["noise_prob"]:
            power = float(np.mean(wave ** 2)) or 1e-8
            snr = _uniform(*s["noise_snr_db"])
            noise = torch.randn(len(wave)).numpy() * math.sqrt(power / 10 ** (snr / 10))
            wave = wave + noise.astype(np.float32)
        return wave


def make_feature_extractor(spec: dict):
    """The backbone's Hugging Face feature extractor, rebuilt from the plain dict in `input_spec`."""
    import transformers

    settings = dict(spec["feature_extractor"])
    cls = getattr(transformers, settings.get("feature_extractor_type") or "", None)
    if cls is None:
        raise DataError(f"input_spec names feature extractor {settings.get('feature_extractor_type')!r}, which "
                        f"transformers {transformers.__version__} does not have")
    return cls.from_dict(settings)


class AudioCollator:
    """Decode, resample, (train: augment,) cut/pad to max_seconds, then the backbone's feature
    extractor: a batch of `input_features` or `input_values`, `attention_mask` (1 on the real
    clip, at the features' resolution) and `labels`."""

    def __init__(self, spec: dict, max_seconds: float, train: bool = False, augment: Optional[dict] = None):
        self.spec = spec
        self.sample_rate = int(spec["sample_rate"])
        self.samples = int(round(max_seconds * self.sample_rate))
        self.train = train
        self.augment = augment_settings(augment)
        self.wave_augment = WaveAugment(self.augment, self.sample_rate) if train else None
        self._extractor = None

    @property
    def extractor(self):
        if self._extractor is None:  # built lazily: in each worker, not pickled with the collator
            self._extractor = make_feature_extractor(self.spec)
        return self._extractor

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_extractor"] = None
        return state

    def wave(self, item: dict) -> tuple[np.ndarray, int]:
        source = item["audio"]
        if isinstance(source, (str, bytes)):
            try:
                source = load_audio(source, self.sample_rate)
            except Exception as e:  # in a DataLoader worker: name the file, not only the worker
                name = item["audio"] if isinstance(item["audio"], str) else item.get("where", "a clip")
                raise DataError(f"{name}: could not be read while loading a batch ({type(e).__name__}: {e}); "
                                "it was readable when the data was checked, so it changed or is unreadable now") from e
        wave = np.asarray(source, dtype=np.float32)
        if self.wave_augment is not None:
            wave = self.wave_augment.speed(wave)
        wave, length = fit_length(wave, self.samples, self.train and self.augment["random_crop"])
        if self.wave_augment is not None:
            wave = self.wave_augment(wave)
        return wave, length

    def features(self, waves: list[np.ndarray], lengths: list[int]) -> dict[str, torch.Tensor]:
        extractor = self.extractor
        name = extractor.model_input_names[0]
        if self.spec["family"] == "ast":  # a fixed number of filter-bank frames, its own padding
            values = extractor(waves, sampling_rate=self.sample_rate, return_tensors="pt")[name]
            return {name: values, "attention_mask": torch.ones(values.shape[0], 1, dtype=torch.long)}
        out = extractor(waves, sampling_rate=self.sample_rate, padding="max_length", max_length=self.samples,
                        truncation=True, return_attention_mask=True, return_tensors="pt")
        values = out[name]
        frames = values.shape[-1]
        # The real part of each clip at the features' resolution (samples, or 10 ms frames for Whisper).
        positions = torch.arange(frames)
        real = torch.tensor([math.ceil(n * frames / self.samples) for n in lengths])
        return {name: values, "attention_mask": (positions[None, :] < real[:, None]).long()}

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        waves, lengths = zip(*(self.wave(item) for item in items))
        batch = self.features(list(waves), list(lengths))
        if "labels" in items[0]:
            batch["labels"] = torch.as_tensor([item["labels"] for item in items])
        if "row" in items[0]:  # the record each clip came from (sft.callbacks.audio_samples names the file)
            batch["row"] = torch.as_tensor([item["row"] for item in items])
        return batch


class SpecAugment:
    """Time (and, on spectrogram features, frequency) masks on training batches, on the device:
    each clip gets its own masks, filled with that clip's mean feature value."""

    def __init__(self, time_masks: int, time_fraction: float, freq_masks: int, freq_bins: int, layout: str):
        self.time_masks, self.time_fraction = int(time_masks), float(time_fraction)
        self.freq_masks, self.freq_bins = int(freq_masks), int(freq_bins)
        self.layout = layout  # "ft": (B, F, T) Whisper log-mel; "tf": (B, T, F) AST; "t": (B, T) waveform

    def __call__(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        features = features.clone()
        time_dim = {"ft": 2, "tf": 1, "t": 1}[self.layout]
        frames = features.shape[time_dim]
        for b in range(features.shape[0]):
            real = int(mask[b].sum()) * frames // mask.shape[1] if mask.shape[1] > 1 else frames
            fill = features[b].mean()
            for _ in range(self.time_masks):
                width = int(torch.randint(0, max(1, int(real * self.time_fraction)) + 1, ()).item())
                if width == 0 or real <= width:
                    continue
                start = int(torch.randint(0, real - width + 1, ()).item())
                if self.layout == "ft":
                    features[b, :, start:start + width] = fill
                else:
                    features[b, start:start + width] = fill
            if self.layout == "t":
                continue
            bins = features.shape[1 if self.layout == "ft" else 2]
            for _ in range(self.freq_masks):
                width = int(torch.randint(0, self.freq_bins + 1, ()).item())
                if width == 0 or bins <= width:
                    continue
                start = int(torch.randint(0, bins - width + 1, ()).item())
                if self.layout == "ft":
                    features[b, start:start + width, :] = fill
                else:
                    features[b, :, start:start + width] = fill
        return features


# -- the processor ----------------------------------------------------------------------------------
@dataclass
class AudioReport:
    SETTINGS: ClassVar[tuple[str, ...]] = ("max_seconds",)  # kept, not summed, when batch reports merge
    records: int = 0
    skipped: int = 0
    cut: int = 0
    seconds: float = 0.0
    bad_files: list[str] = field(default_factory=list)
    max_seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"records": self.records, "skipped_bad_audio": self.skipped, "bad_audio": self.bad_files[:50],
                "mean_seconds": round(self.seconds / max(1, self.records), 3), "cut_to_max_seconds": self.cut}

    def summary(self) -> str:
        text = f"{self.records} clips, mean {self.seconds / max(1, self.records):.2f} s"
        text += f", {self.cut} longer than data.max_seconds={self.max_seconds:g} (cut)"
        if self.skipped:
            text += f", {self.skipped} bad files skipped (data.on_bad_audio=skip), e.g. {self.bad_files[0]}"
        return text


class AudioClassificationProcessor(Processor):
    """One label per clip. `input_spec` (from the model side) holds the backbone's family, sample
    rate and feature extractor settings."""

    def __init__(self, input_spec: dict, label_column: str = "label", label_names: Optional[list[str]] = None,
                 audio_column: str = "path", max_seconds: float = 10.0, on_bad_audio: str = "error",
                 augment: Optional[dict] = None, check_workers: int = 8):
        if on_bad_audio not in BAD_AUDIO_POLICIES:
            raise DataError(f"data.on_bad_audio={on_bad_audio!r} is not one of {BAD_AUDIO_POLICIES}")
        if not input_spec or "sample_rate" not in input_spec:
            raise DataError("audio data needs input_spec (the backbone's sample rate and feature extractor); "
                            "train.py sets it from model.pretrained")
        limit = input_spec.get("max_seconds")
        if limit and max_seconds > limit + 1e-6:
            raise DataError(f"data.max_seconds={max_seconds} is longer than the backbone takes ({limit:g} s)")
        self.input = dict(input_spec)
        self.label_column = label_column
        self.audio_column = audio_column
        self.label_names = list(label_names) if label_names is not None else None
        self.max_seconds = float(max_seconds)
        self.on_bad_audio = on_bad_audio
        self.augment = augment_settings(augment)
        self.check_workers = check_workers
        layout = {"whisper": "ft", "ast": "tf"}.get(input_spec["family"], "t")
        a = self.augment
        self.spec_augment = (SpecAugment(a["time_masks"], a["time_mask_fraction"], a["freq_masks"], a["freq_mask_bins"],
                                         layout) if a["time_masks"] or a["freq_masks"] else None)
        log.info("[data] audio: %s at %d Hz, clips of at most %g s", input_spec["family"], input_spec["sample_rate"],
                 self.max_seconds)

    def read_source(self, path, key: str, encoding: str = "utf-8") -> Table:
        return read_source(path, key, encoding)

    def make_collator(self, pad_to_multiple_of=None, train: bool = False) -> AudioCollator:
        return AudioCollator(self.input, self.max_seconds, train, self.augment)

    def on_device(self, batch: dict, train: bool) -> dict:
        if not train or self.spec_augment is None:
            return batch
        batch = dict(batch)
        name = "input_features" if "input_features" in batch else "input_values"
        batch[name] = self.spec_augment(batch[name], batch["attention_mask"])
        return batch

    def export_options(self) -> dict:
        return {"input_spec": self.input, "max_seconds": self.max_seconds}

    # -- labels and records ---------------------------------------------------------------------------
    def fit(self, train: Table) -> list[str]:
        if self.label_names is None:
            train.require_columns({"data.label_column": self.label_column})
            keys = set()
            for i, value in enumerate(train.column_values(self.label_column)):  # no clip read
                key = label_key(value)
                if key is None:
                    raise DataError(f"{train.where(i)}: field {self.label_column!r} is empty; every training clip needs a label")
                keys.add(key)
            if len(keys) < 2:
                raise DataError(f"{train.path}: only the label {sorted(keys)}; classification needs at least two")
            self.label_names = in_source_order(train.class_order(self.label_column), keys)
        return self.label_names

    def _column(self, table: Table) -> str:
        """The clip field: data.audio_column, or a Hugging Face dataset's first Audio column when the
        dataset has no field of that name."""
        return media_column(table, self.audio_column)

    def _audio_source(self, table: Table, i: int) -> str | bytes:
        """The clip's path, or its bytes where the source embeds them."""
        column = self._column(table)
        value = table.rows[i].get(column)
        if is_embedded(value):
            if value["bytes"] is not None:
                return value["bytes"]
            value = value["path"]  # an Audio column that refers to files
        if value is None or (isinstance(value, str) and not value.strip()):
            raise DataError(f"{table.where(i)}: field {column!r} is empty; expected an audio file path "
                            f"(set data.audio_column to the field holding it)")
        return listed_path(table.path, str(value))

    @staticmethod
    def _check(source: str | bytes) -> tuple[Optional[str], float]:
        """(problem or None, duration in seconds): the whole file is decoded once, up front."""
        if isinstance(source, str) and not os.path.isfile(source):
            return "file not found", 0.0
        try:
            wave, rate = read_audio(source)
        except Exception as e:  # soundfile raises several types for unreadable, empty or truncated files
            return f"not a readable audio file ({type(e).__name__}: {e})", 0.0
        return None, len(wave) / rate

    def check_encoded(self, table: Table, count: int, report) -> None:
        if count == 0:
            raise DataError(f"{table.path}: no readable audio files left after skipping {report.skipped} bad ones")

    def batch_source(self, table: Table):
        return embedded_bytes(table, self._column(table), "audio")

    def record_fields(self, table: Table, index: int, example: dict) -> dict:
        return {"audio": example["audio"]}

    def encode(self, table: Table, with_labels: bool = True) -> tuple[list[dict], AudioReport]:
        assert self.label_names is not None, "fit() builds the label map before encode()"
        column = self._column(table)
        table.require_columns({"data.audio_column": column})
        if with_labels:
            table.require_columns({"data.label_column": self.label_column})
        sources = [self._audio_source(table, i) for i in range(len(table))]
        checks = check_each(sources, self._check, self.check_workers)
        index = {name: k for k, name in enumerate(self.label_names)}
        examples, report = [], AudioReport(max_seconds=self.max_seconds)
        for i, (source, (problem, seconds)) in enumerate(zip(sources, checks)):
            if problem:
                shown = f"{source}: " if isinstance(source, str) else ""
                where = f"{table.where(i)}: field {column!r}: {shown}{problem}"
                if self.on_bad_audio == "error":
                    raise DataError(f"{where}. Fix or remove it, or set data.on_bad_audio=skip to skip bad files "
                                    f"(they are counted in data_report.json)")
                report.skipped += 1
                report.bad_files.append(where)
                continue
            # embedded bytes are read again per batch (EmbeddedBytes), not copied into the examples
            example: dict = {"audio": source if isinstance(source, str) else None, "row": i}
            if with_labels:
                example["labels"] = label_id(table, i, self.label_column, index)
            examples.append(example)
            report.seconds += seconds
            report.cut += seconds > self.max_seconds + 1e-6
        report.records = len(examples)
        if report.skipped:
            log.warning("[data] %s: skipped %d bad audio files (data.on_bad_audio=skip); first: %s",
                        table.path, report.skipped, report.bad_files[0])
        return examples, report
