"""Image classification: sources in each layout, tiny timm and Hugging Face backbones (random init),
bad images, MixUp/CutMix soft targets, the freeze schedule, layer-wise decay, eval predictions."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from PIL import Image

from sft.cli import config_dir, evaluate, train
from sft.models.image_backbones import image_data_config
from sft.data.datamodule import SFTDataModule
from sft.data.sources import DataError
from tests.conftest import compose_config

COLORS = ["red", "green", "blue"]
SIZE = 24


def color_image(rng: np.random.Generator, label: int) -> np.ndarray:
    """A learnable task: the class is the channel that is bright, under noise."""
    pixels = rng.integers(0, 90, (SIZE, SIZE, 3), dtype=np.uint8)
    pixels[:, :, label] += 140
    return pixels


def write_folder(root: Path, per_class: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for label, name in enumerate(COLORS):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(color_image(rng, label)).save(root / name / f"{i}.png")
    return root


def write_listing(root: Path, per_class: int, kind: str) -> Path:
    """Images under root/images/, listed with paths relative to the listing file."""
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(per_class * len(COLORS)):
        label = i % len(COLORS)
        Image.fromarray(color_image(rng, label)).save(root / "images" / f"{i}.jpg", quality=95)
        rows.append({"path": f"images/{i}.jpg", "label": COLORS[label]})
    if kind == "csv":
        listing = root / "train.csv"
        with open(listing, "w", newline="") as f:
            writer = csv.DictWriter(f, ["path", "label"])
            writer.writeheader()
            writer.writerows(rows)
    else:
        listing = root / "train.jsonl"
        listing.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return listing


def write_arrays(path: Path, per_class: int) -> Path:
    rng = np.random.default_rng(2)
    labels = np.arange(per_class * len(COLORS)) % len(COLORS)
    images = np.stack([color_image(rng, int(y)) for y in labels])
    np.savez(path, images=images, labels=labels, label_names=np.array(["r", "g", "b"]))
    return path


@pytest.fixture(scope="session")
def timm_weights_file(tmp_path_factory) -> str:
    """A tiny timm EfficientNet (random init) saved as a plain state dict, as users bring weights files."""
    import timm

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("timm") / "test_efficientnet.pth"
    torch.save(timm.create_model("test_efficientnet", num_classes=1000).state_dict(), path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_vit_dir(tmp_path_factory) -> str:
    """A 2-layer ViT (random init) with its image processor, saved as a Hugging Face folder."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    folder = tmp_path_factory.mktemp("tiny_vit")
    torch.manual_seed(0)
    ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64)).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(folder)
    return str(folder)


def image_overrides(train_file, pretrained, extra=()) -> list[str]:
    return [
        "data=image_folder", "model=image_classifier", f"data.train_file={train_file}", f"model.pretrained={pretrained}",
        "data.image_size=32", "data.num_workers=0", "data.batch_size=8", "data.eval_batch_size=32",
        "data.train_transforms.crop_scale=[0.5,1.0]", "data.val_fraction=0.15", "data.test_fraction=0.15",
        "trainer.accelerator=cpu", "trainer.max_epochs=5", "trainer.val_check_interval=1.0",
        "trainer.log_every_n_steps=1", "trainer.num_sanity_val_steps=0", "optimizer.lr=3e-3",
        "callbacks.early_stopping=null", "extras.print_config=false", "callbacks.progress_bar.refresh_rate=0",
    ] + list(extra)


