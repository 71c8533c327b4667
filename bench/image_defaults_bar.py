"""Issue 17 item 2, the image bar: a generated 10-class image folder (5 shapes x 2 stripe directions, random
colours, sizes, positions, pixel noise; 100 PNGs of 96 px per class), trained with the defaults only:

    python bench/image_defaults_bar.py /tmp/shapes 100
    python train.py data=image_folder model=image_classifier data.train_file=/tmp/shapes trainer.max_epochs=3

The bar: test/acc >= 0.90 with the catalog efficientnet-lite0 (the image_classifier default)."""
import random, sys
from pathlib import Path
from PIL import Image, ImageDraw
import numpy as np

root = Path(sys.argv[1]); per_class = int(sys.argv[2]); rng = random.Random(0)
SHAPES = ["circle", "square", "triangle", "cross", "ring"]
for label in range(10):
    shape, stripes = SHAPES[label // 2], ("h", "v")[label % 2]
    folder = root / f"{shape}_{stripes}"; folder.mkdir(parents=True, exist_ok=True)
    for i in range(per_class):
        size = 96
        bg = tuple(rng.randint(0, 255) for _ in range(3)); fg = tuple(rng.randint(0, 255) for _ in range(3))
        img = Image.new("RGB", (size, size), bg)
        tex = Image.new("RGB", (size, size), bg); d = ImageDraw.Draw(tex)
        step = rng.randint(4, 7)
        for k in range(0, size, step * 2):
            d.rectangle([0, k, size, k + step - 1] if stripes == "h" else [k, 0, k + step - 1, size], fill=fg)
        mask = Image.new("L", (size, size), 0); m = ImageDraw.Draw(mask)
        r = rng.randint(22, 40); cx, cy = rng.randint(r, size - r), rng.randint(r, size - r)
        box = [cx - r, cy - r, cx + r, cy + r]
        if shape == "circle": m.ellipse(box, fill=255)
        elif shape == "square": m.rectangle(box, fill=255)
        elif shape == "triangle": m.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=255)
        elif shape == "cross":
            w = r // 3; m.rectangle([cx - w, cy - r, cx + w, cy + r], fill=255); m.rectangle([cx - r, cy - w, cx + r, cy + w], fill=255)
        else: m.ellipse(box, fill=255); m.ellipse([cx - r // 2, cy - r // 2, cx + r // 2, cy + r // 2], fill=0)
        img.paste(tex, (0, 0), mask)
        arr = np.asarray(img).astype(np.int16) + np.random.default_rng(label * 100000 + i).integers(-20, 21, (size, size, 3))
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(folder / f"{i:04d}.png")
print("wrote", 10 * per_class)
