"""Adding ten images to a 2,000-image set: `dvc repro` rewrites at most two shards per split, and
`dvc push` uploads exactly the new objects (counted in a local-directory remote)."""

import hashlib
import re
from pathlib import Path

import pytest
import yaml

from conftest import make_image_tree, run

pytestmark = pytest.mark.slow

SPLITS = ("train", "val", "test")


def set_params(project: Path, **changes) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        params[section][key] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def remote_files(remote: Path) -> set[str]:
    return {str(p.relative_to(remote)) for p in remote.rglob("*") if p.is_file()}


def output_md5s(project: Path) -> set[str]:
    # every cached output of download, split and resize: data, their detailed metrics (metrics/*.json
    # are cached outputs) and records/ (cached copies of Git-tracked metrics, tlpipe.records)
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    outs = [out["path"] for name in ("download", "split", "resize") for out in lock[name].get("outs", [])]
    files = [p for out in outs for p in [project / out, *(project / out).rglob("*")] if p.is_file()]
    assert files and all(not (project / out).is_file() or (project / out) in files for out in outs)
    return {hashlib.md5(p.read_bytes()).hexdigest() for p in files}


def shards(project: Path) -> dict[str, set[str]]:
    names = [p.name for p in (project / "data" / "cache").glob("*.npy")]
    return {split: {n for n in names if n.startswith(split + "-")} for split in SPLITS}


def test_adding_ten_images_rewrites_and_uploads_at_most_two_shards_per_split(dvc_project, tmp_path):
    project, images, remote = dvc_project, tmp_path / "images", tmp_path / "remote"
    # the data set ships its split (train/val/test folders), so adding images moves no old image
    make_image_tree(images, {"train/a": 700, "train/b": 700, "val/a": 150, "val/b": 150, "test/a": 150,
                             "test/b": 150})
    # 8 px images (192 bytes) in shards of at most 0.08 MiB (436 images): 3 to 12 shards per split
    set_params(project, **{"data.source": f"path:{images}", "data.track": str(images), "resize.size": 8, "resize.shard_mb": 0.08})
    run(["dvc", "remote", "add", "-d", "store", str(remote)], project)
    run(["dvc", "repro", "resize"], project)
    before = shards(project)
    assert all(len(before[s]) >= 2 for s in SPLITS) and len(before["train"]) >= 5, before
    md5_before = output_md5s(project)
    run(["dvc", "push"], project)
    uploaded_before = remote_files(remote)

    make_image_tree(images, {"train/a": 4, "val/b": 3, "test/a": 3}, seed=7, prefix="new")
    run(["dvc", "repro", "--force", "download"], project)  # DVC does not watch a path: source folder
    run(["dvc", "repro", "resize"], project)
    after = shards(project)
    for split in SPLITS:
        assert 1 <= len(after[split] - before[split]) <= 2, (split, after[split] - before[split])
        assert len(before[split] - after[split]) <= 2

    run(["dvc", "push"], project)
    uploaded = remote_files(remote) - uploaded_before
    new_files = {re.sub(r"\W", "", name) for name in uploaded if not name.endswith(".dir")}
    expected = {md5 for md5 in output_md5s(project) - md5_before}
    # DVC's remote holds files/md5/XX/REST: the new objects are the new files' contents ...
    assert {name[-32:] for name in new_files} == expected
    # ... 10 images, split.csv, the split and resize metrics, at most 2 shards (.npy + .csv)
    # per split, and the 2 folder listings
    assert len(expected) <= 10 + 1 + 2 + 2 * 2 * len(SPLITS)
    assert len([n for n in uploaded if n.endswith(".dir")]) == 2
    assert len(uploaded) < len(uploaded_before) / 50
    print(f"shards per split {[len(after[s]) for s in SPLITS]}, new {[len(after[s] - before[s]) for s in SPLITS]}; "
          f"push uploaded {len(uploaded)} objects after {len(uploaded_before)} the first time")