class RecordLoss(Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def assert_learns(losses: list[float], metrics: dict) -> None:
    first, last = np.mean(losses[:4]), np.mean(losses[-4:])
    assert last < 0.7 * first, f"loss did not fall: {first:.3f} -> {last:.3f}"
    assert metrics["test/acc"] >= 0.8, metrics  # three balanced classes: chance is 1/3


# -- training in each layout -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folder_run(tmp_path_factory, timm_weights_file):
    """Folder layout, a timm weights file: one training run shared by the tests below."""
    root = tmp_path_factory.mktemp("folder_run")
    data = write_folder(root / "train", per_class=16)
    cfg = compose_config("train", image_overrides(data, timm_weights_file, ["model.architecture=test_efficientnet"]),
                         root / "run")
    recorder = RecordLoss()
    metrics = train(cfg, extra_callbacks=[recorder])
    return cfg, root / "run", metrics, recorder.losses


def test_folder_layout_with_timm_weights_file_learns(folder_run):
    _, run_dir, metrics, losses = folder_run
    assert_learns(losses, metrics)
    assert "test/acc_top5" not in metrics  # only 3 classes
    assert {"test/f1", "test/f1_red", "val/acc"} <= set(metrics)
    assert json.loads((run_dir / "data_report.json").read_text())["test"]["skipped_bad_images"] == 0


def test_confusion_matrix_image_in_tensorboard(folder_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run_dir, _, _ = folder_run
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    images = events.Images("val/confusion_matrix")
    assert len(images) == 5  # one per validation (one per epoch)
    assert images[0].width > 100 and images[0].height > 100


def test_eval_writes_top_k_predictions(folder_run, tmp_path):
    _, run_dir, metrics, _ = folder_run
    predictions = tmp_path / "predictions.jsonl"
    evaluated = evaluate(compose_config("eval", [f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}",
                                                 "trainer.accelerator=cpu", f"predictions_file={predictions}",
                                                 "extras.print_config=false"], tmp_path / "eval_run"))
    assert evaluated["test/acc"] == metrics["test/acc"]
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert len(rows) == round(48 * 0.15)
    for row in rows:
        assert Path(row["image"]).is_file() and row["image"] == row["source"]
        top = row["top_k"]
        assert len(top) == 3 and top[0]["label"] == row["prediction"]
        assert [t["probability"] for t in top] == sorted((t["probability"] for t in top), reverse=True)
        assert sum(t["probability"] for t in top) == pytest.approx(1.0, abs=1e-4)  # 3 classes: top-3 is all
    assert np.mean([r["prediction"] == r["label"] for r in rows]) == pytest.approx(metrics["test/acc"])


def eval_with_export(run_dir: Path, tmp_path: Path) -> tuple[list[dict], Path]:
    """eval.py on the run's best checkpoint, writing predictions and an export folder."""
    predictions, export = tmp_path / "predictions.jsonl", tmp_path / "export"
    evaluate(compose_config("eval", [f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}", "trainer.accelerator=cpu",
                                     f"predictions_file={predictions}", f"export_dir={export}",
                                     "extras.print_config=false"], tmp_path / "eval_run"))
    return [json.loads(line) for line in predictions.read_text().splitlines()], export


def assert_predictor_matches_eval(predictor, images: list, rows: list[dict]) -> None:
    """The export predicts what eval.py predicted on the same test images, with the same probabilities."""
    assert len(images) == len(rows) > 0
    for row, answer in zip(rows, predictor.predict(images)):
        assert answer["label"] == row["prediction"]
        assert [t["label"] for t in answer["top_k"]] == [t["label"] for t in row["top_k"]]
        for ours, theirs in zip(answer["top_k"], row["top_k"]):
            assert ours["probability"] == pytest.approx(theirs["probability"], abs=1e-4)


def test_timm_export_predicts_like_eval(folder_run, tmp_path):
    import timm
    from safetensors.torch import load_file

    from sft.export import ImagePredictor, Predictor

    _, run_dir, _, _ = folder_run
    rows, export = eval_with_export(run_dir, tmp_path)
    predictor = Predictor.load(export)  # one entry point for text and image exports
    assert isinstance(predictor, ImagePredictor) and predictor.label_names == sorted(COLORS)
    assert_predictor_matches_eval(predictor, [row["image"] for row in rows], rows)
    # A PIL image and a decoded array are prepared exactly as the file they came from.
    first = rows[0]["image"]
    by_path, by_pil, by_array = predictor.predict_proba([first, Image.open(first), np.array(Image.open(first))])
    assert torch.allclose(by_path, by_pil) and torch.allclose(by_path, by_array)
    # The folder is timm's own (config.json + model.safetensors, with the classifier): timm loads it, strictly.
    info = json.loads((export / "sft_model.json").read_text())
    assert info["layout"] == "stock" and info["architecture"] == "test_efficientnet" and info["input"]["size"] == 32
    timm.create_model(info["architecture"], num_classes=3).load_state_dict(load_file(export / "model.safetensors"))


