"""Issue 13: causes, not cases. A path the user named is never removed, archives and downloads are
checked for completeness, local copies follow data/raw's rules, labels stay text, params are read
as DVC reads them, and the two entry points answer every OS fault with one `error:` line."""

import http.server
import io
import os
import re
import stat
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import REPO, default_params, make_image_tree, png_bytes, split_cfg, section
from tlpipe import cli, params
from tlpipe.atomic import atomic_path, write_json
from tlpipe.data.cache import load_split
from tlpipe.data.raw import RawData, read_capped
from tlpipe.data.resize import build_cache
from tlpipe.data.sources import copy_local, fetch
from tlpipe.data.split import build_split
from tlpipe.errors import TlpipeError
from tlpipe.model.backbones import create_backbone
from tlpipe.model.modelfile import model_checkpoint
from tlpipe.train import finetune as ft
from tlpipe.train.head import train_head

pytestmark = pytest.mark.robustness


def tree_snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- a path the user named is never removed ----------------------------------------------------

def test_a_file_is_never_written_over_a_folder(tmp_path):
    folder = tmp_path / "exports"
    make_image_tree(folder, {"a": 2})
    before = tree_snapshot(folder)
    with pytest.raises(TlpipeError, match=r"exports: is a folder; nothing was written and the folder is untouched"):
        write_json(folder, {"x": 1})
    assert tree_snapshot(folder) == before


def test_predict_with_its_input_folder_as_output_keeps_the_folder(tmp_path, capsys):
    images = tmp_path / "imgs"
    make_image_tree(images, {"a": 2})
    before = tree_snapshot(images)
    code = cli.main(["predict", str(images), "--out", str(images), "--model", str(tmp_path / "no-model.pt")])
    assert code == 2 and "Traceback" not in capsys.readouterr().err
    assert tree_snapshot(images) == before


