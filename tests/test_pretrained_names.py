"""model.pretrained that names nothing usable: one clean error, fast, naming it and what to use instead."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from sft import assets
from sft.tasks import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    monkeypatch.setattr(assets, "_hub_models_seen", set())


def test_offline_typo_fails_at_once_naming_close_catalog_names(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(assets, "_ask_hub", lambda *a: pytest.fail("asked the hub while offline"))
    with pytest.raises(ConfigError) as caught:
        assets.resolve_pretrained("minilm-l12")
    message = str(caught.value)
    assert "model.pretrained=minilm-l12" in message and "HF_HUB_OFFLINE" in message
    assert "close name: minilm-l6" in message
    assert "/path/to/folder" in message and "save_pretrained" in message


def test_path_like_name_fails_without_network(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(assets, "_ask_hub", lambda *a: pytest.fail("asked the hub about a path"))
    missing = tmp_path / "no" / "such" / "model"
    with pytest.raises(ConfigError, match=r"no such file or folder"):
        assets.resolve_pretrained(str(missing))
    with pytest.raises(ConfigError, match=r"no such file or folder"):
        assets.resolve_pretrained("./my_models/bert")


def test_hub_answers_are_reported(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(assets, "_hub_cached", lambda name: False)
    monkeypatch.setattr(assets, "_ask_hub", lambda name, seconds: None if name == "org/real" else "no such model")
    assert assets.resolve_pretrained("org/real") == "org/real"
    with pytest.raises(ConfigError, match=r"model.pretrained=org/typo: .*no such model"):
        assets.resolve_pretrained("org/typo")


def test_hub_that_never_answers_costs_at_most_the_limit(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(assets, "_hub_cached", lambda name: False)
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", lambda self, *a, **k: time.sleep(30))
    start = time.monotonic()
    with pytest.raises(ConfigError, match="did not answer within 1 s"):
        _check_with_limit("org/slow", 1.0)
    assert time.monotonic() - start < 3


def _check_with_limit(name: str, seconds: float) -> None:
    old = assets.HUB_CHECK_SECONDS
    assets.HUB_CHECK_SECONDS = seconds
    try:
        assets.check_hub_model(name)
    finally:
        assets.HUB_CHECK_SECONDS = old


def test_train_py_with_a_typo_ends_within_seconds(tmp_path, sentiment_csv):
    """As a user runs it, offline: one error naming the value, well before any weights or data load."""
    start = time.monotonic()
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "model.pretrained=no-such-model-xyz",
                             "data=text_classification", f"data.train_file={sentiment_csv}", "logger=none",
                             f"hydra.run.dir={tmp_path / 'run'}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    elapsed = time.monotonic() - start
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "model.pretrained=no-such-model-xyz" in output and "HF_HUB_OFFLINE" in output, output[-3000:]
    assert "/path/to/folder" in output
    assert "Traceback" not in output or "HYDRA_FULL_ERROR" in output
    assert elapsed < 30, elapsed  # the Python start and imports; no network wait (was about 65 s)
