"""The image-defaults bar (issue 17): a generated 10-class image folder (5 shapes x 2 stripe directions,
random colours, sizes, positions and pixel noise; PNGs of 96 px), trained with the defaults only:

    python bench/image_defaults_bar.py /tmp/shapes 100
    python train.py data=image_folder model=image_classifier data.train_file=/tmp/shapes trainer.max_epochs=3

The bar: test/acc >= 0.90 with the catalog efficientnet-lite0 (the image_classifier default)."""

import random
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ["circle", "square", "triangle", "cross", "ring"]
SIZE = 96


def draw_shape(mask: ImageDraw.ImageDraw, shape: str, cx: int, cy: int, r: int) -> None:
    box = [cx - r, cy - r, cx + r, cy + r]
    if shape == "circle":
        mask.ellipse(box, fill=255)
    elif shape == "square":
        mask.rectangle(box, fill=255)
    elif shape == "triangle":
        mask.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=255)
    elif shape == "cross":
        w = r // 3
        mask.rectangle([cx - w, cy - r, cx + w, cy + r], fill=255)
        mask.rectangle([cx - r, cy - w, cx + r, cy + w], fill=255)
    else:  # ring
        mask.ellipse(box, fill=255)
        mask.ellipse([cx - r // 2, cy - r // 2, cx + r // 2, cy + r // 2], fill=0)


def image(rng: random.Random, shape: str, stripes: str, noise_seed: int) -> Image.Image:
    background = tuple(rng.randint(0, 255) for _ in range(3))
    foreground = tuple(rng.randint(0, 255) for _ in range(3))
    picture = Image.new("RGB", (SIZE, SIZE), background)
    texture = Image.new("RGB", (SIZE, SIZE), background)
    pen = ImageDraw.Draw(texture)
    step = rng.randint(4, 7)
    for k in range(0, SIZE, step * 2):
        pen.rectangle([0, k, SIZE, k + step - 1] if stripes == "h" else [k, 0, k + step - 1, SIZE], fill=foreground)
    mask = Image.new("L", (SIZE, SIZE), 0)
    r = rng.randint(22, 40)
    draw_shape(ImageDraw.Draw(mask), shape, rng.randint(r, SIZE - r), rng.randint(r, SIZE - r), r)
    picture.paste(texture, (0, 0), mask)
    noisy = np.asarray(picture).astype(np.int16) + np.random.default_rng(noise_seed).integers(-20, 21, (SIZE, SIZE, 3))
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


def main(root: Path, per_class: int) -> None:
    rng = random.Random(0)
    for label in range(10):
        shape, stripes = SHAPES[label // 2], ("h", "v")[label % 2]
        folder = root / f"{shape}_{stripes}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image(rng, shape, stripes, label * 100000 + i).save(folder / f"{i:04d}.png")
    print("wrote", 10 * per_class)


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
