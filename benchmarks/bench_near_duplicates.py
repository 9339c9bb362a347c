"""Benchmark: the split stage's near-duplicate search at scale, and its recall on the brain MRI leak.

1. Scale: N and 4N generated frames (default 25,000 and 100,000): each class a few objects, each
   filmed rotating in 100 frames of 48 px (as Fruits-360 films fruit), so that almost every image has
   near-duplicates. `stages/split.py` runs in a fresh process in a scratch project, as `dvc repro`
   runs it; printed: its wall time, the peak RSS of its process, and the time of the search itself
   (pHash candidates by multi-index hashing + thumbnail check, `metrics/split.json`:
   near_duplicates.search_s). What grows with N is the image table (paths, labels, groups and
   content hashes, under 1 KB an image, as the split.csv it becomes); the search itself holds the
   64-bit hashes (9 bytes an image), keeps the thumbnails in a temporary file read a block at a
   time, and works in blocks of fixed size. Targets: peak RSS grows by at most 1 KB per added
   image, and the search time at 4N stays under 16x N's (sub-quadratic). The peak anonymous memory
   (the process's own, not counting mapped files) is printed beside it.
2. Recall: on the brain MRI zip (../shared/data), the candidate pairs of the multi-index search
   against an all-pairs comparison of the same hashes, block by block (the search it replaced):
   the same pairs, so the same leak is found.

    python benchmarks/bench_near_duplicates.py                 # N = 25,000 and 100,000: ~10 min on 2 cores
    python benchmarks/bench_near_duplicates.py --n 5000        # smaller sizes
    python benchmarks/bench_near_duplicates.py --quick         # N = 2,000, a smoke run
"""

import io
import json
import shutil
import sys
import time
import zipfile
from pathlib import Path

import common

DEFAULT_MRI = common.REPO.parent / "shared" / "data" / "brain-tumor-mri-224.zip"
FRAMES, OBJECTS, SIDE = 100, 5, 48  # frames per object, objects per class, pixels


def make_frames(root: Path, n: int) -> None:
    """n JPEG frames: n / (FRAMES * OBJECTS) classes, each object a random colour texture turned
    3.6 degrees a frame. Made once per n."""
    import numpy as np
    from PIL import Image

    done = root / ".done"
    if done.exists():
        return
    rng = np.random.default_rng(n)
    per_class = FRAMES * OBJECTS
    for c in range(-(-n // per_class)):
        folder = root / f"class{c:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        for o in range(OBJECTS):
            texture = Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8))
            texture = texture.resize((96, 96), Image.Resampling.BICUBIC)
            for f in range(FRAMES):
                if c * per_class + o * FRAMES + f >= n:
                    break
                frame = texture.rotate(3.6 * f, Image.Resampling.BILINEAR).crop((24, 24, 72, 72))
                buffer = io.BytesIO()
                frame.save(buffer, "JPEG", quality=90)
                (folder / f"r_{o * 1000 + f}_100.jpg").write_bytes(buffer.getvalue())
    done.touch()


def split_project(work: Path, n: int) -> Path:
    project = work / f"near-{n}"
    make_frames(project / "data" / "raw", n)
    shutil.copy(common.REPO / "params.yaml", project / "params.yaml")
    return project


def all_pairs(hashes, max_distance: int, block: int = 2048) -> set[tuple[int, int]]:
    """Every pair within `max_distance` bits by comparing all pairs, a block of rows at a time."""
    import numpy as np

    found = set()
    for start in range(0, len(hashes), block):
        distance = np.bitwise_count(hashes[start:start + block, None] ^ hashes[None, start:])
        i, j = np.nonzero(distance <= max_distance)
        keep = j > i
        found.update(zip((i[keep] + start).tolist(), (j[keep] + start).tolist()))
    return found


def mri_recall(path: Path, summary: common.Summary) -> None:
    import numpy as np

    from tlpipe.data.phash import CANDIDATE_BITS, candidate_pairs, phash

    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if n.lower().endswith((".jpg", ".jpeg", ".png"))]
        hashes = [phash(archive.read(name)) for name in names]
    hashes = np.array([h for h in hashes if h is not None], dtype=np.uint64)
    start = time.perf_counter()
    reference = all_pairs(hashes, CANDIDATE_BITS)
    brute_s = time.perf_counter() - start
    start = time.perf_counter()
    found = {pair for i, j, _ in candidate_pairs(hashes, CANDIDATE_BITS) for pair in zip(i.tolist(), j.tolist())}
    search_s = time.perf_counter() - start
    summary.figure(f"brain MRI ({len(hashes)} images): {len(reference)} candidate pairs within {CANDIDATE_BITS} bits "
                   f"by all pairs ({brute_s:.2f} s), {len(found)} by multi-index hashing ({search_s:.2f} s), "
                   f"{len(reference & found)} in both")
    summary.target("MRI candidate pairs found by both searches", len(reference & found) / max(len(reference), 1), 1.0,
                   unit="")
    summary.target("MRI pairs only the new search reports", len(found - reference), 0, unit="", higher=False)


def main() -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.set_defaults(data=DEFAULT_MRI)
    p.add_argument("--n", type=int, default=25000, help="N: the smaller size (the larger is 4N; default %(default)s)")
    args = p.parse_args()
    n = 2000 if args.quick else args.n
    summary = common.Summary(f"bench_near_duplicates: the split stage on N = {n} and 4N = {4 * n} generated "
                             f"frames ({FRAMES} frames x {OBJECTS} objects a class, {SIDE} px)")
    figures = {}
    for size in (n, 4 * n):
        print(f"[prep] {size} frames ...", flush=True)
        project = split_project(args.work, size)
        _, wall, peak, anonymous = common.run_measured([sys.executable, str(common.REPO / "stages" / "split.py")],
                                                       cwd=project, anonymous=True)
        near = json.loads((project / "metrics" / "split.json").read_text())["near_duplicates"]
        figures[size] = {"wall": wall, "peak": peak, "search": near["search_s"]}
        summary.figure(f"{size:>8} images: split stage {wall:6.1f} s, peak RSS {peak / 2**20:6.0f} MiB (anonymous "
                       f"{anonymous / 2**20:.0f} MiB); search "
                       f"{near['search_s']:6.1f} s; {near['pairs']} near-duplicate pairs in {near['groups']} groups "
                       f"(largest {near['largest_group']} images)")
    small, large = figures[n], figures[4 * n]
    summary.figure(f"peak RSS at 4N / N: {large['peak'] / small['peak']:.2f}x")
    summary.target("peak RSS growth per added image", (large["peak"] - small["peak"]) / (3 * n), 1000, unit=" B",
                   higher=False)
    summary.target("search time at 4N / N (quadratic: 16x)", large["search"] / max(small["search"], 1e-3), 16,
                   higher=False)
    if args.data.is_file():
        mri_recall(args.data, summary)
    else:
        summary.skipped("MRI recall", f"{args.data} not present")
    return summary.print()


if __name__ == "__main__":
    sys.exit(main())