def test_csv_layout_learns_with_random_init_timm_and_ema(tmp_path):
    """CSV listing of JPEGs, random-init timm model, weights averaged by the EMA callback (which then
    also supplies the validated, checkpointed and tested weights)."""
    listing = write_listing(tmp_path / "data", per_class=16, kind="csv")
    cfg = compose_config("train", image_overrides(listing, "null", ["data=image_csv", "model.architecture=test_efficientnet",
                                                                    "callbacks=[default,ema]", "callbacks.ema.decay=0.7",
                                                                    "callbacks.early_stopping=null"]), tmp_path / "run")
    recorder = RecordLoss()
    metrics = train(cfg, extra_callbacks=[recorder])
    assert_learns(recorder.losses, metrics)
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    ema = [value for key, value in state["callbacks"].items() if key.startswith("EMAWeightAveraging")]
    assert ema and ema[0]["latest_update_step"] > 0, list(state["callbacks"])


def test_jsonl_listing_reads_like_csv(tmp_path):
    """The same images listed in CSV and JSONL (paths relative to each file) become the same examples."""
    examples = {}
    for kind in ("csv", "jsonl"):
        dm = image_datamodule(write_listing(tmp_path / kind, per_class=3, kind=kind))
        dm.setup("fit")
        examples[kind] = [(Path(e["image"]).relative_to(tmp_path / kind), e["labels"]) for e in dm.encoded("train").examples]
        assert dm.label_names == sorted(COLORS)
    assert examples["csv"] == examples["jsonl"] and len(examples["csv"]) > 0


def test_array_layout_with_hf_vit_learns(tmp_path, tiny_vit_dir):
    arrays = write_arrays(tmp_path / "train.npz", per_class=16)
    cfg = compose_config("train", image_overrides(arrays, tiny_vit_dir, ["trainer.max_epochs=4"]), tmp_path / "run")
    recorder = RecordLoss()
    metrics = train(cfg, extra_callbacks=[recorder])
    assert_learns(recorder.losses, metrics)
    assert {"test/f1_r", "test/f1_g", "test/f1_b"} <= set(metrics)  # the arrays' own class names

    from sft.export import Predictor

    rows, export = eval_with_export(tmp_path / "run", tmp_path)
    images = np.load(arrays)["images"]
    test_images = [images[int(row["source"].rsplit(" item ", 1)[1])] for row in rows]
    assert (export / "config.json").is_file()  # the ViT as a Hugging Face folder
    assert_predictor_matches_eval(Predictor.load(export), test_images, rows)


def write_saved_image_dataset(root: Path, per_class: int, broken_train_row: int | None = None) -> Path:
    """A DatasetDict as save_to_disk writes it, the way Hugging Face image data sets come: PNG bytes
    in an Image column named `img` (as cifar10 names it) and a ClassLabel `label` whose class
    order is not alphabetical."""
    import io

    from datasets import ClassLabel, Dataset, DatasetDict, Features
    from datasets import Image as ImageFeature

    rng = np.random.default_rng(3)
    features = Features({"img": ImageFeature(), "label": ClassLabel(names=COLORS)})

    def split(count: int, broken: int | None = None) -> Dataset:
        images, labels = [], []
        for i in range(count):
            buffer = io.BytesIO()
            Image.fromarray(color_image(rng, i % len(COLORS))).save(buffer, format="PNG")
            images.append({"bytes": b"not an image" if i == broken else buffer.getvalue(), "path": None})
            labels.append(i % len(COLORS))
        return Dataset.from_dict({"img": images, "label": labels}, features)

    DatasetDict({"train": split(per_class * len(COLORS), broken_train_row), "validation": split(9),
                 "test": split(9)}).save_to_disk(str(root))
    return root


