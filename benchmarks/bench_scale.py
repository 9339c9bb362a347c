"""Benchmark: memory and disk against data set size, on generated images.

For N and 4N images (64 px JPEGs in two class folders, made here), the stage scripts resize,
extract-features, train-head and finetune run one by one, each in a fresh process, in a scratch
project. Per stage: the peak RSS of the process tree (workers included) and its peak anonymous
memory (Pss_Anon: shared pages counted once, the page cache not at all), the median of --repeats
runs. Targets: peak RSS at 4N within 1.15x of N; anonymous memory growth under 1 KB per added image;
data/cache on disk at most 1.05x the raw uint8 size of the cached images.

finetune runs one epoch with the body frozen (activation memory depends on the batch, not on the
data set; the data path, probe, order, validation and threshold are the same as unfrozen).
The head and the probe are fitted on bounded samples (head.max_fit_images, finetune.probe_max_images);
here both caps are set below N's training split so that N and 4N are both in the large-set regime
(at the default cap of 50,000 the fit grows with the set up to 50,000 training images, then stays flat).

    python benchmarks/bench_scale.py            # N = 20000 (and 80000): ~15 min on 2 cores
    python benchmarks/bench_scale.py --n 5000   # ~2 min; 15,000 added images cannot tell 1 KB each
                                                # from finetune's ~20 MiB run-to-run spread
    python benchmarks/bench_scale.py --quick    # N = 1000, one run each: a smoke run, not the targets' sizes
"""

import io
import json
import os
import runpy
import statistics
import subprocess
import sys
import time
from pathlib import Path

import common

STAGES = [("resize", "resize"), ("extract-features", "extract_features"), ("train-head", "train_head"),
          ("finetune", "finetune")]
SIZE = 64
CAP = 2000  # head.max_fit_images and finetune.probe_max_images in this benchmark


def make_images(raw: Path, n: int) -> None:
    """n JPEGs of 64 px (blocky colour noise, class 'bright' lighter than 'dark'), made once."""
    import numpy as np
    from PIL import Image

    done = raw / ".done"
    if done.exists():
        return
    rng = np.random.default_rng(n)
    for i in range(n):
        label = ("dark", "bright")[i % 2]
        folder = raw / "set" / label
        folder.mkdir(parents=True, exist_ok=True)
        blocks = rng.integers(0, 160, size=(8, 8, 3), dtype=np.uint8) + (90 if label == "bright" else 0)
        path = folder / f"img{i:07d}.jpg"
        if path.exists():  # an interrupted preparation resumes
            continue
        pixels = np.kron(blocks, np.ones((8, 8, 1), dtype=np.uint8))
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
        path.write_bytes(buffer.getvalue())
    done.touch()


def make_project(work: Path, n: int) -> Path:
    import yaml

    project = work / f"scale-{n}"
    make_images(project / "data" / "raw", n)
    params = yaml.safe_load((common.REPO / "params.yaml").read_text())
    params["resize"]["size"] = SIZE
    params["features"] |= {"batch_size": 64, "device": "cpu"}
    params["head"]["max_fit_images"] = CAP
    # one epoch with the body frozen (the CPU time of a full backward is not what is measured here:
    # activations scale with the batch, not the data set; the data path is the same)
    params["finetune"] |= {"epochs": 1, "freeze_epochs": 1, "batch_size": 32, "device": "cpu",
                           "probe_max_images": CAP, "patience": 0}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if not (project / "data" / "split.csv").exists():
        env = {**os.environ, "PYTHONPATH": str(common.REPO)}
        subprocess.run([sys.executable, str(common.REPO / "stages" / "split.py")], cwd=project, env=env,
                       check=True, capture_output=True)
    return project


def child(stage_script: str, project: Path) -> dict:
    os.chdir(project)
    start = time.perf_counter()
    try:
        runpy.run_path(str(common.REPO / "stages" / f"{stage_script}.py"), run_name="__main__")
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            raise
    images = sum(1 for _ in open(project / "data" / "split.csv")) - 1
    return {"seconds": time.perf_counter() - start, "images": images}


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in folder.rglob("*") if p.is_file())


def main() -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--child", help=argparse_hidden())
    p.add_argument("--project", type=Path, help=argparse_hidden())
    p.add_argument("--n", type=int, default=None, help="N: the smaller size (the larger is 4N; default 20000, quick 1000)")
    p.add_argument("--repeats", type=int, default=3,
                   help="runs of each stage at each size; the median peak is reported (default %(default)s)")
    args = p.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.project)), flush=True)
        return 0
    if args.n is not None and args.n < 1:
        p.error(f"--n must be at least 1, got {args.n}")
    n = args.n if args.n is not None else (1000 if args.quick else 20000)
    summary = common.Summary(f"bench_scale: peak memory of four stages at N = {n} and 4N = {4 * n} "
                             f"generated {SIZE} px images (head/probe sample cap {CAP})")
    figures: dict[int, dict] = {}
    for size in (n, 4 * n):
        print(f"[prep] {size} images and data/split.csv ...", flush=True)
        project = make_project(args.work, size)
        figures[size] = {}
        for stage, script in STAGES:
            # a sampled peak moves by ~20 MiB between identical runs (when a transient falls between
            # samples, and when workers fork): the median of a few runs
            runs = [common.measure_child(__file__, args, script, "--project", str(project))
                    for _ in range(1 if args.quick else args.repeats)]
            result = {key: statistics.median(r[key] for r in runs) for key in ("peak_rss", "peak_anonymous", "wall")}
            figures[size][stage] = result
            print(f"  {size:>6} {stage:<17} peak RSS {result['peak_rss'] / 2**20:7.0f} MiB, anonymous "
                  f"{result['peak_anonymous'] / 2**20:7.0f} MiB, {result['wall']:6.1f} s", flush=True)
        cached = json.loads((project / "metrics" / "resize.json").read_text())
        raw_bytes = sum(cached["images"].values()) * SIZE * SIZE * 3
        figures[size]["disk"] = (disk_bytes(project / "data" / "cache"), raw_bytes, cached["shards"])
    summary.figure(f"{'stage':<17} {'N peak RSS':>11} {'4N peak RSS':>12} {'ratio':>6} "
                   f"{'N anon':>8} {'4N anon':>8} {'growth/img':>11}")
    for stage, _ in STAGES:
        small, large = figures[n][stage], figures[4 * n][stage]
        ratio = large["peak_rss"] / small["peak_rss"]
        growth = (large["peak_anonymous"] - small["peak_anonymous"]) / (3 * n)
        summary.figure(f"{stage:<17} {small['peak_rss'] / 2**20:8.0f} MiB {large['peak_rss'] / 2**20:9.0f} MiB "
                       f"{ratio:5.2f}x {small['peak_anonymous'] / 2**20:5.0f} MiB {large['peak_anonymous'] / 2**20:5.0f} MiB "
                       f"{growth:8.0f} B")
        summary.target(f"{stage} peak RSS 4N / N", ratio, 1.15, higher=False)
        summary.target(f"{stage} anonymous memory growth per image", growth, 1024, unit=" B", higher=False)
    for size in (n, 4 * n):
        used, raw_bytes, shards = figures[size]["disk"]
        summary.figure(f"data/cache at {size} images: {used / 2**20:.1f} MiB on disk for {raw_bytes / 2**20:.1f} MiB "
                       f"of uint8 pixels, shards {shards}")
        summary.target(f"data/cache disk / raw uint8 at {size}", used / raw_bytes, 1.05, higher=False)
    return summary.print()


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    sys.exit(main())
