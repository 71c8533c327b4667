"""Image classification: image sources, the bad-image check, torchvision v2 pipelines, the collator.

Sources (`read_source`):
- a folder with one subfolder per class (ImageFolder layout);
- a CSV/TSV/JSON/JSONL/Parquet file of `path,label` records, paths relative to that file;
- a Hugging Face dataset (`hf:` or a save_to_disk folder) with an Image column: its encoded
  bytes stay in the dataset's Arrow file and are read per batch (sft.data.sources.EmbeddedBytes);
- an `.npz` of decoded arrays (`images` uint8 (N, H, W[, C]), `labels`, optional `label_names`),
  as the catalog's array data sets are prepared: decoded once, never per epoch.

Decoding and the pixel augmentations (crops, flips, RandAugment) run in the collator, i.e. in
the DataLoader workers, on uint8; batches travel to the device as uint8, where normalization,
RandomErasing and MixUp / CutMix finish them (`on_device`, called by SFTDataModule's
on_after_batch_transfer).
"""

from __future__ import annotations

import functools
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from sft.data.processor import Processor
from sft.data.sources import (DataError, Table, check_each, embedded_bytes, is_embedded, is_saved_dataset,
                              listed_path, media_column, read_class_folder, read_table)
from sft.data.text_classification import in_source_order, label_id, label_key

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
BAD_IMAGE_POLICIES = ("error", "skip")
AUTO_AUGMENTS = ("randaugment", "trivialaugment", "autoaugment")


COMMON_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM")  # tried first


# -- sources --------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _format_signatures() -> tuple:
    """(format, accept) of every format Pillow can identify by its first bytes, common ones first."""
    from PIL import Image

    Image.init()
    formats = [f for f in COMMON_FORMATS if f in Image.ID] + [f for f in Image.ID if f not in COMMON_FORMATS]
    return tuple((f, Image.OPEN[f][1]) for f in formats if Image.OPEN[f][1] is not None)


def image_format(start: bytes) -> Optional[str]:
    """The image format whose signature `start` (a file's first 16 bytes) has, as Pillow's
    `Image.open` tells them apart (None: none has it)."""
    for name, accept in _format_signatures():
        try:
            verdict = accept(start)
        except Exception:  # a plugin's check may index past a short start
            continue
        if verdict and not isinstance(verdict, str):  # a string: recognized, but Pillow cannot open it
            return name
    return None


def read_image_folder(root: Path, key: str) -> Table:
    return read_class_folder(root, key, IMAGE_SUFFIXES, "image", f"ImageFolder layout {root}/<label>/<image>")

def read_image_arrays(path: Path, key: str) -> Table:
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as e:
        raise DataError(f"{key}: {path} is not a readable .npz file ({e})") from None
    for name in ("images", "labels"):
        if name not in data:
            raise DataError(f"{key}: {path} has no array {name!r}; expected 'images' (N, H, W[, C]) uint8 and 'labels' (N,)")
    images, labels = data["images"], data["labels"]
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or len(images) != len(labels):
        raise DataError(f"{key}: {path}: 'images' must be uint8 (N, H, W) or (N, H, W, C) with one label each; "
                        f"got {images.dtype} {images.shape} and {len(labels)} labels")
    names = [str(n) for n in data["label_names"]] if "label_names" in data else None
    rows = [{"image": images[i], "label": names[int(y)] if names else int(y)} for i, y in enumerate(labels)]
    # The data set's own class order becomes the label map's order.
    return Table(str(path), rows, [f"{path} item {i}" for i in range(len(rows))], ["image", "label"], names)


def read_source(path, key: str = "data file", encoding: str = "utf-8") -> Table:
    """A class folder, an .npz of arrays, or record files (one, a glob or a list; or a save_to_disk folder)."""
    if isinstance(path, (str, Path)) and Path(path).is_dir() and not is_saved_dataset(Path(path)):
        return read_image_folder(Path(path), key)
    if isinstance(path, (str, Path)) and Path(path).suffix == ".npz" and Path(path).is_file():
        return read_image_arrays(Path(path), key)
    return read_table(path, key, encoding)


# -- decoding -------------------------------------------------------------------------------------
def open_image(source: str | bytes, mode: str):
    """Fully decoded PIL image in `mode` (RGB or L), from a file or its bytes; raises on a missing,
    non-image or truncated file."""
    from PIL import Image

    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
        image.load()  # decodes every byte: a truncated file fails here, not in a worker mid-epoch
        if image.mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")
        if image.mode in ("RGBA", "LA") and mode == "RGB":
            background = Image.new("RGB", image.size, (255, 255, 255))  # transparent areas become white
            background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
            return background
        return image.convert(mode)