def test_hugging_face_image_dataset_reads_its_bytes_per_batch(tmp_path, monkeypatch):
    from sft.data import images

    decoded = []
    original = images.open_image
    monkeypatch.setattr(images, "open_image", lambda source, mode: decoded.append(source) or original(source, mode))
    saved = write_saved_image_dataset(tmp_path / "saved", per_class=4)
    dm = image_datamodule(saved, batch_size=5, num_workers=0)
    dm.setup()
    assert dm.label_names == COLORS  # the ClassLabel's names, in its order
    assert decoded == [] and dm.report["train"]["records"] == 12  # nothing decoded (or copied) at setup
    for loader in (dm.train_dataloader(), dm.test_dataloader()):
        for batch in loader:
            brightest = batch["pixel_values"].float().mean(dim=(2, 3)).argmax(dim=1)
            assert brightest.tolist() == batch["labels"].tolist()  # each image arrived with its own record's label
    assert len(decoded) == 12 + 9 and all(isinstance(source, bytes) for source in decoded)

    broken = write_saved_image_dataset(tmp_path / "broken", per_class=4, broken_train_row=6)
    dm = image_datamodule(broken, batch_size=12, num_workers=0)
    dm.setup("fit")  # embedded bytes are not even header-checked up front: that would read them all
    with pytest.raises(DataError, match=r"broken \[train\] row 7: its pixels could not be decoded"):
        next(iter(dm.train_dataloader()))


def test_hugging_face_image_dataset_trains(tmp_path, timm_weights_file):
    saved = write_saved_image_dataset(tmp_path / "saved", per_class=16)
    cfg = compose_config("train", image_overrides(saved, timm_weights_file, [
        "model.architecture=test_efficientnet"]), tmp_path / "run")
    recorder = RecordLoss()
    metrics = train(cfg, extra_callbacks=[recorder])
    assert_learns(recorder.losses, metrics)
    assert {f"test/f1_{name}" for name in COLORS} <= set(metrics)


def test_normalization_comes_from_the_backbone(tiny_vit_dir, timm_weights_file):
    """The model side reads the input spec of the backbone; the data side takes it (and user overrides)."""
    from sft.data.images import ImageClassificationProcessor
    from sft.models.image_backbones import image_data_config

    vit = ImageClassificationProcessor(input_spec=image_data_config(tiny_vit_dir))
    assert (vit.input["size"], vit.input["mean"], vit.input["crop_pct"]) == (32, [0.5] * 3, 1.0)
    timm_file = ImageClassificationProcessor(input_spec=image_data_config(timm_weights_file, "test_efficientnet"))
    assert timm_file.input["size"] == 160 and timm_file.input["mean"] == pytest.approx([0.485, 0.456, 0.406])
    overridden = ImageClassificationProcessor(input_spec=image_data_config(tiny_vit_dir), image_size=48,
                                              mean=[0.1, 0.2, 0.3])
    assert overridden.input["size"] == 48 and overridden.input["mean"] == [0.1, 0.2, 0.3]


def test_image_data_config_does_not_reach_into_the_model_config():
    """Configuration flows from the model group into data, never the reverse."""
    for name in ("image_folder", "image_csv", "fashion_mnist"):
        text = (Path(config_dir()) / "data" / f"{name}.yaml").read_text()
        assert "${model." not in text and "oc.select:model" not in text, name
    for source in (Path(__file__).parents[1] / "sft" / "data").glob("*.py"):
        imports = [line for line in source.read_text().splitlines() if line.strip().startswith(("from ", "import "))]
        assert not [line for line in imports if "sft.models" in line], source.name


# -- bad images ------------------------------------------------------------------------------------------
@pytest.fixture
def listing_with_bad_images(tmp_path) -> Path:
    root = tmp_path / "data"
    listing = write_listing(root, per_class=4, kind="csv")
    (root / "images" / "0.jpg").write_bytes(b"this is not an image")  # corrupt
    good = (root / "images" / "1.jpg").read_bytes()
    (root / "images" / "1.jpg").write_bytes(good[: len(good) - 200])  # truncated pixel data, intact header
    with open(listing, "a", newline="") as f:
        csv.writer(f).writerow(["images/missing.jpg", "red"])  # missing
    return listing


# What the test architecture expects of its input, as the model side reports it (see sft.cli.model_input_spec).
TEST_INPUT = image_data_config(None, "test_efficientnet")


def image_datamodule(train_file, **options) -> SFTDataModule:
    return SFTDataModule(task="image_classification", train_file=str(train_file), input_spec=TEST_INPUT,
                         image_size=32, val_fraction=0.2, test_fraction=0.2, **options)


def test_bad_image_is_an_error_naming_it(listing_with_bad_images):
    dm = image_datamodule(listing_with_bad_images)
    with pytest.raises(DataError, match=r"train\.csv:\d+: field 'path': .*images/\d\.jpg: not a readable image|"
                                        r"train\.csv:\d+: field 'path': .*missing\.jpg: file not found") as error:
        dm.setup("fit")
        dm.setup("test")
    assert "data.on_bad_image=skip" in str(error.value)


