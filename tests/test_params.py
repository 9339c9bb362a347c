import dataclasses
import copy

import pytest
import yaml

from conftest import REPO, default_params
from tlpipe import params
from tlpipe.errors import TlpipeError


def test_shipped_params_are_valid():
    params.load(REPO / "params.yaml")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda p: p["split"].update(sed=1), "unknown key 'split.sed'. Did you mean 'seed'?"),
        (lambda p: p.update(finetun={}), "unknown section 'finetun'. Did you mean 'finetune'?"),
        (lambda p: p["resize"].update(size=0), "'resize.size' must be 'auto' or int >= 1, got 0"),
        (lambda p: p["resize"].update(size="big"), "'resize.size' must be 'auto' or int >= 1, got 'big' (str)"),
        (lambda p: p["finetune"].update(amp=1), "'finetune.amp' must be bool"),
        (lambda p: p["head"].update(C="best"), "'head.C' must be 'auto' or int or float > 0, got 'best' (str)"),
        (lambda p: p["head"].update(epochs=True), "'head.epochs' must be int"),
        (lambda p: p["resize"].update(mode="stretch"), "'resize.mode' must be one of 'squash', 'center-crop', 'pad'"),
        (lambda p: p["split"].update(val_fraction=0.5, test_fraction=0.5), "must be < 1"),
        (lambda p: p["finetune"].update(unfreeze="some"), "'finetune.unfreeze' must be 'all' or a number"),
        (lambda p: p["data"].update(source="s3://bucket"), "'data.source' must start with"),
        (lambda p: p["split"].pop("seed"), "missing key 'split.seed'"),
        (lambda p: p["split"].update(seed=None), "'split.seed' must be int >= 0, got null"),
    ],
)
@pytest.mark.robustness
def test_bad_params_name_the_key(change, message):
    p = copy.deepcopy(default_params())
    change(p)
    with pytest.raises(TlpipeError) as error:
        params.validate(p)
    assert message in str(error.value)


@pytest.mark.robustness
def test_load_reports_bad_yaml(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text('split:\n  group_regex: "\\d"\n')
    with pytest.raises(TlpipeError, match="not valid YAML"):
        params.load(path)


def test_every_param_is_declared_in_dvc_yaml():
    """A key no stage declares would change results without DVC noticing."""
    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text())
    declared = {key for stage in pipeline["stages"].values() for key in stage.get("params", [])}
    known = {f"{s}.{k}" for s, keys in params.SCHEMA.items() for k in keys}
    assert declared <= known, f"dvc.yaml declares params that tlpipe.params does not define: {declared - known}"
    not_declared = known - declared
    # Worker and process counts and devices change speed, never results (tests/test_distributed.py).
    assert not_declared == {"resize.workers", "features.device", "evaluate.device", "features.processes",
                            "finetune.processes", "evaluate.processes"}


def test_params_are_one_frozen_typed_object_per_section_in_params_yaml_order():
    shipped = default_params()
    p = params.validate(shipped)
    assert isinstance(p.finetune, params.FinetuneParams) and p.finetune.epochs == shipped["finetune"]["epochs"]
    assert p.value("split.seed") == shipped["split"]["seed"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.finetune.lr = 1.0  # a resolved value is a new object: dataclasses.replace
    assert {name: list(keys) for name, keys in params.SCHEMA.items()} == {name: list(v) for name, v in shipped.items()}
    assert params.as_dict(p) == shipped
