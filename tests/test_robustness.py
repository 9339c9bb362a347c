"""Bad inputs: every file of a messy data set is either used or listed with a reason.

One tree mixes good images, odd-but-valid images, broken files, litter, links and archives; split
and resize run over it once, and each case checks where its file ended up and why.
"""

import io
import os
import shutil
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_image_tree, png_bytes, split_cfg
from tlpipe.data.resize import build_cache
from tlpipe.errors import TlpipeError
from tlpipe.data.raw import RawData, printable
from tlpipe.data.cache import load_split
from tlpipe.data.split import build_split, split_metrics

pytestmark = pytest.mark.robustness

NON_UTF8_NAME = b"caf\xe9.png"


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int = 50_000) -> bytes:
    """A 2.5-gigapixel PNG in 60 bytes: only its header, which is all Pillow's guard needs."""
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b""))
            + png_chunk(b"IEND", b""))


def palette_with_transparency() -> bytes:
    image = Image.new("P", (10, 10), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    return encode(image, transparency=1)


def exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(Image.new("RGB", (20, 10), (255, 0, 0)), "JPEG", exif=exif.tobytes())


USED = {
    "shop/train/a/cmyk.jpg": lambda: encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG"),
    "shop/train/a/deep16.png": lambda: encode(Image.fromarray(np.full((10, 10), 40000, dtype=np.uint16))),
    "shop/train/a/palette_alpha.png": palette_with_transparency,
    "shop/train/a/rgba.png": lambda: encode(Image.new("RGBA", (10, 10), (200, 100, 50, 128))),
    "shop/train/b/gray.png": lambda: encode(Image.new("L", (20, 10), 200)),
    "shop/train/b/rotated.jpg": exif_rotated_jpeg,
    "shop/train/b/wide.png": lambda: encode(Image.new("RGB", (4000, 3), (9, 9, 9))),
    "shop/train/b/dot.png": lambda: encode(Image.new("RGB", (1, 1), (7, 7, 7))),
    "shop/train/b/with spaces.png": lambda: png_bytes(901),
    "shop/train/a/ünïcødé.png": lambda: png_bytes(902),
    "extras.zip/train/a/zipped.png": None,
}
UNREADABLE = {
    "shop/train/a/truncated.jpg": ("truncated", lambda: encode(Image.new("RGB", (64, 64), (1, 2, 3)), "JPEG")[:300]),
    "shop/train/a/empty.png": ("empty file (0 bytes)", lambda: b""),
    "shop/train/b/text.png": ("not an image Pillow can read", lambda: b"just some text, not pixels"),
    "shop/train/b/bomb.png": ("decompression bomb guard", bomb_png),
}
SKIPPED = {
    "shop/train/a/scan.dcm": ("not an image file ('.dcm')", lambda: b"DICM" + bytes(200)),
    "shop/train/b/vector.svg": ("not an image file ('.svg')", lambda: b"<svg xmlns='http://www.w3.org/2000/svg'/>"),
    "shop/train/a/notes.txt": ("not an image file ('.txt')", lambda: b"hello"),
    "shop/train/a/.DS_Store": ("hidden or system file", lambda: b"\0\0\0\1Bud1"),
    "shop/train/b/Thumbs.db": ("hidden or system file", lambda: b"\xd0\xcf\x11\xe0"),
    "shop/train/b/.hidden.png": ("hidden or system file", lambda: png_bytes(903)),
    "__MACOSX/shop/train/a/._img000.png": ("hidden or system file", lambda: b"\0\5\26\7"),
    "stray.png": ("not inside a class folder", lambda: png_bytes(904)),
    "shop/shop/train/a/img000.png": ("copy of shop/train/a/img000.png (same name and content)", None),
    "shop/train/b/caf\\xe9.png": ("not valid UTF-8", None),
    "shop/train/b/link.png": ("symbolic link", None),
    "shop/train/linked": ("symbolic link to a folder (not followed)", None),
    "shop/train/b/pipe.png": ("not a regular file", None),
    "extras.zip/../escape.png": ("'..' in archive path", None),
    "extras.zip//abs.png": ("absolute path in archive", None),
    "extras.zip/train/b/zlink.png": ("symbolic link in archive", None),
    "extras.zip/train/b/crc.png": ("unreadable: Bad CRC-32", None),
    "extras.tar/train/a/hard.png": ("link in archive", None),
    "extras.tar/train/a/soft.png": ("link in archive", None),
    "extras.tar/train/b/caf\\xe9.png": ("not valid UTF-8", None),
}


def write_zip(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("train/a/zipped.png", png_bytes(905))
        zf.writestr("../escape.png", png_bytes(906))
        zf.writestr("/abs.png", png_bytes(907))
        link = zipfile.ZipInfo("train/b/zlink.png")
        link.external_attr = 0o120777 << 16
        zf.writestr(link, "/etc/passwd")
        zf.writestr("train/b/crc.png", b"\x89PNG" + b"x" * 200)
    data = bytearray(path.read_bytes())
    spot = data.index(b"x" * 200)
    data[spot] = ord("y")  # the member's bytes no longer match its CRC
    path.write_bytes(bytes(data))


def write_tar(path: Path) -> None:
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        for name, kind in (("train/a/hard.png", tarfile.LNKTYPE), ("train/a/soft.png", tarfile.SYMTYPE)):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, "../../../etc/passwd"
            tf.addfile(info)
        content = png_bytes(908)
        info = tarfile.TarInfo("train/b/" + os.fsdecode(NON_UTF8_NAME))
        info.size = len(content)
        tf.addfile(info, io.BytesIO(content))


def messy_tree(root: Path, outside: Path) -> None:
    make_image_tree(root / "shop" / "train", {"a": 12, "b": 12})
    make_image_tree(root / "shop" / "test", {"a": 4, "b": 4}, seed=1)
    for table in (USED, UNREADABLE, SKIPPED):
        for rel, value in table.items():
            make = value[1] if isinstance(value, tuple) else value
            if make is not None:
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / rel).write_bytes(make())
    shutil.copy(root / "shop/test/a/img000.png", root / "shop/train/a/leak.png")
    shutil.copytree(root / "shop/train/a", root / "shop/shop/train/a",
                    ignore=lambda folder, names: [n for n in names if n != "img000.png"])
    (root / "shop/train/c").mkdir()
    (root / os.fsdecode(b"shop/train/b/" + NON_UTF8_NAME)).write_bytes(png_bytes(909))
    outside.mkdir()
    (outside / "secret.png").write_bytes(png_bytes(910))
    (root / "shop/train/b/link.png").symlink_to(outside / "secret.png")
    (root / "shop/train/linked").symlink_to(outside, target_is_directory=True)
    os.mkfifo(root / "shop/train/b/pipe.png")
    write_zip(root / "extras.zip")
    write_tar(root / "extras.tar")


def every_input(root: Path) -> set[str]:
    """What a user handed over: every file and link on disk and every archive member."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if name.endswith(".zip"):
                found |= {f"{rel}/{n}" for n in zipfile.ZipFile(root / rel).namelist()}
            elif name.endswith(".tar"):
                found |= {printable(f"{rel}/{n}") for n in tarfile.open(root / rel).getnames()}
            else:
                found.add(printable(rel))
    return found


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    """{path: (where, reason)} after split and resize, plus the metrics, for the messy tree."""
    tmp = tmp_path_factory.mktemp("messy")
    messy_tree(tmp / "raw", tmp / "outside")
    raw = RawData(tmp / "raw")
    table, report = build_split(raw, split_cfg())
    split_json = split_metrics(table, report)
    resize_json = build_cache(table, raw, tmp / "cache", 16, "pad", workers=2, max_unreadable_fraction=0.2)
    places = {r["path"]: ("skipped", r["reason"]) for r in split_json["skipped"]}
    places |= {u["path"]: ("unreadable", u["reason"]) for u in resize_json["unreadable"]}
    for split in ("train", "val", "test"):
        index = load_split(tmp / "cache", split)[2]
        places |= {path: ("used", split) for path in index["path"]}
    return {"places": places, "inputs": every_input(tmp / "raw"), "split": split_json, "table": table}


def test_nothing_is_lost(outcome):
    places, inputs = outcome["places"], outcome["inputs"]
    assert sorted(inputs - places.keys()) == []
    assert sorted(places.keys() - inputs) == []
    assert len(outcome["table"]) == sum(where in ("used", "unreadable") for where, _ in places.values())


@pytest.mark.parametrize("path", sorted(USED))
def test_odd_but_valid_image_is_used(outcome, path):
    assert outcome["places"][path][0] == "used"


@pytest.mark.parametrize("path", sorted(UNREADABLE))
def test_broken_image_is_listed_by_resize(outcome, path):
    assert outcome["places"][path][0] == "unreadable"
    assert UNREADABLE[path][0].lower() in outcome["places"][path][1].lower()


@pytest.mark.parametrize("path", sorted(SKIPPED))
def test_unusable_file_is_listed_by_split(outcome, path):
    assert outcome["places"][path][0] == "skipped"
    assert SKIPPED[path][0] in outcome["places"][path][1]


def test_same_image_in_train_and_test_is_used_and_reported(outcome):
    assert outcome["places"]["shop/train/a/leak.png"][0] == "used"
    assert outcome["split"]["cross_split_duplicates"] == [
        {"path": "shop/train/a/leak.png", "same_as": "shop/test/a/img000.png"}]


def test_empty_class_folder_is_reported(outcome):
    assert outcome["split"]["empty_folders"] == ["shop/train/c"]
    assert "c" not in outcome["split"]["classes"]


def test_pillow_bomb_guard_is_still_on_after_importing_tlpipe():
    import tlpipe.data.cache  # noqa: F401
    import tlpipe.data.images  # noqa: F401

    assert Image.MAX_IMAGE_PIXELS == 89_478_485


@pytest.mark.parametrize("kind", ["entries", "bytes"])
def test_tar_bomb_is_refused_before_reading(tmp_path, kind):
    raw = tmp_path / "raw"
    raw.mkdir()
    with tarfile.open(raw / "bomb.tar.gz", "w:gz") as tf:
        for i in range(20 if kind == "entries" else 1):
            content = b"\0" * (5_000_000 if kind == "bytes" else 1)
            info = tarfile.TarInfo(f"a/{i}.png")
            info.size = len(content)
            tf.addfile(info, io.BytesIO(content))
    assert (raw / "bomb.tar.gz").stat().st_size < 50_000
    with pytest.raises(TlpipeError, match=r"bomb.tar.gz: .*possible archive bomb.*data.max_archive_"):
        RawData(raw, max_archive_gb=0.001, max_archive_entries=10).entries()


def test_truncated_tar_is_a_clear_error(tmp_path):
    raw = tmp_path / "raw"
    make_image_tree(tmp_path / "src", {"a": 5})
    with tarfile.open(tmp_path / "whole.tar.gz", "w:gz") as tf:
        tf.add(tmp_path / "src", arcname="set")
    raw.mkdir()
    (raw / "cut.tar.gz").write_bytes((tmp_path / "whole.tar.gz").read_bytes()[:300])
    with pytest.raises(TlpipeError, match="cut.tar.gz: not a readable tar archive.*Download it again"):
        RawData(raw).entries()


def test_labels_csv_that_is_not_utf8_is_a_clear_error(tmp_path):
    raw = tmp_path / "raw"
    make_image_tree(raw / "images", {"x": 4})
    (raw / "meta.csv").write_bytes("image_id,dx\nimg000,naevus café\n".encode("latin-1"))
    with pytest.raises(TlpipeError, match="split.labels_csv: 'meta.csv' is not a readable UTF-8 CSV"):
        build_split(RawData(raw), split_cfg(labels_csv="meta.csv", id_column="image_id", label_column="dx"))