def test_bad_images_skipped_and_counted(listing_with_bad_images, caplog):
    dm = image_datamodule(listing_with_bad_images, on_bad_image="skip")
    dm.setup()
    total = sum(len(dm.tables()[s]) for s in ("train", "val", "test"))
    assert total == 13
    # Setup reads headers only: the missing and the corrupt file are found now ...
    skipped = sum(dm.report[s]["skipped_bad_images"] for s in ("train", "val", "test"))
    assert skipped == 2
    assert sum(dm.report[s]["records"] for s in ("train", "val", "test")) == 11
    reasons = " ".join(r for s in ("train", "val", "test") for r in dm.report[s]["bad_images"])
    assert "missing.jpg: file not found" in reasons and reasons.count("not a readable image") == 1
    # ... the truncated one (a valid header) when its batch is decoded: skipped there, and named in the log.
    with caplog.at_level("WARNING", logger="sft.data.images"):
        images = sum(len(batch["pixel_values"]) for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader())
                     for batch in loader)
    assert images == 10
    assert sum("1.jpg: its pixels could not be decoded" in r.getMessage() for r in caplog.records) == 1


def test_setup_decodes_no_image(listing_with_bad_images, monkeypatch):
    """A launch reads image headers, never pixels: decoding happens per batch in the workers."""
    from sft.data import images

    decoded = []
    original = images.open_image
    monkeypatch.setattr(images, "open_image", lambda path, mode: decoded.append(path) or original(path, mode))
    dm = image_datamodule(listing_with_bad_images, on_bad_image="skip")
    dm.setup()
    assert decoded == []
    dm.processor.on_bad_image = "error"  # the same file under the default policy: an error naming it
    with pytest.raises(DataError, match=r"images/1\.jpg: its pixels could not be decoded.*data.on_bad_image=skip"):
        dm.processor.make_collator(None)([{"image": str(listing_with_bad_images.parent / "images" / "1.jpg"), "labels": 0}])


def test_class_folder_listing_is_kept_in_arrow_keyed_by_its_files(tmp_path, monkeypatch):
    from sft.data.images import read_source
    from sft.data.sources import ArrowTable

    monkeypatch.setenv("SFT_CACHE", str(tmp_path / "cache"))
    root = write_folder(tmp_path / "folder", per_class=3)
    (root / "red" / "notes.txt").write_text("not an image")
    table = read_source(root, "data.train_file")
    assert isinstance(table, ArrowTable)  # memory-mapped, not a list of dicts
    expected = [{"path": str(root / name / f"{i}.png"), "label": name} for name in sorted(COLORS) for i in range(3)]
    assert list(table.rows) == expected and table.where(4) == expected[4]["path"]
    listings = sorted((tmp_path / "cache" / "records").glob("*.arrow"))
    assert len(listings) == 1
    again = read_source(root, "data.train_file")  # an unchanged folder: the same records file and key
    assert again.fingerprint() == table.fingerprint()
    assert sorted((tmp_path / "cache" / "records").glob("*.arrow")) == listings
    assert not list((tmp_path / "cache" / "records").glob("*.tmp"))
    Image.fromarray(color_image(np.random.default_rng(5), 0)).save(root / "red" / "extra.png")
    changed = read_source(root, "data.train_file")
    assert len(changed) == len(expected) + 1 and changed.fingerprint() != table.fingerprint()


