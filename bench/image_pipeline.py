"""Does image loading keep the model busy? sft's training loader (decode JPEGs, RandomResizedCrop,
flip, in `data.num_workers=auto` worker processes; normalization happens on the device) against
the images/s the model trains at on ready tensors, in one run; a ratio loader/model of at least 1
means the model never waits for data.

Also, per worker on decoded images at 224 px: sft's uint8 hand-over against the usual recipe that
converts and normalizes to float32 inside the worker (torchvision ToDtype + Normalize), same crops.

    python bench/image_pipeline.py                      # CPU size: resnet18 at 112 px
    python bench/image_pipeline.py --size gpu --json image_pipeline.json   # resnet50, 224 px, bf16, channels_last
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SIZES = {
    "cpu": {"architecture": "resnet18", "image_size": 112, "batch_size": 32, "images": 640, "warmup": 2, "steps": 6,
            "precision": "32"},
    "gpu": {"architecture": "resnet50", "image_size": 224, "batch_size": 128, "images": 3000, "warmup": 10, "steps": 40,
            "precision": "bf16"},
}


def write_photos(folder: Path, count: int, classes: int = 10) -> Path:
    """JPEGs of 500x375 (a common photo size) with smooth random content, a folder per class."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        label = folder / f"class{i % classes}"
        label.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((500, 375), Image.BILINEAR).save(label / f"{i}.jpg", quality=90)
    return folder


def loader_images_per_s(train_dir: Path, size: dict) -> tuple[float, int]:
    from sft.data.datamodule import SFTDataModule

    from sft.models.image_backbones import image_data_config

    dm = SFTDataModule(task="image_classification", train_file=str(train_dir),
                       input_spec=image_data_config(None, size["architecture"]),
                       image_size=size["image_size"], batch_size=size["batch_size"], num_workers="auto",
                       val_fraction=0.02, test_fraction=0.02)
    dm.setup("fit")
    images, start = 0, None
    for step, batch in enumerate(dm.train_dataloader()):  # one epoch, timed after the warm-up batches
        if step == size["warmup"]:  # by then the workers have started and filled their queues
            start, images = time.perf_counter(), 0
        images += len(batch["pixel_values"])
    if start is None or images == 0:
        raise RuntimeError(f"{size['images']} images make too few batches for {size['warmup']} warm-up ones")
    return images / (time.perf_counter() - start), dm.num_workers


def worker_images_per_s(size: dict, side: int = 224, batches: int = 5) -> tuple[float, float]:
    """(sft: uint8 out, usual recipe: float32 out) images/s of one worker thread on decoded 500x375
    images cropped to `side` px (224 whatever the size: the common fine-tuning input)."""
    from torchvision.transforms import v2

    from sft.data.images import pixel_transforms, to_tensor

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as inside a DataLoader worker
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (375, 500, 3), dtype=np.uint8) for _ in range(size["batch_size"])]
    ours = pixel_transforms(True, side)
    usual = v2.Compose([ours, v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    rates = []
    for transform in (ours, usual):
        best = float("inf")
        for _ in range(batches):
            start = time.perf_counter()
            torch.stack([transform(to_tensor(image, 3)) for image in images])
            best = min(best, time.perf_counter() - start)
        rates.append(len(images) / best)
    torch.set_num_threads(threads)
    return rates[0], rates[1]


def model_images_per_s(size: dict) -> float:
    import timm

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = timm.create_model(size["architecture"], num_classes=10).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    pixels = torch.randn(size["batch_size"], 3, size["image_size"], size["image_size"], device=device)
    pixels = pixels.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (size["batch_size"],), device=device)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=size["precision"] == "bf16")
    for step in range(size["warmup"] + size["steps"]):
        if step == size["warmup"]:
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        with autocast:
            loss = torch.nn.functional.cross_entropy(model(pixels).float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
    return size["steps"] * size["batch_size"] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="gpu" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--architecture", help="override the timm model of the size")
    parser.add_argument("--image-size", type=int, help="override the input side in pixels")
    parser.add_argument("--images", type=int, help="override how many JPEGs to write")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    size = dict(SIZES[args.size])
    for key in ("architecture", "image_size", "images"):
        if getattr(args, key) is not None:
            size[key] = getattr(args, key)
    with tempfile.TemporaryDirectory() as tmp:
        photos = write_photos(Path(tmp) / "train", size["images"])
        loader, workers = loader_images_per_s(photos, size)
    model = model_images_per_s(size)
    worker_ours, worker_usual = worker_images_per_s(size)
    hardware = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"
    print(f"\n{size['architecture']} at {size['image_size']} px, batch {size['batch_size']}, {size['precision']}, "
          f"on {hardware}; loader: {workers} worker processes (data.num_workers=auto), 500x375 JPEGs")
    print(f"{'sft train loader':24} {loader:10.1f} images/s")
    print(f"{'model training step':24} {model:10.1f} images/s")
    print(f"{'ratio loader/model':24} {loader / model:10.2f}   (>= 1: the model never waits for data)")
    print("\none worker on decoded 500x375 images, RandomResizedCrop to 224 px + flip:")
    print(f"{'sft (uint8 out)':24} {worker_ours:10.1f} images/s")
    print(f"{'float32 + Normalize':24} {worker_usual:10.1f} images/s")
    print(f"{'ratio sft/usual':24} {worker_ours / worker_usual:10.2f}   (and a quarter of the bytes to pin and copy)")
    if args.json:
        args.json.write_text(json.dumps({"size": size, "hardware": hardware, "workers": workers,
                                         "loader_images_per_s": round(loader, 1), "model_images_per_s": round(model, 1),
                                         "ratio": round(loader / model, 3),
                                         "worker": {"ours": round(worker_ours, 1), "peer": round(worker_usual, 1),
                                                    "ratio": round(worker_ours / worker_usual, 3)}}, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
