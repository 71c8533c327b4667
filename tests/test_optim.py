"""Parameter groups (weight decay, head learning rate) and warmup schedules."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from sft.optim import parameter_groups, warmup_schedule


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 8))
        self.head = nn.Linear(8, 2)


def _group_of(groups: list[dict]) -> dict[int, dict]:
    """id(param) -> its group; fails if a parameter lands in two groups."""
    owner = {}
    for group in groups:
        for p in group["params"]:
            assert id(p) not in owner, "a parameter is in two groups"
            owner[id(p)] = group
    return owner


def test_no_decay_on_biases_and_norm_weights():
    model = Tiny()
    groups = parameter_groups(model.named_parameters())
    owner = _group_of(groups)
    named = dict(model.named_parameters())
    assert set(owner) == {id(p) for p in named.values()}  # nothing lost
    no_decay = {"body.0.bias", "body.1.weight", "body.1.bias", "body.2.bias", "head.bias"}
    for name, p in named.items():
        if name in no_decay:
            assert owner[id(p)].get("weight_decay") == 0.0, name
        else:
            assert "weight_decay" not in owner[id(p)], name  # optimizer default applies
    # Without head_lr, no group overrides the learning rate.
    assert all("lr" not in g for g in groups)

    # What an optimizer makes of the groups: the default decay only on the weight matrices.
    optimizer = torch.optim.AdamW(groups, lr=1e-3, weight_decay=0.05)
    decay_by_param = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert decay_by_param[id(model.body[0].weight)] == 0.05
    assert decay_by_param[id(model.head.weight)] == 0.05
    assert decay_by_param[id(model.body[1].weight)] == 0.0
    assert decay_by_param[id(model.body[0].bias)] == 0.0


def test_frozen_parameters_are_excluded():
    model = Tiny()
    model.body[0].requires_grad_(False)
    groups = parameter_groups(model.named_parameters())
    owner = _group_of(groups)
    assert id(model.body[0].weight) not in owner and id(model.body[0].bias) not in owner
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert set(owner) == trainable


def test_head_lr_applies_to_head_parameters_only():
    model = Tiny()
    groups = parameter_groups(model.named_parameters(), head_prefix="head.", head_lr=1e-2)
    owner = _group_of(groups)
    for name, p in model.named_parameters():
        group = owner[id(p)]
        if name.startswith("head."):
            assert group["lr"] == 1e-2, name
        else:
            assert "lr" not in group, name
    # The head keeps the decay split too.
    assert owner[id(model.head.weight)] is not owner[id(model.head.bias)]
    assert owner[id(model.head.bias)]["weight_decay"] == 0.0
    assert "weight_decay" not in owner[id(model.head.weight)]

    optimizer = torch.optim.AdamW(groups, lr=1e-4)
    lr_by_param = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert lr_by_param[id(model.head.weight)] == 1e-2
    assert lr_by_param[id(model.body[2].weight)] == 1e-4


def test_no_trainable_parameters_is_an_error():
    model = Tiny().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        parameter_groups(model.named_parameters())


def _lrs(kind: str, total: int = 100, **kwargs) -> list[float]:
    """Learning rate (peak 1.0) in effect at each optimizer step 0..total."""
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = warmup_schedule(optimizer, total_steps=total, kind=kind, **kwargs)
    lrs = [optimizer.param_groups[0]["lr"]]
    for _ in range(total):
        optimizer.step()
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


@pytest.mark.parametrize("kind", ["linear", "cosine", "constant"])
def test_warmup_rises_to_peak_at_warmup_end(kind):
    lrs = _lrs(kind, warmup_steps=10)
    warmup = lrs[:11]
    assert all(a < b for a, b in zip(warmup, warmup[1:])), warmup
    assert lrs[10] == pytest.approx(1.0)
    assert max(lrs) == pytest.approx(1.0)
    assert lrs[0] < 0.5 * lrs[10]


def test_linear_decays_to_zero():
    lrs = _lrs("linear", warmup_steps=10)
    decay = lrs[10:]
    assert all(a > b for a, b in zip(decay, decay[1:]))
    assert lrs[55] == pytest.approx(0.5)  # half way through the decay
    assert lrs[100] == pytest.approx(0.0, abs=1e-9)


def test_cosine_is_half_peak_mid_decay():
    lrs = _lrs("cosine", warmup_steps=10)
    assert lrs[55] == pytest.approx(0.5)
    # Cosine stays above linear in the first half of the decay and ends at ~0.
    assert lrs[30] == pytest.approx(0.5 * (1 + math.cos(math.pi * 20 / 90)))
    assert lrs[30] > _lrs("linear", warmup_steps=10)[30]
    assert lrs[100] == pytest.approx(0.0, abs=1e-9)


def test_constant_stays_at_peak():
    lrs = _lrs("constant", warmup_steps=10)
    assert lrs[10:] == pytest.approx([1.0] * 91)


def test_warmup_ratio_matches_warmup_steps():
    by_ratio = _lrs("linear", warmup_ratio=0.1)
    by_steps = _lrs("linear", warmup_steps=10)
    assert by_ratio == pytest.approx(by_steps)
    assert by_ratio[10] == pytest.approx(1.0) and by_ratio[9] < 1.0
    # No warmup at all: starts at the peak.
    assert _lrs("linear")[0] == pytest.approx(1.0)


def test_unknown_schedule_kind():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="'exponential'") as info:
        warmup_schedule(optimizer, total_steps=100, kind="exponential")
    assert "linear" in str(info.value) and "cosine" in str(info.value)


@pytest.mark.parametrize("kind,theirs", [("linear", "linear"), ("cosine", "cosine"),
                                         ("constant", "constant_with_warmup")])
@pytest.mark.parametrize("warmup", [0, 7, 40, 50])
def test_schedules_equal_transformers_get_scheduler(kind, theirs, warmup):
    """sft writes the schedules itself (to keep a heavy import out of every launch); they must stay
    the ones transformers' get_scheduler gives, step for step, warmup as long as the run included."""
    from transformers import get_scheduler

    def lrs(make) -> list[float]:
        optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
        scheduler = make(optimizer)
        out = []
        for _ in range(60):
            out.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return out

    ours = lrs(lambda o: warmup_schedule(o, total_steps=50, kind=kind, warmup_steps=warmup))
    reference = lrs(lambda o: get_scheduler(theirs, o, num_warmup_steps=warmup, num_training_steps=50))
    assert ours == pytest.approx(reference, rel=1e-12, abs=1e-15)