def test_setup_check_reads_each_files_signature(tmp_path, monkeypatch):
    import threading

    from sft.data import sources
    from sft.data.images import IMAGE_SUFFIXES, ImageClassificationProcessor

    pixels = Image.fromarray(color_image(np.random.default_rng(0), 1))
    good = []
    for suffix in sorted(IMAGE_SUFFIXES):
        path = tmp_path / f"image{suffix}"
        (pixels.convert("L") if suffix == ".pgm" else pixels).save(path)
        good.append(str(path))
    (tmp_path / "notes.jpg").write_text("<html>not found</html>")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "folder.png").mkdir()
    bad = {"notes.jpg": "not a readable image (its first bytes b'<html>no' are no image format's signature)",
           "empty.png": "not a readable image (the file is empty)", "missing.jpg": "file not found",
           "folder.png": "not readable (IsADirectoryError"}
    paths = good + [str(tmp_path / name) for name in bad]
    check = ImageClassificationProcessor._problem
    problems = sources.check_each(paths, check, workers=4)
    assert problems[:len(good)] == [None] * len(good)
    for name, problem in zip(bad, problems[len(good):]):
        assert problem.startswith(bad[name]), (name, problem)
    # Slow storage (every check over the limit): the items past the probe are checked on threads, in order.
    threads = set()
    monkeypatch.setattr(sources, "SLOW_CHECK_SECONDS", 0.0)
    monkeypatch.setattr(sources, "SPEED_PROBE_ITEMS", 3)
    assert sources.check_each(paths, lambda path: threads.add(threading.get_ident()) or check(path), workers=4) == problems
    assert len(threads - {threading.get_ident()}) >= 1
    threads.clear()  # fast checks stay in this process
    monkeypatch.setattr(sources, "SLOW_CHECK_SECONDS", 1e9)
    assert sources.check_each(paths, lambda path: threads.add(threading.get_ident()) or check(path), workers=4) == problems
    assert threads == {threading.get_ident()}


def test_missing_image_folder(tmp_path):
    with pytest.raises(DataError, match="data.train_file: not found"):
        image_datamodule(tmp_path / "nowhere").setup("fit")


# -- conversions and augmentation -------------------------------------------------------------------
def test_grayscale_and_rgba_become_rgb(tmp_path):
    from sft.data.images import open_image, to_tensor

    Image.fromarray(np.full((8, 8), 77, np.uint8), "L").save(tmp_path / "gray.png")
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:4, :, :] = [200, 10, 10, 255]  # opaque red top, fully transparent bottom
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    gray = to_tensor(open_image(str(tmp_path / "gray.png"), "RGB"), 3)
    assert gray.shape == (3, 8, 8) and (gray == 77).all()
    color = to_tensor(open_image(str(tmp_path / "rgba.png"), "RGB"), 3)
    assert color[:, 0, 0].tolist() == [200, 10, 10] and color[:, 7, 7].tolist() == [255, 255, 255]
    assert to_tensor(np.full((5, 5), 9, np.uint8), 3).shape == (3, 5, 5)  # array data sets (Fashion-MNIST)
    assert to_tensor(np.zeros((5, 5, 3), np.uint8), 1).shape == (1, 5, 5)


@pytest.mark.parametrize("mix", [{"mixup_alpha": 0.8}, {"cutmix_alpha": 1.0}, {"mixup_alpha": 0.8, "cutmix_alpha": 1.0}])
def test_mixup_cutmix_soft_targets(mix):
    from sft.data.images import ImageClassificationProcessor
    from sft.models.image_head import ImageClassificationHead

    torch.manual_seed(0)
    processor = ImageClassificationProcessor(input_spec=TEST_INPUT, image_size=16,
                                             label_names=["a", "b", "c", "d"], **mix)
    rng = np.random.default_rng(0)
    items = [{"image": rng.integers(0, 255, (20, 20, 3), dtype=np.uint8), "labels": i % 4} for i in range(7)]
    collated = processor.make_collator(train=True)(items)
    assert collated["pixel_values"].dtype == torch.uint8  # mixing happens on the device, after the copy
    batch = processor.on_device(collated, train=True)
    assert batch["pixel_values"].dtype == torch.float32
    soft = batch["soft_labels"]
    assert soft.shape == (7, 4)
    assert torch.allclose(soft.sum(-1), torch.ones(7))
    assert (soft.max(-1).values < 1).any()  # targets really are mixed
    assert "soft_labels" not in processor.on_device(processor.make_collator(train=False)(items), train=False)

    head = ImageClassificationHead(8, ["a", "b", "c", "d"], label_smoothing=0.1)
    logits = torch.randn(7, 4, requires_grad=True)
    loss = head.loss(logits, batch)
    loss.backward()
    assert torch.isfinite(loss) and logits.grad.abs().sum() > 0
    one_hot = {"labels": batch["labels"], "soft_labels": torch.nn.functional.one_hot(batch["labels"], 4).float()}
    assert head.loss(logits, one_hot).item() == pytest.approx(head.loss(logits, {"labels": batch["labels"]}).item(), rel=1e-5)


