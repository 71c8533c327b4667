"""Each model group's optimizer recipe reaches optimizer=adamw; a user's optimizer.lr still wins."""

from __future__ import annotations

import pytest

from tests.conftest import compose_config

IMAGE = ["data=image_folder", "data.train_file=/nowhere"]


@pytest.mark.parametrize("overrides,lr,weight_decay", [
    ([], 5.0e-5, 0.01),                                              # the embedded default: MiniLM
    (IMAGE + ["model=image_classifier"], 1.0e-3, 0.01),               # conv backbone
    (IMAGE + ["model=image_classifier", "optimizer.lr=3e-4"], 3.0e-4, 0.01),  # the user's rate wins
    (["data=chat", "data.train_file=/nowhere", "model=causal_lm"], 2.0e-5, 0.0),
    (["data=chat", "data.train_file=/nowhere", "model=causal_lm", "model/peft=lora"], 2.0e-4, 0.0),
    (["data=chat", "data.train_file=/nowhere", "model=causal_lm", "model/peft=lora", "optimizer.lr=5e-4",
      "optimizer.weight_decay=0.1"], 5.0e-4, 0.1),
    (["experiment=image_fashion_mnist"], 1.0e-3, 0.01),             # an experiment's own rate wins too
    (["experiment=chat_smollm2_lora"], 1.0e-3, None),
])
def test_recipe_reaches_the_optimizer_and_user_wins(tmp_path, overrides, lr, weight_decay):
    cfg = compose_config("train", overrides, tmp_path)
    assert cfg.optimizer.lr == pytest.approx(lr)
    if weight_decay is not None:
        assert cfg.optimizer.weight_decay == pytest.approx(weight_decay)


def test_image_recipe_layer_decay_and_sgd_keeps_its_rate(tmp_path):
    cfg = compose_config("train", IMAGE + ["model=image_classifier"], tmp_path)
    assert cfg.model.layer_decay == 0.8
    assert compose_config("train", IMAGE + ["experiment=image_fashion_mnist"], tmp_path).model.layer_decay is None
    sgd = compose_config("train", IMAGE + ["model=image_classifier", "optimizer=sgd"], tmp_path)
    assert sgd.optimizer.lr == pytest.approx(1.0e-2)  # the recipe is AdamW's; SGD keeps its own rate
