"""Data setup time with and without the on-disk cache of tokenized splits (data.cache_encoded),
in one run: the first setup tokenizes and writes the cache, the second reads it.

    python bench/encode_cache.py --records 100000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import compare  # noqa: E402 - the encoder and sentence-like texts of the throughput harness


def setup_seconds(model_dir: Path, train_file: Path) -> float:
    from sft.data.datamodule import SFTDataModule

    start = time.perf_counter()
    SFTDataModule(task="text_classification", tokenizer=str(model_dir), train_file=str(train_file)).setup("fit")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ["SFT_CACHE"] = str(work / "cache")  # an empty cache: the first setup is cold
        compare.make_encoder(work, "tiny")
        train_file = compare.make_texts(work, args.records)
        cold = setup_seconds(work, train_file)
        warm = setup_seconds(work, train_file)
    print(f"\ndata setup of {args.records} sentence-like records (train + val), MiniLM-style WordPiece tokenizer")
    print(f"{'tokenize (no cache)':24} {cold:8.2f} s")
    print(f"{'read from cache':24} {warm:8.2f} s")
    print(f"{'ratio cold/cached':24} {cold / warm:8.2f}")


if __name__ == "__main__":
    main()