def test_batches_travel_as_uint8_and_are_finished_on_the_device(tmp_path):
    """Workers hand over uint8 (a quarter of the bytes to pin and copy); after the transfer the
    batch is normalized exactly as torchvision's ToDtype + Normalize would, and random erasing
    draws a box per image."""
    from torchvision.transforms import v2

    dm = image_datamodule(write_arrays(tmp_path / "train.npz", per_class=8),
                          train_transforms={"crop_scale": None, "hflip": 0.0, "random_erasing": 1.0})
    dm.setup("fit")
    collated = next(iter(dm.val_dataloader()))
    assert collated["pixel_values"].dtype == torch.uint8
    finished = dm.on_after_batch_transfer(collated, 0)  # no trainer attached: evaluation
    spec = dm.processor.input
    reference = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(spec["mean"], spec["std"])])
    assert torch.allclose(finished["pixel_values"], reference(collated["pixel_values"]), atol=1e-6)

    train_batch = dm.processor.on_device(next(iter(dm.train_dataloader())), train=True)
    erased = [(image == 0).all(0) for image in train_batch["pixel_values"]]  # RandomErasing fills with 0
    assert all(mask.any() for mask in erased)
    assert len({tuple(mask.nonzero().min(0).values.tolist()) for mask in erased}) > 1  # not one box for all


# -- fine-tuning recipes -------------------------------------------------------------------------------
def test_freeze_schedule(tmp_path):
    """Backbone weights and BatchNorm statistics stay fixed through epoch 0, then train from epoch 1."""
    from sft.callbacks.finetuning import BackboneFreezeUnfreeze

    data = write_folder(tmp_path / "train", per_class=8)
    cfg = compose_config("train", image_overrides(data, "null", ["model.architecture=test_efficientnet",
                                                                 "trainer.max_epochs=2", "test=false"]), tmp_path / "run")
    snapshots = {}

    class Snapshot(Callback):
        def on_train_start(self, trainer, pl_module):
            snapshots["start"] = {k: v.clone() for k, v in pl_module.backbone.state_dict().items()}

        def on_train_epoch_end(self, trainer, pl_module):
            snapshots[trainer.current_epoch] = {k: v.clone() for k, v in pl_module.backbone.state_dict().items()}
            snapshots[f"head{trainer.current_epoch}"] = pl_module.head.classifier.weight.detach().clone()

    train(cfg, extra_callbacks=[BackboneFreezeUnfreeze(unfreeze_at_epoch=1, backbone_lr=1e-2), Snapshot()])
    start, frozen, unfrozen = snapshots["start"], snapshots[0], snapshots[1]
    assert all(torch.equal(start[k], frozen[k]) for k in start), "backbone changed while frozen"
    weights = [k for k in start if k.endswith("weight")]
    assert sum(not torch.equal(frozen[k], unfrozen[k]) for k in weights) > 0.9 * len(weights)
    assert any(not torch.equal(frozen[k], unfrozen[k]) for k in start if k.endswith("running_mean"))
    assert not torch.equal(snapshots["head0"], snapshots["head1"])


def test_layer_decay_groups(timm_weights_file):
    from sft.models.module import SFTModule

    module = SFTModule("image_classification", ["a", "b"], None, modality="image", architecture="test_efficientnet",
                       layer_decay=0.5, head_lr=0.1, optimizer=lambda groups: torch.optim.AdamW(groups, lr=1e-3))
    optimizer = module.configure_optimizers()
    by_name = {}
    for group in optimizer.param_groups:
        by_name.setdefault(group["name"].removesuffix("_no_decay"), set()).add(group["lr"])
    assert by_name.pop("head") == {0.1}
    layers = sorted((int(name.split("_")[1]), lrs.pop()) for name, lrs in by_name.items())
    assert len(layers) >= 3
    rates = [lr for _, lr in layers]
    assert rates == sorted(rates) and rates[-1] == pytest.approx(1e-3 * 0.5)  # deeper layers learn faster
    assert rates[0] == pytest.approx(1e-3 * 0.5 ** (len(layers)))
    seen = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert seen == {id(p) for p in module.parameters()}


