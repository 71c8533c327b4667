"""The installed package carries its configs: a wheel's sft/conf composes without a checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_configs_usable_without_checkout(tmp_path):
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(tmp_path / "dist"), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("sft-*.whl"))
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    assert (site / "sft" / "conf" / "train.yaml").is_file()
    assert (site / "sft" / "conf" / "data" / "rotten_tomatoes.yaml").is_file()

    # Run the console-script entry point from the unpacked wheel, away from the checkout.
    code = ("import sys; sys.argv = ['sft-train', '--cfg', 'job']; import sft.cli as c; "
            "print('CONFIG_DIR=' + c.config_dir()); c.train_main()")
    env = {**os.environ, "PYTHONPATH": str(site)}
    shown = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=300)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert f"CONFIG_DIR={site / 'sft' / 'conf'}" in shown.stdout
    assert "pretrained: minilm-l6" in shown.stdout
