"""Knobs and inputs that cannot mean anything are refused with one line before any work; inputs
that mean something unusual (ids with extensions, repeated archive entries) are read as meant."""

from dataclasses import replace
import io
import tarfile
import zipfile

import pandas as pd
import pytest
import torch

from conftest import default_params, png_bytes, split_cfg, section
from tlpipe import params
from tlpipe.data.raw import RawData
from tlpipe.data.resize import auto_size
from tlpipe.data.split import build_split
from tlpipe.errors import TlpipeError
from tlpipe.model.backbones import create_backbone, minimum_input_size
from tlpipe.model.classifier import Classifier
from tlpipe.train.strategy import trainable_blocks

pytestmark = pytest.mark.robustness


def with_changes(**changes) -> dict:
    p = default_params()
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        p[section][key] = value
    return p


@pytest.mark.parametrize("changes, said", [
    ({"finetune__freeze_epochs": 5, "finetune__epochs": 3}, "'finetune.freeze_epochs' (5) is more than 'finetune.epochs' (3)"),
    ({"head__kind": "attention", "features__spatial_grid": 0}, "'head.kind: attention' pools feature maps"),
])
def test_knobs_that_cannot_mean_anything_are_refused_by_check(changes, said):
    with pytest.raises(TlpipeError) as info:
        params.validate(with_changes(**changes))
    assert said in str(info.value) and "\n" not in str(info.value)


def test_unfreezing_more_blocks_than_the_backbone_has_is_refused_at_the_first_epoch():
    backbone = create_backbone("efficientnet_lite0", "none")
    model = Classifier(backbone.body, torch.nn.Linear(backbone.num_features, 2), backbone.mean, backbone.std)
    cfg = section("finetune", strategy="last_blocks", unfreeze=50, freeze_epochs=1)
    with pytest.raises(TlpipeError, match=r"finetune.unfreeze: 50 last block groups, but this backbone has \d+"):
        trainable_blocks(model, 0, cfg)
    assert trainable_blocks(model, 0, replace(cfg, unfreeze=2)) == []


def test_auto_size_respects_the_backbones_smallest_input():
    assert minimum_input_size("inception_v3") == 75 and minimum_input_size("efficientnet_lite0") == 1
    assert minimum_input_size("timm:vit_tiny_patch16_224") == 224  # a fixed input size
    assert auto_size(299, 48, minimum_input_size("inception_v3")) == 75
    assert auto_size(224, 48, minimum_input_size("efficientnet_lite0")) == 64


def make_zip(path, entries):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries:
            zf.writestr(name, data)


def test_label_ids_with_extensions_or_folders_match_their_images(tmp_path):
    raw = tmp_path / "raw"
    (raw / "images").mkdir(parents=True)
    rows = []
    for i in range(24):
        (raw / "images" / f"ISIC_{i:04d}.jpg").write_bytes(png_bytes(i))
        rows.append({"image": f"ISIC_{i:04d}.jpg" if i % 2 else f"images/ISIC_{i:04d}.jpg", "dx": "ab"[i % 2]})
    pd.DataFrame(rows).to_csv(raw / "meta.csv", index=False)
    table, report = build_split(RawData(raw), split_cfg(labels_csv="meta.csv", id_column="image", label_column="dx",
                                                       near_duplicate_similarity=None))
    assert len(table) == 24 and not report.labels_without_file


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_repeated_archive_entries_are_never_read_as_one_another(tmp_path, kind):
    raw = tmp_path / "raw"
    raw.mkdir()
    entries = [(f"set/{'ab'[i % 2]}/{i:02d}.png", png_bytes(i)) for i in range(20)]
    entries += [("set/a/00.png", png_bytes(999)),  # the same name, other bytes: ambiguous
                ("set/b/01.png", png_bytes(1))]    # the same name, the same bytes: a harmless repeat
    if kind == "zip":
        make_zip(raw / "set.zip", entries)
    else:
        with tarfile.open(raw / "set.tar", "w") as tf:
            for name, data in entries:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    data = RawData(raw)
    listed = {e.path.split("/", 1)[1] for e in data.entries()}
    reasons = {r.path.split("/", 1)[1]: r.reason for r in data.rejected}
    assert "set/a/00.png" not in listed and "different bytes" in reasons["set/a/00.png"]
    if kind == "zip":
        assert "set/b/01.png" in listed and "same bytes; the first is used" in reasons["set/b/01.png"]
    else:  # a tar does not say whether two members hold the same bytes without reading them
        assert "set/b/01.png" not in listed and "set/b/01.png" in reasons


def test_a_size_below_the_backbones_smallest_input_stops_resize_with_one_line(tmp_path):
    import os
    import subprocess
    import sys

    import yaml

    from conftest import REPO

    p = default_params()
    p["backbone"]["name"], p["resize"]["size"] = "inception_v3", 48
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    (tmp_path / "data" / "raw" / "a").mkdir(parents=True)
    (tmp_path / "data" / "raw" / "a" / "x.png").write_bytes(png_bytes(1))
    (tmp_path / "data" / "split.csv").write_text("path,label,split,group\na/x.png,a,train,a/x.png\n")
    result = subprocess.run([sys.executable, str(REPO / "stages" / "resize.py")], cwd=tmp_path, text=True,
                            capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == ("error: resize.size: 48 px is below the smallest input "
                                                      "inception_v3 takes (75 px); set resize.size: 75 or more, or auto.")
    assert not (tmp_path / "data" / "cache").exists()