def test_channels_last_gives_the_same_features():
    from sft.models.image_backbones import load_image_backbone

    torch.manual_seed(0)
    plain = load_image_backbone(None, "test_efficientnet").eval()
    fast = load_image_backbone(None, "test_efficientnet", channels_last=True).eval()
    fast.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(plain(x), fast(x), atol=1e-5)


def test_image_data_with_text_model_is_refused(tmp_path):
    from sft.tasks import ConfigError

    data = write_folder(tmp_path / "train", per_class=2)
    cfg = compose_config("train", ["data=image_folder", f"data.train_file={data}", "extras.print_config=false"],
                         tmp_path / "run")
    with pytest.raises(ConfigError, match="needs a image backbone|needs an image backbone"):
        train(cfg)


def test_debian_package_member_is_read_without_dpkg(tmp_path):
    """A .deb is an ar archive holding data.tar.xz; sft reads the member itself."""
    import io
    import tarfile

    from sft import assets

    payload = io.BytesIO()
    with tarfile.open(fileobj=payload, mode="w:xz") as tar:
        for name, content in (("./usr/share/datasets/x/a.bin", b"abc"), ("./usr/share/doc/x/README", b"doc")):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    members = [("debian-binary", b"2.0\n"), ("control.tar.xz", b"x"), ("data.tar.xz", payload.getvalue())]
    deb = tmp_path / "pkg_1.0_all.deb"
    with open(deb, "wb") as f:
        f.write(b"!<arch>\n")
        for name, body in members:
            f.write(f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(body):<10}`\n".encode())
            f.write(body + (b"\n" if len(body) % 2 else b""))
    assets._extract_member(deb, "usr/share/datasets/x", tmp_path / "out")
    assert (tmp_path / "out" / "usr/share/datasets/x/a.bin").read_bytes() == b"abc"
    assert not (tmp_path / "out" / "usr/share/doc").exists()  # only the member
    with pytest.raises(assets.AssetError, match="holds no 'usr/share/missing'"):
        assets._extract_member(deb, "usr/share/missing", tmp_path / "out2")


# -- real catalog assets ------------------------------------------------------------------------------
@pytest.mark.assets
def test_efficientnet_lite0_mapping_classifies_photos():
    """The catalog weights, renamed onto timm's tf_efficientnet_lite0 with the ImageNet head kept,
    see a cat in scikit-image's chelsea (ImageNet 281-285) and an espresso in coffee (967), with
    images prepared by our own eval pipeline from the backbone's pretrained config."""
    from skimage import data

    from sft.data.images import build_transforms, to_tensor
    from sft.models.image_backbones import image_data_config, timm_from_catalog

    model = timm_from_catalog("efficientnet-lite0", num_classes=1000).eval()
    spec = image_data_config("efficientnet-lite0")
    assert (spec["size"], spec["mean"], spec["std"]) == (224, [0.5] * 3, [0.5] * 3)
    transform = build_transforms(False, spec["size"], spec["mean"], spec["std"], spec["interpolation"], spec["crop_pct"])
    with torch.no_grad():
        batch = torch.stack([transform(to_tensor(image, 3)) for image in (data.chelsea(), data.coffee())])
        probabilities = model(batch).softmax(-1)
    cat, coffee = probabilities.argmax(-1).tolist()
    assert 281 <= cat <= 285, probabilities[0].topk(3)
    assert coffee == 967, probabilities[1].topk(3)
    assert probabilities[1, 967] > 0.5


@pytest.mark.assets
def test_fashion_mnist_asset():
    from sft import assets

    train_path, test_path = assets.fetch("fashion_mnist"), assets.split_file("fashion_mnist", "test")
    dm = SFTDataModule(task="image_classification", dataset="fashion_mnist", input_spec=TEST_INPUT,
                       image_size=32, val_fraction=0.05, max_train_records=1000)
    tables = dm.tables()
    assert tables["test"].path == str(test_path) and len(tables["test"]) == 10_000  # the official test split
    assert len(tables["val"]) == 3_000 and len(tables["train"]) == 1_000
    assert dm.label_names[:2] == ["T-shirt/top", "Trouser"] and len(dm.label_names) == 10  # the data set's order
    with np.load(train_path) as arrays:
        assert arrays["images"].shape == (60_000, 28, 28)
        assert np.bincount(arrays["labels"]).tolist() == [6_000] * 10