def to_tensor(image, channels: int) -> torch.Tensor:
    """uint8 (C, H, W) tensor with the backbone's channel count, from a PIL image or an array."""
    if isinstance(image, np.ndarray):
        array = image if image.ndim == 3 else image[:, :, None]
        if array.shape[2] == 4:
            array = array[:, :, :3]
    else:
        array = np.array(image)  # a writable copy: torch refuses to share read-only memory
        if array.ndim == 2:
            array = array[:, :, None]
    tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)
    if tensor.shape[0] == channels:
        return tensor
    if tensor.shape[0] == 1:
        return tensor.expand(channels, -1, -1).contiguous()  # grayscale to RGB
    if channels == 1:  # RGB to grayscale (ITU-R 601 luma, as PIL's "L")
        weights = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
        return (tensor.float() * weights).sum(0, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    raise DataError(f"cannot turn an image of {tensor.shape[0]} channels into {channels}")


# -- transforms -----------------------------------------------------------------------------------
def _interpolation(name: str):
    from torchvision.transforms import InterpolationMode

    return {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR,
            "nearest": InterpolationMode.NEAREST}.get(name, InterpolationMode.BILINEAR)


def pixel_transforms(train: bool, size: int, interpolation: str = "bilinear", crop_pct: float = 0.875,
                     crop_scale=(0.08, 1.0), hflip: float = 0.5, auto_augment: Optional[str] = None):
    """The part of the pipeline that runs in the DataLoader workers, on uint8 (C, H, W) tensors and
    returning uint8: train: RandomResizedCrop(crop_scale) (or the eval resize + crop when
    crop_scale is None), flip, optional RandAugment / TrivialAugment / AutoAugment; eval: resize
    to size / crop_pct, center crop."""
    from torchvision.transforms import v2

    mode = _interpolation(interpolation)
    resize = [v2.Resize(int(round(size / crop_pct)), interpolation=mode, antialias=True), v2.CenterCrop(size)]
    steps: list = []
    if train:
        steps += [v2.RandomResizedCrop(size, scale=tuple(crop_scale), interpolation=mode, antialias=True)] if crop_scale else resize
        if hflip:
            steps.append(v2.RandomHorizontalFlip(hflip))
        if auto_augment:
            if auto_augment not in AUTO_AUGMENTS:
                raise DataError(f"data.train_transforms.auto_augment={auto_augment!r} is not one of {AUTO_AUGMENTS} (or null)")
            steps.append({"randaugment": v2.RandAugment, "trivialaugment": v2.TrivialAugmentWide,
                          "autoaugment": v2.AutoAugment}[auto_augment](interpolation=mode))
    else:
        steps += resize
    return v2.Compose(steps)


def normalize(pixels: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (..., C, H, W) to float32 scaled to [0, 1] and normalized per channel."""
    mean = torch.as_tensor(mean, dtype=torch.float32, device=pixels.device).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=pixels.device).view(-1, 1, 1)
    return (pixels.float() / 255.0 - mean) / std


def build_transforms(train: bool, size: int, mean, std, interpolation: str = "bilinear", crop_pct: float = 0.875,
                     crop_scale=(0.08, 1.0), hflip: float = 0.5, auto_augment: Optional[str] = None):
    """The whole eval (or train, without erasing and mixing) pipeline for one image, uint8 in and
    normalized float32 out: what a predictor applies to a single image."""
    pixels = pixel_transforms(train, size, interpolation, crop_pct, crop_scale, hflip, auto_augment)
    return lambda image: normalize(pixels(image), mean, std)


class ImageCollator:
    """Decode (paths) or wrap (arrays), transform, stack, still as uint8: a quarter of float32's
    bytes to collate, pin and copy to the device, where `DeviceAugment` finishes the batch."""

    def __init__(self, transform, channels: int, on_bad_image: str = "error"):
        self.transform = transform
        self.channels = channels
        self.on_bad_image = on_bad_image

    @staticmethod
    def name(item: dict) -> str:
        """The image's file, or the record holding its bytes."""
        return item["image"] if isinstance(item["image"], str) else item.get("where", "an image")

    def image(self, item: dict) -> Optional[torch.Tensor]:
        """The transformed image, or None for a file whose pixels cannot be decoded (data.on_bad_image=skip)."""
        source = item["image"]
        try:
            if isinstance(source, (str, bytes)):
                source = open_image(source, "L" if self.channels == 1 else "RGB")
            return self.transform(to_tensor(source, self.channels))
        except Exception as e:  # in a DataLoader worker: name the file, not only the worker
            if not isinstance(item["image"], (str, bytes)):
                raise
            # Setup checks only that each file exists and starts with an image signature (embedded bytes not even
            # that: it would read them all); pixel data that is truncated or corrupt is found here,
            # when its batch is built.
            problem = f"{self.name(item)}: its pixels could not be decoded ({type(e).__name__}: {e})"
            if self.on_bad_image == "skip":
                log.warning("[data] skipped a bad image while loading a batch (data.on_bad_image=skip): %s", problem)
                return None
            raise DataError(f"{problem}. Fix or remove it, or set data.on_bad_image=skip to skip bad images") from e

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        pairs = [(item, self.image(item)) for item in items]
        kept = [(item, image) for item, image in pairs if image is not None]
        if not kept:
            raise DataError(f"every image of a batch failed to decode, e.g. {self.name(items[0])}")
        items = [item for item, _ in kept]
        batch = {"pixel_values": torch.stack([image for _, image in kept])}
        if "labels" in items[0]:
            batch["labels"] = torch.as_tensor([item["labels"] for item in items])
        return batch


class DeviceAugment:
    """The end of the pipeline, on whole batches where they train (the GPU): scale and normalize;
    on training batches also RandomErasing (drawn per image) and MixUp / CutMix, which add
    `soft_labels` (rows sum to 1) next to the hard `labels`."""

    def __init__(self, mean, std, random_erasing: float = 0.0, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
                 num_classes: int = 0):
        from torchvision.transforms import v2

        self.mean, self.std = list(mean), list(std)
        self.erase = v2.RandomErasing(random_erasing) if random_erasing else None
        mixers = []
        if mixup_alpha > 0:
            mixers.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
        if cutmix_alpha > 0:
            mixers.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
        self.mix = v2.RandomChoice(mixers) if mixers else None

    def __call__(self, batch: dict, train: bool) -> dict:
        pixels = batch["pixel_values"]
        if pixels.dtype != torch.uint8:  # already finished (a batch made by other code)
            return batch
        batch = dict(batch)
        pixels = normalize(pixels, self.mean, self.std)
        if train and self.erase is not None:
            pixels = torch.stack([self.erase(image) for image in pixels])  # a batched call would erase one box for all
        if train and self.mix is not None and "labels" in batch:
            pixels, batch["soft_labels"] = self.mix(pixels, batch["labels"])
        batch["pixel_values"] = pixels
        return batch


# -- the processor ----------------------------------------------------------------------------------
@dataclass
class ImageReport:
    records: int = 0
    skipped: int = 0
    bad_images: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"records": self.records, "skipped_bad_images": self.skipped, "bad_images": self.bad_images[:50]}

    def summary(self) -> str:
        text = f"{self.records} images"
        if self.skipped:
            text += f", {self.skipped} bad images skipped (data.on_bad_image=skip), e.g. {self.bad_images[0]}"
        return text


# What an image backbone expects when its model config says nothing (ImageNet statistics, 224 px).
DEFAULT_INPUT = {"channels": 3, "size": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                 "interpolation": "bilinear", "crop_pct": 0.875}


class ImageClassificationProcessor(Processor):
    """One label per image. `input_spec` is what the backbone was pretrained on (from the model
    side: sft.models.image_backbones.image_data_config); `image_size`, `mean`, ... override it."""

    def __init__(self, label_column: str = "label", label_names: Optional[list[str]] = None,
                 image_column: str = "path", input_spec: Optional[dict] = None,
                 image_size: Optional[int] = None, mean: Optional[list[float]] = None, std: Optional[list[float]] = None,
                 interpolation: Optional[str] = None, crop_pct: Optional[float] = None,
                 train_transforms: Optional[dict] = None, on_bad_image: str = "error",
                 mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, check_workers: int = 8):
        if on_bad_image not in BAD_IMAGE_POLICIES:
            raise DataError(f"data.on_bad_image={on_bad_image!r} is not one of {BAD_IMAGE_POLICIES}")
        self.label_column = label_column
        self.image_column = image_column
        self.label_names = list(label_names) if label_names is not None else None
        self.on_bad_image = on_bad_image
        self.train_transforms = dict(train_transforms or {})
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha or 0.0), float(cutmix_alpha or 0.0)
        self.check_workers = check_workers
        self._device_augment: Optional[DeviceAugment] = None
        overrides = {"size": image_size, "mean": mean, "std": std, "interpolation": interpolation, "crop_pct": crop_pct}
        self.input = {**DEFAULT_INPUT, **(input_spec or {}), **{k: v for k, v in overrides.items() if v is not None}}
        self.input["mean"], self.input["std"] = list(self.input["mean"]), list(self.input["std"])
        log.info("[data] images: %s", self.input)

    def read_source(self, path, key: str, encoding: str = "utf-8") -> Table:
        return read_source(path, key, encoding)

    def make_collator(self, pad_to_multiple_of=None, train: bool = False) -> ImageCollator:
        spec = self.input
        options = {k: v for k, v in self.train_transforms.items() if k != "random_erasing"} if train else {}
        transform = pixel_transforms(train, spec["size"], spec["interpolation"], spec["crop_pct"], **options)
        return ImageCollator(transform, spec["channels"], self.on_bad_image)

    def on_device(self, batch: dict, train: bool) -> dict:
        """Finish a collated batch after it reached the training device (SFTDataModule calls it)."""
        if self._device_augment is None:
            self._device_augment = DeviceAugment(self.input["mean"], self.input["std"],
                                                 self.train_transforms.get("random_erasing") or 0.0,
                                                 self.mixup_alpha, self.cutmix_alpha, len(self.label_names or []))
        return self._device_augment(batch, train)

    def fit(self, train: Table) -> list[str]:
        if self.label_names is None:
            train.require_columns({"data.label_column": self.label_column})
            keys = set()
            for i, value in enumerate(train.column_values(self.label_column)):  # no image read
                key = label_key(value)
                if key is None:
                    raise DataError(f"{train.where(i)}: field {self.label_column!r} is empty; every training image needs a label")
                keys.add(key)
            if len(keys) < 2:
                raise DataError(f"{train.path}: only the label {sorted(keys)}; classification needs at least two")
            self.label_names = in_source_order(train.class_order(self.label_column), keys)
        return self.label_names

    def _column(self, table: Table) -> str:
        """The image field: data.image_column; where the source has no such field, the `image` of an
        array data set (it has no paths) or a Hugging Face dataset's first Image column."""
        if self.image_column not in table.columns and len(table.rows) and isinstance(table.rows[0].get("image"), np.ndarray):
            return "image"
        return media_column(table, self.image_column)

    def _image_source(self, table: Table, i: int):
        """An image path, an array, or None for bytes embedded in the source (read per batch)."""
        value = table.rows[i].get(self._column(table))
        if isinstance(value, np.ndarray):
            return value
        if is_embedded(value):
            if value["bytes"] is not None:
                return None
            value = value["path"]  # an Image column that refers to files
        if value is None or (isinstance(value, str) and not value.strip()):
            raise DataError(f"{table.where(i)}: field {self.image_column!r} is empty; expected an image path "
                            f"(set data.image_column to the field holding it)")
        return listed_path(table.path, str(value))

    @staticmethod
    def _problem(path: str) -> Optional[str]:
        """Why the file at `path` is no image Pillow reads (None: it is one): missing, unreadable,
        or without an image format's signature. Only its first bytes are read; pixels are decoded
        per batch, in the workers, where a truncated file is named."""
        try:
            with open(path, "rb") as f:
                start = f.read(16)
        except FileNotFoundError:
            return "file not found"
        except OSError as e:
            return f"not readable ({type(e).__name__}: {e})"
        if not start:
            return "not a readable image (the file is empty)"
        if image_format(start) is None:
            return f"not a readable image (its first bytes {start[:8]!r} are no image format's signature)"
        return None


    def check_encoded(self, table: Table, count: int, report) -> None:
        if count == 0:
            raise DataError(f"{table.path}: no readable images left after skipping {report.skipped} bad ones")

    def batch_source(self, table: Table):
        return embedded_bytes(table, self._column(table), "image")

    def record_fields(self, table: Table, index: int, example: dict) -> dict:
        return {"image": example["image"] if isinstance(example["image"], str) else None}

    def encode(self, table: Table, with_labels: bool = True) -> tuple[list[dict], ImageReport]:
        assert self.label_names is not None, "fit() builds the label map before encode()"
        table.require_columns({"data.image_column": self._column(table)})
        if with_labels:
            table.require_columns({"data.label_column": self.label_column})
        sources = [self._image_source(table, i) for i in range(len(table))]  # None: bytes in the source
        paths = [i for i, s in enumerate(sources) if isinstance(s, str)]
        # Read every file's start up front, so a missing or non-image file is named now, not mid-epoch.
        problems = dict(zip(paths, check_each([sources[i] for i in paths], self._problem, self.check_workers)))
        index = {name: k for k, name in enumerate(self.label_names)}
        examples, report = [], ImageReport()
        for i, source in enumerate(sources):
            problem = problems.get(i)
            if problem:
                where = f"{table.where(i)}: field {self.image_column!r}: {source}: {problem}"
                if self.on_bad_image == "error":
                    raise DataError(f"{where}. Fix or remove it, or set data.on_bad_image=skip to skip bad images "
                                    f"(they are counted in data_report.json)")
                report.skipped += 1
                report.bad_images.append(where)
                continue
            example = {"image": source, "row": i}
            if with_labels:
                example["labels"] = label_id(table, i, self.label_column, index)
            examples.append(example)
        report.records = len(examples)
        if report.skipped:
            log.warning("[data] %s: skipped %d bad images (data.on_bad_image=skip); first: %s",
                        table.path, report.skipped, report.bad_images[0])
        return examples, report