@pytest.mark.parametrize("out", ["imgs/a/img000.png", "imgs", "model.pt"])
def test_predict_never_writes_over_its_own_inputs(tmp_path, capsys, out):
    make_image_tree(tmp_path / "imgs", {"a": 2})
    (tmp_path / "model.pt").write_bytes(b"a model the user keeps")
    before = tree_snapshot(tmp_path)
    code = cli.main(["predict", str(tmp_path / "imgs"), "--model", str(tmp_path / "model.pt"), "--out", str(tmp_path / out)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "is one of this command's inputs" in err or "is a folder" in err
    assert tree_snapshot(tmp_path) == before


@pytest.mark.parametrize("out", ["model.pt", "cache/test.npy"])
def test_export_never_writes_over_the_model_or_the_cache(tmp_path, capsys, out):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache/test.npy").write_bytes(b"cached images")
    (tmp_path / "model.pt").write_bytes(b"a model the user keeps")
    before = tree_snapshot(tmp_path)
    code = cli.main(["export", "--format", "torchscript", "--model", str(tmp_path / "model.pt"),
                     "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / out)])
    assert code == 2 and "is one of this command's inputs" in capsys.readouterr().err
    assert tree_snapshot(tmp_path) == before


def test_outputs_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "out" / "m.json", {"x": 1})
        with atomic_path(tmp_path / "folder", directory=True) as tmp:
            (tmp / "f").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out" / "m.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o755


# --- archives and downloads are checked for completeness -----------------------------------------

def tar_bytes(n: int) -> tuple[bytes, int]:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for i in range(n):
            data = png_bytes(i)
            info = tarfile.TarInfo(f"set/{'ab'[i % 2]}/{i}.png")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    member_bytes = 512 + -(-len(png_bytes(0)) // 512) * 512
    return buffer.getvalue(), member_bytes


@pytest.mark.parametrize("kept_members", [1, 3])
def test_tar_cut_at_a_member_boundary_is_not_read_as_complete(tmp_path, kept_members):
    data, _ = tar_bytes(6)
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        offsets = [m.offset for m in archive.getmembers()] + [archive.offset]
    (tmp_path / "set.tar").write_bytes(data[:offsets[kept_members]])
    with pytest.raises(TlpipeError, match=rf"set.tar: cut short: .* stops after {kept_members} members"):
        RawData(tmp_path).entries()


def test_complete_tar_still_reads(tmp_path):
    (tmp_path / "set.tar").write_bytes(tar_bytes(6)[0])
    assert len(RawData(tmp_path).entries()) == 6


@pytest.mark.parametrize("name", ["set.zip", "set.tar.gz"])
def test_html_page_saved_as_an_archive_is_named_as_such(tmp_path, name):
    (tmp_path / name).write_text("<!DOCTYPE html><html><head><title>Sign in</title></head></html>")
    with pytest.raises(TlpipeError, match=rf"{name}: an HTML page, not a (zip|tar) archive"):
        RawData(tmp_path).entries()


def test_oversized_member_is_refused_while_streaming():
    with pytest.raises(ValueError, match="larger than"):
        read_capped(io.BytesIO(b"x" * (3 << 20)), cap=2 << 20)
    assert read_capped(io.BytesIO(b"x" * 10), cap=2 << 20) == b"x" * 10


class _Handler(http.server.BaseHTTPRequestHandler):
    mode = "html"

    def do_GET(self):  # noqa: N802 - http.server's name
        if self.mode == "html":
            body = b"<html>sign in</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:  # chunked transfer that stops before its last chunk
            self.send_response(200)
            self.send_header("Content-Type", "application/zip")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"400\r\n" + b"x" * 1024 + b"\r\n400\r\n" + b"y" * 100)
            self.wfile.flush()
            self.connection.shutdown(1)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("mode, message", [("html", "answered with a web page"), ("chunked", "stopped early")])
def test_bad_http_answers_are_clear_and_keep_nothing(tmp_path, mode, message):
    handler = type("Handler", (_Handler,), {"mode": mode})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(TlpipeError, match=message):
            fetch(f"url:http://127.0.0.1:{server.server_port}/set.zip", tmp_path / "raw")
    finally:
        server.shutdown()
    assert not (tmp_path / "raw").exists() and not list(tmp_path.glob(".raw.*"))


# --- a local copy follows data/raw's rules ------------------------------------------------------

def test_local_copy_never_follows_links_or_opens_pipes(tmp_path, capsys):
    source = tmp_path / "set"
    make_image_tree(source, {"a": 2, "b": 2})
    os.symlink("..", source / "a" / "loop")
    os.symlink("/etc/hostname", source / "a" / "outside.png")
    os.mkfifo(source / "b" / "pipe.png")
    copy_local(source, tmp_path / "raw")  # a pipe opened for reading would block here forever
    copied = sorted(p.relative_to(tmp_path / "raw").as_posix() for p in (tmp_path / "raw").rglob("*") if p.is_file())
    assert copied == ["set/a/img000.png", "set/a/img001.png", "set/b/img000.png", "set/b/img001.png"]
    err = capsys.readouterr().err
    for name, reason in [("a/loop", "symbolic link"), ("a/outside.png", "symbolic link"), ("b/pipe.png", "pipe")]:
        assert name in err and reason in err


@pytest.mark.parametrize("source", ["path:", "path:   "])
def test_empty_path_source_is_refused(source):
    with pytest.raises(TlpipeError, match="names no path source|names no folder"):
        params.validate(default_params() | {"data": default_params()["data"] | {"source": source}})


@pytest.mark.parametrize("where", ["data/raw/mine", "data/raw", "data", ".", "data/cache/mine"])
def test_a_source_inside_a_pipeline_output_is_refused_before_dvc_deletes_it(tmp_path, capsys, where):
    """DVC removes a stage's outputs before running it; `tlpipe check` must say so while the files exist."""
    for name in ("dvc.yaml", "params.yaml"):
        (tmp_path / name).write_bytes((REPO / name).read_bytes())
    make_image_tree(tmp_path / "data/raw/mine", {"a": 2, "b": 2})
    make_image_tree(tmp_path / "models/imgs", {"a": 2})
    before = (tree_snapshot(tmp_path / "data"), tree_snapshot(tmp_path / "models"))
    text = (tmp_path / "params.yaml").read_text().replace("source: sklearn:digits", f"source: path:{where}")
    text = text.replace("track: stages/download.py", f"track: {where}")
    (tmp_path / "params.yaml").write_text(text)
    assert cli.main(["check", "--params", str(tmp_path / "params.yaml")]) == 2
    err = capsys.readouterr().err
    assert f"'data.source' path:{where} overlaps" in err and "DVC deletes it before each run" in err
    assert len(err.strip().splitlines()) == 1
    assert (tree_snapshot(tmp_path / "data"), tree_snapshot(tmp_path / "models")) == before


def test_a_source_beside_the_outputs_is_accepted(tmp_path):
    for name in ("dvc.yaml", "params.yaml"):
        (tmp_path / name).write_bytes((REPO / name).read_bytes())
    text = (tmp_path / "params.yaml").read_text().replace("source: sklearn:digits", "source: path:data/source")
    text = text.replace("track: stages/download.py", "track: data/source")
    (tmp_path / "params.yaml").write_text(text)
    assert params.load(tmp_path / "params.yaml").data.source == "path:data/source"


# --- labels are text -----------------------------------------------------------------------------

@pytest.mark.parametrize("label", ["NA", "None", "null", "nan", "NaN", "#N-A"])
def test_class_folders_named_like_missing_values_stay_classes(tmp_path, label):
    make_image_tree(tmp_path / "raw", {f"set/{label}": 20, "set/ok": 20})
    table, _ = build_split(RawData(tmp_path / "raw"), split_cfg())
    build_cache(table, RawData(tmp_path / "raw"), tmp_path / "cache", 16, "squash", workers=1)
    _, labels, index = load_split(tmp_path / "cache", "train")
    assert set(index["label"]) == {label, "ok"} and not index["label"].isna().any()


def test_empty_label_in_a_labels_csv_is_a_reported_skip(tmp_path):
    raw = tmp_path / "raw"
    make_image_tree(raw, {"imgs": 40})
    rows = [f"img{i:03d},{'' if i == 3 else 'ab'[i % 2]}" for i in range(40)]
    (raw / "meta.csv").write_text("id,dx\n" + "\n".join(rows) + "\n")
    table, report = build_split(RawData(raw), split_cfg(labels_csv="meta.csv", id_column="id", label_column="dx"))
    assert "" not in set(table["label"]) and len(table) == 39
    assert {"path": "imgs/img003.png", "reason": "empty label in column 'dx' of meta.csv"} in report.skipped


# --- splits are checked before carving -----------------------------------------------------------

def test_a_data_set_folder_called_test_is_not_silently_all_test(tmp_path):
    make_image_tree(tmp_path / "raw", {"scans/test/a": 10, "scans/test/b": 10})
    with pytest.raises(TlpipeError, match=r"no image is left to train on: all 20 images .* \(test; e\.g\. scans/test"):
        build_split(RawData(tmp_path / "raw"), split_cfg())


def test_group_regex_matching_no_file_is_an_error(tmp_path):
    make_image_tree(tmp_path / "raw", {"set/a": 20, "set/b": 20})
    with pytest.raises(TlpipeError, match=r"matches none of the 40 file names \(e\.g\. img000\.png"):
        build_split(RawData(tmp_path / "raw"), split_cfg(group_regex=r"^(person\d+)_"))


def test_classes_too_small_for_the_folds_are_named_before_carving(tmp_path):
    make_image_tree(tmp_path / "raw", {"set/a": 2, "set/b": 2})
    with pytest.raises(TlpipeError, match=r"too few images to carve a 15% split: the largest class has 2"):
        build_split(RawData(tmp_path / "raw"), split_cfg())


# --- params are read as DVC reads them -----------------------------------------------------------

def write_params(tmp_path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def default_text() -> str:
    return (REPO / "params.yaml").read_text()


@pytest.mark.parametrize("edit, message", [
    (lambda t: re.sub(r"lr: [0-9.]+( +# peak)", r"lr: .nan\1", t), "'finetune.lr' .* not a finite"),
    (lambda t: t.replace("max_archive_gb: 50", "max_archive_gb: .inf"), "'data.max_archive_gb' .* not a finite"),
    (lambda t: t.replace("  seed: 42\n", "  seed: 42\n  seed: 43\n"), "duplicate key 'seed' \\(line"),
    (lambda t: t.replace("group_regex: auto", "group_regex: '(person'"), "'split.group_regex' is not a valid regular"),
    (lambda t: t.replace("labels_csv: null", "labels_csv: /home/me/labels.csv"), "'split.labels_csv' must be a path inside data/raw"),
    (lambda t: t.replace("labels_csv: null", "labels_csv: ../labels.csv"), "'split.labels_csv' must be a path inside data/raw"),
    (lambda t: t.encode("utf-8").replace(b"# Every knob", b"# \xe9very knob"), "not UTF-8 text"),
    (lambda t: t.replace("seed: 42", "seed: [42"), "not valid YAML at line"),
])
def test_params_mistakes_are_one_clear_line(tmp_path, edit, message):
    with pytest.raises(TlpipeError, match=message) as error:
        params.load(write_params(tmp_path, edit(default_text())))
    assert "\n" not in str(error.value)


def test_yaml_1_2_numbers_are_numbers(tmp_path):
    loaded = params.load(write_params(tmp_path, re.sub(r"lr: [0-9.]+ +# peak", "lr: 1e-4  # peak", default_text())))
    assert loaded.finetune.lr == 1e-4


def test_tlpipe_check_refuses_what_a_stage_refuses(tmp_path, capsys):
    path = write_params(tmp_path, default_text().replace("  seed: 42\n", "  seed: 42\n  seed: 43\n"))
    assert cli.main(["check", "--params", str(path)]) == 2
    assert "duplicate key 'seed'" in capsys.readouterr().err


# --- the two entry points: one error line, no traceback, for generic faults -----------------------

STAGE_SCRIPTS = sorted(p.name for p in (REPO / "stages").glob("*.py"))


def run_script(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300)


def faulty_project(tmp_path: Path, fault: str) -> Path:
    project = tmp_path / fault
    project.mkdir()
    text = default_text()
    if fault == "non-utf8-params":
        (project / "params.yaml").write_bytes(text.encode() + b"\n# \xff\n")
        return project
    if fault == "params-is-a-folder":
        (project / "params.yaml").mkdir()
        return project
    (project / "params.yaml").write_text(text.replace("source: sklearn:digits", f"source: path:{tmp_path / 'nowhere'}"))
    if fault == "empty-inputs":
        for name in ("data/raw", "data/cache", "data/features", "models", "data/predictions"):
            (project / name).mkdir(parents=True, exist_ok=True)
        for name in ("data/split.csv", "data/cache/train-0123456789abcdef.npy",
                     "data/cache/train-0123456789abcdef.csv", "data/cache/classes.json",
                     "data/cache/preprocess.json", "data/features/train.npy", "data/features/train_labels.npy",
                     "data/features/val.npy", "data/features/val_labels.npy", "models/head.pt", "models/model.pt",
                     "data/predictions/finetune_test.csv"):
            (project / name).write_bytes(b"")
    return project


# Runs every stage script in one process per fault (importing torch once): an exception that escapes
# stage.run is exactly the traceback a user would see.
STAGE_WALK = """
import contextlib, io, json, runpy, sys, traceback
results = {}
for script in sys.argv[1:]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as exit_:
            code = exit_.code
        except BaseException:
            code, _ = "traceback", traceback.print_exc()
    results[script] = [code, err.getvalue()]
print(json.dumps(results))
"""


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["missing-inputs", "empty-inputs", "non-utf8-params", "params-is-a-folder"])
def test_every_stage_answers_a_generic_fault_with_one_error_line(tmp_path, fault):
    import json

    project = faulty_project(tmp_path, fault)
    result = run_script(["-c", STAGE_WALK, *[str(REPO / "stages" / s) for s in STAGE_SCRIPTS]], project)
    outcomes = json.loads(result.stdout.strip().splitlines()[-1])
    assert sorted(outcomes) == sorted(str(REPO / "stages" / s) for s in STAGE_SCRIPTS)
    for script, (code, err) in outcomes.items():
        assert code == 2, (script, code, err)
        assert "Traceback" not in err, (script, err)
        assert err.strip().splitlines()[-1].startswith("error: "), (script, err)


@pytest.mark.parametrize("args", [
    ["predict", "{missing}"], ["predict", "{folder}", "--model", "{empty}"], ["predict", "{folder}", "--model", "{folder}"],
    ["predict", "{folder}", "--model", "{garbage}"], ["predict", "{folder}", "--batch-size", "0"],
    ["export", "--format", "onnx", "--model", "{missing}"], ["export", "--format", "torchscript", "--model", "{empty}"],
    ["check", "--params", "{missing}"], ["check", "--params", "{folder}"], ["check", "--params", "{latin1}"],
    ["preset", "chest-xray-pneumonia", "--params", "{missing}"],
])
def test_every_cli_verb_answers_a_generic_fault_with_one_error_line(tmp_path, args):
    make_image_tree(tmp_path / "folder", {"a": 1})
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "garbage").write_bytes(b"PK\x03\x04 not really a model")
    (tmp_path / "latin1").write_bytes(b"data:\n  source: caf\xe9\n")
    names = {"missing": tmp_path / "missing", "folder": tmp_path / "folder", "empty": tmp_path / "empty",
             "garbage": tmp_path / "garbage", "latin1": tmp_path / "latin1"}
    argv = [a.format(**names) for a in args]
    result = run_script(["-m", "tlpipe.cli", *argv], tmp_path)
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(("error: ", "tlpipe ")), result.stderr


@pytest.mark.parametrize("refused", ["rename", "temporary file"])
def test_read_only_output_folder_is_one_error_line_and_keeps_the_output(tmp_path, monkeypatch, capsys, refused):
    """Folder permissions do not bind root (as CI runs), so the refusal the file system gives is
    injected, as the OS words it: about the temporary file (os.replace names both paths, the
    temporary one first), which is gone by the time the user reads the message."""
    import signal
    import tempfile

    from tlpipe import stage

    monkeypatch.chdir(tmp_path)
    write_json("metrics/m.json", {"old": 1})

    def read_only_replace(src, dst):
        raise PermissionError(13, "Permission denied", str(src), None, str(dst))

    def read_only_folder(prefix, suffix, dir):
        raise PermissionError(13, "Permission denied", f"{dir}/{prefix}k2j4h5g6{suffix}")

    if refused == "rename":
        monkeypatch.setattr(os, "replace", read_only_replace)
    else:
        monkeypatch.setattr(tempfile, "mkstemp", read_only_folder)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as exit_info:
            stage.run(lambda: write_json("metrics/m.json", {"new": 2}))
    finally:
        signal.signal(signal.SIGTERM, previous)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert err.strip() == "error: metrics/m.json: permission denied. Make it (and its folder) readable and " \
                          "writable for you, or run from a copy you own."
    assert (tmp_path / "metrics" / "m.json").read_text().strip().endswith("}") and '"old": 1' in \
        (tmp_path / "metrics" / "m.json").read_text()
    assert not list((tmp_path / "metrics").glob(".*partial"))


# --- failed commands keep earlier outputs --------------------------------------------------------

def tiny_model_file(path: Path) -> None:
    backbone = create_backbone("efficientnet_lite0", "none")
    cfg = section("finetune", head_init="random")
    model = ft.build_model(backbone, 2, cfg)
    checkpoint = model_checkpoint(model, "efficientnet_lite0", ["a", "b"], {"size": 32, "mode": "squash", "contrast": "none"},
                                  cfg, 0)
    torch.save(checkpoint, path)


def test_failed_predict_keeps_the_previous_csv(tmp_path):
    tiny_model_file(tmp_path / "model.pt")
    make_image_tree(tmp_path / "good", {"a": 2})
    out = tmp_path / "predictions.csv"
    assert cli.main(["predict", str(tmp_path / "good"), "--model", str(tmp_path / "model.pt"), "--out", str(out)]) == 0
    before = out.read_bytes()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"not an image")
    assert cli.main(["predict", str(tmp_path / "bad"), "--model", str(tmp_path / "model.pt"), "--out", str(out)]) == 2
    assert out.read_bytes() == before


def test_diverging_mlp_head_writes_nothing():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 8)).astype(np.float32), np.arange(40) % 2
    x[5, 0] = np.inf  # one bad feature row: the loss of its batch is not finite
    cfg = section("head", kind="mlp", epochs=3)
    with pytest.raises(TlpipeError, match="train-head: the MLP's loss became .*nothing was written"):
        train_head(cfg, x, y, x[:10], y[:10], ["a", "b"])


