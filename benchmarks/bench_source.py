"""Benchmark: how long DVC takes to see that a large image folder did (or did not) change.

A fresh Git + DVC project holding this pipeline points `data.source` (and `data.track`) at a
generated folder of N small PNG images. `dvc repro download` takes the folder in once; then, each
timed from outside as a user sees it: `dvc status download` and `dvc repro download` with nothing
changed, `dvc status download` after every file was touched (new mtimes, same bytes: DVC re-reads
them and finds the same hashes), and after one image was added (the change is named).

Target: with nothing changed, the check of a 100,000-file folder takes a few seconds (<= 10 s).

    python benchmarks/bench_source.py [--files 100000] [--source FOLDER_OR_ARCHIVE] [--work DIR] [--quick]

It also prints the disk the data takes: the source, and data/raw + DVC cache in the project
(as `dvc repro` leaves them: two copies on a file system without reflinks; one after
`dvc checkout --relink data/raw`, which turns data/raw into hardlinks into the cache).
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

sys.path.insert(0, str(common.REPO / "tests"))
from conftest import make_dvc_project  # noqa: E402

UNCHANGED_TARGET_S = 10.0
CLASSES = 10


def image_folder(root: Path, count: int) -> Path:
    """`count` distinct 8x8 grey PNGs in CLASSES class folders (kept between runs)."""
    folder = root / f"images-{count}"
    done = root / f"images-{count}.complete"
    if done.exists():
        return folder
    rng = np.random.default_rng(0)
    for index in range(count):
        label = folder / f"class{index % CLASSES}"
        label.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), mode="L").save(label / f"{index:06d}.png")
    done.write_text("")
    return folder


def du(*paths: Path) -> float:
    """MiB on disk under `paths`, a file linked from several of them counted once (as `du` does)."""
    out = subprocess.run(["du", "-sck", *map(str, paths)], capture_output=True, text=True, check=True).stdout
    return int(out.splitlines()[-1].split()[0]) / 1024


def timed(cmd: list[str], project: Path) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=project, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}")
    return seconds, result.stdout


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=100_000, help="images in the folder (default: %(default)s)")
    p.add_argument("--source", type=Path, help="an existing folder or archive instead of generated images")
    args = p.parse_args()
    count = 2_000 if args.quick else args.files
    work = args.work / "bench_source"
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    images = args.source.resolve() if args.source else image_folder(work, count)
    print(f"machine: {common.machine()}")
    print(f"source: {images} ({time.perf_counter() - start:.0f} s to generate or find)")

    project = work / "project"
    if project.exists():
        subprocess.run(["rm", "-rf", str(project)], check=True)
    make_dvc_project(project)
    # as this repository's .dvc/config: data/raw and the DVC cache share their files (hardlinks)
    subprocess.run(["dvc", "config", "cache.type", "reflink,hardlink,copy"], cwd=project, check=True)
    timed(["python", "-m", "tlpipe.cli", "source", f"path:{images}"], project)
    for command in (["git", "add", "-A"], ["git", "commit", "-qm", "pipeline"]):
        subprocess.run(command, cwd=project, check=True, capture_output=True)

    rows = [("dvc repro download (takes the folder in)", *timed(["dvc", "repro", "download"], project))]
    disk = {"the source": du(images),
            "data/raw + DVC cache": du(project / "data" / "raw", project / ".dvc" / "cache")}
    subprocess.run(["dvc", "checkout", "--relink", "data/raw"], cwd=project, check=True, capture_output=True)
    disk["the same after `dvc checkout --relink data/raw`"] = du(project / "data" / "raw", project / ".dvc" / "cache")
    rows.append(("dvc status download, nothing changed", *timed(["dvc", "status", "download"], project)))
    rows.append(("dvc repro download, nothing changed", *timed(["dvc", "repro", "download"], project)))
    if not args.source:  # a user's own data is never written to, its times included
        now = time.time()
        for path in images.rglob("*.png"):
            os.utime(path, (now, now))
        rows.append(("dvc status download, every file touched", *timed(["dvc", "status", "download"], project)))
        rows.append(("dvc status download, touched, again", *timed(["dvc", "status", "download"], project)))
        extra = images / "class0" / "added.png"
        Image.fromarray(np.full((8, 8), 7, np.uint8), mode="L").save(extra)
        try:
            rows.append(("dvc status download, one image added", *timed(["dvc", "status", "download"], project)))
        finally:
            extra.unlink()

    print(f"\n{'step':<44} {'seconds':>8}  DVC says")
    for step, seconds, out in rows:
        said = "up to date" if "up to date" in out or "didn't change" in out else (
            "changed: " + " ".join(line.strip() for line in out.splitlines() if "modified" in line)[:60]
            if "modified" in out else "ran the stage")
        print(f"{step:<44} {seconds:8.1f}  {said}")
    unchanged = max(rows[1][1], rows[2][1])
    verdict = "meets" if unchanged <= UNCHANGED_TARGET_S else "misses"
    print(f"\nunchanged source: {unchanged:.1f} s at most ({verdict} the {UNCHANGED_TARGET_S:.0f} s target)")
    print("disk (hardlinked files counted once): " + "; ".join(f"{name} {mib:,.1f} MiB" for name, mib in disk.items()))
    if not args.source:
        print(f"one added image named by dvc status: {'yes' if 'modified' in rows[-1][2] else 'NO'}")


if __name__ == "__main__":
    main()
