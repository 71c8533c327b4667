"""The benchmark harness runs and writes its figures (speed itself is measured by bench/, not here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_overhead_harness_writes_json(tmp_path):
    out = tmp_path / "overhead.json"
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "compare.py"), "overhead", "--size", "cpu", "--shape",
                             "tiny", "--steps", "3", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(out.read_text())
    for side in ("ours", "peer", "ratio"):
        assert set(figures[side]) == {"samples_per_s", "peak_memory_gb", "mean_loss"}
    assert figures["ours"]["samples_per_s"] > 0 and figures["peer"]["samples_per_s"] > 0
    # Same module, weights and batches on both sides: the losses of the timed steps agree.
    assert abs(figures["ours"]["mean_loss"] - figures["peer"]["mean_loss"]) < 1e-3
    assert "ratio sft/peer" in result.stdout