def test_one_image_last_batch_trains_with_batchnorm_updating():
    torch.manual_seed(0)
    backbone = create_backbone("efficientnet_lite0", "none")
    cfg = section("finetune", {"epochs": 1, "freeze_epochs": 0, "batch_size": 8, "device": "cpu",
                               "patience": 0, "bn_policy": "train", "head_init": "random"})
    model = ft.build_model(backbone, 2, cfg)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(17, 32, 32, 3), dtype=np.uint8)  # 8 + 8 + 1
    labels = (np.arange(17) % 2).astype(np.int64)
    result = ft.fit(model, ft.Split(images, labels), ft.Split(images[:4], labels[:4]), cfg, 2, torch.device("cpu"),
                    log=lambda _: None, decision_metric="balanced_accuracy")
    assert len(result.history) == 1


def test_refused_resize_lists_every_unreadable_file(tmp_path):
    raw = tmp_path / "raw"
    make_image_tree(raw, {"set/a": 10, "set/b": 10})
    broken = sorted(raw.rglob("*.png"))[:5]
    for path in broken:
        path.write_bytes(b"broken")
    table, _ = build_split(RawData(raw), split_cfg(test_fraction=0.2, val_fraction=0.2))
    with pytest.raises(TlpipeError, match=r"5 of 20 images .* all of them are listed in .*cache\.unreadable\.csv"):
        build_cache(table, RawData(raw), tmp_path / "cache", 16, "squash", workers=1, max_unreadable_fraction=0.1)
    listed = pd.read_csv(tmp_path / "cache.unreadable.csv")
    assert sorted(listed["path"]) == sorted(p.relative_to(raw).as_posix() for p in broken)
    assert not (tmp_path / "cache").exists()
