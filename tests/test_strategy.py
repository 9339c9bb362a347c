"""finetune.strategy: what each one trains, and what auto picks (and says why)."""

import pytest
from torch import nn

from conftest import default_params, section
from tlpipe.errors import TlpipeError
from tlpipe.model.backbones import block_groups
from tlpipe.model.classifier import Classifier
from tlpipe.params import validate
from tlpipe.train.strategy import LARGE_SET, SMALL_SET, choose, set_trainable


def model() -> Classifier:
    body = nn.Sequential(nn.Sequential(*[nn.Conv2d(3, 3, 1) for _ in range(5)]), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return Classifier(body, nn.Linear(3, 2), (0.5,) * 3, (0.5,) * 3)


def trained(m: Classifier) -> list[bool]:
    return [all(p.requires_grad for p in block.parameters()) for block in block_groups(m.body)]


@pytest.mark.parametrize("strategy, unfreeze, expected", [
    ("head", 3, [False] * 5),
    ("last_blocks", 2, [False, False, False, True, True]),
    ("all", 3, [True] * 5),
])
def test_what_each_strategy_trains_after_the_frozen_epochs(strategy, unfreeze, expected):
    m = model()
    cfg = section("finetune", strategy=strategy, unfreeze=unfreeze, freeze_epochs=1)
    set_trainable(m, 0, cfg)
    assert trained(m) == [False] * 5  # the frozen epochs freeze the body whatever the strategy
    set_trainable(m, 5, cfg)
    assert trained(m) == expected
    assert all(p.requires_grad for p in m.head.parameters())


def test_auto_picks_by_set_size_and_probe_score_and_says_why():
    assert choose("auto", SMALL_SET // 2, 0.97)[0] == "head"
    assert choose("auto", SMALL_SET // 2, 0.6)[0] == "last_blocks"
    assert choose("auto", SMALL_SET * 2, 0.95)[0] == "last_blocks"
    assert choose("auto", SMALL_SET * 2, 0.5)[0] == "all"
    assert choose("auto", LARGE_SET, 0.99)[0] == "all"
    picked, why = choose("auto", 120, 0.973)
    assert "120 training images" in why and "0.973" in why
    assert choose("last_blocks", 120, None) == ("last_blocks", "set in params.yaml")


def test_last_blocks_needs_a_number_of_blocks():
    params = default_params()
    params["finetune"] |= {"strategy": "last_blocks", "unfreeze": "all"}
    with pytest.raises(TlpipeError, match="'finetune.strategy: last_blocks' needs 'finetune.unfreeze'"):
        validate(params)


@pytest.mark.parametrize("value, ok", [("auto", True), (0.003, True), (1e-4, True), ("fast", False), (0, False)])
def test_finetune_lr_is_a_number_or_auto(value, ok):
    params = default_params()
    params["finetune"]["lr"] = value
    if ok:
        validate(params)
    else:
        with pytest.raises(TlpipeError, match="finetune.lr"):
            validate(params)
